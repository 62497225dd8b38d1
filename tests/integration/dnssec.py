"""Signed zones (knotd signing them itself) and a validating resolver (unbound) for tests.

:class:`SignedDNS` is the knot fixture of ``dnsserver.py`` plus automatic
DNSSEC signing of the zones a test marks with :meth:`SignedDNS.sign`: knotd
generates an ECDSA P-256 key for each and signs at load and reload. The
trust anchor is read back from the running server (its DNSKEY RRset turned
into a DS record), as an operator would export it.

:class:`ValidatingResolver` is ``unbound`` from Debian on a loopback address
and a free port, forwarding every query to knotd and validating with those
anchors. It never asks anyone else: every name goes to knotd (which refuses
what it does not serve), and no root hints are ever primed. gmta's resolver
pointed at it sees the AD flag on signed data, SERVFAIL on bogus data::

    def test_x(signed_dns, signed_zone_resolver):
        signed_dns.zone("example.test", [...]); signed_dns.sign("example.test")
        signed_dns.start()
        resolver = signed_zone_resolver(signed_dns)      # started, anchors loaded
        config = f"dns_servers {resolver.directive}"

A *bogus* zone (:meth:`SignedDNS.bogus`) is signed by knotd but anchored to a
key it does not have: every answer from it fails validation.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rdata
import dns.rdtypes.ANY.DNSKEY
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration import dnsserver
from tests.integration.dnsserver import READY_TIMEOUT, AuthoritativeDNS

RESOLVER_ADDRESS = "127.0.0.1"
POLICY = "gmta-test"


class SignedDNS(AuthoritativeDNS):
    """knotd with automatic signing of some zones; see the module docstring."""

    def __init__(self, directory: Path, address: str = "127.0.0.53"):
        super().__init__(directory, address)
        self._signed: set[str] = set()
        self._bogus: set[str] = set()
        # knotd keeps keys (keystore) and their state (KASP database) there; it creates neither.
        (self.directory / "keys").mkdir(exist_ok=True)
        (self.directory / "db").mkdir(exist_ok=True)

    def sign(self, *origins: str) -> None:
        self._signed.update(o.rstrip(".").lower() for o in origins)

    def bogus(self, *origins: str) -> None:
        """Sign these zones, but give resolvers an anchor for a key they do not use."""
        self.sign(*origins)
        self._bogus.update(o.rstrip(".").lower() for o in origins)

    def _write_config(self) -> Path:
        path = super()._write_config()
        text = path.read_text()
        # A single combined key (CSK) that never rolls: the anchor stays valid all test long.
        text = text.replace("database:", f"""keystore:
  - id: default
    backend: pem
    config: "{self.directory}/keys"
policy:
  - id: {POLICY}
    algorithm: ecdsap256sha256
    single-type-signing: on
    ksk-lifetime: 0
    zsk-lifetime: 0
    dnskey-ttl: 0
    zone-max-ttl: 0
    nsec3: off
