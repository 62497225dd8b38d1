"""``gmta sendmail`` against the real ``gmta run``: the message ends in a Maildir.

gmta sendmail finds the first ``smtp`` endpoint on a unix socket in the
configuration and submits there; exit status 0 only after gmta's 250.
"""

from __future__ import annotations

import email
import subprocess

import pytest

from tests.integration.conftest import GMTA, base_config, maildir_messages, strip_delivery_fields

pytestmark = pytest.mark.integration

TIMEOUT = 30


def config(state_dir, endpoint_extra: str = "") -> str:
    return base_config(state_dir) + f"""
target.maildir local_mailboxes {{
    path maildir/{{domain}}/{{local}}
}}
smtp unix://sendmail.sock {{
    tls off
    deliver_to &local_mailboxes
    {endpoint_extra}
}}
"""


def sendmail(config_path, *args: str, message: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(GMTA + ["sendmail", "-C", str(config_path), *args], input=message,
                          capture_output=True, timeout=TIMEOUT)


def test_t_delivers_to_to_cc_and_bcc_and_hides_bcc(start_gmta, state_dir):
    gmta = start_gmta(config(state_dir))
    message = (b"To: Alice <alice@gmta.test>\nCc: bob@gmta.test\nBcc: carol@gmta.test\n"
               b"Subject: nightly backup\n\nall 3 volumes done\n")
    done = sendmail(gmta.config_path, "-t", "-F", "Backup Job", "-f", "backup@gmta.test",
                    "-oem", message=message)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    for rcpt in ("alice@gmta.test", "bob@gmta.test", "carol@gmta.test"):
        [stored] = maildir_messages(state_dir, rcpt)
        assert stored.startswith(b"Return-Path: <backup@gmta.test>\r\n")
        msg = email.message_from_bytes(strip_delivery_fields(stored))
        assert msg["Bcc"] is None
        assert msg["From"] == "Backup Job <backup@gmta.test>"
        assert msg["Message-ID"].endswith("@mx.gmta.test>") and msg["Date"]
        assert msg.get_payload() == "all 3 volumes done\r\n"
    gmta.wait_for(r"event=accepted .*sender=backup@gmta.test rcpts=3")


def test_dot_line_ends_the_message_unless_i(start_gmta, state_dir):
    gmta = start_gmta(config(state_dir))
    text = b"Subject: dots\n\nbefore\n.\nafter\n"
    assert sendmail(gmta.config_path, "dave@gmta.test", message=text).returncode == 0
    assert sendmail(gmta.config_path, "-oi", "erin@gmta.test", message=text).returncode == 0
    [cut] = maildir_messages(state_dir, "dave@gmta.test")
    assert cut.endswith(b"\r\n\r\nbefore\r\n")
    [whole] = maildir_messages(state_dir, "erin@gmta.test")
    # The dot went through SMTP dot-stuffed and came out as it was written.
    assert whole.endswith(b"\r\n\r\nbefore\r\n.\r\nafter\r\n")


def test_local_names_get_the_hostname(start_gmta, state_dir):
    gmta = start_gmta(config(state_dir))
    done = sendmail(gmta.config_path, "root", message=b"cron output\n")
    assert done.returncode == 0, done.stderr
    [stored] = maildir_messages(state_dir, "root@mx.gmta.test")
    assert b"\r\n\r\ncron output\r\n" in stored


def test_a_refused_recipient_sends_nothing_and_exits_75(start_gmta, state_dir):
    gmta = start_gmta(config(state_dir, "max_recipients 1"))
    done = sendmail(gmta.config_path, "one@gmta.test", "two@gmta.test",
                    message=b"Subject: x\n\nbody\n")
    assert done.returncode == 75
    assert b"recipient <two@gmta.test> try again later: 452" in done.stderr
    assert b"the message was not sent" in done.stderr
    # All or nothing: the caller keeps the message, so nobody may have it yet.
    assert maildir_messages(state_dir, "one@gmta.test") == []


def test_gmta_stopped_is_exit_75(start_gmta, state_dir):
    gmta = start_gmta(config(state_dir))
    assert gmta.stop() == 0
    done = sendmail(gmta.config_path, "late@gmta.test", message=b"Subject: x\n\nbody\n")
    assert done.returncode == 75
    assert b"cannot reach gmta at unix://" in done.stderr
