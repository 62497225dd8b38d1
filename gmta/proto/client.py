"""The SMTP/LMTP client protocol machine, without any I/O (the h11 model).

The mirror image of ``gmta.proto.server``: the driver asks the machine for the bytes
of a command (``conn.mail(...)`` returns them), writes them, feeds what it reads to
``receive_data()`` and takes replies from ``next_event()``. Each reply comes back as a
:class:`Response` naming the command it answers, because with PIPELINING (RFC 2920)
several commands are in flight and the replies arrive in the order the commands were
sent (§3.1). The machine learns from the replies: the capabilities from EHLO/LHLO,
which recipients were accepted, and so how many replies an LMTP server owes after
the data (RFC 2033 §4.2: one per accepted recipient).

How a driver uses it::

    conn = ClientConnection(lmtp=False)
    reply = read_reply()                            # the greeting
    sock.sendall(conn.ehlo("client.example.org"))
    reply = read_reply()                            # conn.capabilities is now known
    sock.sendall(conn.mail("a@example.org", {"SIZE": "1234"}))
    sock.sendall(conn.rcpt("b@example.net"))        # pipelined when PIPELINING is offered
    mail_reply, rcpt_reply = read_reply(), read_reply()
    sock.sendall(conn.data())
    if read_reply().code == 354:
        for piece in message:
            sock.sendall(conn.data_content(piece))
        sock.sendall(conn.data_end())
        read_reply()                                # LMTP: one read per accepted RCPT

where ``read_reply()`` loops ``next_event()``, feeding ``receive_data(sock.recv())``
while it returns ``NEED_DATA``. After a 220 to STARTTLS the machine is in
``TLS_PENDING``: do the handshake and call ``tls_established()``, then greet again.

Limits: a reply line longer than ``max_line_length`` or a reply of more than
``max_reply_lines`` lines is a :class:`RemoteProtocolError`, so a hostile server cannot
make the client buffer without bound.
"""

from __future__ import annotations

import base64
import enum
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from gmta.errors import GmtaError, SMTPError
from gmta.proto.events import NEED_DATA
from gmta.proto.framing import DataEncoder
from gmta.proto.replies import Reply, ReplyParser

# RFC 5321 §4.5.3.1.5 makes 512 octets the minimum a reply line may be; servers send
# longer EHLO lines in practice, so allow a good deal more.
DEFAULT_MAX_LINE_LENGTH = 4096
# An EHLO answer has one line per extension; a few dozen is already a lot.
DEFAULT_MAX_REPLY_LINES = 100


class LocalProtocolError(GmtaError):
    """The driver asked for a command the protocol does not allow now (a gmta bug)."""


class RemoteProtocolError(SMTPError):
    """The server sent something that is not SMTP; the connection is unusable.

    It is an SMTPError (451 4.5.0) so it can travel as a temporary delivery failure.
    """

    def __init__(self, text: str):
        super().__init__(451, (4, 5, 0), text)


class ClientState(enum.Enum):
    GREETING = "greeting"          # waiting for the 220 banner
    NEED_HELLO = "need-hello"      # banner received, no EHLO/HELO/LHLO accepted yet
    READY = "ready"                # greeted, no mail transaction
    TRANSACTION = "transaction"    # MAIL sent (RCPTs may follow)
    DATA = "data"                  # 354 received: content is being sent
    TLS_PENDING = "tls-pending"    # 220 to STARTTLS: the driver does the handshake
    AUTH = "auth"                  # a SASL exchange is under way (334 received)
    CLOSED = "closed"


@dataclass(frozen=True)
class Command:
    """A command that was sent; ``text`` is safe to log (AUTH secrets are hidden)."""

    verb: str
    text: str = ""
    recipient: str | None = None   # RCPT's address; for LMTP end-of-data replies too


@dataclass(frozen=True)
class Response:
    """A complete reply and the command it answers (``GREETING`` for the banner)."""

    command: Command
    reply: Reply

    @property
    def ok(self) -> bool:
        return self.reply.code < 400


GREETING = Command("GREETING")


