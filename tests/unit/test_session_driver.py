"""The server session driver (``gmta.net.session``) over a socketpair, and ``gmta.net``'s
listeners and TLS contexts.

The unit under test is the driver, so its handler is a fake that records the
calls and refuses what a test tells it to. Client and driver are greenlets of
one process; every wait is bounded by a gevent.Timeout.
"""

from __future__ import annotations

import logging
import os
import socket as stdlib_socket
import ssl

import gevent
import gevent.queue
import gevent.ssl
import pytest
from gevent import socket

import gmta.log
import gmta.net.tls
from tests.unit.logcapture import captured_log
from gmta.config.tls import TLSClientConfig, TLSProtocolSettings, TLSServerConfig
from gmta.config.values import Endpoint
from gmta.errors import SMTPError
from gmta.net import listen
from gmta.net.session import SessionDriver
from gmta.proto.server import ServerConnection

HOST = "mx.test"
WAIT = 5.0


class FakeHandler:
    """Records every call; ``refuse[name]`` is raised by the method *name*."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.refuse: dict[str, BaseException] = {}
        self.results = None        # what message_end returns (LMTP per recipient)
        self.on: dict[str, object] = {}  # name -> callable run inside the method

    def _call(self, name, *args):
        self.calls.append((name, *args))
        if name in self.on:
            self.on[name]()
        if name in self.refuse:
            raise self.refuse[name]

    def connected(self):
        self._call("connected")

    def helo(self, name, esmtp):
        self._call("helo", name, esmtp)

    def auth(self, event):
        self._call("auth", event.username)

    def mail(self, event):
        self._call("mail", event.address)

    def rcpt(self, event):
        self._call("rcpt", event.address)

    def data_start(self):
        self._call("data_start")

    def body_chunk(self, data):
        self._call("body_chunk", data)

    def message_end(self):
        self._call("message_end")
        return self.results

    def transaction_ended(self):
        self._call("transaction_ended")

    def tls_started(self, sock):
        self._call("tls_started", type(sock).__name__, sock.version())

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def body(self) -> bytes:
        return b"".join(c[1] for c in self.calls if c[0] == "body_chunk")


class Client:
    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One whole reply (all its lines, joined by newlines)."""
        lines = []
        with gevent.Timeout(WAIT):
            while True:
                while b"\r\n" not in self.buffer:
                    data = self.sock.recv(65536)
                    if not data:
                        raise EOFError(f"closed after {lines!r} {self.buffer!r}")
                    self.buffer += data
                line, self.buffer = self.buffer.split(b"\r\n", 1)
                lines.append(line.decode())
                if line[3:4] != b"-":
                    return "\n".join(lines)

    def replies(self, n: int) -> list[str]:
        return [self.reply() for _ in range(n)]

    def say(self, data: bytes) -> str:
        self.send(data)
        return self.reply()

    def nothing_within(self, seconds: float) -> bool:
        """True if the server sends nothing for *seconds*."""
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(1)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(None)
        self.buffer += data
        return False


class Session:
    def __init__(self, *, handler=None, read_timeout=WAIT, write_timeout=WAIT, io_debug=False,
                 tls_context=None, log=None, **options):
        self.server_sock, client_sock = socket.socketpair()
        self.client = Client(client_sock)
        self.handler = handler or FakeHandler()
        self.conn = ServerConnection(HOST, **options)
        kwargs = {"log": log} if log is not None else {}
        self.driver = SessionDriver(self.server_sock, self.conn, self.handler,
                                    read_timeout=read_timeout, write_timeout=write_timeout,
                                    tls_context=tls_context, io_debug=io_debug,
                                    session_id="sess1", **kwargs)
        self.greenlet = gevent.spawn(self.driver.run)

    def wait(self):
        """Wait for run() to return; re-raise what it raised."""
        return self.greenlet.get(timeout=WAIT)

    def close(self):
        self.greenlet.kill(block=True, timeout=WAIT)
        for sock in (self.client.sock, self.server_sock, self.driver.sock):
            try:
                sock.close()
            except OSError:
                pass


