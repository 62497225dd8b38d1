"""Check actions, DMARC records and alignment, Authentication-Results, authorize_sender."""

from __future__ import annotations

import pytest

from gmta.check.action import Action, parse_action
from gmta.check.dmarc import aligned, organizational_domain, parse_record
from gmta.check.results import authentication_results, remove_forged
from gmta.config.parser import Node
from gmta.errors import ConfigError, SMTPError


def node(*args):
    return Node("fail_action", list(args), None, "t.conf", 1)


def test_action_reply_overrides():
    reason = SMTPError(550, (5, 7, 23), "SPF authentication failed")
    assert parse_action(["ignore"], node()).apply(reason).reject is None
    assert parse_action(["quarantine"], node()).apply(reason).quarantine
    assert parse_action(["reject"], node()).apply(reason).reject == reason
    # A bare code takes X.7.0 and the default text (maddy E4).
    assert str(parse_action(["reject", "455"], node()).apply(reason).reject) == \
        "455 4.7.0 Message rejected due to a local policy"
    full = parse_action(["reject", "550", "5.7.1", "Go", "away"], node()).apply(reason).reject
    assert str(full) == "550 5.7.1 Go away"
    with pytest.raises(ConfigError):
        parse_action(["drop"], node())
    with pytest.raises(ConfigError):
        parse_action(["reject", "250"], node())
    assert Action("ignore").apply(reason).auth == ()


def test_dmarc_record_and_alignment():
    record = parse_record("v=DMARC1; p=reject; sp=none; adkim=s; pct=50", "example.org")
    assert record.policy_for("example.org") == "reject"
    assert record.policy_for("mail.example.org") == "none"
    assert record.strict_dkim and not record.strict_spf and record.percent == 50
    assert parse_record("v=DMARC1; p=bogus", "x.test") is None
    assert parse_record("v=DMARC1; p=bogus; rua=mailto:a@x.test", "x.test").policy == "none"
    assert parse_record("v=spf1 -all", "x.test") is None
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert aligned("mail.example.co.uk", "example.co.uk", strict=False)
    assert not aligned("mail.example.co.uk", "example.co.uk", strict=True)
    assert not aligned("other.co.uk", "example.co.uk", strict=False)


def test_authentication_results_field_and_forgeries():
    import authres
    field = authentication_results("mx.test", [
        authres.SPFAuthenticationResult(result="pass", smtp_mailfrom="a.test"),
        authres.DKIMAuthenticationResult(result="fail", header_d="a.test")])
    assert field == (b"Authentication-Results: mx.test;\r\n\tspf=pass smtp.mailfrom=a.test;"
                     b"\r\n\tdkim=fail header.d=a.test\r\n")
    header = (b"Received: x\r\nAuthentication-Results: MX.test; spf=pass\r\n\tdkim=pass\r\n"
              b"Authentication-Results: other.test; spf=fail\r\nSubject: s\r\n\r\n")
    assert remove_forged(header, "mx.test") == (
        b"Received: x\r\nAuthentication-Results: other.test; spf=fail\r\nSubject: s\r\n\r\n")


def test_authorize_sender_compares_case_folded_addresses():
    # maddy's precis_casefold_email (E7): case folding then NFC; domains normalised.
    from gmta.check.authorize_sender import _normalize
    assert _normalize("E\u0301@EXAMPLE1.org") == "é@example1.org"
    assert _normalize("Alice@Bücher.Example") == "alice@bücher.example"
