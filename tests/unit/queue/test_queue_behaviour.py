"""maddy-behaviour §3.4 Q1–Q10 and D1–D4 on a real queue with a scripted inner target."""

from __future__ import annotations

import email
import json
import os
from pathlib import Path
import time

import gevent

from gmta.errors import SMTPError
from tests.unit.queue.helpers import (ScriptedTarget, entries, make_queue, settle, submit,
                                      wait_until)

PERM = SMTPError(550, (5, 1, 1), "No such user")
TEMP = SMTPError(451, (4, 2, 0), "Mailbox busy")


def bounce_target(*scripts):
    from gmta.pipeline.pipeline import Pipeline
    target = ScriptedTarget(*scripts)
    return target, Pipeline.simple([target])


def dsn_of(attempt) -> email.message.Message:
    return email.message_from_bytes(attempt.header + attempt.data)


def status_blocks(message) -> list:
    report = message.get_payload()[1]
    return report.get_payload()


# -- Q -----------------------------------------------------------------------------------

def test_q1_success_commits_once_with_all_recipients_and_empties_the_queue(queues):
    target = ScriptedTarget({})
    queue = queues(target)
    submit(queue, ["a@d.test", "b@d.test"])
    settle(queue)
    assert [a.rcpts for a in target.attempts] == [["a@d.test", "b@d.test"]]
    assert target.attempts[0].committed
    assert target.attempts[0].header == b"Subject: test\r\n\r\n"
    assert target.attempts[0].data == b"Hello\r\n"
    gevent.sleep(0.2)
    assert len(target.attempts) == 1


def test_each_attempt_tells_the_target_about_tls_required_no(queues):
    # RFC 8689 §5: target.remote must know before it picks a connection.
    target = ScriptedTarget({}, {})
    queue = queues(target)
    submit(queue, ["a@d.test"], header=b"Subject: x\r\nTLS-Required: No\r\n\r\n")
    submit(queue, ["b@d.test"])
    settle(queue)
    flags = {tuple(a.rcpts): a.meta.tls_required_no for a in target.attempts}
    assert flags == {("a@d.test",): True, ("b@d.test",): False}


def test_q2_permanent_body_failure_aborts_without_retry(queues):
    target = ScriptedTarget({"body": PERM})
    queue = queues(target)
    submit(queue, ["a@d.test", "b@d.test"])
    settle(queue)
    gevent.sleep(0.2)
    assert len(target.attempts) == 1 and target.attempts[0].aborted


def test_q3_temporary_body_failure_is_retried_then_committed(queues):
    target = ScriptedTarget({"body": TEMP}, {})
    queue = queues(target)
    submit(queue, ["a@d.test", "b@d.test"])
    settle(queue)
    assert target.attempts[0].aborted and not target.attempts[0].committed
    assert target.attempts[1].committed and target.attempts[1].rcpts == ["a@d.test", "b@d.test"]


def test_q4_partial_temporary_failure_retries_only_that_recipient(queues):
    target = ScriptedTarget({"body": {"r2@d.test": TEMP}}, {})
    queue = queues(target)
    submit(queue, ["r1@d.test", "r2@d.test"])
    settle(queue)
    assert target.attempts[0].committed
    assert target.attempts[1].rcpts == ["r2@d.test"] and target.attempts[1].committed
    assert len(target.attempts) == 2


def test_q5_permanent_temporary_and_success_are_each_handled_once(queues):
    target = ScriptedTarget({"body": {"r1@d.test": PERM, "r2@d.test": TEMP}},
                            {"body": TEMP}, {})
    queue = queues(target)
    submit(queue, ["r1@d.test", "r2@d.test", "r3@d.test"])
    settle(queue)
    assert [a.rcpts for a in target.attempts] == [
        ["r1@d.test", "r2@d.test", "r3@d.test"], ["r2@d.test"], ["r2@d.test"]]
    assert target.attempts[0].committed
    assert target.attempts[1].aborted and not target.attempts[1].committed
    assert target.attempts[2].committed


def test_q6_permanent_rcpt_refusal_commits_the_rest_without_retry(queues):
    target = ScriptedTarget({"rcpt": {"r1@d.test": PERM}})
    queue = queues(target)
    submit(queue, ["r1@d.test", "r2@d.test"])
    settle(queue)
    gevent.sleep(0.2)
    assert len(target.attempts) == 1
    assert target.attempts[0].accepted == ["r2@d.test"] and target.attempts[0].committed


