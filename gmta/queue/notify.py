"""Which DSNs a queued message's results call for, and sending them.

RFC 3461 §4.1 decides per recipient: NOTIFY=NEVER gets nothing; without a
NOTIFY parameter a recipient gets failure and delay reports (the RFC's
"FAILURE,DELAY" default); otherwise exactly the kinds it names. No DSN ever
goes to the null sender ``<>`` (RFC 3461 §6.2, RFC 5321 §4.5.5) — and every
DSN has that sender, so there is never a DSN of a DSN. Without a ``bounce``
block no DSNs are sent at all (as maddy).

All failed recipients of one pass share one report (maddy sent one per
attempt; gmta's is one per pass, which is the same thing but documented).
A DSN the bounce pipeline refuses temporarily is tried again on the retry
schedule, up to ``max_tries``; a permanent refusal is logged and dropped —
the report cannot be delivered anywhere else.
"""

from __future__ import annotations

import secrets
import time

from gmta.buffer import MemoryBuffer
from gmta.delivery import MessageMeta
from gmta.errors import SMTPError
from gmta.queue import dsn
from gmta.queue.record import DELIVERED, FAILED, PENDING, QueuedMessage, Recipient
from gmta.queue.schedule import retry_delay


def wants(r: Recipient, kind: str) -> bool:
    """Whether recipient *r* asked for a DSN of *kind* (SUCCESS, FAILURE or DELAY)."""
    notify = r.notify()
    if notify is None:
        return kind in ("FAILURE", "DELAY")  # RFC 3461 §4.1 default
    return kind in notify and "NEVER" not in notify


