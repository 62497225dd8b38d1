"""DATA: streaming, dot-unstuffing, the end marker and the limits.

Includes the python-slimta failures of peers-and-style §1.6 / §7.7 (smuggling, body
run as commands after an overflow, SIZE bypass with the body in the DATA packet, an
unbounded line buffer) and aiosmtpd's "error delayed to the end of data" cases.
"""

import pytest

from gmta.errors import SMTPError
from gmta.proto import BodyChunk, Mail, MessageEnd, ProtocolError, State
from gmta.proto.server import BODY_CHUNK_SIZE
from proto_helpers import greeted, in_data

MAIL = b"MAIL FROM:<a@example.com>\r\n"
RCPT = b"RCPT TO:<b@example.net>\r\n"


def test_message_accepted():
    session = in_data()
    assert session.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n") == b"250 2.0.0 OK: queued\r\n"
    assert session.body() == b"Subject: hi\r\n\r\nbody\r\n"
    assert session.of_type(MessageEnd) == [MessageEnd()]
    assert session.conn.state is State.READY and not session.conn.in_transaction


def test_empty_message():
    session = in_data()
    assert session.say(b".\r\n") == ["250 2.0.0"]
    assert session.body() == b""


def test_dots_are_unstuffed():
    session = in_data()
    session.send(b"..leading\r\n.\r\n")
    assert session.body() == b".leading\r\n"


def test_body_split_over_many_receives():
    session = in_data()
    message = b"Subject: x\r\n\r\n" + b"line\r\n" * 100 + b"..dot\r\n"
    for byte in message + b".\r\n":
        session.send(bytes([byte]))
    assert session.body() == message.replace(b"\r\n..", b"\r\n.")
    assert len(session.of_type(MessageEnd)) == 1