def test_q7_temporary_rcpt_refusal_is_retried_alone(queues):
    target = ScriptedTarget({"rcpt": {"r1@d.test": TEMP}}, {})
    queue = queues(target)
    submit(queue, ["r1@d.test", "r2@d.test"])
    settle(queue)
    assert target.attempts[0].accepted == ["r2@d.test"] and target.attempts[0].committed
    assert target.attempts[1].rcpts == ["r1@d.test"] and target.attempts[1].committed


def test_q8_a_pending_retry_survives_a_stop_and_is_delivered_after_restart(tmp_path):
    target = ScriptedTarget({"body": TEMP})
    queue = make_queue(tmp_path / "state", target, retry="1h")
    try:
        submit(queue, ["a@d.test"])
        wait_until(lambda: len(target.attempts) == 1 and target.attempts[0].aborted)
        wait_until(lambda: queue.spool.read(entries(queue)[0].split(".")[0]).recipients[0].tries)
    finally:
        queue.stop()
    names = entries(queue)
    assert len(names) == 2 and {n.split(".")[1] for n in names} == {"meta", "msg"}
    entry_id = names[0].split(".")[0]
    record = queue.spool.read(entry_id)
    assert record.recipients[0].tries == 1 and record.recipients[0].error == TEMP

    # The retry is an hour away; a flush (as `gmta queue flush` does) makes it due now.
    queue.spool.request_flush_all(record.last_attempt + 1)
    target2 = ScriptedTarget({})
    queue2 = make_queue(tmp_path / "state", target2)
    try:
        settle(queue2)
    finally:
        queue2.stop()
    assert target2.attempts[0].committed and target2.attempts[0].rcpts == ["a@d.test"]


def test_q9_missing_files_after_a_stop_are_repaired_and_reported(tmp_path, log_lines):
    target = ScriptedTarget({"body": TEMP}, {"body": TEMP})
    queue = make_queue(tmp_path / "state", target, retry="1h")
    try:
        submit(queue, ["a@d.test"])
        submit(queue, ["b@d.test"])
        wait_until(lambda: len(target.attempts) == 2)
        gevent.sleep(0.1)
    finally:
        queue.stop()
    first, second = sorted({n.split(".")[0] for n in entries(queue)})
    os.unlink(queue.spool.msg_path(first))   # body gone: record kept aside, never dropped
    os.unlink(queue.spool.meta_path(second))  # record gone: never acknowledged state
    del log_lines[:]
    queue2 = make_queue(tmp_path / "state", ScriptedTarget())
    try:
        wait_until(lambda: any("event=scanned" in line for line in log_lines))
    finally:
        queue2.stop()
    assert entries(queue2) == []
    assert sorted(os.listdir(queue2.spool.corrupt_dir)) == [first + ".meta", first + ".reason"]
    assert any("event=corrupt_entry" in line and first in line for line in log_lines)
    assert any("event=orphan_removed" in line and second in line for line in log_lines)


def test_q10_all_rcpts_refused_aborts_and_an_aborted_transaction_leaves_no_files(queues):
    target = ScriptedTarget({"rcpt": {"a@d.test": PERM, "b@d.test": PERM}})
    queue = queues(target)
    submit(queue, ["a@d.test", "b@d.test"])
    settle(queue)
    assert target.attempts[0].aborted and not target.attempts[0].committed

    from gmta.buffer import MemoryBuffer
    from gmta.delivery import MessageMeta
    delivery = queue.start_delivery(MessageMeta(id="x"), "s@src.test")
    delivery.add_rcpt("c@d.test")
    # The finished first entry's file is a spare, and the new message is
    # written over it (gmta.queue.spares) instead of a new file in tmp/.
    spare = os.listdir(queue.spool.spare_dir)
    assert len(spare) == 1
    delivery.body(b"Subject: x\r\n\r\n", MemoryBuffer(b"body\r\n"))
    assert b"Subject: x" in (Path(queue.spool.spare_dir) / spare[0]).read_bytes()
    delivery.abort()
    assert os.listdir(queue.spool.tmp_dir) == os.listdir(queue.spool.spare_dir) == []
    assert entries(queue) == []
    # Without a spare: written in tmp/, and an abort leaves nothing there either.
    delivery = queue.start_delivery(MessageMeta(id="y"), "s@src.test")
    delivery.add_rcpt("c@d.test")
    delivery.body(b"Subject: y\r\n\r\n", MemoryBuffer(b"body\r\n"))
    assert os.listdir(queue.spool.tmp_dir)
    delivery.abort()
    assert os.listdir(queue.spool.tmp_dir) == [] and entries(queue) == []


# -- D -----------------------------------------------------------------------------------

