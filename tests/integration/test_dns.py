"""gmta.net.dns against a real authoritative server (knotd) on loopback.

Unresponsive servers are real UDP sockets that never answer (``black_hole``);
SERVFAIL comes from knotd itself, for a zone it cannot load.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time

import gevent
import pytest

from gmta.net.dns import (Addresses, BadName, DNSTimeout, NXDomain, Resolver, ServerFailure,
                          resolver_for)
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration

TLSA_DATA = "3 1 1 " + "ab" * 32


@pytest.fixture
def black_hole():
    """A loopback UDP "DNS server" that never answers: (address, port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.59", 0))
        yield sock.getsockname()


@pytest.fixture
def example(dns_server):
    dns_server.zone("example.test", [
        "@ MX 10 mx1", "@ MX 20 mx2.other.test.",
        '@ TXT "v=spf1 " "-all"', '@ TXT "second"',
        "mx1 A 127.0.0.2", "mx1 AAAA ::1",
        "v4only A 127.0.0.3", "v6only AAAA ::1",
        "alias CNAME mx1",
        "_25._tcp.mx1 TLSA " + TLSA_DATA,
        "_25._tcp.alias CNAME _25._tcp.mx1",
        "outside CNAME target.other.test.",
        "_25._tcp.outside CNAME _25._tcp.target.other.test.",
        "loop CNAME loop.other.test.",
        "cached 60 A 127.0.0.4", "cached2 60 A 127.0.0.5",
    ])
    dns_server.zone("other.test", [
        "target A 127.0.0.9",
        "_25._tcp.target TLSA " + TLSA_DATA,
        "loop CNAME loop.example.test.",
    ])
    dns_server.broken_zone("broken.test")
    dns_server.ptr("127.0.0.5", "mail.example.test")
    dns_server.start()
    return dns_server


def resolver_of(server, **kwargs) -> Resolver:
    return Resolver(((server.address, server.port),), **kwargs)


def test_mx_txt_tlsa_ptr_records(example):
    resolver = resolver_of(example)
    mx = resolver.mx("example.test")
    assert sorted((r.preference, r.exchange.to_text()) for r in mx.records) == \
        [(10, "mx1.example.test."), (20, "mx2.other.test.")]
    assert (mx.qname, mx.rdtype, mx.canonical_name) == ("example.test", "MX", "example.test")
    assert sorted(resolver.txt("example.test").texts) == [b"second", b"v=spf1 -all"]
    [tlsa] = resolver.tlsa("mx1.example.test").records
    assert (tlsa.usage, tlsa.selector, tlsa.mtype, tlsa.cert) == (3, 1, 1, b"\xab" * 32)
    ptr = resolver.ptr("127.0.0.5")
    assert ptr.qname == "5.0.0.127.in-addr.arpa"
    assert [r.target.to_text() for r in ptr.records] == ["mail.example.test."]


def test_answers_say_they_came_from_a_loopback_resolver_without_ad(example):
    """knotd is authoritative, not validating: no AD, so nothing is authenticated."""
    answer = resolver_of(example).mx("example.test")
    assert answer.loopback_resolver is True
    assert answer.ad is False and answer.authenticated is False


def test_addresses_ipv6_first_and_force_ipv4(example):
    resolver = resolver_of(example)
    assert resolver.addresses("mx1.example.test") == \
        Addresses("mx1.example.test", "mx1.example.test", ("::1", "127.0.0.2"), False)
    assert resolver.addresses("mx1.example.test", force_ipv4=True).addresses == ("127.0.0.2",)
    assert resolver.addresses("v4only.example.test").addresses == ("127.0.0.3",)
    assert resolver.addresses("v6only.example.test", force_ipv4=True).addresses == ()


def test_nodata_is_an_empty_answer_and_nxdomain_an_error(example):
    resolver = resolver_of(example)
    nodata = resolver.resolve("mx1.example.test", "MX")
    assert nodata.records == () and nodata.ttl == 0
    with pytest.raises(NXDomain) as caught:
        resolver.mx("nowhere.example.test")
    assert caught.value.temporary is False
    assert "NXDOMAIN" in str(caught.value) and "nowhere.example.test" in str(caught.value)


def test_cname_is_followed_inside_and_across_zones(example):
    resolver = resolver_of(example)
    inside = resolver.addresses("alias.example.test")
    assert (inside.canonical_name, inside.addresses) == ("mx1.example.test", ("::1", "127.0.0.2"))
    # knotd is not authoritative for the target's zone, so it answers with the
    # CNAME alone; the resolver asks again for the target.
    outside = resolver.addresses("outside.example.test")
    assert (outside.canonical_name, outside.addresses) == ("target.other.test", ("127.0.0.9",))
    tlsa = resolver.tlsa("outside.example.test")
    assert tlsa.canonical_name == "_25._tcp.target.other.test"
    assert len(tlsa.records) == 1
    assert resolver.tlsa("alias.example.test").canonical_name == "_25._tcp.mx1.example.test"


def test_cname_loop_is_bounded(example):
    with pytest.raises(ServerFailure, match="more than 8 CNAMEs"):
        resolver_of(example).addresses("loop.example.test", force_ipv4=True)


def test_servfail_and_refused_are_temporary_server_failures(example):
    resolver = resolver_of(example)
    with pytest.raises(ServerFailure) as caught:
        resolver.mx("broken.test")
    assert caught.value.temporary is True
    assert f"SERVFAIL from {example.address}@{example.port}" in caught.value.detail
    with pytest.raises(ServerFailure, match="REFUSED"):
        resolver.mx("not-served.test")  # knotd is not authoritative for it


def test_bad_names_are_permanent(example):
    with pytest.raises(BadName):
        resolver_of(example).mx("a..b")
    with pytest.raises(BadName):
        resolver_of(example).ptr("not-an-ip")


def test_unresponsive_server_times_out_within_the_lifetime(black_hole):
    resolver = Resolver((black_hole,), query_timeout=0.3, lifetime=0.6)
    started = time.monotonic()
    with pytest.raises(DNSTimeout) as caught:
        resolver.mx("example.test")
    assert 0.5 < time.monotonic() - started < 3
    assert caught.value.temporary is True and caught.value.kind == "timeout"
    # A caller's shorter lifetime wins.
    started = time.monotonic()
    with pytest.raises(DNSTimeout):
        resolver.mx("example.test", lifetime=0.2)
    assert time.monotonic() - started < 0.6


def test_next_server_is_asked_when_the_first_does_not_answer(example, black_hole):
    resolver = Resolver((black_hole, (example.address, example.port)),
                        query_timeout=0.3, lifetime=3)
    assert resolver.addresses("v4only.example.test").addresses == ("127.0.0.3",)


def test_slow_server_does_not_stop_other_greenlets(black_hole):
    """The hub keeps running while a lookup waits (this process is not monkey-patched)."""
    resolver = Resolver((black_hole,), query_timeout=1, lifetime=1)
    ticks = []

    def ticker():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.02)

    background = gevent.spawn(ticker)
    try:
        with pytest.raises(DNSTimeout):
            gevent.spawn(resolver.mx, "example.test").get(timeout=5)
    finally:
        background.kill()
    # A blocked hub would give one or two ticks, not one every 20 ms.
    assert len(ticks) > 20


