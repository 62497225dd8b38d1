"""A real authoritative DNS server (Knot DNS from Debian) for tests.

A test describes zones as zone-file lines; the server writes them with an SOA
and an NS record, starts ``knotd`` on a 127.0.0.x address and a free port,
waits until it answers, and stops it at the end::

    def test_something(dns_server):
        dns_server.zone("example.test", ["@ MX 10 mx1", "mx1 A 127.0.0.2"])
        dns_server.ptr("127.0.0.5", "mail.example.test")
        dns_server.start()
        config = f"dns_servers {dns_server.directive}\\n..."

Zones can be changed while it runs (:meth:`zone` then :meth:`reload`, which
returns once the new data is served). Records default to TTL 0 so that no
cache between the test and the server hides a change; give a TTL in the line
(``"mx1 60 A 127.0.0.2"``) where a test wants caching.

Signed zones (DNSSEC, RFC 4033–4035): ``AuthoritativeDNS(dir, signed=True)``
signs every zone unless ``zone(..., signed=False)`` (or a plain server signs
the zones given ``signed=True``). knotd makes one ECDSA P-256 key per zone
that never rolls and signs at load and reload; :meth:`trust_anchors` (DNSKEY)
and :meth:`anchors` (DS) read the keys back for a validating resolver, as an
operator would export them. A *bogus* zone (:meth:`bogus`) is signed, but its
anchor is a key knotd never had: every answer from it fails validation.

Every wait is bounded (``READY_TIMEOUT``); knotd's own log is kept in
``<directory>/knotd.log`` and shown when it fails to start.
"""

from __future__ import annotations

import base64
import ipaddress
import shutil
import socket
import subprocess
import time
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY
import dns.reversename
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

KNOTD = shutil.which("knotd") or "/usr/sbin/knotd"
KNOTC = shutil.which("knotc") or "/usr/sbin/knotc"
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
START_ATTEMPTS = 3  # a free port can be taken between our check and knotd's bind

# The address tests use for the DNS server; MX hosts live on 127.0.0.2..9.
DEFAULT_ADDRESS = "127.0.0.53"
# Loopback's reverse zone: PTR records for any 127.0.0.0/8 address (RFC 1035 §3.5).
REVERSE_ZONE = "127.in-addr.arpa"


