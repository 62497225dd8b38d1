"""Durable file writes that never block the gevent hub (DESIGN §4.1–§4.2).

``fsync`` and large writes do not yield to the hub even with monkey-patching,
so they run in gevent's threadpool: one slow disk freezes one thread, not
every session.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

import gevent

T = TypeVar("T")


def in_threadpool(fn: Callable[..., T], *args) -> T:
    """Run ``fn(*args)`` in the hub's threadpool and wait for it (re-raising its error).

    The error travels back as a value: raised inside the pool, gevent would
    also print it as a traceback, and a failed write is an event the caller
    logs as one ``key=value`` line.
    """
    def call():
        try:
            return True, fn(*args)
        except Exception as e:
            return False, e

    ok, value = gevent.get_hub().threadpool.apply(call)
    if not ok:
        raise value
    return value


def fsync_dir(path: str) -> None:
    """Make a rename or a new entry in *path* durable (the entry lives in the directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
