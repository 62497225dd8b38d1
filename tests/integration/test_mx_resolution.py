"""RFC 5321 §5.1 MX resolution (gmta.net.mx) against a real knotd (maddy-behaviour §3.5 R1–R4).

Each case names its domain in one zone set; the codes are those of the table
in gmta/net/mx.py.
"""

from __future__ import annotations

import random
import socket
import time

import pytest

from gmta.errors import SMTPError
from gmta.net.dns import Resolver
from gmta.net.mx import MXHost, host_addresses, resolve_mx

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mx_dns(tmp_path_factory):
    from tests.integration.dnsserver import AuthoritativeDNS
    server = AuthoritativeDNS(tmp_path_factory.mktemp("mx-dns"))
    server.zone("mx.test", [
        # Two MX at 10 (shuffled), one at 20, one at 5 pointing through a CNAME.
        "multi MX 10 a.hosts.mx.test.", "multi MX 10 b.hosts.mx.test.",
        "multi MX 20 backup.hosts.mx.test.", "multi MX 5 alias.hosts.mx.test.",
        "a.hosts A 127.0.0.2", "b.hosts A 127.0.0.3", "backup.hosts A 127.0.0.4",
        "alias.hosts CNAME a.hosts",
        "v6.hosts AAAA ::1", "dual.hosts A 127.0.0.5", "dual.hosts AAAA ::1",
        "implicit A 127.0.0.6", "implicit AAAA ::1",
        "implicit6 AAAA ::1",
        "nothing TXT \"exists but has neither MX nor address\"",
        "null MX 0 .",
        "nullmixed MX 0 .", "nullmixed MX 10 a.hosts.mx.test.",
        "dangling MX 10 gone.hosts.mx.test.",
        "noaddr MX 10 nothing.mx.test.",
        "loop MX 10 me.hosts.mx.test.", "loop MX 20 other.hosts.mx.test.",
        "me.hosts A 127.0.0.8",
        "looped MX 10 me.hosts.mx.test.",
    ])
    server.broken_zone("broken.test")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def resolver(mx_dns):
    return Resolver(((mx_dns.address, mx_dns.port),))


def refused(call) -> SMTPError:
    with pytest.raises(SMTPError) as caught:
        call()
    return caught.value


def test_mx_hosts_in_preference_order_with_equal_ones_shuffled(resolver):
    orders = set()
    for seed in range(40):
        result = resolve_mx(resolver, "multi.mx.test", rng=random.Random(seed))
        names = [host.name for host in result.hosts]
        assert names[0] == "alias.hosts.mx.test" and names[-1] == "backup.hosts.mx.test"
        orders.add(tuple(names[1:3]))
        assert not result.authenticated  # knotd sets no AD flag
    assert orders == {("a.hosts.mx.test", "b.hosts.mx.test"),
                      ("b.hosts.mx.test", "a.hosts.mx.test")}


def test_each_host_gives_its_addresses(resolver):
    hosts = resolve_mx(resolver, "multi.mx.test").hosts
    found = {host.name: host_addresses(resolver, host) for host in hosts}
    assert found == {"alias.hosts.mx.test": ("127.0.0.2",), "a.hosts.mx.test": ("127.0.0.2",),
                     "b.hosts.mx.test": ("127.0.0.3",), "backup.hosts.mx.test": ("127.0.0.4",)}
    dual = MXHost("dual.hosts.mx.test", 10)
    assert host_addresses(resolver, dual) == ("::1", "127.0.0.5")
    assert host_addresses(resolver, dual, force_ipv4=True) == ("127.0.0.5",)


def test_implicit_mx_is_the_domain_with_its_addresses(resolver):
    """R2: a domain with only address records gets mail at those addresses."""
    [host] = resolve_mx(resolver, "implicit.mx.test").hosts
    assert (host.name, host.preference, host.implicit) == ("implicit.mx.test", 0, True)
    assert host_addresses(resolver, host) == ("::1", "127.0.0.6")
    assert host_addresses(resolver, host, force_ipv4=True) == ("127.0.0.6",)
    [ipv6_only] = resolve_mx(resolver, "implicit6.mx.test").hosts
    assert host_addresses(resolver, ipv6_only) == ("::1",)


def test_no_mx_and_no_address_is_permanent_5_1_2(resolver):
    """R3."""
    error = refused(lambda: resolve_mx(resolver, "nothing.mx.test"))
    assert (error.code, error.enhanced, error.misc["dns"]) == (550, (5, 1, 2), "no_address")
    assert error.text == "Domain nothing.mx.test has no MX and no address records"
    error = refused(lambda: resolve_mx(resolver, "implicit6.mx.test", force_ipv4=True))
    assert (error.code, error.enhanced) == (550, (5, 1, 2))
    assert "usable with force_ipv4" in error.text


