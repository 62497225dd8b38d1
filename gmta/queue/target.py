"""``target.queue``: keep messages on disk and deliver them to another target, with retries.

Receiving (:class:`QueueDelivery`) writes the message to the spool and
commits it durably before the endpoint answers ``250`` (DESIGN §4.1); it
accepts all recipients or fails the whole message (the per-recipient results
come later, from the inner target). The scheduler (:mod:`gmta.queue.scheduler`)
then delivers to ``target``, retries temporary failures on the schedule of
:mod:`gmta.queue.schedule`, and reports through the ``bounce`` pipeline.
"""

from __future__ import annotations

import os
import time

import gevent

import gmta.log
from gmta.config.module import Module, register
from gmta.config.parser import Node
from gmta.config.reader import (Bool, Custom, Directive, Domain, Duration, Float, Int, ModuleRef,
                                Path, read_block)
from gmta.delivery import MessageMeta
from gmta.durable import DirectorySync, in_threadpool
from gmta.errors import SMTPError
from gmta.pipeline.pipeline import HANDLING_DIRECTIVES, Pipeline
from gmta.queue.census import QueueGauges
from gmta.queue.notify import Notifier
from gmta.queue.record import QueuedMessage, Recipient
from gmta.queue.schedule import DEFAULT_INITIAL_RETRY_TIME, DEFAULT_RETRY_TIME_SCALE
from gmta.queue.scheduler import STOP_GRACE, Scheduler
from gmta.queue.store import LAYOUT, Spool, Staged, new_id
from gmta.queue.wakeup import WakeupSender

STORE_FAILED = SMTPError(451, (4, 3, 0), "Cannot queue the message now, try again later")


def parse_bounce(node: Node, ctx) -> Pipeline:
    """``bounce { pipeline }``: where DSNs go, read like an endpoint's pipeline."""
    if node.children is None or node.args:
        raise node.error("bounce: expected a block", hint="such as bounce { deliver_to &local }")
    values = read_block(node, node.children, HANDLING_DIRECTIVES, ctx)
    return Pipeline.from_values(values, node)


def _json_params(params: dict | None) -> dict:
    """RCPT parameters as the record keeps them (JSON: lists, not sets or tuples)."""
    params = params or {}
    kept = {}
    if params.get("notify"):
        kept["notify"] = sorted(str(n) for n in params["notify"])
    if params.get("orcpt"):
        kind, address = params["orcpt"]
        kept["orcpt"] = [str(kind), str(address)]
    return kept


class QueueDelivery:
    """Receiving one message into the queue."""

    def __init__(self, queue: "QueueTarget", meta: MessageMeta, mail_from: str):
        self.queue = queue
        self.meta = meta
        self.mail_from = mail_from
        self.rcpts: dict[str, dict] = {}
        self.staged: Staged | None = None
        self.committed = False

    def add_rcpt(self, rcpt: str, params: dict | None = None) -> None:
        if self.queue.stopping:
            raise SMTPError(451, (4, 3, 2), "Queue is shutting down, try again later")
        self.rcpts.setdefault(rcpt, _json_params(params))

    def body(self, header: bytes, body) -> None:
        queue = self.queue
        now = time.time()
        mail_params = {k: (str(v) if v is not None and not isinstance(v, (bool, int)) else v)
                       for k, v in self.meta.mail_params.items()}
        record = QueuedMessage(
            id=new_id(), msg_id=self.meta.id, mail_from=self.mail_from,
            recipients=[Recipient(a, p) for a, p in self.rcpts.items()],
            header_size=len(header), size=len(header) + body.size, arrival=now,
            mail_params=mail_params, conn=dict(self.meta.conn),
            quarantine=self.meta.quarantine, original_rcpts=dict(self.meta.original_rcpts),
            next_attempt=now)
        try:
            self.staged = in_threadpool(queue.spool.stage, record, header, body)
        except OSError as e:
            queue.log.error("store_failed", msg_id=self.meta.id, step="stage",
                            error=e.strerror or str(e))
            raise STORE_FAILED from None

    def commit(self) -> None:
        if self.staged is None or self.committed:
            return
        queue = self.queue
        staged = self.staged
        try:
            # Steps 2–3 of the commit order (gmta.queue.store): the rename, made in
            # the pool just before one fsync of msg/ shared with every commit that
            # finishes meanwhile (group commit), before the 250.
            queue.msg_dir_sync.sync(queue.spool.publish_renames(staged))
        except OSError as e:
            self.staged = None
            try:
                in_threadpool(queue.spool.unpublish, staged)  # and releases the lock
            except OSError as undo_error:
                queue.log.error("store_failed", msg_id=self.meta.id, step="unpublish",
                                error=undo_error.strerror or str(undo_error))
            queue.log.error("store_failed", msg_id=self.meta.id, step="publish",
                            error=e.strerror or str(e))
            raise STORE_FAILED from None
        self.committed = True
        staged.lock.release()
        queue.log.info("queued", queue_id=staged.id, msg_id=self.meta.id,
                       sender=self.mail_from, rcpts=len(self.rcpts))
        # The first attempt runs in this process, also in a worker that does not run
        # the full scheduler (workers N): it hands on only what it cannot finish.
        queue.scheduler.schedule(staged.id, time.time())

    def abort(self) -> None:
        if self.staged is not None and not self.committed:
            staged, self.staged = self.staged, None
            try:
                in_threadpool(self.queue.spool.discard, staged)
            except OSError as e:
                self.queue.log.error("discard_failed", msg_id=self.meta.id,
                                     error=e.strerror or str(e))


