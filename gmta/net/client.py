"""The client connection driver: a socket, the client protocol machine, timeouts.

The only place where an outgoing SMTP or LMTP session touches the network. It
dials (``tcp://``, ``tls://`` with implicit TLS, ``unix://``; optionally from a
given local address), reads the greeting, greets, does STARTTLS and AUTH, sends
envelopes (pipelined when the server offers PIPELINING) and message content (DATA,
or BDAT when CHUNKING is offered), and says QUIT. What the replies *mean* for a
delivery is the caller's business: ``gmta.target.smtp`` (one smarthost or mailbox
server) and the remote MX target use the same :class:`SMTPClient`.

Every network operation has a deadline: ``connect_timeout`` for the TCP connect,
``command_timeout`` for each command's write and reply (the greeting and the TLS
handshake included), ``submission_timeout`` for the reply after the message
content (RFC 5321 §4.5.3.2.6 suggests 10 minutes). Writes and reads keep their
deadline as the socket's timeout, set to what is left of it before each wait,
rather than as a ``gevent.Timeout`` per command: a write that fits in the
socket's buffer and a reply already received then cost no timer at all.

Round trips: with PIPELINING, :meth:`SMTPClient.envelope` sends MAIL, the RCPTs
and (``data=True``) DATA in one write (RFC 2920 §3.1), and the content follows
the 354 in as few writes as :data:`CONTENT_PIECE` allows, its end marker in the
last of them: two round trips for a small message.

Failures before a mail transaction can start (connect, greeting, EHLO, TLS) raise
:class:`ConnectionFailed`; a broken connection at any later point raises it too,
and the client is then unusable. A negative reply to a command is an ordinary
``SMTPError`` with the server's code, enhanced code and text.
"""

from __future__ import annotations

import ipaddress
import socket as _stdlib_socket
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import gevent
from gevent import socket

import gmta.log
from gmta import metrics
from gmta.config.values import Endpoint
from gmta.errors import SMTPError
from gmta.net.waiting import send_without_waiting
from gmta.proto.client import ClientConnection, ClientState, Response
from gmta.proto.events import NEED_DATA
from gmta.proto.framing import DataEncoder
from gmta.proto.replies import Reply

log = gmta.log.get("client")

RECV_SIZE = 64 * 1024
#: Message content is gathered up to this many bytes per write: a small message
#: goes out with its end marker in one send, a big one in bounded pieces.
CONTENT_PIECE = 64 * 1024
#: Bytes per BDAT chunk: big enough that round trips don't matter, small enough to
#: bound what one chunk holds in memory.
BDAT_CHUNK = 1 << 20
#: RFC 5321 §4.5.3.2 has no QUIT timeout; a goodbye is not worth more than this.
QUIT_TIMEOUT = 5.0

DEFAULT_CONNECT_TIMEOUT = 300.0
DEFAULT_COMMAND_TIMEOUT = 300.0
DEFAULT_SUBMISSION_TIMEOUT = 720.0


class ConnectionFailed(SMTPError):
    """The session could not be set up or broke: try another server or later.

    ``stage`` says where: ``connect``, ``greeting``, ``hello``, ``starttls``, ``tls``
    (the handshake) or ``io`` (the connection broke mid-session). The code is the
    server's when it gave a reply (a 554 greeting), else 451 with RFC 3463
    X.4.1 (no answer) or X.4.2 (bad connection). ``tls_verify_failed`` tells a
    certificate that did not verify from other handshake failures, so a caller can
    retry without verification where its policy allows (maddy-behaviour §2.5).
    """

    def __init__(self, stage: str, code: int, enhanced: tuple[int, int, int] | None, text: str,
                 *, tls_verify_failed: bool = False):
        super().__init__(code, enhanced, text)
        self.stage = stage
        self.tls_verify_failed = tls_verify_failed


@dataclass(frozen=True)
class TLSInfo:
    """What the TLS session is: for logs, Received fields and security levels."""

    version: str
    cipher: str
    #: The certificate chain and name were checked against the trusted roots.
    verified: bool
    #: ``tls://`` (implicit TLS) rather than STARTTLS.
    implicit: bool


