"""gmta's metrics: the one registry of the process and every family in it.

The code that counts does so with one line at the place where the thing
happens (``metrics.SESSIONS_OPENED.labels(name).inc()``); the ``openmetrics``
endpoint (:mod:`gmta.endpoint.openmetrics`) renders :data:`REGISTRY`.
``docs/reference/openmetrics.md`` describes every family below; a test keeps
the two in step.

This package imports nothing of gmta, so every layer may count.
"""

from __future__ import annotations

import os
import time

from gmta import __version__
from gmta.metrics import shared
from gmta.metrics.registry import Registry

REGISTRY = Registry(dropped_metric="gmta_metrics_label_sets_dropped_total",
                    failed_metric="gmta_metrics_collect_failures_total")
_r = REGISTRY

# -- the process --------------------------------------------------------------------------

PROCESS_START_TIME = _r.gauge(
    "gmta_process_start_time_seconds", "Start time of the gmta process since the Unix epoch",
    shared=False)
PROCESS_START_TIME.set(time.time())
BUILD_INFO = _r.info("gmta_build_info", "The version of gmta", {"version": __version__})

# -- endpoints (smtp, submission, lmtp) ----------------------------------------------------

SESSIONS_OPENED = _r.counter(
    "gmta_sessions_opened_total", "Connections accepted by an endpoint", ("endpoint",))
SESSIONS_ACTIVE = _r.gauge(
    "gmta_sessions_active", "Connections an endpoint is serving now", ("endpoint",))
MESSAGES_ACCEPTED = _r.counter(
    "gmta_messages_accepted_total",
    "Messages whose end of data got a 2xx reply", ("endpoint",))
MESSAGES_REJECTED = _r.counter(
    "gmta_messages_rejected_total",
    "Messages whose end of data got a 4xx or 5xx reply", ("endpoint", "code_class"))
RECIPIENTS_ACCEPTED = _r.counter(
    "gmta_recipients_accepted_total", "RCPT commands answered 2xx", ("endpoint",))
RECIPIENTS_REJECTED = _r.counter(
    "gmta_recipients_rejected_total", "RCPT commands answered 4xx or 5xx",
    ("endpoint", "code_class"))

# -- queues --------------------------------------------------------------------------------

QUEUE_ENTRIES = _r.gauge_function(
    "gmta_queue_entries", "Messages in a queue's spool (held ones included)", ("queue",))
QUEUE_OLDEST_AGE = _r.gauge_function(
    "gmta_queue_oldest_entry_age_seconds",
    "Age of the oldest message in a queue's spool; 0 when it is empty", ("queue",))
QUEUE_DELIVERIES = _r.counter(
    "gmta_queue_deliveries_total",
    "Per-recipient outcomes of queue attempts: delivered, deferred or bounced",
    ("queue", "result"))

# -- delivery targets (target.remote, target.smtp, target.lmtp) ----------------------------

TARGET_DELIVERIES = _r.counter(
    "gmta_target_deliveries_total",
    "Per-recipient outcomes at a target: delivered, temporary_failure or permanent_failure",
    ("target", "result"))

# -- limits, DNS, TLS ----------------------------------------------------------------------

LIMIT_WAITS = _r.counter(
    "gmta_limit_waits_total", "Acquisitions that had to wait for a rate token or a slot",
    ("limits", "scope", "kind"))
LIMIT_REFUSALS = _r.counter(
    "gmta_limit_refusals_total",
    "Acquisitions refused with 451 4.4.5 (wait too long, or the key map full)",
    ("limits", "scope", "reason"))
DNS_FAILURES = _r.counter(
    "gmta_dns_failures_total", "DNS lookups that failed, by kind of failure and record type",
    ("kind", "rdtype"))
OUTBOUND_TLS_FAILURES = _r.counter(
    "gmta_outbound_tls_failures_total",
    "Outbound TLS handshakes that failed: verify (certificate not trusted) or handshake",
    ("kind",))


def share_with_workers(metrics_dir: str, index: int, count: int, started: float) -> str | None:
    """In worker *index* of ``workers count``: count into this worker's file under
    *metrics_dir* and show every worker's sums (:mod:`gmta.metrics.shared`).

    The start time shown is the supervisor's, *started*: the counters began
    then, and a restarted worker does not reset them. Returns why a
    predecessor's file could not be taken over (its counts start again), or None.
    """
    os.makedirs(metrics_dir, mode=0o750, exist_ok=True)
    file = shared.WorkerFile(shared.worker_path(metrics_dir, index))
    REGISTRY.share(file, [shared.worker_path(metrics_dir, i) for i in range(count)])
    PROCESS_START_TIME.set(started)
    return file.discarded


def code_class(code: int) -> str:
    """``2xx``, ``4xx`` or ``5xx`` (RFC 5321 §4.2.1: the first digit is the class)."""
    return f"{code // 100}xx"


def count_reply(accepted, rejected, endpoint: str, code: int | None) -> None:
    """Count one reply: *code* None or 2xx into *accepted*, else into *rejected* by class."""
    if code is None or 200 <= code < 300:
        accepted.labels(endpoint).inc()
    else:
        rejected.labels(endpoint, code_class(code)).inc()


def _target_result(error) -> str:
    if error is None:
        return "delivered"
    # Anything that is not an SMTPError is temporary (DESIGN §3).
    return "temporary_failure" if getattr(error, "temporary", True) else "permanent_failure"


def count_target(target: str, rcpts, error=None) -> None:
    """Count one outcome per recipient at a target: *error* None (all delivered),
    an error with per-recipient ``results`` (PartialDeliveryError), or one error
    for all."""
    results = getattr(error, "results", None)
    for rcpt in rcpts:
        outcome = results.get(rcpt, error) if results is not None else error
        TARGET_DELIVERIES.labels(target, _target_result(outcome)).inc()
