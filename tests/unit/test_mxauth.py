"""The mx_auth layer without the network: parsing, matching, caches, configuration, levels."""

from __future__ import annotations

import hashlib
import json

import pytest

from gmta.config import module as registry
from gmta.config.loader import load_text
from gmta.config.module import Module
from gmta.errors import ConfigErrors, SMTPError
from gmta.mxauth import (MX_AUTH_DIRECTIVE, NO_POLICIES, ConnectionFacts, MXLevel, TLSLevel,
                         policies_of)
from gmta.mxauth.dane import TLSARecord, match_chain
from gmta.mxauth.sts_cache import CachedPolicy, FSCache, RAMCache
from gmta.mxauth.sts_policy import PolicyError, mx_matches, parse_policy, parse_txt
from gmta.mxauth.sts_preload import ListError, PreloadEntry, parse_list
from tests.integration.testca import issue


class User(Module):
    name = "ut.mx_auth_unit"
    endpoint = True
    max_inline_args = 1
    directives = (MX_AUTH_DIRECTIVE,)

    def configure(self, cfg, ctx):
        self.mx_auth = cfg.mx_auth
        self.policies = policies_of(cfg.mx_auth)


@pytest.fixture
def user(tmp_path):
    registry.register(User)
    yield lambda text: load_text(f"state_dir {tmp_path}\n" + text, "t.conf")
    registry.unregister(User)


# -- MTA-STS records and policies (RFC 8461 §3) -------------------------------------------

@pytest.mark.parametrize("records, expected", [
    ([b"v=STSv1; id=20240101T000000;"], "20240101T000000"),
    ([b"v=STSv1;id=abc"], "abc"),
    ([b"v=spf1 -all", b"v=STSv1; id=1; ext=value;"], "1"),
    ([b"v=spf1 -all"], None),
    ([], None),
])
def test_txt_record_gives_the_policy_id(records, expected):
    assert parse_txt(records) == expected


@pytest.mark.parametrize("records", [
    [b"v=STSv1; id=1;", b"v=STSv1; id=2;"],  # two records: no policy (§3.1)
    [b"v=STSv1;"], [b"v=STSv1; id=has-dash;"], [b"v=STSv1; id=" + b"a" * 33 + b";"],
    [b"v=STSv1; id=1; id=2;"], [b"v=STSv1; bogus;"],
])
def test_invalid_txt_records_mean_no_policy(records):
    with pytest.raises(PolicyError):
        parse_txt(records)


def test_policy_parses_lf_or_crlf_and_ignores_extensions():
    policy = parse_policy(b"version: STSv1\r\nmode: enforce\nmx: MX1.Example.com\n"
                          b"mx: *.backup.example.com\r\nmax_age: 604800\r\nx-ext: whatever\r\n")
    assert policy.mode == "enforce" and policy.max_age == 604800
    assert policy.mx == ("mx1.example.com", "*.backup.example.com")
    assert parse_policy(b"version: STSv1\nmode: none\nmax_age: 0\n").mx == ()


@pytest.mark.parametrize("body, words", [
    (b"mode: enforce\nmax_age: 1\nmx: a.b\n", "version"),
    (b"version: STSv2\nmode: enforce\nmax_age: 1\nmx: a.b\n", "version"),
    (b"version: STSv1\nmode: on\nmax_age: 1\nmx: a.b\n", "mode"),
    (b"version: STSv1\nmode: enforce\nmax_age: -1\nmx: a.b\n", "max_age"),
    (b"version: STSv1\nmode: enforce\nmax_age: 31557601\nmx: a.b\n", "maximum"),
    (b"version: STSv1\nmode: enforce\nmax_age: 1\n", "without any mx"),
    (b"version: STSv1\nmode: enforce\nmode: testing\nmax_age: 1\nmx: a.b\n", "second mode"),
    (b"version: STSv1\nmode: enforce\nmax_age: 1\nmx: a..b\n", "mx pattern"),
    (b"version: STSv1\nmode: enforce\nmax_age: 1\nmx: *.*.b.c\n", "mx pattern"),
    (b"version: STSv1\nthis is not a field\n", "line 2"),
    (b"\xff\xfe", "UTF-8"),
])
def test_invalid_policies_are_refused_with_the_reason(body, words):
    with pytest.raises(PolicyError, match=words):
        parse_policy(body)


