"""mx_auth mtasts against real signed DNS (knotd + unbound) and a real HTTPS policy server.

maddy-behaviour §3.5 R13 at the policy level, plus: an enforce policy whose
MX list excludes the first MX, an expired cached policy, a policy id change,
the fs cache surviving a restart, and fetches that must fail (untrusted
certificate, wrong content type, redirect, oversize).
"""

from __future__ import annotations

import json

import pytest

from gmta.errors import SMTPError
from gmta.mxauth import ConnectionFacts, MXLevel, TLSLevel

pytestmark = pytest.mark.timeout(60)

ENFORCE_MX2 = "version: STSv1\r\nmode: enforce\r\nmax_age: 86400\r\nmx: mx2.sts.test\r\n"
TESTING_ALL = "version: STSv1\nmode: testing\nmax_age: 86400\nmx: *.sts.test\n"
VERIFIED = ConnectionFacts(starttls_offered=True, tls_version="TLSv1.3", pkix_verified=True)
UNVERIFIED = ConnectionFacts(starttls_offered=True, tls_version="TLSv1.3", pkix_verified=False)
PLAINTEXT = ConnectionFacts(starttls_offered=False)


def sts_zone(world, policy_id="1", extra=()):
    world.zone("sts.test", ["@ MX 10 mx1", "@ MX 5 mx2", "mx1 A 127.0.0.2", "mx2 A 127.0.0.3",
                            f'_mta-sts TXT "v=STSv1; id={policy_id};"',
                            "mta-sts A 127.0.0.80", *extra])


@pytest.fixture
def sts(world):
    sts_zone(world)
    world.start()
    world.serve_policies("sts.test")
    return world


def mx_level(policies, mx, **kw):
    auth = policies.for_message(**kw)
    try:
        return auth.check_mx("sts.test", mx, mx_authenticated=False)
    finally:
        auth.close()


def test_testing_policy_listing_the_mx_gives_mx_level_mtasts(sts):
    sts.policy_server.policy("sts.test", TESTING_ALL)
    policies = sts.policies("mtasts { cache ram }\nlocal_policy { min_mx_level mtasts }")
    auth = policies.for_message()
    assert auth.check_mx("sts.test", "mx1.sts.test", mx_authenticated=False) == MXLevel.MTASTS
    # testing mode: a plaintext connection is logged, not refused (RFC 8461 §5).
    verdict = auth.check_connection("sts.test", "mx1.sts.test", MXLevel.MTASTS,
                                    ConnectionFacts(starttls_offered=True, tls_version="TLSv1.2"))
    assert verdict.tls_level == TLSLevel.ENCRYPTED


def test_enforce_policy_excluding_the_first_mx_refuses_it_and_accepts_the_listed_one(sts):
    sts.policy_server.policy("sts.test", ENFORCE_MX2)
    policies = sts.policies("mtasts { cache ram }\nlocal_policy { min_mx_level mtasts }")
    auth = policies.for_message()
    auth.prepare_domain("sts.test")
    with pytest.raises(SMTPError) as refused:
        auth.check_mx("sts.test", "mx1.sts.test", mx_authenticated=False)
    assert (refused.value.code, refused.value.enhanced_str) == (451, "4.7.0")
    assert "(mtasts)" in refused.value.text and "mx1.sts.test" in refused.value.text
    assert "mode enforce" in refused.value.text and refused.value.misc["policy"] == "mtasts"
    assert auth.check_mx("sts.test", "mx2.sts.test", mx_authenticated=False) == MXLevel.MTASTS
    verdict = auth.check_connection("sts.test", "mx2.sts.test", MXLevel.MTASTS, VERIFIED)
    assert verdict.tls_level == TLSLevel.AUTHENTICATED


@pytest.mark.parametrize("facts, words", [
    (PLAINTEXT, "TLS is required but unavailable or failed (mtasts)"),
    (UNVERIFIED, "certificate is not trusted but authentication is required (mtasts)"),
])
def test_enforce_policy_refuses_plaintext_and_unverified_connections(sts, facts, words):
    sts.policy_server.policy("sts.test", ENFORCE_MX2)
    auth = sts.policies("mtasts { cache ram }\nlocal_policy off").for_message()
    level = auth.check_mx("sts.test", "mx2.sts.test", mx_authenticated=False)
    with pytest.raises(SMTPError) as refused:
        auth.check_connection("sts.test", "mx2.sts.test", level, facts)
    assert refused.value.code == 451 and words in refused.value.text


