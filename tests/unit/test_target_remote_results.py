"""target.remote gives every accepted recipient a result from ``body()`` (no network).

The sessions are fakes handed out by ``connection_for``, so each path that could
leave a recipient without an answer is played exactly: a session that breaks at
a later RCPT (with a temporary or a permanent reply), and a content transfer
that outlives its deadline.
"""

from __future__ import annotations

from types import SimpleNamespace

import gevent
import pytest

import gmta.modules  # noqa: F401  (fills the registry)
from gmta.buffer import MemoryBuffer
from gmta.config.loader import load_block
from gmta.delivery import MessageMeta, PartialDeliveryError
from gmta.errors import SMTPError
from gmta.proto.client import Response
from gmta.proto.replies import Reply
from gmta.target import remote as remote_module

HEADER = b"Subject: results\r\n\r\n"


class FakeClient:
    """A session that accepts up to *break_at* - 1 RCPTs, then answers *break_reply* and is gone."""

    def __init__(self, break_at: int | None = None, break_reply: SMTPError | None = None,
                 content_delay: float = 0.0):
        self.break_at = break_at
        self.break_reply = break_reply or SMTPError(421, (4, 3, 2), "Closing")
        self.content_delay = content_delay
        self.usable = True
        self.transactions = 0
        self.rcpts: list[str] = []
        self.sent = False
        self.session_id = "fake"
        self.peer = "127.0.0.1:25"
        self.machine = SimpleNamespace(max_message_size=None)

    def supports(self, keyword: str) -> bool:
        return False

    def mail(self, address, params=None):
        self.transactions += 1

    def rcpt(self, address, params=None):
        if self.break_at is not None and len(self.rcpts) + 1 >= self.break_at:
            self.usable = False
            raise self.break_reply
        self.rcpts.append(address)

    def send_content(self, pieces):
        for _ in pieces:
            pass
        gevent.sleep(self.content_delay)
        self.sent = True
        return [Response(None, Reply(250, (2, 0, 0), "OK"))]

    def rset(self):
        pass

    def quit(self):
        self.usable = False

    close = quit


@pytest.fixture
def target(tmp_path):
    config = tmp_path / "remote.conf"
    config.write_text(f"hostname mx.gmta.test\nstate_dir {tmp_path}\n"
                      "target.remote out {\n command_timeout 0.1s\n submission_timeout 0.1s\n}\n")
    target = load_block(str(config), "out")
    target.clients = {}

    def connection_for(domain, delivery):
        client = target.clients[domain]
        return SimpleNamespace(client=client, mx=f"mx.{domain}",
                               facts=SimpleNamespace(domain=domain, tls_level="none"))
    target.connection_for = connection_for
    yield target
    target.stop()


def drive(target, rcpts):
    """add_rcpt each, then body(): {rcpt: None | SMTPError}, as the queue sees it."""
    delivery = target.start_delivery(MessageMeta("m"), "a@example.org")
    results, accepted = {}, []
    for rcpt in rcpts:
        try:
            delivery.add_rcpt(rcpt)
            accepted.append(rcpt)
        except SMTPError as error:
            results[rcpt] = error
    try:
        delivery.body(HEADER, MemoryBuffer(b"Hi\r\n"))
        results.update(dict.fromkeys(accepted, None))
    except PartialDeliveryError as partial:
        assert set(partial.results) == set(accepted)
        results.update(partial.results)
    except SMTPError as error:
        results.update(dict.fromkeys(accepted, error))
    delivery.commit()
    return results


@pytest.mark.parametrize("reply", [SMTPError(421, (4, 3, 2), "Closing"),
                                   SMTPError(554, (5, 3, 0), "Go away")])
def test_recipients_accepted_before_the_session_broke_are_temporary(target, reply):
    target.clients = {"a.test": FakeClient(break_at=2, break_reply=reply),
                      "b.test": FakeClient()}
    results = drive(target, ["x@a.test", "y@a.test", "z@b.test"])
    assert results["z@b.test"] is None and target.clients["b.test"].sent
    assert not target.clients["a.test"].sent
    lost = results["x@a.test"]
    # Accepted by the server, never sent: temporary even when the break was a 5xx.
    assert lost is not None and lost.temporary, lost
    assert "broke before the content was sent" in lost.text
    assert (results["y@a.test"].code, results["y@a.test"].enhanced) == \
        (reply.code, reply.enhanced)


def test_a_broken_session_alone_is_not_no_valid_recipients(target):
    target.clients = {"a.test": FakeClient(break_at=2)}
    results = drive(target, ["x@a.test", "y@a.test"])
    assert results["x@a.test"].code == 421 and results["x@a.test"].temporary


def test_content_past_its_deadline_is_a_temporary_failure(target, monkeypatch):
    monkeypatch.setattr(remote_module, "SEND_DEADLINE_MARGIN", 0.0)
    target.clients = {"a.test": FakeClient(content_delay=5.0), "b.test": FakeClient()}
    results = drive(target, ["x@a.test", "z@b.test"])
    assert results["z@b.test"] is None
    # Killed at the deadline: an SMTPError, never gevent's GreenletExit as a "result".
    error = results["x@a.test"]
    assert isinstance(error, SMTPError) and error.temporary, error
    assert "did not finish" in error.text
