"""Spare files (gmta.queue.spares): a finished entry's file is kept, locked, and
written over for a later message instead of creating and deleting a file per
message; what a crash or a stop leaves is deleted, and a reader without the
lock never takes a spare's new bytes for the entry it opened."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from gmta.buffer import MemoryBuffer
from gmta.queue import store as store_mod
from gmta.queue.record import QueuedMessage, Recipient
from gmta.queue.spares import Spare, SparePool
from gmta.queue.store import Spool, new_id
from tests.unit.queue.helpers import (ScriptedTarget, entries, publish, settle, small_record,
                                      submit, wait_until)

def _locked(path: str) -> bool:
    return Spool._locked_elsewhere(path)


def _spares(queue) -> list[str]:
    return sorted(os.listdir(queue.spool.spare_dir))


def test_a_delivered_entry_becomes_a_locked_spare_and_the_next_message_reuses_its_inode(queues):
    # The second message is deferred (for an hour), to look at its file.
    target = ScriptedTarget({}, {"rcpt": {"b@d.test": store_error()}})
    queue = queues(target, retry="1h")
    submit(queue, ["a@d.test"], body=b"first, a longer body than the next one\r\n" * 20)
    settle(queue)
    (name,) = _spares(queue)
    spare_path = os.path.join(queue.spool.spare_dir, name)
    inode = os.stat(spare_path).st_ino
    assert _locked(spare_path), "a live process's spare is always locked"
    assert os.listdir(queue.spool.tmp_dir) == []

    # The second message is written over the spare: same inode, its own bytes
    # only (the file is cut to the new length), published under its own id.
    submit(queue, ["b@d.test"], body=b"second\r\n")
    wait_until(lambda: len(target.attempts) == 2, what="the second attempt")
    entry = next(e for e in entries(queue) if e.endswith(".msg"))
    path = os.path.join(queue.spool.msg_dir, entry)
    assert os.stat(path).st_ino == inode and _spares(queue) == []
    with open(path, "rb") as f:
        data = f.read()
    assert data.endswith(b"Subject: test\r\n\r\nsecond\r\n") and b"first" not in data


def test_the_spare_is_written_over_byte_exact(spool):
    old = Path(spool.spare_dir) / "0123456789abcdef"
    old.write_bytes(b"x" * 5000)
    fd = os.open(old, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    spool.spares.reserve(5000)
    spool.spares.keep(Spare(str(old), fd))
    record = QueuedMessage(id=new_id(), msg_id="m", mail_from="s@src.test",
                           recipients=[Recipient("a@d.test")], header_size=8, size=12,
                           arrival=1.0)
    staged = spool.stage(record, b"H: v\r\n\r\n", MemoryBuffer(b"b\r\n."[:4]))
    assert staged.source == str(old)
    spool.publish(staged)
    staged.lock.release()
    data = open(spool.msg_path(record.id), "rb").read()
    assert data.endswith(b"H: v\r\n\r\nb\r\n.") and b"xxxx" not in data
    assert spool.read(record.id) == record
    assert not old.exists()


def test_an_entry_with_a_later_record_or_a_big_file_is_deleted_not_kept(queues):
    # Retried once: its second record is ID.meta, so the entry is unlinked as before.
    target = ScriptedTarget({"rcpt": {"a@d.test": store_error()}}, {})
    queue = queues(target)
    submit(queue, ["a@d.test"])
    settle(queue)
    assert len(target.attempts) == 2 and _spares(queue) == []
    # Bigger than SPARE_MAX_SIZE: its blocks would sit unused.
    queue.spool.spares.max_size = 100
    submit(queue, ["a@d.test"], body=b"y" * 200 + b"\r\n")
    settle(queue)
    assert _spares(queue) == []


def store_error():
    from gmta.errors import SMTPError
    return SMTPError(451, (4, 2, 0), "try again")


def test_the_pool_is_bounded():
    pool = SparePool(limit=2, max_size=10)
    assert pool.reserve(10) and pool.reserve(1)
    assert not pool.reserve(1), "two reserved already"
    assert not SparePool(limit=2, max_size=10).reserve(11)
    assert pool.keep(Spare("a", -1)) and len(pool) == 1
    pool.cancel()
    assert pool.reserve(1)
    pool.close()
    assert not pool.keep(Spare("b", -1)), "closed: the caller deletes it"
    assert not pool.reserve(1)
    assert pool.take() == Spare("a", -1) and pool.take() is None


def test_stop_deletes_the_spares(queues):
    queue = queues(ScriptedTarget({}, {}, {}))
    for n in range(3):
        submit(queue, [f"r{n}@d.test"])
    settle(queue)
    wait_until(lambda: len(_spares(queue)) >= 1, what="a spare")
    queue.stop()
    assert _spares(queue) == [] and len(queue.spool.spares) == 0


def test_recovery_deletes_unlocked_leftovers_and_leaves_locked_spares(tmp_path, queues):
    queue = queues(ScriptedTarget({}))
    submit(queue, ["a@d.test"])
    settle(queue)
    (live,) = _spares(queue)
    # A spare half-written when its process was killed: no lock on it any more.
    leftover = os.path.join(queue.spool.spare_dir, "00aa11bb22cc33dd")
    with open(leftover, "wb") as f:
        f.write(b"\x00gmta-entry 2 R 999\n{\"id\":")
    assert queue.spool.clean_spares() == ["00aa11bb22cc33dd"]
    assert _spares(queue) == [live], "a spare of a live process is locked and stays"


def test_a_reader_without_the_lock_never_reads_a_spares_new_bytes(spool, monkeypatch):
    # `gmta queue show` (or a scan) opens msg/ID.msg; before it reads, the
    # delivering process retires the entry and writes another message over the
    # file. The reader must see the entry gone, not a damaged entry.
    record = publish(spool, small_record())
    real_read_head = store_mod.read_head

    def retired_meanwhile(fd, size):
        os.rename(spool.msg_path(record.id), spool.spare_path(record.id))
        os.pwrite(fd, b"\x00gmta-entry 2 R 5\n{\"id\"", 0)   # someone else's message
        return real_read_head(fd, size)

    monkeypatch.setattr(store_mod, "read_head", retired_meanwhile)
    with pytest.raises(FileNotFoundError):
        spool.read(record.id)


def test_a_failed_retirement_deletes_the_file_and_keeps_no_spare(queues, monkeypatch):
    queue = queues(ScriptedTarget({}))
    real_sync = queue.msg_dir_sync.sync

    def failing(renames=()):
        if renames and renames[0][1].startswith(queue.spool.spare_dir):
            real_sync(renames)
            raise OSError(5, "Input/output error")
        return real_sync(renames)

    monkeypatch.setattr(queue.msg_dir_sync, "sync", failing)
    submit(queue, ["a@d.test"])
    wait_until(lambda: entries(queue) == [], what="the entry gone")
    wait_until(lambda: _spares(queue) == [], what="the spare deleted")
    assert len(queue.spool.spares) == 0 and queue.spool.spares._reserved == 0