def test_no_policy_with_min_mx_level_mtasts_refuses_before_connecting(world):
    world.zone("sts.test", ["@ MX 10 mx1", "mx1 A 127.0.0.2"])
    world.start()
    auth = world.policies("mtasts { cache ram }\nlocal_policy { min_mx_level mtasts }") \
        .for_message()
    with pytest.raises(SMTPError) as refused:
        auth.check_mx("sts.test", "mx1.sts.test", mx_authenticated=False)
    assert refused.value.text.startswith("Failed to establish the MX record authenticity "
                                         "(local_policy): mx1.sts.test has MX level none, "
                                         "min_mx_level is mtasts")


def test_policy_from_an_untrusted_certificate_is_not_used(world, tmp_path):
    sts_zone(world)
    world.start()
    world.serve_policies("sts.test").policy("sts.test", ENFORCE_MX2)
    # The same server, but gmta trusts another CA: the fetch fails, no policy applies.
    from tests.integration.testca import issue, write_ca
    world.ca_path = write_ca(tmp_path / "other", "ca", issue("other CA", ca=True))
    assert mx_level(world.policies("mtasts { cache ram }"), "mx1.sts.test") == MXLevel.NONE


@pytest.mark.parametrize("meta", [
    {"content_type": "text/html"},
    {"status": 301, "location": "https://mta-sts.sts.test/elsewhere"},
    {"status": 404},
])
def test_a_policy_not_served_as_rfc_8461_says_is_not_used(sts, meta):
    sts.policy_server.policy("sts.test", ENFORCE_MX2, **meta)
    assert mx_level(sts.policies("mtasts { cache ram }"), "mx1.sts.test") == MXLevel.NONE


def test_oversize_and_malformed_policies_are_not_used(sts):
    sts.policy_server.policy("sts.test", ENFORCE_MX2 + "x-pad: " + "a" * 70000 + "\n")
    assert mx_level(sts.policies("mtasts { cache ram }"), "mx1.sts.test") == MXLevel.NONE
    sts.policy_server.policy("sts.test", ENFORCE_MX2.replace("enforce", "enforcing"))
    assert mx_level(sts.policies("mtasts { cache ram }"), "mx1.sts.test") == MXLevel.NONE


def test_policy_id_change_fetches_the_new_policy_and_same_id_keeps_the_cache(sts):
    sts.policy_server.policy("sts.test", ENFORCE_MX2)
    policies = sts.policies("mtasts { cache ram }")
    with pytest.raises(SMTPError):
        mx_level(policies, "mx1.sts.test")
    # New policy on the server, same id in DNS: the cached policy stays in force.
    sts.policy_server.policy("sts.test", TESTING_ALL)
    with pytest.raises(SMTPError):
        mx_level(policies, "mx1.sts.test")
    # The id changes: the new policy (testing, every MX) is fetched and used.
    sts_zone(sts, policy_id="2")
    sts.reload()
    assert mx_level(policies, "mx1.sts.test") == MXLevel.MTASTS


def test_cached_policy_applies_without_txt_until_it_expires(sts):
    sts.policy_server.policy("sts.test", ENFORCE_MX2.replace("86400", "600"))
    policies = sts.policies("mtasts { cache ram }")
    mtasts = policies.policies[0]
    with pytest.raises(SMTPError):
        mx_level(policies, "mx1.sts.test")
    # An attacker strips the TXT record and blocks the policy host (RFC 8461 §5.1, §10.2).
    sts.dns.zone("sts.test", ["@ MX 10 mx1", "@ MX 5 mx2", "mx1 A 127.0.0.2",
                              "mx2 A 127.0.0.3"])
    sts.reload()
    sts.policy_server.stop()
    with pytest.raises(SMTPError):
        mx_level(policies, "mx1.sts.test")
    # Past max_age the cached policy is gone.
    fetched = mtasts.cache.get("sts.test").fetched_at
    mtasts.cache.clock = mtasts.clock = lambda: fetched + 601
    assert mx_level(policies, "mx1.sts.test") == MXLevel.NONE


