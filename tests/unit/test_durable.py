"""``in_threadpool``, ``fsync_dir`` and group directory syncs: blocking file work off the hub."""

from __future__ import annotations

import errno
import os
import threading

import gevent
import pytest

from gmta.durable import DirectorySync, DirectorySyncs, create_file, fsync_dir, in_threadpool


def test_returns_the_value_computed_in_another_thread():
    def work(a, b):
        return a + b, threading.get_ident()

    value, ident = in_threadpool(work, 2, 3)
    assert value == 5
    assert ident != threading.get_ident()


def test_returns_none():
    assert in_threadpool(lambda: None) is None


def test_reraises_the_same_exception_without_a_traceback_on_stderr(capfd):
    error = OSError(errno.ENOSPC, "No space left on device")

    def fail():
        raise error

    with pytest.raises(OSError) as e:
        in_threadpool(fail)
    assert e.value is error
    gevent.sleep(0)   # let the hub print anything it had queued
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_the_capture_would_see_what_gevent_prints(capfd):
    """Control for the test above: a bare threadpool call does print the error."""
    def fail():
        raise OSError(errno.EIO, "control")

    with pytest.raises(OSError):
        gevent.get_hub().threadpool.apply(fail)
    gevent.sleep(0)
    assert "control" in capfd.readouterr().err


def test_other_exceptions_are_reraised_too(capfd):
    with pytest.raises(ZeroDivisionError):
        in_threadpool(lambda: 1 / 0)
    gevent.sleep(0)
    assert capfd.readouterr().err == ""


def test_other_greenlets_run_while_the_thread_works():
    started = threading.Event()
    release = threading.Event()
    ran = []

    def blocking():
        started.set()
        release.wait(5)
        return "done"

    def other():
        ran.append("other")
        release.set()

    gevent.spawn(other)
    assert in_threadpool(blocking) == "done"
    assert ran == ["other"]


