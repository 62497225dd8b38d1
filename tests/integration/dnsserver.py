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

Every wait is bounded (``READY_TIMEOUT``); knotd's own log is kept in
``<directory>/knotd.log`` and shown when it fails to start.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

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

    def __init__(self, directory: Path, address: str = DEFAULT_ADDRESS, port: int | None = None):
        self.directory = Path(directory)
        self.address = address
        # A fixed port (53) serves resolvers that cannot be told one: glibc's
        # resolv.conf, as Postfix uses (bench/remote.py); by default a free port.
        self.fixed_port = port
        self.port: int | None = port
        self.proc: subprocess.Popen | None = None
        self._zones: dict[str, list[str]] = {}
        self._broken: set[str] = set()
        self._signed: set[str] = set()
        self._serial = 1
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "zones").mkdir(exist_ok=True)
        (self.directory / "db").mkdir(exist_ok=True)  # journal, timers, DNSSEC keys

    # -- zone data ------------------------------------------------------------------------

    def zone(self, origin: str, records: list[str], *, signed: bool = False) -> None:
        """Set the records of zone *origin* (zone-file lines, names relative to it).

        A *signed* zone is signed by knotd with keys it makes at start
        (DNSSEC, RFC 4033–4035); :meth:`trust_anchors` gives their DNSKEYs
        for a validating resolver (:class:`ValidatingResolver`).
        """
        origin = origin.rstrip(".").lower()
        self._zones[origin] = list(records)
        if signed:
            self._signed.add(origin)

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
    single-type-signing: on
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
        """Poll every zone's SOA until it has *serial*; False if knotd died or the deadline passed."""
        deadline = time.monotonic() + READY_TIMEOUT
        pending = set(self._zones)
        while pending:
            if self.proc is None or self.proc.poll() is not None:
                return False
            for origin in list(pending):
                if self.soa_serial(origin) == serial:
                    pending.discard(origin)
            if pending:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
        return True

    def trust_anchors(self) -> list[str]:
        """The DNSKEY records (as zone-file lines) of the signing keys of the signed zones."""
        anchors = []
        for origin in sorted(self._signed):
            query = dns.message.make_query(origin + ".", dns.rdatatype.DNSKEY)
            response = dns.query.udp(query, self.address, timeout=2, port=self.port)
            for rrset in response.answer:
                # Flags 257: a secure entry point (KSK or CSK), RFC 4034 §2.1.1.
                anchors += [f"{origin}. DNSKEY {rdata.to_text()}" for rdata in rrset
                            if rdata.flags == 257]
        return anchors

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
        zones = list(auth._zones) + sorted(auth._broken)
        anchors = "".join(f'    trust-anchor: "{a}"\n'
                          for a in (self.anchors if self.anchors is not None
                                    else auth.trust_anchors()))
        # RFC 6761 names (test., invalid.) and loopback's reverse zone are
        # answered by unbound itself unless told otherwise.
        nodefault = "".join(f'    local-zone: "{z}." nodefault\n'
                            for z in ("test", "invalid", REVERSE_ZONE))
        stubs = "".join(f'stub-zone:\n    name: "{z}."\n'
                        f"    stub-addr: {auth.address}@{auth.port}\n" for z in zones)
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
    num-threads: 1
    so-reuseport: no
    access-control: 127.0.0.0/8 allow
    module-config: "validator iterator"
    # Zones change during a test: keep nothing longer than the records say.
    cache-max-ttl: 0
    cache-max-negative-ttl: 0
    infra-host-ttl: 1
{anchors}{nodefault}remote-control:
    control-enable: no
{stubs}"""
        path = self.directory / "unbound.conf"
        path.write_text(config)
        return path

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
