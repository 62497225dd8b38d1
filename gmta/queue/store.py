"""The queue's spool on disk: commit order, fsync, locks and start-up recovery.

Layout of a queue directory (``docs/reference/queue.md`` has the details)::

    LOCATION/
      FORMAT        "gmta-queue 1": the layout version, checked at start
      tmp/          files being written; never part of an entry
      msg/ID.msg    the message as received: header, then body (never rewritten)
      msg/ID.meta   the record (JSON, gmta.queue.record), replaced atomically
      corrupt/      entries recovery could not read, with ID.reason
      wakeup        touched by ``gmta queue flush|release``; the daemon polls its mtime
      flush-all     time of the last ``gmta queue flush`` of the whole queue

An entry exists when ``msg/ID.meta`` exists. ``ID.msg`` is renamed into
``msg/`` before ``ID.meta`` and unlinked after it, so a ``.meta`` without its
``.msg`` is damage from outside, never a state gmta leaves.

**Locks.** Whoever delivers, changes or removes an entry holds an exclusive
``flock`` on ``ID.msg`` (the one file of an entry that is never replaced, so
the lock stays on the same inode). ``flock`` locks belong to the open file
description, not to the process as POSIX ``fcntl(F_SETLK)`` record locks do:
two greenlets of one daemon exclude each other too, and closing some other
descriptor of the file does not silently drop the lock. The daemon only ever
tries without blocking (``LOCK_NB``); the CLI polls with a deadline. After
getting the lock, the holder checks that the path still names the locked
inode: the entry may have been removed while it waited.

Every function here blocks (file I/O, fsync) and is meant to run in gevent's
threadpool (``gmta.durable.in_threadpool``). None of them logs: logging from
a threadpool thread would take gevent locks from a foreign thread, so they
return what happened and the caller logs it.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import os
import secrets
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from gmta.buffer import Buffer
from gmta.durable import create_file, fsync_dir, rename_out_of
from gmta.queue.record import CorruptRecord, QueuedMessage

LAYOUT = "gmta-queue 1"
COPY_CHUNK = 1 << 16
#: tmp/ files younger than this are left alone by recovery: a writer creates a
#: file and locks it in two system calls, and must not lose it in between.
TMP_GRACE = 10.0

_id_counter = itertools.count()


def new_id() -> str:
    """A queue id no other message in any queue on this host can get.

    Microseconds since the epoch, the process id and a per-process counter
    make it unique on one host; 24 random bits guard queues shared between
    hosts. maddy used 32 random bits, and a collision overwrote a queued
    message (maddy-behaviour §5). It sorts by arrival time.
    """
    micros = time.time_ns() // 1000
    return f"{micros:014x}{os.getpid() & 0xFFFFFF:06x}{next(_id_counter) & 0xFFFF:04x}" \
           f"{secrets.token_hex(3)}"


def valid_id(text: str) -> bool:
    return 8 <= len(text) <= 64 and all(c in "0123456789abcdef" for c in text)


class SpoolBody(Buffer):
    """The body of a queued message: ``ID.msg`` after the header."""

    def __init__(self, path: str, offset: int, size: int):
        self.path = path
        self.offset = offset
        self.size = size

    def open(self) -> BinaryIO:
        f = open(self.path, "rb")
        f.seek(self.offset)
        return f

    def remove(self) -> None:
        """The spool file belongs to the queue; readers never remove it."""


@dataclass
class EntryLock:
    """An exclusive lock on one entry (an open ``ID.msg`` with ``flock``)."""

    id: str
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = -1


@dataclass
class Staged:
    """A message written to ``tmp/`` (steps 1–2) and not yet published."""

    id: str
    lock: EntryLock


@dataclass
class ScanEvent:
    """One result of :meth:`Spool.scan`: ``kind`` is entry, corrupt, orphan or busy."""

    kind: str
    id: str
    record: QueuedMessage | None = None
    reason: str = ""


class Spool:
    def __init__(self, root: str):
        self.root = root
        self.tmp_dir = os.path.join(root, "tmp")
        self.msg_dir = os.path.join(root, "msg")
        self.corrupt_dir = os.path.join(root, "corrupt")
        self.wakeup_path = os.path.join(root, "wakeup")
        self.flush_all_path = os.path.join(root, "flush-all")

    # -- paths -------------------------------------------------------------------------

    def msg_path(self, entry_id: str) -> str:
        return os.path.join(self.msg_dir, entry_id + ".msg")

    def meta_path(self, entry_id: str) -> str:
        return os.path.join(self.msg_dir, entry_id + ".meta")

    # -- set-up ------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the directories, or check that an existing queue has our layout."""
        format_path = os.path.join(self.root, "FORMAT")
        os.makedirs(self.root, mode=0o750, exist_ok=True)
        for path in (self.tmp_dir, self.msg_dir, self.corrupt_dir):
            os.makedirs(path, mode=0o750, exist_ok=True)
        try:
            with open(format_path) as f:
                layout = f.read().strip()
        except FileNotFoundError:
            _write_durably(format_path, (LAYOUT + "\n").encode(), self.tmp_dir)
            fsync_dir(self.root)
            return
        if layout != LAYOUT:
            raise OSError(errno.EINVAL, f"unknown queue layout {layout!r} (expected {LAYOUT!r})",
                          format_path)

    # -- receiving: the commit order ---------------------------------------------------

    def stage(self, record: QueuedMessage, header: bytes, body: Buffer) -> Staged:
        """Steps 1–2 of accepting a message: both files written and fsynced in ``tmp/``."""
        tmp_msg = os.path.join(self.tmp_dir, record.id + ".msg")
        tmp_meta = os.path.join(self.tmp_dir, record.id + ".meta")
        # Step 1: tmp/ID.msg, locked from its creation until it is published, so
        # that recovery in another process never takes it for a leftover.
        # Crash here: tmp/ID.msg is left, unlocked; recovery deletes it. The
        # client got no 250, so it still owns the message.
        fd = create_file(tmp_msg, os.O_WRONLY | os.O_EXCL, 0o640)
        lock = EntryLock(record.id, fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            body.write_to(fd, header)
            os.fsync(fd)
            # Step 2: tmp/ID.meta, fsynced. Crash here: both files in tmp/, both
            # deleted by recovery; still no 250.
            _write_durably(tmp_meta, _encode(record), None)
        except BaseException:
            _unlink_quietly(tmp_meta)
            _unlink_quietly(tmp_msg)
            lock.release()
            raise
        return Staged(record.id, lock)

    def publish_renames(self, staged: Staged) -> list[tuple[str, str]]:
        """Steps 3–4 of :meth:`publish`, as (source, destination) in their order, for a
        caller that makes them durable itself (``DirectorySync`` over ``msg/``, which
        renames them in the pool just before its fsync)."""
        entry_id = staged.id
        # Step 3: the message file first. Crash after it: msg/ID.msg without
        # ID.meta, an orphan; recovery (which needs the lock, released by the
        # crash) deletes it. No 250 was given.
        # Step 4: the record; from now on the entry exists. Crash after it but
        # before step 5: the entry may or may not survive (the directory was
        # not fsynced); either way no 250 was given, and if it survives it is
        # delivered like any other entry.
        return [(os.path.join(self.tmp_dir, entry_id + ".msg"), self.msg_path(entry_id)),
                (os.path.join(self.tmp_dir, entry_id + ".meta"), self.meta_path(entry_id))]

    def publish(self, staged: Staged, sync_dir: bool = True) -> None:
        """Steps 3–5: rename both files into ``msg/`` and fsync it; then a 250 may go out.

        With ``sync_dir=False`` the caller does step 5 itself and calls
        :meth:`unpublish` if that sync fails. (The daemon does steps 3–5 in one
        group commit for every message published meanwhile: :meth:`publish_renames`.)
        """
        try:
            for source, destination in self.publish_renames(staged):
                os.rename(source, destination)
            # Step 5: make both renames durable. Only after this returns may the
            # client hear 250 (DESIGN §4.1).
            if sync_dir:
                fsync_dir(self.msg_dir)
        except BaseException:
            self.unpublish(staged)
            raise

    def unpublish(self, staged: Staged) -> None:
        """Undo a failed :meth:`publish` (or its renames): the client will hear 4xx, so
        the entry must not be delivered. Releases the lock."""
        entry_id = staged.id
        try:
            _unlink_quietly(self.meta_path(entry_id))
            _unlink_quietly(self.msg_path(entry_id))
        finally:
            self.discard(staged)   # the files left in tmp/, and the lock

    def discard(self, staged: Staged) -> None:
        """Forget a staged message (the transaction was aborted or failed)."""
        try:
            for path in (os.path.join(self.tmp_dir, staged.id + ".msg"),
                         os.path.join(self.tmp_dir, staged.id + ".meta")):
                _unlink_quietly(path)
        finally:
            staged.lock.release()

    # -- locks -------------------------------------------------------------------------

    def try_lock(self, entry_id: str) -> EntryLock | None:
        """The entry's lock if it is free and the entry exists, else None (never blocks)."""
        path = self.msg_path(entry_id)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The entry may have been removed (and its file unlinked) between
            # our open and the holder's unlock: then this inode is no entry.
            if os.fstat(fd).st_nlink == 0 or os.stat(path).st_ino != os.fstat(fd).st_ino:
                os.close(fd)
                return None
        except FileNotFoundError:
            os.close(fd)
            return None
        except BlockingIOError:
            os.close(fd)
            raise EntryBusy(entry_id) from None
        except BaseException:
            os.close(fd)
            raise
        return EntryLock(entry_id, fd)

    def lock(self, entry_id: str, timeout: float) -> EntryLock | None:
        """Like :meth:`try_lock` but waits up to *timeout* seconds (for the CLI)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.try_lock(entry_id)
            except EntryBusy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    # -- reading and changing entries (the caller holds the lock to change) -------------

    def read(self, entry_id: str) -> QueuedMessage:
        """The record of an entry; FileNotFoundError if it is gone, CorruptRecord if unreadable."""
        with open(self.meta_path(entry_id), "rb") as f:
            data = f.read()
        try:
            record = QueuedMessage.from_json(json.loads(data))
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptRecord(str(e)) from None
        if record.id != entry_id:
            raise CorruptRecord(f"record of {record.id!r} stored as {entry_id!r}")
        return record

    def message(self, record: QueuedMessage) -> tuple[bytes, SpoolBody]:
        """The header bytes and the body of a queued message."""
        path = self.msg_path(record.id)
        with open(path, "rb") as f:
            header = f.read(record.header_size)
        if len(header) != record.header_size:
            raise CorruptRecord(f"{record.id}.msg is shorter than its header")
        return header, SpoolBody(path, record.header_size, record.size - record.header_size)

    def write(self, lock: EntryLock, record: QueuedMessage) -> None:
        """Replace the record durably (the caller holds *lock*)."""
        assert lock.id == record.id and lock.fd >= 0
        tmp = os.path.join(self.tmp_dir, f"{record.id}.meta.{secrets.token_hex(4)}")
        # Step U1: the new record in tmp/, fsynced. Crash here: the old record
        # stays; the attempt's results are lost, so recipients it delivered are
        # delivered again (the one duplicate DESIGN §4.4 allows). Recovery
        # deletes the tmp file.
        try:
            _write_durably(tmp, _encode(record), None)
            # Step U2: atomic replacement. Step U3: the directory fsync makes it
            # durable; a crash between them leaves the old or the new record.
            os.rename(tmp, self.meta_path(record.id))
        except BaseException:
            _unlink_quietly(tmp)
            raise
        fsync_dir(self.msg_dir)

    def remove(self, lock: EntryLock, sync_dir: bool = True) -> None:
        """Delete the entry (the caller holds *lock*): record first, then the message.

        Crash between the two unlinks: an orphan ``ID.msg``, which recovery
        deletes. The reverse order could leave a record without its message.
        With ``sync_dir=False`` the caller makes the removal durable (the
        daemon's group commit); until then a crash may bring the entry back.
        """
        _unlink_quietly(self.meta_path(lock.id))
        _unlink_quietly(self.msg_path(lock.id))
        if sync_dir:
            fsync_dir(self.msg_dir)

    def remove_and_release(self, lock: EntryLock) -> None:
        """:meth:`remove` without the directory sync, then release *lock*.

        Releasing before the removal is durable is safe: once the names are
        gone no one can lock the entry again (:meth:`try_lock` sees a
        descriptor opened before the unlink has no link left), and a crash
        before the sync brings the entry back unlocked either way. Closing
        the last descriptor of the unlinked ``ID.msg`` frees its inode and
        blocks: done here, in the threadpool, not in the hub.
        """
        try:
            self.remove(lock, sync_dir=False)
        finally:
            lock.release()

    def move_to_corrupt(self, entry_id: str, reason: str) -> None:
        """Move what exists of an entry to ``corrupt/`` with a ``.reason`` file."""
        _write_durably(os.path.join(self.corrupt_dir, entry_id + ".reason"),
                       (reason + "\n").encode("utf-8", "replace"), None)
        for path in (self.meta_path(entry_id), self.msg_path(entry_id)):
            try:
                os.rename(path, os.path.join(self.corrupt_dir, os.path.basename(path)))
            except FileNotFoundError:
                pass
        fsync_dir(self.corrupt_dir)
        fsync_dir(self.msg_dir)

    # -- start-up recovery and scanning -------------------------------------------------

    def clean_tmp(self, min_age: float = TMP_GRACE) -> list[str]:
        """Delete leftovers in ``tmp/`` whose writer is gone; returns their names.

        A file belongs to a live writer when the entry's ``ID.msg`` (in tmp/
        while staging, in msg/ while a record is rewritten) is locked, or when
        it is younger than *min_age* (see ``TMP_GRACE``); a young leftover is
        removed by a later rescan.
        """
        removed = []
        now = time.time()
        for name in sorted(os.listdir(self.tmp_dir)):
            entry_id = name.split(".", 1)[0]
            try:
                if now - os.stat(os.path.join(self.tmp_dir, name)).st_mtime < min_age:
                    continue
            except FileNotFoundError:
                continue
            if self._locked_elsewhere(os.path.join(self.tmp_dir, entry_id + ".msg")) or \
                    self._locked_elsewhere(self.msg_path(entry_id)):
                continue
            _unlink_quietly(os.path.join(self.tmp_dir, name))
            removed.append(name)
        if removed:
            fsync_dir(self.tmp_dir)
        return removed

    @staticmethod
    def _locked_elsewhere(path: str) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def scan(self) -> Iterator[ScanEvent]:
        """Every entry of ``msg/``, repairing what a crash or damage left.

        Yields ``entry`` events with the record, and reports ``orphan``
        (an ``ID.msg`` without record: deleted, it was never acknowledged),
        ``corrupt`` (moved to ``corrupt/``) and ``busy`` (locked by someone,
        checked later). Blocking: run it in the threadpool, a batch at a time.
        """
        with os.scandir(self.msg_dir) as entries:
            for dirent in entries:
                name = dirent.name
                entry_id, dot, kind = name.partition(".")
                if kind == "meta":
                    yield self._scan_record(entry_id)
                elif kind == "msg":
                    event = self._scan_message(entry_id)
                    if event is not None:
                        yield event
                else:
                    # Not ours (an editor's backup, a stray copy): set aside, not deleted.
                    try:
                        os.rename(dirent.path, os.path.join(self.corrupt_dir, name))
                    except FileNotFoundError:
                        continue
                    yield ScanEvent("corrupt", name, reason="unknown file in msg/")

    def census(self) -> tuple[int, float | None]:
        """How many entries ``msg/`` holds and the arrival time of the oldest (None
        if empty), from one directory read: ids begin with their arrival time in
        microseconds (:func:`new_id`). Blocking: run it in the threadpool."""
        count = 0
        oldest: str | None = None
        with os.scandir(self.msg_dir) as entries:
            for dirent in entries:
                entry_id, _, kind = dirent.name.partition(".")
                if kind != "meta" or not valid_id(entry_id):
                    continue
                count += 1
                if len(entry_id) >= 14 and (oldest is None or entry_id < oldest):
                    oldest = entry_id
        return count, (int(oldest[:14], 16) / 1e6 if oldest is not None else None)

    def _scan_record(self, entry_id: str) -> ScanEvent:
        if not os.path.exists(self.msg_path(entry_id)):
            # Publishing renames ID.msg first and removing unlinks it last, so
            # a record still there without its message is outside damage.
            if os.path.exists(self.meta_path(entry_id)):
                return self._set_aside(entry_id, "message file missing")
            return ScanEvent("gone", entry_id)
        try:
            return ScanEvent("entry", entry_id, self.read(entry_id))
        except FileNotFoundError:
            return ScanEvent("gone", entry_id)
        except CorruptRecord as e:
            return self._set_aside(entry_id, f"unreadable record: {e}")
        except OSError as e:
            return ScanEvent("busy", entry_id, reason=e.strerror or str(e))

    def _scan_message(self, entry_id: str) -> ScanEvent | None:
        if os.path.exists(self.meta_path(entry_id)):
            return None  # seen (or to be seen) through its record
        try:
            lock = self.try_lock(entry_id)
        except EntryBusy:
            return ScanEvent("busy", entry_id)  # being published or removed right now
        if lock is None:
            return None
        try:
            if os.path.exists(self.meta_path(entry_id)):
                return None  # published between our check and the lock
            _unlink_quietly(self.msg_path(entry_id))
            return ScanEvent("orphan", entry_id)
        finally:
            lock.release()

    def _set_aside(self, entry_id: str, reason: str) -> ScanEvent:
        try:
            lock = self.try_lock(entry_id)
        except EntryBusy:
            return ScanEvent("busy", entry_id)
        try:
            if lock is None and not os.path.exists(self.meta_path(entry_id)):
                return ScanEvent("gone", entry_id)
            self.move_to_corrupt(entry_id, reason)
        finally:
            if lock is not None:
                lock.release()
        return ScanEvent("corrupt", entry_id, reason=reason)

    # -- requests from the CLI ---------------------------------------------------------

    def request_wakeup(self) -> None:
        """Tell running daemons to rescan (they poll the file's mtime)."""
        with open(self.wakeup_path, "a"):
            pass
        os.utime(self.wakeup_path)

    def wakeup_stamp(self) -> int | None:
        try:
            return os.stat(self.wakeup_path).st_mtime_ns
        except FileNotFoundError:
            return None

    def request_flush_all(self, when: float) -> None:
        _write_durably(self.flush_all_path, f"{when!r}\n".encode(), self.tmp_dir)
        fsync_dir(self.root)

    def flush_all_time(self) -> float:
        """When the whole queue was last flushed (0 if never): earlier attempts are due."""
        try:
            with open(self.flush_all_path) as f:
                return float(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0.0


class EntryBusy(Exception):
    """Someone else holds the entry's lock."""


def _encode(record: QueuedMessage) -> bytes:
    return json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":")).encode()


def _write_durably(path: str, data: bytes, tmp_dir: str | None) -> None:
    """Write *path* and fsync it; with *tmp_dir*, through a temporary file and a rename."""
    target = path
    if tmp_dir is not None:
        path = os.path.join(tmp_dir, f"{os.path.basename(path)}.{secrets.token_hex(4)}")
    fd = create_file(path, os.O_WRONLY | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(path)
        raise
    os.close(fd)
    if tmp_dir is not None:
        rename_out_of(path, target)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
