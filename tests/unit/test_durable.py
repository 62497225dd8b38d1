"""``in_threadpool`` and ``fsync_dir``: blocking file work off the gevent hub."""

from __future__ import annotations

import errno
import os
import threading

import gevent
import pytest

from gmta.durable import fsync_dir, in_threadpool


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