@register
class QueueTarget(Module):
    name = "target.queue"
    legacy_names = ("queue",)
    kinds = frozenset({"target"})
    max_inline_args = 1
    directives = (
        Directive("target", ModuleRef("target"), required=True,
                  doc="where queued messages are delivered"),
        Directive("location", Path(), doc="the queue directory (default state_dir/NAME)"),
        Directive("max_parallelism", Int(minimum=1, maximum=10000), 16,
                  doc="delivery attempts at once"),
        Directive("max_tries", Int(minimum=1), 20, doc="attempts per recipient"),
        Directive("bounce", Custom(parse_bounce, "{ pipeline }"),
                  doc="pipeline for DSNs; without it no DSNs are sent"),
        Directive("autogenerated_msg_domain", Domain(), inherit_global=True,
                  doc="domain of the DSN sender MAILER-DAEMON@ and Message-ID"),
        Directive("hostname", Domain(), inherit_global=True, doc="Reporting-MTA of DSNs"),
        Directive("debug", Bool(), False, inherit_global=True, doc="verbose logging"),
        Directive("initial_retry_time", Duration(), DEFAULT_INITIAL_RETRY_TIME,
                  doc="delay after the first failed attempt"),
        Directive("retry_time_scale", Float(minimum=1.0), DEFAULT_RETRY_TIME_SCALE,
                  doc="growth factor of the delay"),
        Directive("post_init_delay", Duration(), 10.0,
                  doc="minimum delay for messages found at start-up"),
        Directive("delay_warning", Duration(), 4 * 3600.0,
                  doc="send a 'delayed' DSN after this long in the queue; 0 = never"),
    )

    def configure(self, cfg, ctx) -> None:
        location = cfg.location
        if self.inline_args:
            if cfg.given("location"):
                raise cfg.error("location", "give the queue directory either inline or with "
                                            "'location', not both")
            location = ctx.state_path(self.inline_args[0])
        if location is None:
            if self.is_inline:
                raise self.node.error("an inline queue needs a directory",
                                      hint="write 'deliver_to queue DIR { ... }' or set location")
            location = ctx.state_path(self.instance_name)
        self.location = location
        self.target = cfg.target
        self.max_parallelism = cfg.max_parallelism
        self.max_tries = cfg.max_tries
        self.bounce = cfg.bounce
        self.msg_domain = cfg.autogenerated_msg_domain
        self.hostname = cfg.hostname
        if self.bounce is not None:
            if self.msg_domain is None:
                raise cfg.error("bounce", "missing required directive: autogenerated_msg_domain",
                                hint="DSNs come from MAILER-DAEMON@DOMAIN; set it here or "
                                     "globally")
            if self.hostname is None:
                raise cfg.error("bounce", "missing required directive: hostname",
                                hint="DSNs name this server in Reporting-MTA; set it globally")
        self.initial_retry_time = cfg.initial_retry_time
        self.retry_time_scale = cfg.retry_time_scale
        self.post_init_delay = cfg.post_init_delay
        self.delay_warning = cfg.delay_warning
        self.log = gmta.log.get("queue", debug=cfg.debug)
        self.spool = Spool(location)
        #: Group commit of msg/ for publishing and removing entries (DESIGN §4.1).
        self.msg_dir_sync = DirectorySync(self.spool.msg_dir)
        self.notifier = Notifier(self)
        self.scheduler = Scheduler(self)
        self.gauges = QueueGauges(self.instance_name, self.spool)
        self.stopping = False
        #: False in a worker process other than worker 0 (``workers N``): the full
        #: scheduler (scans, retries, DSNs) runs elsewhere; this process attempts
        #: only what it commits, once, and sends the rest there by wakeup datagram.
        self.schedules = True
        #: True when other processes receive into this queue: listen for their wakeups.
        self.shared = False
        self.wakeup_sender: WakeupSender | None = None
        #: Time of the last `gmta queue flush` of the whole queue (read from disk).
        self.flush_all = 0.0
        #: On reload: the old configuration's queue on this directory, whose
        #: scheduler runs until take_over() retires it.
        self.predecessor: QueueTarget | None = None
        self._taking_over: gevent.Greenlet | None = None
        #: What running attempts get on stop (stop_grace(): the endpoints' shutdown_timeout).
        self.grace = STOP_GRACE

    def start_delivery(self, meta: MessageMeta, mail_from: str) -> QueueDelivery:
        return QueueDelivery(self, meta, mail_from)

    def share_with_workers(self, schedules: bool) -> None:
        """Several processes receive into this queue; only the one with *schedules* runs
        the full scheduler, the others make first attempts only."""
        self.shared = True
        self.schedules = schedules

    def start(self) -> None:
        upgraded_from = in_threadpool(self.spool.prepare)
        if upgraded_from is not None:
            self.log.info("layout_upgraded", queue=self.instance_name, location=self.location,
                          old=upgraded_from, new=LAYOUT)
        self.stopping = False
        if not self.schedules:
            # Another process runs the full scheduler; what this one does not
            # deliver at its first attempt goes there.
            self.wakeup_sender = WakeupSender(self.spool, self.log)
        if self.predecessor is None:
            self._start_scheduler(resumed=False)
        # else (reload): take_over() starts the scheduler once the old one retired.
        self.gauges.track()
        self.log.info("queue_started", queue=self.instance_name, location=self.location,
                      scheduler="here" if self.schedules else "worker 0",
                      first_attempts="here")

    def _start_scheduler(self, resumed: bool) -> None:
        if self.schedules:
            self.scheduler.start(resumed=resumed, listen_for_wakeups=self.shared)
        else:
            self.scheduler.start(resumed=resumed, hand_off=self.wakeup_sender.send)

    def stop_grace(self, timeout: float) -> None:
        self.grace = timeout

    def stop(self) -> None:
        self.stopping = True
        self.gauges.untrack()
        if self._taking_over is not None and not self._taking_over.dead:
            # gmta stops while this queue still waits for the old scheduler's
            # attempts: those get the usual stop grace, as if never reloaded.
            self._taking_over.kill(block=True, timeout=5)
            if self.predecessor is not None:
                self.predecessor.stopping = True
                self.predecessor.scheduler.stop(self.grace)
        if not self.scheduler.retired:
            self.scheduler.stop(self.grace)
        # After the scheduler's stop: attempts still running (reloaded, or past
        # the grace) delete what they finish from now on (gmta.queue.spares).
        # Closed here on the hub, where keep() runs, so that none is kept
        # between the close and the deletion in the pool thread.
        self.spool.spares.close()
        in_threadpool(self.spool.drop_spares)
        if self.wakeup_sender is not None:
            # After the scheduler's stop, which hands on what it did not attempt.
            self.wakeup_sender.close()
            self.wakeup_sender = None
        # else: reloaded, the successor runs this directory and waits (up to
        # shutdown_timeout) for the attempts still running here; they are not
        # cut short because the old configuration's sessions have ended.
        self.log.info("queue_stopped", queue=self.instance_name)

    # -- reload: one scheduler per directory ---------------------------------------------

    def exclusive_key(self) -> object:
        return ("queue", os.path.realpath(self.location))

    def follow(self, predecessor) -> None:
        self.predecessor = predecessor

    def take_over(self, timeout: float) -> None:
        if self.predecessor is not None:
            self._taking_over = gevent.spawn(self._take_over, self.predecessor, timeout)

    def _take_over(self, old: "QueueTarget", timeout: float) -> None:
        # The predecessor may itself still be taking over from an older one
        # (reloads in quick succession): its in-flight attempts end first.
        if old._taking_over is not None:
            old._taking_over.join(timeout=timeout)
        running = old.scheduler.retire(self.scheduler, timeout)
        if running:
            # Each still holds its entry's lock: no entry is attempted twice.
            self.log.warning("attempts_still_running", queue=self.instance_name, count=running,
                             hint="they finish under the old configuration")
        self.predecessor = None
        self._start_scheduler(resumed=True)
        if self.schedules:
            self.log.info("scheduler_taken_over", queue=self.instance_name,
                          location=self.location)
