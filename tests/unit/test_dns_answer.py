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


def test_servfail_text_says_when_the_resolver_blames_dnssec():
    # RFC 8914: unbound (ede: yes) says why it answers SERVFAIL; a bogus zone's
    # failure must read as a DNSSEC failure, not as an unreachable server.
    import dns.edns
    import dns.message
    import dns.rcode
    import dns.resolver

    from gmta.net.dns import _failure_text

    def servfail(*options):
        response = dns.message.make_response(dns.message.make_query("x.test.", "MX"))
        response.set_rcode(dns.rcode.SERVFAIL)
        response.use_edns(0, options=list(options))
        return dns.message.from_wire(response.to_wire())

    bogus = servfail(dns.edns.EDEOption(dns.edns.EDECode.DNSSEC_BOGUS, "signature mismatch"))
    other = servfail(dns.edns.EDEOption(dns.edns.EDECode.NETWORK_ERROR))
    error = dns.resolver.NoNameservers(request=dns.message.make_query("x.test.", "MX"), errors=[
        ("127.0.0.1@53", False, 53, "SERVFAIL", bogus),
        ("127.0.0.2@53", False, 53, "SERVFAIL", other),
        ("127.0.0.3@53", False, 53, "SERVFAIL", servfail()),
        ("127.0.0.4@53", False, 53, OSError("unreachable"), None)])
    assert _failure_text(error) == (
        "SERVFAIL from 127.0.0.1@53 (DNSSEC validation failed, EDE 6 DNSSEC BOGUS: "
        "signature mismatch); SERVFAIL from 127.0.0.2@53 (EDE 23 NETWORK ERROR); "
        "SERVFAIL from 127.0.0.3@53; unreachable from 127.0.0.4@53")
