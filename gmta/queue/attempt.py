"""One pass over one queued message: deliver what is due, record it, tell the sender.

The order of a pass is what makes the queue safe across crashes and shared
between processes (DESIGN §4.4–§4.5):

1. take the entry's lock without waiting, then read the record (a record read
   before the lock may be stale: another process may have just delivered);
2. deliver the pending recipients whose attempt is due, one attempt;
3. write the per-recipient results durably — *before* any DSN, so a crash
   after a DSN never repeats the delivery nor, except for that DSN, the
   notification (maddy issue #328). A pass that leaves nothing to deliver and
   nothing to report skips this write: the removal (5) records it;
4. send the DSNs the results call for (:mod:`gmta.queue.notify`), record that;
5. remove the entry when nothing is left to deliver or report.

A crash between the target's success (2) and the record (3) is the only way
a recipient is delivered twice.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gmta import metrics
from gmta.delivery import MessageMeta, PartialDeliveryError, tls_required_no
from gmta.durable import in_threadpool
from gmta.errors import SMTPError
from gmta.limits import destination_order
from gmta.queue.record import DELIVERED, FAILED, PENDING, CorruptRecord, QueuedMessage
from gmta.queue.schedule import next_attempt_time, retry_delay
from gmta.queue.store import EntryBusy

if TYPE_CHECKING:  # pragma: no cover
    from gmta.queue.target import QueueTarget

#: How long to wait before trying again an entry someone else has locked.
BUSY_RETRY = 5.0


#: What a recipient gets when the target gave it no result: deferred, never
#: "delivered" (it may not have been sent) nor failed (it may be deliverable).
NO_RESULT = SMTPError(451, (4, 3, 0), "The delivery target gave no result for this "
                                      "recipient, will retry")


def internal_error(error: BaseException) -> SMTPError:
    """A failure that is not an SMTPError is temporary (DESIGN §3)."""
    if isinstance(error, SMTPError):
        return error
    return SMTPError(451, (4, 0, 0), "Internal error during delivery, will retry")


def deliver_once(target, record: QueuedMessage, header: bytes, body, log=None,
                 receipts: dict | None = None) -> dict[str, SMTPError | None]:
    """One attempt of the pending recipients; the result of each (None = delivered).

    A target that declares ``takes_batch`` gets ``MessageMeta.batch``: every
    recipient is added before the body and answered by it, which lets it send
    the envelope with the content (target.smtp). Its ``receipts`` (what the
    server said for each delivered recipient) are copied into *receipts* for
    the log line of the delivery, which is then the queue's alone.
    """
    # In the order of their domains' `destination` limits: deliveries that wait for
    # a domain's slot while holding another's never wait for each other.
    pending = sorted(record.pending(), key=lambda r: destination_order(r.address))
    meta = MessageMeta(id=record.msg_id, mail_params=dict(record.mail_params),
                       conn=dict(record.conn), quarantine=record.quarantine,
                       original_rcpts=dict(record.original_rcpts),
                       tls_required_no=tls_required_no(header),
                       batch=getattr(target, "takes_batch", False))
    results: dict[str, SMTPError | None] = {}
    try:
        delivery = target.start_delivery(meta, record.mail_from)
    except Exception as e:
        _log_internal(log, record, e)
        return {r.address: internal_error(e) for r in pending}
    try:
        accepted = []
        for r in pending:
            try:
                delivery.add_rcpt(r.address, dict(r.params))
                accepted.append(r.address)
            except Exception as e:
                _log_internal(log, record, e)
                results[r.address] = internal_error(e)
        if not accepted:
            delivery.abort()
            return _complete(results, pending)
        body_results = _outcomes(lambda: delivery.body(header, body), accepted, log, record)
        results.update({a: e for a, e in body_results.items() if e is not None})
        ok = [a for a in accepted if body_results[a] is None]
        if not ok:
            delivery.abort()
            return _complete(results, pending)
        results.update(_outcomes(delivery.commit, ok, log, record))
        if receipts is not None and meta.batch:
            receipts.update(delivery.receipts)
        return _complete(results, pending)
    except BaseException:
        # Killed (shutdown) or a bug in this function: the target must not keep half a message.
        _abort(delivery, log, record)
        raise


def _complete(results: dict[str, SMTPError | None], pending) -> dict[str, SMTPError | None]:
    """Every pending recipient leaves the attempt with a result of its own (DESIGN §4.4)."""
    for r in pending:
        results.setdefault(r.address, NO_RESULT)
    return results


def _outcomes(call, rcpts: list[str], log, record) -> dict[str, SMTPError | None]:
    try:
        call()
    except PartialDeliveryError as e:
        # A recipient the target forgot to report, or reported with something
        # that is not an answer, is deferred: retrying it is the safe side
        # (the summary's code could be permanent, and bounce deliverable mail).
        outcomes = {}
        for a in rcpts:
            outcome = e.results.get(a, NO_RESULT)
            if outcome is not None and not isinstance(outcome, SMTPError):
                _log_internal(log, record, TypeError(f"result {outcome!r} for {a}"))
                outcome = NO_RESULT
            outcomes[a] = outcome
        return outcomes
    except Exception as e:
        _log_internal(log, record, e)
        return {a: internal_error(e) for a in rcpts}
    return {a: None for a in rcpts}


def _abort(delivery, log, record) -> None:
    try:
        delivery.abort()
    except Exception as e:  # abort is best effort
        if log is not None:
            log.error("abort_failed", queue_id=record.id, msg_id=record.msg_id, error=repr(e))


def _log_internal(log, record, error: BaseException) -> None:
    if log is not None and not isinstance(error, SMTPError):
        log.error("target_error", queue_id=record.id, msg_id=record.msg_id, error=repr(error))


def apply_results(record: QueuedMessage, results: dict[str, SMTPError | None], now: float,
                  max_tries: int) -> None:
    """Per recipient: delivered, failed (permanent, or out of tries), or pending with tries+1."""
    record.last_attempt = now
    for address, error in results.items():
        r = record.recipient(address)
        r.tries += 1
        r.last_attempt = now
        r.error = error
        if error is None:
            r.state = DELIVERED
        elif not error.temporary or r.tries >= max_tries:
            r.state = FAILED


def expire(record: QueuedMessage, max_tries: int) -> list[str]:
    """Fail pending recipients already tried *max_tries* times (a lowered max_tries, #678)."""
    expired = []
    for r in record.pending():
        if r.tries >= max_tries:
            r.state = FAILED
            if r.error is None:
                r.error = SMTPError(451, (4, 4, 7), "Retry limit reached")
            expired.append(r.address)
    return expired


class Attempt:
    """Processes one entry for the scheduler; returns when it is next due (None: gone)."""

    def __init__(self, queue: "QueueTarget"):
        self.queue = queue
        self.spool = queue.spool
        self.log = queue.log

    def due_time(self, record: QueuedMessage, flush_all: float) -> float:
        """When this record next needs work: an attempt, a DSN or a delay warning."""
        candidates = []
        if record.pending():
            due = record.next_attempt
            # `gmta queue flush` of the whole queue: anything not tried since is due.
            if flush_all and (record.last_attempt or 0.0) < flush_all:
                due = min(due, flush_all)
            candidates.append(due)
        if any(not r.reported for r in record.recipients if r.state != PENDING):
            candidates.append(record.dsn_retry_at or 0.0)
        warning = self.queue.notifier.delay_warning_due(record)
        if warning is not None:
            candidates.append(warning)
        # A finished record is removed, never scheduled; "now" is only a safe default.
        return min(candidates) if candidates else time.time()

    def run(self, entry_id: str) -> float | None:
        spool = self.spool
        try:
            lock = spool.try_lock(entry_id)
        except EntryBusy:
            return time.time() + BUSY_RETRY
        if lock is None:
            return None  # removed meanwhile (by another process or the CLI)
        try:
            try:
                # Through the lock's descriptor: one open of ID.msg for the whole
                # pass (the record and, for a small message, the message too).
                record = spool.read(entry_id, lock)
            except FileNotFoundError:
                return None  # removed meanwhile, or an orphan (the scan deletes it)
            except CorruptRecord as e:
                self._set_aside(entry_id, lock, f"unreadable record: {e}")
                return None
            if record.held:
                return None  # `gmta queue release` makes it due again
            return self._process(record, lock)
        finally:
            lock.release()

    def _process(self, record: QueuedMessage, lock) -> float | None:
        queue = self.queue
        now = time.time()
        flush_all = queue.flush_all
        changed = False
        expired = expire(record, queue.max_tries)
        if expired:
            changed = True
            metrics.QUEUE_DELIVERIES.labels(queue.instance_name, "bounced").inc(len(expired))
            self.log.info("retries_exhausted", queue_id=record.id, msg_id=record.msg_id,
                          rcpts=",".join(expired))
        attempt_due = record.next_attempt
        if flush_all and (record.last_attempt or 0.0) < flush_all:
            attempt_due = min(attempt_due, flush_all)
        if record.pending() and attempt_due <= now + 0.001 and not queue.stopping:
            header, body = self.spool.message(record, lock)
            receipts: dict[str, dict] = {}
            results = deliver_once(queue.target, record, header, body, self.log, receipts)
            apply_results(record, results, time.time(), queue.max_tries)
            changed = True
            self._log_results(record, results, receipts)
            pending = record.pending()
            if pending:
                record.next_attempt = next_attempt_time(
                    record.last_attempt, [r.tries for r in pending],
                    queue.initial_retry_time, queue.retry_time_scale)
        if changed and (record.pending() or queue.notifier.would_send(record)):
            # Step 3 of the module docstring: results durable before any DSN.
            in_threadpool(self.spool.write, lock, record)
        # Otherwise this pass finishes the entry and nobody is to be told: step 5's
        # removal is the record of the results, and writing them first would cost
        # two more flushes per message for nothing. A crash before the removal is
        # durable leaves the old record, which redelivers: the one window DESIGN §4.4
        # allows, no wider than with the write (a crash before its fsync does the same).
        if queue.notifier.notify(record):
            changed = True
            if not record.finished:
                in_threadpool(self.spool.write, lock, record)
        if record.finished:
            self._retire(record, lock)
            self.log.info("done", queue_id=record.id, msg_id=record.msg_id,
                          delivered=sum(r.state == DELIVERED for r in record.recipients),
                          failed=sum(r.state == FAILED for r in record.recipients))
            return None
        return self.due_time(record, flush_all)

    def _retire(self, record: QueuedMessage, lock) -> None:
        """Remove a finished entry, durably: its file kept as a spare when it can be
        (gmta.queue.spares), else unlinked."""
        queue, spool = self.queue, self.spool
        if lock.has_meta is False and spool.spares.reserve(record.size):
            try:
                # The rename into spare/ travels with the group commit of msg/;
                # only after that fsync may the file be written over.
                queue.msg_dir_sync.sync(spool.retire_renames(lock))
            except BaseException:
                spool.spares.cancel()
                in_threadpool(spool.forget_retired, lock)
                raise
            if not spool.keep_spare(lock):
                in_threadpool(spool.forget_retired, lock)
            return
        # The unlinks and the release of the lock in the threadpool (one trip),
        # then one fsync of msg/ shared with the other removals and
        # publications meanwhile (group commit). Once unlinked, the entry
        # cannot be locked again, so the lock need not wait for the fsync.
        in_threadpool(spool.remove_and_release, lock)
        queue.msg_dir_sync.sync()

    def _log_results(self, record: QueuedMessage, results: dict, receipts: dict) -> None:
        for address, error in results.items():
            r = record.recipient(address)
            metrics.QUEUE_DELIVERIES.labels(self.queue.instance_name, "delivered" if error is None
                                            else "bounced" if r.state == FAILED
                                            else "deferred").inc()
            if error is None:
                # With the target's receipt (target, session, reply) when it left
                # this line to the queue: one line per recipient, as Postfix's.
                self.log.info("delivered", queue_id=record.id, msg_id=record.msg_id,
                              rcpt=address, attempt=r.tries, **receipts.get(address, {}))
            elif r.state == FAILED:
                self.log.info("failed", queue_id=record.id, msg_id=record.msg_id, rcpt=address,
                              attempt=r.tries, reply=str(error))
            else:
                self.log.info("deferred", queue_id=record.id, msg_id=record.msg_id,
                              rcpt=address, attempt=r.tries, reply=str(error),
                              next_in=round(retry_delay(r.tries, self.queue.initial_retry_time,
                                                        self.queue.retry_time_scale), 3))

    def _set_aside(self, entry_id: str, lock, reason: str) -> None:
        # move_to_corrupt renames ID.msg while we hold its lock: harmless, the
        # lock goes with the inode and is released with our descriptor.
        in_threadpool(self.spool.move_to_corrupt, entry_id, reason)
        self.log.error("corrupt_entry", queue_id=entry_id, reason=reason,
                       moved_to=self.spool.corrupt_dir)