class Notifier:
    def __init__(self, queue):
        self.queue = queue

    @property
    def enabled(self) -> bool:
        return self.queue.bounce is not None

    def delay_warning_due(self, record: QueuedMessage) -> float | None:
        """When a "delayed" DSN becomes due for *record*, or None."""
        if not self.queue.delay_warning or not self.enabled or not record.mail_from:
            return None
        if any(r.state == PENDING and not r.delay_reported and wants(r, "DELAY")
               for r in record.recipients):
            return record.arrival + self.queue.delay_warning
        return None

    def would_send(self, record: QueuedMessage) -> bool:
        """Whether :meth:`notify` would now hand any report to the bounce pipeline."""
        if not self.enabled or not record.mail_from:
            return False
        for state, kind in ((FAILED, "FAILURE"), (DELIVERED, "SUCCESS")):
            if any(r.state == state and not r.reported and wants(r, kind)
                   for r in record.recipients):
                return True
        warning = self.delay_warning_due(record)
        return warning is not None and warning <= time.time()

    def notify(self, record: QueuedMessage) -> bool:
        """Send what is due; returns whether *record* changed (to be written)."""
        now = time.time()
        changed = False
        success_action = dsn.DELIVERED if getattr(self.queue.target, "delivers_locally", False) \
            else dsn.RELAYED
        for state, kind, action in ((FAILED, "FAILURE", dsn.FAILED),
                                    (DELIVERED, "SUCCESS", success_action)):
            unreported = [r for r in record.recipients if r.state == state and not r.reported]
            if not unreported:
                continue
            wanted = [r for r in unreported if wants(r, kind)]
            if not self.enabled or not record.mail_from:
                wanted = []
            for r in unreported:
                if r not in wanted:
                    r.reported = True
                    changed = True
            if not wanted:
                continue
            if record.dsn_retry_at is not None and record.dsn_retry_at > now:
                continue  # the last try failed temporarily; wait for the retry time
            changed = True
            if self._send(record, action, wanted, now):
                for r in wanted:
                    r.reported = True
                record.dsn_retry_at = None
        warning = self.delay_warning_due(record)
        if warning is not None and warning <= now:
            waiting = [r for r in record.recipients
                       if r.state == PENDING and not r.delay_reported and wants(r, "DELAY")]
            # Best effort: a warning that cannot be sent is not retried; the
            # final report follows anyway.
            self._send(record, dsn.DELAYED, waiting, now, retry=False)
            for r in waiting:
                r.delay_reported = True
            changed = True
        return changed

    def _send(self, record: QueuedMessage, action: str, rcpts: list[Recipient], now: float,
              retry: bool = True) -> bool:
        """Hand one report to the bounce pipeline; False means "try again later"."""
        queue = self.queue
        log = queue.log
        header, body = queue.spool.message(record)
        report = dsn.Report(
            reporting_mta=queue.hostname, msg_domain=queue.msg_domain,
            original_sender=record.mail_from, queue_id=record.id, arrival=record.arrival,
            original_header=header,
            original_body=body if record.mail_params.get("ret") == "FULL" else None,
            envid=record.mail_params.get("envid"),
            received_from_mta=record.conn.get("helo") or None,
            utf8=bool(record.mail_params.get("smtputf8")), now=now,
            recipients=[self._status(record, r, action) for r in rcpts])
        dsn_header, dsn_body = dsn.build(report)
        dsn_id = secrets.token_hex(8)
        meta = MessageMeta(id=dsn_id, mail_params={"smtputf8": report.utf8, "body": "8BITMIME"},
                           conn={"generated": "dsn"})
        delivery = None
        try:
            delivery = queue.bounce.start_delivery(meta, "")
            delivery.add_rcpt(record.mail_from, {})
            delivery.body(dsn_header, MemoryBuffer(dsn_body))
            delivery.commit()
        except Exception as e:
            error = e if isinstance(e, SMTPError) else SMTPError(451, (4, 0, 0), repr(e))
            if delivery is not None:
                try:
                    delivery.abort()
                except Exception as abort_error:
                    log.error("abort_failed", msg_id=dsn_id, error=repr(abort_error))
            record.dsn_tries += 1
            give_up = not retry or not error.temporary or record.dsn_tries >= queue.max_tries
            log.error("dsn_failed", queue_id=record.id, msg_id=record.msg_id, dsn_msg_id=dsn_id,
                      action=action, to=record.mail_from, reply=str(error),
                      dropped="yes" if give_up else "no")
            if give_up:
                return True
            record.dsn_retry_at = now + retry_delay(record.dsn_tries, queue.initial_retry_time,
                                                    queue.retry_time_scale)
            return False
        log.info("dsn_sent", queue_id=record.id, msg_id=record.msg_id, dsn_msg_id=dsn_id,
                 action=action, to=record.mail_from,
                 rcpts=",".join(r.address for r in rcpts))
        return True

    def _status(self, record: QueuedMessage, r: Recipient, action: str) -> dsn.RecipientStatus:
        error = r.error if action in (dsn.FAILED, dsn.DELAYED) else None
        if error is not None:
            status = error.enhanced
        else:
            status = (4, 0, 0) if action == dsn.DELAYED else (2, 0, 0)
        orcpt = r.params.get("orcpt")
        will_retry_until = None
        if action == dsn.DELAYED:
            will_retry_until = self._last_try_time(record, r)
        return dsn.RecipientStatus(
            # Final-Recipient names the address the sender used, before aliases
            # rewrote it (maddy-behaviour §2.4, D4).
            final_recipient=record.original_rcpts.get(r.address, r.address),
            action=action, status=status, error=error,
            original_recipient=tuple(orcpt) if orcpt else None,
            remote_mta=error.misc.get("remote_mta") if error is not None else None,
            last_attempt=r.last_attempt, will_retry_until=will_retry_until)

    def _last_try_time(self, record: QueuedMessage, r: Recipient) -> float:
        """When the last attempt will be made if every attempt fails (Will-Retry-Until)."""
        queue = self.queue
        when = max(record.next_attempt, r.last_attempt or record.arrival)
        for tries in range(max(r.tries, 1), queue.max_tries - 1):
            when += retry_delay(tries + 1, queue.initial_retry_time, queue.retry_time_scale)
        return when
