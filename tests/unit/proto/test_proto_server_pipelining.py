"""RFC 2920 PIPELINING: which replies are held and when they must be flushed."""

from gmta.proto import NEED_DATA
from proto_helpers import greeted, summary

MAIL = b"MAIL FROM:<a@example.com>\r\n"
RCPT = b"RCPT TO:<b@example.net>\r\n"


def writes(session, data):
    """Each write the driver makes while handling ``data``, as reply summaries."""
    conn = session.conn
    conn.receive_data(data)
    batches = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            batches.append(summary(conn.data_to_send()))
            return [batch for batch in batches if batch]
        if event.needs_answer:
            conn.accept()
        batches.append(summary(conn.data_to_send()))


def test_pipelined_envelope_is_answered_in_one_write():
    session = greeted()
    assert writes(session, MAIL + RCPT + RCPT + b"DATA\r\n") == [
        ["250 2.0.0", "250 2.0.0", "250 2.0.0", "354"]]


def test_replies_are_held_only_while_commands_are_waiting():
    session = greeted()
    # The RCPT line is incomplete: nothing more to answer, so the MAIL reply goes.
    assert writes(session, MAIL + b"RCPT TO:<b@exa") == [["250 2.0.0"]]
    assert writes(session, b"mple.net>\r\n") == [["250 2.0.0"]]


def test_non_pipelinable_commands_flush_at_once():
    # RFC 2920 §3.1: EHLO, NOOP, VRFY... end a group; a client that pipelines past
    # them still gets their reply without waiting for the rest.
    session = greeted()
    assert writes(session, MAIL + b"NOOP\r\n" + RCPT + b"VRFY x\r\n" + b"RSET\r\n") == [
        ["250 2.0.0", "250 2.0.0"], ["250 2.0.0", "252 2.5.0"], ["250 2.0.0"]]


def test_errors_are_held_too():
    session = greeted()
    assert writes(session, b"FOO\r\n" + RCPT + MAIL) == [["500 5.5.2", "503 5.5.1", "250 2.0.0"]]


def test_data_end_reply_can_be_held_with_the_next_envelope():
    # RFC 2920 §3.1: the message content may be followed by the next group.
    session = greeted()
    writes(session, MAIL + RCPT + b"DATA\r\n")
    assert writes(session, b"body\r\n.\r\n" + MAIL + RCPT + b"DATA\r\n") == [
        ["250 2.0.0", "250 2.0.0", "250 2.0.0", "354"]]


def test_nothing_to_send():
    session = greeted()
    assert session.conn.data_to_send() == b""
