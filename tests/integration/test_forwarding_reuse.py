"""target.smtp reusing downstream sessions (gmta/target/conncache.py), against real peers.

Postfix's smtp-sink is the downstream, and gmta's own submission endpoint where
the downstream must check AUTH. Sessions are counted from gmta's log: every
``delivered`` line names the session that carried the message (target.smtp's
own line, or through the queue the queue's line with target.smtp's receipt).
"""

# The peers' fixtures are imported, then named as test parameters: that is how pytest
# uses fixtures from another module, not a redefinition.
# ruff: noqa: F811

from __future__ import annotations

import re
import smtplib
import time

import pytest

from tests.integration.peers import SmtpSink, ca, smtp_sink  # noqa: F401
from tests.integration.test_forwarding import (PASSWORD, auth_forward_upstream, queue_to,
                                               start_auth_downstream)

pytestmark = pytest.mark.integration


def message(n: int, sender: str = "a@example.org") -> bytes:
    return (f"From: {sender}\r\nTo: b@example.test\r\nMessage-Id: <reuse-{n}@example.org>\r\n"
            f"Subject: reuse {n}\r\n\r\nHello.\r\n").encode()


def sessions_used(gmta) -> list[str]:
    """The downstream session of each forwarded message, in order."""
    return [re.search(r" session=(\S+)", line).group(1) for line in gmta.lines
            if "event=delivered" in line and " session=" in line]


def wait_for_deliveries(gmta, count: int, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        used = sessions_used(gmta)
        if len(used) >= count:
            return used
        time.sleep(0.05)
    raise AssertionError(f"{len(sessions_used(gmta))} of {count} delivered:\n"
                         + "\n".join(gmta.lines))


def test_messages_through_the_queue_share_few_sessions(start_gmta, state_dir, smtp_sink):
    sink = smtp_sink()
    gmta = queue_to(start_gmta, state_dir, sink, "conn_reuse_limit 5")
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=30) as client:
        for n in range(20):
            client.sendmail("a@example.org", ["b@example.test"], message(n))
    used = wait_for_deliveries(gmta, 20)
    assert len(sink.wait_for_messages(20)) == 20
    # At most 5 transactions per session; deliveries that overlap may open a few more.
    assert 4 <= len(set(used)) <= 10, used
    assert all(used.count(session) <= 5 for session in used), used


def test_a_session_closed_while_idle_is_replaced_without_failing(start_gmta, state_dir,
                                                                 smtp_sink):
    sink = smtp_sink()
    gmta = queue_to(start_gmta, state_dir, sink)
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=30) as client:
        client.sendmail("a@example.org", ["b@example.test"], message(1))
    [first] = wait_for_deliveries(gmta, 1)
    # The downstream goes away and comes back on the same port: the idle session
    # in gmta's cache is dead.
    port = sink.port
    sink.stop()
    sink = smtp_sink(port=port)
    for n, idle in ((2, 0.2), (3, 2.5)):
        # Under 2 s of idleness the cache only peeks at the session; beyond, it asks NOOP.
        time.sleep(idle)
        with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=30) as client:
            client.sendmail("a@example.org", ["b@example.test"], message(n))
        wait_for_deliveries(gmta, n)
        if n == 2:
            sink.wait_for_messages(1)
            sink.stop()
            sink = smtp_sink(port=port)
    used = sessions_used(gmta)
    assert len(set(used)) == 3, used
    assert not any("event=deferred" in line for line in gmta.lines)
    assert len(sink.wait_for_messages(1)) == 1


@pytest.fixture
def two_user_downstream(start_gmta, tmp_path, ca):
    """gmta's submission endpoint knowing alice and bob (the one of test_forwarding
    knows alice only, and its password file is re-read every 15 s)."""
    return start_auth_downstream(start_gmta, tmp_path, ca,
                                 ("alice@example.org", "bob@example.org"))


def test_auth_forward_never_reuses_a_session_across_users(start_gmta, state_dir, ca,
                                                          two_user_downstream):
    auth_downstream = two_user_downstream
    gmta = auth_forward_upstream(start_gmta, state_dir, auth_downstream, ca)
    order = ["alice", "bob", "alice", "bob", "alice"]
    for n, user in enumerate(order):
        with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=30) as client:
            client.login(f"{user}@example.org", PASSWORD)
            client.sendmail(f"{user}@example.org", ["b@example.test"],
                            message(n, f"{user}@example.org"))
    auth_downstream.wait_for(r"event=accepted .*sender=alice@example.org", 10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and \
            sum("event=accepted" in line for line in auth_downstream.lines) < len(order):
        time.sleep(0.05)
    # At the downstream: which user each session authenticated as, and who sent
    # each message it accepted.
    user_of = {}
    accepted = []
    for line in auth_downstream.lines:
        session = re.search(r" session=(\S+)", line)
        if "event=authenticated" in line:
            user_of[session.group(1)] = re.search(r" username=(\S+)", line).group(1)
        elif "event=accepted" in line:
            sender = re.search(r" sender=(\S+)", line).group(1)
            accepted.append((session.group(1), sender))
    assert len(accepted) == len(order), auth_downstream.lines
    assert all(user_of[session] == sender for session, sender in accepted), (user_of, accepted)
    # Each user's session carried that user's later messages.
    assert sorted(user_of.values()) == ["alice@example.org", "bob@example.org"], user_of


def test_no_reuse_with_conn_max_idle_count_0(start_gmta, state_dir, smtp_sink):
    sink: SmtpSink = smtp_sink()
    gmta = queue_to(start_gmta, state_dir, sink, "conn_max_idle_count 0")
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=30) as client:
        for n in range(3):
            client.sendmail("a@example.org", ["b@example.test"], message(n))
    used = wait_for_deliveries(gmta, 3)
    assert len(set(used)) == 3, used