def test_missing_domain_is_permanent_5_1_2_and_says_nxdomain(resolver):
    error = refused(lambda: resolve_mx(resolver, "missing.mx.test"))
    assert (error.code, error.enhanced, error.misc["dns"]) == (550, (5, 1, 2), "nxdomain")
    assert error.text == "MX records of missing.mx.test: no such domain (NXDOMAIN)"


@pytest.mark.parametrize("domain", ["null.mx.test", "nullmixed.mx.test"])
def test_null_mx_is_556_5_1_10(resolver, domain):
    """R4 (RFC 7505)."""
    error = refused(lambda: resolve_mx(resolver, domain))
    assert (error.code, error.enhanced) == (556, (5, 1, 10))
    assert error.text == f"Domain {domain} does not accept email (null MX)"


def test_servfail_is_temporary_4_4_3_and_says_server_failure(resolver, mx_dns):
    error = refused(lambda: resolve_mx(resolver, "broken.test"))
    assert (error.code, error.enhanced, error.misc["dns"]) == (451, (4, 4, 3), "servfail")
    assert error.text == ("DNS server failure looking up MX records of broken.test: "
                          f"SERVFAIL from {mx_dns.address}@{mx_dns.port}"
                          # knotd says why (RFC 8914): the zone did not load.
                          " (EDE 24 INVALID DATA)")


def test_timeout_is_temporary_4_4_3_and_says_timeout():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as black_hole:
        black_hole.bind(("127.0.0.59", 0))
        resolver = Resolver((black_hole.getsockname(),), query_timeout=0.2, lifetime=0.4)
        error = refused(lambda: resolve_mx(resolver, "multi.mx.test"))
        assert (error.code, error.enhanced, error.misc["dns"]) == (451, (4, 4, 3), "timeout")
        assert error.text.startswith("DNS timeout looking up MX records of multi.mx.test: ")
        error = refused(lambda: host_addresses(resolver, MXHost("a.hosts.mx.test", 10)))
        assert (error.code, error.enhanced) == (451, (4, 4, 3))
        assert "MX host a.hosts.mx.test" in error.text


def test_mx_host_without_address_is_5_4_4(resolver):
    [gone] = resolve_mx(resolver, "dangling.mx.test").hosts
    error = refused(lambda: host_addresses(resolver, gone))
    assert (error.code, error.enhanced, error.misc["dns"]) == (550, (5, 4, 4), "nxdomain")
    assert error.text == "address of MX host gone.hosts.mx.test: no such domain (NXDOMAIN)"
    [nothing] = resolve_mx(resolver, "noaddr.mx.test").hosts
    error = refused(lambda: host_addresses(resolver, nothing))
    assert (error.code, error.enhanced, error.misc["dns"]) == (550, (5, 4, 4), "no_address")
    error = refused(lambda: host_addresses(resolver, MXHost("v6.hosts.mx.test", 10),
                                           force_ipv4=True))
    assert error.text == "v6.hosts.mx.test has no A records (force_ipv4)"


def test_address_literals_need_no_dns():
    """RFC 5321 §5.1: a literal is the address to use. The resolver here could not answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as black_hole:
        black_hole.bind(("127.0.0.59", 0))
        resolver = Resolver((black_hole.getsockname(),), query_timeout=2, lifetime=2)
        started = time.monotonic()
        [v4] = resolve_mx(resolver, "[127.0.0.7]").hosts
        [v6] = resolve_mx(resolver, "[IPv6:::1]").hosts
        assert host_addresses(resolver, v4) == ("127.0.0.7",)
        assert host_addresses(resolver, v6) == ("::1",)
        assert time.monotonic() - started < 1
    assert v4.literal and v6.literal
    error = refused(lambda: host_addresses(resolver, v6, force_ipv4=True))
    assert (error.code, error.enhanced) == (550, (5, 4, 4))


def test_mx_list_leading_back_to_us(resolver):
    """RFC 5321 §5.1: as an MX of the domain, relay only to better-preferred hosts."""
    result = resolve_mx(resolver, "loop.mx.test", local_names=frozenset({"other.hosts.mx.test"}))
    assert [host.name for host in result.hosts] == ["me.hosts.mx.test"]
    error = refused(lambda: resolve_mx(resolver, "looped.mx.test",
                                       local_names=frozenset({"me.hosts.mx.test"})))
    assert (error.code, error.enhanced, error.misc["dns"]) == (550, (5, 4, 6), "loop")
