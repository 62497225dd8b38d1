"""Telling the scheduling process about a message another process just queued.

With ``workers N`` only worker 0 runs the queue's full scheduler; the others
make the first attempt of what they commit and nothing more. What they do not
finish (a deferral, a busy entry, an attempt they will not start) must reach
the full scheduler, which would otherwise find it at its next rescan — up to
``RESCAN_INTERVAL`` later, and a rescan reads all of ``msg/``. So the worker
sends the entry's id in one datagram to ``LOCATION/wakeup.sock``, bound by the
scheduler (:class:`WakeupListener`), which takes that one id at once (no scan):
its attempt reads the record and finds when it is next due.

``gmta queue flush|release`` sends ``RESCAN`` to the same socket after it has
touched the ``wakeup`` file, so the scheduler rescans at once instead of at
its next poll of that file (up to ``WAKEUP_POLL`` later). A daemon that does
not own the socket (a second daemon on the same directory) still finds the
file.

A datagram is a hint, never the record: the entry is on disk (fsynced) before
it is sent. When it cannot be sent — no scheduler listening yet (it will scan
at start-up), its receive queue full, a path too long for AF_UNIX — the sender
falls back to touching the ``wakeup`` file, which the scheduler polls every
``WAKEUP_POLL`` seconds and answers with a rescan, so nothing waits for the
periodic rescan.
"""

from __future__ import annotations

import os
import socket as _stdlib_socket
import stat
from typing import Callable

import gevent
from gevent import socket

from gmta.durable import in_threadpool
from gmta.queue.store import valid_id

SOCKET_NAME = "wakeup.sock"
#: One queue id per datagram; ids are short ASCII (gmta.queue.store.new_id).
DATAGRAM_MAX = 256
#: From ``gmta queue``: the wakeup file changed, rescan now.
RESCAN = b"rescan"


def socket_path(spool) -> str:
    return os.path.join(spool.root, SOCKET_NAME)


class WakeupListener:
    """The scheduler's end: calls *on_id(entry_id)* for each id received."""

    def __init__(self, spool, on_id: Callable[[str], None], log,
                 on_rescan: Callable[[], None] | None = None, *, quiet: bool = False):
        self.path = socket_path(spool)
        self.on_id = on_id
        self.on_rescan = on_rescan
        self.log = log
        #: Nobody but `gmta queue` sends here (one process): a socket that cannot be
        #: bound costs a second of latency, not a warning.
        self.quiet = quiet
        self.sock: socket.socket | None = None
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        _remove_stale_socket(self.path)
        sock = socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_DGRAM)
        try:
            sock.bind(self.path)
        except OSError as e:
            # E.g. a queue path longer than AF_UNIX allows (108 bytes): senders
            # then fall back to the wakeup file; only latency suffers.
            sock.close()
            (self.log.info if self.quiet else self.log.warning)(
                "wakeup_socket_unavailable", path=self.path, error=str(e),
                hint="other workers' messages and gmta queue requests are found by the "
                     "1 s wakeup poll")
            return
        self.sock = sock
        self._greenlet = gevent.spawn(self._receive)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=2)
            self._greenlet = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def _receive(self) -> None:
        # Bounded work per datagram; runs until stop() kills it.
        while True:
            data = self.sock.recv(DATAGRAM_MAX)
            if data == RESCAN:
                if self.on_rescan is not None:
                    self.on_rescan()
                continue
            entry_id = data.decode("ascii", "replace").strip()
            if valid_id(entry_id):
                self.on_id(entry_id)
            else:
                self.log.warning("wakeup_ignored", reason="not a queue id",
                                 size=len(data))


class WakeupSender:
    """The other worker's end: one non-blocking datagram per entry handed on."""

    def __init__(self, spool, log):
        self.spool = spool
        self.path = socket_path(spool)
        self.log = log
        self.sock = socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_DGRAM)
        # Never wait: a full receive queue means the scheduler is behind and a
        # rescan (below) serves it better than a queue of hints.
        self.sock.setblocking(False)

    def send(self, entry_id: str) -> None:
        try:
            self.sock.sendto(entry_id.encode("ascii"), self.path)
            return
        except OSError:
            pass
        try:
            in_threadpool(self.spool.request_wakeup)
        except OSError as e:
            # The entry is safe on disk; the scheduler's periodic rescan finds it.
            self.log.error("wakeup_failed", queue_id=entry_id, error=e.strerror or str(e))

    def close(self) -> None:
        self.sock.close()


def ask_for_rescan(spool) -> bool:
    """From ``gmta queue`` (no hub): ask the scheduler on *spool* to rescan now.

    Best effort and never waiting: without a daemon listening, the ``wakeup``
    file (touched first by the caller) is what a daemon finds at its start or
    next poll. Returns whether a scheduler got the request."""
    sock = _stdlib_socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.sendto(RESCAN, socket_path(spool))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _remove_stale_socket(path: str) -> None:
    """Remove a socket left by a process that died; never another file, and never
    the live socket of another daemon on the same directory (its bind() then fails
    here and this scheduler falls back on the wakeup file's poll)."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        return
    probe = _stdlib_socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_DGRAM)
    try:
        probe.connect(path)
        return  # somebody receives there
    except ConnectionRefusedError:
        pass
    except OSError:
        return
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