@dataclass
class Envelope:
    """The server's answers to one envelope (:meth:`SMTPClient.envelope`)."""

    #: MAIL's refusal (then every RCPT carries it too), or None.
    mail_error: SMTPError | None
    #: One per RCPT, in order: None when accepted.
    rcpt_errors: list[SMTPError | None]
    #: DATA was sent with the envelope and refused (or accepted with no
    #: recipient to deliver to, and ended at once): no content is to follow.
    data_error: SMTPError | None = None
    #: DATA was sent and answered 354: the content is to follow, now.
    ready: bool = False


def describe(address: Endpoint | tuple[str, int]) -> str:
    if isinstance(address, Endpoint):
        return str(address)
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SMTPClient:
    """One client session; build it with :func:`connect`."""

    def __init__(self, sock, machine: ClientConnection, *, peer: str,
                 command_timeout: float, submission_timeout: float,
                 debug: bool = False, session_id: str = "", logger: gmta.log.EventLogger = log):
        self.sock = sock
        self.machine = machine
        self.peer = peer
        self.command_timeout = command_timeout
        self.submission_timeout = submission_timeout
        self.debug = debug
        self.session_id = session_id
        self.log = logger
        self.tls: TLSInfo | None = None
        #: False once the connection broke or was closed; never reuse it then.
        self.usable = True
        self.greeting: Reply | None = None
        self.transactions = 0

    # --- What the server offers. ----------------------------------------------------

    @property
    def capabilities(self) -> dict[str, list[str]]:
        return self.machine.capabilities

    def supports(self, keyword: str) -> bool:
        return self.machine.supports(keyword)

    @property
    def lmtp(self) -> bool:
        return self.machine.lmtp

    # --- I/O. -----------------------------------------------------------------------

    def _broken(self, text: str, enhanced=(4, 4, 2)) -> ConnectionFailed:
        self.usable = False
        self.close()
        return ConnectionFailed("io", 451, enhanced, f"{text} ({self.peer})")

    def _write(self, data: bytes, timeout: float | None = None) -> None:
        if not data:
            return
        sock = self.sock
        try:
            data = send_without_waiting(sock, data)
            if not data:
                return
            deadline = time.monotonic() + (timeout or self.command_timeout)
            # Each send takes at least one byte or raises: the loop ends by the deadline.
            while data:
                self._wait_until(deadline)
                data = data[sock.send(data):]
        except (_stdlib_socket.timeout, TimeoutError):
            raise self._broken("Timed out sending to the server") from None
        except OSError as e:
            raise self._broken(f"Network I/O error: {e.strerror or e}") from None

    def _wait_until(self, deadline: float) -> None:
        """Let the socket's next operation wait no longer than until *deadline*."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)

    def _command(self, data: bytes, count: int = 1) -> None:
        """Write command bytes; *count* is how many commands they hold (for the log)."""
        if self.debug:
            for command in self.machine.awaiting[-count:]:
                self.log.debug("send", session=self.session_id, peer=self.peer,
                               command=command.text)
        self._write(data)

    def read_response(self, timeout: float | None = None) -> Response:
        """The next reply, reading from the socket as needed within *timeout*."""
        machine = self.machine
        try:
            event = machine.next_event()
            if event is NEED_DATA:
                deadline = time.monotonic() + (timeout or self.command_timeout)
                # Each recv brings at least one byte, and the machine bounds a
                # reply's size (RemoteProtocolError): the loop ends by the deadline.
                while event is NEED_DATA:
                    self._wait_until(deadline)
                    data = self.sock.recv(RECV_SIZE)
                    if not data:
                        raise self._broken("Connection closed by the server")
                    machine.receive_data(data)
                    event = machine.next_event()
        except (_stdlib_socket.timeout, TimeoutError):
            raise self._broken("Timed out waiting for the server's reply",
                               (4, 4, 1) if self.greeting is None else (4, 4, 2)) from None
        except OSError as e:
            raise self._broken(f"Network I/O error: {e}") from None
        except ConnectionFailed:
            raise
        except SMTPError:
            # RemoteProtocolError: the reply was not SMTP.
            self.usable = False
            self.close()
            raise
        if self.debug:
            self.log.debug("reply", session=self.session_id, peer=self.peer,
                           command=event.command.verb, reply=str(event.reply))
        if event.reply.code == 421:
            # RFC 5321 §3.8: the server is closing the channel.
            self.usable = False
        return event

    def _expect(self, response: Response, *codes: int) -> Reply:
        """The reply when its code is one of *codes*, else its error."""
        if response.reply.code in codes:
            return response.reply
        raise reply_error(response.reply)

    # --- Session set-up. --------------------------------------------------------------

    def read_greeting(self) -> Reply:
        response = self.read_response()
        self.greeting = response.reply
        if response.reply.code != 220:
            raise _failed("greeting", response.reply, self.peer)
        return response.reply

    def hello(self, name: str) -> Reply:
        """EHLO (LHLO for LMTP), falling back to HELO when EHLO is refused (RFC 5321
        §3.2: a 5xx to EHLO means an old server)."""
        self._command(self.machine.ehlo(name))
        reply = self.read_response().reply
        if reply.code == 250:
            return reply
        if not self.lmtp and 500 <= reply.code < 600 and self.usable:
            self._command(self.machine.helo(name))
            reply = self.read_response().reply
            if reply.code == 250:
                return reply
        raise _failed("hello", reply, self.peer)

    def starttls(self, context: ssl.SSLContext, server_hostname: str | None,
                 hello_name: str) -> TLSInfo:
        """STARTTLS (RFC 3207), the handshake under ``command_timeout``, EHLO again."""
        self._command(self.machine.starttls())
        reply = self.read_response().reply
        if reply.code != 220:
            raise _failed("starttls", reply, self.peer)
        self._handshake(context, server_hostname, implicit=False)
        self.machine.tls_established()
        self.hello(hello_name)
        return self.tls

    def _handshake(self, context: ssl.SSLContext, server_hostname: str | None,
                   *, implicit: bool) -> None:
        raw = self.sock
        # The socket's timeout is what a read or write left of its deadline;
        # the handshake's reads get the whole timeout (the timer bounds the sum).
        raw.settimeout(self.command_timeout)
        timer = gevent.Timeout(self.command_timeout)
        timer.start()
        try:
            self.sock = context.wrap_socket(raw, server_hostname=server_hostname)
        except gevent.Timeout as expired:
            if expired is not timer:
                raise
            raise self._tls_failed(raw, (4, 4, 2), f"TLS handshake with {self.peer} timed out")
        except ssl.SSLCertVerificationError as e:
            raise self._tls_failed(raw, (4, 7, 5), f"TLS certificate of {self.peer} not "
                                   f"trusted: {e.verify_message or e}", verify=True) from None
        except (OSError, ssl.SSLError) as e:
            raise self._tls_failed(raw, (4, 7, 5),
                                   f"TLS handshake with {self.peer} failed: {e}") from None
        finally:
            timer.close()
        self.tls = TLSInfo(self.sock.version() or "", (self.sock.cipher() or ("",))[0],
                           context.verify_mode == ssl.CERT_REQUIRED, implicit)
        if self.debug:
            self.log.debug("tls", session=self.session_id, peer=self.peer,
                           version=self.tls.version, cipher=self.tls.cipher,
                           verified=self.tls.verified)

    def _tls_failed(self, raw, enhanced, text: str, verify: bool = False) -> ConnectionFailed:
        metrics.OUTBOUND_TLS_FAILURES.labels("verify" if verify else "handshake").inc()
        self.usable = False
        _close(raw)
        self.sock = None
        return ConnectionFailed("tls", 451, enhanced, text, tls_verify_failed=verify)

    def auth(self, mechanism: str, username: str = "", password: str = "") -> None:
        """AUTH PLAIN, LOGIN or EXTERNAL (RFC 4954); raises the server's error."""
        mechanism = mechanism.upper()
        if mechanism not in self.machine.auth_mechanisms:
            offered = " ".join(sorted(self.machine.auth_mechanisms)) or "none"
            raise SMTPError(451, (4, 7, 0), f"{self.peer} does not offer AUTH {mechanism} "
                                            f"(offered: {offered})")
        self._command(self.machine.auth(mechanism, username, password))
        reply = self.read_response().reply
        while reply.code == 334 and self.machine.state is ClientState.AUTH:
            self._command(self.machine.auth_continue())
            reply = self.read_response().reply
        if reply.code != 235:
            raise reply_error(reply)

    # --- Transactions. ----------------------------------------------------------------

    def mail(self, address: str, params: Mapping[str, str | None] | None = None) -> Reply:
        self._command(self.machine.mail(address, params))
        self.transactions += 1
        return self._expect(self.read_response(), 250)

    def rcpt(self, address: str, params: Mapping[str, str | None] | None = None) -> Reply:
        self._command(self.machine.rcpt(address, params))
        return self._expect(self.read_response(), 250, 251)

    def envelope(self, mail_from: str, mail_params: Mapping[str, str | None] | None,
                 rcpts: Iterable[tuple[str, Mapping[str, str | None] | None]],
                 *, data: bool = False) -> Envelope:
        """MAIL and RCPTs, and with *data* DATA too, in one write when the server
        offers PIPELINING (RFC 2920 §3.1: DATA may end a group); otherwise one
        command at a time. Each RCPT's error (None = accepted) and, with *data*,
        whether the content may follow (``ready``: send it with
        :meth:`send_content`). DATA is not sent when the server offers CHUNKING
        (the content goes in BDAT, after the replies) nor, without PIPELINING,
        after every RCPT was refused.
        """
        rcpts = list(rcpts)
        machine = self.machine
        with_data = data and bool(rcpts) and not self.supports("CHUNKING")
        data_sent = False
        broken: ConnectionFailed | None = None
        commands = [machine.mail(mail_from, mail_params)]
        self.transactions += 1
        responses: list[Response] = []
        if machine.pipelining:
            commands += [machine.rcpt(address, params) for address, params in rcpts]
            if with_data:
                commands.append(machine.data())
                data_sent = True
            self._command(b"".join(commands), len(commands))
            try:
                for _ in commands:
                    responses.append(self.read_response())
                    if not self.usable:
                        break   # a 421: the rest of the group has no replies coming
            except ConnectionFailed as lost:
                if not (data_sent and len(responses) == len(commands) - 1):
                    raise
                # Only DATA's reply is missing: some servers hang up on a DATA
                # without a valid recipient. The RCPTs' answers stand.
                broken = lost
        else:
            self._command(commands[0])
            responses.append(self.read_response())
            if responses[0].ok:
                for address, params in rcpts:
                    self._command(machine.rcpt(address, params))
                    responses.append(self.read_response())
                if with_data and any(r.ok for r in responses[1:]):
                    self._command(machine.data())
                    data_sent = True
                    try:
                        responses.append(self.read_response())
                    except ConnectionFailed as lost:
                        broken = lost
        return self._envelope_result(responses, len(rcpts), data_sent, broken)

    def _envelope_result(self, responses: list[Response], rcpt_count: int,
                         data_sent: bool, broken: ConnectionFailed | None) -> Envelope:
        by_verb: dict[str, list[Response]] = {"MAIL": [], "RCPT": [], "DATA": []}
        for response in responses:
            by_verb[response.command.verb].append(response)
        [mail] = by_verb["MAIL"]
        # Replies that never came (the server said 421 and closed) are that 421.
        missing = reply_error(responses[-1].reply) if not self.usable else None
        if not mail.ok:
            mail_error = reply_error(mail.reply)
            rcpt_errors: list[SMTPError | None] = [mail_error] * rcpt_count
        else:
            mail_error = None
            rcpt_errors = [None if r.ok else reply_error(r.reply) for r in by_verb["RCPT"]]
            rcpt_errors += [missing] * (rcpt_count - len(rcpt_errors))
        result = Envelope(mail_error, rcpt_errors)
        if not by_verb["DATA"]:
            if data_sent:
                result.data_error = broken or missing
            return result
        data_reply = by_verb["DATA"][0].reply
        if data_reply.code != 354:
            # RFC 5321 §3.3: after any reply but 354 no message data may be sent.
            result.data_error = reply_error(data_reply)
            return result
        if mail_error is None and any(error is None for error in rcpt_errors):
            result.ready = True
            return result
        # RFC 2920 §3.1: the client "cannot assume that the DATA command will be
        # rejected just because none of the RCPT TO commands worked"; when it was
        # accepted anyway, "the client SMTP should send a single dot", and that
        # empty message's reply is no delivery of anything.
        result.data_error = SMTPError(554, (5, 5, 1), "No valid recipients")
        self._write(self.machine.data_end())
        if self.lmtp:
            # RFC 2033 §4.2 owes one reply per accepted recipient: none here, yet
            # the server will answer something. The session cannot be trusted.
            self.close()
            return result
        self.read_response(self.submission_timeout)
        return result

    def send_content(self, pieces: Iterable[bytes], *, chunking: bool | None = None,
                     ) -> list[Response]:
        """Send the message: DATA (dot-stuffed) or BDAT when CHUNKING is offered.

        After :meth:`envelope` with ``data=True`` answered ``ready`` (the 354 is
        in), only the content goes. Returns the final replies: one for SMTP, one
        per accepted recipient for LMTP (each Response names its recipient; fewer
        when the connection broke after some, which the caller must treat as not
        delivered). Raises the server's error when it refuses DATA or a non-final
        BDAT chunk. *chunking* None means "when offered".
        """
        if self.machine.state is ClientState.DATA:
            return self._send_data_content(pieces)
        if chunking is None:
            chunking = self.supports("CHUNKING")
        if chunking:
            return self._send_bdat(pieces)
        self._command(self.machine.data())
        self._expect(self.read_response(), 354)
        return self._send_data_content(pieces)

    def _send_data_content(self, pieces: Iterable[bytes]) -> list[Response]:
        """The content after the 354, gathered into writes of at most CONTENT_PIECE
        bytes (or one bigger piece), the end marker (RFC 5321 §4.1.1.4) in the last."""
        machine = self.machine
        batch: list[bytes] = []
        size = 0
        for piece in pieces:
            wire = machine.data_content(piece)
            if size and size + len(wire) > CONTENT_PIECE:
                self._write(b"".join(batch))
                batch, size = [], 0
            batch.append(wire)
            size += len(wire)
        batch.append(machine.data_end())
        self._write(b"".join(batch))
        return self._final_responses()

    def _send_bdat(self, pieces: Iterable[bytes]) -> list[Response]:
        encoder = DataEncoder(dot_stuffing=False)
        pending = bytearray()
        for piece in pieces:
            pending += encoder.encode(piece)
            while len(pending) >= BDAT_CHUNK:
                chunk = bytes(pending[:BDAT_CHUNK])
                del pending[:BDAT_CHUNK]
                self._send_chunk(chunk)
        pending += encoder.finish()
        if self.debug:
            self.log.debug("send", session=self.session_id, peer=self.peer,
                           command=f"BDAT {len(pending)} LAST")
        self._write(self.machine.bdat(bytes(pending), last=True))
        return self._final_responses()

    def _send_chunk(self, chunk: bytes) -> None:
        self._command(self.machine.bdat(chunk, last=False))
        self._expect(self.read_response(), 250)

    def _final_responses(self) -> list[Response]:
        count = self.machine.awaiting_replies
        responses = []
        for _ in range(count):
            try:
                response = self.read_response(self.submission_timeout)
            except ConnectionFailed:
                # RFC 2033 §4.2: each LMTP reply is one recipient's final answer. Those
                # read before the connection broke stand (a recipient delivered is not
                # sent again); the caller fails the ones without a reply.
                if self.lmtp and responses:
                    return responses
                raise
            responses.append(response)
            if not self.usable and response.reply.code == 421:
                break
        return responses

    def rset(self) -> None:
        self._command(self.machine.rset())
        self._expect(self.read_response(), 250)

    def noop(self) -> None:
        self._command(self.machine.noop())
        self._expect(self.read_response(), 250)

    def quiet_while_idle(self) -> bool | None:
        """Whether an idle plaintext session still looks open, without a round trip.

        An idle server says nothing (RFC 5321 §4.1.1: the client speaks first), so
        any byte waiting — a ``421`` before an idle timeout — or the end of the
        stream means the session is over. A peek does not consume what it finds.
        None when it cannot tell (TLS: the waiting bytes are records, and a
        close_notify is not an end of stream): ask with NOOP instead.
        """
        if not self.usable or self.sock is None:
            return False
        if self.tls is not None or self.machine.awaiting:
            return None
        timeout = self.sock.gettimeout()
        self.sock.settimeout(0.0)   # gevent: a non-blocking call never waits
        try:
            self.sock.recv(1, _stdlib_socket.MSG_PEEK)
        except BlockingIOError:
            return True   # nothing waiting: the server is quiet, as it should be
        except OSError:
            return False
        finally:
            self.sock.settimeout(timeout)
        return False      # b"" (closed) or unsolicited bytes

    # --- The end. -----------------------------------------------------------------------

    def quit(self) -> None:
        """QUIT politely (bounded by QUIT_TIMEOUT), then close; never raises."""
        if self.usable and self.sock is not None:
            try:
                self._write(self.machine.quit(), QUIT_TIMEOUT)
                self.read_response(QUIT_TIMEOUT)
            except Exception:  # the goodbye is best effort: the server may be gone
                pass
        self.close()

    def close(self) -> None:
        self.usable = False
        if self.sock is not None:
            _close(self.sock)
            self.sock = None


