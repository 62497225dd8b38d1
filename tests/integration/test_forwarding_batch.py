"""target.smtp/lmtp in batch mode (MessageMeta.batch, the queue's way), against real peers.

The envelope goes with DATA in one write (RFC 2920 §3.1) and the content in the
next; the recipients are answered by ``body()``. Postfix's smtp-sink (which
offers PIPELINING and not CHUNKING) checks that the message arrives intact
through ``gmta run`` and its queue, and refuses MAIL or every RCPT (its ``-r``
turns PIPELINING off: one command at a time). Dovecot's LMTP server offers
PIPELINING and CHUNKING: MAIL and the RCPTs go in one write, the content in
BDAT; it refuses recipients at RCPT and at the content. The refusals of a
pipelined DATA are in tests/unit/test_client_pipelined_data.py, byte for byte.
"""

# The peers' fixtures are imported, then named as test parameters: that is how pytest
# uses fixtures from another module, not a redefinition.
# ruff: noqa: F811

from __future__ import annotations

import smtplib
from contextlib import contextmanager

import pytest

import gmta.modules  # noqa: F401  (fills the module registry for load_block)
from gmta.buffer import MemoryBuffer
from gmta.delivery import MessageMeta, PartialDeliveryError
from gmta.errors import SMTPError
from tests.integration.peers import dovecot_lmtp, smtp_sink  # noqa: F401
from tests.integration.test_forwarding import load_target, queue_to

pytestmark = pytest.mark.integration

#: Lines a dot-stuffing bug would damage, and more than CONTENT_PIECE (64 KiB) of body
#: so the content goes in several writes.
BODY = (b".\r\n..two dots\r\n.one dot\r\nend of the tricky lines\r\n"
        + b"".join(b"line %05d " % n + b"x" * 60 + b"\r\n" for n in range(1200)))
MESSAGE = (b"From: a@example.org\r\nTo: b@example.test\r\nSubject: batch\r\n"
           b"Message-Id: <batch@example.org>\r\n\r\n" + BODY)


@contextmanager
def started_smtp_target(tmp_path, state_dir, sink):
    """A started target.smtp to *sink*, driven in this process; stopped at the end."""
    target = load_target(tmp_path, state_dir, f"target.smtp mailboxes {{\n targets "
                                              f"{sink.address}\n attempt_starttls no\n}}\n")
    target.start()
    try:
        yield target
    finally:
        target.stop()


def test_relayed_through_the_queue_message_arrives_intact(start_gmta, state_dir, smtp_sink):
    sink = smtp_sink()
    gmta = queue_to(start_gmta, state_dir, sink)
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=30) as client:
        assert client.sendmail("a@example.org", ["b@example.test", "c@example.test"],
                               MESSAGE) == {}
    # One line per recipient, the queue's, with what the sink said.
    for rcpt in ("b@example.test", "c@example.test"):
        line = gmta.wait_for(rf"module=queue event=delivered .*rcpt={rcpt}", timeout=20)
        assert f"target={sink.address}" in line and 'reply="250 2.0.0 Ok' in line
    # The sink's 250 came after its dump was written: the dump is whole now.
    [dump] = sink.wait_for_messages(1)
    dumped = dump.as_bytes()
    assert dump.get_all("X-Rcpt-Args") == ["<b@example.test>", "<c@example.test>"]
    # smtp-sink writes its dump with LF line ends, after undoing the dot-stuffing.
    assert MESSAGE.replace(b"\r\n", b"\n") in dumped
    assert not any("module=target.smtp event=delivered" in line for line in gmta.lines)