def test_fsync_dir(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    before = len(os.listdir("/proc/self/fd"))
    fsync_dir(str(tmp_path))
    assert synced == [str(tmp_path)]
    assert len(os.listdir("/proc/self/fd")) == before   # the descriptor was closed


def test_fsync_dir_refuses_a_file_and_a_missing_path(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        fsync_dir(str(tmp_path / "f"))
    with pytest.raises(FileNotFoundError):
        fsync_dir(str(tmp_path / "missing"))


def test_fsync_dir_in_the_threadpool(tmp_path):
    assert in_threadpool(fsync_dir, str(tmp_path)) is None


class SlowFsync:
    """A real fsync that takes at least *delay* seconds, recording when each began."""

    def __init__(self, monkeypatch, delay=0.05, fail=None):
        self.started = []   # sequence numbers of the events log at which each fsync began
        self.events = []
        self.delay = delay
        self.fail = fail
        real_fsync = os.fsync

        def fsync(fd):
            self.started.append(len(self.events))
            self.events.append("fsync-start")
            threading.Event().wait(self.delay)
            if self.fail is not None:
                raise self.fail
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)


def test_concurrent_syncs_share_fsyncs_and_each_waits_for_one_that_started_after_it(
        tmp_path, monkeypatch):
    slow = SlowFsync(monkeypatch)
    syncer = DirectorySync(str(tmp_path))
    covered = []

    def commit(n):
        slow.events.append(("call", n))
        called_at = len(slow.events)
        syncer.sync()
        # Some fsync began after this greenlet asked for one.
        covered.append(any(start >= called_at for start in slow.started))

    greenlets = [gevent.spawn(commit, n) for n in range(20)]
    gevent.sleep(0.01)
    greenlets += [gevent.spawn(commit, n) for n in range(20, 30)]
    gevent.joinall(greenlets, timeout=10, raise_error=True)
    assert covered == [True] * 30
    # 30 commits in two waves: the first starts a sync, everyone else joins
    # the next one (or the one after); never one fsync each.
    assert 2 <= len(slow.started) <= 4
    assert syncer.waiters == 0


def test_an_idle_sync_runs_at_once(tmp_path, monkeypatch):
    slow = SlowFsync(monkeypatch, delay=0)
    syncer = DirectorySync(str(tmp_path))
    syncer.sync()
    syncer.sync()
    assert len(slow.started) == 2


def test_a_failed_fsync_fails_every_commit_waiting_on_it(tmp_path, monkeypatch):
    SlowFsync(monkeypatch, fail=OSError(errno.EIO, "I/O error"))
    syncer = DirectorySync(str(tmp_path))
    results = []

    def commit():
        try:
            syncer.sync()
            results.append("ok")
        except OSError as e:
            results.append(e.errno)

    gevent.joinall([gevent.spawn(commit) for _ in range(5)], timeout=10)
    assert results == [errno.EIO] * 5


def test_directory_syncs_keep_only_directories_being_synced(tmp_path, monkeypatch):
    slow = SlowFsync(monkeypatch, delay=0.02)
    syncs = DirectorySyncs()
    dirs = []
    for n in range(3):
        (tmp_path / str(n)).mkdir()
        dirs.append(str(tmp_path / str(n)))
    gevent.joinall([gevent.spawn(syncs.sync, d) for d in dirs * 4], timeout=10,
                   raise_error=True)
    assert syncs._syncs == {}
    assert 3 <= len(slow.started) <= 6


def test_renames_run_in_the_pool_before_the_one_shared_fsync(tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    (tmp_path / "new").mkdir()
    slow = SlowFsync(monkeypatch, delay=0.02)
    renamed_in = []
    real_rename = os.rename

    def rename(source, destination):
        renamed_in.append(threading.get_ident())
        slow.events.append(("rename", os.path.basename(source)))
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", rename)
    syncer = DirectorySync(str(tmp_path / "new"))

    def commit(n):
        (tmp_path / "tmp" / str(n)).write_text("x")
        syncer.sync([(str(tmp_path / "tmp" / str(n)), str(tmp_path / "new" / str(n)))])

    gevent.joinall([gevent.spawn(commit, n) for n in range(10)], timeout=10, raise_error=True)
    assert sorted(os.listdir(tmp_path / "new")) == sorted(str(n) for n in range(10))
    assert threading.get_ident() not in renamed_in   # never in the hub's thread
    # Each fsync follows the renames it covers: the first commit alone, then the rest.
    assert len(slow.started) == 2
    assert slow.events[slow.started[1] - 1] == ("rename", "9")


def test_a_failed_rename_fails_only_its_waiter_and_skips_its_later_renames(tmp_path):
    directory = tmp_path / "msg"
    directory.mkdir()
    for name in ("a.msg", "a.meta", "c.msg"):
        (tmp_path / name).write_text("x")
    syncer = DirectorySync(str(directory))
    results = {}

    def commit(name, renames):
        try:
            syncer.sync(renames)
            results[name] = "ok"
        except OSError as e:
            results[name] = e.errno

    def pair(entry):
        return [(str(tmp_path / f"{entry}.{ext}"), str(directory / f"{entry}.{ext}"))
                for ext in ("msg", "meta")]

    gevent.joinall([gevent.spawn(commit, "a", pair("a")),
                    gevent.spawn(commit, "b", [(str(tmp_path / "missing"), str(directory / "b")),
                                               (str(tmp_path / "c.msg"), str(directory / "c"))])],
                   timeout=10, raise_error=True)
    assert results == {"a": "ok", "b": errno.ENOENT}
    assert sorted(os.listdir(directory)) == ["a.meta", "a.msg"]
    assert (tmp_path / "c.msg").exists()     # b's second rename was never made


def test_a_failed_fsync_fails_every_waiter_whose_renames_it_covered(tmp_path, monkeypatch):
    (tmp_path / "new").mkdir()
    SlowFsync(monkeypatch, delay=0.01, fail=OSError(errno.EIO, "I/O error"))
    syncer = DirectorySync(str(tmp_path / "new"))
    results = []

    def commit(n):
        (tmp_path / str(n)).write_text("x")
        try:
            syncer.sync([(str(tmp_path / str(n)), str(tmp_path / "new" / str(n)))])
            results.append("ok")
        except OSError as e:
            results.append(e.errno)

    gevent.joinall([gevent.spawn(commit, n) for n in range(4)], timeout=10)
    assert results == [errno.EIO] * 4


def test_create_file_creates_one_file_at_a_time_per_directory(tmp_path, monkeypatch):
    creating = []
    most = []
    real_open = os.open

    def slow_open(path, flags, mode=0o777):
        creating.append(path)
        most.append(len(creating))
        threading.Event().wait(0.01)
        creating.remove(path)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", slow_open)
    greenlets = [gevent.spawn(in_threadpool, create_file, str(tmp_path / str(n)),
                              os.O_WRONLY | os.O_EXCL, 0o600) for n in range(6)]
    gevent.joinall(greenlets, timeout=10, raise_error=True)
    for greenlet in greenlets:
        os.close(greenlet.value)
    assert sorted(os.listdir(tmp_path)) == [str(n) for n in range(6)]
    assert max(most) == 1
    assert oct(os.stat(tmp_path / "0").st_mode & 0o777) == "0o600"