database:""", 1)
        for origin in self._signed:
            text = text.replace(f"  - domain: {origin}\n",
                                f"  - domain: {origin}\n    dnssec-signing: on\n"
                                f"    dnssec-policy: {POLICY}\n    serial-policy: increment\n")
        path.write_text(text)
        return path

    def _wait_serving(self, serial: int) -> bool:
        # knotd bumps the serial of a zone it signs, so a signed zone is ready
        # once it serves at least the written serial with a signed SOA.
        deadline = time.monotonic() + READY_TIMEOUT
        pending = set(self._zones)
        while pending:
            if self.proc is None or self.proc.poll() is not None:
                return False
            for origin in list(pending):
                if self._serving(origin, serial):
                    pending.discard(origin)
            if pending:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
        return True

    def _serving(self, origin: str, serial: int) -> bool:
        if origin not in self._signed:
            return self.soa_serial(origin) == serial
        query = dns.message.make_query(origin + ".", dns.rdatatype.SOA, want_dnssec=True)
        try:
            response = dns.query.udp(query, self.address, timeout=0.5, port=self.port)
        except (OSError, dns.exception.Timeout):
            return False
        soa = [r for r in response.answer if r.rdtype == dns.rdatatype.SOA]
        signed = any(r.rdtype == dns.rdatatype.RRSIG for r in response.answer)
        return bool(soa) and signed and soa[0][0].serial >= serial

    def reload(self) -> None:
        # The served serial of a signed zone is the written one plus knotd's
        # bumps; jump past it so that "at least the written serial" means new data.
        served = [self.soa_serial(o) or 0 for o in self._signed]
        self._serial = max([self._serial, *served]) + 1
        super().reload()

    def anchors(self) -> list[str]:
        """Trust anchors for every signed zone, as unbound ``trust-anchor`` lines (DS)."""
        lines = []
        for origin in sorted(self._signed):
            name = dns.name.from_text(origin)
            if origin in self._bogus:
                key = _unrelated_dnskey()
            else:
                response = dns.query.udp(dns.message.make_query(name, dns.rdatatype.DNSKEY),
                                         self.address, timeout=2, port=self.port)
                keys = [r for rrset in response.answer for r in rrset
                        if rrset.rdtype == dns.rdatatype.DNSKEY]
                key = next(k for k in keys if k.flags & 0x0001)  # SEP bit: the KSK/CSK
            ds = dns.dnssec.make_ds(name, key, "SHA256")
            lines.append(f"{origin}. DS {ds.to_text()}")
        return lines


def _unrelated_dnskey() -> dns.rdtypes.ANY.DNSKEY.DNSKEY:
    """A fresh P-256 DNSKEY (RFC 6605 §4: the point's X and Y, 64 bytes) knotd never saw."""
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
    return dns.rdata.from_text("IN", "DNSKEY",
                               "257 3 13 " + base64.b64encode(point).decode())


class ValidatingResolver(dnsserver.ValidatingResolver):
    """``unbound`` validating with the anchors of a :class:`SignedDNS`.

    The process handling is :class:`tests.integration.dnsserver.ValidatingResolver`'s;
    only the configuration differs: it also forwards every other name to the
    test server, so names outside the test zones are insecure instead of
    waiting for a root that is not there.
    """

    def __init__(self, directory: Path, upstream: AuthoritativeDNS, anchors: list[str],
                 address: str = RESOLVER_ADDRESS):
        super().__init__(directory, upstream, address=address, anchors=anchors)

    def _write_config(self) -> Path:
        anchors = "".join(f'    trust-anchor: "{line}"\n' for line in self.anchors)
        domains = sorted(self.authoritative._zones)
        # unbound answers RFC 6761 names (test., invalid., 127.in-addr.arpa....)
        # itself with NXDOMAIN unless told not to: the test zones live there.
        unblocked = "".join(f'    local-zone: "{name}." nodefault\n' for name in
                            sorted({d.split(".")[-1] for d in domains} | set(domains)))
        # Names outside the test zones are "insecure" rather than waiting for a
        # root that is not there; the test zones themselves keep validation.
        config = f"""server:
    interface: {self.address}@{self.port}
    port: {self.port}
    do-ip6: no
    do-not-query-localhost: no
    username: ""
    chroot: ""
    directory: "{self.directory}"
    pidfile: "{self.directory}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    val-log-level: 2
    # RFC 8914 Extended DNS Errors: a bogus zone's SERVFAIL says "DNSSEC Bogus".
    ede: yes
    module-config: "validator iterator"
    qname-minimisation: no
    aggressive-nsec: no
    prefetch: no
    cache-max-ttl: 0
    cache-max-negative-ttl: 0
    infra-host-ttl: 1
    serve-expired: no
    harden-dnssec-stripped: yes
    val-bogus-ttl: 0
    num-threads: 1
    outgoing-range: 64
    so-reuseport: no
    access-control: 127.0.0.0/8 allow
{unblocked}{anchors}remote-control:
    control-enable: no
""" + "".join(f"""stub-zone:
    name: "{origin}."
    stub-addr: {self.authoritative.address}@{self.authoritative.port}
    stub-first: no
""" for origin in domains) + f"""forward-zone:
    name: "."
    forward-addr: {self.authoritative.address}@{self.authoritative.port}
"""
        path = self.directory / "unbound.conf"
        path.write_text(config)
        return path


@pytest.fixture
def signed_dns(tmp_path):
    """A fresh :class:`SignedDNS`: add zones, ``sign()`` some, then ``start()``."""
    server = SignedDNS(tmp_path / "dns")
    yield server
    server.stop()


@pytest.fixture
def signed_zone_resolver(tmp_path):
    """``signed_zone_resolver(signed_dns)`` → a started :class:`ValidatingResolver`."""
    started: list[ValidatingResolver] = []

    def start(upstream: SignedDNS) -> ValidatingResolver:
        resolver = ValidatingResolver(tmp_path / f"unbound-{len(started)}", upstream,
                                      upstream.anchors())
        started.append(resolver)
        return resolver.start()

    yield start
    for resolver in started:
        resolver.stop()
