"""SMTPClient's envelope and content on the wire, byte for byte (gmta/net/client.py).

RFC 2920 §3.1: with PIPELINING, MAIL, the RCPTs and DATA go in one write; the
content follows the 354 in as few writes as CONTENT_PIECE allows. When every
RCPT was refused the server answers DATA with 503/554 and nothing may follow
(RFC 5321 §3.3), or accepts it anyway and gets "a single dot" (RFC 2920 §3.1).
The socket is a script: each write is recorded, each read returns the next
scripted piece of the server's bytes.
"""

from __future__ import annotations

import pytest

from gmta.errors import SMTPError
from gmta.net.client import CONTENT_PIECE, ConnectionFailed, SMTPClient
from gmta.proto.client import ClientConnection, ClientState

EHLO_PIPELINING = b"250-sink.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
RCPTS = [("b@example.test", None), ("c@example.test", None)]


class ScriptedSocket:
    """Records each write; each recv returns the next scripted piece (b"" when done)."""

    def __init__(self, *server_bytes: bytes):
        self.script = list(server_bytes)
        self.writes: list[bytes] = []
        self.timeout = None
        self.closed = False

    def send(self, data, flags=0) -> int:
        self.writes.append(bytes(data))
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.script.pop(0) if self.script else b""

    def settimeout(self, timeout) -> None:
        self.timeout = timeout

    def gettimeout(self):
        return self.timeout

    def close(self) -> None:
        self.closed = True


def session(*server_bytes: bytes, ehlo: bytes = EHLO_PIPELINING,
            lmtp: bool = False) -> tuple[SMTPClient, ScriptedSocket]:
    """A client past its greeting and EHLO (LHLO), its writes cleared."""
    sock = ScriptedSocket(b"220 sink.test ESMTP\r\n", ehlo, *server_bytes)
    client = SMTPClient(sock, ClientConnection(lmtp=lmtp), peer="sink", command_timeout=5,
                        submission_timeout=5)
    client.read_greeting()
    client.hello("gmta.test")
    sock.writes.clear()
    return client, sock


def test_mail_rcpts_and_data_go_in_one_write_and_the_content_in_one_more():
    client, sock = session(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 No such user\r\n"
                           b"354 End data with <CR><LF>.<CR><LF>\r\n",
                           b"250 2.0.0 Ok: queued\r\n")
    envelope = client.envelope("a@example.org", {}, RCPTS, data=True)
    assert sock.writes == [b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\n"
                           b"RCPT TO:<c@example.test>\r\nDATA\r\n"]
    assert envelope.ready and envelope.mail_error is None and envelope.data_error is None
    assert envelope.rcpt_errors[0] is None and envelope.rcpt_errors[1].code == 550
    [final] = client.send_content([b"Subject: x\r\n\r\n", b".leading dot\r\nbody\r\n"])
    assert final.reply.code == 250
    # Header, dot-stuffed body and end marker: one write (RFC 5321 §4.5.2).
    assert sock.writes[1:] == [b"Subject: x\r\n\r\n..leading dot\r\nbody\r\n.\r\n"]
    assert client.machine.state is ClientState.READY


@pytest.mark.parametrize("data_reply", [b"554 5.5.1 Error: no valid recipients\r\n",
                                        b"503 5.5.1 Error: need RCPT command\r\n"])
def test_every_rcpt_refused_and_data_refused_sends_no_content(data_reply):
    client, sock = session(b"250 2.1.0 Ok\r\n550 5.1.1 No\r\n550 5.1.1 No\r\n" + data_reply,
                           b"250 2.0.0 Ok\r\n")
    envelope = client.envelope("a@example.org", {}, RCPTS, data=True)
    assert not envelope.ready
    assert envelope.data_error.code == int(data_reply[:3])
    assert [e.code for e in envelope.rcpt_errors] == [550, 550]
    assert len(sock.writes) == 1   # the group, and nothing after it
    assert client.machine.state is ClientState.READY and client.usable
    # The session goes on: the next transaction's MAIL is allowed.
    client.rset()
    assert sock.writes[-1] == b"RSET\r\n"


def test_every_rcpt_refused_but_data_accepted_gets_a_single_dot():
    client, sock = session(b"250 2.1.0 Ok\r\n550 5.1.1 No\r\n550 5.1.1 No\r\n354 Go ahead\r\n",
                           b"554 5.5.1 No valid recipients\r\n")
    envelope = client.envelope("a@example.org", {}, RCPTS, data=True)
    assert not envelope.ready and envelope.data_error.code == 554
    assert sock.writes[1:] == [b".\r\n"]     # RFC 2920 §3.1: "a single dot"
    assert client.machine.state is ClientState.READY and client.usable
    assert client.machine.awaiting_replies == 0


def test_a_server_that_hangs_up_at_data_without_recipients_keeps_the_rcpt_answers():
    # Some servers close the connection instead of answering such a DATA: the
    # refusals stand (permanent stays permanent), nothing was sent.
    client, sock = session(b"250 2.1.0 Ok\r\n550 5.1.1 No\r\n550 5.1.1 No\r\n")
    envelope = client.envelope("a@example.org", {}, RCPTS, data=True)
    assert [e.code for e in envelope.rcpt_errors] == [550, 550]
    assert isinstance(envelope.data_error, ConnectionFailed) and not envelope.ready
    assert not client.usable and len(sock.writes) == 1


def test_refused_mail_refuses_every_rcpt_and_data():
    client, sock = session(b"550 5.7.1 Sender refused\r\n503 5.5.1 Need MAIL\r\n"
                           b"503 5.5.1 Need MAIL\r\n503 5.5.1 Need MAIL\r\n")
    envelope = client.envelope("a@example.org", {}, RCPTS, data=True)
    assert envelope.mail_error.code == 550
    assert [e.code for e in envelope.rcpt_errors] == [550, 550]
    assert not envelope.ready and envelope.data_error.code == 503
    assert len(sock.writes) == 1 and client.machine.state is ClientState.READY


