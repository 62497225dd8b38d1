"""Listening sockets for endpoints: ``tcp://``, ``tls://`` and ``unix://``.

Each address becomes a gevent ``StreamServer`` that runs the endpoint's
handler in a greenlet per connection. Implicit TLS (``tls://``) is not done
here: the handler performs the handshake under its own timeout, so a client
that connects and stays silent cannot hold the accept loop.

With ``workers N`` (``gmta.daemon.workers``) the supervisor binds every
listener once for all workers: :func:`bind_group` makes one ``SO_REUSEPORT``
socket per worker on each TCP address (the kernel spreads connections over
them), a unix socket is bound once and shared. A worker receives its sockets
as inherited descriptors and :func:`adopt` registers them, so that the
endpoint's own :func:`bind` takes the inherited socket instead of binding.
"""

from __future__ import annotations

import errno
import os
import socket as _stdlib_socket
import stat
from typing import Callable

from gevent import socket
from gevent.server import StreamServer

from gmta.config.values import Endpoint

BACKLOG = 1024

#: Listening sockets inherited from the supervisor: adoption_key → descriptor.
_adopted: dict[str, int] = {}


def adoption_key(address, owner: str = "") -> str:
    """The name of an inherited socket: the block that listens (*owner*, its instance
    name) and the address as written in the config. The address alone is not enough:
    two blocks may each listen on ``tcp://127.0.0.1:0``, which are two ports."""
    return f"{owner} {address}" if owner else str(address)


def adopt(key: str, fd: int) -> None:
    """Serve the address named *key* (:func:`adoption_key`) on the inherited socket *fd*."""
    _adopted[key] = fd


def is_adopted(address, owner: str = "") -> bool:
    """Whether *owner*'s *address* is served on an inherited socket (``workers N``)."""
    return adoption_key(address, owner) in _adopted


def bind(endpoint: Endpoint, owner: str = "") -> socket.socket:
    """A listening socket for *owner*'s *endpoint*; raises OSError with a clear message."""
    fd = _adopted.get(adoption_key(endpoint, owner))
    if fd is not None:
        # A duplicate, so that closing it (stop, or a reload binding again)
        # leaves the inherited descriptor for the next bind.
        return socket.socket(fileno=os.dup(fd))
    if endpoint.is_unix:
        return _bind_unix(endpoint.path)
    return _bind_tcp(endpoint)


def bind_group(endpoint: Endpoint, count: int) -> list[socket.socket]:
    """*count* listening sockets on *endpoint*, one per worker: ``SO_REUSEPORT`` on TCP
    (each has its own accept queue), the same socket *count* times on unix://."""
    if endpoint.is_unix:
        return [_bind_unix(endpoint.path)] * count
    # SO_REUSEPORT would let us join a group that another gmta (same user)
    # already listens in, silently splitting its connections with it. A plain
    # bind first fails with EADDRINUSE then, as it does with one worker.
    probe = _bind_tcp(endpoint, listen=False)
    port = probe.getsockname()[1]
    probe.close()
    # Port 0: every socket of the group takes the port the kernel gave the probe.
    fixed = Endpoint(endpoint.scheme, endpoint.host, port)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(_bind_tcp(fixed, reuse_port=True))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_tcp(endpoint: Endpoint, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    family = _stdlib_socket.AF_INET6 if ":" in endpoint.host else _stdlib_socket.AF_INET
    sock = socket.socket(family, _stdlib_socket.SOCK_STREAM)
    try:
        sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEPORT, 1)
        sock.bind((endpoint.host or ("::" if family == _stdlib_socket.AF_INET6 else "0.0.0.0"),
                   endpoint.port))
        if listen:
            sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise _failure(e, f"cannot listen on {endpoint}") from None
    return sock


def _failure(e: OSError, what: str) -> OSError:
    # Some errors carry no errno ("AF_UNIX path too long"): strerror is None then.
    if e.errno is None:
        return OSError(f"{what}: {e}")
    return OSError(e.errno, f"{what}: {e.strerror}")


def _bind_unix(path: str) -> socket.socket:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    # A socket file left by a previous run would make bind fail; only a
    # socket is removed, never a regular file someone put there.
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # Who may connect is decided by the directory's permissions, as for a
        # loopback port anyone on the host may reach: the socket itself is
        # open to all, or local programs (gmta sendmail run by cron for any
        # user) could not connect to a socket bound by root or gmta.
        os.chmod(path, 0o666)
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise OSError(e.errno, f"cannot listen on unix://{path}: a file is in the way") from None
        raise _failure(e, f"cannot listen on unix://{path}") from None
    return sock


def duplicate(sock) -> socket.socket:
    """Another descriptor of the same listening socket (reload hands it over): the
    kernel socket, with the connections waiting in its backlog, lives on until
    every descriptor is closed."""
    return socket.fromfd(sock.fileno(), sock.family, sock.type)


class SessionServer(StreamServer):
    """A ``StreamServer`` whose greenlet per connection runs the handler itself.

    gevent's own wraps the handler in ``_handle_and_close_when_done``, which
    calls it as ``handle(*args)``: on CPython 3.11 that call starts a second
    C-level interpreter frame, and the C stack under a parked greenlet is
    copied to the heap at each switch. Without the wrapper, an idle SMTP
    session costs about 0.7 KiB less (bench/README.md, idle sessions). The
    handler therefore owns the socket: it must close it.
    """

    def do_handle(self, sock, address):
        try:
            self._spawn(self._handle, sock, address)
        except BaseException:
            sock.close()
            raise


def serve(endpoint: Endpoint, handler: Callable, sock: socket.socket | None = None) -> StreamServer:
    """Start accepting on *sock* (bound to *endpoint* now if None); *handler(sock, address)*
    runs per connection, in a greenlet of its own, and closes *sock* when done."""
    server = SessionServer(sock if sock is not None else bind(endpoint), handler)
    server.start()
    return server


def local_address(server: StreamServer, endpoint: Endpoint) -> str:
    """The address actually bound (port 0 becomes the kernel's choice)."""
    if endpoint.is_unix:
        return str(endpoint)
    host, port = server.socket.getsockname()[:2]
    return str(Endpoint(endpoint.scheme, host, port))