@pytest.fixture
def session():
    made = []

    def make(**options) -> Session:
        s = Session(**options)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def ready(session):
    """A session past the banner and EHLO."""
    def make(**options) -> Session:
        s = session(**options)
        assert s.client.reply().startswith("220 ")
        assert s.client.say(b"EHLO client.test\r\n").startswith("250-mx.test")
        return s
    return make


@pytest.fixture
def log_lines():
    """Debug level too: the driver's events of interest are debug events."""
    with captured_log(logging.DEBUG) as lines:
        yield lines


MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"


# -- the dialogue ---------------------------------------------------------------------------

def test_banner_then_quit(session):
    s = session()
    assert s.client.reply() == "220 mx.test ESMTP Service Ready"
    assert s.handler.calls == [("connected",)]
    assert s.client.say(b"QUIT\r\n") == "221 2.0.0 Bye"
    s.wait()    # run() returns; closing the socket is the endpoint's job
    assert s.greenlet.successful()
    assert "transaction_ended" not in s.handler.names()


def test_refused_connection_gets_the_reply_and_ends(session):
    s = session()
    s.handler.refuse["connected"] = SMTPError(554, (5, 7, 1), "Go away")
    # refuse is set before the greenlet ran: the banner is the refusal.
    assert s.client.reply() == "554 5.7.1 Go away"
    s.wait()


def test_helo_and_ehlo_reach_the_handler(session):
    s = session()
    s.client.reply()
    assert s.client.say(b"HELO old.test\r\n") == "250 mx.test Hello old.test"
    assert s.client.say(b"EHLO new.test\r\n").startswith("250-mx.test Hello new.test\n250-PIPELINING")
    assert s.handler.calls[1:] == [("helo", "old.test", False), ("helo", "new.test", True)]