@dataclass
class _Transaction:
    smtputf8: bool = False
    mail_accepted: bool | None = None     # None until MAIL's reply arrives
    sent_rcpts: int = 0
    accepted: list[str] = field(default_factory=list)   # in RCPT order
    data_started: bool = False
    chunking: bool = False


# Commands that may be sent while replies to earlier ones are outstanding when the
# server offers PIPELINING (RFC 2920 §3.1: only the last command of a group may be
# one of EHLO, DATA, VRFY, EXPN, TURN, QUIT, NOOP; we also wait after AUTH and
# STARTTLS, RFC 4954 §4 and RFC 3207 §4.2).
_PIPELINABLE = frozenset({"MAIL", "RCPT", "RSET", "DATA", "QUIT"})


class ClientConnection:
    """One client session of SMTP or LMTP (``lmtp=True``)."""

    def __init__(self, *, lmtp: bool = False,
                 max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
                 max_reply_lines: int = DEFAULT_MAX_REPLY_LINES):
        self.lmtp = lmtp
        self.max_line_length = max_line_length
        self.max_reply_lines = max_reply_lines
        self.state = ClientState.GREETING
        #: EHLO/LHLO keywords (upper case) and their parameters.
        self.capabilities: dict[str, list[str]] = {}
        self.esmtp = False
        self.tls_active = False
        self.authenticated = False
        #: Plaintext the server sent after its 220 to STARTTLS, thrown away.
        self.discarded_after_starttls = 0
        self._input = bytearray()
        self._parser = ReplyParser()
        self._lines_in_reply = 0
        self._awaiting: deque[Command] = deque([GREETING])
        self._transaction: _Transaction | None = None
        self._encoder: DataEncoder | None = None
        self._sasl_mechanism: str | None = None
        self._sasl_steps: deque[str] = deque()

    # --- What the server offers. ----------------------------------------------------

    def supports(self, keyword: str) -> bool:
        return keyword.upper() in self.capabilities

    @property
    def auth_mechanisms(self) -> frozenset[str]:
        return frozenset(m.upper() for m in self.capabilities.get("AUTH", ()))

    @property
    def max_message_size(self) -> int | None:
        """RFC 1870 §4: SIZE's parameter, or None when unknown or 0 (no limit)."""
        values = self.capabilities.get("SIZE") or []
        if values and values[0].isdigit() and int(values[0]) > 0:
            return int(values[0])
        return None

    @property
    def pipelining(self) -> bool:
        return self.supports("PIPELINING")

    @property
    def awaiting_replies(self) -> int:
        return len(self._awaiting)

    @property
    def awaiting(self) -> tuple[Command, ...]:
        """The commands sent whose replies have not arrived, oldest first."""
        return tuple(self._awaiting)

    @property
    def accepted_recipients(self) -> list[str]:
        return list(self._transaction.accepted) if self._transaction else []

    # --- Input. -------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.state in (ClientState.TLS_PENDING, ClientState.CLOSED):
            # RFC 3207 §4.2 for the client: nothing the server sent in the clear after
            # its 220 may be taken as a TLS-protected reply (CVE-2011-1575 style).
            if self.state is ClientState.TLS_PENDING:
                self.discarded_after_starttls += len(data)
            return
        self._input += data

    def next_event(self) -> Response | object:
        """The next complete reply as a :class:`Response`, or ``NEED_DATA``."""
        while True:
            line = self._read_line()
            if line is None:
                return NEED_DATA
            if not self._awaiting:
                self._fail("reply from the server to no command")
            self._lines_in_reply += 1
            if self._lines_in_reply > self.max_reply_lines:
                self._fail(f"reply longer than {self.max_reply_lines} lines")
            try:
                reply = self._parser.feed_line(line)
            except SMTPError as error:
                self._fail(error.text)
            if reply is None:
                continue
            self._lines_in_reply = 0
            command = self._awaiting.popleft()
            self._on_reply(command, reply)
            return Response(command, reply)

    def _read_line(self) -> bytes | None:
        end = self._input.find(b"\n")
        if end == -1:
            if len(self._input) > self.max_line_length:
                self._fail(f"reply line longer than {self.max_line_length} bytes")
            return None
        if end > self.max_line_length:
            self._fail(f"reply line longer than {self.max_line_length} bytes")
        # Be liberal in what we accept from servers (RFC 1123 §1.2.2): a bare LF ends
        # a reply line too; a reply is not content, so no smuggling concern here.
        line = bytes(self._input[:end]).removesuffix(b"\r")
        del self._input[:end + 1]
        return line

    def _fail(self, text: str) -> None:
        self.state = ClientState.CLOSED
        self._input.clear()
        raise RemoteProtocolError(f"Protocol error from the server: {text}")

    # --- Reactions to replies (every state change driven by the server). ----------

    def _on_reply(self, command: Command, reply: Reply) -> None:
        code = reply.code
        if code == 421 and command.verb != "QUIT":
            # RFC 5321 §3.8: 421 means the server is closing the channel.
            self._awaiting.clear()
            self._transaction = None
            self.state = ClientState.CLOSED
            return
        verb = command.verb
        if verb == "GREETING":
            self.state = ClientState.NEED_HELLO if code == 220 else ClientState.CLOSED
        elif verb in ("EHLO", "LHLO", "HELO"):
            if code == 250:
                self.esmtp = verb != "HELO"
                self.capabilities = _parse_capabilities(reply) if self.esmtp else {}
                self.state = ClientState.READY
        elif verb == "STARTTLS":
            if code == 220:
                self.state = ClientState.TLS_PENDING
                self.discarded_after_starttls = len(self._input)
                self._input.clear()
        elif verb == "AUTH":
            self._on_auth_reply(reply)
        elif verb == "MAIL":
            if self._transaction is not None:
                self._transaction.mail_accepted = code == 250
                self._end_failed_transaction()
        elif verb == "RCPT":
            if self._transaction is not None and code in (250, 251):
                self._transaction.accepted.append(command.recipient)
            self._end_failed_transaction()
        elif verb == "DATA":
            if code == 354:
                self.state = ClientState.DATA
                self._encoder = DataEncoder(dot_stuffing=True)
            else:
                self._end_transaction()
        elif verb in (".", "BDAT"):
            if verb == "BDAT" and "LAST" not in command.text and code < 400:
                return  # a chunk accepted; the message goes on (RFC 3030 §2)
            # The transaction ends with the last of its end-of-data replies.
            if not any(c.verb in (".", "BDAT") for c in self._awaiting):
                self._end_transaction()
        elif verb == "RSET":
            self._end_transaction()
        elif verb == "QUIT":
            self.state = ClientState.CLOSED

    def _on_auth_reply(self, reply: Reply) -> None:
        if reply.code == 334 and self._sasl_steps:
            self.state = ClientState.AUTH
            return
        self.state = ClientState.READY
        self._sasl_steps.clear()
        self.authenticated = reply.code == 235

    def _end_failed_transaction(self) -> None:
        # A refused MAIL leaves no transaction (RFC 5321 §4.1.1.2) once the replies to
        # the RCPTs pipelined behind it (all refused with 503) are in.
        transaction = self._transaction
        if transaction is not None and transaction.mail_accepted is False and not any(
                c.verb in ("RCPT", "DATA") for c in self._awaiting):
            self._end_transaction()

    def _end_transaction(self) -> None:
        self._transaction = None
        self._encoder = None
        if self.state not in (ClientState.CLOSED, ClientState.NEED_HELLO):
            self.state = ClientState.READY

    # --- Output: one method per command, returning its bytes. ---------------------

    def _command(self, command: Command, line: str, *, utf8: bool = False) -> bytes:
        if self.state is ClientState.CLOSED:
            raise LocalProtocolError("the session is closed")
        if self._awaiting and not (self.pipelining and command.verb in _PIPELINABLE
                                   and all(c.verb in _PIPELINABLE for c in self._awaiting)):
            raise LocalProtocolError(
                f"{command.verb} sent while {self._awaiting[0].verb} awaits its reply")
        if "\r" in line or "\n" in line or "\0" in line:
            # A CR or LF inside an argument would let its author add commands.
            raise LocalProtocolError(f"{command.verb}: CR, LF or NUL in the command line")
        self._awaiting.append(command)
        return (line + "\r\n").encode("utf-8" if utf8 else "ascii")

    def _require(self, *states: ClientState, what: str) -> None:
        if self.state not in states:
            raise LocalProtocolError(f"{what} in state {self.state.value}")

    def ehlo(self, name: str) -> bytes:
        self._require(ClientState.NEED_HELLO, ClientState.READY, what="EHLO")
        verb = "LHLO" if self.lmtp else "EHLO"
        return self._command(Command(verb, f"{verb} {name}"), f"{verb} {name}")

    def helo(self, name: str) -> bytes:
        """RFC 5321 §3.2: the fallback for a server that refuses EHLO (not for LMTP)."""
        if self.lmtp:
            raise LocalProtocolError("LMTP has no HELO (RFC 2033 §4.1)")
        self._require(ClientState.NEED_HELLO, ClientState.READY, what="HELO")
        return self._command(Command("HELO", f"HELO {name}"), f"HELO {name}")

    def starttls(self) -> bytes:
        self._require(ClientState.READY, what="STARTTLS")
        if self.tls_active:
            raise LocalProtocolError("TLS is already active")
        return self._command(Command("STARTTLS", "STARTTLS"), "STARTTLS")

    def tls_established(self) -> None:
        """The handshake succeeded: RFC 3207 §4.2 makes the client forget what it
        learnt (the capabilities) and greet again."""
        self._require(ClientState.TLS_PENDING, what="tls_established()")
        self.tls_active = True
        self.capabilities = {}
        self.esmtp = False
        self.state = ClientState.NEED_HELLO

    def auth(self, mechanism: str, username: str = "", password: str = "",
             authorization_id: str = "") -> bytes:
        """Start AUTH (RFC 4954) with PLAIN (RFC 4616), LOGIN or EXTERNAL (RFC 4422 App. A).

        PLAIN and EXTERNAL go in the initial response, so they cost one round trip;
        LOGIN answers two 334 prompts: send ``auth_continue()`` after each.
        """
        self._require(ClientState.READY, what="AUTH")
        mechanism = mechanism.upper()
        if mechanism == "PLAIN":
            secret = f"{authorization_id}\0{username}\0{password}".encode("utf-8")
            line = f"AUTH PLAIN {base64.b64encode(secret).decode('ascii')}"
        elif mechanism == "EXTERNAL":
            # RFC 4954 §4: "=" is an empty initial response (authorize as the
            # identity the certificate proves).
            initial = base64.b64encode(authorization_id.encode("utf-8")).decode("ascii") or "="
            line = f"AUTH EXTERNAL {initial}"
        elif mechanism == "LOGIN":
            line = "AUTH LOGIN"
            self._sasl_steps = deque(
                base64.b64encode(s.encode("utf-8")).decode("ascii") for s in (username, password))
        else:
            raise LocalProtocolError(f"unsupported AUTH mechanism {mechanism}")
        self._sasl_mechanism = mechanism
        return self._command(Command("AUTH", f"AUTH {mechanism} <hidden>"), line)

    def auth_continue(self) -> bytes:
        """The next response to a 334 challenge (LOGIN: username, then password)."""
        self._require(ClientState.AUTH, what="a SASL response")
        step = self._sasl_steps.popleft()
        self.state = ClientState.READY
        return self._command(Command("AUTH", "<hidden SASL response>"), step)

    def mail(self, address: str, params: Mapping[str, str | None] | None = None) -> bytes:
        """MAIL FROM:<address> with ESMTP parameters (``None`` value = bare keyword)."""
        self._require(ClientState.READY, what="MAIL")
        params = dict(params or {})
        smtputf8 = "SMTPUTF8" in params
        if not self.esmtp and params:
            raise LocalProtocolError("ESMTP parameters after HELO")
        if not address.isascii() and not smtputf8:
            # RFC 6531 §3.4: non-ASCII addresses only inside an SMTPUTF8 transaction.
            raise LocalProtocolError("non-ASCII sender without SMTPUTF8")
        line = f"MAIL FROM:<{address}>{_format_params(params)}"
        data = self._command(Command("MAIL", line), line, utf8=smtputf8)
        self._transaction = _Transaction(smtputf8=smtputf8)
        self.state = ClientState.TRANSACTION
        return data

    def rcpt(self, address: str, params: Mapping[str, str | None] | None = None) -> bytes:
        self._require(ClientState.TRANSACTION, what="RCPT")
        transaction = self._transaction
        if transaction.data_started:
            raise LocalProtocolError("RCPT after DATA or BDAT")
        if not address.isascii() and not transaction.smtputf8:
            raise LocalProtocolError("non-ASCII recipient without SMTPUTF8")
        params = dict(params or {})
        line = f"RCPT TO:<{address}>{_format_params(params)}"
        data = self._command(Command("RCPT", line, address), line, utf8=transaction.smtputf8)
        transaction.sent_rcpts += 1
        return data

    def data(self) -> bytes:
        self._require(ClientState.TRANSACTION, what="DATA")
        data = self._command(Command("DATA", "DATA"), "DATA")
        self._transaction.data_started = True
        return data

    def data_content(self, content: bytes) -> bytes:
        """Message content after the 354, dot-stuffed and with CRLF line ends."""
        self._require(ClientState.DATA, what="message content")
        return self._encoder.encode(content)

    def data_end(self) -> bytes:
        """The rest of the content and the end marker; then the replies are owed:
        one, or for LMTP one per accepted recipient (RFC 2033 §4.2)."""
        self._require(ClientState.DATA, what="the end of data")
        tail = self._encoder.finish()
        self._encoder = None
        self._expect_final_replies(".", ".")
        self.state = ClientState.TRANSACTION
        return tail

    def bdat(self, chunk: bytes, *, last: bool) -> bytes:
        """``BDAT size [LAST]`` and the chunk (RFC 3030 §2); the chunk is sent as is,
        so the driver gives content already normalised to CRLF (``DataEncoder``
        with ``dot_stuffing=False``)."""
        self._require(ClientState.TRANSACTION, what="BDAT")
        if not self.supports("CHUNKING"):
            raise LocalProtocolError("BDAT to a server that does not offer CHUNKING")
        transaction = self._transaction
        transaction.data_started = transaction.chunking = True
        header = f"BDAT {len(chunk)}" + (" LAST" if last else "")
        if self._awaiting:
            raise LocalProtocolError(f"BDAT sent while {self._awaiting[0].verb} awaits its reply")
        if last:
            self._expect_final_replies("BDAT", header)
        else:
            self._awaiting.append(Command("BDAT", header))
        return header.encode("ascii") + b"\r\n" + chunk

    def _expect_final_replies(self, verb: str, text: str) -> None:
        if self.lmtp:
            # RFC 2033 §4.2: one reply per recipient whose RCPT was accepted, in order.
            for address in self._transaction.accepted:
                self._awaiting.append(Command(verb, text, address))
        else:
            self._awaiting.append(Command(verb, text))

    def rset(self) -> bytes:
        self._require(ClientState.READY, ClientState.TRANSACTION, what="RSET")
        return self._command(Command("RSET", "RSET"), "RSET")

    def noop(self) -> bytes:
        self._require(ClientState.NEED_HELLO, ClientState.READY, ClientState.TRANSACTION,
                      what="NOOP")
        return self._command(Command("NOOP", "NOOP"), "NOOP")

    def quit(self) -> bytes:
        return self._command(Command("QUIT", "QUIT"), "QUIT")


def _parse_capabilities(reply: Reply) -> dict[str, list[str]]:
    """RFC 5321 §4.1.1.1: the lines after the first are ``keyword [params]``.

    The old ``AUTH=PLAIN LOGIN`` form (pre-RFC 4954 servers) is read as ``AUTH``.
    """
    capabilities: dict[str, list[str]] = {}
    for line in reply.lines[1:]:
        words = line.split()
        if not words:
            continue
        keyword, params = words[0].upper(), words[1:]
        if keyword.startswith("AUTH="):
            keyword, params = "AUTH", [keyword[5:], *params]
        values = capabilities.setdefault(keyword, [])
        values.extend(p for p in params if p not in values)
    return capabilities


def _format_params(params: Mapping[str, str | None]) -> str:
    return "".join(f" {key}" if value is None else f" {key}={value}"
                   for key, value in params.items())