def test_target_smtp_batch_answers_the_recipients_at_body(tmp_path, state_dir, smtp_sink):
    sink = smtp_sink()
    with started_smtp_target(tmp_path, state_dir, sink) as target:
        sessions = []
        target.on_connect = sessions.append
        for n in range(2):
            delivery = target.start_delivery(MessageMeta(f"b{n}", batch=True), "a@example.org")
            delivery.add_rcpt("b@example.test")
            delivery.body(MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n", MemoryBuffer(BODY))
            delivery.commit()
            assert delivery.receipts["b@example.test"]["reply"].startswith("250 ")
        assert len(sink.wait_for_messages(2)) == 2
        assert len(sessions) == 1   # the second message reused the first session


@pytest.fixture
def lmtp_target(tmp_path, state_dir, dovecot_lmtp):
    dovecot = dovecot_lmtp({"alice@example.test": None, "full@example.test": "*:storage=1K"})
    target = load_target(tmp_path, state_dir,
                         f"target.lmtp mailboxes {{\n targets {dovecot.address}\n}}\n")
    target.start()
    yield target, dovecot
    target.stop()


def test_lmtp_batch_results_per_recipient_from_rcpt_and_content(lmtp_target):
    target, dovecot = lmtp_target
    delivery = target.start_delivery(MessageMeta("l1", batch=True), "a@example.org")
    for rcpt in ("alice@example.test", "nobody@example.test", "full@example.test"):
        delivery.add_rcpt(rcpt)   # answered at body()
    big = b"Subject: batch\r\n\r\n" + b"y" * 70 + b"\r\n"
    with pytest.raises(PartialDeliveryError) as partial:
        delivery.body(big, MemoryBuffer(b"".join([b"y" * 70 + b"\r\n"] * 60)))
    delivery.abort()
    results = partial.value.results
    assert results["alice@example.test"] is None
    assert results["nobody@example.test"].code == 550                     # at RCPT
    assert (results["full@example.test"].code,
            results["full@example.test"].enhanced) == (552, (5, 2, 2))   # at the content
    assert len(dovecot.messages("alice@example.test")) == 1
    assert dovecot.messages("full@example.test") == []


def test_lmtp_batch_every_recipient_refused_sends_no_content(lmtp_target):
    target, dovecot = lmtp_target
    sessions = []
    target.on_connect = sessions.append
    delivery = target.start_delivery(MessageMeta("l2", batch=True), "a@example.org")
    delivery.add_rcpt("nobody@example.test")
    delivery.add_rcpt("noone@example.test")
    with pytest.raises(PartialDeliveryError) as refused:
        delivery.body(b"Subject: none\r\n\r\n", MemoryBuffer(b"x\r\n"))
    delivery.abort()
    assert {e.code for e in refused.value.results.values()} == {550}
    # No recipient, no BDAT: the session is whole and carries the next message.
    delivery = target.start_delivery(MessageMeta("l3", batch=True), "a@example.org")
    delivery.add_rcpt("alice@example.test")
    delivery.body(b"Subject: next\r\n\r\n", MemoryBuffer(b"x\r\n"))
    delivery.commit()
    assert len(sessions) == 1
    [stored] = dovecot.messages("alice@example.test")
    assert b"Subject: next" in stored


def test_batch_mail_refusal_is_every_recipients_answer(tmp_path, state_dir, smtp_sink):
    sink = smtp_sink("-r", "MAIL", "-b", "451 4.3.0 Not now")
    with started_smtp_target(tmp_path, state_dir, sink) as target:
        delivery = target.start_delivery(MessageMeta("m1", batch=True), "a@example.org")
        delivery.add_rcpt("b@example.test")
        delivery.add_rcpt("c@example.test")
        with pytest.raises(SMTPError) as refused:
            delivery.body(b"Subject: x\r\n\r\n", MemoryBuffer(b"x\r\n"))
        delivery.abort()
        assert (refused.value.code, refused.value.enhanced) == (451, (4, 3, 0))
        assert sink.messages() == []


def test_batch_every_rcpt_refused_one_command_at_a_time(tmp_path, state_dir, smtp_sink):
    sink = smtp_sink("-r", "RCPT", "-b", "450 4.2.1 Try later")   # and no PIPELINING
    with started_smtp_target(tmp_path, state_dir, sink) as target:
        delivery = target.start_delivery(MessageMeta("r1", batch=True), "a@example.org")
        delivery.add_rcpt("b@example.test")
        delivery.add_rcpt("c@example.test")
        with pytest.raises(SMTPError) as refused:   # the same answer for both
            delivery.body(b"Subject: x\r\n\r\n", MemoryBuffer(b"x\r\n"))
        delivery.abort()
        assert (refused.value.code, refused.value.enhanced) == (450, (4, 2, 1))
        assert sink.messages() == []
