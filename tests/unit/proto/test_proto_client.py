"""The client machine against the server machine, in memory (h11's ConnectionPair).

Every byte the client produces goes through the real ServerConnection and every
reply the server produces goes back through the client's parser, so both sides
check each other; no sockets.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gmta.errors import SMTPError
from gmta.proto import (CLOSED, NEED_DATA, Auth, BodyChunk, Ehlo, MessageEnd, Rcpt,
                        ServerConnection, StartTLS)
from gmta.proto.client import (ClientConnection, ClientState, LocalProtocolError,
                               RemoteProtocolError, Response)
from gmta.proto.framing import DataDecoder, DataEncoder


class Pair:
    """A client machine wired to a server machine.

    ``decide(event)`` returns None to accept, an SMTPError to reject, or for an
    LMTP MessageEnd a list of per-recipient results.
    """

    def __init__(self, *, lmtp: bool = False, decide=None, **server_options):
        self.client = ClientConnection(lmtp=lmtp)
        self.server = ServerConnection("mx.example.org", lmtp=lmtp, **server_options)
        self.decide = decide or (lambda event: None)
        self.events = []
        self.pump()

    def pump(self, data: bytes = b"") -> None:
        """Hand *data* to the server, play its driver, give its output to the client."""
        self.server.receive_data(data)
        while True:
            event = self.server.next_event()
            if event is NEED_DATA or event is CLOSED:
                break
            self.events.append(event)
            if event.needs_answer:
                answer = self.decide(event)
                if isinstance(answer, list):
                    self.server.reply_per_recipient(answer)
                elif answer is None:
                    self.server.accept()
                else:
                    self.server.reject(answer)
            if isinstance(event, StartTLS):
                self.client.receive_data(self.server.data_to_send())
                self.server.tls_established()
                continue
        self.client.receive_data(self.server.data_to_send())

    def responses(self) -> list[Response]:
        found = []
        while (event := self.client.next_event()) is not NEED_DATA:
            found.append(event)
        return found

    def send(self, data: bytes) -> list[Response]:
        self.pump(data)
        return self.responses()

    def codes(self, data: bytes) -> list[int]:
        return [r.reply.code for r in self.send(data)]

    def body(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, BodyChunk))


def greeted(**options) -> Pair:
    pair = Pair(**options)
    [greeting] = pair.responses()
    assert greeting.command.verb == "GREETING" and greeting.reply.code == 220
    assert pair.codes(pair.client.ehlo("client.example.org")) == [250]
    return pair


def test_ehlo_capabilities_are_parsed():
    pair = greeted(auth_mechanisms=("PLAIN", "LOGIN"), auth_requires_tls=False)
    client = pair.client
    assert client.state is ClientState.READY and client.esmtp
    for keyword in ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING", "SMTPUTF8"):
        assert client.supports(keyword)
    assert client.auth_mechanisms == {"PLAIN", "LOGIN"}
    assert client.max_message_size == 32 * 1024 * 1024
    assert not client.supports("STARTTLS")


def test_pipelined_envelope_and_data_with_dot_stuffing():
    pair = greeted()
    client = pair.client
    data = (client.mail("a@example.com", {"SIZE": "100"}) + client.rcpt("b@example.net")
            + client.rcpt("c@example.net"))
    responses = pair.send(data)
    assert [(r.command.verb, r.reply.code) for r in responses] == [
        ("MAIL", 250), ("RCPT", 250), ("RCPT", 250)]
    assert responses[1].command.recipient == "b@example.net"
    assert pair.codes(client.data()) == [354]
    content = b"Subject: x\r\n\r\n.starts with a dot\nbare LF line\r\n..two\r\n."
    wire = client.data_content(content[:20]) + client.data_content(content[20:])
    wire += client.data_end()
    [done] = pair.send(wire)
    assert done.command.verb == "." and done.reply.code == 250
    assert pair.body() == (b"Subject: x\r\n\r\n.starts with a dot\r\nbare LF line\r\n..two\r\n"
                           b".\r\n")
    assert client.state is ClientState.READY


def test_bdat_when_chunking_is_offered():
    pair = greeted()
    client = pair.client
    pair.send(client.mail("a@example.com") + client.rcpt("b@example.net"))
    encoder = DataEncoder(dot_stuffing=False)
    first = encoder.encode(b"Subject: chunks\n\n.dot stays single\n")
    assert pair.codes(client.bdat(first, last=False)) == [250]
    [final] = pair.send(client.bdat(encoder.encode(b"end") + encoder.finish(), last=True))
    assert final.reply.code == 250 and client.state is ClientState.READY
    assert pair.body() == b"Subject: chunks\r\n\r\n.dot stays single\r\nend\r\n"


def test_helo_fallback_when_ehlo_is_refused():
    refuse_ehlo = lambda e: SMTPError(502, (5, 5, 1), "no ESMTP") if isinstance(e, Ehlo) else None  # noqa: E731
    pair = Pair(decide=refuse_ehlo)
    pair.responses()
    assert pair.codes(pair.client.ehlo("c.example")) == [502]
    assert pair.client.state is ClientState.NEED_HELLO
    assert pair.codes(pair.client.helo("c.example")) == [250]
    assert pair.client.state is ClientState.READY and not pair.client.esmtp
    assert pair.client.capabilities == {}
    with pytest.raises(LocalProtocolError):
        pair.client.mail("a@example.com", {"SIZE": "1"})   # no ESMTP parameters after HELO


def test_lmtp_one_reply_per_accepted_recipient():
    def decide(event):
        if isinstance(event, Rcpt) and event.address == "nobody@example.net":
            return SMTPError(550, (5, 1, 1), "No such user")
        if isinstance(event, MessageEnd):
            return [None, SMTPError(452, (4, 2, 2), "Mailbox full")]
        return None
    pair = greeted(lmtp=True, decide=decide)
    client = pair.client
    responses = pair.send(client.mail("a@example.com") + client.rcpt("b@example.net")
                          + client.rcpt("nobody@example.net") + client.rcpt("c@example.net"))
    assert [r.reply.code for r in responses] == [250, 250, 550, 250]
    assert client.accepted_recipients == ["b@example.net", "c@example.net"]
    pair.send(client.data())
    finals = pair.send(client.data_content(b"Subject: hi\r\n\r\nbody\r\n") + client.data_end())
    assert [(r.command.recipient, r.reply.code) for r in finals] == [
        ("b@example.net", 250), ("c@example.net", 452)]
    assert finals[1].reply.enhanced == (4, 2, 2) and finals[1].reply.text == "Mailbox full"
    assert client.state is ClientState.READY


def test_lmtp_bdat_last_gets_per_recipient_replies():
    pair = greeted(lmtp=True, decide=lambda e: [None, None] if isinstance(e, MessageEnd) else None)
    client = pair.client
    pair.send(client.mail("a@example.com") + client.rcpt("b@example.net")
              + client.rcpt("c@example.net"))
    finals = pair.send(client.bdat(b"Subject: x\r\n\r\nhi\r\n", last=True))
    assert [(r.command.recipient, r.reply.code) for r in finals] == [
        ("b@example.net", 250), ("c@example.net", 250)]


def test_refused_mail_ends_the_transaction_after_the_pipelined_rcpts():
    pair = greeted(decide=lambda e: SMTPError(550, (5, 1, 2), "Hey") if type(e).__name__ == "Mail"
                   else None)
    client = pair.client
    responses = pair.send(client.mail("a@example.com") + client.rcpt("b@example.net"))
    assert [r.reply.code for r in responses] == [550, 503]
    assert str(responses[0].reply) == "550 5.1.2 Hey"
    assert client.state is ClientState.READY
    client.mail("a@example.com")   # a new transaction may start


def test_auth_plain_sends_the_credentials_in_the_initial_response():
    pair = greeted(auth_mechanisms=("PLAIN",), auth_requires_tls=False)
    command = pair.client.auth("PLAIN", "alice", "s3cret")
    assert command == b"AUTH PLAIN " + base64.b64encode(b"\0alice\0s3cret") + b"\r\n"
    [response] = pair.send(command)
    assert response.reply.code == 235 and pair.client.authenticated
    assert "s3cret" not in response.command.text
    [auth] = [e for e in pair.events if isinstance(e, Auth)]
    assert (auth.mechanism, auth.username, auth.password) == ("PLAIN", "alice", "s3cret")


def test_auth_login_answers_both_prompts():
    pair = greeted(auth_mechanisms=("PLAIN", "LOGIN"), auth_requires_tls=False)
    client = pair.client
    assert pair.codes(client.auth("LOGIN", "bob", "pw")) == [334]
    assert client.state is ClientState.AUTH
    assert pair.codes(client.auth_continue()) == [334]
    assert pair.codes(client.auth_continue()) == [235]
    assert client.authenticated and client.state is ClientState.READY
    [auth] = [e for e in pair.events if isinstance(e, Auth)]
    assert (auth.username, auth.password) == ("bob", "pw")


def test_auth_external_has_an_empty_initial_response():
    client = ClientConnection()
    client.receive_data(b"220 hi\r\n")
    client.next_event()
    client.ehlo("c")
    client.receive_data(b"250-hi\r\n250 AUTH=EXTERNAL PLAIN\r\n")
    client.next_event()
    assert client.auth_mechanisms == {"EXTERNAL", "PLAIN"}
    assert client.auth("EXTERNAL") == b"AUTH EXTERNAL =\r\n"


def test_starttls_discards_plaintext_after_the_220():
    client = ClientConnection()
    client.receive_data(b"220 hi\r\n")
    client.next_event()
    client.ehlo("c")
    client.receive_data(b"250-hi\r\n250 STARTTLS\r\n")
    client.next_event()
    client.starttls()
    # A man in the middle appends a forged reply to the 220 (CVE-2011-1575 style).
    client.receive_data(b"220 2.0.0 go ahead\r\n250-forged\r\n250 AUTH PLAIN\r\n")
    response = client.next_event()
    assert response.reply.code == 220 and client.state is ClientState.TLS_PENDING
    assert client.next_event() is NEED_DATA
    assert client.discarded_after_starttls == len(b"250-forged\r\n250 AUTH PLAIN\r\n")
    client.tls_established()
    assert client.state is ClientState.NEED_HELLO and client.capabilities == {}
    assert client.tls_active


def test_starttls_against_the_server_machine():
    pair = greeted(tls_available=True)
    assert pair.client.supports("STARTTLS")
    assert pair.codes(pair.client.starttls()) == [220]
    pair.client.tls_established()
    assert pair.codes(pair.client.ehlo("c")) == [250]
    assert pair.client.supports("REQUIRETLS") and not pair.client.supports("STARTTLS")


def test_421_closes_the_session():
    client = ClientConnection()
    client.receive_data(b"220 hi\r\n")
    client.next_event()
    client.ehlo("c")
    client.receive_data(b"421 4.3.2 shutting down\r\n")
    assert client.next_event().reply.code == 421
    assert client.state is ClientState.CLOSED
    with pytest.raises(LocalProtocolError):
        client.noop()


def test_reply_line_length_is_bounded():
    client = ClientConnection(max_line_length=600)
    client.receive_data(b"220 " + b"x" * 700)
    with pytest.raises(RemoteProtocolError):
        client.next_event()
    assert client.state is ClientState.CLOSED


def test_reply_line_count_is_bounded():
    client = ClientConnection(max_reply_lines=10)
    client.receive_data(b"220-hi\r\n" * 11)
    with pytest.raises(RemoteProtocolError) as raised:
        client.next_event()
    assert raised.value.code == 451 and raised.value.temporary


def test_malformed_and_unsolicited_replies_are_remote_errors():
    client = ClientConnection()
    client.receive_data(b"hello there\r\n")
    with pytest.raises(RemoteProtocolError):
        client.next_event()
    client = ClientConnection()
    client.receive_data(b"220 hi\r\n250 nobody asked\r\n")
    client.next_event()
    with pytest.raises(RemoteProtocolError):
        client.next_event()


def test_commands_out_of_order_are_local_errors():
    client = ClientConnection()
    with pytest.raises(LocalProtocolError):
        client.ehlo("c")   # before the greeting
    client.receive_data(b"220 hi\r\n")
    client.next_event()
    client.ehlo("c")
    with pytest.raises(LocalProtocolError):
        client.mail("a@b.example")   # EHLO's reply is outstanding
    client.receive_data(b"250 hi\r\n")   # no PIPELINING offered
    client.next_event()
    with pytest.raises(LocalProtocolError):
        client.rcpt("a@b.example")
    client.mail("a@b.example")
    with pytest.raises(LocalProtocolError):
        client.rcpt("b@c.example")   # no PIPELINING: wait for MAIL's reply


def test_command_injection_is_refused():
    pair = greeted()
    with pytest.raises(LocalProtocolError):
        pair.client.mail("a@example.com>\r\nRCPT TO:<victim@example.net")
    with pytest.raises(LocalProtocolError):
        pair.client.mail("jörg@example.com")   # non-ASCII needs SMTPUTF8
    assert pair.client.mail("jörg@example.com", {"SMTPUTF8": None}).startswith(
        "MAIL FROM:<jörg@example.com> SMTPUTF8".encode())


def test_utf8_transaction_reaches_the_server():
    pair = greeted()
    client = pair.client
    responses = pair.send(client.mail("jörg@exämple.com", {"SMTPUTF8": None})
                          + client.rcpt("zoë@exämple.net"))
    assert [r.reply.code for r in responses] == [250, 250]
    mail = [e for e in pair.events if type(e).__name__ == "Mail"][0]
    assert mail.smtputf8 and mail.address == "jörg@exämple.com"


# --- The content encoder against the server's decoder. -----------------------------

def roundtrip(content: bytes, cuts: list[int]) -> bytes:
    encoder = DataEncoder()
    wire = bytearray()
    start = 0
    for cut in sorted(set(cuts)) + [len(content)]:
        wire += encoder.encode(content[start:cut])
        start = cut
    wire += encoder.finish()
    decoder = DataDecoder(max_line_length=1 << 20)
    decoded, consumed = decoder.decode(bytes(wire))
    assert decoder.finished and consumed == len(wire)
    return decoded


def crlf(content: bytes) -> bytes:
    """What the wire should carry: bare LFs as CRLF, and a final line end."""
    normal = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return normal if normal.endswith(b"\r\n") or not normal else normal + b"\r\n"


@pytest.mark.parametrize("content", [
    b"", b".", b"..", b"a\r\n.\r\nb", b"\r\n.\r\n", b"x\r", b"x\r\r\n.y", b".\n.\n", b"a\rb\n.c"])
def test_encoder_cases(content):
    for cut in range(len(content) + 1):
        assert roundtrip(content, [cut]) == crlf(content), (content, cut)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60).map(lambda b: b.replace(b"\0", b".")),
       st.lists(st.integers(0, 60), max_size=5))
def test_encoder_roundtrips_any_content(content, cuts):
    assert roundtrip(content, cuts) == crlf(content)
