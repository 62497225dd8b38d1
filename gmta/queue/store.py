"""The queue's spool on disk: commit order, fsync, locks and start-up recovery.

Layout of a queue directory (``docs/reference/queue.md`` has the details)::

    LOCATION/
      FORMAT        "gmta-queue 2": the layout version, checked at start
      tmp/          files being written; never part of an entry
      msg/ID.msg    the entry: a prefix line, the initial record, then the message as
                    received (header, then body); only the prefix's flag byte is ever
                    rewritten
      msg/ID.meta   a later record (JSON, gmta.queue.record), replaced atomically; when
                    it exists it supersedes the record embedded in ID.msg
      corrupt/      entries recovery could not read, with ID.reason
      spare/ID      the file of a finished entry, kept (locked) by the process that
                    delivered it, to be written over for a new message (gmta.queue.spares)
      wakeup        touched by ``gmta queue flush|release``; the daemon polls its mtime
      flush-all     time of the last ``gmta queue flush`` of the whole queue

An entry exists when ``msg/ID.msg`` exists and has a current record: its own
(flag ``R``) or ``ID.meta``. One new file per message in the common case (a
message delivered at its first attempt never gets an ``ID.meta``): every new
inode costs the file system a search for a free one, and that search and the
fsyncs were most of a relayed message's cost (bench/README.md).

The prefix's flag turns from ``R`` to ``M`` (durably) once ``ID.meta`` is
durable, and before ``ID.meta`` can be unlinked: so an ``ID.msg`` left alone
by a removal cut short is recognised as an orphan, and its stale initial
record never brings back recipients already delivered. A layout-1 ``ID.msg``
(``gmta-queue 1``: no prefix) keeps its record in ``ID.meta`` and reads as
before.

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
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, TypeVar

from gmta import randomid
from gmta.buffer import Buffer, MemoryBuffer, write_all
from gmta.durable import create_file, fsync_dir, rename_out_of
from gmta.queue.record import CorruptRecord, QueuedMessage
from gmta.queue.spares import Spare, SparePool

LAYOUT = "gmta-queue 2"
#: Layouts a start upgrades in place: their entries read unchanged (FORMAT is
#: rewritten, so an older gmta refuses the directory instead of taking new
#: entries for orphans and deleting them).
UPGRADABLE_LAYOUTS = ("gmta-queue 1",)
#: The start of a layout-2 ``ID.msg``; the flag byte and the record's length
#: follow on the same line. A layout-1 ``ID.msg`` begins with a header line,
#: which cannot begin with a NUL byte.
ENTRY_MAGIC = b"\x00gmta-entry 2 "
FLAG_OFFSET = len(ENTRY_MAGIC)
#: The embedded record is the entry's record (no ``ID.meta`` was ever made durable).
RECORD_HERE = b"R"
#: The record is ``ID.meta``; the embedded one is stale. Without ``ID.meta``
#: the entry is gone (a removal cut short) and ``ID.msg`` is an orphan.
RECORD_IN_META = b"M"
#: The prefix line is short; a longer one is damage.
MAX_PREFIX_LINE = 64
#: A record longer than this is damage (a record of 10,000 recipients is ~2 MB).
MAX_RECORD = 64 << 20
#: First read of an ``ID.msg``: without the lock (scans, the CLI) the prefix and
#: a typical record; by the lock holder (an attempt) usually the whole message
#: too, which then needs no second open (:meth:`Spool.message`).
HEAD_READ = 4096
HEAD_READ_LOCKED = 32768
#: tmp/ files younger than this are left alone by recovery: a writer creates a
#: file and locks it in two system calls, and must not lose it in between.
TMP_GRACE = 10.0

_id_counter = itertools.count()
T = TypeVar("T")


def new_id() -> str:
    """A queue id no other message in any queue on this host can get.

    Microseconds since the epoch, the process id and a per-process counter
    make it unique on one host; 24 random bits guard queues shared between
    hosts. maddy used 32 random bits, and a collision overwrote a queued
    message (maddy-behaviour §5). It sorts by arrival time.
    """
    micros = time.time_ns() // 1000
    return f"{micros:014x}{os.getpid() & 0xFFFFFF:06x}{next(_id_counter) & 0xFFFF:04x}" \
           f"{randomid.token_hex(3)}"


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
class EntryHead:
    """What the first bytes of an ``ID.msg`` say."""

    #: The bytes read from the start of the file (the prefix, and maybe more).
    data: bytes
    #: The embedded record's JSON; None in a layout-1 file (no prefix).
    record: bytes | None
    #: Flag ``R``: the embedded record is current (False: flag ``M``, or layout 1).
    current: bool
    #: Where the message (its header) begins in the file.
    message_offset: int


@dataclass
class EntryLock:
    """An exclusive lock on one entry (an open ``ID.msg`` with ``flock``), and what
    its holder learned about the entry while holding it (None: not known yet)."""

    id: str
    fd: int
    head: EntryHead | None = None
    #: Whether ``ID.meta`` exists, so a removal does not try to unlink a file
    #: that was never made (the common case).
    has_meta: bool | None = None

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = -1


@dataclass
class Staged:
    """A message written to ``tmp/`` or a spare (step 1) and not yet published."""

    id: str
    lock: EntryLock
    #: Where it was written: ``tmp/ID.msg`` or ``spare/OLD-ID``.
    source: str


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
        self.spare_dir = os.path.join(root, "spare")
        #: This process's spare files (gmta.queue.spares).
        self.spares = SparePool()
        self.wakeup_path = os.path.join(root, "wakeup")
        self.flush_all_path = os.path.join(root, "flush-all")

    # -- paths -------------------------------------------------------------------------

    def msg_path(self, entry_id: str) -> str:
        return os.path.join(self.msg_dir, entry_id + ".msg")

    def meta_path(self, entry_id: str) -> str:
        return os.path.join(self.msg_dir, entry_id + ".meta")

    def spare_path(self, entry_id: str) -> str:
        return os.path.join(self.spare_dir, entry_id)

    # -- set-up ------------------------------------------------------------------------

    def prepare(self) -> str | None:
        """Create the directories, or check that an existing queue has our layout.

        Returns the old layout when it upgraded one in place (the caller logs it).
        """
        format_path = os.path.join(self.root, "FORMAT")
        os.makedirs(self.root, mode=0o750, exist_ok=True)
        for path in (self.tmp_dir, self.msg_dir, self.corrupt_dir, self.spare_dir):
            os.makedirs(path, mode=0o750, exist_ok=True)
        try:
            with open(format_path) as f:
                layout = f.read().strip()
        except FileNotFoundError:
            layout = None
        if layout == LAYOUT:
            return None
        if layout is not None and layout not in UPGRADABLE_LAYOUTS:
            raise OSError(errno.EINVAL, f"unknown queue layout {layout!r} (expected {LAYOUT!r})",
                          format_path)
        # A new queue, or layout 1: its entries (ID.msg without prefix, record in
        # ID.meta) read as they are, so only FORMAT changes. Durably, before any
        # layout-2 entry exists: an older gmta must refuse the directory rather
        # than delete those entries as orphans.
        _write_durably(format_path, (LAYOUT + "\n").encode(), self.tmp_dir)
        fsync_dir(self.root)
        return layout

    # -- receiving: the commit order ---------------------------------------------------

    def stage(self, record: QueuedMessage, header: bytes, body: Buffer) -> Staged:
        """Step 1 of accepting a message: ``tmp/ID.msg`` (prefix, record, message) written
        and fsynced, or a spare file written over instead of ``tmp/ID.msg``."""
        spare = self.spares.take()
        if spare is not None:
            return self._stage_over(spare, record, header, body)
        tmp_msg = os.path.join(self.tmp_dir, record.id + ".msg")
        # Step 1: tmp/ID.msg, locked from its creation until it is published, so
        # that recovery in another process never takes it for a leftover.
        # Crash here: tmp/ID.msg is left, unlocked; recovery deletes it. The
        # client got no 250, so it still owns the message.
        fd = create_file(tmp_msg, os.O_WRONLY | os.O_EXCL, 0o640)
        lock = EntryLock(record.id, fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            body.write_to(fd, entry_prefix(_encode(record)) + header)
            os.fsync(fd)
        except BaseException:
            _unlink_quietly(tmp_msg)
            lock.release()
            raise
        return Staged(record.id, lock, tmp_msg)

    def _stage_over(self, spare: Spare, record: QueuedMessage, header: bytes,
                    body: Buffer) -> Staged:
        # Step 1 over a spare (gmta.queue.spares): it is locked already, and
        # belongs to no entry. The new message is written from its start and
        # the file cut to the new length; its blocks are reused, so fdatasync
        # writes the data and, if the length changed, the inode. Crash here:
        # the spare is left half-written and unlocked in spare/, where
        # recovery deletes it; the client got no 250.
        lock = EntryLock(record.id, spare.fd)
        try:
            prefix = entry_prefix(_encode(record)) + header
            os.lseek(spare.fd, 0, os.SEEK_SET)
            body.write_to(spare.fd, prefix)
            os.ftruncate(spare.fd, len(prefix) + body.size)
            os.fdatasync(spare.fd)
        except BaseException:
            _unlink_quietly(spare.path)
            lock.release()
            raise
        return Staged(record.id, lock, spare.path)

    def publish_renames(self, staged: Staged) -> list[tuple[str, str]]:
        """Step 2 of :meth:`publish`, as (source, destination), for a caller that makes
        it durable itself (``DirectorySync`` over ``msg/``, which renames in the pool
        just before its fsync)."""
        # Step 2: the entry, whole, in one rename. Crash after it but before
        # step 3: the entry may or may not survive (the directory was not
        # fsynced); either way no 250 was given, and if it survives it is
        # delivered like any other entry.
        return [(staged.source, self.msg_path(staged.id))]

    def publish(self, staged: Staged, sync_dir: bool = True) -> None:
        """Steps 2–3: rename ``ID.msg`` into ``msg/`` and fsync it; then a 250 may go out.

        With ``sync_dir=False`` the caller does step 3 itself and calls
        :meth:`unpublish` if that sync fails. (The daemon does steps 2–3 in one
        group commit for every message published meanwhile: :meth:`publish_renames`.)
        """
        try:
            for source, destination in self.publish_renames(staged):
                os.rename(source, destination)
            # Step 3: make the rename durable. Only after this returns may the
            # client hear 250 (DESIGN §4.1).
            if sync_dir:
                fsync_dir(self.msg_dir)
        except BaseException:
            self.unpublish(staged)
            raise

    def unpublish(self, staged: Staged) -> None:
        """Undo a failed :meth:`publish` (or its rename): the client will hear 4xx, so
        the entry must not be delivered. Releases the lock."""
        try:
            _unlink_quietly(self.msg_path(staged.id))
        finally:
            self.discard(staged)   # the file left in tmp/, and the lock

    def discard(self, staged: Staged) -> None:
        """Forget a staged message (the transaction was aborted or failed)."""
        try:
            _unlink_quietly(staged.source)
        finally:
            staged.lock.release()

    # -- locks -------------------------------------------------------------------------

    def try_lock(self, entry_id: str) -> EntryLock | None:
        """The entry's lock if it is free and the entry exists, else None (never blocks)."""
        path = self.msg_path(entry_id)
        try:
            # Read-write: the holder may turn the prefix's flag (_supersede).
            fd = os.open(path, os.O_RDWR)
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

    def read(self, entry_id: str, lock: EntryLock | None = None) -> QueuedMessage:
        """The record of an entry: ``ID.meta`` if there is one, else the one in ``ID.msg``.

        With *lock* (held on this entry) it reads through the lock's descriptor
        and notes what it saw in the lock. Raises FileNotFoundError if the entry
        is gone (:class:`NoRecord` if its ``ID.msg`` is still there without a
        current record: an orphan), CorruptRecord if the record is unreadable.
        """
        # ID.msg first, then ID.meta: a writer makes ID.meta durable before it
        # turns the flag to M, so a flag M seen here means ID.meta existed, and
        # its absence now means a removal; with flag R, ID.meta may exist or not
        # and supersedes the embedded record if it does. No lock needed for that.
        head = lock.head if lock is not None and lock.head is not None else \
            self._read_head(entry_id, lock)
        try:
            with open(self.meta_path(entry_id), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = None
        if lock is not None:
            lock.head, lock.has_meta = head, data is not None
        if data is None:
            if head.record is None or not head.current:
                raise NoRecord(errno.ENOENT, "message file without a current record",
                               self.msg_path(entry_id))
            data = head.record
        try:
            record = QueuedMessage.from_json(json.loads(data))
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptRecord(str(e)) from None
        if record.id != entry_id:
            raise CorruptRecord(f"record of {record.id!r} stored as {entry_id!r}")
        return record

    def _read_head(self, entry_id: str, lock: EntryLock | None) -> EntryHead:
        if lock is not None:
            return read_head(lock.fd, HEAD_READ_LOCKED)
        return _read_unlocked(self.msg_path(entry_id), lambda fd: read_head(fd, HEAD_READ))

    def message(self, record: QueuedMessage,
                lock: EntryLock | None = None) -> tuple[bytes, Buffer]:
        """The header bytes and the body of a queued message.

        With *lock* (after :meth:`read` with it) a message that fits in what that
        read already got is returned from memory, without opening the file again.
        """
        path = self.msg_path(record.id)
        if lock is not None:
            if lock.head is None:
                lock.head = read_head(lock.fd, HEAD_READ_LOCKED)
            head, header = lock.head, _header(lock.head, lock.fd, record)
        else:
            def head_and_header(fd: int) -> tuple[EntryHead, bytes]:
                head = read_head(fd, HEAD_READ)
                return head, _header(head, fd, record)

            head, header = _read_unlocked(path, head_and_header)
        body_start = head.message_offset + record.header_size
        body_size = record.size - record.header_size
        if lock is not None and body_start + body_size <= len(head.data):
            return header, MemoryBuffer(head.data[body_start:body_start + body_size])
        return header, SpoolBody(path, body_start, body_size)

    def write(self, lock: EntryLock, record: QueuedMessage) -> None:
        """Replace the record durably (the caller holds *lock*)."""
        assert lock.id == record.id and lock.fd >= 0
        tmp = os.path.join(self.tmp_dir, f"{record.id}.meta.{randomid.token_hex(4)}")
        # Step U1: the new record in tmp/, fsynced. Crash here: the old record
        # stays; the attempt's results are lost, so recipients it delivered are
        # delivered again (the one duplicate DESIGN §4.4 allows). Recovery
        # deletes the tmp file.
        try:
            _write_durably(tmp, _encode(record), None)
            # Step U2: atomic replacement. Step U3: the directory fsync makes it
            # durable; a crash between them leaves the old or the new record
            # (ID.meta, or the embedded one while the flag is still R).
            os.rename(tmp, self.meta_path(record.id))
        except BaseException:
            _unlink_quietly(tmp)
            raise
        lock.has_meta = True
        fsync_dir(self.msg_dir)
        # Step U4 (the first update only): flag M, durably. Crash before it:
        # ID.meta and flag R, which reads the same (ID.meta supersedes), and
        # whoever removes the entry turns the flag first (remove()).
        self._supersede(lock)

    def _supersede(self, lock: EntryLock) -> None:
        """Turn the flag of a layout-2 ``ID.msg`` to M, durably (once ``ID.meta`` is
        durable): without it, an ``ID.msg`` left alone by a removal cut between its
        two unlinks would read as a complete entry whose initial record has every
        recipient pending, and recipients delivered since would be sent again."""
        if lock.head is None:
            lock.head = read_head(lock.fd, HEAD_READ)
        head = lock.head
        if head.record is None or not head.current:
            return  # layout 1 (its record is ID.meta), or already turned
        _write_at(lock.fd, RECORD_IN_META, FLAG_OFFSET)
        os.fdatasync(lock.fd)
        head.current = False

    def remove(self, lock: EntryLock, sync_dir: bool = True) -> None:
        """Delete the entry (the caller holds *lock*): ``ID.meta`` if any, then ``ID.msg``.

        Crash between the two unlinks: an ``ID.msg`` with flag M (or of layout 1)
        and no record, an orphan, which recovery deletes. The reverse order could
        leave a record without its message. With ``sync_dir=False`` the caller
        makes the removal durable (the daemon's group commit); until then a crash
        may bring the entry back.
        """
        if lock.has_meta is not False:
            # None: not known (the CLI removes without reading). Before the
            # record goes, the stale embedded one must be marked so.
            if lock.has_meta or os.path.exists(self.meta_path(lock.id)):
                self._supersede(lock)
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

    # -- spare files (gmta.queue.spares) -------------------------------------------------

    def retire_renames(self, lock: EntryLock) -> list[tuple[str, str]]:
        """Instead of :meth:`remove_and_release` for a finished entry without ``ID.meta``:
        the rename of its ``ID.msg`` into ``spare/``, for the group commit of ``msg/``
        that makes it durable (then :meth:`keep_spare`).

        Crash before that fsync: the entry may come back and be delivered again,
        as with an unlink that was not made durable (DESIGN §4.4); its file was
        not written over yet. The lock stays held: the file becomes a spare.
        """
        assert lock.has_meta is False and lock.fd >= 0
        return [(self.msg_path(lock.id), self.spare_path(lock.id))]

    def keep_spare(self, lock: EntryLock) -> bool:
        """The retired entry's file joins the pool with *lock*'s descriptor (on the hub,
        after the fsync of ``msg/``). False when the pool is closed (the queue
        stopped meanwhile): then :meth:`forget_retired` deletes it."""
        if not self.spares.keep(Spare(self.spare_path(lock.id), lock.fd)):
            return False
        lock.fd = -1
        return True

    def forget_retired(self, lock: EntryLock) -> None:
        """A retirement failed (rename or fsync): delete the file under either name,
        as :meth:`remove_and_release` would have, and release the lock."""
        try:
            _unlink_quietly(self.spare_path(lock.id))
            _unlink_quietly(self.msg_path(lock.id))
        finally:
            lock.release()

    def drop_spares(self) -> int:
        """Delete this process's spares and keep no more (the queue stops); returns
        how many."""
        self.spares.close()
        count = 0
        while (spare := self.spares.take()) is not None:
            try:
                _unlink_quietly(spare.path)
            finally:
                os.close(spare.fd)
            count += 1
        return count

    def clean_spares(self) -> list[str]:
        """Delete the spares of processes that are gone: those whose lock is free
        (a live owner always holds its spares' locks); returns their names."""
        removed = []
        for name in sorted(os.listdir(self.spare_dir)):
            path = os.path.join(self.spare_dir, name)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # Still the file we locked (not taken, written and published
                # meanwhile): its name is an old id, never given again.
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    os.unlink(path)
                    removed.append(name)
            except (BlockingIOError, FileNotFoundError):
                continue   # a live process's spare, or taken meanwhile
            finally:
                os.close(fd)
        return removed

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
        (an ``ID.msg`` without a current record: deleted, it was never
        acknowledged or its removal was cut short), ``corrupt`` (moved to
        ``corrupt/``) and ``busy`` (locked by someone, checked later).
        Blocking: run it in the threadpool, a batch at a time.
        """
        with os.scandir(self.msg_dir) as entries:
            for dirent in entries:
                name = dirent.name
                entry_id, dot, kind = name.partition(".")
                if kind == "msg":
                    event = self._scan_entry(entry_id)
                elif kind == "meta":
                    event = self._scan_record(entry_id)
                else:
                    # Not ours (an editor's backup, a stray copy): set aside, not deleted.
                    try:
                        os.rename(dirent.path, os.path.join(self.corrupt_dir, name))
                    except FileNotFoundError:
                        continue
                    event = ScanEvent("corrupt", name, reason="unknown file in msg/")
                if event is not None:
                    yield event

    def census(self) -> tuple[int, float | None]:
        """How many entries ``msg/`` holds and the arrival time of the oldest (None
        if empty), from one directory read: ids begin with their arrival time in
        microseconds (:func:`new_id`). Blocking: run it in the threadpool."""
        count = 0
        oldest: str | None = None
        with os.scandir(self.msg_dir) as entries:
            for dirent in entries:
                entry_id, _, kind = dirent.name.partition(".")
                if kind != "msg" or not valid_id(entry_id):
                    continue
                count += 1
                if len(entry_id) >= 14 and (oldest is None or entry_id < oldest):
                    oldest = entry_id
        return count, (int(oldest[:14], 16) / 1e6 if oldest is not None else None)

    def _scan_record(self, entry_id: str) -> ScanEvent | None:
        if os.path.exists(self.msg_path(entry_id)):
            return None  # seen (or to be seen) through its message file
        # A record without its message: ID.msg is renamed into msg/ before any
        # ID.meta is written and unlinked after it, so this is outside damage.
        if os.path.exists(self.meta_path(entry_id)):
            return self._set_aside(entry_id, "message file missing")
        return None

    def _scan_entry(self, entry_id: str) -> ScanEvent | None:
        try:
            return ScanEvent("entry", entry_id, self.read(entry_id))
        except NoRecord:
            pass  # an orphan, or an entry just removed: settled under the lock below
        except FileNotFoundError:
            return None  # removed meanwhile
        except CorruptRecord as e:
            return self._set_aside(entry_id, f"unreadable record: {e}")
        except OSError as e:
            return ScanEvent("busy", entry_id, reason=e.strerror or str(e))
        try:
            lock = self.try_lock(entry_id)
        except EntryBusy:
            return ScanEvent("busy", entry_id)  # being removed right now
        if lock is None:
            return None
        try:
            try:
                return ScanEvent("entry", entry_id, self.read(entry_id, lock))
            except NoRecord:
                pass
            except CorruptRecord as e:
                reason = f"unreadable record: {e}"
                self.move_to_corrupt(entry_id, reason)
                return ScanEvent("corrupt", entry_id, reason=reason)
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
                return None  # gone meanwhile
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


class NoRecord(FileNotFoundError):
    """``ID.msg`` exists but has no current record: a layout-1 message or a flag-M
    one without ``ID.meta`` (an orphan, or an entry being removed)."""


def entry_prefix(record_json: bytes) -> bytes:
    """The start of a layout-2 ``ID.msg``: the prefix line and the record."""
    return ENTRY_MAGIC + RECORD_HERE + b" %d\n" % len(record_json) + record_json


def read_head(fd: int, size: int) -> EntryHead:
    """Parse the start of an ``ID.msg`` (read with ``pread``: the descriptor may be shared)."""
    data = os.pread(fd, size, 0)
    if not data.startswith(ENTRY_MAGIC):
        if data[:1] == b"\x00":
            raise CorruptRecord("damaged prefix line in the message file")
        return EntryHead(data, None, False, 0)  # layout 1: the message from byte 0
    end = data.find(b"\n", FLAG_OFFSET, MAX_PREFIX_LINE)
    flag = data[FLAG_OFFSET:FLAG_OFFSET + 1]
    length = data[FLAG_OFFSET + 2:end]
    if end < 0 or flag not in (RECORD_HERE, RECORD_IN_META) or \
            data[FLAG_OFFSET + 1:FLAG_OFFSET + 2] != b" " or not length.isdigit() or \
            int(length) > MAX_RECORD:
        raise CorruptRecord("damaged prefix line in the message file")
    start = end + 1
    stop = start + int(length)
    if len(data) < stop:
        data += os.pread(fd, stop - len(data), len(data))
        if len(data) < stop:
            raise CorruptRecord("the message file is shorter than its record")
    return EntryHead(data, data[start:stop], flag == RECORD_HERE, stop)


def _header(head: EntryHead, fd: int, record: QueuedMessage) -> bytes:
    """The message's header: from what was read already, else one more ``pread``."""
    start = head.message_offset
    header = head.data[start:start + record.header_size]
    if len(header) < record.header_size:
        header = os.pread(fd, record.header_size, start)
    if len(header) != record.header_size:
        raise CorruptRecord(f"{record.id}.msg is shorter than its header")
    return header


def _read_unlocked(path: str, read: Callable[[int], T]) -> T:
    """``read(fd)`` on a descriptor of *path* opened for it, by a reader without the
    entry's lock; FileNotFoundError if the name no longer leads to what was read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            return read(fd)
        finally:
            _check_still_named(path, fd)
    finally:
        os.close(fd)


def _check_still_named(path: str, fd: int) -> None:
    """After reading *fd* without the entry's lock: raise FileNotFoundError unless
    *path* still names its file. A finished entry's file becomes a spare and is
    written over for another message, but only after it was renamed away, and
    its name never comes back: so if the name still leads to the same inode
    after the read, what was read is the entry's (gmta.queue.spares)."""
    try:
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            return
    except FileNotFoundError:
        pass
    raise FileNotFoundError(errno.ENOENT, "the entry was removed while it was read", path)


def _write_at(fd: int, data: bytes, offset: int) -> None:
    if os.pwrite(fd, data, offset) != len(data):
        raise OSError(errno.EIO, "short write of the message file's flag")


def _encode(record: QueuedMessage) -> bytes:
    return json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":")).encode()


def _write_durably(path: str, data: bytes, tmp_dir: str | None) -> None:
    """Write *path* and fsync it; with *tmp_dir*, through a temporary file and a rename."""
    target = path
    if tmp_dir is not None:
        path = os.path.join(tmp_dir, f"{os.path.basename(path)}.{randomid.token_hex(4)}")
    fd = create_file(path, os.O_WRONLY | os.O_TRUNC, 0o640)
    try:
        write_all(fd, data)
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
