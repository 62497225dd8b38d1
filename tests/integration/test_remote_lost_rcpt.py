"""A session that breaks at a later RCPT: the recipients it had accepted are not delivered.

Issue 7's review: when an MX accepts one recipient and then drops the connection
(or answers 421) at the next RCPT, the domain's session is gone, and the
recipients it had already accepted never got the content. They must come back
from ``body()`` as temporarily failed — never as delivered because another
domain of the message succeeded, never as permanently failed (DESIGN §4: never
lose mail). Driven in this process like the queue drives a target; the same
fault through the real ``gmta run`` is in test_remote_lost_rcpt_run.py.
"""

# ruff: noqa: F811  (fixtures imported from peers, then named as parameters)

from __future__ import annotations

import pytest

from gmta.buffer import MemoryBuffer
from gmta.queue.attempt import deliver_once
from gmta.queue.record import DELIVERED, QueuedMessage, Recipient
from tests.integration.peers import smtp_sink  # noqa: F401
from tests.integration.scriptedmx import ScriptedMX
from tests.integration.test_remote import (BODY, HEADER, deliver, port, remote,  # noqa: F401
                                           remote_dns)

pytestmark = pytest.mark.integration


@pytest.fixture
def scripted_mx(port):
    """``scripted_mx(**faults)`` → a ScriptedMX on 127.0.0.5 (MX of two.remote.test)."""
    started = []

    def start(**faults) -> ScriptedMX:
        mx = ScriptedMX("127.0.0.5", port, **faults)
        started.append(mx)
        return mx

    yield start
    for mx in started:
        mx.stop()


@pytest.mark.parametrize("fault", ["drop", "421"])
def test_accepted_recipients_of_a_broken_session_are_deferred(remote, smtp_sink, port,
                                                              scripted_mx, fault):
    broken = scripted_mx(rcpt_fault=fault, fault_at_rcpt=2)
    sink = smtp_sink(host="127.0.0.3", port=port)
    target = remote("limits { destination concurrency 2 }")
    results = deliver(target, ["a1@two.remote.test", "a2@two.remote.test",
                               "c@one.remote.test"])
    assert results["c@one.remote.test"] is None
    assert len(sink.wait_for_messages(1)) == 1
    for rcpt in ("a1@two.remote.test", "a2@two.remote.test"):
        error = results[rcpt]
        assert error is not None and error.temporary, (rcpt, error)
    assert broken.rcpts_seen == [["a1@two.remote.test", "a2@two.remote.test"]]
    assert broken.received == []
    assert target.limits.state()["destination"]["in_use"] == 0


def test_a_broken_session_alone_is_temporary_not_no_valid_recipients(remote, scripted_mx):
    """With no other domain, the accepted recipient is not refused with 554 5.5.1."""
    scripted_mx(rcpt_fault="drop", fault_at_rcpt=2)
    target = remote()
    results = deliver(target, ["a1@two.remote.test", "a2@two.remote.test"])
    assert all(e is not None and e.temporary for e in results.values()), results


def test_the_queue_attempt_defers_them_and_the_next_attempt_delivers(remote, smtp_sink, port,
                                                                     scripted_mx):
    mx = scripted_mx(rcpt_fault="421", fault_at_rcpt=2, faulty_sessions=1)
    sink = smtp_sink(host="127.0.0.3", port=port)
    target = remote()
    record = QueuedMessage(id="q1", msg_id="m1", mail_from="a@example.org", recipients=[
        Recipient("a1@two.remote.test"), Recipient("a2@two.remote.test"),
        Recipient("c@one.remote.test")], header_size=len(HEADER),
        size=len(HEADER) + len(BODY), arrival=0.0)
    first = deliver_once(target, record, HEADER, MemoryBuffer(BODY))
    assert first["c@one.remote.test"] is None
    assert first["a1@two.remote.test"].temporary and first["a2@two.remote.test"].temporary
    assert len(sink.wait_for_messages(1)) == 1 and mx.received == []
    # The retry: the MX behaves now.
    for r in record.recipients:
        if r.address == "c@one.remote.test":
            r.state = DELIVERED
    second = deliver_once(target, record, HEADER, MemoryBuffer(BODY))
    assert second == {"a1@two.remote.test": None, "a2@two.remote.test": None}
    [received] = mx.received
    assert received.rcpts == ["a1@two.remote.test", "a2@two.remote.test"]
