"""Waiting on a socket in as little memory, and writing to it in as little time, as possible.

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

Writes are the other way round: a reply or a command almost always fits in the
socket's buffer, so :func:`send_without_waiting` tries one send that cannot
wait, and only what is left (rarely anything) needs a deadline.
"""

from __future__ import annotations

from gevent import get_hub, getcurrent
from gevent import socket as _gevent_socket

_READ = 1  # libev/libuv's EV_READ

#: gevent's cooperative socket without TLS (gevent's SSLSocket is a subclass).
PlainSocket = _gevent_socket.socket


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


def send_without_waiting(sock, data: bytes) -> bytes | memoryview:
    """What is left of *data* after one send that cannot wait: empty when all of it
    went, as almost always. No timer: a ``gevent.Timeout`` per write, and
    ``sendall``'s own ``getsockopt``, cost more than the send. Only a plain gevent
    socket (its ``send`` takes a timeout of its own); a TLS socket or a test double
    gets *data* back whole."""
    if type(sock) is not PlainSocket:
        return data
    try:
        sent = sock.send(data, 0, 0.0)
    except BlockingIOError:
        return data
    if sent == len(data):
        return b""
    return memoryview(data)[sent:]
