"""The trust rule of gmta.net.dns answers (no network)."""

from __future__ import annotations

import pytest

from gmta.net.dns import Answer, _is_loopback


@pytest.mark.parametrize("ad, loopback, authenticated", [
    (True, True, True),
    # AD from a resolver across the network proves nothing: nothing protects
    # the flag on the way (RFC 6698 §1.3; target-remote.md's rule).
    (True, False, False),
    (False, True, False),
    (False, False, False),
])
def test_only_ad_from_a_loopback_resolver_is_authenticated(ad, loopback, authenticated):
    answer = Answer("example.test", "MX", "example.test", (), 0, ad, loopback)
    assert answer.authenticated is authenticated


@pytest.mark.parametrize("server, loopback", [
    ("127.0.0.1", True), ("127.0.0.53", True), ("::1", True),
    ("10.255.255.53", False), ("192.0.2.1", False), ("2001:db8::1", False),
    ("https://dns.example/dns-query", False),
])
def test_loopback_servers(server, loopback):
    assert _is_loopback(server) is loopback