def free_port(address: str) -> int:
    """A port free for both TCP and UDP on *address* (knotd binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((address, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((address, port))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free port on {address}")


class AuthoritativeDNS:
    """One ``knotd`` serving the zones a test wrote."""

    def __init__(self, directory: Path, address: str = DEFAULT_ADDRESS, port: int | None = None,
                 *, signed: bool = False):
        self.directory = Path(directory)
        self.address = address
        #: Whether :meth:`zone` signs a zone when not told.
        self.signed = signed
        # A fixed port (53) serves resolvers that cannot be told one: glibc's
        # resolv.conf, as Postfix uses (bench/remote.py); by default a free port.
        self.fixed_port = port
        self.port: int | None = port
        self.proc: subprocess.Popen | None = None
        self._zones: dict[str, list[str]] = {}
        self._broken: set[str] = set()
        self._signed: set[str] = set()
        self._bogus: set[str] = set()
        self._serial = 1
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "zones").mkdir(exist_ok=True)
        (self.directory / "db").mkdir(exist_ok=True)  # journal, timers, DNSSEC keys

    # -- zone data ------------------------------------------------------------------------

    def zone(self, origin: str, records: list[str], *, signed: bool | None = None) -> None:
        """Set the records of zone *origin* (zone-file lines, names relative to it).

        A *signed* zone (default: the server's ``signed``) is signed by knotd
        with a key it makes at start (DNSSEC, RFC 4033–4035); :meth:`trust_anchors`
        and :meth:`anchors` give it to a validating resolver. Setting the
        records of a zone again keeps it signed or not as it was.
        """
        origin = origin.rstrip(".").lower()
        if signed is None:
            signed = origin in self._signed if origin in self._zones else self.signed
        self._zones[origin] = list(records)
        if signed:
            self._signed.add(origin)
        else:
            self._signed.discard(origin)
            self._bogus.discard(origin)

    def sign(self, *origins: str) -> None:
        """Sign these zones (set with :meth:`zone`) too."""
        self._signed.update(o.rstrip(".").lower() for o in origins)

    def bogus(self, *origins: str) -> None:
        """Sign these zones, but give resolvers an anchor for a key they do not use."""
        self.sign(*origins)
        self._bogus.update(o.rstrip(".").lower() for o in origins)

    def broken_zone(self, origin: str) -> None:
        """A zone the server is configured for but cannot load: it answers SERVFAIL."""
        self._broken.add(origin.rstrip(".").lower())

    def ptr(self, ip: str, *names: str) -> None:
        """PTR records for a 127.0.0.0/8 address in the loopback reverse zone."""
        if ipaddress.ip_address(ip) not in ipaddress.ip_network("127.0.0.0/8"):
            raise ValueError(f"{ip} is not a loopback address")
        owner = dns.reversename.from_address(ip).to_text()
        records = self._zones.setdefault(REVERSE_ZONE, [])
        records.extend(f"{owner} PTR {name.rstrip('.')}." for name in names)

    @property
    def directive(self) -> str:
        """The value for gmta's ``dns_servers`` directive."""
        return f"{self.address}:{self.port}"

    def _write_zones(self) -> None:
        self._serial += 1
        for origin, records in self._zones.items():
            lines = [f"$ORIGIN {origin}.", "$TTL 0",
                     f"@ SOA ns.{origin}. hostmaster.{origin}. {self._serial} 3600 600 86400 0",
                     "@ NS ns.invalid."] + records
            (self.directory / "zones" / f"{origin}.zone").write_text("\n".join(lines) + "\n")
        for origin in self._broken:
            (self.directory / "zones" / f"{origin}.zone").write_text("this is not a zone file\n")

    def _write_config(self) -> Path:
        zones = "".join(f"  - domain: {origin}\n" +
                        ("    dnssec-signing: on\n    dnssec-policy: test\n"
                         "    serial-policy: increment\n"
                         if origin in self._signed else "")
                        for origin in [*self._zones, *self._broken])
        config = f"""server:
    rundir: "{self.directory}"
    listen: {self.address}@{self.port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: info
database:
    storage: "{self.directory}/db"
control:
    listen: "{self.directory}/knot.sock"
    timeout: 5
policy:
  - id: test
    algorithm: ecdsap256sha256
    # One combined key (CSK) that never rolls: an anchor stays valid all test long.
    single-type-signing: on
    ksk-lifetime: 0
    zsk-lifetime: 0
    dnskey-ttl: 0
    zone-max-ttl: 0
    nsec3: off
    # TTL 0 zones: signatures that stay valid for the whole test run.
    rrsig-lifetime: 14d
    rrsig-refresh: 7d
template:
  - id: default
    storage: "{self.directory}/zones"
    file: "%s.zone"
    zonefile-load: whole
    zonefile-sync: -1
    journal-content: none
    semantic-checks: on
zone:
{zones}"""
        path = self.directory / "knot.conf"
        path.write_text(config)
        return path

    # -- process --------------------------------------------------------------------------

    def start(self) -> "AuthoritativeDNS":
        if not self._zones:
            self.zone(REVERSE_ZONE, [])  # knotd needs a zone; this one answers PTR queries
        else:
            self._zones.setdefault(REVERSE_ZONE, [])
        last_log = ""
        for _ in range(START_ATTEMPTS):
            self.port = self.fixed_port or free_port(self.address)
            self._write_zones()
            config = self._write_config()
            log = open(self.directory / "knotd.log", "wb")
            self.proc = subprocess.Popen([KNOTD, "-c", str(config)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
            log.close()
            if self._wait_serving(self._serial):
                return self
            last_log = (self.directory / "knotd.log").read_text(errors="replace")
            self.stop()
        raise RuntimeError(f"knotd did not start on {self.address}; its log:\n{last_log}")

    def reload(self) -> None:
        """Serve the zones as they are now; returns once every zone has the new serial."""
        # The served serial of a signed zone is the written one plus knotd's
        # bumps; jump past it so that "at least the written serial" means new data.
        served = [self.soa_serial(o) or 0 for o in self._signed]
        self._serial = max([self._serial, *served]) + 1
        self._write_zones()
        self._write_config()
        # Re-reads the configuration (new zones) and every changed zone file.
        self._knotc("reload")
        if not self._wait_serving(self._serial):
            raise RuntimeError("knotd did not serve the new zones; its log:\n" +
                               (self.directory / "knotd.log").read_text(errors="replace"))

    def _knotc(self, *args: str) -> None:
        subprocess.run([KNOTC, "-c", str(self.directory / "knot.conf"), *args], check=True,
                       capture_output=True, timeout=STOP_TIMEOUT)

    def _wait_serving(self, serial: int) -> bool:
        """Poll every zone's SOA until it has *serial*; False if knotd died or the deadline passed.

        knotd bumps the serial of a zone it signs, so a signed zone is ready
        once it serves at least the written serial with a signed SOA.
        """
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

    def _anchor_key(self, origin: str) -> dns.rdtypes.ANY.DNSKEY.DNSKEY:
        """The key a resolver should trust for signed zone *origin* (a stranger's if bogus)."""
        if origin in self._bogus:
            return _unrelated_dnskey()
        query = dns.message.make_query(origin + ".", dns.rdatatype.DNSKEY)
        response = dns.query.udp(query, self.address, timeout=2, port=self.port)
        keys = [r for rrset in response.answer for r in rrset
                if rrset.rdtype == dns.rdatatype.DNSKEY]
        return next(k for k in keys if k.flags & 0x0001)  # SEP bit: the KSK/CSK (RFC 4034 §2.1.1)

    def trust_anchors(self) -> list[str]:
        """The signed zones' keys as zone-file lines (``origin. DNSKEY ...``)."""
        return [f"{origin}. DNSKEY {self._anchor_key(origin).to_text()}"
                for origin in sorted(self._signed)]

    def anchors(self) -> list[str]:
        """The signed zones' keys as DS lines (``origin. DS ...``), for unbound ``trust-anchor``."""
        lines = []
        for origin in sorted(self._signed):
            ds = dns.dnssec.make_ds(dns.name.from_text(origin), self._anchor_key(origin), "SHA256")
            lines.append(f"{origin}. DS {ds.to_text()}")
        return lines

    def soa_serial(self, origin: str) -> int | None:
        """The SOA serial the server gives for *origin*, or None if it does not answer."""
        query = dns.message.make_query(origin + ".", dns.rdatatype.SOA)
        try:
            response = dns.query.udp(query, self.address, timeout=0.5, port=self.port)
        except (OSError, dns.exception.Timeout):
            return None
        if response.rcode() != dns.rcode.NOERROR or not response.answer:
            return None
        return response.answer[0][0].serial

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.proc = None


def _unrelated_dnskey() -> dns.rdtypes.ANY.DNSKEY.DNSKEY:
    """A fresh P-256 DNSKEY (RFC 6605 §4: the point's X and Y, 64 bytes) knotd never saw."""
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
    return dns.rdata.from_text("IN", "DNSKEY", "257 3 13 " + base64.b64encode(point).decode())


@pytest.fixture
def dns_server(tmp_path):
    """A fresh :class:`AuthoritativeDNS` for this test: add zones, then ``start()``."""
    server = AuthoritativeDNS(tmp_path / "dns")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def quiet_dns_server(tmp_path_factory):
    """A DNS server with an empty loopback reverse zone, shared by a test session.

    It answers PTR queries for 127.0.0.0/8 with NXDOMAIN and refuses anything
    else at once: configs that do not name DNS servers point at it, so no test
    waits for (or leaks queries to) the machine's own resolver.
    """
    server = AuthoritativeDNS(tmp_path_factory.mktemp("quiet-dns"), address="127.0.0.54")
    server.start()
    yield server
    server.stop()


UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"


class ValidatingResolver:
    """``unbound`` validating DNSSEC for an :class:`AuthoritativeDNS`'s zones.

    Every zone of the authoritative server is a stub zone here; the signed
    ones are trusted through their keys (:meth:`AuthoritativeDNS.trust_anchors`),
    so their answers carry the AD flag, unsigned ones do not, and a badly
    signed one gives SERVFAIL (RFC 4035 §5.5). gmta's ``dns_servers`` points
    at :attr:`directive`; the address is loopback, so gmta trusts its AD flag.
    """

    def __init__(self, directory: Path, authoritative: AuthoritativeDNS,
                 address: str = "127.0.0.55", anchors: list[str] | None = None):
        self.directory = Path(directory)
        self.authoritative = authoritative
        #: DNSKEY lines to trust; by default the signed zones' own keys. A test
        #: gives other keys to make a zone bogus.
        self.anchors = anchors
        self.address = address
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def directive(self) -> str:
        return f"{self.address}:{self.port}"

    def _write_config(self) -> Path:
        auth = self.authoritative
        anchors = "".join(f'    trust-anchor: "{a}"\n'
                          for a in (self.anchors if self.anchors is not None
                                    else auth.trust_anchors()))
        # RFC 6761 names (test., invalid.) and loopback's reverse zone are
        # answered by unbound itself unless told otherwise.
        nodefault = "".join(f'    local-zone: "{z}." nodefault\n'
                            for z in ("test", "invalid", REVERSE_ZONE))
        stubs = "".join(f'stub-zone:\n    name: "{z}."\n'
                        f"    stub-addr: {auth.address}@{auth.port}\n{self._stub_extra}"
                        for z in self._stub_zones())
        config = f"""server:
    interface: {self.address}@{self.port}
    port: {self.port}
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
    num-threads: 1
    so-reuseport: no
    access-control: 127.0.0.0/8 allow
    module-config: "validator iterator"
    # Zones change during a test: keep nothing longer than the records say.
    cache-max-ttl: 0
    cache-max-negative-ttl: 0
    infra-host-ttl: 1
{self._server_extra}{anchors}{nodefault}remote-control:
    control-enable: no
{stubs}{self._after_stubs()}"""
        path = self.directory / "unbound.conf"
        path.write_text(config)
        return path

    #: More ``server:`` options, and lines for each stub zone (for subclasses).
    _server_extra = ""
    _stub_extra = ""

    def _stub_zones(self) -> list[str]:
        return list(self.authoritative._zones) + sorted(self.authoritative._broken)

    def _after_stubs(self) -> str:
        return ""

    def start(self) -> "ValidatingResolver":
        last_log = ""
        for _ in range(START_ATTEMPTS):
            self.port = free_port(self.address)
            config = self._write_config()
            log = open(self.directory / "unbound.log", "wb")
            self.proc = subprocess.Popen([UNBOUND, "-d", "-c", str(config)],
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
            log.close()
            if self._wait_answering():
                return self
            last_log = (self.directory / "unbound.log").read_text(errors="replace")
            self.stop()
        raise RuntimeError(f"unbound did not start on {self.address}; its log:\n{last_log}")

    def _wait_answering(self) -> bool:
        origin = next(iter(self.authoritative._zones))
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            query = dns.message.make_query(origin + ".", dns.rdatatype.SOA)
            try:
                # Any answer will do, SERVFAIL included: a test may make a zone bogus.
                dns.query.udp(query, self.address, timeout=0.5, port=self.port)
                return True
            except (OSError, dns.exception.Timeout):
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.proc = None


@pytest.fixture
def validating_resolver(tmp_path, dns_server):
    """``validating_resolver(dns_server)`` → a started ValidatingResolver (stopped at the end).

    Start the authoritative ``dns_server`` with its zones first.
    """
    started: list[ValidatingResolver] = []

    def start(authoritative: AuthoritativeDNS = dns_server,
              anchors: list[str] | None = None) -> ValidatingResolver:
        resolver = ValidatingResolver(tmp_path / f"unbound-{len(started)}", authoritative,
                                      anchors=anchors)
        started.append(resolver)
        return resolver.start()

    yield start
    for resolver in started:
        resolver.stop()