def test_421_in_the_middle_of_the_group_ends_the_session():
    client, sock = session(b"250 2.1.0 Ok\r\n421 4.3.2 Shutting down\r\n")
    envelope = client.envelope("a@example.org", {}, RCPTS, data=True)
    assert not client.usable and not envelope.ready
    assert [e.code for e in envelope.rcpt_errors] == [421, 421]
    assert envelope.data_error.code == 421


def test_a_connection_lost_before_the_replies_is_a_connection_failure():
    client, sock = session()   # nothing more from the server: the end of the stream
    with pytest.raises(ConnectionFailed):
        client.envelope("a@example.org", {}, RCPTS, data=True)
    assert not client.usable


def test_without_pipelining_one_command_at_a_time_and_no_data_after_refusals():
    ehlo = b"250-sink.test\r\n250 8BITMIME\r\n"
    client, sock = session(b"250 Ok\r\n", b"550 No\r\n", b"550 No\r\n", ehlo=ehlo)
    envelope = client.envelope("a@example.org", {}, RCPTS, data=True)
    assert sock.writes == [b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.test>\r\n",
                           b"RCPT TO:<c@example.test>\r\n"]
    assert not envelope.ready and envelope.data_error is None

    client, sock = session(b"250 Ok\r\n", b"250 Ok\r\n", b"354 Go\r\n", b"250 Ok\r\n", ehlo=ehlo)
    envelope = client.envelope("a@example.org", {}, RCPTS[:1], data=True)
    assert sock.writes[-1] == b"DATA\r\n" and envelope.ready
    client.send_content([b"Subject: x\r\n\r\nHi\r\n"])
    assert sock.writes[-1] == b"Subject: x\r\n\r\nHi\r\n.\r\n"


def test_with_chunking_data_waits_and_the_content_goes_in_bdat():
    ehlo = b"250-sink.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
    client, sock = session(b"250 Ok\r\n250 Ok\r\n", b"250 2.0.0 Ok\r\n", ehlo=ehlo)
    envelope = client.envelope("a@example.org", {}, RCPTS[:1], data=True)
    assert sock.writes == [b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\n"]
    assert not envelope.ready and envelope.data_error is None
    [final] = client.send_content([b"Subject: x\r\n\r\n", b".dot\r\n"])
    assert final.reply.code == 250
    assert sock.writes[-1] == b"BDAT 20 LAST\r\nSubject: x\r\n\r\n.dot\r\n"


def test_big_content_goes_in_bounded_writes_with_the_end_marker_in_the_last():
    client, sock = session(b"250 Ok\r\n250 Ok\r\n354 Go\r\n", b"250 2.0.0 Ok\r\n")
    assert client.envelope("a@example.org", {}, RCPTS[:1], data=True).ready
    line = b"x" * 998 + b"\r\n"
    piece = line * 16                       # 16,000 bytes per piece read from the spool
    pieces = [b"Subject: big\r\n\r\n"] + [piece] * 40
    client.send_content(iter(pieces))
    content = sock.writes[1:]
    assert b"".join(content) == b"".join(pieces) + b".\r\n"
    # Four pieces per write (64,000 bytes <= CONTENT_PIECE): ten writes, none bigger.
    assert len(content) == 10 and all(len(w) <= CONTENT_PIECE for w in content)
    assert content[-1].endswith(b"\r\n.\r\n") and not content[-2].endswith(b".\r\n")


def test_lmtp_pipelined_data_gets_one_final_reply_per_accepted_recipient():
    lhlo = b"250-lmtp.test\r\n250 PIPELINING\r\n"
    client, sock = session(b"250 Ok\r\n250 Ok\r\n550 No\r\n354 Go\r\n",
                           b"250 2.0.0 <b@example.test> Saved\r\n", ehlo=lhlo, lmtp=True)
    envelope = client.envelope("a@example.org", {}, RCPTS, data=True)
    assert sock.writes == [b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\n"
                           b"RCPT TO:<c@example.test>\r\nDATA\r\n"]
    assert envelope.ready
    [final] = client.send_content([b"Subject: x\r\n\r\nHi\r\n"])
    assert (final.command.recipient, final.reply.code) == ("b@example.test", 250)


def test_lmtp_data_accepted_without_recipients_is_ended_and_the_session_closed():
    # RFC 2033 §4.2 owes no reply to the dot then; the session cannot be trusted.
    lhlo = b"250-lmtp.test\r\n250 PIPELINING\r\n"
    client, sock = session(b"250 Ok\r\n550 No\r\n550 No\r\n354 Go\r\n", ehlo=lhlo, lmtp=True)
    envelope = client.envelope("a@example.org", {}, RCPTS, data=True)
    assert not envelope.ready and envelope.data_error is not None
    assert sock.writes[1:] == [b".\r\n"] and not client.usable and sock.closed


def test_a_reply_that_does_not_come_in_time_breaks_the_session():
    class Silent(ScriptedSocket):
        def recv(self, size):
            if self.script:
                return self.script.pop(0)
            raise TimeoutError("timed out")

    sock = Silent(b"220 sink.test\r\n")
    client = SMTPClient(sock, ClientConnection(), peer="sink", command_timeout=5,
                        submission_timeout=5)
    client.read_greeting()
    assert 0 < sock.timeout <= 5     # the socket waits no longer than the deadline
    with pytest.raises(ConnectionFailed) as failed:
        client.hello("gmta.test")
    assert "Timed out" in failed.value.text and not client.usable
    assert isinstance(failed.value, SMTPError)
