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

    # Validation that does not fall back on stale or unvalidated data.
    _server_extra = """    do-ip6: no
    qname-minimisation: no
    aggressive-nsec: no
    prefetch: no
    serve-expired: no
    harden-dnssec-stripped: yes
    val-bogus-ttl: 0
    outgoing-range: 64
"""
    _stub_extra = "    stub-first: no\n"

    def _stub_zones(self) -> list[str]:
        return sorted(self.authoritative._zones)

    def _after_stubs(self) -> str:
        # Every other name to the test server too: insecure, not waiting for a root.
        return (f'forward-zone:\n    name: "."\n'
                f"    forward-addr: {self.authoritative.address}@{self.authoritative.port}\n")


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
