"""systemd's readiness protocol (sd_notify(3)), without libsystemd.

When systemd starts a ``Type=notify`` service it sets ``$NOTIFY_SOCKET`` to a
unix datagram socket; the service sends newline-separated ``KEY=VALUE``
assignments to it: ``READY=1`` once it serves, ``RELOADING=1`` when a reload
begins (then ``READY=1`` again when it is done, whether the new configuration
was taken or refused), ``STOPPING=1`` when it begins to stop, ``STATUS=...``
as a one-line status for ``systemctl status``.
Outside systemd the variable is unset and every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time

import gmta.log

log = gmta.log.get("daemon")


class Notifier:
    """Sends state changes to ``$NOTIFY_SOCKET``; a no-op when it is not set."""

    def __init__(self, environ: dict[str, str] | None = None):
        environ = os.environ if environ is None else environ
        self.address = _socket_address(environ.get("NOTIFY_SOCKET", ""))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: object) -> bool:
        """Send ``KEY=VALUE`` lines (``ready=1`` → ``READY=1``); True if the datagram went out."""
        if self.address is None:
            return False
        message = "\n".join(f"{key.upper()}={_one_line(value)}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # A datagram to a local socket does not block for long, but a
                # full receive queue could: bound it.
                sock.settimeout(2.0)
                sock.sendto(message.encode("utf-8"), self.address)
        except OSError as e:
            # Readiness is systemd's business; gmta keeps serving mail whatever
            # happened to the notification (systemd times the start out itself).
            log.warning("notify_failed", socket=_printable(self.address), error=str(e))
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify(ready=1, status=status)

    def reloading(self, status: str) -> bool:
        # sd_notify(3): MONOTONIC_USEC= (CLOCK_MONOTONIC in µs) goes with
        # RELOADING=1; systemd ≥ 253 uses it to match the reload it asked for
        # (Type=notify-reload) and older versions ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(reloading=1, monotonic_usec=usec, status=status)

    def stopping(self, status: str) -> bool:
        return self.notify(stopping=1, status=status)

    def status(self, status: str) -> bool:
        return self.notify(status=status)


def _socket_address(value: str) -> str | bytes | None:
    """The address to send to: a path, or an abstract name (``@name`` → ``\\0name``)."""
    if not value:
        return None
    if value.startswith("@"):
        # Linux abstract namespace: a leading NUL, not a file (sd_notify(3)).
        return b"\0" + value[1:].encode("utf-8")
    if value.startswith("/"):
        return value
    # systemd also allows vsock: addresses (for VMs); gmta does not speak them.
    log.warning("notify_socket_unsupported", socket=value)
    return None


def _one_line(value: object) -> str:
    # A newline would start a new assignment: systemd would read it as one.
    return str(value).replace("\n", " ")


def _printable(address: str | bytes) -> str:
    return "@" + address[1:].decode("utf-8", "replace") if isinstance(address, bytes) else address
