"""The SMTP/LMTP server protocol machine, without any I/O (the h11 model).

The driver owns the socket, the clock and TLS; this machine owns the protocol. Every
state transition of a server session lives in this file.

How a driver uses it
--------------------
* ``receive_data(bytes)`` hands over what the socket read.
* ``next_event()`` returns the next event (gmta.proto.events), ``NEED_DATA`` when it
  needs more bytes, or ``CLOSED`` once the session is over (after QUIT or a fatal
  error: flush, then close the socket).
* An event whose ``needs_answer`` is true waits for ``accept()``, ``reject(error)`` or,
  for an LMTP ``MessageEnd``, ``reply_per_recipient(results)``; ``next_event()``
  refuses to go on before. The machine answers every other event itself.
* ``data_to_send()`` returns the bytes to write *now*. RFC 2920 lets a server hold the
  replies to pipelined commands; the machine holds them while the input still has a
  complete command and the last command was pipelinable, so it returns ``b""`` then.
  It always hands over everything when ``next_event()`` has said ``NEED_DATA``.
* After ``StartTLS``, write the 220, do the handshake, then call ``tls_established()``.

A driver loop::

    conn = ServerConnection("mx.example.org", tls_available=True)
    while (event := conn.next_event()) is not CLOSED:
        if event is NEED_DATA:
            sock.sendall(conn.data_to_send())      # before blocking, flush everything
            data = sock.recv(65536)
            if not data:
                break                              # the client hung up
            conn.receive_data(data)
            continue
        match event:
            case Mail() | Rcpt():
                try:
                    endpoint.check(event)
                    conn.accept()
                except SMTPError as error:
                    conn.reject(error)
            case BodyChunk(data=data):
                spool.write(data)
            case MessageEnd(error=None):
                commit_and_answer(conn, spool)     # accept(), reject() or per recipient
            case StartTLS():
                sock.sendall(conn.data_to_send())
                sock = tls.wrap_socket(sock, server_side=True)
                conn.tls_established()
            case _ if event.needs_answer:
                conn.accept()                      # Connected, EHLO, DataStart, Auth...
        sock.sendall(conn.data_to_send())          # b"" while replies are held
    sock.sendall(conn.data_to_send())              # the last words: 221 or 421

Whenever ``in_transaction`` turns false without an accepted ``MessageEnd`` (RSET,
EHLO, a failed message, STARTTLS, a closed session), the driver drops the delivery
it had started.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gmta.errors import GmtaError, SMTPError
from gmta.proto import replies, sasl
from gmta.proto.commands import parse_bdat, parse_mail, parse_rcpt
from gmta.proto.events import (
    CLOSED, NEED_DATA, Auth, BodyChunk, Connected, DataStart, Ehlo, Event, Helo, Help, Lhlo,
    Mail, MessageEnd, Noop, ProtocolError, Quit, Rcpt, Rset, StartTLS, Vrfy)
from gmta.proto.framing import BodyLimits, DataDecoder, LineTooLong
from gmta.proto.replies import Reply

# Body bytes are reported in pieces of at most this size, whatever the driver feeds.
BODY_CHUNK_SIZE = 64 * 1024


class LocalProtocolError(GmtaError):
    """The driver used the machine the wrong way: a bug in gmta, not the client's fault."""


class State(enum.Enum):
    OPENING = "opening"              # the Connected event waits for the driver
    NEED_HELO = "need-helo"          # banner sent, no HELO/EHLO/LHLO accepted yet
    READY = "ready"                  # greeted, no mail transaction
    MAIL = "mail"                    # MAIL accepted, no recipient yet
    RCPT = "rcpt"                    # at least one recipient accepted
    CHUNKING = "chunking"            # between the BDAT chunks of a message
    DATA = "data"                    # reading a DATA body
    BDAT = "bdat"                    # reading the bytes of one BDAT chunk
    AUTH = "auth"                    # reading a SASL response line
    TLS_HANDSHAKE = "tls-handshake"  # 220 sent to STARTTLS; the driver does the handshake
    CLOSED = "closed"


