"""Durable file writes that never block the gevent hub (DESIGN §4.1–§4.2).

``fsync`` and large writes do not yield to the hub even with monkey-patching,
so they run in gevent's threadpool: one slow disk freezes one thread, not
every session.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

import gevent
import gevent.monkey
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


# Pool threads are native threads: they need the native lock, not gevent's
# patched one (which is for greenlets of one hub).
_allocate_lock = gevent.monkey.get_original("_thread", "allocate_lock")
#: Striped by directory, so the set stays bounded however many Maildirs there are.
_DIRECTORY_LOCKS = [_allocate_lock() for _ in range(64)]


def create_file(path: str, flags: int, mode: int) -> int:
    """``os.open(path, flags | O_CREAT, mode)``, one thread at a time per directory.

    The kernel creates one file at a time in a directory anyway (it holds the
    directory's lock while it picks an inode, which on ext4 without a journal
    can take long). Pool threads that wait for that lock in the kernel spin on
    it and burn CPU (``rwsem_spin_on_owner``, 10% of gmta's CPU under load in
    perf); waiting here, they sleep.
    """
    with _directory_lock(path):
        return os.open(path, flags | os.O_CREAT, mode)


def rename_out_of(source: str, destination: str) -> None:
    """``os.rename`` under the lock of *source*'s directory (see :func:`create_file`):
    a rename locks both directories, so it too would spin on the source
    directory's lock while another thread creates a file there."""
    with _directory_lock(source):
        os.rename(source, destination)


def _directory_lock(path: str):
    """The native lock for changes to the directory that holds *path*."""
    return _DIRECTORY_LOCKS[hash(os.path.dirname(path)) % len(_DIRECTORY_LOCKS)]


def fsync_dir(path: str) -> None:
    """Make a rename or a new entry in *path* durable (the entry lives in the directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename_and_sync(path: str, renames_per_waiter: list[list[tuple[str, str]]]):
    """In a pool thread: each waiter's renames, then one fsync of *path* for all.

    A waiter's renames run in order and stop at its first failure (a queue
    entry's record must not appear without its message file). Returns each
    waiter's rename error (or None) and the fsync's error (or None).
    """
    errors: list[OSError | None] = []
    for renames in renames_per_waiter:
        error = None
        for source, destination in renames:
            try:
                rename_out_of(source, destination)
            except OSError as e:
                error = e
                break
        errors.append(error)
    try:
        fsync_dir(path)
    except OSError as e:
        return errors, e
    return errors, None


class _SyncGroup:
    """The waiters that one directory fsync releases, with the renames it makes durable."""

    __slots__ = ("renames", "done")

    def __init__(self) -> None:
        self.renames: list[list[tuple[str, str]]] = []
        self.done = AsyncResult()

    def join(self, renames) -> int:
        self.renames.append(list(renames))
        return len(self.renames) - 1


class DirectorySync:
    """Group commit for one directory: one ``fsync`` covers every rename before it.

    A rename is durable once its directory is fsynced *after* it. When many
    sessions commit at once, each does not need a sync of its own: a waiter
    that arrives while a sync runs (which may have started before its
    rename) joins the *next* sync, and everyone who joined it is released by
    that single ``fsync``. Under load this turns one directory flush per
    message into one per batch; an idle system still syncs at once.

    The renames into the directory travel with the sync and run in the same
    pool thread, just before the fsync: one trip to the pool per batch, and
    the hub never waits on the directories' locks, which a pool thread
    creating a file in ``tmp/`` may hold for a long time (bench/README.md).

    Only greenlets of one hub use an instance, so no lock is needed.
    """

    def __init__(self, path: str):
        self.path = path
        self._running: _SyncGroup | None = None
        self._next: _SyncGroup | None = None
        #: Greenlets waiting on a sync; the owner may drop an idle instance.
        self.waiters = 0

    def sync(self, renames=()) -> None:
        """Rename each (source, destination) of *renames* into the directory, in
        order, and return once a sync that started after them has completed.

        Raises the first failed rename's error (the later ones were not made)
        or the fsync's error (the renames were made but may not be durable).
        """
        self.waiters += 1
        try:
            if self._running is None:
                group = _SyncGroup()
                index = group.join(renames)
                self._run(group)
            elif self._next is not None:
                # Someone already leads the next sync; it starts after now.
                group = self._next
                index = group.join(renames)
            else:
                group = self._next = _SyncGroup()
                index = group.join(renames)
                try:
                    self._running.done.wait()
                except BaseException:
                    # Killed while leading: the others who joined still get their sync.
                    if self._next is group:
                        self._next = None
                    gevent.spawn(self._run, group)
                    raise
                if self._next is group:
                    self._next = None
                self._run(group)
            errors, sync_error = group.done.get()
        finally:
            self.waiters -= 1
        if errors[index] is not None:
            raise errors[index]
        if sync_error is not None:
            raise sync_error

    def _run(self, group: _SyncGroup) -> None:
        self._running = group
        try:
            group.done.set(in_threadpool(_rename_and_sync, self.path, group.renames))
        except BaseException as e:
            group.done.set_exception(e)
            raise
        finally:
            if self._running is group:
                self._running = None


class DirectorySyncs:
    """A :class:`DirectorySync` per directory, kept only while someone waits on it
    (so the map is bounded by the number of concurrent commits)."""

    def __init__(self) -> None:
        self._syncs: dict[str, DirectorySync] = {}

    def sync(self, path: str, renames=()) -> None:
        """:meth:`DirectorySync.sync` of *path*."""
        syncer = self._syncs.get(path)
        if syncer is None:
            syncer = self._syncs[path] = DirectorySync(path)
        try:
            syncer.sync(renames)
        finally:
            if syncer.waiters == 0 and self._syncs.get(path) is syncer:
                del self._syncs[path]
