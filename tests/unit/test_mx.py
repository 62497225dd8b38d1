"""The pure parts of RFC 5321 §5.1 MX resolution (gmta.net.mx), without DNS."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gmta.errors import SMTPError
from gmta.net.dns import DNSTimeout, NXDomain, ServerFailure
from gmta.net.mx import (MXHost, dns_failure, is_null_mx, order_mx, parse_address_literal,
                         without_local_hosts)


def names(hosts: list[MXHost]) -> list[str]:
    return [host.name for host in hosts]


def test_sorted_by_preference_and_names_normalised():
    hosts = order_mx([(20, "B.example."), (5, "a.example."), (10, "c.example")])
    assert [(h.preference, h.name) for h in hosts] == \
        [(5, "a.example"), (10, "c.example"), (20, "b.example")]


def test_equal_preferences_are_shuffled_and_lower_ones_stay_first():
    records = [(10, "a."), (10, "b."), (10, "c."), (5, "first."), (20, "last.")]
    firsts = Counter()
    for seed in range(300):
        order = names(order_mx(records, random.Random(seed)))
        assert order[0] == "first" and order[-1] == "last"
        assert sorted(order[1:4]) == ["a", "b", "c"]
        firsts[order[1]] += 1
    # RFC 5321 §5.1 wants the load spread: each equal host leads about a third of the time.
    assert set(firsts) == {"a", "b", "c"}
    assert min(firsts.values()) > 60


def test_duplicate_hosts_keep_their_best_preference():
    assert [(h.preference, h.name) for h in order_mx([(20, "mx."), (10, "MX."), (30, "y.")])] \
        == [(10, "mx"), (30, "y")]


@pytest.mark.parametrize("records, null", [
    ([(0, ".")], True),
    ([(0, "")], True),
    ([(10, "mx.example."), (0, ".")], True),  # forbidden mix (RFC 7505 §3): still null
    ([(10, "mx.example.")], False),
    ([], False),
])
def test_null_mx(records, null):
    assert is_null_mx(records) is null


@pytest.mark.parametrize("literal, address", [
    ("[127.0.0.7]", "127.0.0.7"),
    ("[IPv6:::1]", "::1"),
    ("[ipv6:2001:DB8::1]", "2001:db8::1"),
    ("example.com", None),
])
def test_address_literals(literal, address):
    assert parse_address_literal(literal) == address


@pytest.mark.parametrize("literal", [
    "[300.1.1.1]", "[1.2.3]", "[IPv6:1.2.3.4]", "[::1]", "[IPv6:fe80::1%eth0]", "[127.0.0.1",
    "[tag:content]",
])
def test_bad_address_literals_are_550_5_1_2(literal):
    with pytest.raises(SMTPError) as caught:
        parse_address_literal(literal)
    assert (caught.value.code, caught.value.enhanced) == (550, (5, 1, 2))
    assert caught.value.misc["dns"] == "bad_literal"


def test_local_host_in_the_list_keeps_only_better_preferences():
    hosts = order_mx([(10, "better."), (20, "me."), (20, "peer."), (30, "worse.")])
    assert names(without_local_hosts(hosts, frozenset({"me"}))) == ["better"]
    assert names(without_local_hosts(hosts, frozenset({"other"}))) == names(hosts)
    assert without_local_hosts(hosts[1:], frozenset({"me"})) == []


@pytest.mark.parametrize("error, code, kind, words", [
    (DNSTimeout("d.test", "MX", "no answer within 10 s"), (451, (4, 4, 3)), "timeout",
     "DNS timeout looking up MX records of d.test: no answer within 10 s"),
    (ServerFailure("d.test", "MX", "SERVFAIL from 127.0.0.1@53"), (451, (4, 4, 3)), "servfail",
     "DNS server failure looking up MX records of d.test: SERVFAIL from 127.0.0.1@53"),
    (NXDomain("d.test", "MX", "no such domain (NXDOMAIN)"), (550, (5, 1, 2)), "nxdomain",
     "MX records of d.test: no such domain (NXDOMAIN)"),
])
def test_dns_failures_say_which_failure_with_matching_codes(error, code, kind, words):
    smtp = dns_failure(error, "MX records of d.test", permanent=(550, (5, 1, 2)))
    assert (smtp.code, smtp.enhanced) == code
    assert smtp.text == words
    assert smtp.misc["dns"] == kind
