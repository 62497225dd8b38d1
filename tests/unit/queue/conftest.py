"""Queues started by a test are stopped at its end, whatever happened."""

from __future__ import annotations

import pytest

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
