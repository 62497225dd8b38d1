"""The queue's scheduler: a bounded window of next attempts and a pool of workers.

- **Window.** At most ``window`` entries are known in memory, each as one
  ``(due time, id)`` pair in a heap — never a body, never a record. An entry
  that does not fit is left on disk and the window is marked *overflowing*;
  when the window has drained to half, a rescan refills it with the earliest
  due entries on disk. A queue of a million messages thus costs a few MB and
  start-up does not wait for it: the first scan runs in the background.
- **Workers.** A ``gevent.pool.Pool`` of ``max_parallelism`` greenlets runs
  :class:`gmta.queue.attempt.Attempt` on due entries.
- **Rescans** (a full pass over ``msg/`` in the threadpool, a batch at a time)
  happen at start-up (with recovery), when ``gmta queue flush|release``
  touches the ``wakeup`` file (polled every ``WAKEUP_POLL`` seconds, and
  announced at once by a datagram on ``wakeup.sock``), every
  ``RESCAN_INTERVAL`` seconds so that a second daemon on the same queue takes
  over what a dead one left, and when an overflowing window needs refilling.
- **Retirement** (configuration reload, :mod:`gmta.daemon.reload`): the old
  scheduler stops dispatching, gives its window to its successor (the new
  configuration's scheduler on the same directory) and lets running attempts
  finish; from then on everything scheduled on it (messages committed by
  sessions still on the old configuration, attempts that end late) goes to the
  successor. The successor starts only after that, so one directory never has
  two schedulers dispatching at once.
- **Other receiving processes** (``workers N``) run a scheduler of *first
  attempts* (:meth:`Scheduler.start` with a ``hand_off``): each id they commit
  is attempted there, by the process that received it, so delivery spreads
  over the workers instead of queueing behind one. It never scans: what it
  cannot finish (a deferral, a busy entry, more than its window, a stop) goes
  by id to the full scheduler's wakeup socket (:mod:`gmta.queue.wakeup`),
  which takes it at once, without a rescan. On reload the retiring scheduler
  closes the socket before its successor binds it again.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Callable

import gevent
from gevent.event import Event
from gevent.pool import Pool

from gmta.durable import in_threadpool
from gmta.queue.attempt import Attempt
from gmta.queue.wakeup import WakeupListener

WINDOW = 10000
WAKEUP_POLL = 1.0
RESCAN_INTERVAL = 300.0
SCAN_BATCH = 256
#: How long stop() lets running attempts finish before killing them, when the
#: configuration says nothing (gmta run gives the endpoints' shutdown_timeout).
STOP_GRACE = 10.0


class Scheduler:
    def __init__(self, queue, window: int = WINDOW):
        self.queue = queue
        self.spool = queue.spool
        self.log = queue.log
        self.window = window
        self.attempt = Attempt(queue)
        self.pool = Pool(queue.max_parallelism)
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}
        self._seq = itertools.count()
        self._active: set[str] = set()
        self._overflow = False
        self._wake = Event()
        self._rescan = Event()
        self._greenlets: list[gevent.Greenlet] = []
        self._wakeups: WakeupListener | None = None
        self.started_at = 0.0
        #: Set by retire(): the scheduler that now runs this queue directory.
        self.successor: Scheduler | None = None
        self.retired = False
        #: A scheduler of first attempts (``workers N``, not worker 0) gives every
        #: id it will not attempt now to the full scheduler: ``hand_off(id)``.
        self.hand_off: Callable[[str], None] | None = None
        self.stopped = False

    # -- the window ----------------------------------------------------------------------

    def schedule(self, entry_id: str, due: float) -> None:
        """Make *entry_id* due at *due* (earlier of this and what is known)."""
        if self.retired:
            # Without a successor the entry waits on disk for the next
            # scheduler of this directory (found by its first scan).
            if self.successor is not None:
                self.successor.schedule(entry_id, due)
            return
        if entry_id in self._active:
            return  # its worker reschedules it when done
        if self.hand_off is not None and (self.stopped or due > time.time()):
            # Only first attempts run here; retries are the full scheduler's.
            self.hand_off(entry_id)
            return
        known = self._due.get(entry_id)
        if known is not None and known <= due:
            return
        if known is None and len(self._due) >= self.window:
            if self.hand_off is not None:
                # No rescan here to bring it back later: the full scheduler takes it.
                self.hand_off(entry_id)
                return
            latest_id = max(self._due, key=self._due.__getitem__)
            if self._due[latest_id] <= due:
                self._overflow = True
                return
            # The new entry is due sooner: the latest one goes back to disk only.
            del self._due[latest_id]
            self._overflow = True
        self._due[entry_id] = due
        heapq.heappush(self._heap, (due, next(self._seq), entry_id))
        if len(self._heap) > 4 * self.window:
            self._compact()
        self._wake.set()

    def _compact(self) -> None:
        """Drop stale heap items (entries rescheduled or forgotten)."""
        self._heap = [(d, s, i) for d, s, i in self._heap if self._due.get(i) == d]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._due)

    # -- running -------------------------------------------------------------------------

    def start(self, resumed: bool = False, listen_for_wakeups: bool = False,
              hand_off: Callable[[str], None] | None = None) -> None:
        """Begin dispatching; *resumed*: taking over on reload, not a start-up of gmta
        (no ``post_init_delay``: the entries were due for the predecessor too);
        *listen_for_wakeups*: other processes receive into this queue (``workers N``);
        *hand_off*: run only the first attempts of what this process commits, and
        give everything else to the full scheduler through this callable (no
        scans, no retries, no wakeup polling here)."""
        if self.retired:
            return  # retired before it started (two reloads in quick succession)
        self.started_at = time.time()
        if hand_off is not None:
            self.hand_off = hand_off
            self._greenlets = [gevent.spawn(self._dispatch)]
            return
        # Before the start-up scan: what other workers commit after this point is
        # announced, what was committed before is found by the scan. Without other
        # workers only `gmta queue` sends here (RESCAN).
        self._wakeups = WakeupListener(self.spool, self._woken, self.log,
                                       on_rescan=self._rescan.set,
                                       quiet=not listen_for_wakeups)
        self._wakeups.start()
        self._greenlets = [gevent.spawn(self._dispatch),
                           gevent.spawn(self._maintain, not resumed)]

    def retire(self, successor: "Scheduler | None", timeout: float) -> int:
        """Stop dispatching for good and hand the window to *successor*; wait up to
        *timeout* seconds for running attempts. Returns how many are still running.

        Running attempts are not killed: each holds its entry's lock, so the
        successor cannot attempt the same entry; when one ends, its next due
        time goes to the successor through :meth:`schedule`.
        """
        if self._wakeups is not None:
            # The successor binds the same wakeup socket when it starts.
            self._wakeups.stop()
            self._wakeups = None
        for greenlet in self._greenlets:
            greenlet.kill(block=True, timeout=2)
        self._greenlets = []
        self.retired = True
        self.successor = successor
        window, self._due, self._heap = self._due, {}, []
        if successor is not None:
            for entry_id, due in window.items():
                successor.schedule(entry_id, due)
        self.pool.join(timeout=timeout)
        return len(self.pool)

    def _woken(self, entry_id: str) -> None:
        self.schedule(entry_id, time.time())

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Dispatch no more; running attempts get *grace* seconds, then are cut.

        A cut attempt records nothing: its entry's lock is released with the
        greenlet and its recipients stay pending, to be retried (the remote
        side never acknowledged what was cut, except in the instant between
        its reply and our record: the one duplicate DESIGN §4.4 allows).
        """
        if self._wakeups is not None:
            self._wakeups.stop()
            self._wakeups = None
        for greenlet in self._greenlets:
            greenlet.kill(block=True, timeout=2)
        self.stopped = True
        if self.hand_off is not None:
            # Committed here but not attempted yet: the full scheduler's now
            # (or, if it is stopping too, its next start-up scan's).
            window, self._due, self._heap = self._due, {}, []
            for entry_id in window:
                self.hand_off(entry_id)
        # Attempts see queue.stopping and start no new delivery; let running
        # ones record their results.
        self.pool.join(timeout=grace)
        self.pool.kill(block=True, timeout=2)

    def _dispatch(self) -> None:
        while True:
            self.pool.wait_available()
            if not self._heap:
                self._wait(None)
                continue
            due, _, entry_id = self._heap[0]
            if self._due.get(entry_id) != due:
                heapq.heappop(self._heap)  # stale: rescheduled or dropped
                continue
            now = time.time()
            if due > now:
                self._wait(due - now)
                continue
            heapq.heappop(self._heap)
            del self._due[entry_id]
            self._active.add(entry_id)
            self.pool.spawn(self._work, entry_id)
            if self._overflow and len(self._due) < self.window // 2:
                self._rescan.set()

    def _wait(self, timeout: float | None) -> None:
        self._wake.wait(timeout)
        self._wake.clear()

    def _work(self, entry_id: str) -> None:
        try:
            due = self.attempt.run(entry_id)
        except Exception as e:
            # A bug or an unexpected disk error: keep the entry, try later.
            self.log.error("attempt_failed", queue_id=entry_id, error=repr(e))
            due = time.time() + self.queue.initial_retry_time
        finally:
            self._active.discard(entry_id)
        if due is not None:
            self.schedule(entry_id, due)  # with hand_off: to the full scheduler

    def _maintain(self, startup: bool = True) -> None:
        """Recovery, then rescans on request, on wakeup and periodically."""
        self.queue.flush_all = in_threadpool(self.spool.flush_all_time)
        self.scan(startup=startup)
        stamp = in_threadpool(self.spool.wakeup_stamp)
        last_scan = time.monotonic()
        while True:
            self._rescan.wait(WAKEUP_POLL)
            requested = self._rescan.is_set()
            self._rescan.clear()
            new_stamp = in_threadpool(self.spool.wakeup_stamp)
            if new_stamp != stamp:
                stamp = new_stamp
                self.queue.flush_all = in_threadpool(self.spool.flush_all_time)
                requested = True
                self.log.info("wakeup", reason="gmta queue command")
            if requested or time.monotonic() - last_scan >= RESCAN_INTERVAL:
                self.scan(startup=False)
                last_scan = time.monotonic()

    def scan(self, startup: bool) -> None:
        """One pass over ``tmp/`` and ``msg/``: recovery, and refill the window."""
        for name in in_threadpool(self.spool.clean_tmp):
            self.log.info("tmp_removed", file=name, reason="left by a crash before the 250")
        removed = in_threadpool(self.spool.clean_spares)
        if removed:
            self.log.info("spares_removed", count=len(removed),
                          reason="left by a process that stopped without deleting them")
        scanner = self.spool.scan()
        # A max-heap (negated times) of the `window` earliest entries seen.
        earliest: list[tuple[float, str]] = []
        total = corrupt = orphans = 0
        min_due = self.started_at + self.queue.post_init_delay if startup else 0.0
        while True:
            batch = in_threadpool(_next_batch, scanner)
            if not batch:
                break
            for event in batch:
                if event.kind == "entry":
                    record = event.record
                    if record.held or event.id in self._active:
                        continue
                    total += 1
                    due = max(self.attempt.due_time(record, self.queue.flush_all), min_due)
                    item = (-due, event.id)
                    if len(earliest) < self.window:
                        heapq.heappush(earliest, item)
                    elif item > earliest[0]:
                        heapq.heapreplace(earliest, item)
                elif event.kind == "corrupt":
                    corrupt += 1
                    self.log.error("corrupt_entry", queue_id=event.id, reason=event.reason,
                                   moved_to=self.spool.corrupt_dir)
                elif event.kind == "orphan":
                    orphans += 1
                    self.log.info("orphan_removed", queue_id=event.id,
                                  reason="message file without a current record: never "
                                         "acknowledged, or its removal was cut short")
        self._overflow = total > len(earliest)
        for negated, entry_id in earliest:
            self.schedule(entry_id, -negated)
        self.log.info("scanned", startup="yes" if startup else "no", entries=total,
                      in_window=len(self._due), corrupt=corrupt, orphans=orphans)


def _next_batch(scanner) -> list:
    return list(itertools.islice(scanner, SCAN_BATCH))
