"""``gmta sendmail``: sendmail's flags, the message it submits, where it submits it.

The end-to-end tests (a real ``gmta run``) are in tests/integration/test_sendmail.py.
"""

from __future__ import annotations

import email
import io

import pytest

from gmta import sendmail as sm
from gmta.config.values import Endpoint


def prepared(text: bytes, *argv: str, login="cron", name="Cron Daemon", host="mx.example.test"):
    options = sm.parse_args(list(argv))
    message = sm.read_message(io.BytesIO(text), options.ignore_dots)
    return sm.prepare(message, options, login, name, host)


# -- flags ------------------------------------------------------------------------------------

def test_flags_in_sendmails_forms():
    options = sm.parse_args(["-ti", "-fbounce@example.org", "-F", "Cron Daemon", "-oem",
                             "-odq", "-C", "/tmp/x.conf", "--", "bob@example.org"])
    assert options.extract_recipients and options.ignore_dots
    assert options.sender == "bounce@example.org"
    assert options.full_name == "Cron Daemon"
    assert options.config_path == "/tmp/x.conf"
    assert options.recipients == ["bob@example.org"]


def test_oi_is_i_and_other_o_options_are_ignored():
    assert sm.parse_args(["-oi", "a@b"]).ignore_dots
    assert not sm.parse_args(["-oem", "-oQ/var/spool", "a@b"]).ignore_dots


def test_bm_is_accepted_and_other_modes_are_usage_errors():
    assert sm.parse_args(["-bm", "a@b"]).recipients == ["a@b"]
    with pytest.raises(sm.SendmailError) as e:
        sm.parse_args(["-bp"])
    assert e.value.status == sm.EX_USAGE == 64


def test_unknown_flag_is_a_usage_error():
    with pytest.raises(sm.SendmailError) as e:
        sm.parse_args(["-Z"])
    assert e.value.status == 64 and "-Z" in str(e.value)


# -- reading the message -----------------------------------------------------------------------

def test_a_lone_dot_ends_the_message_without_i():
    assert sm.read_message(io.BytesIO(b"a\n.\nb\n"), ignore_dots=False) == b"a\n"
    assert sm.read_message(io.BytesIO(b"a\r\n.\r\nb\r\n"), ignore_dots=False) == b"a\n"


def test_with_i_a_lone_dot_is_text():
    assert sm.read_message(io.BytesIO(b"a\n.\nb\n"), ignore_dots=True) == b"a\n.\nb\n"


# -- the message submitted ---------------------------------------------------------------------

def test_recipients_from_headers_with_t_and_bcc_removed():
    p = prepared(b"To: Alice <alice@example.org>, bob@example.org\nCc: carol@example.org\n"
                 b"Bcc: dave@example.org,\n eve@example.org\nSubject: s\n\nbody\n", "-t")
    assert p.recipients == ["alice@example.org", "bob@example.org", "carol@example.org",
                            "dave@example.org", "eve@example.org"]
    assert b"Bcc" not in p.message and b"eve@" not in p.message
    assert b"Subject: s\n\nbody\n" in p.message


def test_t_adds_to_the_command_line_recipients_without_duplicates():
    p = prepared(b"To: Alice@example.org\n\nx\n", "-t", "alice@example.org", "zed@example.org")
    assert p.recipients == ["alice@example.org", "zed@example.org"]


def test_local_names_are_qualified_with_the_hostname():
    p = prepared(b"Subject: x\n\ny\n", "root")
    assert p.recipients == ["root@mx.example.test"]
    assert p.sender == "cron@mx.example.test"


def test_missing_from_date_and_message_id_are_added():
    p = prepared(b"Subject: report\n\nall fine\n", "-F", "Backup Job", "root@example.org")
    msg = email.message_from_bytes(p.message)
    assert msg["From"] == "Backup Job <cron@mx.example.test>"
    assert email.utils.parsedate_to_datetime(msg["Date"]) is not None
    assert msg["Message-ID"].endswith("@mx.example.test>")
    assert msg["Subject"] == "report" and msg.get_payload() == "all fine\n"


def test_from_uses_f_and_existing_fields_are_kept():
    p = prepared(b"From: me@example.org\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n"
                 b"Message-ID: <x@y>\n\nb\n", "-f", "<bounces@example.org>", "a@example.org")
    assert p.sender == "bounces@example.org"
    assert p.message == (b"From: me@example.org\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n"
                         b"Message-ID: <x@y>\n\nb\n")
    p = prepared(b"Subject: x\n\nb\n", "-f", "bounces@example.org", "a@example.org")
    assert b"From: Cron Daemon <bounces@example.org>\n" in p.message


def test_null_sender():
    assert prepared(b"Subject: x\n\nb\n", "-f", "<>", "a@example.org").sender == ""


def test_text_without_a_header_becomes_the_body():
    p = prepared(b"hello there\nsecond line\n", "a@example.org")
    header, _, body = p.message.partition(b"\n\n")
    assert body == b"hello there\nsecond line\n"
    assert header.startswith(b"From: ")


def test_no_recipients_is_a_usage_error():
    with pytest.raises(sm.SendmailError) as e:
        prepared(b"Subject: x\n\nb\n", "-t")
    assert e.value.status == 64


# -- where to submit ---------------------------------------------------------------------------

def test_first_unix_smtp_endpoint_wins(tmp_path):
    config = tmp_path / "g.conf"
    config.write_text("hostname mx.a.test\nruntime_dir run\n"
                      "smtp tcp://127.0.0.1:2525 { }\nlmtp unix://lmtp.sock { }\n"
                      "smtp unix://sendmail.sock unix:///abs/second.sock { }\n")
    target = sm.find_target(str(config))
    assert target.endpoint == Endpoint("unix", path=f"{tmp_path}/run/sendmail.sock")
    assert target.hostname == "mx.a.test"


def test_a_loopback_tcp_endpoint_otherwise(tmp_path):
    config = tmp_path / "g.conf"
    config.write_text("$(port) = 2525\nsmtp tcp://0.0.0.0:25 tcp://127.0.0.1:$(port) { }\n"
                      "submission tcp://[::1]:587 { }\n")
    assert sm.find_target(str(config)).endpoint == Endpoint("tcp", "127.0.0.1", 2525)


def test_no_usable_endpoint_is_a_config_error(tmp_path):
    config = tmp_path / "g.conf"
    config.write_text("smtp tcp://0.0.0.0:25 tcp://127.0.0.1:0 { }\nlmtp unix://l.sock { }\n")
    with pytest.raises(sm.SendmailError) as e:
        sm.find_target(str(config))
    assert e.value.status == sm.EX_CONFIG == 78


def test_gmta_not_running_is_a_temporary_failure(tmp_path, capsys):
    config = tmp_path / "g.conf"
    config.write_text(f"runtime_dir {tmp_path}\nsmtp unix://nobody-listens.sock {{ }}\n")
    status = sm.main(["-C", str(config), "a@example.org"], stdin=io.BytesIO(b"Subject: x\n\nb\n"))
    assert status == sm.EX_TEMPFAIL == 75
    err = capsys.readouterr().err
    assert f"cannot reach gmta at unix://{tmp_path}/nobody-listens.sock" in err
    assert "the message was not sent" in err
