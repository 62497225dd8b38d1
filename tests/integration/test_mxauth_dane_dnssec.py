"""mx_auth dane and dnssec against real signed DNS (knotd + unbound) and real TLS handshakes.

maddy-behaviour §3.5 R14, R16 and R17's #321 regression at the policy level,
plus DANE-TA with a chain, DANE-EE with SPKI SHA-256, a TLSA mismatch that
defers and then succeeds once the record is fixed, and a bogus zone.
"""

from __future__ import annotations

import pytest

from gmta.errors import SMTPError
from gmta.mxauth import ConnectionFacts, MXLevel, TLSLevel
from gmta.net.dns import Resolver
from gmta.net.mx import resolve_mx
from tests.integration.testca import issue, tlsa, write_chain
from tests.integration.tlspeer import TLSPeer, handshake_facts

pytestmark = pytest.mark.timeout(60)

MX_ADDRESS = "127.0.0.2"


@pytest.fixture
def peers():
    started = []

    def start(world, leaf, *chain):
        cert, key = write_chain(world.tmp / "pki", f"mx{len(started)}", leaf, *chain)
        peer = TLSPeer(MX_ADDRESS, cert, key)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


def check(policies, domain, mx, facts, *, mx_authenticated=True):
    auth = policies.for_message()
    try:
        level = auth.check_mx(domain, mx, mx_authenticated=mx_authenticated)
        return auth.check_connection(domain, mx, level, facts)
    finally:
        auth.close()


def test_dnssec_signed_mx_answer_gives_mx_level_dnssec_and_unsigned_does_not(world):
    world.zone("signed.test", ["@ MX 10 mx", f"mx A {MX_ADDRESS}"])
    world.zone("plain.test", ["@ MX 10 mx", f"mx A {MX_ADDRESS}"], signed=False)
    world.start()
    resolver = Resolver(((world.resolver.address, world.resolver.port),))
    signed, plain = resolve_mx(resolver, "signed.test"), resolve_mx(resolver, "plain.test")
    assert signed.authenticated and not plain.authenticated
    policies = world.policies("dnssec\nlocal_policy { min_mx_level dnssec }")
    auth = policies.for_message()
    assert auth.check_mx("signed.test", "mx.signed.test",
                         mx_authenticated=signed.authenticated) == MXLevel.DNSSEC
    with pytest.raises(SMTPError) as refused:
        auth.check_mx("plain.test", "mx.plain.test", mx_authenticated=plain.authenticated)
    assert "(local_policy)" in refused.value.text and "min_mx_level is dnssec" in refused.value.text


def test_ad_flag_from_a_non_loopback_resolver_is_not_believed():
    from gmta.net.dns import Answer
    answer = Answer("x.test", "MX", "x.test", (), 0, ad=True, loopback_resolver=False)
    assert not answer.authenticated


def test_bogus_zone_fails_the_mx_lookup_temporarily(world):
    world.zone("bogus.test", ["@ MX 10 mx", f"mx A {MX_ADDRESS}"])
    world.dns.bogus("bogus.test")
    world.start()
    resolver = Resolver(((world.resolver.address, world.resolver.port),))
    with pytest.raises(SMTPError) as failed:
        resolve_mx(resolver, "bogus.test")
    assert failed.value.code == 451 and "SERVFAIL" in failed.value.text


def test_dane_ee_spki_sha256_authenticates_a_self_signed_certificate(world, peers):
    leaf = issue("mx.dane.test")  # self-signed: PKIX fails, DANE-EE does not care
    world.zone("dane.test", ["@ MX 10 mx", f"mx A {MX_ADDRESS}", f"_25._tcp.mx {tlsa(3, 1, 1, leaf)}"])
    world.start()
    facts = handshake_facts(peers(world, leaf), "mx.dane.test", world.ca_path)
    assert facts.tls_level == TLSLevel.ENCRYPTED
    verdict = check(world.policies("dane\nlocal_policy { min_tls_level authenticated }"),
                    "dane.test", "mx.dane.test", facts)
    assert verdict.tls_level == TLSLevel.AUTHENTICATED


def test_dane_ta_with_a_chain_authenticates_and_checks_the_name(world, peers):
    root = issue("DANE root", ca=True)
    intermediate = issue("DANE intermediate", issuer=root, ca=True)
    leaf = issue("mx.dane.test", issuer=intermediate)
    world.zone("dane.test", ["@ MX 10 mx", f"mx A {MX_ADDRESS}",
                             f"_25._tcp.mx {tlsa(2, 0, 2, intermediate)}",
                             "other A 127.0.0.2", f"_25._tcp.other {tlsa(2, 0, 2, intermediate)}"])
    world.start()
    peer = peers(world, leaf, intermediate)
    policies = world.policies("dane\nlocal_policy { min_tls_level authenticated }")
    facts = handshake_facts(peer, "mx.dane.test", world.ca_path)
    assert len(facts.peer_chain) == 2 and not facts.pkix_verified
    assert check(policies, "dane.test", "mx.dane.test", facts).tls_level == TLSLevel.AUTHENTICATED
    # The same chain for another MX name: the anchor matches, the name does not.
    facts = handshake_facts(peer, "other.dane.test", world.ca_path)
    with pytest.raises(SMTPError) as refused:
        check(policies, "dane.test", "other.dane.test", facts)
    assert (refused.value.code, refused.value.enhanced_str) == (451, "4.7.5")
    assert "No matching TLSA records (dane)" in refused.value.text


