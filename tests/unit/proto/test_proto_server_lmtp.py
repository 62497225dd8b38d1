"""LMTP (RFC 2033): LHLO, and one reply per accepted recipient after the data."""

import pytest

from gmta.errors import SMTPError
from gmta.proto import MessageEnd, Rcpt
from gmta.proto.server import LocalProtocolError
from proto_helpers import Session, greeted, parse_output

LHLO = b"LHLO client.example\r\n"
UNKNOWN = SMTPError(550, (5, 1, 1), "No such user")


def lmtp_session(**options):
    return greeted(LHLO, lmtp=True, **options)


def envelope(count):
    data = b"MAIL FROM:<a@example.com>\r\n"
    for number in range(count):
        data += b"RCPT TO:<r%d@example.net>\r\n" % number
    return data


def test_lhlo_advertises_pipelining_and_enhanced_codes():
    # aiosmtpd #113: LMTP clients need both.
    session = Session(lmtp=True)
    session.send()
    lines = parse_output(session.send(LHLO))[0].lines
    assert "PIPELINING" in lines and "ENHANCEDSTATUSCODES" in lines


def test_help_lists_lhlo():
    # aiosmtpd test_lmtp: HELP on LMTP names LHLO, not EHLO/HELO.
    text = parse_output(lmtp_session().send(b"HELP\r\n"))[0].text
    assert "LHLO" in text and "EHLO" not in text


def test_one_reply_per_accepted_recipient():
    # maddy E10, aiosmtpd #517.
    def refuse_second(event):
        return UNKNOWN if event == Rcpt("r1@example.net") else None

    session = lmtp_session(decide=refuse_second)
    assert session.say(envelope(3) + b"DATA\r\n") == [
        "250 2.0.0", "250 2.0.0", "550 5.1.1", "250 2.0.0", "354"]
    out = session.send(b"hello\r\n.\r\n")
    assert out == (b"250 2.0.0 <r0@example.net> OK: queued\r\n"
                   b"250 2.0.0 <r2@example.net> OK: queued\r\n")


def test_per_recipient_results():
    session = lmtp_session()
    session.send(envelope(3) + b"DATA\r\n")
    conn = session.conn
    conn.receive_data(b"hello\r\n.\r\n")
    while not isinstance(conn.next_event(), MessageEnd):
        pass
    conn.reply_per_recipient([None, UNKNOWN, SMTPError(452, (4, 2, 2), "Mailbox full")])
    assert conn.data_to_send() == (b"250 2.0.0 <r0@example.net> OK: queued\r\n"
                                   b"550 5.1.1 No such user\r\n"
                                   b"452 4.2.2 Mailbox full\r\n")
    assert not conn.in_transaction


def test_rejected_message_gets_the_error_per_recipient():
    session = lmtp_session(decide=lambda event: UNKNOWN if isinstance(event, MessageEnd) else None)
    session.send(envelope(2) + b"DATA\r\n")
    assert session.say(b"x\r\n.\r\n") == ["550 5.1.1", "550 5.1.1"]


def test_oversize_message_gets_the_error_per_recipient():
    session = lmtp_session(max_message_size=5)
    session.send(envelope(2) + b"DATA\r\n")
    assert session.say(b"too big\r\n.\r\n") == ["552 5.3.4", "552 5.3.4"]


def test_bdat_last_gets_a_reply_per_recipient():
    session = lmtp_session(max_message_size=5)
    session.send(envelope(2))
    ok, too_big = "250 2.0.0", "552 5.3.4"
    assert session.say(b"BDAT 2\r\nabBDAT 1 LAST\r\nc") == [ok, ok, ok]
    session.send(envelope(2))
    assert session.say(b"BDAT 3\r\nabcBDAT 3 LAST\r\ndef") == [ok, too_big, too_big]
    session.send(envelope(2))
    # A failing chunk that is not the last has a single reply (RFC 3030 §2).
    assert session.say(b"BDAT 9\r\n123456789") == ["552 5.3.4"]


@pytest.mark.parametrize("results", [[None], [None, None, None]])
def test_wrong_number_of_results_is_a_driver_bug(results):
    session = lmtp_session()
    session.send(envelope(2) + b"DATA\r\n")
    conn = session.conn
    conn.receive_data(b".\r\n")
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.reply_per_recipient(results)


def test_reply_per_recipient_is_lmtp_only():
    session = greeted()
    with pytest.raises(LocalProtocolError):
        session.conn.reply_per_recipient([])