@pytest.mark.parametrize("pattern, host, matches", [
    ("mail.example.com", "MAIL.example.com.", True),
    ("mail.example.com", "mail2.example.com", False),
    ("*.example.com", "mx.example.com", True),
    ("*.example.com", "a.mx.example.com", False),  # one label only (§4.1)
    ("*.example.com", "example.com", False),
])
def test_mx_patterns(pattern, host, matches):
    assert mx_matches(pattern, host) is matches


# -- STARTTLS Everywhere list -------------------------------------------------------------

def test_preload_list_format_and_leading_dot_patterns():
    parsed = parse_list(json.dumps({
        "expires": "2099-01-01T00:00:00Z",
        "policy-aliases": {"g": {"mode": "testing", "mxs": [".mx.g.test"]}},
        "policies": {"G.test": {"policy-alias": "g"},
                     "e.test": {"mode": "enforce", "mxs": ["mx.e.test"]}}}).encode())
    assert parsed.policies["g.test"] == PreloadEntry("testing", (".mx.g.test",))
    assert parsed.policies["g.test"].matches("a.b.mx.g.test")
    assert not parsed.policies["g.test"].matches("mx.g.test")
    assert parsed.policies["e.test"].matches("mx.e.test")


@pytest.mark.parametrize("document", [
    {"policies": {}},  # no expiry
    {"expires": "2099-01-01", "policies": {}},  # no time zone
    {"expires": "2099-01-01T00:00:00Z", "policies": {"a.test": {"policy-alias": "x"}}},
    {"expires": "2099-01-01T00:00:00Z", "policies": {"a.test": {"mode": "on", "mxs": ["a"]}}},
    {"expires": "2099-01-01T00:00:00Z", "policies": {"a.test": {"mode": "enforce", "mxs": []}}},
])
def test_invalid_preload_lists_are_refused(document):
    with pytest.raises(ListError):
        parse_list(json.dumps(document).encode())


# -- DANE matching (RFC 6698 §2.1, RFC 7672 §3.1) -------------------------------------------

def test_dane_ee_matches_every_selector_and_matching_type():
    leaf = issue("mx.test")
    for selector, data in ((0, leaf.der), (1, leaf.spki)):
        for mtype, digest in ((0, data), (1, hashlib.sha256(data).digest()),
                              (2, hashlib.sha512(data).digest())):
            record = TLSARecord(3, selector, mtype, digest)
            assert record.usable
            assert match_chain([record], (leaf.der,), ("mx.test",))[0] == record
    other = issue("mx.test")
    record, why = match_chain([TLSARecord(3, 1, 1, hashlib.sha256(leaf.spki).digest())],
                              (other.der,), ("mx.test",))
    assert record is None and "CN=mx.test" in why


@pytest.mark.parametrize("record", [
    TLSARecord(1, 0, 1, b"\0" * 32),  # PKIX-EE: not for SMTP (RFC 7672 §3.1.3)
    TLSARecord(3, 2, 1, b"\0" * 32),
    TLSARecord(3, 0, 3, b"\0" * 32),
    TLSARecord(3, 0, 1, b"\0" * 31),  # SHA-256 of the wrong length
])
def test_unusable_tlsa_records(record):
    assert not record.usable


# -- caches -------------------------------------------------------------------------------

def cached(domain: str, expires_at: float = 2e9) -> CachedPolicy:
    return CachedPolicy(domain, "1", parse_policy(b"version: STSv1\nmode: enforce\n"
                                                  b"max_age: 100\nmx: mx.a.test\n"),
                        1000.0, expires_at)


