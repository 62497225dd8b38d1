"""What reaches the queue's scheduler from elsewhere, through ``wakeup.sock``.

``workers N``: a worker other than worker 0 makes only the first attempts.
Two queues on one directory in one process stand for two workers: ``full``
runs the full scheduler and listens on ``wakeup.sock``; ``first`` is set up as
another worker's (``share_with_workers(schedules=False)``). What ``first``
commits, it attempts itself; what it does not finish reaches ``full`` by
datagram, without a rescan. And ``gmta queue flush`` asks for its rescan there.
"""

from __future__ import annotations

import gevent

from gmta.errors import SMTPError
from tests.unit.queue.helpers import ScriptedTarget, make_queue, settle, submit, wait_until
from tests.unit.queue.test_queue_takeover import HeldTarget

DEFERRED = SMTPError(451, (4, 2, 0), "try later")


def worker_queues(state_dir, first_target, full_target, extra=""):
    full = make_queue(state_dir, full_target, start=False)
    full.share_with_workers(schedules=True)
    full.start()
    first = make_queue(state_dir, first_target, start=False, extra=extra)
    first.share_with_workers(schedules=False)
    first.start()
    return first, full


def test_the_receiving_worker_delivers_what_it_committed(tmp_path, log_lines):
    first_target, full_target = ScriptedTarget(), ScriptedTarget()
    first, full = worker_queues(tmp_path / "state", first_target, full_target)
    try:
        for n in range(5):
            submit(first, [f"r{n}@d.test"])
        settle(first)
    finally:
        first.stop()
        full.stop()
    assert len(first_target.committed) == 5
    assert full_target.attempts == []
    assert not any("event=scanned startup=no" in line for line in log_lines)


def test_a_deferral_goes_to_the_full_scheduler_for_the_retry(tmp_path, log_lines):
    first_target = ScriptedTarget({"rcpt": {"a@d.test": DEFERRED}})
    full_target = ScriptedTarget()
    first, full = worker_queues(tmp_path / "state", first_target, full_target)
    try:
        submit(first, ["a@d.test"])
        settle(first)  # the retry (50 ms later) empties the queue
    finally:
        first.stop()
        full.stop()
    assert [a.rcpts for a in first_target.attempts] == [["a@d.test"]]
    assert [a.rcpts for a in full_target.committed] == [["a@d.test"]]
    assert not any("event=scanned startup=no" in line for line in log_lines)


def test_what_a_stopping_worker_did_not_attempt_goes_to_the_full_scheduler(tmp_path):
    first_target, full_target = HeldTarget(), ScriptedTarget()
    # One attempt at a time, and the first one held: the next commits wait in
    # the window, as behind a busy pool.
    first, full = worker_queues(tmp_path / "state", first_target, full_target,
                                extra="max_parallelism 1")
    try:
        for n in range(3):
            submit(first, [f"r{n}@d.test"])
        assert first_target.in_body.wait(10)
        assert len(first.scheduler) == 2
        gevent.spawn_later(0.2, first_target.release.set)
        first.stop()  # hands the two on, lets the held attempt finish
        wait_until(lambda: len(full_target.committed) == 2, what="two deliveries by full")
        settle(full)
    finally:
        first_target.release.set()
        full.stop()
    assert [a.rcpts for a in first_target.committed] == [["r0@d.test"]]
    assert sorted(a.rcpts[0] for a in full_target.committed) == ["r1@d.test", "r2@d.test"]


def test_gmta_queue_flush_reaches_the_scheduler_at_once(tmp_path, monkeypatch, log_lines):
    """The CLI touches the wakeup file and says so on wakeup.sock: the rescan does not
    wait for the file's poll (made an hour long here, so only the datagram can act)."""
    from gmta.queue import cli, scheduler

    monkeypatch.setattr(scheduler, "WAKEUP_POLL", 3600.0)
    target = ScriptedTarget({"rcpt": {"a@d.test": DEFERRED}})
    queue = make_queue(tmp_path / "state", target, retry="1h")
    try:
        submit(queue, ["a@d.test"])
        wait_until(lambda: len(target.attempts) == 1, what="the first attempt")
        gevent.sleep(0.1)  # the start-up scan's wait has begun: only a request ends it
        cli.flush_all(queue.spool)
        settle(queue, timeout=5)
    finally:
        queue.stop()
    assert [a.rcpts for a in target.committed] == [["a@d.test"]]
    assert any("event=wakeup" in line for line in log_lines)