def test_tlsa_mismatch_defers_and_succeeds_once_the_record_is_fixed(world, peers):
    leaf, old = issue("mx.dane.test"), issue("mx.dane.test")
    world.zone("dane.test", ["@ MX 10 mx", f"mx A {MX_ADDRESS}", f"_25._tcp.mx {tlsa(3, 1, 1, old)}"])
    world.start()
    peer = peers(world, leaf)
    policies = world.policies("dane")
    with pytest.raises(SMTPError) as refused:
        check(policies, "dane.test", "mx.dane.test",
              handshake_facts(peer, "mx.dane.test", world.ca_path))
    assert refused.value.temporary and refused.value.enhanced_str == "4.7.5"
    assert "_25._tcp.mx.dane.test" in refused.value.text
    world.dns.zone("dane.test", ["@ MX 10 mx", f"mx A {MX_ADDRESS}",
                                 f"_25._tcp.mx {tlsa(3, 1, 1, leaf)}"])
    world.reload()
    verdict = check(policies, "dane.test", "mx.dane.test",
                    handshake_facts(peer, "mx.dane.test", world.ca_path))
    assert verdict.tls_level == TLSLevel.AUTHENTICATED


@pytest.mark.parametrize("facts, code", [
    (ConnectionFacts(starttls_offered=False), "4.7.10"),
    (ConnectionFacts(starttls_offered=True, tls_error="handshake failure"), "4.7.10"),
])
def test_tlsa_without_starttls_or_with_a_failed_handshake_defers(world, facts, code):
    leaf = issue("mx.dane.test")
    world.zone("dane.test", ["@ MX 10 mx", f"mx A {MX_ADDRESS}", f"_25._tcp.mx {tlsa(3, 0, 1, leaf)}"])
    world.start()
    with pytest.raises(SMTPError) as refused:
        check(world.policies("dane\nlocal_policy off"), "dane.test", "mx.dane.test", facts)
    assert refused.value.enhanced_str == code and "(dane)" in refused.value.text


def test_cnamed_mx_uses_the_tlsa_record_at_the_target_or_the_alias(world, peers):
    leaf = issue("mx.dane.test", sans=("mx.dane.test", "real.dane.test"))
    world.zone("dane.test", ["@ MX 10 mx", "mx CNAME real", f"real A {MX_ADDRESS}",
                             f"_25._tcp.real {tlsa(3, 1, 2, leaf)}",
                             "alias CNAME real2", f"real2 A {MX_ADDRESS}",
                             f"_25._tcp.alias {tlsa(3, 0, 0, leaf)}"])
    world.start()
    peer = peers(world, leaf)
    policies = world.policies("dane\nlocal_policy { min_tls_level authenticated }")
    for mx in ("mx.dane.test", "alias.dane.test"):
        verdict = check(policies, "dane.test", mx, handshake_facts(peer, mx, world.ca_path))
        assert verdict.tls_level == TLSLevel.AUTHENTICATED, mx


def test_unsigned_tlsa_and_unauthenticated_addresses_turn_dane_off(world, peers):
    leaf, other = issue("mx.plain.test"), issue("x")
    world.zone("plain.test", ["@ MX 10 mx", f"mx A {MX_ADDRESS}",
                              f"_25._tcp.mx {tlsa(3, 1, 1, other)}"], signed=False)
    world.start()
    facts = handshake_facts(peers(world, leaf), "mx.plain.test", world.ca_path)
    # The mismatching record is ignored: it is not authenticated (RFC 7672 §2.2.3).
    verdict = check(world.policies("dane"), "plain.test", "mx.plain.test", facts,
                    mx_authenticated=False)
    assert verdict.tls_level == TLSLevel.ENCRYPTED
    with pytest.raises(SMTPError) as refused:
        check(world.policies("dane\nlocal_policy { min_tls_level authenticated }"),
              "plain.test", "mx.plain.test", facts, mx_authenticated=False)
    assert "(local_policy)" in refused.value.text and "min_tls_level is authenticated" \
        in refused.value.text


def test_tlsa_lookup_failure_defers(world):
    world.zone("dane.test", ["@ MX 10 mx", "mx CNAME mx.bogus.test."])
    world.zone("bogus.test", [f"mx A {MX_ADDRESS}"])
    world.dns.bogus("bogus.test")
    world.start()
    with pytest.raises(SMTPError) as refused:
        check(world.policies("dane"), "dane.test", "mx.dane.test",
              ConnectionFacts(starttls_offered=True, tls_version="TLSv1.3"))
    assert refused.value.code == 451 and "(dane)" in refused.value.text


def test_signed_a_only_domain_with_dnssec_and_dane_is_usable(world):
    # maddy #321: implicit MX (no MX records) in a signed zone without TLSA.
    world.zone("aonly.test", [f"@ A {MX_ADDRESS}"])
    world.start()
    resolver = Resolver(((world.resolver.address, world.resolver.port),))
    mx_list = resolve_mx(resolver, "aonly.test")
    assert [h.name for h in mx_list.hosts] == ["aonly.test"] and mx_list.hosts[0].implicit
    auth = world.policies("dnssec\ndane\nlocal_policy off").for_message()
    level = auth.check_mx("aonly.test", "aonly.test", mx_authenticated=mx_list.authenticated)
    verdict = auth.check_connection("aonly.test", "aonly.test", level,
                                    ConnectionFacts(starttls_offered=False))
    assert verdict.tls_level == TLSLevel.NONE
