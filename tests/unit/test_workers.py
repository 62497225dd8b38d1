"""``workers N``: the supervisor's restart policy and the listener group (gmta.daemon.workers)."""

from __future__ import annotations

import socket

import pytest

from gmta.config.values import Endpoint
from gmta.daemon import workers
from gmta.net import listen


def test_restart_delay_doubles_then_gives_up():
    worker = workers.Worker(0, {})
    delays = [workers._crashed(worker) for _ in range(workers.CRASH_LIMIT)]
    assert delays[:3] == [workers.RESTART_DELAY, 2 * workers.RESTART_DELAY,
                          4 * workers.RESTART_DELAY]
    assert delays[-1] is None


def test_old_crashes_are_forgotten(monkeypatch):
    worker = workers.Worker(0, {})
    now = [1000.0]
    monkeypatch.setattr(workers.time, "monotonic", lambda: now[0])
    for _ in range(workers.CRASH_LIMIT - 1):
        assert workers._crashed(worker) is not None
    now[0] += workers.CRASH_WINDOW + 1
    assert workers._crashed(worker) == workers.RESTART_DELAY


def test_bind_group_shares_one_port_with_reuseport():
    group = listen.bind_group(Endpoint("tcp", "127.0.0.1", 0), 3)
    try:
        ports = {s.getsockname()[1] for s in group}
        assert len(group) == 3 and len(ports) == 1
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in group)
        # A second gmta (or anything else) is refused, as with one worker.
        with pytest.raises(OSError, match="cannot listen on tcp://127.0.0.1:"):
            listen.bind_group(Endpoint("tcp", "127.0.0.1", ports.pop()), 2)
    finally:
        for s in group:
            s.close()


def test_bind_group_binds_a_unix_socket_once(tmp_path):
    group = listen.bind_group(Endpoint("unix", path=str(tmp_path / "s.sock")), 2)
    try:
        assert group[0] is group[1]
    finally:
        group[0].close()


def test_adopted_socket_is_served_instead_of_binding():
    [sock] = listen.bind_group(Endpoint("tcp", "127.0.0.1", 0), 1)
    address = Endpoint("tcp", "127.0.0.1", 0)
    try:
        listen.adopt(str(address), sock.fileno())
        served = listen.bind(address)
        assert served.getsockname() == sock.getsockname()
        served.close()
        # The inherited descriptor survives: a second bind (a reload) gets it again.
        again = listen.bind(address)
        assert again.getsockname() == sock.getsockname()
        again.close()
    finally:
        listen._adopted.pop(str(address), None)
        sock.close()


def test_two_blocks_on_the_same_written_address_keep_their_own_sockets():
    # smtp and openmetrics both on tcp://127.0.0.1:0: two ports, told apart by the block.
    address = Endpoint("tcp", "127.0.0.1", 0)
    [smtp] = listen.bind_group(address, 1)
    [metrics] = listen.bind_group(address, 1)
    keys = [listen.adoption_key(address, "smtp tcp://127.0.0.1:0"),
            listen.adoption_key(address, "openmetrics tcp://127.0.0.1:0")]
    try:
        listen.adopt(keys[0], smtp.fileno())
        listen.adopt(keys[1], metrics.fileno())
        assert listen.is_adopted(address, "smtp tcp://127.0.0.1:0")
        assert not listen.is_adopted(address)
        for owner, sock in (("smtp tcp://127.0.0.1:0", smtp),
                            ("openmetrics tcp://127.0.0.1:0", metrics)):
            served = listen.bind(address, owner)
            assert served.getsockname() == sock.getsockname()
            served.close()
    finally:
        for key in keys:
            listen._adopted.pop(key, None)
        smtp.close()
        metrics.close()


def test_a_worker_logs_its_lines_before_it_says_ready(monkeypatch):
    # The supervisor logs ``started`` on the workers' shared stderr once each
    # says ready; a worker's buffered ``listening`` lines must be out first.
    import io

    from gevent.queue import Queue

    import gmta.log
    from gmta.config.loader import LogTarget

    stream = io.StringIO()
    gmta.log.setup([LogTarget("stderr")], stream=stream, buffered=True)
    ours, theirs = socket.socketpair()
    try:
        gmta.log.get("endpoint").info("listening", address="tcp://127.0.0.1:25")
        role = workers.WorkerRole(0, 2, theirs)
        monkeypatch.setattr(role, "_watch_supervisor", lambda signals: None)
        role.ready(Queue())
        assert ours.recv(64) == workers.READY_LINE
        assert "event=listening" in stream.getvalue()
    finally:
        gmta.log.setup([], buffered=False)
        ours.close()
        theirs.close()
