"""Telling the scheduling process about a message another process just queued.

With ``workers N`` only worker 0 runs the queue's full scheduler; the others
make the first attempt of what they commit and nothing more. What they do not
finish (a deferral, a busy entry, an attempt they will not start) must reach
the full scheduler, which would otherwise find it at its next rescan — up to
``RESCAN_INTERVAL`` later, and a rescan reads all of ``msg/``. So the worker
sends the entry's id in one datagram to ``LOCATION/wakeup.sock``, bound by the
scheduler (:class:`WakeupListener`), which takes that one id at once (no scan):
its attempt reads the record and finds when it is next due.

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


def socket_path(spool) -> str:
    return os.path.join(spool.root, SOCKET_NAME)


class WakeupListener:
    """The scheduler's end: calls *on_id(entry_id)* for each id received."""

    def __init__(self, spool, on_id: Callable[[str], None], log):
        self.path = socket_path(spool)
        self.on_id = on_id
        self.log = log
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
            self.log.warning("wakeup_socket_unavailable", path=self.path, error=str(e),
                             hint="other workers' messages are found by the 1 s wakeup poll")
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


def _remove_stale_socket(path: str) -> None:
    # Left by a process that died; only a socket is removed, never another file.
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
