"""BDAT (RFC 3030 CHUNKING): byte counting, LAST, failures and what follows them."""

import pytest

from gmta.errors import SMTPError
from gmta.proto import DataStart, Mail, MessageEnd, ProtocolError, State
from proto_helpers import greeted

MAIL = b"MAIL FROM:<a@example.com>\r\n"
RCPT = b"RCPT TO:<b@example.net>\r\n"


def ready_for_bdat(**options):
    session = greeted(**options)
    assert session.say(MAIL + RCPT) == ["250 2.0.0", "250 2.0.0"]
    return session


def test_single_chunk():
    session = ready_for_bdat()
    assert session.send(b"BDAT 5 LAST\r\nhello") == b"250 2.0.0 OK: queued\r\n"
    assert session.body() == b"hello"
    assert session.of_type(DataStart) == [DataStart(chunking=True)]


def test_chunks_are_raw_bytes_without_line_rules():
    # No dot-unstuffing, no end marker, no line limit in BDAT (maddy: not applied).
    session = ready_for_bdat(max_line_length=1000)
    content = b".\r\n" + b"x" * 5000 + b"\n.\n\r\n.\r\n"
    assert session.say(b"BDAT %d LAST\r\n" % len(content) + content) == ["250 2.0.0"]
    assert session.body() == content


def test_several_chunks_pipelined():
    session = ready_for_bdat()
    out = session.say(b"BDAT 3\r\nabcBDAT 0\r\nBDAT 3 last\r\ndefNOOP\r\n")
    assert out == ["250 2.0.0", "250 2.0.0", "250 2.0.0", "250 2.0.0"]
    assert session.body() == b"abcdef"
    assert len(session.of_type(DataStart)) == 1
    assert len(session.of_type(MessageEnd)) == 1


def test_chunk_reply_text():
    session = ready_for_bdat()
    assert session.send(b"BDAT 3\r\nabc") == b"250 2.0.0 3 bytes received\r\n"
    assert session.conn.state is State.CHUNKING


def test_chunk_split_over_receives():
    session = ready_for_bdat()
    session.send(b"BDAT 10 LAST\r\n")
    for byte in b"0123456789":
        assert session.conn.state is State.BDAT
        session.send(bytes([byte]))
    assert session.body() == b"0123456789"
    assert session.conn.state is State.READY


def test_empty_last_chunk():
    session = ready_for_bdat()
    assert session.say(b"BDAT 0 LAST\r\n") == ["250 2.0.0"]
    assert session.body() == b""


@pytest.mark.parametrize("before, expected", [
    (b"", "503 5.5.1"),                # no EHLO
    (b"EHLO x\r\n", "503 5.5.1"),      # no MAIL
    (b"EHLO x\r\n" + MAIL, "503 5.5.1"),  # no RCPT
])
def test_out_of_sequence_bdat_still_consumes_its_chunk(before, expected):
    # Otherwise the chunk's bytes would run as commands.
    session = greeted(before)
    out = session.say(b"BDAT 24\r\nMAIL FROM:<x@evil.exa>\r\nNOOP\r\n")
    assert out == [expected, "250 2.0.0"]
    assert Mail("x@evil.exa") not in session.events
    assert not session.conn.in_transaction


def test_bad_bdat_syntax_closes_the_connection():
    session = ready_for_bdat()
    assert session.say(b"BDAT many\r\nMAIL FROM:<x@evil.example>\r\n") == ["501 5.5.4"]
    assert session.closed


@pytest.mark.parametrize("argument", [b"", b"5 NOTLAST", b"-1", b"1" * 19, b"5 LAST x"])
def test_bdat_syntax_errors(argument):
    session = ready_for_bdat()
    assert session.say(b"BDAT " + argument + b"\r\n") == ["501 5.5.4"]


def test_overflow_in_a_middle_chunk_fails_the_transaction():
    session = ready_for_bdat(max_message_size=10)
    out = session.say(b"BDAT 8\r\n12345678BDAT 8\r\n12345678BDAT 8 LAST\r\n12345678")
    # The failing chunk is read to its end, then answered; the pipelined chunk after
    # it is read and thrown away (RFC 3030 §2) with a 503.
    assert out == ["250 2.0.0", "552 5.3.4", "503 5.5.1"]
    assert session.body() == b"12345678"
    assert [event.error.code for event in session.of_type(MessageEnd)] == [552]
    assert session.conn.state is State.READY
    assert session.say(MAIL) == ["250 2.0.0"]


def test_overflow_in_the_last_chunk():
    session = ready_for_bdat(max_message_size=10)
    assert session.say(b"BDAT 11 LAST\r\n" + b"x" * 11) == ["552 5.3.4"]


def test_header_limit_applies_to_bdat():
    session = ready_for_bdat(max_header_size=10)
    assert session.say(b"BDAT 20 LAST\r\n" + b"x" * 20) == ["552 5.3.4"]


def test_first_chunk_rejected_by_the_driver():
    error = SMTPError(451, (4, 3, 0), "spool full")
    session = ready_for_bdat(decide=lambda event: error if isinstance(event, DataStart) else None)
    assert session.say(b"BDAT 5\r\nhelloBDAT 5 LAST\r\nworld") == ["451 4.3.0", "503 5.5.1"]
    assert session.body() == b""
    assert not session.of_type(MessageEnd)


def test_last_chunk_rejected_by_the_driver():
    error = SMTPError(554, (5, 7, 1), "spam")
    session = ready_for_bdat(decide=lambda event: error if isinstance(event, MessageEnd) else None)
    assert session.say(b"BDAT 5 LAST\r\nhello") == ["554 5.7.1"]


@pytest.mark.parametrize("command, expected", [
    (b"DATA\r\n", "503 5.5.1"),                        # RFC 3030: no mixing in a message
    (RCPT, "503 5.5.1"),
    (MAIL, "503 5.5.1"),
    (b"RSET\r\n", "250 2.0.0"),
])
def test_commands_between_chunks(command, expected):
    session = ready_for_bdat()
    session.send(b"BDAT 3\r\nabc")
    assert session.say(command) == [expected]


def test_out_of_sequence_bdat_is_a_protocol_error():
    session = greeted()
    session.send(b"BDAT 1\r\nx")
    assert isinstance(session.events[-1], ProtocolError)