def test_ram_cache_is_bounded_and_drops_expired_entries():
    cache = RAMCache(max_entries=2, clock=lambda: 1500.0)
    for name in ("a.test", "b.test", "c.test"):
        cache.put(cached(name))
    assert len(cache) == 2 and cache.get("a.test") is None
    cache.put(cached("old.test", expires_at=1400.0))
    assert cache.get("old.test") is None


def test_fs_cache_round_trip_bound_and_corrupt_files(tmp_path):
    cache = FSCache(str(tmp_path / "c"), max_entries=2, clock=lambda: 1500.0)
    for name in ("a.test", "b.test", "c.test"):
        cache.put(cached(name))
    assert len(list((tmp_path / "c").glob("*.json"))) == 2
    fresh = FSCache(str(tmp_path / "c"), clock=lambda: 1500.0)
    assert fresh.get("c.test") == cached("c.test")
    (tmp_path / "c" / "bad.test.json").write_text("{not json")
    assert fresh.get("bad.test") is None
    cache.put(cached("../evil"))  # not a file name: kept in memory only
    assert not (tmp_path / "evil.json").exists()


# -- configuration and levels ---------------------------------------------------------------

def test_levels_are_ordered_as_maddy_documents_and_are_target_remotes_own():
    from gmta.target import security
    assert MXLevel.NONE < MXLevel.MTASTS < MXLevel.DNSSEC
    assert TLSLevel.NONE < TLSLevel.ENCRYPTED < TLSLevel.AUTHENTICATED
    # One definition (DESIGN §3: mxauth sits below target and uses its levels).
    assert MXLevel is security.MXLevel and TLSLevel is security.TLSLevel
    assert security.parse_level(TLSLevel, "encrypted") is TLSLevel.ENCRYPTED


def test_top_level_block_is_shared_by_reference(user):
    config = user("mx_auth shared {\n local_policy off\n dane\n}\n"
                  "ut.mx_auth_unit a { mx_auth &shared }\nut.mx_auth_unit b { mx_auth &shared }\n")
    first, second = config.endpoints
    assert first.mx_auth is second.mx_auth
    assert first.policies.words == ("dane", "local_policy")


def test_no_mx_auth_means_no_policies_but_requiretls_still_applies(user):
    config = user("ut.mx_auth_unit {\n}\n")
    assert config.endpoints[0].policies is NO_POLICIES
    auth = NO_POLICIES.for_message(requiretls=True)
    level = auth.check_mx("a.test", "mx.a.test", mx_authenticated=False)
    with pytest.raises(SMTPError) as refused:
        auth.check_connection("a.test", "mx.a.test", level, ConnectionFacts(
            starttls_offered=True, tls_version="TLSv1.3", pkix_verified=True))
    assert "(REQUIRETLS)" in refused.value.text and refused.value.code == 550
    # An authenticated MX answer counts for REQUIRETLS even without the dnssec policy.
    auth = NO_POLICIES.for_message(requiretls=True)
    level = auth.check_mx("a.test", "mx.a.test", mx_authenticated=True)
    auth.check_connection("a.test", "mx.a.test", level, ConnectionFacts(
        starttls_offered=True, tls_version="TLSv1.3", pkix_verified=True))


def test_local_policy_defaults_and_off(user):
    default = user("ut.mx_auth_unit {\n mx_auth {\n local_policy\n }\n}\n").endpoints[0]
    auth = default.policies.for_message()
    level = auth.check_mx("a.test", "mx.a.test", mx_authenticated=False)
    with pytest.raises(SMTPError) as refused:
        auth.check_connection("a.test", "mx.a.test", level,
                              ConnectionFacts(starttls_offered=False))
    assert refused.value.text == ("TLS is not available or unauthenticated but required "
                                  "(local_policy): mx.a.test gives TLS level none (the server "
                                  "did not offer STARTTLS), min_tls_level is encrypted")
    off = user("ut.mx_auth_unit {\n mx_auth {\n local_policy off\n }\n}\n").endpoints[0]
    auth = off.policies.for_message()
    level = auth.check_mx("a.test", "mx.a.test", mx_authenticated=False)
    assert auth.check_connection("a.test", "mx.a.test", level,
                                 ConnectionFacts(starttls_offered=False)).tls_level \
        == TLSLevel.NONE


