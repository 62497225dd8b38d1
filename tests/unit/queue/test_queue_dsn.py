"""The DSN builder: RFC 3464 fields in an RFC 6522 multipart/report, parsed back with ``email``."""

from __future__ import annotations

import email
import email.policy
import email.utils

import pytest

from gmta.buffer import MemoryBuffer
from gmta.errors import SMTPError
from gmta.queue import dsn

HEADER = b"From: Alice <alice@src.test>\r\nSubject: Report\r\nMessage-ID: <m1@src.test>\r\n\r\n"
ARRIVAL = 1_700_000_000.0
ATTEMPT = 1_700_000_600.0


def report(action=dsn.FAILED, **kw):
    error = SMTPError(550, (5, 1, 1), "User unknown", misc={"remote_mta": "mx.dst.test"})
    recipients = kw.pop("recipients", [dsn.RecipientStatus(
        final_recipient="bob+list@dst.test", action=action,
        status=error.enhanced if action == dsn.FAILED else (2, 0, 0),
        error=error if action == dsn.FAILED else None,
        original_recipient=("rfc822", "Bob@Orig.test"), remote_mta="mx.dst.test",
        last_attempt=ATTEMPT)])
    values = dict(reporting_mta="mx.gmta.test", msg_domain="gen.test",
                  original_sender="alice@src.test", queue_id="q123", arrival=ARRIVAL,
                  original_header=HEADER, recipients=recipients, envid="ENV 42",
                  received_from_mta="client.src.test", now=ATTEMPT + 1)
    values.update(kw)
    return dsn.Report(**values)


def parse(rep):
    header, body = dsn.build(rep)
    assert header.endswith(b"\r\n\r\n")
    assert b"\n" not in (header + body).replace(b"\r\n", b"")  # CRLF only
    return email.message_from_bytes(header + body)


def test_top_level_fields():
    message = parse(report())
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@gen.test>"
    assert message["To"] == "<alice@src.test>"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"
    assert message["Message-ID"].endswith("@gen.test>")
    assert email.utils.parsedate_to_datetime(message["Date"]).timestamp() == ATTEMPT + 1
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"


def test_three_parts_in_rfc_6522_order():
    parts = parse(report()).get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert "bob+list@dst.test" in parts[0].get_payload()
    assert "550 5.1.1 User unknown" in parts[0].get_payload()
    assert parts[2].get_payload().encode() == HEADER


def test_every_delivery_status_field():
    per_message, per_rcpt = parse(report()).get_payload()[1].get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.gmta.test"
    assert per_message["Original-Envelope-Id"] == "ENV 42"
    assert per_message["Received-From-MTA"] == "dns; client.src.test"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == ARRIVAL
    assert per_rcpt["Original-Recipient"] == "rfc822; Bob@Orig.test"
    assert per_rcpt["Final-Recipient"] == "rfc822; bob+list@dst.test"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Remote-MTA"] == "dns; mx.dst.test"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 User unknown"
    assert email.utils.parsedate_to_datetime(per_rcpt["Last-Attempt-Date"]).timestamp() == ATTEMPT
    assert per_rcpt["Will-Retry-Until"] is None


def test_optional_fields_are_left_out():
    rep = report(envid=None, received_from_mta=None, recipients=[dsn.RecipientStatus(
        "c@dst.test", dsn.FAILED, (5, 0, 0), SMTPError(554, (5, 0, 0), "no"))])
    per_message, per_rcpt = parse(rep).get_payload()[1].get_payload()
    assert "Original-Envelope-Id" not in per_message
    assert "Received-From-MTA" not in per_message
    assert "Original-Recipient" not in per_rcpt and "Remote-MTA" not in per_rcpt


def test_delayed_report():
    rcpt = dsn.RecipientStatus("d@dst.test", dsn.DELAYED, (4, 4, 1),
                               SMTPError(451, (4, 4, 1), "Connection timed out"),
                               last_attempt=ATTEMPT, will_retry_until=ATTEMPT + 86400)
    message = parse(report(recipients=[rcpt]))
    assert message["Subject"] == "Delayed Mail (still being retried)"
    block = message.get_payload()[1].get_payload()[1]
    assert (block["Action"], block["Status"]) == ("delayed", "4.4.1")
    assert email.utils.parsedate_to_datetime(block["Will-Retry-Until"]).timestamp() == \
        ATTEMPT + 86400


def test_success_report_has_no_diagnostic():
    message = parse(report(dsn.DELIVERED))
    block = message.get_payload()[1].get_payload()[1]
    assert (block["Action"], block["Status"]) == ("delivered", "2.0.0")
    assert "Diagnostic-Code" not in block


def test_ret_full_returns_the_message():
    message = parse(report(original_body=MemoryBuffer(b"line one\r\n")))
    returned = message.get_payload()[2]
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0]
    assert inner["Subject"] == "Report" and inner.get_payload() == "line one\r\n"


def test_utf8_report_uses_rfc_6533_types():
    rep = report(utf8=True, recipients=[dsn.RecipientStatus(
        "josé@dst.test", dsn.FAILED, (5, 1, 1), SMTPError(550, (5, 1, 1), "unknown"))])
    message = email.message_from_bytes(b"".join(dsn.build(rep)), policy=email.policy.SMTPUTF8)
    parts = message.get_payload()
    assert parts[1].get_content_type() == "message/global-delivery-status"
    assert parts[2].get_content_type() == "message/global-headers"
    assert "Final-Recipient: utf-8; josé@dst.test" in dsn.build(rep)[1].decode()


def test_one_action_per_report():
    rcpts = [dsn.RecipientStatus("a@d.test", dsn.FAILED, (5, 0, 0)),
             dsn.RecipientStatus("b@d.test", dsn.DELIVERED, (2, 0, 0))]
    with pytest.raises(ValueError):
        dsn.build(report(recipients=rcpts))


def test_diagnostic_cannot_inject_fields():
    rcpt = dsn.RecipientStatus("a@d.test", dsn.FAILED, (5, 0, 0),
                               SMTPError(550, (5, 0, 0), "bad\r\nAction: delivered"))
    block = parse(report(recipients=[rcpt])).get_payload()[1].get_payload()[1]
    assert block["Action"] == "failed"
    assert block["Diagnostic-Code"] == "smtp; 550 5.0.0 bad Action: delivered"