# The states in which a line is a command, in the order a transaction goes through
# them: a command given before its state is "missing" a step, one given after is
# out of place.
_PROGRESS = (State.NEED_HELO, State.READY, State.MAIL, State.RCPT, State.CHUNKING)
_COMMAND_STATES = frozenset(_PROGRESS)
# BDAT belongs after RCPT, and between the chunks of its own message.
_BDAT_STATES = frozenset({State.RCPT, State.CHUNKING})
_MISSING_STEP = {
    State.NEED_HELO: replies.NEED_HELO_FIRST,
    State.READY: replies.MISSING_MAIL,
    State.MAIL: replies.MISSING_RCPT,
}


class _Fatal(Exception):
    """Ends the session after ``reply`` (the client can't be followed any more)."""

    def __init__(self, reply: Reply):
        super().__init__(str(reply))
        self.reply = reply


@dataclass
class _Transaction:
    mail: Mail
    recipients: list[str] = field(default_factory=list)
    limits: BodyLimits | None = None   # set when the body starts


@dataclass
class _Chunk:
    """The BDAT chunk being read (RFC 3030 §2)."""
    size: int
    last: bool
    remaining: int
    # When set, the chunk is read and thrown away, then answered with this error.
    rejection: SMTPError | None = None
    out_of_sequence: bool = False


@dataclass
class _SaslExchange:
    mechanism: str
    username: str | None = None   # LOGIN's first answer


@dataclass(frozen=True)
class _Command:
    handler: Callable[[ServerConnection, str], Event | None]
    states: frozenset[State] = _COMMAND_STATES   # where the command is in sequence
    too_late: Reply | None = None                # reply when given past that point
    # RFC 2920 §3.1: commands after which the client waits, so the reply goes at once.
    last_in_group: bool = False


