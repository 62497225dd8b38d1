"""check.authorize_sender on the real ``gmta run`` submission endpoint (maddy-behaviour §3.1 E7).

The configuration has the shape of maddy's default (and etc/gmta.conf): the check sits in
``source $(local_domains)`` with ``prepare_email &local_rewrites`` (``+tag`` stripped,
then an aliases file). ``user_to_email`` lets ``test-user2`` use ``é@example1.org``; every
other user name is its own address (an optional step passes it on unchanged).
"""

from __future__ import annotations

import smtplib
import subprocess

import pytest

from tests.integration.conftest import GMTA, base_config, maildir_messages

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"


@pytest.fixture
def submission(start_gmta, state_dir, tmp_path):
    (state_dir / "aliases").write_text("info@example.org: alice@example.org\n")
    config_text = base_config(state_dir, "tls off") + f"""
$(local_domains) = example.org example1.org
auth.pass_table local_authdb {{
    table file {state_dir}/passwd
}}
target.maildir local_mailboxes {{
    path maildir/{{domain}}/{{local}}
}}
table.chain local_rewrites {{
    optional_step regexp "(.+)\\+(.+)@(.+)" "$1@$3"
    optional_step file {state_dir}/aliases
}}
table.chain sender_logins {{
    optional_step static {{
        entry test-user2 "é@example1.org"
    }}
}}
submission tcp://127.0.0.1:0 {{
    auth &local_authdb
    source $(local_domains) {{
        check {{
            authorize_sender {{
                prepare_email &local_rewrites
                user_to_email &sender_logins
            }}
        }}
        deliver_to &local_mailboxes
    }}
    default_source {{
        reject 501 5.1.8 "Non-local sender domain"
    }}
}}
"""
    config = tmp_path / "submission.conf"
    config.write_text(config_text)
    for user in ("alice@example.org", "test-user2"):
        created = subprocess.run(GMTA + ["creds", "create", "-c", str(config), "--password",
                                         PASSWORD, user],
                                 capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stderr
    return start_gmta(config_text)


def message(sender: str, extra: str = "") -> bytes:
    return (f"From: {sender}\r\n{extra}To: <rcpt@example.test>\r\nSubject: test\r\n"
            "\r\nHello.\r\n").encode()


def submit(client: smtplib.SMTP, mail_from: str, data: bytes, *, utf8: bool = False):
    """(code, text) of the first refusal, or of the reply to the content."""
    code, text = client.mail(mail_from, ["SMTPUTF8"] if utf8 else [])
    if code >= 400:
        return code, text.decode()
    code, text = client.rcpt("rcpt@example.test")
    if code >= 400:
        client.rset()
        return code, text.decode()
    code, text = client.data(data)
    return code, text.decode()


def logged_in(gmta, user: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", gmta.port(), timeout=30)
    client.login(user, PASSWORD)
    return client


def test_a_user_may_send_as_their_addresses_and_aliases(submission, state_dir):
    with logged_in(submission, "alice@example.org") as client:
        for mail_from in ["alice@example.org", "Alice@EXAMPLE.org",
                          "alice+lists@example.org",   # +tag stripped by local_rewrites
                          "info@example.org"]:         # the aliases file
            assert submit(client, mail_from, message(f"<{mail_from}>"))[0] == 250, mail_from
        # RFC 5322 §3.6.2: Sender names who sent it; From may then be a team address.
        code, _ = submit(client, "alice@example.org",
                         message("Team <team@example.org>", "Sender: alice@example.org\r\n"))
        assert code == 250
    # E7: test-user2 may use é@example1.org, also written decomposed and upper case.
    with logged_in(submission, "test-user2") as client:
        for mail_from in ["é@example1.org", "E\u0301@EXAMPLE1.org"]:
            code, text = submit(client, mail_from, message(f"<{mail_from}>"), utf8=True)
            assert code == 250, (mail_from, text)
    assert len(maildir_messages(state_dir, "rcpt@example.test")) == 7


def test_someone_elses_address_is_refused(submission, state_dir):
    with logged_in(submission, "alice@example.org") as client:
        # In MAIL FROM: refused at the first RCPT (defer_sender_reject, maddy's default).
        code, text = submit(client, "bob@example.org", message("<bob@example.org>"))
        assert (code, text) == (553, "5.7.1 Unauthorized use of sender address")
        # Another user's address is someone else's too.
        code, text = submit(client, "é@example1.org", message("<alice@example.org>"), utf8=True)
        assert (code, text[:5]) == (553, "5.7.1")
        # In the From field, with her own envelope: refused after the content.
        code, text = submit(client, "alice@example.org", message("Bob <bob@example.org>"))
        assert (code, text) == (553, "5.7.1 Unauthorized use of sender address")
        # A Sender field is the one judged (RFC 5322 §3.6.2), even beside her own From.
        code, text = submit(client, "alice@example.org",
                            message("<alice@example.org>", "Sender: bob@example.org\r\n"))
        assert (code, text[:5]) == (553, "5.7.1")
    with logged_in(submission, "test-user2") as client:
        code, _ = submit(client, "alice@example.org", message("<alice@example.org>"))
        assert code == 553
    assert maildir_messages(state_dir, "rcpt@example.test") == []
    submission.wait_for(r"event=authorize_sender .*user=alice@example\.org "
                        r"address=bob@example\.org field=header result=denied")
