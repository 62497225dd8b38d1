"""Layout 2 of the spool: one ``ID.msg`` per entry with its record embedded, an
``ID.meta`` only for later records, the flag that marks the embedded record stale,
and the in-place upgrade of a layout-1 directory."""

from __future__ import annotations

import errno
import json
import os

import pytest

from gmta.queue import store as store_mod
from gmta.queue.record import QueuedMessage, Recipient
from gmta.queue.store import (ENTRY_MAGIC, FLAG_OFFSET, HEAD_READ_LOCKED, RECORD_HERE,
                              RECORD_IN_META, SpoolBody, Spool, new_id)
from tests.unit.queue.helpers import (ScriptedTarget, entries, make_queue, publish, settle,
                                      wait_until)

HEADER = b"Subject: one file\r\n\r\n"
BODY = b"body\r\n"


def _record(rcpts=("a@d.test",), header=HEADER, body=BODY) -> QueuedMessage:
    return QueuedMessage(id=new_id(), msg_id="m", mail_from="s@src.test",
                         recipients=[Recipient(a) for a in rcpts], header_size=len(header),
                         size=len(header) + len(body), arrival=1.0)


def _publish(spool, record, header=HEADER, body=BODY) -> None:
    publish(spool, record, header, body)


def _flag(spool, entry_id) -> bytes:
    with open(spool.msg_path(entry_id), "rb") as f:
        return f.read(FLAG_OFFSET + 1)[FLAG_OFFSET:]


def test_an_entry_is_one_file_with_its_record_embedded(spool):
    record = _record()
    _publish(spool, record)
    assert os.listdir(spool.msg_dir) == [record.id + ".msg"]
    assert os.listdir(spool.tmp_dir) == []
    with open(spool.msg_path(record.id), "rb") as f:
        data = f.read()
    assert data.startswith(ENTRY_MAGIC + RECORD_HERE + b" ")
    line, _, rest = data.partition(b"\n")
    length = int(line.rsplit(b" ", 1)[1])
    assert json.loads(rest[:length])["id"] == record.id
    assert rest[length:] == HEADER + BODY
    assert spool.read(record.id) == record
    header, body = spool.message(record)
    assert header == HEADER and isinstance(body, SpoolBody)
    with body.open() as f:
        assert f.read(body.size) == BODY


def test_the_lock_holder_reads_record_and_small_message_through_one_open(spool, monkeypatch):
    record = _record()
    _publish(spool, record)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: (opened.append(path),
                                                           real_open(path, *a, **k))[1])
    lock = spool.try_lock(record.id)
    try:
        assert spool.read(record.id, lock) == record
        header, body = spool.message(record, lock)
    finally:
        lock.release()
    monkeypatch.undo()
    assert opened == [spool.msg_path(record.id)]   # ID.meta is tried with open(), not os.open
    assert header == HEADER
    with body.open() as f:
        assert f.read() == BODY


def test_a_large_record_and_message_are_read_past_the_first_read(spool):
    rcpts = [f"r{n}@d.test" for n in range(2000)]   # a record of ~300 KB
    body = b"x" * (3 * HEAD_READ_LOCKED)
    record = _record(rcpts, body=body)
    _publish(spool, record, body=body)
    lock = spool.try_lock(record.id)
    try:
        assert [r.address for r in spool.read(record.id, lock).recipients] == rcpts
        header, spooled = spool.message(record, lock)
    finally:
        lock.release()
    assert header == HEADER and isinstance(spooled, SpoolBody)
    with spooled.open() as f:
        assert f.read(spooled.size) == body


def test_a_later_record_in_meta_supersedes_the_embedded_one(spool):
    record = _record()
    _publish(spool, record)
    lock = spool.try_lock(record.id)
    record.recipients[0].tries = 3
    spool.write(lock, record)
    lock.release()
    assert sorted(os.listdir(spool.msg_dir)) == [record.id + ".meta", record.id + ".msg"]
    assert _flag(spool, record.id) == RECORD_IN_META
    assert spool.read(record.id).recipients[0].tries == 3
    assert spool.message(record)[0] == HEADER   # the message is untouched
    lock = spool.try_lock(record.id)
    record.recipients[0].tries = 4
    spool.write(lock, record)   # a second update leaves the flag alone
    lock.release()
    assert spool.read(record.id).recipients[0].tries == 4


def test_removal_unlinks_only_what_exists(spool, monkeypatch):
    plain, updated = _record(), _record()
    _publish(spool, plain)
    _publish(spool, updated)
    lock = spool.try_lock(updated.id)
    spool.write(lock, spool.read(updated.id, lock))
    lock.release()
    unlinked = []
    real_unlink = os.unlink
    monkeypatch.setattr(os, "unlink", lambda path: (unlinked.append(path), real_unlink(path)))
    for entry in (plain, updated):
        lock = spool.try_lock(entry.id)
        spool.read(entry.id, lock)
        spool.remove_and_release(lock)
    assert unlinked == [spool.msg_path(plain.id),
                        spool.meta_path(updated.id), spool.msg_path(updated.id)]
    assert os.listdir(spool.msg_dir) == []