class ServerConnection:
    """One server session of SMTP, submission or LMTP (``lmtp=True``)."""

    # One per open connection, idle ones included: no per-instance __dict__.
    __slots__ = (
        "hostname", "lmtp", "max_line_length", "max_message_size", "max_header_size",
        "max_recipients", "max_bad_commands", "tls_available", "tls_active",
        "auth_mechanisms", "auth_requires_tls", "submission", "dsn", "state",
        "client_name", "esmtp", "authenticated_as", "_input", "_output", "_flush_due",
        "_pending", "_pending_flushes", "_transaction", "_decoder", "_chunk", "_sasl",
        "_bad_commands")

    def __init__(self, hostname: str, *, lmtp: bool = False,
                 max_line_length: int = 4000,
                 max_message_size: int = 32 * 1024 * 1024,
                 max_header_size: int = 1024 * 1024,
                 max_recipients: int = 20000,
                 max_bad_commands: int = 10,
                 tls_available: bool = False,
                 tls_active: bool = False,
                 auth_mechanisms: Sequence[str] = (),
                 auth_requires_tls: bool = True,
                 submission: bool = False,
                 dsn: bool = True):
        mechanisms = tuple(mechanism.upper() for mechanism in auth_mechanisms)
        if not set(mechanisms) <= set(sasl.MECHANISMS):
            raise ValueError(f"unsupported AUTH mechanisms {mechanisms}")
        if submission and not mechanisms:
            raise ValueError("submission requires AUTH: give auth_mechanisms")
        # A command line needs 512 octets (RFC 5321 §4.5.3.1.4); a limit of 0 would
        # refuse everything.
        if max_line_length < 512 or max_recipients < 1 or max_bad_commands < 1:
            raise ValueError("limits too small for SMTP to work")
        self.hostname = hostname
        self.lmtp = lmtp
        self.max_line_length = max_line_length
        self.max_message_size = max_message_size
        self.max_header_size = max_header_size
        self.max_recipients = max_recipients
        self.max_bad_commands = max_bad_commands
        self.tls_available = tls_available
        self.tls_active = tls_active
        self.auth_mechanisms = mechanisms
        self.auth_requires_tls = auth_requires_tls
        self.submission = submission
        # RFC 3461: advertise DSN (and accept its parameters) only when the
        # endpoint behind the machine can honour NOTIFY, RET and ENVID.
        self.dsn = dsn

        self.state = State.OPENING
        self.client_name: str | None = None      # from HELO/EHLO/LHLO
        self.esmtp = False                      # greeted with EHLO/LHLO rather than HELO
        self.authenticated_as: str | None = None
        self._input = bytearray()
        self._output: list[bytes] = []
        self._flush_due = False
        self._pending: Event | None = None
        self._pending_flushes = False
        self._transaction: _Transaction | None = None
        self._decoder: DataDecoder | None = None
        self._chunk: _Chunk | None = None
        self._sasl: _SaslExchange | None = None   # the AUTH exchange under way
        self._bad_commands = 0

    # --- The driver's side. -------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        return self._transaction is not None

    @property
    def buffered_bytes(self) -> int:
        """Input held back; at most max_line_length + 1 whenever NEED_DATA is returned."""
        return len(self._input)

    def receive_data(self, data: bytes) -> None:
        # RFC 3207 §4.2: nothing sent before the TLS handshake may be acted upon after
        # it; and a closed session reads nothing.
        if self.state in (State.TLS_HANDSHAKE, State.CLOSED):
            return
        self._input += data

    def next_event(self) -> Event | object:
        if self._pending is not None:
            raise LocalProtocolError(f"answer {self._pending!r} before asking for more")
        while True:
            try:
                event = self._STEPS[self.state](self)
            except _Fatal as fatal:
                self._close(fatal.reply)
                return ProtocolError(fatal.reply, fatal=True)
            if event is not None:
                return event

    def data_to_send(self) -> bytes:
        if not self._output:
            return b""
        # RFC 2920 §3.2: replies may wait while more pipelined commands are at hand.
        holding = (not self._flush_due and self.state in _COMMAND_STATES
                   and b"\r\n" in self._input)
        if holding:
            return b""
        output = b"".join(self._output)
        self._output.clear()
        self._flush_due = False
        return output

    def accept(self) -> None:
        """Give the standard positive answer to the event waiting for one."""
        event = self._take_pending()
        self._ON_ACCEPT[type(event)](self, event)

    def reject(self, error: SMTPError) -> None:
        """Answer the event waiting for one with ``error``."""
        event = self._take_pending()
        self._ON_REJECT[type(event)](self, event, error)

    def reply_per_recipient(self, results: Sequence[SMTPError | None]) -> None:
        """LMTP: answer a MessageEnd with one result per accepted recipient, in RCPT
        order (RFC 2033 §4.2); None means delivered."""
        if not (self.lmtp and isinstance(self._pending, MessageEnd)):
            raise LocalProtocolError("reply_per_recipient answers an LMTP MessageEnd only")
        if len(results) != len(self._transaction.recipients):
            raise LocalProtocolError(
                f"{len(results)} results for {len(self._transaction.recipients)} recipients")
        self._take_pending()
        for address, result in zip(self._transaction.recipients, results, strict=True):
            if result is None:
                self._send(replies.lmtp_recipient_ok(address))
            else:
                self._send(Reply.from_error(result))
        self._end_transaction()

    def tls_established(self) -> None:
        """The handshake after STARTTLS succeeded: start over as RFC 3207 §4.2 says."""
        if self.state is not State.TLS_HANDSHAKE:
            raise LocalProtocolError("tls_established() without a STARTTLS")
        self.tls_active = True
        # RFC 3207 §4.2: forget everything learnt from the client before TLS,
        # including the EHLO name and (our choice) any plaintext authentication.
        self.client_name = None
        self.esmtp = False
        self.authenticated_as = None
        self.state = State.NEED_HELO

    # --- Output. --------------------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        # RFC 6531 §3.7.4: UTF-8 in replies only to a client that asked for it.
        utf8 = self._transaction is not None and self._transaction.mail.smtputf8
        self._output.append(reply.to_bytes(utf8=utf8))

    def _await(self, event: Event, *, flush: bool) -> Event:
        self._pending = event
        self._pending_flushes = flush
        return event

    def _take_pending(self) -> Event:
        event = self._pending
        if event is None:
            raise LocalProtocolError("no event is waiting for an answer")
        self._pending = None
        self._flush_due = self._flush_due or self._pending_flushes
        return event

    def _protocol_error(self, reply: Reply, *, flush: bool = False) -> Event:
        """Answer a bad command; too many in a row end the session."""
        self._bad_commands += 1
        if self._bad_commands >= self.max_bad_commands:
            raise _Fatal(replies.TOO_MANY_ERRORS)
        self._send(reply)
        self._flush_due = self._flush_due or flush
        return ProtocolError(reply)

    def _close(self, reply: Reply) -> None:
        self._send(reply)
        self.state = State.CLOSED
        self._input.clear()
        self._transaction = None

    def _end_transaction(self) -> None:
        """RFC 5321 §4.1.1.5: back to the greeted state, keeping greeting and AUTH."""
        self._transaction = None
        self._decoder = None
        self.state = State.READY if self.client_name is not None else State.NEED_HELO

    # --- Reading, one step per call, chosen by state (see _STEPS). ----------------

    def _read_line(self) -> bytes | None:
        """The next CRLF-terminated line without its CRLF, or None until one is complete.

        RFC 5321 §2.3.8: only CRLF ends a line. The buffer is capped: a line longer
        than the limit ends the session, however it arrives (maddy closes too).
        """
        end = self._input.find(b"\r\n")
        if end == -1:
            if len(self._input) > self.max_line_length + 1:
                raise _Fatal(replies.TOO_LONG_LINE)
            return None
        if end > self.max_line_length:
            raise _Fatal(replies.TOO_LONG_LINE)
        line = bytes(self._input[:end])
        del self._input[:end + 2]
        return line

    def _opening_step(self) -> Event:
        return self._await(Connected(), flush=True)

    def _command_step(self) -> Event | object | None:
        line = self._read_line()
        if line is None:
            return NEED_DATA
        command = None
        try:
            verb, argument = _split_command(line)
            command = self._COMMANDS.get(verb)
            if command is None:
                raise replies.UNKNOWN_COMMAND.to_error()
            self._check_sequence(command.states, command.too_late)
            event = command.handler(self, argument)
        except SMTPError as error:
            flush = command is not None and command.last_in_group
            return self._protocol_error(Reply.from_error(error), flush=flush)
        self._bad_commands = 0
        if event is not None and event.needs_answer:
            return self._await(event, flush=command.last_in_group)
        self._flush_due = self._flush_due or command.last_in_group
        return event

    def _check_sequence(self, states: frozenset[State], too_late: Reply | None) -> None:
        """RFC 5321 §4.1.4: a command out of order gets 503 and changes nothing."""
        if self.state in states:
            return
        earliest = min(_PROGRESS.index(state) for state in states)
        if _PROGRESS.index(self.state) < earliest:
            raise _MISSING_STEP[self.state].to_error()
        raise too_late.to_error()

    def _data_step(self) -> Event | object | None:
        if self._decoder.finished:
            self._decoder = None
            return self._end_message(self._transaction.limits.finish(), per_recipient=self.lmtp)
        try:
            content, consumed = self._decoder.decode(self._input[:BODY_CHUNK_SIZE])
        except LineTooLong:
            raise _Fatal(replies.TOO_LONG_LINE) from None
        if consumed == 0:
            return NEED_DATA
        del self._input[:consumed]
        return self._body(content)

    def _body(self, content: bytes) -> Event | None:
        """Count content against the limits; report it while they hold.

        DESIGN §4.3, as aiosmtpd does: after an overflow keep reading to the end of the
        data and answer only then, or the rest of the body would be read as commands.
        """
        limits = self._transaction.limits
        limits.feed(content)
        if content and limits.error is None:
            return BodyChunk(content)
        return None

    def _chunk_step(self) -> Event | object | None:
        chunk = self._chunk
        if chunk.remaining == 0:
            return self._end_chunk()
        take = min(chunk.remaining, len(self._input), BODY_CHUNK_SIZE)
        if take == 0:
            return NEED_DATA
        data = bytes(self._input[:take])
        del self._input[:take]
        chunk.remaining -= take
        if chunk.rejection is not None:
            return None
        return self._body(data)

    def _end_chunk(self) -> Event | None:
        chunk, self._chunk = self._chunk, None
        if chunk.rejection is not None:
            # RFC 3030 §2: a failed BDAT fails the transaction.
            self._end_transaction()
            reply = Reply.from_error(chunk.rejection)
            if chunk.out_of_sequence:
                return self._protocol_error(reply)
            self._send(reply)
            return None
        limits = self._transaction.limits
        if chunk.last:
            return self._end_message(limits.finish(), per_recipient=self.lmtp)
        if limits.error is not None:
            # A non-LAST chunk has one reply even in LMTP (RFC 3030 §2).
            return self._end_message(limits.error, per_recipient=False)
        self._send(replies.chunk_ok(chunk.size))
        self.state = State.CHUNKING
        return None

    def _end_message(self, error: SMTPError | None, *, per_recipient: bool) -> Event:
        if error is None:
            return self._await(MessageEnd(), flush=False)
        # The machine answers a broken limit itself; the driver only drops the message.
        self._fail_message(error, per_recipient=per_recipient)
        return MessageEnd(error)

    def _fail_message(self, error: SMTPError, *, per_recipient: bool) -> None:
        # RFC 2033 §4.2: LMTP answers the end of data once per accepted recipient.
        count = len(self._transaction.recipients) if per_recipient else 1
        for _ in range(count):
            self._send(Reply.from_error(error))
        self._end_transaction()

    def _auth_step(self) -> Event | object | None:
        line = self._read_line()
        if line is None:
            return NEED_DATA
        self.state = State.READY   # unless LOGIN asks for the next answer
        try:
            if line == b"*":
                # RFC 4954 §4: "*" cancels the exchange with a 501.
                raise replies.AUTH_CANCELLED.to_error()
            event = self._sasl_answer(sasl.decode_response(line.decode("ascii", "replace")))
        except SMTPError as error:
            return self._protocol_error(Reply.from_error(error), flush=True)
        if event is None:
            return None
        return self._await(event, flush=True)

    def _handshake_step(self) -> object:
        return NEED_DATA

    def _closed_step(self) -> object:
        return CLOSED

    _STEPS = {
        State.OPENING: _opening_step,
        State.NEED_HELO: _command_step,
        State.READY: _command_step,
        State.MAIL: _command_step,
        State.RCPT: _command_step,
        State.CHUNKING: _command_step,
        State.DATA: _data_step,
        State.BDAT: _chunk_step,
        State.AUTH: _auth_step,
        State.TLS_HANDSHAKE: _handshake_step,
        State.CLOSED: _closed_step,
    }

    # --- Command handlers: check the argument, return the event (or raise). --------

    def _helo(self, argument: str) -> Event:
        if self.lmtp:
            raise replies.LMTP_NEEDS_LHLO.to_error()
        return Helo(self._hello_name(argument))

    def _ehlo(self, argument: str) -> Event:
        if self.lmtp:
            raise replies.LMTP_NEEDS_LHLO.to_error()
        return Ehlo(self._hello_name(argument))

    def _lhlo(self, argument: str) -> Event:
        if not self.lmtp:
            raise replies.NOT_LMTP.to_error()
        return Lhlo(self._hello_name(argument))

    @staticmethod
    def _hello_name(argument: str) -> str:
        # The name is not checked further: many real clients send odd ones, and what
        # to make of it is policy (the driver's checks), not protocol.
        if not argument:
            raise replies.HELO_SYNTAX.to_error()
        return argument

    def _mail(self, argument: str) -> Event:
        if self.submission and self.authenticated_as is None:
            raise replies.AUTH_REQUIRED.to_error()  # RFC 4954 §6
        return parse_mail(argument, esmtp=self.esmtp, dsn=self.dsn,
                          max_message_size=self.max_message_size,
                          tls_active=self.tls_active)

    def _rcpt(self, argument: str) -> Event:
        if len(self._transaction.recipients) >= self.max_recipients:
            raise replies.too_many_recipients(self.max_recipients).to_error()
        return parse_rcpt(argument, esmtp=self.esmtp, dsn=self.dsn,
                          smtputf8=self._transaction.mail.smtputf8)

    def _data(self, argument: str) -> Event:
        if argument:
            raise replies.no_arguments("DATA").to_error()
        return DataStart(chunking=False)

    def _bdat(self, argument: str) -> Event | None:
        try:
            size, last = parse_bdat(argument)
        except SMTPError:
            # Without a size there is no telling where the chunk ends: its bytes would
            # be read as commands. Better to hang up.
            raise _Fatal(replies.BDAT_SYNTAX) from None
        chunk = _Chunk(size=size, last=last, remaining=size)
        try:
            self._check_sequence(_BDAT_STATES, None)
        except SMTPError as error:
            # RFC 3030 §2: the chunk's bytes are read and thrown away all the same.
            chunk.rejection = error
            chunk.out_of_sequence = True
        starts_message = self.state is State.RCPT
        self._chunk = chunk
        self.state = State.BDAT
        return DataStart(chunking=True) if starts_message else None

    def _rset(self, argument: str) -> Event:
        if argument:
            raise replies.no_arguments("RSET").to_error()
        self._end_transaction()
        self._send(replies.RSET_OK)
        return Rset()

    def _noop(self, argument: str) -> Event:
        # RFC 5321 §4.1.1.9: NOOP may carry an argument, which is ignored.
        self._send(replies.NOOP_OK)
        return Noop()

    def _quit(self, argument: str) -> Event:
        if argument:
            raise replies.no_arguments("QUIT").to_error()
        self._close(replies.QUIT_OK)
        return Quit()

    def _vrfy(self, argument: str) -> Event:
        if not argument:
            raise replies.VRFY_SYNTAX.to_error()
        # RFC 5321 §3.5.3: 252 says "can't verify, will try"; no address harvesting.
        self._send(replies.VRFY_OK)
        return Vrfy(argument)

    def _help(self, argument: str) -> Event:
        self._send(replies.help_text(
            self.lmtp, starttls=self.tls_available and not self.tls_active,
            auth=bool(self.auth_mechanisms)))
        return Help(argument)

    def _not_implemented(self, argument: str) -> Event:
        raise replies.NOT_IMPLEMENTED.to_error()

    def _starttls(self, argument: str) -> Event:
        if self.tls_active:
            raise replies.ALREADY_TLS.to_error()
        if not self.tls_available:
            raise replies.NOT_IMPLEMENTED.to_error()
        if argument:
            raise replies.no_arguments("STARTTLS").to_error()  # RFC 3207 §4
        self._send(replies.START_TLS)
        # RFC 3207 §4.2: whatever the client pipelined after STARTTLS was sent in the
        # clear and must not run inside the TLS session (CVE-2011-0411).
        discarded = len(self._input)
        self._input.clear()
        self.state = State.TLS_HANDSHAKE
        return StartTLS(discarded)

    def _auth(self, argument: str) -> Event | None:
        if not self.auth_mechanisms:
            raise replies.NOT_IMPLEMENTED.to_error()
        if self.authenticated_as is not None:
            raise replies.ALREADY_AUTHENTICATED.to_error()  # RFC 4954 §4
        if self.auth_requires_tls and not self.tls_active:
            raise replies.AUTH_NEEDS_TLS.to_error()
        mechanism, _, initial_response = argument.partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in self.auth_mechanisms:
            raise replies.AUTH_UNKNOWN_MECHANISM.to_error()
        self._sasl = _SaslExchange(mechanism)
        if initial_response:
            # RFC 4954 §4: the initial response saves a round trip.
            return self._sasl_answer(sasl.decode_response(initial_response.strip(" ")))
        # RFC 4954 §4: a 334 asks for the (next) response; PLAIN's challenge is empty.
        prompt = sasl.LOGIN_USERNAME_PROMPT if mechanism == "LOGIN" else ""
        self._send(Reply(334, None, prompt))
        self.state = State.AUTH
        return None

    def _sasl_answer(self, answer: str) -> Event | None:
        """Take one decoded SASL response: ask for the next, or return the credentials."""
        exchange = self._sasl
        if exchange.mechanism == "PLAIN":
            authorization_id, username, password = sasl.parse_plain(answer)
            return Auth("PLAIN", username, password, authorization_id)
        if exchange.username is None:
            exchange.username = answer
            self._send(Reply(334, None, sasl.LOGIN_PASSWORD_PROMPT))
            self.state = State.AUTH
            return None
        return Auth("LOGIN", exchange.username, answer)

    # --- Answers to the events that wait for the driver. ----------------------------

    def _accept_connected(self, event: Connected) -> None:
        self._send(replies.greeting(self.hostname, lmtp=self.lmtp))
        self.state = State.NEED_HELO

    def _reject_connected(self, event: Connected, error: SMTPError) -> None:
        self._close(Reply.from_error(error))

    def _accept_hello(self, event: Helo | Ehlo | Lhlo) -> None:
        # RFC 5321 §4.1.4: a new EHLO resets the session as RSET would.
        self._end_transaction()
        self.client_name = event.name
        self.esmtp = not isinstance(event, Helo)
        self.state = State.READY
        if isinstance(event, Helo):
            self._send(replies.helo_ok(self.hostname, event.name))
        else:
            self._send(replies.ehlo_ok(self.hostname, event.name, self._capabilities()))

    def _reject_hello(self, event: Helo | Ehlo | Lhlo, error: SMTPError) -> None:
        # A refused greeting leaves no way on: the client must greet again (maddy's
        # early checks fail here and expect no further transaction).
        self.client_name = None
        self.esmtp = False
        self._end_transaction()
        self._send(Reply.from_error(error))

    def _capabilities(self) -> list[str]:
        """The EHLO/LHLO keywords, in maddy's order (maddy-behaviour §2.1)."""
        capabilities = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING"]
        if self.tls_available and not self.tls_active:
            capabilities.append("STARTTLS")
        # Offering AUTH where it would be refused with 523 only invites plaintext passwords.
        if self.auth_mechanisms and (self.tls_active or not self.auth_requires_tls):
            capabilities.append("AUTH " + " ".join(self.auth_mechanisms))
        capabilities.append("SMTPUTF8")
        if self.tls_active:
            capabilities.append("REQUIRETLS")  # RFC 8689 §2: only over TLS
        if self.dsn:
            capabilities.append("DSN")
        capabilities += [f"SIZE {self.max_message_size}",
                         f"LIMITS RCPTMAX={self.max_recipients}"]  # RFC 1870, RFC 9422
        return capabilities

    def _accept_mail(self, event: Mail) -> None:
        self._transaction = _Transaction(event)
        self.state = State.MAIL
        self._send(replies.mail_ok(event.address))

    def _accept_rcpt(self, event: Rcpt) -> None:
        self._transaction.recipients.append(event.address)
        self.state = State.RCPT
        self._send(replies.rcpt_ok(event.address))

    def _accept_data_start(self, event: DataStart) -> None:
        self._transaction.limits = BodyLimits(self.max_message_size, self.max_header_size)
        if event.chunking:
            return  # the chunk is already in state BDAT; its reply comes at its end
        self._decoder = DataDecoder(self.max_line_length)
        self.state = State.DATA
        self._send(replies.START_DATA)

    def _reject_data_start(self, event: DataStart, error: SMTPError) -> None:
        if event.chunking:
            self._chunk.rejection = error   # read the chunk, then answer (RFC 3030 §2)
        else:
            self._send(Reply.from_error(error))

    def _accept_auth(self, event: Auth) -> None:
        self.authenticated_as = event.username
        self._send(replies.AUTH_OK)

    def _accept_message(self, event: MessageEnd) -> None:
        if self.lmtp:
            for address in self._transaction.recipients:
                self._send(replies.lmtp_recipient_ok(address))
        else:
            self._send(replies.MESSAGE_OK)
        self._end_transaction()

    def _reject_message(self, event: MessageEnd, error: SMTPError) -> None:
        self._fail_message(error, per_recipient=self.lmtp)

    def _reject_command(self, event: Event, error: SMTPError) -> None:
        """MAIL, RCPT and AUTH: the error is the whole answer; nothing changes."""
        self._send(Reply.from_error(error))

    _ON_ACCEPT = {
        Connected: _accept_connected,
        Helo: _accept_hello,
        Ehlo: _accept_hello,
        Lhlo: _accept_hello,
        Mail: _accept_mail,
        Rcpt: _accept_rcpt,
        DataStart: _accept_data_start,
        Auth: _accept_auth,
        MessageEnd: _accept_message,
    }
    _ON_REJECT = {
        Connected: _reject_connected,
        Helo: _reject_hello,
        Ehlo: _reject_hello,
        Lhlo: _reject_hello,
        Mail: _reject_command,
        Rcpt: _reject_command,
        DataStart: _reject_data_start,
        Auth: _reject_command,
        MessageEnd: _reject_message,
    }

    # The commands: where each is in sequence and whether the client waits for its
    # reply (RFC 2920 §3.1 names EHLO, DATA, VRFY, EXPN, TURN, QUIT and NOOP; RFC 3207
    # STARTTLS and RFC 4954 AUTH also end a pipelined group; HELO/LHLO/HELP are
    # interactive too).
    _COMMANDS = {
        "HELO": _Command(_helo, last_in_group=True),
        "EHLO": _Command(_ehlo, last_in_group=True),
        "LHLO": _Command(_lhlo, last_in_group=True),
        "MAIL": _Command(_mail, frozenset({State.READY}), replies.NESTED_MAIL),
        "RCPT": _Command(_rcpt, frozenset({State.MAIL, State.RCPT}), replies.RCPT_AFTER_BDAT),
        "DATA": _Command(_data, frozenset({State.RCPT}), replies.DATA_AFTER_BDAT,
                         last_in_group=True),
        # BDAT checks its sequence itself: it must read its chunk even when refused.
        "BDAT": _Command(_bdat),
        "RSET": _Command(_rset),
        "NOOP": _Command(_noop, last_in_group=True),
        "QUIT": _Command(_quit, last_in_group=True),
        "VRFY": _Command(_vrfy, last_in_group=True),
        "HELP": _Command(_help, last_in_group=True),
        "EXPN": _Command(_not_implemented, last_in_group=True),
        "TURN": _Command(_not_implemented, last_in_group=True),
        "ETRN": _Command(_not_implemented, last_in_group=True),
        "STARTTLS": _Command(_starttls, frozenset({State.NEED_HELO, State.READY}),
                             replies.STARTTLS_IN_TRANSACTION, last_in_group=True),
        "AUTH": _Command(_auth, frozenset({State.READY}), replies.AUTH_IN_TRANSACTION,
                         last_in_group=True),
    }


def _split_command(line: bytes) -> tuple[str, str]:
    """``b"MAIL FROM:<a@b>"`` → ``("MAIL", "FROM:<a@b>")``.

    RFC 6531 allows UTF-8 in arguments; anything that is not UTF-8, and any CR or LF
    inside the line (a bare newline, the smuggling vector), is refused.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise replies.BAD_LINE.to_error() from None
    if "\r" in text or "\n" in text:
        raise replies.BAD_LINE.to_error()
    verb, _, argument = text.partition(" ")
    if not verb.isascii():
        # str.upper() maps some non-ASCII letters to ASCII ("ſ" → "S").
        raise replies.UNKNOWN_COMMAND.to_error()
    return verb.upper(), argument.strip(" ")