def reply_error(reply: Reply) -> SMTPError:
    """The server's negative reply as an SMTPError (a positive one out of place is
    reported as a temporary protocol problem)."""
    if reply.code >= 400:
        return SMTPError(reply.code, reply.enhanced, reply.text)
    return SMTPError(451, (4, 5, 0), f"Unexpected reply from the server: {reply}")


def _failed(stage: str, reply: Reply, peer: str) -> ConnectionFailed:
    code = reply.code if reply.code >= 400 else 451
    enhanced = reply.enhanced if reply.code >= 400 else (4, 5, 0)
    return ConnectionFailed(stage, code, enhanced, reply.text or f"{stage} failed at {peer}")


def _close(sock) -> None:
    try:
        sock.close()
    except OSError:
        pass


def connect(address: Endpoint | tuple[str, int], *, lmtp: bool = False,
            connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
            command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
            submission_timeout: float = DEFAULT_SUBMISSION_TIMEOUT,
            local_address: str | None = None,
            implicit_tls: ssl.SSLContext | None = None, server_hostname: str | None = None,
            debug: bool = False, session_id: str = "",
            logger: gmta.log.EventLogger = log) -> SMTPClient:
    """Dial *address*, do implicit TLS when *implicit_tls* is given, read the 220.

    *address* is an :class:`Endpoint` (``tcp``, ``tls`` or ``unix``) or a
    ``(host, port)`` pair (the remote target's MX addresses). An Endpoint with the
    ``tls`` scheme needs *implicit_tls*. Raises :class:`ConnectionFailed`.
    """
    peer = describe(address)
    if isinstance(address, Endpoint) and address.tls and implicit_tls is None:
        raise ValueError(f"{peer}: a tls:// address needs an SSL context")
    timer = gevent.Timeout(connect_timeout)
    timer.start()
    try:
        sock = _dial(address, local_address)
    except gevent.Timeout as expired:
        if expired is not timer:
            raise
        raise ConnectionFailed("connect", 451, (4, 4, 1),
                               f"Connection to {peer} timed out") from None
    except OSError as e:
        raise ConnectionFailed("connect", 451, (4, 4, 1),
                               f"Connection to {peer} failed: {e.strerror or e}") from None
    finally:
        timer.close()
    client = SMTPClient(sock, ClientConnection(lmtp=lmtp), peer=peer,
                        command_timeout=command_timeout, submission_timeout=submission_timeout,
                        debug=debug, session_id=session_id, logger=logger)
    try:
        if implicit_tls is not None:
            client._handshake(implicit_tls, server_hostname, implicit=True)
        client.read_greeting()
    except BaseException:
        client.close()
        raise
    return client


def _dial(address: Endpoint | tuple[str, int], local_address: str | None):
    if isinstance(address, Endpoint) and address.is_unix:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(address.path)
        except BaseException:
            sock.close()
            raise
        return sock
    host, port = (address.host, address.port) if isinstance(address, Endpoint) else address
    source = (local_address, 0) if local_address else None
    family = _literal_family(host)
    if family is None:
        sock = socket.create_connection((host, port), source_address=source)
    else:
        # An address needs no resolver: gevent's would make a trip to its
        # threadpool for each connection (every MX address is a literal).
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if source is not None:
                sock.bind(source)
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _literal_family(host: str) -> int | None:
    """AF_INET or AF_INET6 for an IP address literal, None for a name."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None
