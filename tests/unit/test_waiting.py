"""gmta.net.waiting: the shallow wait an idle session parks in."""

from __future__ import annotations

import time

import gevent
import pytest
from gevent import socket

from gmta.net.waiting import wait_readable

WAIT = 5.0


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_readable_when_data_arrives(pair):
    a, b = pair
    gevent.spawn_later(0.05, b.sendall, b"x")
    assert wait_readable(a.fileno(), WAIT) is True
    assert a.recv(10) == b"x"


def test_readable_at_once_when_data_waits(pair):
    a, b = pair
    b.sendall(b"x")
    started = time.monotonic()
    assert wait_readable(a.fileno(), WAIT) is True
    assert time.monotonic() - started < 1


def test_timeout_returns_false_after_the_timeout(pair):
    a, _ = pair
    started = time.monotonic()
    assert wait_readable(a.fileno(), 0.1) is False
    assert 0.09 <= time.monotonic() - started < WAIT


def test_no_stray_wake_up_after_a_timeout(pair):
    """Both watchers are stopped: data arriving later does not wake the greenlet
    wherever it waits next."""
    a, b = pair
    assert wait_readable(a.fileno(), 0.05) is False
    gevent.spawn_later(0.02, b.sendall, b"late")
    started = time.monotonic()
    gevent.sleep(0.3)
    assert time.monotonic() - started >= 0.29


def test_exception_thrown_in_stops_the_watchers(pair):
    a, b = pair

    def waiter():
        try:
            wait_readable(a.fileno(), 0.2)
        except KeyError:
            pass
        # Neither the timer (0.2 s) nor the data (0.05 s) may cut this sleep short.
        started = time.monotonic()
        gevent.sleep(0.4)
        return time.monotonic() - started

    greenlet = gevent.spawn(waiter)
    gevent.sleep(0.01)
    greenlet.kill(KeyError, block=False)   # thrown in from the hub, as a stop is
    gevent.spawn_later(0.05, b.sendall, b"x")
    assert greenlet.get(timeout=WAIT) >= 0.39
