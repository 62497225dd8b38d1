"""``gmta.daemon.notify``: sd_notify datagrams to a real unix socket."""

from __future__ import annotations

import secrets
import socket

import pytest

from gmta.daemon.notify import Notifier


@pytest.fixture
def receiver(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(5)
    yield sock
    sock.close()


def test_ready_and_stopping_reach_the_socket(receiver, tmp_path):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    assert notifier.enabled
    assert notifier.ready("accepting mail") is True
    assert receiver.recv(4096) == b"READY=1\nSTATUS=accepting mail"
    assert notifier.stopping("draining") is True
    assert receiver.recv(4096) == b"STOPPING=1\nSTATUS=draining"


def test_reloading_carries_the_monotonic_clock(receiver, tmp_path):
    """sd_notify(3): MONOTONIC_USEC= (CLOCK_MONOTONIC in µs) with RELOADING=1."""
    import time
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}).reloading("reloading")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading, usec, status = receiver.recv(4096).decode().split("\n")
    assert (reloading, status) == ("RELOADING=1", "STATUS=reloading")
    assert usec.startswith("MONOTONIC_USEC=") and before <= int(usec.split("=")[1]) <= after


def test_a_newline_in_a_status_cannot_add_an_assignment(receiver, tmp_path):
    Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}).status("one\nREADY=1")
    assert receiver.recv(4096) == b"STATUS=one READY=1"


def test_abstract_namespace_socket():
    name = "gmta-test-" + secrets.token_hex(6)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready("up") is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_without_notify_socket_nothing_is_sent():
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready("up") is False


def test_unsupported_address_is_ignored_with_a_warning(log_lines):
    notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled and notifier.ready("up") is False
    assert log_lines == ["module=daemon event=notify_socket_unsupported socket=vsock:2:1234"]


def test_a_missing_socket_is_logged_not_raised(tmp_path, log_lines):
    path = str(tmp_path / "gone.sock")
    assert Notifier({"NOTIFY_SOCKET": path}).ready("up") is False
    assert log_lines == [f'module=daemon event=notify_failed socket={path} '
                         f'error="[Errno 2] No such file or directory"']
