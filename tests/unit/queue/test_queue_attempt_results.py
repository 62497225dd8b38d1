"""A recipient the target gives no usable result is deferred by the queue, never delivered.

``deliver_once`` turns a target's answers into one result per pending recipient.
These doubles misbehave the ways a target can: a ``PartialDeliveryError`` that
leaves a recipient out (with a permanent summary, which must not bounce it), or
that names something other than an error as its result.
"""

from __future__ import annotations

import gevent

from gmta.buffer import MemoryBuffer
from gmta.delivery import PartialDeliveryError
from gmta.errors import SMTPError
from gmta.queue.attempt import NO_RESULT, apply_results, deliver_once
from gmta.queue.record import DELIVERED, FAILED, PENDING, QueuedMessage, Recipient

REFUSED = SMTPError(550, (5, 1, 1), "No such user")


class PartialTarget:
    """A target whose body() raises PartialDeliveryError(*results*) as given."""

    def __init__(self, results: dict):
        self.results = results
        self.committed = self.aborted = False

    def start_delivery(self, meta, mail_from):
        return self

    def add_rcpt(self, rcpt, params=None):
        pass

    def body(self, header, body):
        error = PartialDeliveryError({"x@a.test": REFUSED})   # a valid one, then bent
        error.results = dict(self.results)
        raise error

    def commit(self):
        self.committed = True

    def abort(self):
        self.aborted = True


def record(*addresses: str) -> QueuedMessage:
    return QueuedMessage(id="q", msg_id="m", mail_from="s@example.org",
                         recipients=[Recipient(a) for a in addresses], header_size=2, size=4,
                         arrival=0.0)


def attempt(target, rec: QueuedMessage) -> dict:
    results = deliver_once(target, rec, b"\r\n", MemoryBuffer(b"Hi\r\n"))
    apply_results(rec, results, 1.0, max_tries=5)
    return results


def test_a_recipient_left_out_of_a_partial_result_is_deferred():
    # Every recipient named failed permanently: the summary is permanent, yet
    # the one left out may be deliverable.
    rec = record("x@a.test", "y@a.test", "z@b.test")
    results = attempt(PartialTarget({"x@a.test": REFUSED, "z@b.test": None}), rec)
    assert results["y@a.test"] is NO_RESULT and NO_RESULT.temporary
    states = {r.address: r.state for r in rec.recipients}
    assert states == {"x@a.test": FAILED, "y@a.test": PENDING, "z@b.test": DELIVERED}


def test_a_result_that_is_not_an_error_is_deferred():
    rec = record("x@a.test", "y@a.test")
    results = attempt(PartialTarget({"x@a.test": None, "y@a.test": gevent.GreenletExit()}), rec)
    assert results == {"x@a.test": None, "y@a.test": NO_RESULT}
    assert rec.recipient("y@a.test").state == PENDING


def test_every_pending_recipient_gets_a_result():
    rec = record("x@a.test", "y@a.test")
    rec.recipient("x@a.test").state = DELIVERED   # from an earlier attempt: not attempted
    results = attempt(PartialTarget({}), rec)
    assert results == {"y@a.test": NO_RESULT}
    assert rec.recipient("y@a.test").tries == 1 and rec.recipient("x@a.test").tries == 0