def test_auth_reaches_the_handler(session):
    s = session(auth_mechanisms=("PLAIN",), auth_requires_tls=False)
    s.client.reply()
    s.client.say(b"EHLO c.test\r\n")
    # AUTH PLAIN \0alice\0secret
    assert s.client.say(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n").startswith("235 2.7.0")
    assert s.handler.calls[-1] == ("auth", "alice")


def test_auth_refused_by_the_handler(session):
    s = session(auth_mechanisms=("PLAIN",), auth_requires_tls=False)
    s.handler.refuse["auth"] = SMTPError(535, (5, 7, 8), "Invalid credentials")
    s.client.reply()
    s.client.say(b"EHLO c.test\r\n")
    assert s.client.say(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n") == \
        "535 5.7.8 Invalid credentials"


def test_lhlo_is_esmtp(session):
    s = session(lmtp=True)
    s.client.reply()
    assert s.client.say(b"LHLO client.test\r\n").startswith("250-")
    assert s.handler.calls[1] == ("helo", "client.test", True)


def test_pipelined_transaction(ready):
    s = ready()
    s.client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\n"
                  b"DATA\r\n")
    assert [r[:3] for r in s.client.replies(4)] == ["250", "250", "250", "354"]
    s.client.send(MESSAGE + b".\r\n")
    assert s.client.reply() == "250 2.0.0 OK: queued"
    assert s.handler.names()[2:6] == ["mail", "rcpt", "rcpt", "data_start"]
    assert s.handler.calls[2:5] == [("mail", "a@x.test"), ("rcpt", "b@x.test"),
                                    ("rcpt", "c@x.test")]
    assert s.handler.body() == MESSAGE
    assert s.handler.names()[-2:] == ["message_end", "transaction_ended"]
    s.client.send(b"QUIT\r\n")
    assert s.client.reply().startswith("221")
    s.wait()
    assert s.handler.names().count("transaction_ended") == 1


def test_whole_session_in_one_write(session):
    s = session()
    s.client.send(b"EHLO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
                  + MESSAGE + b".\r\nQUIT\r\n")
    codes = [r[:3] for r in s.client.replies(7)]
    assert codes == ["220", "250", "250", "250", "354", "250", "221"]
    s.wait()
    assert s.handler.calls[2] == ("mail", "")


def test_dot_stuffing_is_undone_before_the_handler(ready):
    s = ready()
    s.client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
    s.client.replies(3)
    s.client.send(b"\r\n..dot\r\n.\r\n")
    assert s.client.reply().startswith("250")
    assert s.handler.body() == b"\r\n.dot\r\n"


@pytest.mark.parametrize("method, command", [
    ("mail", b"MAIL FROM:<a@x.test>\r\n"),
    ("helo", b"EHLO again.test\r\n"),
])
def test_handler_refusal_becomes_the_reply(ready, method, command):
    s = ready()
    s.handler.refuse[method] = SMTPError(451, (4, 7, 1), "Not now")
    assert s.client.say(command) == "451 4.7.1 Not now"


def test_refused_recipient_and_accepted_one(ready):
    s = ready()
    assert s.client.say(b"MAIL FROM:<a@x.test>\r\n").startswith("250")
    s.handler.refuse["rcpt"] = SMTPError(550, (5, 1, 1), "No such user")
    assert s.client.say(b"RCPT TO:<nobody@x.test>\r\n") == "550 5.1.1 No such user"
    del s.handler.refuse["rcpt"]
    assert s.client.say(b"RCPT TO:<b@x.test>\r\n").startswith("250")
    assert s.client.say(b"DATA\r\n").startswith("354")


def test_refused_message_end_and_the_transaction_ends(ready):
    s = ready()
    s.client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
    s.client.replies(3)
    s.handler.refuse["message_end"] = SMTPError(554, (5, 6, 0), "Bad message")
    assert s.client.say(MESSAGE + b".\r\n") == "554 5.6.0 Bad message"
    assert s.handler.names()[-2:] == ["message_end", "transaction_ended"]
    # The session goes on.
    assert s.client.say(b"NOOP\r\n").startswith("250")


def test_lmtp_results_per_recipient(session):
    s = session(lmtp=True)
    s.client.reply()
    s.client.say(b"LHLO c.test\r\n")
    s.client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n")
    s.client.replies(4)
    s.handler.results = [None, SMTPError(452, (4, 2, 2), "Mailbox full")]
    s.client.send(MESSAGE + b".\r\n")
    assert s.client.replies(2) == ["250 2.0.0 <b@x.test> OK: queued", "452 4.2.2 Mailbox full"]


def test_rset_ends_the_transaction(ready):
    s = ready()
    s.client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n")
    s.client.replies(2)
    assert "transaction_ended" not in s.handler.names()
    assert s.client.say(b"RSET\r\n") == "250 2.0.0 Session reset"
    assert s.handler.names()[-1] == "transaction_ended"


def test_message_refused_by_the_machine_does_not_reach_message_end(ready, log_lines):
    s = ready(max_message_size=10)
    s.client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
    s.client.replies(3)
    assert s.client.say(b"x" * 100 + b"\r\n.\r\n") == "552 5.3.4 Max message size exceeded"
    assert "message_end" not in s.handler.names()
    assert s.handler.names()[-1] == "transaction_ended"
    assert any("event=message_refused session=sess1" in line for line in log_lines)


def test_protocol_error_is_logged_at_debug(ready, log_lines):
    s = ready()
    assert s.client.say(b"BOGUS\r\n").startswith("500")
    assert any(line.startswith("module=session event=protocol_error session=sess1")
               for line in log_lines)


def test_handler_bug_is_a_temporary_refusal(ready, log_lines):
    """A handler raising something other than SMTPError is a bug in gmta: the client
    gets 451 4.3.0 (DESIGN §3: treat it as temporary), the log says what broke, and
    the session goes on."""
    s = ready()
    s.client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n")
    s.client.replies(2)
    s.handler.refuse["data_start"] = RuntimeError("bug")
    s.client.send(b"DATA\r\n")
    assert s.client.reply() == "451 4.3.0 Internal error, try again later"
    assert any("event=handler_failed" in line and "RuntimeError" in line for line in log_lines)
    s.client.send(b"RSET\r\n")
    assert s.client.reply().startswith("250")


# -- the client going away and timeouts ---------------------------------------------------------

def test_client_disconnect_while_idle(ready, log_lines):
    s = ready()
    s.client.sock.close()
    s.wait()
    assert "transaction_ended" not in s.handler.names()
    assert any("event=client_gone session=sess1 reason=\"connection closed by client\"" in line
               for line in log_lines)


def test_client_disconnect_mid_data_ends_the_transaction(ready):
    s = ready()
    s.client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
    s.client.replies(3)
    s.client.send(b"Subject: cut\r\n\r\n" + b"x" * 998 + b"\r\n" + b"y" * 500)
    gevent.sleep(0.05)
    s.client.sock.close()
    s.wait()
    assert s.handler.body().startswith(b"Subject: cut\r\n\r\n")
    assert "message_end" not in s.handler.names()
    assert s.handler.names().count("transaction_ended") == 1
    assert s.handler.names()[-1] == "transaction_ended"


def test_client_disconnect_after_mail(ready):
    s = ready()
    s.client.say(b"MAIL FROM:<a@x.test>\r\n")
    s.client.sock.close()
    s.wait()
    assert s.handler.names()[-1] == "transaction_ended"


def test_reply_to_a_client_that_left(ready):
    """A write to a closed socket ends the session quietly (no exception from run())."""
    s = ready()
    s.client.send(b"NOOP\r\nNOOP\r\n")
    s.client.sock.close()
    s.wait()


def test_idle_timeout_says_421_and_ends(ready, log_lines):
    s = ready(read_timeout=0.1)
    assert s.client.reply() == "421 4.4.2 Idle timeout, bye bye"
    s.wait()
    assert any('reason="idle timeout"' in line for line in log_lines)


def test_idle_timeout_mid_data_ends_the_transaction(ready):
    s = ready(read_timeout=0.1)
    s.client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
    assert [r[:3] for r in s.client.replies(3)] == ["250", "250", "354"]
    s.client.send(b"Subject: slow\r\n")
    assert s.client.reply() == "421 4.4.2 Idle timeout, bye bye"
    s.wait()
    assert s.handler.names()[-1] == "transaction_ended"


def test_read_timeout_applies_to_each_read_not_the_session(ready):
    s = ready(read_timeout=0.1)
    for _ in range(3):
        gevent.sleep(0.06)
        assert s.client.say(b"NOOP\r\n").startswith("250")


class StuckSocket:
    """A socket whose peer never reads: every write blocks."""

    def __init__(self, sock):
        self.sock = sock

    def __getattr__(self, name):
        return getattr(self.sock, name)

    def sendall(self, data):
        gevent.sleep(10)


def test_write_timeout(session):
    s = session(write_timeout=0.1)
    s.driver.sock = StuckSocket(s.server_sock)   # before the greenlet first runs
    s.wait()    # the banner could not be written: the session is over
    assert s.handler.calls == [("connected",)]


# -- stopping -------------------------------------------------------------------------------------

def test_request_stop_on_an_idle_session_says_421_at_once(ready):
    s = ready()
    gevent.sleep(0.01)
    assert s.driver.idle
    s.driver.request_stop(s.greenlet)
    assert s.client.reply() == "421 4.3.2 Service shutting down, try again later"
    s.wait()
    assert s.greenlet.successful()
    assert "transaction_ended" not in s.handler.names()


def test_request_stop_during_a_transaction_finishes_it_first(ready):
    s = ready()
    s.client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n")
    s.client.replies(2)
    gevent.sleep(0.01)
    assert not s.driver.idle
    s.driver.request_stop(s.greenlet)
    assert s.client.nothing_within(0.1)
    assert not s.greenlet.dead
    assert s.client.say(b"DATA\r\n").startswith("354")
    s.client.send(MESSAGE + b".\r\n")
    assert s.client.reply() == "250 2.0.0 OK: queued"
    assert s.client.reply() == "421 4.3.2 Service shutting down, try again later"
    s.wait()
    assert "message_end" in s.handler.names()
    assert s.handler.names()[-1] == "transaction_ended"


def test_request_stop_while_a_handler_works(session):
    """Outside a transaction but busy (not reading): the reply goes out, then 421."""
    s = session()
    s.client.reply()

    def stop_now():
        s.driver.request_stop(s.greenlet)

    s.handler.on["helo"] = stop_now
    s.client.send(b"EHLO c.test\r\n")
    assert s.client.reply().startswith("250-")
    assert s.client.reply().startswith("421 4.3.2")
    s.wait()


def test_commands_already_received_are_answered_before_the_421(session):
    s = session()
    s.client.reply()
    s.handler.on["helo"] = lambda: s.driver.request_stop(s.greenlet)
    s.client.send(b"EHLO c.test\r\nNOOP\r\n")
    assert s.client.reply().startswith("250-")
    assert s.client.reply().startswith("250 2.0.0")
    assert s.client.reply().startswith("421 4.3.2")
    s.wait()


class QueueSocket:
    """A socket fed from a gevent queue, so a test decides what the hub runs first."""

    def __init__(self):
        self.inbox = gevent.queue.Queue()
        self.sent = bytearray()

    def recv(self, size):
        return self.inbox.get()

    def sendall(self, data):
        self.sent += data

    def settimeout(self, timeout):
        pass

    def close(self):
        pass

    def replies(self) -> list[str]:
        return [line[:3] for line in self.sent.decode().split("\r\n") if line[3:4] == " "]


def test_stop_racing_with_a_command_lets_the_transaction_finish(session):
    """The stop reaches the session through the hub: if a command got there first
    and began a transaction, that transaction still finishes before the 421."""
    s = session()
    sock = s.driver.sock = QueueSocket()      # before the greenlet first runs
    sock.inbox.put(b"EHLO c.test\r\n")
    gevent.sleep(0.01)
    assert s.driver.idle and sock.replies() == ["220", "250"]
    # The MAIL wakes the session before the stop does (gevent runs callbacks in order).
    sock.inbox.put(b"MAIL FROM:<a@x.test>\r\n")
    s.driver.request_stop(s.greenlet)
    gevent.sleep(0.01)
    assert not s.greenlet.dead
    assert sock.replies() == ["220", "250", "250"]
    sock.inbox.put(b"RCPT TO:<b@x.test>\r\nDATA\r\n")
    sock.inbox.put(MESSAGE + b".\r\n")
    s.wait()
    assert sock.replies() == ["220", "250", "250", "250", "354", "250", "421"]
    assert "message_end" in s.handler.names()


class ResetSocket(QueueSocket):
    """recv fails as a reset connection does; sendall fails once the peer is gone."""

    def __init__(self, send_fails=False):
        super().__init__()
        self.send_fails = send_fails

    def recv(self, size):
        data = self.inbox.get()
        if isinstance(data, BaseException):
            raise data
        return data

    def sendall(self, data):
        if self.send_fails:
            raise BrokenPipeError(32, "Broken pipe")
        super().sendall(data)


def test_connection_reset_ends_the_session(session, log_lines):
    s = session()
    sock = s.driver.sock = ResetSocket()
    sock.inbox.put(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n")
    sock.inbox.put(ConnectionResetError(104, "Connection reset by peer"))
    s.wait()
    assert s.handler.names()[-1] == "transaction_ended"
    assert any('reason="[Errno 104] Connection reset by peer"' in line for line in log_lines)


def test_goodbye_to_a_client_that_left_is_quiet(session):
    s = session()
    sock = s.driver.sock = ResetSocket()
    sock.inbox.put(b"NOOP\r\n")
    gevent.sleep(0.01)
    sock.send_fails = True
    s.driver.request_stop(s.greenlet)
    s.wait()     # the 421 could not be written: no error from run()


# -- io_debug ---------------------------------------------------------------------------------------

def test_io_debug_logs_both_directions(session, log_lines):
    s = session(io_debug=True, log=gmta.log.get("endpoint"))
    s.client.reply()
    s.client.say(b"NOOP\r\n")
    io = [line for line in log_lines if "event=io" in line]
    assert io[0] == ('module=endpoint event=io session=sess1 direction=out '
                     'data="220 mx.test ESMTP Service Ready\\r\\n"')
    assert io[1] == 'module=endpoint event=io session=sess1 direction=in data="NOOP\\r\\n"'
    assert io[2].startswith('module=endpoint event=io session=sess1 direction=out data="250 2.0.0')


def test_io_debug_off_logs_no_io(session, log_lines):
    s = session()
    s.client.reply()
    s.client.say(b"NOOP\r\n")
    assert not [line for line in log_lines if "event=io" in line]


def test_io_debug_with_invalid_utf8(session, log_lines):
    s = session(io_debug=True)
    s.client.reply()
    s.client.say(b"NOOP \xff\r\n")
    assert any('direction=in data="NOOP \ufffd\\r\\n"' in line for line in log_lines)


# -- STARTTLS ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server_tls():
    import gevent.ssl as gssl
    saved = gmta.net.tls.ssl
    gmta.net.tls.ssl = gssl
    try:
        return gmta.net.tls.server_context(TLSServerConfig("self_signed"), HOST)
    finally:
        gmta.net.tls.ssl = saved


def client_tls():
    saved = gmta.net.tls.ssl
    gmta.net.tls.ssl = gevent.ssl
    try:
        return gmta.net.tls.client_context(None, verify=False)
    finally:
        gmta.net.tls.ssl = saved


def start_tls(s: Session) -> None:
    assert s.client.say(b"STARTTLS\r\n") == "220 2.0.0 Ready to start TLS"
    with gevent.Timeout(WAIT):
        s.client.sock = client_tls().wrap_socket(s.client.sock, server_hostname=HOST)


def test_starttls(ready, server_tls):
    s = ready(tls_context=server_tls, tls_available=True)
    start_tls(s)
    assert s.client.sock.version() in ("TLSv1.2", "TLSv1.3")
    cert = s.client.sock.getpeercert(binary_form=True)
    assert cert
    ehlo = s.client.say(b"EHLO client.test\r\n")
    assert ehlo.startswith("250-mx.test") and "STARTTLS" not in ehlo
    [tls_call] = [c for c in s.handler.calls if c[0] == "tls_started"]
    assert tls_call[1] == "SSLSocket" and tls_call[2] == s.client.sock.version()
    assert s.client.say(b"MAIL FROM:<a@x.test>\r\n").startswith("250")
    assert s.client.say(b"QUIT\r\n").startswith("221")
    s.wait()


def test_starttls_offered_only_with_tls(ready, server_tls):
    s = ready(tls_context=server_tls, tls_available=True)
    assert "STARTTLS" in s.client.say(b"EHLO c.test\r\n")


def test_bytes_pipelined_after_starttls_are_discarded(ready, server_tls):
    s = ready(tls_context=server_tls, tls_available=True)
    s.client.send(b"STARTTLS\r\nMAIL FROM:<injected@x.test>\r\n")
    assert s.client.reply().startswith("220")
    with gevent.Timeout(WAIT):
        s.client.sock = client_tls().wrap_socket(s.client.sock, server_hostname=HOST)
    assert s.client.say(b"EHLO c.test\r\n").startswith("250-")
    assert "mail" not in s.handler.names()
    assert s.client.say(b"RCPT TO:<b@x.test>\r\n").startswith("503")   # no MAIL went through


def test_failed_handshake_ends_the_session(ready, server_tls, log_lines):
    s = ready(tls_context=server_tls, tls_available=True)
    assert s.client.say(b"STARTTLS\r\n").startswith("220")
    s.client.send(b"this is not a TLS client hello\r\n" * 10)
    s.wait()
    assert "tls_started" not in s.handler.names()
    assert any("TLS handshake failed" in line for line in log_lines)


def test_handshake_timeout(ready, server_tls, log_lines):
    s = ready(tls_context=server_tls, tls_available=True, write_timeout=0.1)
    assert s.client.say(b"STARTTLS\r\n").startswith("220")
    s.wait()    # the client never says hello
    assert any("TLS handshake timeout" in line for line in log_lines)


def test_idle_timeout_after_starttls_says_421(ready, server_tls):
    s = ready(tls_context=server_tls, tls_available=True, read_timeout=0.2)
    start_tls(s)
    assert s.client.reply() == "421 4.4.2 Idle timeout, bye bye"
    s.wait()


def test_stop_after_starttls(ready, server_tls):
    s = ready(tls_context=server_tls, tls_available=True)
    start_tls(s)
    gevent.sleep(0.05)
    s.driver.request_stop(s.greenlet)
    assert s.client.reply().startswith("421 4.3.2")
    s.wait()


# -- TLS contexts ----------------------------------------------------------------------------------

def test_tls_off_has_no_context():
    assert gmta.net.tls.server_context(TLSServerConfig("off"), HOST) is None


def test_self_signed_context(server_tls):
    assert isinstance(server_tls, ssl.SSLContext)
    assert server_tls.minimum_version == ssl.TLSVersion.TLSv1_2


def test_self_signed_certificate_names_the_host():
    from cryptography import x509
    cert_pem, key_pem = gmta.net.tls.self_signed_pem("mx.example.org")
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mx.example.org"]
    assert b"PRIVATE KEY" in key_pem


def test_self_signed_leaves_no_key_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    gmta.net.tls.server_context(TLSServerConfig("self_signed"), HOST)
    assert os.listdir(tmp_path) == []


def test_protocol_settings_are_applied():
    settings = TLSProtocolSettings("tls1.3", "tls1.3", ciphers=("ECDHE+AESGCM",),
                                   curves=("prime256v1",))
    context = gmta.net.tls.server_context(TLSServerConfig("self_signed", settings=settings), HOST)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.maximum_version == ssl.TLSVersion.TLSv1_3
    names = {c["name"] for c in context.get_ciphers()}
    assert "ECDHE-ECDSA-AES128-GCM-SHA256" in names or "ECDHE-RSA-AES128-GCM-SHA256" in names
    assert not any("CHACHA20" in n and not n.startswith("TLS_") for n in names)


def test_protocol_range_can_lower_the_minimum():
    settings = TLSProtocolSettings("tls1.2", "tls1.2")
    context = gmta.net.tls.server_context(TLSServerConfig("self_signed", settings=settings), HOST)
    assert (context.minimum_version, context.maximum_version) == (
        ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)


def test_file_certificates(tmp_path):
    cert, key = gmta.net.tls.self_signed_pem(HOST)
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    config = TLSServerConfig("file", ((str(tmp_path / "c.pem"), str(tmp_path / "k.pem")),))
    assert isinstance(gmta.net.tls.server_context(config, HOST), ssl.SSLContext)


def test_client_context_verify_off():
    context = gmta.net.tls.client_context(None, verify=False)
    assert context.verify_mode == ssl.CERT_NONE
    assert context.check_hostname is False


def test_client_context_verifies_by_default():
    context = gmta.net.tls.client_context(None)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


def test_client_context_settings_and_root_ca(tmp_path):
    cert, key = gmta.net.tls.self_signed_pem("ca.test")
    (tmp_path / "ca.pem").write_bytes(cert)
    config = TLSClientConfig(root_cas=(str(tmp_path / "ca.pem"),),
                             settings=TLSProtocolSettings("tls1.2", "tls1.3"))
    context = gmta.net.tls.client_context(config)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert context.cert_store_stats()["x509"] == 1   # only the given CA, not the system's


def test_client_context_with_a_client_certificate(tmp_path):
    cert, key = gmta.net.tls.self_signed_pem("client.test")
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    config = TLSClientConfig(cert=str(tmp_path / "c.pem"), key=str(tmp_path / "k.pem"))
    assert isinstance(gmta.net.tls.client_context(config, verify=False), ssl.SSLContext)


def test_client_verifies_the_self_signed_certificate_against_itself(ready, tmp_path):
    """With verification on and the server's own certificate as CA, the handshake
    succeeds: the self-signed certificate carries the host name."""
    cert, key = gmta.net.tls.self_signed_pem(HOST)
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    saved = gmta.net.tls.ssl
    gmta.net.tls.ssl = gevent.ssl
    try:
        server = gmta.net.tls.server_context(
            TLSServerConfig("file", ((str(tmp_path / "c.pem"), str(tmp_path / "k.pem")),)), HOST)
        client = gmta.net.tls.client_context(TLSClientConfig(root_cas=(str(tmp_path / "c.pem"),)))
    finally:
        gmta.net.tls.ssl = saved
    s = ready(tls_context=server, tls_available=True)
    assert s.client.say(b"STARTTLS\r\n").startswith("220")
    with gevent.Timeout(WAIT):
        s.client.sock = client.wrap_socket(s.client.sock, server_hostname=HOST)
    assert s.client.say(b"NOOP\r\n").startswith("250")


# -- listeners ----------------------------------------------------------------------------------------

def test_tcp_listener_on_port_zero():
    seen = []

    def handler(sock, peer):
        seen.append(peer)
        sock.sendall(b"hi")
        sock.close()            # the handler owns the socket (listen.SessionServer)

    endpoint = Endpoint("tcp", "127.0.0.1", 0)
    server = listen.serve(endpoint, handler)
    try:
        address = listen.local_address(server, endpoint)
        assert address.startswith("tcp://127.0.0.1:") and not address.endswith(":0")
        port = int(address.rsplit(":", 1)[1])
        with gevent.Timeout(WAIT):
            client = socket.create_connection(("127.0.0.1", port))
            assert client.recv(2) == b"hi"
            client.close()
        assert seen and seen[0][0] == "127.0.0.1"
    finally:
        server.stop(timeout=1)


def test_ipv6_listener():
    if not stdlib_socket.has_ipv6:
        pytest.skip("no IPv6")
    endpoint = Endpoint("tcp", "::1", 0)
    try:
        server = listen.serve(endpoint, lambda sock, peer: sock.close())
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        assert listen.local_address(server, endpoint).startswith("tcp://[::1]:")
    finally:
        server.stop(timeout=1)


def test_port_in_use_names_the_address():
    first = listen.bind(Endpoint("tcp", "127.0.0.1", 0))
    port = first.getsockname()[1]
    try:
        # SO_REUSEADDR does not allow two listeners on one port.
        with pytest.raises(OSError) as e:
            listen.bind(Endpoint("tcp", "127.0.0.1", port))
        assert str(e.value).endswith(f"cannot listen on tcp://127.0.0.1:{port}: "
                                     "Address already in use")
    finally:
        first.close()


def test_unix_listener_creates_its_directory_and_replaces_a_stale_socket(tmp_path):
    path = str(tmp_path / "run" / "lmtp.sock")
    endpoint = Endpoint("unix", path=path)
    stale = listen.bind(endpoint)
    stale.close()           # the file stays, as after a crash
    assert os.path.exists(path)

    def handler(sock, peer):
        sock.sendall(b"ok")
        sock.close()

    server = listen.serve(endpoint, handler)
    try:
        assert listen.local_address(server, endpoint) == f"unix://{path}"
        with gevent.Timeout(WAIT):
            client = socket.socket(stdlib_socket.AF_UNIX)
            client.connect(path)
            assert client.recv(2) == b"ok"
            client.close()
    finally:
        server.stop(timeout=1)


def test_unix_listener_never_removes_a_regular_file(tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("precious")
    with pytest.raises(OSError) as e:
        listen.bind(Endpoint("unix", path=str(path)))
    assert "a file is in the way" in str(e.value)
    assert path.read_text() == "precious"


def test_unix_path_too_long_says_why(tmp_path):
    path = str(tmp_path / ("x" * 120 + ".sock"))
    with pytest.raises(OSError) as e:
        listen.bind(Endpoint("unix", path=path))
    assert str(e.value) == f"cannot listen on unix://{path}: AF_UNIX path too long"


def test_unix_listener_in_a_missing_place(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        listen.bind(Endpoint("unix", path=str(tmp_path / "file" / "x.sock")))
