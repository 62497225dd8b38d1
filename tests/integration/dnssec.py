"""A validating resolver (unbound) for signed zones, and the fixtures of the mx_auth tests.

The signed zones themselves are :class:`tests.integration.dnsserver.AuthoritativeDNS`'s
(``signed=True``: knotd signs every zone it is given unless told otherwise).

:class:`ValidatingResolver` is ``unbound`` from Debian on a loopback address
and a free port, forwarding every query to knotd and validating with the
zones' anchors (DS). It never asks anyone else: every name goes to knotd
(which refuses what it does not serve), and no root hints are ever primed.
gmta's resolver pointed at it sees the AD flag on signed data, SERVFAIL on
bogus data::

    def test_x(signed_dns, signed_zone_resolver):
        signed_dns.zone("example.test", [...])            # signed
        signed_dns.zone("plain.test", [...], signed=False)
        signed_dns.start()
        resolver = signed_zone_resolver(signed_dns)      # started, anchors loaded
        config = f"dns_servers {resolver.directive}"

A *bogus* zone (``signed_dns.bogus(origin)``) is signed by knotd but anchored
to a key it does not have: every answer from it fails validation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration import dnsserver
from tests.integration.dnsserver import AuthoritativeDNS

RESOLVER_ADDRESS = "127.0.0.1"


class ValidatingResolver(dnsserver.ValidatingResolver):
    """``unbound`` validating with the anchors (DS) of an :class:`AuthoritativeDNS`.

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
    """A fresh ``AuthoritativeDNS(signed=True)``: add zones (signed unless told), then ``start()``."""
    server = AuthoritativeDNS(tmp_path / "dns", signed=True)
    yield server
    server.stop()


@pytest.fixture
def signed_zone_resolver(tmp_path):
    """``signed_zone_resolver(signed_dns)`` → a started :class:`ValidatingResolver`."""
    started: list[ValidatingResolver] = []

    def start(upstream: AuthoritativeDNS) -> ValidatingResolver:
        resolver = ValidatingResolver(tmp_path / f"unbound-{len(started)}", upstream,
                                      upstream.anchors())
        started.append(resolver)
        return resolver.start()

    yield start
    for resolver in started:
        resolver.stop()
