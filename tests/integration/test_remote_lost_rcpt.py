"""A session that breaks at a later RCPT: the recipients it had accepted are not delivered.

Issue 7's review: when an MX accepts one recipient and then drops the connection
(or answers 421) at the next RCPT, the domain's session is gone, and the
recipients it had already accepted never got the content. They must come back
from ``body()`` as temporarily failed — never as delivered because another
domain of the message succeeded, never as permanently failed (DESIGN §4: never
lose mail). Driven in this process like the queue drives a target, then the
same fault through the real ``gmta run`` (queue → remote). Last, the LMTP
twin (target.lmtp): replies read before the connection broke stand.
"""

# ruff: noqa: F811  (fixtures imported from peers, then named as parameters)

from __future__ import annotations

import functools
import re
import smtplib

import pytest

from gmta.buffer import MemoryBuffer
from gmta.queue.attempt import deliver_once
from gmta.queue.record import DELIVERED, QueuedMessage, Recipient
from tests.integration.conftest import maildir_messages
from tests.integration.peers import smtp_sink, stopped_at_end  # noqa: F401
from tests.integration.scriptedmx import ScriptedMX
from tests.integration.test_remote import (BODY, HEADER, deliver, port,  # noqa: F401
                                           queue_to_remote, remote, remote_dns)

pytestmark = pytest.mark.integration


@pytest.fixture
def scripted_mx(port):
    """``scripted_mx(**faults)`` → a ScriptedMX on 127.0.0.5 (MX of two.remote.test)."""
    yield from stopped_at_end(functools.partial(ScriptedMX, "127.0.0.5", port))


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


def test_through_gmta_run_the_broken_domain_is_deferred_then_delivered_once(
        start_gmta, state_dir, remote_dns, smtp_sink, port, scripted_mx):
    mx = scripted_mx(rcpt_fault="drop", fault_at_rcpt=2, faulty_sessions=1)
    sink = smtp_sink(host="127.0.0.3", port=port)
    gmta = start_gmta(queue_to_remote(state_dir, remote_dns, port))
    rcpts = ["a1@two.remote.test", "a2@two.remote.test", "c@one.remote.test"]
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=30) as client:
        client.sendmail("s@example.org", rcpts, b"Subject: lost rcpt\r\n\r\nHi\r\n")
    # First attempt: one.remote.test delivered, both of two.remote.test deferred.
    gmta.wait_for(r"event=deferred .*rcpt=a1@two\.remote\.test .*attempt=1")
    gmta.wait_for(r"event=deferred .*rcpt=a2@two\.remote\.test .*attempt=1")
    # The retry, with the MX behaving: delivered, once.
    gmta.wait_for(r"event=done .*delivered=3 failed=0", timeout=20)
    [received] = mx.messages_for("a1@two.remote.test")
    assert received.rcpts == ["a1@two.remote.test", "a2@two.remote.test"]
    assert len(mx.received) == 1 and mx.sessions == 2
    assert [m.get_all("X-Rcpt-Args") for m in sink.messages()] == [["<c@one.remote.test>"]]
    delivered = [line for line in gmta.lines if re.search(r"event=delivered .*rcpt=a1@", line)]
    assert len(delivered) == 1 and "attempt=2" in delivered[0], delivered
    assert maildir_messages(state_dir, "s@example.org") == []   # no bounce


def test_lmtp_replies_read_before_the_connection_broke_stand(tmp_path, port):
    """RFC 2033 §4.2: each LMTP reply is final; a break after the first keeps it."""
    from gmta.config.loader import load_block
    from gmta.delivery import MessageMeta, PartialDeliveryError

    server = ScriptedMX("127.0.0.5", port, lmtp=True, lmtp_replies=1)
    try:
        config = tmp_path / "lmtp.conf"
        config.write_text(f"hostname mx.gmta.test\nstate_dir {tmp_path}\n"
                          f"target.lmtp mailboxes {{\n targets tcp://127.0.0.5:{port}\n"
                          " command_timeout 5s\n}\n")
        target = load_block(str(config), "mailboxes")
        delivery = target.start_delivery(MessageMeta("l"), "a@example.org")
        delivery.add_rcpt("x@example.test")
        delivery.add_rcpt("y@example.test")
        with pytest.raises(PartialDeliveryError) as partial:
            delivery.body(HEADER, MemoryBuffer(BODY))
        delivery.abort()
        # x was delivered (its 250 arrived): a retry must not send it again.
        assert partial.value.results["x@example.test"] is None
        assert partial.value.results["y@example.test"].temporary
        [received] = server.received
        assert received.rcpts == ["x@example.test"]
    finally:
        server.stop()
