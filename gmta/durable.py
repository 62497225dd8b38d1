"""Durable file writes that never block the gevent hub (DESIGN §4.1–§4.2).

``fsync`` and large writes do not yield to the hub even with monkey-patching,
so they run in gevent's threadpool: one slow disk freezes one thread, not
every session.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

import gevent
from gevent.event import AsyncResult

T = TypeVar("T")


def in_threadpool(fn: Callable[..., T], *args) -> T:
    """Run ``fn(*args)`` in the hub's threadpool and wait for it (re-raising its error).

    The error travels back as a value: raised inside the pool, gevent would
    also print it as a traceback, and a failed write is an event the caller
    logs as one ``key=value`` line.
    """
    def call():
        try:
            return True, fn(*args)
        except Exception as e:
            return False, e

    ok, value = gevent.get_hub().threadpool.apply(call)
    if not ok:
        raise value
    return value


def fsync_dir(path: str) -> None:
    """Make a rename or a new entry in *path* durable (the entry lives in the directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectorySync:
    """Group commit for one directory: one ``fsync`` covers every rename before it.

    A rename is durable once its directory is fsynced *after* it. When many
    sessions commit at once, each does not need a sync of its own: a waiter
    that arrives while a sync runs (which may have started before its
    rename) joins the *next* sync, and everyone who joined it is released by
    that single ``fsync``. Under load this turns one directory flush per
    message into one per batch; an idle system still syncs at once.

    Only greenlets of one hub use an instance, so no lock is needed.
    """

    def __init__(self, path: str):
        self.path = path
        self._running: AsyncResult | None = None
        self._next: AsyncResult | None = None
        #: Greenlets waiting on a sync; the owner may drop an idle instance.
        self.waiters = 0

    def sync(self) -> None:
        """Return once a sync that started after this call has completed."""
        self.waiters += 1
        try:
            if self._running is None:
                return self._run(AsyncResult())
            if self._next is not None:
                # Someone already leads the next sync; it starts after now.
                return self._next.get()
            mine = self._next = AsyncResult()
            self._running.wait()
            self._next = None
            return self._run(mine)
        finally:
            self.waiters -= 1

    def _run(self, result: AsyncResult) -> None:
        self._running = result
        try:
            in_threadpool(fsync_dir, self.path)
        except OSError as e:
            result.set_exception(e)
        else:
            result.set(None)
        finally:
            if self._running is result:
                self._running = None
        return result.get()


class DirectorySyncs:
    """A :class:`DirectorySync` per directory, kept only while someone waits on it
    (so the map is bounded by the number of concurrent commits)."""

    def __init__(self) -> None:
        self._syncs: dict[str, DirectorySync] = {}

    def sync(self, path: str) -> None:
        syncer = self._syncs.get(path)
        if syncer is None:
            syncer = self._syncs[path] = DirectorySync(path)
        try:
            syncer.sync()
        finally:
            if syncer.waiters == 0 and self._syncs.get(path) is syncer:
                del self._syncs[path]
