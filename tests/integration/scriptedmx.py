"""A scripted MX host for faults smtp-sink cannot play, built on gmta's server machine.

smtp-sink answers every instance of a command alike; some faults need a count:
"accept the first RCPT, then drop the connection at the second", or "hold the
reply to the message content for a while, once". :class:`ScriptedMX` serves
SMTP with :class:`gmta.proto.server.ServerConnection` in plain threads (the
test process is not monkey-patched, so it runs beside a gevent hub), and
plays its faults in the first ``faulty_sessions`` sessions only: later
sessions behave, so a retry can succeed.

Faults:

- ``rcpt_fault``: ``"drop"`` closes the connection without a reply, ``"421"``
  answers ``421 4.3.2`` and closes, at the ``fault_at_rcpt``-th RCPT of a session;
- ``lmtp_replies``: an LMTP server (``lmtp=True``) that sends only this many of
  its per-recipient replies to the content (all 250), then closes;
- ``data_delay``: seconds to wait before the reply to the end of the content; a
  client that hung up meanwhile gets no 250 and the message is not kept (a real
  MTA that had already committed it would deliver it, and the sender's retry
  would make a duplicate: the one DESIGN §4.4 allows).

Every wait is bounded: sockets have a timeout, the accept loop polls its stop flag.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass, field

from gmta.errors import SMTPError
from gmta.proto.events import CLOSED, NEED_DATA, BodyChunk, Mail, MessageEnd, Rcpt
from gmta.proto.server import ServerConnection

SOCKET_TIMEOUT = 30.0
ACCEPT_POLL = 0.2
HOLD_POLL = 0.1


def _client_gone(sock: socket.socket) -> bool:
    """The client closed its side (EOF is readable) while the reply was held."""
    ready, _, _ = select.select([sock], [], [], 0)
    if not ready:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


@dataclass
class Received:
    """One message the MX accepted (recorded as its 250 is sent)."""

    mail_from: str
    rcpts: list[str]
    data: bytes
    session: int


@dataclass
class ScriptedMX:
    host: str
    port: int
    rcpt_fault: str | None = None
    fault_at_rcpt: int = 2
    data_delay: float = 0.0
    faulty_sessions: int = 1
    lmtp: bool = False
    lmtp_replies: int | None = None
    received: list[Received] = field(default_factory=list)
    sessions: int = 0
    #: What each session saw of the RCPTs (accepted or not), per session.
    rcpts_seen: list[list[str]] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        #: Set when a session starts holding the reply to the content (``data_delay``).
        self.holding = threading.Event()
        self._lock = threading.Lock()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._listener = socket.socket(family)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, self.port))
        self._listener.listen(16)
        self._listener.settimeout(ACCEPT_POLL)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.sessions += 1
                number = self.sessions
                self.rcpts_seen.append([])
            threading.Thread(target=self._serve, args=(sock, number), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        faulty = number <= self.faulty_sessions
        sock.settimeout(SOCKET_TIMEOUT)
        machine = ServerConnection("scripted.mx.test", lmtp=self.lmtp)
        mail_from, rcpts, data = "", [], bytearray()
        try:
            while (event := machine.next_event()) is not CLOSED:
                if event is NEED_DATA:
                    sock.sendall(machine.data_to_send())
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    machine.receive_data(chunk)
                    continue
                if isinstance(event, Mail):
                    mail_from, rcpts, data = event.address, [], bytearray()
                elif isinstance(event, Rcpt):
                    self.rcpts_seen[number - 1].append(event.address)
                    if faulty and self.rcpt_fault and len(rcpts) + 1 == self.fault_at_rcpt:
                        if self.rcpt_fault == "421":
                            machine.reject(SMTPError(421, (4, 3, 2), "Scripted: closing"))
                            sock.sendall(machine.data_to_send())
                        return   # "drop": no reply at all
                    rcpts.append(event.address)
                elif isinstance(event, BodyChunk):
                    data += event.data
                elif isinstance(event, MessageEnd) and event.error is None:
                    if faulty and self.data_delay:
                        self.holding.set()
                        if not self._hold(sock, self.data_delay):
                            return   # nobody to take the 250: the message is not kept
                    if faulty and self.lmtp_replies is not None:
                        machine.reply_per_recipient([None] * len(rcpts))
                        lines = machine.data_to_send().split(b"\r\n")
                        self._answer_content(sock, b"".join(
                            line + b"\r\n" for line in lines[:self.lmtp_replies]),
                            Received(mail_from, rcpts[:self.lmtp_replies], bytes(data), number))
                        return
                    if self.lmtp:
                        machine.reply_per_recipient([None] * len(rcpts))
                    else:
                        machine.accept()
                    self._answer_content(sock, machine.data_to_send(),
                                         Received(mail_from, rcpts, bytes(data), number))
                    continue
                if event.needs_answer:
                    machine.accept()
                sock.sendall(machine.data_to_send())
            sock.sendall(machine.data_to_send())
        except OSError:
            pass   # the client went away: its business
        finally:
            sock.close()

    def _answer_content(self, sock: socket.socket, reply: bytes, received: Received) -> None:
        """Record *received*, then send *reply* (its 250s). Recorded first: a client that
        has read the 250 finds the message in ``received`` at once. A send that fails
        (the client went away) withdraws it."""
        with self._lock:
            self.received.append(received)
        try:
            sock.sendall(reply)
        except OSError:
            with self._lock:
                self.received[:] = [r for r in self.received if r is not received]
            raise

    def _hold(self, sock: socket.socket, seconds: float) -> bool:
        """Wait *seconds* before replying; False as soon as the client hangs up."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stop.is_set():
            if _client_gone(sock):
                return False
            self._stop.wait(HOLD_POLL)
        return not _client_gone(sock)

    def messages_for(self, rcpt: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if rcpt in r.rcpts]

    def wait_for(self, rcpt: str, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.messages_for(rcpt)
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"the scripted MX got nothing for {rcpt}: {self.received}")

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=5)
