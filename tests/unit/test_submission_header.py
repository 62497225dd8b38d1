"""Submission header checks and fix-ups (maddy-behaviour §2.1, E16)."""

from __future__ import annotations

import email.utils

import pytest

from gmta.endpoint.submission_header import check_and_complete, parse_fields
from gmta.errors import SMTPError

COMPLETE = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\n"
            b"Date: Sat, 21 Nov 2026 05:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n"
            b"Subject: hi\r\n\r\n")


def test_a_complete_header_is_left_alone():
    assert check_and_complete(COMPLETE, "mx.example.org") is COMPLETE


def test_message_id_and_date_are_added_before_the_empty_line():
    header = b"From: alice@example.org\r\nSubject: x\r\n\r\n"
    result = check_and_complete(header, "mx.example.org")
    assert result.startswith(header[:-2]) and result.endswith(b"\r\n\r\n")
    fields = dict(parse_fields(result))
    assert fields["message-id"].startswith("<") and fields["message-id"].endswith("@mx.example.org>")
    assert email.utils.parsedate_to_datetime(fields["date"]) is not None


def test_a_header_without_empty_line_gets_the_fields_appended():
    result = check_and_complete(b"From: alice@example.org\r\n", "h")
    assert [name for name, _ in parse_fields(result)] == ["from", "message-id", "date"]


@pytest.mark.parametrize("header, text", [
    (b"To: bob@example.net\r\n\r\n", "Message does not contain a From header field"),
    (b"From: alice\r\n\r\n", "Invalid address in From"),
    (b"From: <>\r\n\r\n", "Invalid address in From"),
    (b"From: a@example.org\r\nTo: bob@\r\n\r\n", "Invalid address in To"),
    (b"From: a@example.org\r\nCc: ,,,\r\n\r\n", "Invalid address in Cc"),
    (b"From: a@example.org\r\nReply-To: nobody\r\n\r\n", "Invalid address in Reply-To"),
    (b"From: a@example.org\r\nSender: \r\n\r\n", "Invalid address in Sender"),
    (b"From: a@example.org, b@example.org\r\n\r\n", "Missing Sender header field"),
    (b"From: a@example.org\r\nDate: yesterday\r\n\r\n", "Malformed Date header"),
    (b"From: a@example.org\r\nnot a field\r\n\r\n", "Malformed header field"),
])
def test_unfit_headers_are_refused_with_554_5_6_0(header, text):
    with pytest.raises(SMTPError) as refused:
        check_and_complete(header, "h")
    assert (refused.value.code, refused.value.enhanced, refused.value.text) == (554, (5, 6, 0), text)


@pytest.mark.parametrize("header", [
    b"From: a@example.org, b@example.org\r\nSender: a@example.org\r\n\r\n",
    b"From: a@example.org\r\nTo: undisclosed-recipients:;\r\n\r\n",
    b"From: \"Last, First\" <a@example.org>\r\nTo: x@example.net,\r\n y@example.net\r\n\r\n",
    "From: Jos\u00e9 <jos\u00e9@ex\u00e4mple.org>\r\n\r\n".encode(),
])
def test_acceptable_headers(header):
    assert check_and_complete(header, "h").startswith(header[:-2])


def test_folded_fields_are_unfolded():
    assert parse_fields(b"Subject: a\r\n b\r\n\tc\r\n\r\n") == [("subject", "a b c")]
