"""mx_auth sts_preload with lists from file:// and https:// (a real HTTPS server, test CA)."""

from __future__ import annotations

import datetime
import json
import logging

import pytest

from gmta.errors import SMTPError
from gmta.mxauth import ConnectionFacts, MXLevel
from tests.unit.logcapture import captured_log

pytestmark = pytest.mark.timeout(60)


def preload_list(expires_in_days: float, **policies) -> str:
    expires = datetime.datetime.now(datetime.timezone.utc) + \
        datetime.timedelta(days=expires_in_days)
    return json.dumps({
        "timestamp": "2024-01-01T00:00:00Z", "author": "gmta tests", "version": "0.1",
        "expires": expires.isoformat(),
        "policy-aliases": {"big": {"mode": "testing", "mxs": [".mail.big.test"]}},
        "policies": {"big.test": {"policy-alias": "big"}, **policies}})


@pytest.fixture
def listed(world):
    world.zone("pre.test", ["@ MX 10 mx1", "mx1 A 127.0.0.2"])
    world.start()
    return world


def mx_level(policies, domain, mx):
    auth = policies.for_message()
    try:
        return auth.check_mx(domain, mx, mx_authenticated=False)
    finally:
        auth.close()


def test_file_list_enforces_its_mx_patterns_and_honours_enforce_testing(listed, tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(preload_list(7, **{"pre.test": {"mode": "enforce", "mxs": ["mx2.pre.test"]}}))
    policies = listed.policies(f"sts_preload {{\n source file://{path}\n}}")
    with pytest.raises(SMTPError) as refused:
        mx_level(policies, "pre.test", "mx1.pre.test")
    assert "(sts_preload)" in refused.value.text and "mx2.pre.test" in refused.value.text
    assert mx_level(policies, "pre.test", "mx2.pre.test") == MXLevel.MTASTS
    # A listed "testing" domain: enforced by default, only logged with enforce_testing no.
    assert mx_level(policies, "big.test", "a.mail.big.test") == MXLevel.MTASTS
    with pytest.raises(SMTPError):
        mx_level(policies, "big.test", "mail.elsewhere.test")
    relaxed = listed.policies(f"sts_preload {{\n source file://{path}\n enforce_testing no\n}}")
    assert mx_level(relaxed, "big.test", "mail.elsewhere.test") == MXLevel.NONE
    # A matched MX needs a verified certificate.
    auth = policies.for_message()
    level = auth.check_mx("pre.test", "mx2.pre.test", mx_authenticated=False)
    with pytest.raises(SMTPError) as refused:
        auth.check_connection("pre.test", "mx2.pre.test", level,
                              ConnectionFacts(starttls_offered=True, tls_version="TLSv1.3"))
    assert "certificate is not trusted" in refused.value.text


def test_expired_list_is_not_used_and_a_changed_file_is_reread(listed, tmp_path):
    path = tmp_path / "policy.json"
    entry = {"pre.test": {"mode": "enforce", "mxs": ["mx2.pre.test"]}}
    path.write_text(preload_list(-1, **entry))
    policies = listed.policies(f"sts_preload {{\n source file://{path}\n}}")
    with captured_log(logging.INFO, "gmta.mx_auth.sts_preload") as lines:
        assert mx_level(policies, "pre.test", "mx1.pre.test") == MXLevel.NONE
    assert any("event=list_expired" in line for line in lines)
    path.write_text(preload_list(7, **entry))
    with pytest.raises(SMTPError):
        mx_level(policies, "pre.test", "mx1.pre.test")


def test_https_list_is_downloaded_with_the_test_ca(listed):
    server = listed.serve_policies("lists.test")
    server.put("mta-sts.lists.test", "/policy.json",
               preload_list(7, **{"pre.test": {"mode": "enforce", "mxs": ["mx2.pre.test"]}}),
               content_type="application/json")
    listed.dns.zone("lists.test", ["mta-sts A 127.0.0.80"])
    listed.dns.sign("lists.test")
    listed.reload()
    policies = listed.policies(f"sts_preload {{\n source https://mta-sts.lists.test:"
                               f"{server.port}/policy.json\n}}")
    with pytest.raises(SMTPError):
        mx_level(policies, "pre.test", "mx1.pre.test")


def test_eff_source_is_accepted_and_logs_that_the_list_was_retired(listed):
    with captured_log(logging.INFO, "gmta.mx_auth.sts_preload") as lines:
        policies = listed.policies("sts_preload")
    assert any("event=list_retired" in line and "source=eff" in line for line in lines)
    assert mx_level(policies, "pre.test", "mx1.pre.test") == MXLevel.NONE