def test_d1_permanent_failure_sends_one_dsn_from_null_sender_to_the_sender(queues):
    target = ScriptedTarget({"rcpt": {"a@d.test": PERM}, "body": {"b@d.test": PERM}})
    bounce, pipeline = bounce_target()
    queue = queues(target, pipeline)
    submit(queue, ["a@d.test", "b@d.test"])
    settle(queue)
    gevent.sleep(0.1)
    assert len(bounce.attempts) == 1
    dsn = bounce.attempts[0]
    assert dsn.mail_from == "" and dsn.rcpts == ["sender@src.test"] and dsn.committed
    message = dsn_of(dsn)
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@gen.test>"
    blocks = status_blocks(message)
    assert [b["Final-Recipient"] for b in blocks[1:]] == ["rfc822; a@d.test", "rfc822; b@d.test"]
    # The real status of each recipient, not maddy's 5.0.0 (DESIGN §1.3).
    assert [b["Status"] for b in blocks[1:]] == ["5.1.1", "5.1.1"]
    assert blocks[1]["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user"


def test_d2_null_sender_gets_no_dsn(queues):
    target = ScriptedTarget({"body": PERM})
    bounce, pipeline = bounce_target()
    queue = queues(target, pipeline)
    submit(queue, ["a@d.test"], sender="")
    settle(queue)
    gevent.sleep(0.1)
    assert bounce.attempts == []


def test_d3_a_dsn_that_fails_is_tried_once_and_never_bounced(queues, log_lines):
    target = ScriptedTarget({"body": PERM})
    bounce, pipeline = bounce_target({"body": SMTPError(550, (5, 7, 1), "no bounces here")})
    queue = queues(target, pipeline)
    submit(queue, ["a@d.test"])
    settle(queue)
    gevent.sleep(0.2)
    assert len(bounce.attempts) == 1 and bounce.attempts[0].aborted
    assert any("event=dsn_failed" in line and "dropped=yes" in line for line in log_lines)


def test_d3_a_temporarily_refused_dsn_is_retried(queues):
    target = ScriptedTarget({"body": PERM})
    bounce, pipeline = bounce_target({"commit": TEMP}, {})
    queue = queues(target, pipeline)
    submit(queue, ["a@d.test"])
    settle(queue)
    assert len(bounce.attempts) == 2 and bounce.attempts[1].committed


def test_d4_dsn_names_the_recipient_before_alias_rewriting(queues):
    target = ScriptedTarget({"body": PERM})
    bounce, pipeline = bounce_target()
    queue = queues(target, pipeline)
    submit(queue, ["test@example.com"],
           original_rcpts={"test@example.com": "test+public@example.com"})
    settle(queue)
    text = (bounce.attempts[0].header + bounce.attempts[0].data).decode()
    assert "test+public@example.com" in text
    assert "<test@example.com>" not in text and "; test@example.com" not in text


# -- beyond maddy ------------------------------------------------------------------------

def test_max_tries_ends_with_a_failure_dsn_carrying_the_last_temporary_error(queues):
    target = ScriptedTarget({"body": TEMP}, {"body": TEMP}, {"body": TEMP})
    bounce, pipeline = bounce_target()
    queue = queues(target, pipeline, max_tries=3)
    submit(queue, ["a@d.test"])
    settle(queue)
    assert len(target.attempts) == 3
    block = status_blocks(dsn_of(bounce.attempts[0]))[1]
    assert block["Action"] == "failed" and block["Status"] == "4.2.0"
    assert block["Diagnostic-Code"] == "smtp; 451 4.2.0 Mailbox busy"


def test_a_lowered_max_tries_applies_to_queued_mail(tmp_path):
    """maddy #678: messages queued under a higher max_tries retried forever."""
    target = ScriptedTarget({"body": TEMP}, {"body": TEMP})
    queue = make_queue(tmp_path / "state", target, retry="50ms", max_tries=10)
    try:
        submit(queue, ["a@d.test"])
        wait_until(lambda: len(target.attempts) >= 2)
    finally:
        queue.stop()
    tries = queue.spool.read(entries(queue)[0].split(".")[0]).recipients[0].tries
    assert tries >= 2
    bounce, pipeline = bounce_target()
    target2 = ScriptedTarget()
    queue2 = make_queue(tmp_path / "state", target2, pipeline, max_tries=2)
    try:
        settle(queue2)
    finally:
        queue2.stop()
    assert target2.attempts == []  # no attempt beyond the new limit
    assert status_blocks(dsn_of(bounce.attempts[0]))[1]["Action"] == "failed"


def test_notify_never_and_success(queues):
    target = ScriptedTarget({"body": {"a@d.test": PERM}})
    bounce, pipeline = bounce_target()
    queue = queues(target, pipeline)
    submit(queue, ["a@d.test", "b@d.test"],
           rcpt_params={"a@d.test": {"notify": ["NEVER"]}, "b@d.test": {"notify": ["SUCCESS"]}})
    settle(queue)
    gevent.sleep(0.1)
    assert len(bounce.attempts) == 1
    blocks = status_blocks(dsn_of(bounce.attempts[0]))
    assert [(b["Final-Recipient"], b["Action"], b["Status"]) for b in blocks[1:]] == [
        ("rfc822; b@d.test", "relayed", "2.0.0")]


def test_notify_success_only_suppresses_the_failure_dsn(queues):
    target = ScriptedTarget({"body": PERM})
    bounce, pipeline = bounce_target()
    queue = queues(target, pipeline)
    submit(queue, ["a@d.test"], rcpt_params={"a@d.test": {"notify": ["SUCCESS"]}})
    settle(queue)
    gevent.sleep(0.1)
    assert bounce.attempts == []


def test_delayed_dsn_once_then_final(queues):
    target = ScriptedTarget({"body": TEMP}, {"body": TEMP}, {"body": TEMP}, {})
    bounce, pipeline = bounce_target()
    queue = queues(target, pipeline, retry="100ms", extra=" delay_warning 150ms")
    submit(queue, ["a@d.test"], rcpt_params={"a@d.test": {"orcpt": ["rfc822", "a@orig.test"]}},
           mail_params={"envid": "ENV-1"})
    settle(queue)
    # Delivered in the end: exactly one "delayed" report, no success report (not asked).
    assert len(bounce.attempts) == 1
    message = dsn_of(bounce.attempts[0])
    assert message["Subject"] == "Delayed Mail (still being retried)"
    blocks = status_blocks(message)
    assert blocks[0]["Original-Envelope-Id"] == "ENV-1"
    assert blocks[1]["Action"] == "delayed" and blocks[1]["Status"] == "4.2.0"
    assert blocks[1]["Original-Recipient"] == "rfc822; a@orig.test"
    assert blocks[1]["Will-Retry-Until"]


def test_ret_full_returns_the_whole_message(queues):
    target = ScriptedTarget({"body": PERM})
    bounce, pipeline = bounce_target()
    queue = queues(target, pipeline)
    submit(queue, ["a@d.test"], mail_params={"ret": "FULL"}, body=b"the body text\r\n")
    settle(queue)
    returned = dsn_of(bounce.attempts[0]).get_payload()[2]
    assert returned.get_content_type() == "message/rfc822"
    assert returned.get_payload()[0].get_payload() == "the body text\r\n"


def test_connection_info_reaches_the_target_after_a_restart(tmp_path):
    target = ScriptedTarget({"body": TEMP})
    queue = make_queue(tmp_path / "state", target, retry="1h")
    try:
        submit(queue, ["a@d.test"], conn={"peer": "127.0.0.9:4242", "helo": "c.test"})
        wait_until(lambda: len(target.attempts) == 1)
        gevent.sleep(0.1)
    finally:
        queue.stop()
    queue.spool.request_flush_all(time.time())
    target2 = ScriptedTarget({})
    queue2 = make_queue(tmp_path / "state", target2)
    try:
        settle(queue2)
    finally:
        queue2.stop()
    assert target2.attempts[0].meta.conn == {"peer": "127.0.0.9:4242", "helo": "c.test"}


def test_held_entries_are_not_attempted(tmp_path):
    target = ScriptedTarget({"body": TEMP})
    queue = make_queue(tmp_path / "state", target, retry="1h")
    try:
        submit(queue, ["a@d.test"])
        wait_until(lambda: len(target.attempts) == 1)
        gevent.sleep(0.1)
    finally:
        queue.stop()
    entry_id = entries(queue)[0].split(".")[0]
    lock = queue.spool.try_lock(entry_id)
    record = queue.spool.read(entry_id)
    record.held = True
    record.next_attempt = 0
    queue.spool.write(lock, record)
    lock.release()
    target2 = ScriptedTarget({})
    queue2 = make_queue(tmp_path / "state", target2)
    try:
        gevent.sleep(0.3)
    finally:
        queue2.stop()
    assert target2.attempts == [] and len(entries(queue2)) == 2


def test_a_small_window_still_delivers_everything_and_stays_bounded(queues):
    target = ScriptedTarget()
    queue = queues(target, window=3, start=False)
    queue.spool.prepare()
    from gmta.delivery import MessageMeta
    from gmta.buffer import MemoryBuffer
    for n in range(12):
        delivery = queue.start_delivery(MessageMeta(id=f"m{n}"), "s@src.test")
        delivery.add_rcpt(f"r{n}@d.test")
        delivery.body(b"Subject: x\r\n\r\n", MemoryBuffer(b"x\r\n"))
        delivery.commit()  # scheduler not started: the window keeps only 3
    assert len(queue.scheduler) == 3
    sizes = []
    queue.start()
    deadline = gevent.spawn(lambda: [sizes.append(len(queue.scheduler)) or gevent.sleep(0.005)
                                     for _ in range(400)])
    settle(queue)
    deadline.kill()
    assert sorted(a.rcpts[0] for a in target.attempts) == sorted(f"r{n}@d.test"
                                                                for n in range(12))
    assert max(sizes) <= 3


def test_record_is_versioned_json(queues):
    target = ScriptedTarget({"body": TEMP})
    queue = queues(target, retry="1h")
    submit(queue, ["a@d.test"])
    wait_until(lambda: len(target.attempts) == 1)
    gevent.sleep(0.1)
    name = next(n for n in entries(queue) if n.endswith(".meta"))
    with open(os.path.join(queue.spool.msg_dir, name)) as f:
        data = json.load(f)
    assert data["format"] == 1
    assert data["recipients"][0]["state"] == "pending"
    assert data["recipients"][0]["error"] == {"code": 451, "enhanced": [4, 2, 0],
                                              "text": "Mailbox busy"}


# -- what a pass writes --------------------------------------------------------------------

def count_writes(queue) -> list:
    """The list in which each record write of *queue*'s spool is noted, in order."""
    events: list = []
    write = queue.spool.write

    def noted(lock, record):
        events.append(("write", [r.state for r in record.recipients]))
        write(lock, record)

    queue.spool.write = noted
    return events


def test_a_pass_that_finishes_silently_removes_without_rewriting_the_record(queues):
    # Delivered, no DSN asked for: the removal is the record; no write (two flushes) first.
    target = ScriptedTarget({})
    bounce, pipeline = bounce_target()
    queue = queues(target, pipeline)
    events = count_writes(queue)
    submit(queue, ["a@d.test", "b@d.test"])
    settle(queue)
    assert target.attempts[0].committed and entries(queue) == []
    assert events == [] and bounce.attempts == []


def test_results_are_written_before_a_dsn_and_when_a_retry_remains(queues):
    # a@ fails for good (a DSN is due), b@ is retried: the results are durable first.
    target = ScriptedTarget({"body": {"a@d.test": PERM, "b@d.test": TEMP}}, {})
    bounce, pipeline = bounce_target()
    queue = queues(target, pipeline)
    events = count_writes(queue)
    real_start = bounce.start_delivery

    def start(meta, mail_from):
        events.append(("dsn", None))
        return real_start(meta, mail_from)

    bounce.start_delivery = start
    submit(queue, ["a@d.test", "b@d.test"])
    settle(queue)
    assert events[:2] == [("write", ["failed", "pending"]), ("dsn", None)]
    # The second pass delivers b@ and finishes the entry without another DSN or write
    # of its results (the write after the DSN only marked a@ reported).
    assert [e for e in events[2:] if e[0] == "dsn"] == []
    assert entries(queue) == [] and len(target.committed) == 1


def test_a_successful_delivery_with_notify_success_is_written_before_its_dsn(queues):
    target = ScriptedTarget({})
    bounce, pipeline = bounce_target()
    queue = queues(target, pipeline)
    events = count_writes(queue)
    submit(queue, ["a@d.test"], rcpt_params={"a@d.test": {"notify": ["SUCCESS"]}})
    settle(queue)
    assert events[:1] == [("write", ["delivered"])] and len(bounce.attempts) == 1


def test_recipients_reach_the_target_in_the_order_of_their_destination_limits(queues):
    """Two attempts never take two domains' `destination` slots in opposite orders
    (each would hold one and wait for the other's until the limit's timeout)."""
    target = ScriptedTarget()
    queue = queues(target)
    submit(queue, ["x@zeta.test", "y@ÄLPHA.test", "z@beta.test.", "w@zeta.test"])
    settle(queue)
    # beta.test, xn--lpha-koa.test, zeta.test: by the A-label, as target.remote keys
    # the limit; one domain's recipients keep their order.
    assert target.committed[0].rcpts == ["z@beta.test.", "y@ÄLPHA.test", "x@zeta.test",
                                         "w@zeta.test"]
