"""The spool: fault injection at every commit step, recovery, locks, ids."""

from __future__ import annotations

import errno
import fcntl
import os
import threading

import pytest

from gmta import durable
from gmta.buffer import MemoryBuffer
from gmta.delivery import MessageMeta
from gmta.errors import SMTPError
from gmta.queue import store as store_mod
from gmta.queue.record import QueuedMessage
from gmta.queue.store import EntryBusy, Spool, new_id, valid_id
from tests.unit.queue.helpers import (ScriptedTarget, entries, make_queue, publish, settle,
                                      small_record, wait_until)

# (function, which call fails): the three steps of stage() and publish().
COMMIT_STEPS = [("fsync", 1), ("rename", 1), ("fsync_dir", 1)]


class Fault:
    def __init__(self, monkeypatch, name, nth):
        self.calls = 0
        self.fired = False
        real = {"fsync": os.fsync, "rename": os.rename, "fsync_dir": store_mod.fsync_dir}[name]

        def failing(*args):
            self.calls += 1
            if self.calls == nth:
                self.fired = True
                raise OSError(errno.EIO, "injected I/O error")
            return real(*args)

        if name == "fsync_dir":
            # The store's own, and the daemon's group commit of msg/ (gmta.durable).
            monkeypatch.setattr(store_mod, "fsync_dir", failing)
            monkeypatch.setattr(durable, "fsync_dir", failing)
        else:
            monkeypatch.setattr(os, name, failing)


@pytest.mark.parametrize("step", COMMIT_STEPS, ids=lambda s: f"{s[0]}-{s[1]}")
def test_a_failure_at_any_commit_step_gives_4xx_and_nothing_is_delivered(tmp_path, monkeypatch,
                                                                         step):
    state = tmp_path / "state"
    queue = make_queue(state, ScriptedTarget(), start=False)
    queue.spool.prepare()
    fault = Fault(monkeypatch, *step)
    delivery = queue.start_delivery(MessageMeta(id="m1"), "s@src.test")
    delivery.add_rcpt("a@d.test")
    with pytest.raises(SMTPError) as e:
        delivery.body(b"Subject: x\r\n\r\n", MemoryBuffer(b"body\r\n"))
        delivery.commit()
    delivery.abort()
    assert fault.fired
    assert e.value.code == 451 and e.value.temporary
    monkeypatch.undo()
    assert entries(queue) == []
    # A restart finds nothing to deliver and nothing left over.
    target = ScriptedTarget()
    queue2 = make_queue(state, target)
    try:
        import gevent
        gevent.sleep(0.3)
    finally:
        queue2.stop()
    assert target.attempts == []
    assert os.listdir(queue2.spool.tmp_dir) == [] and entries(queue2) == []


def test_commits_that_finish_together_share_one_fsync_of_msg(tmp_path, monkeypatch):
    import gevent
    queue = make_queue(tmp_path / "state", ScriptedTarget(), start=False)
    queue.spool.prepare()
    synced = []
    real_fsync_dir = durable.fsync_dir

    def slow_fsync_dir(path):
        synced.append(path)
        threading.Event().wait(0.02)   # a pool thread: a real sleep, as a slow disk
        real_fsync_dir(path)

    monkeypatch.setattr(durable, "fsync_dir", slow_fsync_dir)

    def receive(n):
        delivery = queue.start_delivery(MessageMeta(id=f"m{n}"), "s@src.test")
        delivery.add_rcpt("a@d.test")
        delivery.body(b"Subject: x\r\n\r\n", MemoryBuffer(b"body\r\n"))
        delivery.commit()

    gevent.joinall([gevent.spawn(receive, n) for n in range(10)], timeout=10, raise_error=True)
    assert len(entries(queue)) == 10   # one ID.msg each, no ID.meta
    # The first commit syncs alone, the nine that arrive meanwhile share the next.
    assert 1 <= len(synced) <= 3 and set(synced) == {queue.spool.msg_dir}


@pytest.mark.parametrize("step", [("fsync", 1), ("rename", 1), ("fsync_dir", 1)],
                         ids=lambda s: f"{s[0]}-{s[1]}")
def test_a_failed_record_update_keeps_the_old_record(spool, monkeypatch, step):
    record = publish(spool, small_record())
    lock = spool.try_lock(record.id)
    changed = spool.read(record.id)
    changed.recipients[0].state = "delivered"
    Fault(monkeypatch, *step)
    with pytest.raises(OSError):
        spool.write(lock, changed)
    monkeypatch.undo()
    lock.release()
    if step[0] != "fsync_dir":  # the rename happened; only its durability failed
        assert spool.read(record.id).recipients[0].state == "pending"
    assert spool.clean_tmp(min_age=0) == [] or os.listdir(spool.tmp_dir) == []


def test_message_reads_back_header_and_body(spool):
    record = publish(spool, small_record())
    header, body = spool.message(spool.read(record.id))
    assert header == b"H: v\r\n\r\n"
    with body.open() as f:
        assert f.read() == b"b\r\n"


def age(path, seconds=60):
    os.utime(path, (os.stat(path).st_atime, os.stat(path).st_mtime - seconds))


