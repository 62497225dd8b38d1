"""The submission endpoint with AUTH, driven by swaks and smtplib (maddy-behaviour E16)."""

from __future__ import annotations

import shutil
import smtplib
import ssl
import subprocess

import pytest

from tests.integration.conftest import GMTA, base_config, maildir_messages

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"


def insecure_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture
def submission(start_gmta, state_dir, tmp_path):
    def start(extra: str = ""):
        config_text = base_config(state_dir, "tls self_signed") + f"""
auth.pass_table local_authdb {{
    table file {state_dir}/passwd
}}
target.maildir mailboxes {{
    path maildir/{{domain}}/{{local}}
}}
submission tcp://127.0.0.1:0 {{
    auth &local_authdb
    {extra}
    deliver_to &mailboxes
}}
"""
        config = tmp_path / "creds.conf"
        config.write_text(config_text)
        created = subprocess.run(GMTA + ["creds", "create", "-c", str(config), "--password",
                                         PASSWORD, "alice@example.test"],
                                 capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stderr
        return start_gmta(config_text)
    return start


def swaks(port: int, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("swaks")
    if binary is None:
        pytest.fail("swaks is not installed: run the README's test command (bash tests/run)")
    return subprocess.run([binary, "--server", f"127.0.0.1:{port}", "--from", "alice@example.test",
                           "--to", "bob@example.test", "--tls", "--auth-user", "alice@example.test",
                           "--auth-password", PASSWORD, *args],
                          capture_output=True, text=True, timeout=60)


def test_swaks_submits_with_auth_plain_over_starttls(submission, state_dir):
    gmta = submission()
    result = swaks(gmta.port(), "--auth", "PLAIN", "--header", "Subject: from swaks")
    assert result.returncode == 0, result.stdout + result.stderr
    [stored] = maildir_messages(state_dir, "bob@example.test")
    assert b"Subject: from swaks" in stored
    # Submission: untraced Received, authenticated protocol name, fields kept or added.
    assert b"Received: by mx.gmta.test\r\n\t(envelope-sender <alice@example.test>) with ESMTPSA" \
        in stored
    assert b"Message-Id: <" in stored or b"Message-ID: <" in stored
    gmta.wait_for(r"event=authenticated .*username=alice@example.test .*mechanism=PLAIN")


def test_login_mechanism_needs_sasl_login(submission, state_dir):
    gmta = submission("sasl_login yes")
    result = swaks(gmta.port(), "--auth", "LOGIN")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(maildir_messages(state_dir, "bob@example.test")) == 1


def test_mail_without_auth_is_refused_and_auth_needs_tls(submission):
    gmta = submission()
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        client.ehlo()
        assert not client.has_extn("auth")
        assert client.mail("alice@example.test") == (530, b"5.7.0 Authentication required")
        code, text = client.docmd("AUTH", "PLAIN AGFsaWNlAHNlY3JldA==")
        assert (code, text) == (523, b"5.7.10 TLS is required")
        client.starttls(context=insecure_context())
        client.ehlo()
        assert client.esmtp_features["auth"].strip() == "PLAIN"


def test_wrong_password_is_535_and_never_logged(submission):
    gmta = submission()
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        client.starttls(context=insecure_context())
        client.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("alice@example.test", "wrong-password-123")
        assert refused.value.smtp_code == 535
        assert refused.value.smtp_error == b"5.7.8 Invalid credentials"
    gmta.wait_for(r"event=auth_failed .*username=alice@example.test")
    assert not any("wrong-password-123" in line for line in gmta.lines)


def test_header_checks_and_fixups(submission, state_dir):
    gmta = submission()
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        client.starttls(context=insecure_context())
        client.ehlo()
        client.login("alice@example.test", PASSWORD)
        client.mail("alice@example.test")
        client.rcpt("carol@example.test")
        assert client.data(b"Subject: no author\r\n\r\nx\r\n") == \
            (554, b"5.6.0 Message does not contain a From header field")
        client.sendmail("alice@example.test", ["carol@example.test"],
                        b"From: Alice <alice@example.test>\r\nSubject: ok\r\n\r\nbody\r\n")
    [stored] = maildir_messages(state_dir, "carol@example.test")
    assert b"\r\nMessage-ID: <" in stored and b"@mx.gmta.test>\r\n" in stored
    assert b"\r\nDate: " in stored


def test_submission_without_auth_is_a_config_error(tmp_path, state_dir):
    config = tmp_path / "noauth.conf"
    config.write_text(base_config(state_dir, "tls off") +
                      "submission tcp://127.0.0.1:0 {\n    deliver_to dummy\n}\n")
    result = subprocess.run(GMTA + ["check-config", "-c", str(config)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert f"{config}:6: missing required directive: auth" in result.stderr
