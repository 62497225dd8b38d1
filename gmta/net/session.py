"""The server session driver: a socket, a protocol machine and a handler.

This is the only place where a server session touches the network: it reads
with ``read_timeout``, writes with ``write_timeout``, does the TLS handshakes
(STARTTLS and implicit ``tls://``), and feeds bytes to the sans-IO machine of
``gmta.proto.server``. What the events *mean* is the handler's business (the
endpoint): the driver only routes each event to the handler method of the
same name and turns an ``SMTPError`` into a rejection.

Plain blocking code: each session runs in its own greenlet.
"""

from __future__ import annotations

import socket as _stdlib_socket
import ssl
import sys
from typing import Protocol

import gevent

import gmta.log
from gmta import metrics
from gmta.errors import SMTPError
from gmta.net.waiting import PlainSocket, send_without_waiting, wait_readable
from gmta.proto.events import (CLOSED, NEED_DATA, Auth, BodyChunk, Connected, DataStart, Ehlo,
                               Helo, Lhlo, Mail, MessageEnd, ProtocolError, Quit, Rcpt, Rset,
                               StartTLS)
from gmta.proto.replies import Reply
from gmta.proto.server import ServerConnection

log = gmta.log.get("session")

RECV_SIZE = 64 * 1024
# Replies the driver sends itself when the session ends for a reason the
# machine does not know about (RFC 5321 §4.2.2: 421 closes the channel).
IDLE_TIMEOUT = SMTPError(421, (4, 4, 2), "Idle timeout, bye bye")
SHUTTING_DOWN = SMTPError(421, (4, 3, 2), "Service shutting down, try again later")
INTERNAL_ERROR = SMTPError(451, (4, 3, 0), "Internal error, try again later")


def _has_pending(sock) -> bool:
    """Whether a TLS socket holds decrypted bytes not read yet."""
    pending = getattr(sock, "pending", None)
    return pending is not None and pending() > 0


class SessionHandler(Protocol):
    """What the driver calls; raise SMTPError to refuse the event."""

    def connected(self) -> None: ...
    def helo(self, name: str, esmtp: bool) -> None: ...
    def auth(self, event: Auth) -> None: ...
    def mail(self, event: Mail) -> None: ...
    def rcpt(self, event: Rcpt) -> None: ...
    def data_start(self) -> None: ...
    def body_chunk(self, data: bytes) -> None: ...
    def message_end(self) -> list[SMTPError | None] | None: ...
    def transaction_ended(self) -> None: ...
    def tls_started(self, sock: ssl.SSLSocket) -> None: ...


class ClientGone(Exception):
    """The client closed the connection or the network failed."""


class StopRequested(Exception):
    """Raised into an idle session's greenlet when gmta stops."""


