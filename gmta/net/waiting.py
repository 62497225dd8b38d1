"""Waiting until a socket is readable, with a timeout, in as little memory as possible.

An idle SMTP session spends its life waiting for its next command, so what a
parked greenlet holds is multiplied by every open connection. Blocking inside
gevent's ``socket.recv`` with a timeout parks the greenlet under a chain of
C-level calls (``wait_on_socket``, ``wait_on_watcher``, the ``Waiter``, the
hub's ``wait``), all of which greenlet copies to the heap while the session
sleeps, and keeps a ``gevent.Timeout`` object with its timer alive.
:func:`wait_readable` parks on two plain watchers and switches to the hub
directly: about 1.5 KiB less per idle session (bench/README.md, idle sessions).
The caller then reads with the ordinary cooperative ``recv``, which finds the
data waiting.
"""

from __future__ import annotations

from gevent import get_hub, getcurrent

_READ = 1  # libev/libuv's EV_READ


def wait_readable(fileno: int, timeout: float) -> bool:
    """Block this greenlet until *fileno* is readable (True) or *timeout* seconds
    have passed (False). An exception thrown into the greenlet (a stop, a kill)
    is raised here, with both watchers stopped."""
    hub = get_hub()
    switch = getcurrent().switch
    readable = hub.loop.io(fileno, _READ)
    timer = hub.loop.timer(timeout)
    try:
        readable.start(switch, True)
        # update: start from the loop's time now, not from when it last woke up,
        # or the timer could expire early (as gevent.Timeout does it).
        timer.start(switch, False, update=True)
        return hub.switch() is not False
    finally:
        readable.close()
        timer.close()