def test_fs_cache_survives_a_restart_and_is_written_atomically(sts):
    sts.policy_server.policy("sts.test", ENFORCE_MX2)
    body = f"mtasts {{\n cache fs\n fs_dir {sts.tmp}/sts-cache\n}}"
    with pytest.raises(SMTPError):
        mx_level(sts.policies(body), "mx1.sts.test")
    files = sorted(p.name for p in (sts.tmp / "sts-cache").iterdir())
    assert files == ["sts.test.json"]
    saved = json.loads((sts.tmp / "sts-cache" / "sts.test.json").read_text())
    assert saved["id"] == "1" and "mx: mx2.sts.test" in saved["policy"]
    # "Restart": a new configuration, the policy server gone, the TXT record still there.
    sts.policy_server.stop()
    with pytest.raises(SMTPError) as refused:
        mx_level(sts.policies(body), "mx1.sts.test")
    assert "(mtasts)" in refused.value.text
    # A RAM cache after the same restart knows nothing.
    assert mx_level(sts.policies("mtasts { cache ram }"), "mx1.sts.test") == MXLevel.NONE


def test_default_fs_dir_is_under_state_dir(sts):
    sts.policy_server.policy("sts.test", TESTING_ALL)
    assert mx_level(sts.policies("mtasts"), "mx1.sts.test") == MXLevel.MTASTS
    assert (sts.state_dir / "mtasts_cache" / "sts.test.json").is_file()


def test_policy_order_is_fixed_whatever_the_config_order(sts):
    sts.policy_server.policy("sts.test", ENFORCE_MX2)
    policies = sts.policies("local_policy { min_mx_level mtasts }\ndnssec\nmtasts { cache ram }")
    assert policies.words == ("mtasts", "dnssec", "local_policy")
    # mtasts runs first, so it is the one that refuses mx1, not local_policy.
    with pytest.raises(SMTPError) as refused:
        mx_level(policies, "mx1.sts.test")
    assert refused.value.misc["policy"] == "mtasts"


def test_requiretls_needs_mtasts_or_dnssec_and_authenticated_tls(sts):
    sts.policy_server.policy("sts.test", ENFORCE_MX2)
    policies = sts.policies("mtasts { cache ram }\nlocal_policy off")
    offered = ConnectionFacts(starttls_offered=True, tls_version="TLSv1.3", pkix_verified=True,
                              requiretls_offered=True)
    auth = policies.for_message(requiretls=True)
    level = auth.check_mx("sts.test", "mx2.sts.test", mx_authenticated=False)
    assert auth.check_connection("sts.test", "mx2.sts.test", level, offered).send_requiretls
    # Strict: an MX that does not offer REQUIRETLS is refused; relaxed: used, flag dropped.
    strict = policies.for_message(requiretls=True, relaxed_requiretls=False)
    level = strict.check_mx("sts.test", "mx2.sts.test", mx_authenticated=False)
    with pytest.raises(SMTPError) as refused:
        strict.check_connection("sts.test", "mx2.sts.test", level, VERIFIED)
    assert (refused.value.code, refused.value.enhanced_str) == (550, "5.7.30")
    relaxed = policies.for_message(requiretls=True)
    level = relaxed.check_mx("sts.test", "mx2.sts.test", mx_authenticated=False)
    assert not relaxed.check_connection("sts.test", "mx2.sts.test", level,
                                        VERIFIED).send_requiretls


def test_tls_required_no_skips_the_policies_but_not_requiretls(sts):
    sts.policy_server.policy("sts.test", ENFORCE_MX2)
    policies = sts.policies("mtasts { cache ram }")
    auth = policies.for_message(tls_required_no=True)
    assert auth.check_mx("sts.test", "mx1.sts.test", mx_authenticated=False) == MXLevel.NONE
    auth.check_connection("sts.test", "mx1.sts.test", MXLevel.NONE, PLAINTEXT)
    both = policies.for_message(tls_required_no=True, requiretls=True)
    with pytest.raises(SMTPError):
        both.check_mx("sts.test", "mx1.sts.test", mx_authenticated=False)