class SessionDriver:
    # One per open connection, idle ones included: no per-instance __dict__.
    __slots__ = (
        "sock", "conn", "handler", "read_timeout", "write_timeout", "tls_context",
        "io_debug", "session_id", "log", "endpoint", "stopping", "idle")

    def __init__(self, sock, conn: ServerConnection, handler: SessionHandler, *,
                 read_timeout: float, write_timeout: float,
                 tls_context: ssl.SSLContext | None = None, io_debug: bool = False,
                 session_id: str = "", log: gmta.log.EventLogger = log, endpoint: str = ""):
        self.sock = sock
        self.conn = conn
        self.handler = handler
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.tls_context = tls_context
        self.io_debug = io_debug
        self.session_id = session_id
        self.log = log
        #: The endpoint's name in the metrics (gmta.metrics).
        self.endpoint = endpoint
        self.stopping = False
        # True while blocked reading the next command outside a transaction:
        # the one place where a stop may interrupt the session at once.
        self.idle = False

    def request_stop(self, greenlet) -> None:
        """Stop after the current transaction; an idle session stops now with 421."""
        self.stopping = True
        if self.idle:
            # The exception is thrown later, from the hub: by then a command that
            # had already arrived may have begun a transaction, which must finish.
            gevent.get_hub().loop.run_callback(self._stop_if_idle, greenlet)

    def _stop_if_idle(self, greenlet) -> None:
        if self.idle and not greenlet.dead:
            try:
                greenlet.throw(StopRequested)
            except BaseException:  # pragma: no cover - as gevent's own kill does
                gevent.get_hub().handle_error(greenlet, *sys.exc_info())

    # -- I/O with timeouts ---------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if not data:
            return
        if self.io_debug:
            self.log.info("io", session=self.session_id, direction="out",
                          data=data.decode("utf-8", "replace"))
        try:
            data = send_without_waiting(self.sock, data)
            if not data:
                return
            with gevent.Timeout(self.write_timeout, ClientGone("write timeout")):
                self.sock.sendall(data)
        except OSError as e:
            raise ClientGone(str(e)) from None

    def _read(self) -> bytes:
        sock = self.sock
        try:
            # An idle session waits here for its next command: in wait_readable,
            # which parks the greenlet in less memory than a recv that blocks.
            # Plain and TLS sockets (gevent's SSLSocket is a subclass), not test
            # doubles; and not when TLS already holds decrypted bytes: the
            # descriptor may never become readable for them.
            if isinstance(sock, PlainSocket) and not _has_pending(sock) \
                    and not wait_readable(sock.fileno(), self.read_timeout):
                raise TimeoutError
            sock.settimeout(self.read_timeout)
            data = sock.recv(RECV_SIZE)
        except (_stdlib_socket.timeout, TimeoutError):
            self._say_goodbye(IDLE_TIMEOUT)
            raise ClientGone("idle timeout") from None
        except OSError as e:
            raise ClientGone(str(e)) from None
        if not data:
            raise ClientGone("connection closed by client")
        if self.io_debug:
            self.log.info("io", session=self.session_id, direction="in",
                          data=data.decode("utf-8", "replace"))
        return data

    def _say_goodbye(self, error: SMTPError) -> None:
        try:
            self._write(self.conn.data_to_send() + Reply.from_error(error).to_bytes())
        except ClientGone:
            pass

    def start_tls(self) -> None:
        """Handshake as a server under the write timeout; the machine is told by the caller."""
        try:
            with gevent.Timeout(self.write_timeout, ClientGone("TLS handshake timeout")):
                self.sock = self.tls_context.wrap_socket(self.sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            raise ClientGone(f"TLS handshake failed: {e}") from None
        self.handler.tls_started(self.sock)

    # -- the loop ------------------------------------------------------------------

    def run(self) -> None:
        """Serve the session until QUIT, a fatal error, or the client leaves."""
        conn = self.conn
        was_in_transaction = False
        try:
            while True:
                event = conn.next_event()
                if event is CLOSED:
                    break
                if event is NEED_DATA:
                    self._write(conn.data_to_send())
                    if self.stopping and not conn.in_transaction:
                        self._say_goodbye(SHUTTING_DOWN)
                        return
                    self.idle = not conn.in_transaction
                    try:
                        data = self._read()
                    finally:
                        self.idle = False
                    conn.receive_data(data)
                    continue
                self._dispatch(event)
                if was_in_transaction and not conn.in_transaction:
                    self.handler.transaction_ended()
                was_in_transaction = conn.in_transaction
                self._write(conn.data_to_send())
            self._write(conn.data_to_send())
        except StopRequested:
            self._say_goodbye(SHUTTING_DOWN)
        except ClientGone as e:
            self.log.debug("client_gone", session=self.session_id, reason=str(e))
        finally:
            if was_in_transaction or conn.in_transaction:
                self.handler.transaction_ended()

    def _dispatch(self, event) -> None:
        conn = self.conn
        if isinstance(event, BodyChunk):
            self.handler.body_chunk(event.data)
            return
        if isinstance(event, StartTLS):
            self._write(conn.data_to_send())
            self.start_tls()
            conn.tls_established()
            return
        if isinstance(event, ProtocolError):
            self.log.debug("protocol_error", session=self.session_id, reply=str(event.reply))
            return
        if isinstance(event, MessageEnd) and event.error is not None:
            # The machine refused the body itself (size, header size).
            self.log.info("message_refused", session=self.session_id, reason=str(event.error))
            self._count(event, event.error.code)
            return
        if isinstance(event, (Rset, Quit)) or not event.needs_answer:
            return
        try:
            results = self._call_handler(event)
        except SMTPError as error:
            conn.reject(error)
            self._count(event, error.code)
            return
        except Exception as e:
            # DESIGN §3: anything that is not an SMTPError is a temporary failure;
            # the client is told so and may retry, and the log says what broke.
            self.log.error("handler_failed", session=self.session_id,
                           command=type(event).__name__, error=repr(e))
            conn.reject(INTERNAL_ERROR)
            self._count(event, INTERNAL_ERROR.code)
            return
        if isinstance(event, MessageEnd) and results is not None:
            conn.reply_per_recipient(results)
            # LMTP (RFC 2033 §4.2): accepted if any recipient got its 250.
            failed = [r for r in results if r is not None]
            self._count(event, failed[0].code if failed and len(failed) == len(results) else None)
        else:
            conn.accept()
            self._count(event, None)

    def _count(self, event, code: int | None) -> None:
        """Count the reply to a RCPT or an end of data (None: accepted)."""
        if isinstance(event, Rcpt):
            metrics.count_reply(metrics.RECIPIENTS_ACCEPTED, metrics.RECIPIENTS_REJECTED,
                                self.endpoint, code)
        elif isinstance(event, MessageEnd):
            metrics.count_reply(metrics.MESSAGES_ACCEPTED, metrics.MESSAGES_REJECTED,
                                self.endpoint, code)

    def _call_handler(self, event):
        handler = self.handler
        if isinstance(event, Connected):
            return handler.connected()
        if isinstance(event, (Helo, Ehlo, Lhlo)):
            return handler.helo(event.name, not isinstance(event, Helo))
        if isinstance(event, Auth):
            return handler.auth(event)
        if isinstance(event, Mail):
            return handler.mail(event)
        if isinstance(event, Rcpt):
            return handler.rcpt(event)
        if isinstance(event, DataStart):
            return handler.data_start()
        if isinstance(event, MessageEnd):
            return handler.message_end()
        return None
