"""Idle SMTP sessions kept for the next message to the same destination (maddy #235).

A session goes back into the cache after a successful transaction while it has
done fewer than ``conn_reuse_limit`` transactions, and comes out for the next
message with the same *key*. The key is the target's business; ``target.remote``
makes it from the recipient domain, the local address and the security
requirement of the message, so a session admitted under one policy is never
handed to a message that needs another.

Bounds and clean-up:

- at most ``max_idle_per_key`` idle sessions per key and ``max_idle_total``
  overall; beyond that the oldest are closed — overall at once, per key after
  ``TRIM_DELAY``. Under load every delivery gives its session back and the next
  delivery takes one a moment later: when more deliveries run at once than
  ``max_idle_per_key``, closing the surplus at once would close sessions about
  to be taken again, and open as many new ones (a connect, a greeting and EHLO
  each). A surplus still idle after the delay is not needed;
- a session idle for ``max_idle_time`` is useless: the remote server has
  probably hung up (RFC 5321 §4.5.3.2.7 lets it after 5 minutes; Office 365
  does much sooner, maddy #693). A reaper greenlet says QUIT to each idle
  session *before* it reaches that age, so none is ever found dead;
- a session taken out is checked with NOOP first (RFC 5321 §4.1.1.9); one that
  does not answer 250 is closed and the next is tried. With ``check_after``, a
  plaintext session idle for less than that is only peeked at
  (``SMTPClient.quiet_while_idle``: a server that hung up or sent a ``421``
  shows without a round trip), which saves a command per message under load.

Closing says QUIT (bounded by the client's QUIT timeout) and never raises.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import gevent

import gmta.log
from gmta.config.reader import Custom, Directive, Int
from gmta.config.values import parse_duration
from gmta.errors import SMTPError

#: The reaper runs at least this often; a session is closed when it would pass
#: max_idle_time before the next run.
MAX_REAP_INTERVAL = 15.0
MIN_REAP_INTERVAL = 0.1
#: Idle sessions overall (file descriptors and remote server slots).
DEFAULT_MAX_IDLE_TOTAL = 1000
#: How long sessions beyond max_idle_per_key may wait to be taken again.
TRIM_DELAY = 0.5


class _Idle:
    __slots__ = ("key", "connection", "since")

    def __init__(self, key: Hashable, connection: Any, since: float):
        self.key = key
        self.connection = connection
        self.since = since


class ConnectionCache:
    """Idle sessions by key. *connection* objects have a ``client`` (an SMTPClient)."""

    def __init__(self, *, max_idle_per_key: int, max_idle_time: float,
                 max_idle_total: int = DEFAULT_MAX_IDLE_TOTAL, check_after: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 log: gmta.log.EventLogger | None = None):
        self.max_idle_per_key = max_idle_per_key
        self.max_idle_time = max_idle_time
        self.max_idle_total = max_idle_total
        #: Sessions idle at least this long get a NOOP; younger ones only a peek.
        self.check_after = check_after
        self.clock = clock
        self.log = log or gmta.log.get("conncache")
        # Oldest first, over every key (for the global bound and the reaper);
        # the per-key lists hold the same entries, newest last.
        self._all: OrderedDict[int, _Idle] = OrderedDict()
        self._by_key: dict[Hashable, list[_Idle]] = {}
        self._reaper: gevent.Greenlet | None = None
        self._trimmer: gevent.Greenlet | None = None
        self._closed = False

    # --- Counting. ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._all)

    def idle(self, key: Hashable) -> int:
        return len(self._by_key.get(key, ()))

    @property
    def reap_interval(self) -> float:
        return min(MAX_REAP_INTERVAL, max(MIN_REAP_INTERVAL, self.max_idle_time / 5))

    # --- Taking and giving back. ----------------------------------------------------------

    def take(self, key: Hashable) -> Any | None:
        """The most recently used healthy session for *key*, or None."""
        while True:
            entry = self._pop_newest(key)
            if entry is None:
                return None
            client = entry.connection.client
            idle = self.clock() - entry.since
            if not client.usable or idle >= self.max_idle_time:
                self._close(entry, "expired")
                continue
            quiet = client.quiet_while_idle() if idle < self.check_after else None
            if quiet is False:
                self.log.debug("cached_session_dead", key=_key_text(key), peer=client.peer,
                               reply="closed or spoke while idle")
                client.close()
                continue
            if quiet:
                return entry.connection
            try:
                client.noop()   # the health check: is the session still there?
            except SMTPError as error:
                self.log.debug("cached_session_dead", key=_key_text(key), peer=client.peer,
                               reply=str(error))
                client.close()
                continue
            return entry.connection

    def put(self, key: Hashable, connection: Any) -> None:
        """Keep *connection* idle under *key* (or close it when it cannot be kept)."""
        client = connection.client
        if self._closed or self.max_idle_per_key <= 0 or not client.usable:
            client.quit()
            return
        entry = _Idle(key, connection, self.clock())
        self._all[id(entry)] = entry
        self._by_key.setdefault(key, []).append(entry)
        if len(self._by_key[key]) > self.max_idle_per_key and self._trimmer is None:
            self._trimmer = gevent.spawn_later(TRIM_DELAY, self._trim_later)
        while len(self._all) > self.max_idle_total:
            self._close(self._remove(next(iter(self._all.values()))), "too_many")
        self._ensure_reaper()

    def give_back(self, key: Hashable, connection: Any, *, clean: bool,
                  reuse_limit: int) -> None:
        """After a message: keep *connection* under *key* for the next one, or close it.

        maddy's rules: at most *reuse_limit* transactions per session. A transaction
        that did not finish (not *clean*) is ended with RSET first (RFC 5321
        §4.1.1.5); a session that does not answer it is closed.
        """
        client = connection.client
        if not client.usable or client.transactions >= reuse_limit:
            client.quit()
            return
        if not clean:
            try:
                client.rset()
            except SMTPError:
                client.close()
                return
        self.put(key, connection)

    def trim(self) -> int:
        """Close the oldest sessions of every key beyond max_idle_per_key; how many."""
        closed = 0
        for entries in list(self._by_key.values()):
            while len(entries) > self.max_idle_per_key:
                self._close(self._remove(entries[0]), "too_many_for_key")
                closed += 1
        return closed

    def _trim_later(self) -> None:
        self._trimmer = None
        self.trim()

    def close_all(self) -> None:
        """QUIT every idle session and stop the reaper (the target is stopping)."""
        self._closed = True
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.kill(block=False)
        trimmer, self._trimmer = self._trimmer, None
        if trimmer is not None:
            trimmer.kill(block=False)
        for entry in list(self._all.values()):
            self._close(self._remove(entry), "stopping")

    def reopen(self) -> None:
        self._closed = False

    # --- Expiry. ------------------------------------------------------------------------

    def reap(self) -> int:
        """Close the sessions that would be idle too long before the next run; how many."""
        deadline = self.clock() - (self.max_idle_time - self.reap_interval)
        closed = 0
        while self._all:
            oldest = next(iter(self._all.values()))
            if oldest.since > deadline:
                break
            self._close(self._remove(oldest), "idle")
            closed += 1
        return closed

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.dead:
            self._reaper = gevent.spawn(self._reap_forever)

    def _reap_forever(self) -> None:
        while self._all:
            gevent.sleep(self.reap_interval)
            self.reap()
        self._reaper = None

    # --- Internals. ---------------------------------------------------------------------

    def _pop_newest(self, key: Hashable) -> _Idle | None:
        entries = self._by_key.get(key)
        if not entries:
            return None
        return self._remove(entries[-1])

    def _remove(self, entry: _Idle) -> _Idle:
        self._all.pop(id(entry), None)
        entries = self._by_key.get(entry.key)
        if entries is not None:
            entries.remove(entry)
            if not entries:
                del self._by_key[entry.key]
        return entry

    def _close(self, entry: _Idle, reason: str) -> None:
        client = entry.connection.client
        self.log.debug("cached_session_closed", key=_key_text(entry.key), peer=client.peer,
                       reason=reason, idle=f"{self.clock() - entry.since:.1f}s")
        client.quit()


def _key_text(key: Hashable) -> str:
    if isinstance(key, tuple):
        return "/".join(str(part) for part in key)
    return str(key)


def parse_idle_time(node, ctx) -> float:
    """``conn_max_idle_time``: maddy takes seconds as an integer (``150``); gmta also
    takes a duration (``2m30s``)."""
    if node.children is not None or not node.args:
        raise ValueError("expected seconds (150) or a duration (2m30s)")
    if len(node.args) == 1 and node.args[0].isdigit():
        seconds = float(int(node.args[0]))
    else:
        seconds = parse_duration(node.args)
    if seconds <= 0:
        raise ValueError("conn_max_idle_time must be positive")
    return seconds


def reuse_directives(idle_count_doc: str) -> tuple[Directive, ...]:
    """The connection-reuse directives target.remote and target.smtp/lmtp share (one
    spelling, one default each); *idle_count_doc* says what a cache key is there."""
    return (
        Directive("conn_reuse_limit", Int(minimum=1), 10, doc="transactions per connection"),
        Directive("conn_max_idle_count", Int(minimum=0), 10, doc=idle_count_doc),
        Directive("conn_max_idle_time", Custom(parse_idle_time, "seconds | duration"), 150.0,
                  doc="how long an idle connection is kept"),
    )