def test_body_chunks_are_bounded():
    session = in_data(max_message_size=10 * BODY_CHUNK_SIZE)
    session.send((b"x" * 998 + b"\r\n") * (3 * BODY_CHUNK_SIZE // 1000) + b".\r\n")
    chunks = session.of_type(BodyChunk)
    assert len(chunks) >= 3
    assert all(len(chunk.data) <= BODY_CHUNK_SIZE for chunk in chunks)


def test_transactions_follow_each_other():
    # maddy E15: MAIL/RCPT/RSET then a full transaction gives exactly one message.
    session = greeted()
    session.send(MAIL + RCPT + b"RSET\r\n")
    session.send(MAIL + RCPT + b"DATA\r\n")
    session.send(b"one\r\n.\r\n")
    session.send(MAIL + RCPT + b"DATA\r\n")
    assert session.say(b"two\r\n.\r\n") == ["250 2.0.0"]
    assert session.body() == b"one\r\ntwo\r\n"


@pytest.mark.parametrize("smuggled", [
    b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\n.\r",
])
def test_smuggling_does_not_end_the_data(smuggled):
    # SMTP smuggling (slimta §1.6, aiosmtpd test_smtpsmuggling): only CRLF.CRLF ends
    # the data, so the smuggled MAIL stays body text.
    session = in_data()
    body = b"hello" + smuggled + b"MAIL FROM:<smuggled@evil.example>\r\nRCPT TO:<x@y.example>\r\n"
    assert session.say(body) == []
    assert session.say(b".\r\n") == ["250 2.0.0"]
    assert len(session.of_type(Mail)) == 1
    assert b"smuggled@evil.example" in session.body()


def test_oversize_body_is_drained_before_the_reply():
    # slimta §1.6: after the 552 the rest of the body ran as commands.
    session = in_data(max_message_size=100)
    assert session.say(b"x" * 150 + b"\r\n") == []   # no reply before the end of data
    assert session.say(b"RSET\r\nMAIL FROM:<injected@evil.example>\r\n.\r\n") == ["552 5.3.4"]
    assert len(session.of_type(Mail)) == 1
    assert session.of_type(MessageEnd)[0].error.code == 552
    assert session.conn.state is State.READY and not session.conn.in_transaction
    assert session.say(b"NOOP\r\n") == ["250 2.0.0"]


def test_size_applies_to_the_body_in_the_data_packet():
    # slimta §1.6: a body sent in the same packet as DATA escaped the limit.
    session = greeted(max_message_size=100)
    out = session.say(MAIL + RCPT + b"DATA\r\n" + b"y" * 200 + b"\r\n.\r\n")
    assert out == ["250 2.0.0", "250 2.0.0", "354", "552 5.3.4"]


def test_size_limit_is_exact():
    session = in_data(max_message_size=100)
    assert session.say(b"x" * 98 + b"\r\n.\r\n") == ["250 2.0.0"]   # 100 bytes with CRLF
    session.send(MAIL + RCPT + b"DATA\r\n")
    assert session.say(b"x" * 99 + b"\r\n.\r\n") == ["552 5.3.4"]


def test_overflowed_content_is_not_reported():
    session = in_data(max_message_size=10)
    session.send(b"12345\r\n")
    session.send(b"67890\r\n")
    session.send(b".\r\n")
    assert session.body() == b"12345\r\n"


def test_header_size_limit():
    # maddy E9: a 2 KiB Subject with max_header_size 1K.
    session = in_data(max_header_size=1024)
    out = session.send(b"Subject: " + b"x" * 2048 + b"\r\n\r\nbody\r\n.\r\n")
    assert out == b"552 5.3.4 Message header size exceeds limit\r\n"


def test_header_limit_does_not_apply_to_the_body():
    session = in_data(max_header_size=100)
    body = b"Subject: x\r\n\r\n" + (b"y" * 80 + b"\r\n") * 10
    assert session.say(body + b".\r\n") == ["250 2.0.0"]


def test_too_long_data_line_closes_the_session():
    session = in_data(max_line_length=1000)
    assert session.say(b"x" * 1001 + b"\r\n") == ["500 5.4.0"]
    assert session.closed and not session.conn.in_transaction
    assert session.events[-1].fatal


def test_line_of_exactly_the_limit_is_fine():
    session = in_data(max_line_length=1000)
    assert session.say(b"x" * 1000 + b"\r\n.\r\n") == ["250 2.0.0"]


def test_long_line_without_newline_in_data_is_not_buffered():
    session = in_data(max_line_length=1000)
    for _ in range(3):
        session.send(b"x" * 300)
        assert session.conn.buffered_bytes <= 2
    assert session.say(b"x" * 300) == ["500 5.4.0"]


def test_mixed_too_long_line_and_too_big_body():
    # aiosmtpd: whichever limit breaks first decides; a too-long line still closes.
    session = in_data(max_message_size=100, max_line_length=1000)
    assert session.say(b"x" * 200 + b"\r\n") == []
    assert session.say(b"y" * 1001 + b"\r\n") == ["500 5.4.0"]


def test_message_rejected_by_the_driver():
    error = SMTPError(451, (4, 3, 0), "spool full")
    session = in_data(decide=lambda event: error if isinstance(event, MessageEnd) else None)
    assert session.say(b"x\r\n.\r\n") == ["451 4.3.0"]
    assert not session.conn.in_transaction


def test_data_rejected_by_the_driver_keeps_the_transaction():
    session = greeted()
    session.send(MAIL + RCPT)
    session.decide = lambda event: SMTPError(451, (4, 3, 0), "later")
    assert session.say(b"DATA\r\n") == ["451 4.3.0"]
    assert session.conn.state is State.RCPT
    session.decide = None
    assert session.say(b"DATA\r\n") == ["354"]


def test_protocol_error_is_not_reported_for_limit_failures():
    session = in_data(max_message_size=1)
    session.send(b"xx\r\n.\r\n")
    assert not session.of_type(ProtocolError)
