"""The connection cache (gmta/target/conncache.py) and the idle check of SMTPClient."""

from __future__ import annotations

import socket

import gevent
import pytest

from gmta.errors import SMTPError
from gmta.net.client import SMTPClient
from gmta.proto.client import ClientConnection
from gmta.target.conncache import TRIM_DELAY, ConnectionCache


class FakeClient:
    def __init__(self, quiet: bool | None = True, noop_ok: bool = True):
        self.usable = True
        self.peer = "sink"
        self.quiet = quiet
        self.noop_ok = noop_ok
        self.noops = 0
        self.closed = False

    def quiet_while_idle(self):
        return self.quiet

    def noop(self):
        self.noops += 1
        if not self.noop_ok:
            raise SMTPError(421, (4, 4, 2), "gone")

    def quit(self):
        self.close()

    def close(self):
        self.usable = False
        self.closed = True


class Held:
    def __init__(self, client):
        self.client = client


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def cache(clock, **kwargs) -> ConnectionCache:
    return ConnectionCache(max_idle_per_key=2, max_idle_time=60, clock=clock, **kwargs)


def test_young_quiet_session_is_reused_without_noop():
    clock = Clock()
    c = cache(clock, check_after=2.0)
    client = FakeClient()
    c.put("k", Held(client))
    clock.now += 1
    assert c.take("k").client is client and client.noops == 0
    c.close_all()


def test_young_session_that_hung_up_is_closed_and_the_next_taken():
    clock = Clock()
    c = cache(clock, check_after=2.0)
    alive, dead = FakeClient(), FakeClient(quiet=False)
    c.put("k", Held(alive))
    c.put("k", Held(dead))     # newest: taken first
    assert c.take("k").client is alive
    assert dead.closed and dead.noops == 0
    c.close_all()


def test_older_or_unknown_sessions_get_a_noop():
    clock = Clock()
    c = cache(clock, check_after=2.0)
    old, tls = FakeClient(), FakeClient(quiet=None)
    c.put("old", Held(old))
    clock.now += 3
    assert c.take("old").client is old and old.noops == 1
    c.put("tls", Held(tls))
    assert c.take("tls").client is tls and tls.noops == 1
    c.close_all()


def test_without_check_after_every_session_gets_a_noop():
    clock = Clock()
    c = cache(clock)      # target.remote's way
    client = FakeClient(noop_ok=False)
    c.put("k", Held(client))
    assert c.take("k") is None and client.noops == 1 and client.closed
    c.close_all()


def test_surplus_over_the_per_key_bound_waits_to_be_taken_again():
    # Three deliveries give their sessions back at once (max_idle_per_key=2):
    # the next delivery takes one before the surplus is closed.
    c = cache(Clock(), check_after=2.0)
    clients = [FakeClient() for _ in range(3)]
    for client in clients:
        c.put("k", Held(client))
    assert c.idle("k") == 3 and not any(client.closed for client in clients)
    assert c.take("k").client is clients[2]
    assert c.trim() == 0
    c.put("k", Held(clients[2]))
    assert c.trim() == 1 and clients[0].closed     # the oldest goes
    assert c.idle("k") == 2
    c.close_all()


def test_surplus_is_closed_after_the_trim_delay():
    c = cache(Clock())
    clients = [FakeClient() for _ in range(4)]
    for client in clients:
        c.put("k", Held(client))
    gevent.sleep(TRIM_DELAY + 0.2)
    assert [client.closed for client in clients] == [True, True, False, False]
    assert c.idle("k") == 2
    c.close_all()


def test_the_overall_bound_holds_at_once():
    c = cache(Clock(), max_idle_total=3)
    clients = [FakeClient() for _ in range(4)]
    for n, client in enumerate(clients):
        c.put(f"k{n % 2}", Held(client))
    assert len(c) == 3 and clients[0].closed
    c.close_all()


@pytest.fixture
def session_pair():
    """A client session past its greeting on one end of a real TCP connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    raw = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    machine = ClientConnection()
    machine.receive_data(b"220 sink ESMTP\r\n")
    machine.next_event()
    client = SMTPClient(raw, machine, peer="sink", command_timeout=5, submission_timeout=5)
    yield client, server
    client.close()
    server.close()


def test_quiet_while_idle_sees_a_quiet_server(session_pair):
    client, _server = session_pair
    assert client.quiet_while_idle() is True
    assert client.sock.gettimeout() is None   # restored


def test_quiet_while_idle_sees_a_421_or_a_close(session_pair):
    client, server = session_pair
    server.sendall(b"421 idle too long\r\n")
    assert client.quiet_while_idle() is False
    server.close()
    assert client.quiet_while_idle() is False