@pytest.mark.parametrize("body, words", [
    ("local_policy on", "the only argument is 'off'"),
    ("local_policy { min_tls_level high }", "min_tls_level"),
    ("dane extra", "takes no inline arguments"),
    ("unknown_policy", "unexpected directive"),
    ("mtasts { cache disk }", "cache"),
    ("sts_preload { source ftp://x }", "sts_preload source"),
    ("dane\ndane", "duplicate directive"),
])
def test_config_errors(user, body, words):
    with pytest.raises(ConfigErrors) as errors:
        user(f"ut.mx_auth_unit {{\n mx_auth {{\n{body}\n }}\n}}\n")
    assert words in str(errors.value)


def _candidate(name: str, authenticated: bool):
    from gmta.net.mx import MXHost, MXList
    from gmta.target.security import MXCandidate
    host = MXHost(name, 10)
    return MXCandidate("a.test", host, MXList("a.test", (host,), authenticated))


def _target_facts(mx: str, mx_level, tls_level, **kw):
    """The facts target.remote's walk hands to the hook (gmta.target.security)."""
    from gmta.target.security import ConnectionFacts as TargetFacts
    fields = dict(domain="a.test", mx=mx, address="127.0.0.2", port=25, mx_level=mx_level,
                  tls_level=tls_level, tls=None, tls_error=None,
                  requiretls_offered=False)
    fields.update(kw)
    return TargetFacts(**fields)


def test_remote_hook_maps_target_remote_calls_onto_the_policies(user):
    config = user("ut.mx_auth_unit {\n mx_auth {\n dnssec\n local_policy "
                  "{ min_mx_level dnssec }\n }\n}\n")
    mx_auth = config.endpoints[0].mx_auth
    assert mx_auth.start() is None  # the module life cycle call
    from types import SimpleNamespace
    hook = mx_auth.start(SimpleNamespace(id="m1"))
    assert hook.check_mx(_candidate("mx.a.test", True), MXLevel.NONE) is MXLevel.DNSSEC
    facts = _target_facts("mx.a.test", MXLevel.DNSSEC, TLSLevel.NONE)
    with pytest.raises(SMTPError) as refused:
        hook.check_conn(facts)  # local_policy's default min_tls_level encrypted
    assert "(local_policy)" in refused.value.text
    with pytest.raises(SMTPError):
        hook.check_mx(_candidate("mx2.a.test", False), MXLevel.NONE)
    hook.close()


def test_remote_hook_passes_levels_unconverted_and_the_whole_chain(user):
    # target.remote logs the levels it gets back by name (tls=authenticated),
    # and DANE-TA needs every certificate the server sent, not only the leaf.
    from types import SimpleNamespace

    from gmta.net.client import TLSInfo
    config = user("ut.mx_auth_unit {\n mx_auth {\n dnssec\n local_policy off\n }\n}\n")
    hook = config.endpoints[0].mx_auth.start(SimpleNamespace(id="m1"))
    level = hook.check_mx(_candidate("mx.a.test", True), MXLevel.NONE)
    assert level is MXLevel.DNSSEC and str(level) == "dnssec"
    facts = _target_facts("mx.a.test", level, TLSLevel.ENCRYPTED,
                          tls=TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", False, False),
                          peer_chain=(b"leaf", b"CA"))
    seen = []
    hook.message.check_connection = lambda domain, mx, mx_level, ours: (
        seen.append((mx_level, ours)) or SimpleNamespace(tls_level=TLSLevel.AUTHENTICATED))
    assert hook.check_conn(facts) is TLSLevel.AUTHENTICATED
    [(mx_level, ours)] = seen
    assert mx_level is MXLevel.DNSSEC
    assert ours.peer_chain == (b"leaf", b"CA") and ours.tls_version == "TLSv1.3"
    assert ours.tls_level is TLSLevel.ENCRYPTED and not ours.pkix_verified
    hook.close()
