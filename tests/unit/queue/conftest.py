"""Queues started by a test are stopped at its end, whatever happened."""

from __future__ import annotations

import pytest

from gmta.queue.store import Spool
from tests.unit.queue import helpers


@pytest.fixture
def queues(tmp_path):
    """``queues(target, bounce=None, **kw)`` → a started queue in tmp_path/state."""
    started = []

    def make(target, bounce=None, **kw):
        queue = helpers.make_queue(tmp_path / "state", target, bounce, **kw)
        started.append(queue)
        return queue

    yield make
    for queue in started:
        queue.stop()


@pytest.fixture
def spool(tmp_path):
    """A prepared spool in tmp_path/q, used without a queue."""
    s = Spool(str(tmp_path / "q"))
    s.prepare()
    return s