def test_a_removal_cut_after_a_flag_that_was_not_turned_leaves_an_orphan(spool, monkeypatch):
    """The record update's last step (flag M) failed, so ID.meta exists with flag R;
    a removal cut between its unlinks must still not revive the initial record."""
    record = _record()
    _publish(spool, record)
    lock = spool.try_lock(record.id)
    record.recipients[0].state = "delivered"
    monkeypatch.setattr(os, "pwrite", _failing)   # as a crash before the flag reached disk
    with pytest.raises(OSError):
        spool.write(lock, record)
    monkeypatch.undo()
    lock.release()
    assert _flag(spool, record.id) == RECORD_HERE
    assert spool.read(record.id).recipients[0].state == "delivered"   # ID.meta supersedes
    lock = spool.try_lock(record.id)
    spool.read(record.id, lock)
    real_unlink = os.unlink

    def crash_after_first_unlink(path):
        real_unlink(path)
        monkeypatch.setattr(os, "unlink", _failing)

    monkeypatch.setattr(os, "unlink", crash_after_first_unlink)
    with pytest.raises(OSError):
        spool.remove(lock)
    monkeypatch.undo()
    lock.release()
    assert os.listdir(spool.msg_dir) == [record.id + ".msg"]
    assert _flag(spool, record.id) == RECORD_IN_META   # turned by the removal, first
    assert [(e.kind, e.id) for e in spool.scan()] == [("orphan", record.id)]
    assert os.listdir(spool.msg_dir) == []


@pytest.mark.parametrize("damage", [
    lambda data: data[:FLAG_OFFSET] + b"X" + data[FLAG_OFFSET + 1:],    # unknown flag
    lambda data: data.replace(b'"recipients"', b'"recipientz"', 1),      # record not valid
    lambda data: data[:FLAG_OFFSET + 8],                                 # truncated record
    lambda data: data[:5],                                               # truncated prefix
], ids=["flag", "record", "truncated", "prefix"])
def test_an_unreadable_embedded_record_goes_to_corrupt(spool, damage):
    record = _record()
    _publish(spool, record)
    path = spool.msg_path(record.id)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(damage(data))
    events = [(e.kind, e.id) for e in spool.scan()]
    assert events == [("corrupt", record.id)]
    assert sorted(os.listdir(spool.corrupt_dir)) == [record.id + ".msg", record.id + ".reason"]
    assert os.listdir(spool.msg_dir) == []


def test_an_attempt_sets_an_unreadable_embedded_record_aside(tmp_path, log_lines):
    queue = make_queue(tmp_path / "state", ScriptedTarget(), start=False)
    queue.spool.prepare()
    record = _record()
    _publish(queue.spool, record)
    path = queue.spool.msg_path(record.id)
    with open(path, "r+b") as f:
        f.seek(FLAG_OFFSET + 20)
        f.write(b"\xff\xff")
    assert queue.scheduler.attempt.run(record.id) is None
    assert entries(queue) == []
    assert record.id + ".msg" in os.listdir(queue.spool.corrupt_dir)
    assert any("event=corrupt_entry" in line and record.id in line for line in log_lines)


def _write_layout_1(root, record: QueuedMessage, header: bytes, body: bytes) -> None:
    """A queue directory as gmta-queue 1 left it: ID.msg is the message, ID.meta the record."""
    for sub in ("tmp", "msg", "corrupt"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    with open(os.path.join(root, "FORMAT"), "w") as f:
        f.write("gmta-queue 1\n")
    with open(os.path.join(root, "msg", record.id + ".msg"), "wb") as f:
        f.write(header + body)
    with open(os.path.join(root, "msg", record.id + ".meta"), "w") as f:
        json.dump(record.to_json(), f)


def test_a_layout_1_queue_is_upgraded_and_its_entries_delivered(tmp_path, log_lines):
    root = tmp_path / "state" / "q"
    record = _record(("a@d.test", "b@d.test"))
    record.recipients[0].state, record.recipients[0].reported = "delivered", True
    _write_layout_1(str(root), record, HEADER, BODY)
    with open(root / "msg" / ("0" * 30 + ".msg"), "wb") as f:
        f.write(HEADER + BODY)   # a layout-1 orphan: still deleted
    target = ScriptedTarget({})
    queue = make_queue(tmp_path / "state", target)
    try:
        settle(queue)
        wait_until(lambda: any("event=scanned" in line for line in log_lines))
    finally:
        queue.stop()
    assert (root / "FORMAT").read_text() == "gmta-queue 2\n"
    assert any("event=layout_upgraded" in line and "old=\"gmta-queue 1\"" in line
               for line in log_lines)
    [attempt] = target.attempts
    assert attempt.rcpts == ["b@d.test"] and attempt.committed   # a was delivered before
    assert attempt.header == HEADER and attempt.data == BODY
    assert any("event=orphan_removed" in line and "0" * 30 in line for line in log_lines)


def test_a_layout_1_entry_can_be_updated_and_removed_after_the_upgrade(tmp_path):
    root = str(tmp_path / "q")
    record = _record()
    _write_layout_1(root, record, HEADER, BODY)
    spool = Spool(root)
    assert spool.prepare() == "gmta-queue 1"
    assert spool.prepare() is None
    lock = spool.try_lock(record.id)
    record.held = True
    spool.write(lock, record)   # no prefix, no flag to turn
    lock.release()
    assert spool.read(record.id).held
    assert spool.message(record)[0] == HEADER
    with open(spool.msg_path(record.id), "rb") as f:
        assert f.read() == HEADER + BODY
    lock = spool.lock(record.id, 1.0)
    spool.remove(lock)   # the CLI removes without reading first
    lock.release()
    assert os.listdir(spool.msg_dir) == []


def test_a_new_queue_gets_layout_2(spool):
    with open(os.path.join(spool.root, "FORMAT")) as f:
        assert f.read() == store_mod.LAYOUT + "\n" == "gmta-queue 2\n"


def _failing(*args):
    raise OSError(errno.EIO, "injected I/O error")
