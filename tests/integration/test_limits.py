"""``limits`` on the smtp endpoint (maddy-behaviour §3.2 L1–L3), and no slot leaks.

Every path that ends a transaction must give the slot back: RSET, QUIT, a
disconnect in the middle of DATA, a refused RCPT, an idle timeout, a
delivered message. With ``all concurrency 1`` a leak shows as the next
transaction waiting the full 5 s and getting ``451 4.4.5``.
"""

from __future__ import annotations

import smtplib
import socket
import time

import pytest

from tests.integration.conftest import base_config

pytestmark = pytest.mark.integration


def limited_config(state_dir, limits: str, extra: str = "") -> str:
    return base_config(state_dir, "tls off") + f"""
smtp tcp://127.0.0.1:0 {{
    defer_sender_reject no
    limits {{
        {limits}
    }}
    {extra}
    deliver_to dummy
}}
"""


def mail_is_accepted_at_once(port: int, source: str = "127.0.0.1") -> bool:
    """A fresh connection's MAIL gets 250 within a second (the slot is free)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as client:
        client.ehlo()
        started = time.monotonic()
        code, _ = client.mail("a@sender.test")
        return code == 250 and time.monotonic() - started < 1.0


def raw_session(port: int) -> tuple[socket.socket, object]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    reader = sock.makefile("rb")
    reader.readline()
    sock.sendall(b"EHLO x\r\n")
    while not reader.readline().startswith(b"250 "):
        pass
    return sock, reader


def test_l1_all_concurrency_waits_then_451_and_frees_on_release(start_gmta, state_dir):
    gmta = start_gmta(limited_config(state_dir, "all concurrency 1"))
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=15) as holder:
        holder.ehlo()
        assert holder.mail("a@sender.test")[0] == 250
        with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=15) as waiter:
            waiter.ehlo()
            started = time.monotonic()
            assert waiter.mail("b@sender.test") == (451, b"4.4.5 High load, try again later")
            assert 4.0 < time.monotonic() - started < 8.0
            holder.rset()
            assert waiter.mail("b@sender.test")[0] == 250
    gmta.wait_for(r"event=limit_wait_timeout")


def test_l2_ip_concurrency_is_per_client_address(start_gmta, state_dir):
    gmta = start_gmta(limited_config(state_dir, "ip concurrency 1"))
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10, source_address=("127.0.0.1", 0)) as one:
        one.ehlo()
        assert one.mail("a@sender.test")[0] == 250
        assert mail_is_accepted_at_once(gmta.port(), source="127.0.0.2")


def test_l3_rate_throttles_without_refusing(start_gmta, state_dir):
    gmta = start_gmta(limited_config(state_dir, "all rate 5 1s"))
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=15) as client:
        client.ehlo()
        for _ in range(10):
            assert client.mail("a@sender.test")[0] == 250
            assert client.rcpt("x@example.test")[0] == 250
            client.rset()
    elapsed = time.monotonic() - started
    # 5 tokens at once, then 5 more at 5 per second: about one second.
    assert 0.7 < elapsed < 4.0


def test_deferred_sender_reject_answers_every_rcpt(start_gmta, state_dir):
    """E14: with defer_sender_reject (the default) MAIL is 250 and each RCPT gets
    the sender-stage refusal."""
    config = limited_config(state_dir, "all concurrency 1").replace(
        "defer_sender_reject no", "defer_sender_reject yes")
    gmta = start_gmta(config)
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=20) as holder:
        holder.ehlo()
        holder.mail("a@sender.test")
        assert holder.rcpt("x@example.test")[0] == 250
        with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=20) as other:
            other.ehlo()
            assert other.mail("b@sender.test")[0] == 250
            assert other.rcpt("y@example.test") == (451, b"4.4.5 High load, try again later")
            # The refusal is remembered: no second 5 s wait for the same transaction.
            started = time.monotonic()
            assert other.rcpt("z@example.test")[0] == 451
            assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("path", ["rset", "quit", "data_disconnect", "refused_rcpt",
                                  "delivered", "new_ehlo", "idle_timeout"])
def test_no_slot_leaks(start_gmta, state_dir, path):
    extra = "read_timeout 1s" if path == "idle_timeout" else ""
    config = limited_config(state_dir, "all concurrency 1", extra)
    if path == "refused_rcpt":
        config = config.replace("deliver_to dummy", 'reject 550 5.1.1 "No such user"')
    gmta = start_gmta(config)
    sock, reader = raw_session(gmta.port())
    with sock:
        sock.sendall(b"MAIL FROM:<a@sender.test>\r\n")
        assert reader.readline().startswith(b"250")
        if path == "rset":
            sock.sendall(b"RSET\r\n")
            assert reader.readline().startswith(b"250")
        elif path == "quit":
            sock.sendall(b"QUIT\r\n")
            assert reader.readline().startswith(b"221")
        elif path == "data_disconnect":
            sock.sendall(b"RCPT TO:<x@example.test>\r\nDATA\r\n")
            assert reader.readline().startswith(b"250")
            assert reader.readline().startswith(b"354")
            sock.sendall(b"Subject: cut\r\n\r\nhalf")
            sock.shutdown(socket.SHUT_RDWR)
        elif path == "refused_rcpt":
            sock.sendall(b"RCPT TO:<x@example.test>\r\nRSET\r\n")
            assert reader.readline().startswith(b"550")
            assert reader.readline().startswith(b"250")
        elif path == "delivered":
            sock.sendall(b"RCPT TO:<x@example.test>\r\nDATA\r\n")
            reader.readline()
            reader.readline()
            sock.sendall(b"Subject: x\r\n\r\nx\r\n.\r\n")
            assert reader.readline().startswith(b"250")
        elif path == "new_ehlo":
            sock.sendall(b"EHLO again\r\n")
            while not reader.readline().startswith(b"250 "):
                pass
        elif path == "idle_timeout":
            assert reader.readline() == b"421 4.4.2 Idle timeout, bye bye\r\n"
        # The next transaction, on a new connection, gets the slot at once.
        deadline = time.monotonic() + 3
        while not mail_is_accepted_at_once(gmta.port()):
            assert time.monotonic() < deadline, f"slot leaked after {path}"


def test_l4_source_rate_bounds_full_messages_from_one_domain(start_gmta, state_dir):
    gmta = start_gmta(limited_config(state_dir, "source rate 5 1s"))
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=15) as client:
        for n in range(10):
            assert client.sendmail("a@sender.test", ["x@example.test"], f"Subject: {n}\r\n\r\nx\r\n") == {}
        # Another sender domain has its own bucket: no wait.
        other = time.monotonic()
        client.sendmail("b@other.test", ["x@example.test"], b"Subject: o\r\n\r\nx\r\n")
        assert time.monotonic() - other < 0.5
    assert 0.7 < time.monotonic() - started < 4.0


def test_l5_ip_rate_is_per_client_address(start_gmta, state_dir):
    gmta = start_gmta(limited_config(state_dir, "ip rate 5 1s"))
    started = time.monotonic()
    for source in ("127.0.0.1", "127.0.0.2"):
        with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=15,
                          source_address=(source, 0)) as client:
            client.ehlo()
            for _ in range(5):
                assert client.mail("a@sender.test")[0] == 250
                client.rset()
    # Each address has 5 tokens at once: ten transactions without throttling.
    assert time.monotonic() - started < 0.7