def test_monkey_patched_process_cooperates(black_hole, example):
    """As in ``gmta run``: after monkey.patch_all the lookup suspends only its greenlet."""
    script = textwrap.dedent(f"""
        from gevent import monkey
        monkey.patch_all()
        import time, gevent
        from gmta.net.dns import Resolver, DNSTimeout
        ticks = []
        def ticker():
            while True:
                ticks.append(1)
                gevent.sleep(0.02)
        background = gevent.spawn(ticker)
        slow = Resolver(({black_hole!r},), query_timeout=1, lifetime=1)
        try:
            gevent.spawn(slow.mx, "example.test").get(timeout=5)
        except DNSTimeout:
            pass
        background.kill()
        good = Resolver((({example.address!r}, {example.port}),))
        print(len(ticks), good.addresses("v4only.example.test").addresses)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    ticks, addresses = result.stdout.split(" ", 1)
    assert int(ticks) > 20
    assert addresses.strip() == "('127.0.0.3',)"


def test_cache_keeps_answers_for_their_ttl_and_is_bounded(example):
    resolver = resolver_of(example, cache_size=1)
    assert resolver.addresses("cached.example.test", force_ipv4=True).addresses == ("127.0.0.4",)
    example.zone("example.test", ["cached 60 A 127.0.0.40", "cached2 60 A 127.0.0.50",
                                  "uncached A 127.0.0.6"])
    example.reload()
    # TTL 60: the answer from before the change is still used.
    assert resolver.addresses("cached.example.test", force_ipv4=True).addresses == ("127.0.0.4",)
    # TTL 0 records are never cached.
    assert resolver.addresses("uncached.example.test", force_ipv4=True).addresses == \
        ("127.0.0.6",)
    # A cache of one entry: asking for another name evicted the first.
    assert resolver.addresses("cached2.example.test", force_ipv4=True).addresses == \
        ("127.0.0.50",)
    assert resolver.addresses("cached.example.test", force_ipv4=True).addresses == \
        ("127.0.0.40",)


def test_without_dns_servers_and_resolv_conf_nothing_is_asked():
    """The suite's guard (tests/conftest.py) points resolv.conf at a missing file."""
    with pytest.raises(ServerFailure, match="no DNS server configured"):
        Resolver().mx("example.test")


def test_one_shared_resolver_per_dns_servers_value(example):
    servers = ((example.address, example.port),)
    assert resolver_for(servers) is resolver_for(servers)
    assert resolver_for(servers) is not resolver_for(())
    assert resolver_for(servers).addresses("v4only.example.test").addresses == ("127.0.0.3",)
