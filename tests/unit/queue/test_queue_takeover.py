"""Reload: the new configuration's queue takes the spool over from the old one.

One scheduler per directory: the old one stops dispatching, its running
attempt finishes, then the new one starts; messages still committed through
the old queue (sessions of the old configuration) are delivered by the new.
"""

from __future__ import annotations

import gevent
from gevent.event import Event

from tests.unit.queue.helpers import (ScriptedTarget, entries, make_queue, settle, submit,
                                      wait_until)


class HeldTarget(ScriptedTarget):
    """Its first delivery's body waits until ``release`` is set."""

    def __init__(self):
        super().__init__()
        self.release = Event()
        self.in_body = Event()

    def start_delivery(self, meta, mail_from):
        attempt = super().start_delivery(meta, mail_from)
        if len(self.attempts) == 1:
            plain_body = attempt.body

            def held_body(header, body):
                self.in_body.set()
                self.release.wait(10)
                plain_body(header, body)
            attempt.body = held_body
        return attempt


def test_the_old_scheduler_finishes_its_attempt_then_the_new_one_delivers(tmp_path, log_lines):
    old_target, new_target = HeldTarget(), ScriptedTarget()
    old = make_queue(tmp_path / "state", old_target)
    new = make_queue(tmp_path / "state", new_target, start=False)
    try:
        submit(old, ["first@d.test"])
        assert old_target.in_body.wait(10)
        assert new.exclusive_key() == old.exclusive_key()
        new.follow(old)
        new.start()  # the spool is ready, the scheduler waits for the old one
        new.take_over(timeout=10)
        gevent.sleep(0.05)
        assert old.scheduler.retired and not new.scheduler._greenlets
        # A session still on the old configuration commits through the old queue.
        submit(old, ["second@d.test"])
        submit(new, ["third@d.test"])
        gevent.sleep(0.1)
        assert new_target.attempts == []  # nothing is dispatched twice at once
        # The old configuration's sessions are gone: its queue stops, and its
        # running attempt is not cut short (the new queue still waits for it).
        old.stop()
        old_target.release.set()
        settle(new)
    finally:
        old_target.release.set()
        new.stop()
        old.stop()
    assert [a.rcpts for a in old_target.attempts] == [["first@d.test"]]
    assert sorted(a.rcpts[0] for a in new_target.attempts) == ["second@d.test", "third@d.test"]
    assert all(a.committed for a in old_target.attempts + new_target.attempts)
    assert any("event=scheduler_taken_over" in x for x in log_lines)


def test_reloads_in_quick_succession_hand_the_spool_over_in_order(tmp_path):
    """The last queue waits for the middle one's takeover, then retires it."""
    first = make_queue(tmp_path / "state", ScriptedTarget())
    middle = make_queue(tmp_path / "state", ScriptedTarget(), start=False)
    last_target = ScriptedTarget()
    last = make_queue(tmp_path / "state", last_target, start=False)
    try:
        middle.follow(first)
        middle.start()
        last.follow(middle)
        last.start()
        middle.take_over(timeout=5)
        last.take_over(timeout=5)
        submit(first, ["a@d.test"])
        wait_until(lambda: last.scheduler._greenlets, what="the last scheduler")
        settle(last)
        assert middle.scheduler.retired and not middle.scheduler._greenlets
        assert [a.rcpts for a in last_target.attempts] == [["a@d.test"]]
    finally:
        for queue in (last, middle, first):
            queue.stop()
    assert entries(last) == []