def test_clean_tmp_removes_leftovers_but_not_files_a_live_writer_holds(spool):
    for name in ("dead.msg", "dead.meta", "young.msg"):
        open(os.path.join(spool.tmp_dir, name), "w").close()
    age(os.path.join(spool.tmp_dir, "dead.msg"))
    age(os.path.join(spool.tmp_dir, "dead.meta"))
    live = os.path.join(spool.tmp_dir, "live.msg")
    fd = os.open(live, os.O_CREAT | os.O_WRONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    age(live)
    try:
        assert sorted(spool.clean_tmp()) == ["dead.meta", "dead.msg"]
        assert sorted(os.listdir(spool.tmp_dir)) == ["live.msg", "young.msg"]
        assert spool.clean_tmp(min_age=0) == ["young.msg"]
    finally:
        os.close(fd)


def _updated(spool) -> QueuedMessage:
    """A published entry whose record was rewritten once (it has an ID.meta)."""
    record = publish(spool, small_record())
    lock = spool.try_lock(record.id)
    record.recipients[0].tries = 1
    spool.write(lock, record)
    lock.release()
    return record


def test_scan_reports_entries_orphans_and_corrupt_records(spool):
    good = publish(spool, small_record())
    updated = _updated(spool)
    orphan = _updated(spool)
    os.unlink(spool.meta_path(orphan.id))      # a removal cut between its two unlinks
    layout1_orphan = "0" * 30
    with open(spool.msg_path(layout1_orphan), "wb") as f:
        f.write(b"H: v\r\n\r\nb\r\n")         # a layout-1 message without its record
    broken = publish(spool, small_record())
    with open(spool.meta_path(broken.id), "w") as f:
        f.write('{"format": 99}')
    lone_record = _updated(spool)
    os.unlink(spool.msg_path(lone_record.id))   # outside damage
    with open(os.path.join(spool.msg_dir, "notes.txt"), "w") as f:
        f.write("x")
    events = {(e.kind, e.id) for e in spool.scan()}
    assert events == {("entry", good.id), ("entry", updated.id), ("orphan", orphan.id),
                      ("orphan", layout1_orphan), ("corrupt", broken.id),
                      ("corrupt", lone_record.id), ("corrupt", "notes.txt")}
    assert sorted(os.listdir(spool.msg_dir)) == sorted(
        [good.id + ".msg", updated.id + ".meta", updated.id + ".msg"])
    assert sorted(os.listdir(spool.corrupt_dir)) == sorted(
        [broken.id + ".meta", broken.id + ".msg", broken.id + ".reason",
         lone_record.id + ".meta", lone_record.id + ".reason", "notes.txt"])
    with open(os.path.join(spool.corrupt_dir, broken.id + ".reason")) as f:
        assert "unknown record format 99" in f.read()


def test_scan_leaves_a_locked_orphan_alone(spool):
    """An ID.msg without record whose holder is alive is being removed right now."""
    record = _updated(spool)
    os.unlink(spool.meta_path(record.id))
    fd = os.open(spool.msg_path(record.id), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert [(e.kind, e.id) for e in spool.scan()] == [("busy", record.id)]
        assert os.path.exists(spool.msg_path(record.id))
    finally:
        os.close(fd)


def test_locks_exclude_each_other_and_see_removal(spool):
    record = publish(spool, small_record())
    lock = spool.try_lock(record.id)
    with pytest.raises(EntryBusy):
        spool.try_lock(record.id)  # another open file description, same process
    with pytest.raises(EntryBusy):
        spool.lock(record.id, timeout=0.1)
    spool.remove(lock)
    lock.release()
    assert spool.try_lock(record.id) is None
    assert os.listdir(spool.msg_dir) == []


def test_a_lock_taken_on_a_removed_entry_is_refused(spool):
    record = publish(spool, small_record())
    fd = os.open(spool.msg_path(record.id), os.O_RDONLY)  # a reader opened it...
    lock = spool.try_lock(record.id)
    spool.remove(lock)  # ...then the entry was removed and unlinked
    lock.release()
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert os.fstat(fd).st_nlink == 0
    os.close(fd)
    assert spool.try_lock(record.id) is None


def test_ids_are_unique_sortable_and_valid():
    ids = [new_id() for _ in range(5000)]
    assert len(set(ids)) == 5000
    assert all(valid_id(i) for i in ids)
    assert ids[0] <= ids[-1]
    assert not valid_id("../etc") and not valid_id("ABC")


def test_unknown_layout_is_refused(tmp_path):
    root = tmp_path / "q"
    root.mkdir()
    (root / "FORMAT").write_text("maddy\n")
    with pytest.raises(OSError, match="unknown queue layout"):
        Spool(str(root)).prepare()


def test_entry_with_corrupt_record_found_by_an_attempt_is_moved_aside(tmp_path, log_lines):
    queue = make_queue(tmp_path / "state", ScriptedTarget(), start=False)
    queue.spool.prepare()
    record = publish(queue.spool, small_record())
    with open(queue.spool.meta_path(record.id), "w") as f:
        f.write("{not json")
    assert queue.scheduler.attempt.run(record.id) is None
    assert entries(queue) == []
    assert any("event=corrupt_entry" in line for line in log_lines)


def test_delivery_after_restart_of_a_staged_but_unpublished_message_never_happens(tmp_path):
    state = tmp_path / "state"
    queue = make_queue(state, ScriptedTarget(), start=False)
    queue.spool.prepare()
    record = small_record()
    queue.spool.stage(record, b"H: v\r\n\r\n", MemoryBuffer(b"b\r\n")).lock.release()
    for name in os.listdir(queue.spool.tmp_dir):
        age(os.path.join(queue.spool.tmp_dir, name))  # as if the crash was a while ago
    target = ScriptedTarget()
    queue2 = make_queue(state, target)
    try:
        wait_until(lambda: os.listdir(queue2.spool.tmp_dir) == [], what="tmp/ cleaned")
        settle(queue2)
    finally:
        queue2.stop()
    assert target.attempts == []
