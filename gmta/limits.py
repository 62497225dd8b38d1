"""``limits``: rate and concurrency limits on the flow of messages.

Spec: smtp-endpoint.md "Rate & concurrency limiting"; maddy-behaviour §2.7.
A block holds lines ``SCOPE rate BURST [PERIOD]`` and ``SCOPE concurrency MAX``
with the scopes ``all`` (every message), ``ip`` (per client IP), ``source``
(per sender domain) and ``destination`` (per recipient domain). Every line
applies; ``0`` means unlimited. A top-level ``limits NAME { }`` is shared by
every ``limits &NAME``, counters included.

What gmta does differently from maddy (maddy-behaviour §4.9, §4.10, §5):

- a rate bucket refills smoothly (BURST tokens per PERIOD, continuously, up
  to BURST), not all at once at the end of each period;
- every acquisition returns a :class:`Lease` whose ``release()`` is
  idempotent, and acquiring several limits is all-or-nothing, so no error
  path keeps a slot (maddy #842, #348);
- the per-key maps are bounded (``max_keys`` per scope) and idle keys are
  dropped; when a map is full of busy keys a new key gets the 451 at once
  instead of a panic or unbounded growth.

An endpoint uses it like this::

    lease = limits.take(ip=peer_ip, source=domain_of(mail_from))  # at MAIL; may raise 451
    ...
    lease.release()        # end of data, RSET, a new MAIL after an error, QUIT, disconnect

and a delivery target takes ``limits.take_destination(domain)`` per
recipient domain and releases it when it is done with that domain.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import gevent
import gevent.lock

import gmta.log
from gmta import metrics
from gmta.config.module import Module, register
from gmta.config.parser import Node
from gmta.config.values import parse_duration
from gmta.errors import SMTPError
from gmta.proto.grammar import domain_to_ascii

log = gmta.log.get("limits")

#: Scopes in the order they are acquired (one order for every caller, so two
#: acquisitions never wait on each other's slots crosswise).
SCOPES = ("all", "ip", "source", "destination")
KINDS = ("rate", "concurrency")

#: How long a caller waits for a token or a slot before the 451 (maddy: 5 s).
DEFAULT_WAIT_TIMEOUT = 5.0
#: Keys tracked per scope at most (maddy: 20010, but it panics past them).
DEFAULT_MAX_KEYS = 20000
#: How often idle keys are looked for, besides when a map is full.
REAP_INTERVAL = 60.0
#: Largest burst or concurrency a line may give; more is surely a typo.
MAX_VALUE = 1_000_000_000


def high_load_error(scope: str | None = None, key: str | None = None) -> SMTPError:
    """The reply when a limit cannot be had in time (maddy's text and code)."""
    misc = {"limit_scope": scope, "limit_key": key} if scope else None
    return SMTPError(451, (4, 4, 5), "High load, try again later", misc=misc)


def domain_of(address: str) -> str:
    """The domain of *address* as a ``source``/``destination`` key.

    Lower case, without a trailing dot; ``""`` for the null sender ``<>`` and
    for an address without a domain (``postmaster``), so they share one key.
    """
    _, at, domain = address.rpartition("@")
    return domain.lower().rstrip(".") if at else ""


def destination_order(address: str) -> str:
    """A sort key that puts recipients in the order of their ``destination`` keys,
    as target.remote takes them (the A-label form of the domain, lower case).

    A delivery to several domains takes one ``destination`` limit per domain as
    it adds their recipients, holding the earlier ones while it waits. If two
    deliveries took the same domains in opposite orders, each would wait for a
    slot the other holds, until ``wait_timeout`` deferred both. When every
    delivery takes them in one global order, no such cycle can form (the queue
    sorts each attempt's recipients with this key)."""
    domain = address.rpartition("@")[2].rstrip(".")
    try:
        return domain_to_ascii(domain).lower()
    except SMTPError:
        return domain.lower()


def normalize_key(scope: str, key: str) -> str:
    if scope == "ip":
        try:
            addr = ipaddress.ip_address(key.strip("[]"))
        except ValueError:
            return key
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return str(addr)
    if scope in ("source", "destination"):
        return key.lower().rstrip(".")
    return ""


# -- configuration -------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One line of a limits block: ``ip rate 20 1s`` or ``all concurrency 10``."""

    scope: str
    kind: str
    #: BURST of a rate line, MAX of a concurrency line; 0 = unlimited.
    value: int
    #: PERIOD of a rate line, in seconds.
    period: float = 1.0
    location: str = ""

    def __str__(self) -> str:
        if self.kind == "rate":
            return f"{self.scope} rate {self.value} {self.period:g}s"
        return f"{self.scope} concurrency {self.value}"


def _count(node: Node, what: str, text: str) -> int:
    body = text[1:] if text.startswith(("-", "+")) else text
    if not (body.isascii() and body.isdigit()):
        raise node.error(f"{node.name} {node.args[0]}: invalid {what} {text!r}: "
                         "expected a whole number", hint="0 means unlimited")
    value = int(text)
    if value < 0:
        raise node.error(f"{node.name} {node.args[0]}: {what} must not be negative: {text}",
                         hint="0 means unlimited")
    if value > MAX_VALUE:
        raise node.error(f"{node.name} {node.args[0]}: {what} {text} is too large: "
                         f"the maximum is {MAX_VALUE}")
    return value


def parse_rule(node: Node) -> Rule:
    """One ``SCOPE KIND ARGS...`` line, checked; errors carry ``file:line:``."""
    scope = node.name
    if scope not in SCOPES:
        close = difflib.get_close_matches(scope, SCOPES, n=1)
        hint = (f"did you mean {close[0]}? " if close else "") + \
            "the scopes are all, ip, source and destination"
        raise node.error(f"unknown limit scope: {scope}", hint=hint)
    if node.children is not None:
        raise node.error(f"{scope}: a limit line takes no block")
    if not node.args:
        raise node.error(f"{scope}: expected a limit kind",
                         hint=f"write '{scope} rate BURST [PERIOD]' or '{scope} concurrency MAX'")
    kind = node.args[0].lower()
    if kind == "rate":
        if len(node.args) < 2:
            raise node.error(f"{scope} rate: expected a burst size",
                             hint=f"such as '{scope} rate 20 1s'")
        burst = _count(node, "burst", node.args[1])
        period = 1.0
        if len(node.args) > 2:
            try:
                period = parse_duration(node.args[2:])
            except ValueError as e:
                raise node.error(f"{scope} rate: {e}") from None
            if period <= 0:
                raise node.error(f"{scope} rate: the period must be longer than zero",
                                 hint="such as 1s or 1m; use burst 0 for no limit")
        return Rule(scope, "rate", burst, period, node.location)
    if kind == "concurrency":
        if len(node.args) != 2:
            raise node.error(f"{scope} concurrency: expected one number, the maximum",
                             hint=f"such as '{scope} concurrency 10'")
        return Rule(scope, "concurrency", _count(node, "maximum", node.args[1]), 0.0,
                    node.location)
    raise node.error(f"unknown limit kind: {node.args[0]}", hint="expected rate or concurrency")


def parse_rules(nodes: Iterable[Node]) -> list[Rule]:
    """The lines of a block; the same scope and kind twice is an error."""
    rules: list[Rule] = []
    seen: dict[tuple[str, str], Rule] = {}
    for node in nodes:
        rule = parse_rule(node)
        first = seen.get((rule.scope, rule.kind))
        if first is not None:
            raise node.error(f"duplicate limit: {rule.scope} {rule.kind}",
                             hint=f"first given at {first.location}")
        seen[(rule.scope, rule.kind)] = rule
        rules.append(rule)
    return rules


# -- the counters ----------------------------------------------------------------


class TokenBucket:
    """Token bucket arithmetic, with no waiting and no clock of its own.

    ``burst`` tokens per ``period`` flow in continuously, up to ``burst``.
    A caller *reserves* a token: the level may go below zero, and the caller
    waits until the level it left behind has refilled to zero. So waiters
    are served in order and each knows its wait at once.
    """

    __slots__ = ("capacity", "rate", "tokens", "stamp")

    def __init__(self, burst: int, period: float, now: float):
        if burst <= 0 or period <= 0:
            raise ValueError("a token bucket needs burst > 0 and period > 0")
        self.capacity = float(burst)
        self.rate = burst / period          # tokens per second
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def level(self, now: float) -> float:
        """Tokens available at *now* (negative while reservations are pending)."""
        self._refill(now)
        return self.tokens

    def reserve(self, now: float, max_wait: float) -> float | None:
        """Take a token; return how long to wait for it, or None (nothing taken)
        when that would be longer than *max_wait*."""
        self._refill(now)
        wait = 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate
        if wait > max_wait:
            return None
        self.tokens -= 1.0
        return wait

    def refund(self, now: float) -> None:
        """Give back a token whose message was not processed after all."""
        self._refill(now)
        self.tokens = min(self.capacity, self.tokens + 1.0)

    def full_at(self, now: float) -> float:
        """When the bucket will be full if nobody takes from it."""
        self._refill(now)
        return now + max(0.0, self.capacity - self.tokens) / self.rate

    def is_full(self, now: float) -> bool:
        # A little slack for float rounding in the refill sum.
        return self.level(now) >= self.capacity - 1e-9


class _Entry:
    """The state of one key of one scope: its rate bucket and its semaphore."""

    __slots__ = ("key", "bucket", "sem", "holders", "pins")

    def __init__(self, key: str, bucket: TokenBucket | None, sem: gevent.lock.BoundedSemaphore | None):
        self.key = key
        self.bucket = bucket
        self.sem = sem
        self.holders = 0     # slots held by leases
        self.pins = 0        # acquisitions in progress that use this entry

    def droppable(self, now: float) -> bool:
        """Nothing would be lost by forgetting it: a new entry would be the same."""
        return self.pins == 0 and self.holders == 0 and \
            (self.bucket is None or self.bucket.is_full(now))


class _Scope:
    """The limits of one scope: a bounded map of per-key entries."""

    def __init__(self, name: str, rate: Rule | None, concurrency: Rule | None, max_keys: int):
        self.name = name
        self.rate = rate
        self.concurrency = concurrency
        # 'all' has a single entry, kept for the life of the instance.
        self.max_keys = 1 if name == "all" else max_keys
        self.entries: dict[str, _Entry] = {}
        self.in_use = 0
        self.waiting = 0
        self.timeouts = 0
        self.overflows = 0
        self.next_reap = -math.inf
        # Earliest time an entry may become droppable; inf when none can
        # until a release (which lowers it again).
        self.next_droppable = math.inf

    def get(self, key: str, now: float) -> _Entry | None:
        """The entry of *key*, made if needed; None when the map is full."""
        entry = self.entries.get(key)
        if entry is not None:
            return entry
        if self.name != "all":
            if now >= self.next_reap:
                self.reap(now)
            if len(self.entries) >= self.max_keys and now >= self.next_droppable:
                self.reap(now)
            if len(self.entries) >= self.max_keys:
                return None
        bucket = TokenBucket(self.rate.value, self.rate.period, now) if self.rate else None
        sem = gevent.lock.BoundedSemaphore(self.concurrency.value) if self.concurrency else None
        entry = self.entries[key] = _Entry(key, bucket, sem)
        return entry

    def reap(self, now: float) -> None:
        """Drop every droppable entry; note when the next one may become so."""
        self.next_reap = now + REAP_INTERVAL
        soonest = math.inf
        for key, entry in list(self.entries.items()):
            if entry.droppable(now):
                del self.entries[key]
            elif entry.pins == 0 and entry.holders == 0:
                soonest = min(soonest, entry.bucket.full_at(now))
        self.next_droppable = soonest

    def settle(self, entry: _Entry, now: float) -> None:
        """After a release or unpin: drop *entry* if idle, else note when it will be."""
        if self.name == "all" or entry.pins or entry.holders:
            return
        if entry.droppable(now):
            if self.entries.get(entry.key) is entry:
                del self.entries[entry.key]
        else:
            self.next_droppable = min(self.next_droppable, entry.bucket.full_at(now))


class Lease:
    """Slots held by one acquisition; ``release()`` gives them back, once.

    A context manager too: ``with limits.take(ip=...):``. Rate tokens are
    spent, not held: only a failed acquisition gives them back.
    """

    __slots__ = ("_owner", "_slots", "_released")

    def __init__(self, owner: "LimitSet"):
        self._owner = owner
        self._slots: list[tuple[_Scope, _Entry]] = []
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    @property
    def slots(self) -> int:
        """Concurrency slots held (0 after release)."""
        return len(self._slots)

    def release(self) -> None:
        """Give back every slot; later calls do nothing."""
        if self._released:
            return
        self._released = True
        slots, self._slots = self._slots, []
        self._owner._release_slots(slots)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        # A safety net for a caller that lost its lease: the slot comes back
        # (and the bug shows in the log) instead of the server slowly
        # refusing all mail (maddy #348).
        if not getattr(self, "_released", True) and self._slots:
            try:
                log.warning("limit_lease_leaked", limits=self._owner.label,
                            slots=len(self._slots))
                self.release()
            except Exception:  # pragma: no cover - interpreter shutdown
                pass

    def __repr__(self) -> str:
        state = "released" if self._released else f"{len(self._slots)} slot(s)"
        return f"<Lease {self._owner.label} {state}>"


class LimitSet:
    """The limits of one block: take leases, look at the counters.

    *clock* gives the time for the rate arithmetic and the deadline, *sleep*
    waits for a reserved token; tests pass a fake pair. Both the wait
    (``wait_timeout``) and the bound of each key map (``max_keys``) are
    attributes that may be changed before use.
    """

    wait_timeout: float = DEFAULT_WAIT_TIMEOUT
    max_keys: int = DEFAULT_MAX_KEYS

    def __init__(self, rules: Iterable[Rule] = (), *, wait_timeout: float | None = None,
                 max_keys: int | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = gevent.sleep, label: str = "limits"):
        if wait_timeout is not None:
            if wait_timeout < 0:
                raise ValueError("wait_timeout must not be negative")
            self.wait_timeout = wait_timeout
        if max_keys is not None:
            if max_keys < 1:
                raise ValueError("max_keys must be at least 1")
            self.max_keys = max_keys
        self.clock = clock
        self.sleep = sleep
        self.label = label
        self._install(rules)

    def _install(self, rules: Iterable[Rule]) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._scopes: dict[str, _Scope] = {}
        for scope in SCOPES:
            found = {r.kind: r for r in self.rules if r.scope == scope and r.value > 0}
            if found:
                self._scopes[scope] = _Scope(scope, found.get("rate"), found.get("concurrency"),
                                             self.max_keys)

    def has_scope(self, scope: str) -> bool:
        """Whether a limit of *scope* is in force (``0`` lines do not count)."""
        return scope in self._scopes

    # -- acquiring -------------------------------------------------------------

    def take(self, *, ip: str | None = None, source: str | None = None,
             timeout: float | None = None) -> Lease:
        """The per-message limits: ``all``, and ``ip``/``source`` when given.

        *source* is the sender's domain (:func:`domain_of`); None skips the
        scope. Raises the 451 4.4.5 :class:`SMTPError` on timeout.
        """
        return self.acquire({"all": "", "ip": ip, "source": source}, timeout=timeout)

    def take_destination(self, domain: str, *, timeout: float | None = None) -> Lease:
        """The ``destination`` limits of one recipient domain."""
        return self.acquire({"destination": domain}, timeout=timeout)

    def acquire(self, scope_keys: Mapping[str, str | None] | None = None, *,
                destinations: Iterable[str] = (), timeout: float | None = None) -> Lease:
        """Take every limit of the scopes in *scope_keys* (scope → key), all or nothing.

        ``"all"`` applies when present (its key is ignored); a None key skips
        its scope; *destinations* adds several recipient domains at once.
        The whole acquisition waits at most *timeout* (default
        ``wait_timeout``); on failure nothing stays held and the 451 4.4.5
        :class:`SMTPError` is raised.
        """
        wanted: list[tuple[str, str]] = []
        dests: set[str] = set()
        for scope, key in (scope_keys or {}).items():
            if scope not in SCOPES:
                raise ValueError(f"unknown limit scope {scope!r}")
            if key is None:
                continue
            if scope == "destination":
                dests.add(normalize_key(scope, key))
            else:
                wanted.append((scope, normalize_key(scope, key)))
        dests.update(normalize_key("destination", d) for d in destinations)
        wanted.sort(key=lambda sk: SCOPES.index(sk[0]))
        wanted.extend(("destination", d) for d in sorted(dests))
        wanted = [(s, k) for s, k in wanted if s in self._scopes]

        lease = Lease(self)
        if not wanted:
            return lease
        now = self.clock()
        deadline = now + (self.wait_timeout if timeout is None else max(0.0, timeout))
        started = now
        pinned: list[tuple[_Scope, _Entry]] = []
        spent: list[_Entry] = []   # rate tokens to give back if this fails
        try:
            # Nothing yields in this loop, so no entry can go away meanwhile.
            for name, key in wanted:
                scope = self._scopes[name]
                entry = scope.get(key, now)
                if entry is None:
                    scope.overflows += 1
                    metrics.LIMIT_REFUSALS.labels(self.label, name, "keys_full").inc()
                    log.warning("limit_keys_full", limits=self.label, scope=name, key=key,
                                max_keys=scope.max_keys)
                    raise high_load_error(name, key)
                entry.pins += 1
                pinned.append((scope, entry))
            # Rate tokens first, then slots: nobody holds a slot while
            # waiting for a token.
            for scope, entry in pinned:
                if entry.bucket is not None:
                    self._take_token(scope, entry, deadline, started)
                    spent.append(entry)
            for scope, entry in pinned:
                if entry.sem is not None:
                    self._take_slot(scope, entry, deadline, started, lease)
        except BaseException:
            # All or nothing: give back what was taken, then re-raise (the
            # 451, or a kill of the waiting greenlet).
            slots, lease._slots = lease._slots, []
            lease._released = True
            self._release_slots(slots, settle=False)
            now = self.clock()
            for entry in spent:
                entry.bucket.refund(now)
            raise
        finally:
            now = self.clock()
            for scope, entry in pinned:
                entry.pins -= 1
                scope.settle(entry, now)
        return lease

    def _take_token(self, scope: _Scope, entry: _Entry, deadline: float, started: float) -> None:
        now = self.clock()
        wait = entry.bucket.reserve(now, deadline - now)
        if wait is None:
            # The token cannot come in time: say so now rather than at the deadline.
            self._timed_out(scope, entry, "rate", started)
        if wait <= 0:
            return
        metrics.LIMIT_WAITS.labels(self.label, scope.name, "rate").inc()
        scope.waiting += 1
        try:
            self.sleep(wait)
        except BaseException:
            entry.bucket.refund(self.clock())
            raise
        finally:
            scope.waiting -= 1

    def _take_slot(self, scope: _Scope, entry: _Entry, deadline: float, started: float,
                   lease: Lease) -> None:
        if not entry.sem.acquire(blocking=False):
            remaining = deadline - self.clock()
            if remaining <= 0:
                self._timed_out(scope, entry, "concurrency", started)
            metrics.LIMIT_WAITS.labels(self.label, scope.name, "concurrency").inc()
            scope.waiting += 1
            try:
                ok = entry.sem.acquire(timeout=remaining)
            finally:
                scope.waiting -= 1
            if not ok:
                self._timed_out(scope, entry, "concurrency", started)
        # No switch between the acquire and this: the slot is on the lease.
        entry.holders += 1
        scope.in_use += 1
        lease._slots.append((scope, entry))

    def _timed_out(self, scope: _Scope, entry: _Entry, kind: str, started: float):
        scope.timeouts += 1
        metrics.LIMIT_REFUSALS.labels(self.label, scope.name, kind).inc()
        key = entry.key if scope.name != "all" else None
        log.warning("limit_wait_timeout", limits=self.label, scope=scope.name, key=key,
                    limit=kind, waited=f"{max(0.0, self.clock() - started):.3f}s")
        raise high_load_error(scope.name, key)

    def _release_slots(self, slots: list[tuple[_Scope, _Entry]], settle: bool = True) -> None:
        now = self.clock()
        for scope, entry in reversed(slots):
            entry.holders -= 1
            scope.in_use -= 1
            try:
                entry.sem.release()
            except ValueError:  # pragma: no cover - would be a bug in the counting
                log.error("limit_over_release", limits=self.label, scope=scope.name,
                          key=entry.key)
            if settle:
                scope.settle(entry, now)

    # -- looking -----------------------------------------------------------------

    def state(self) -> dict[str, dict[str, int]]:
        """A snapshot per scope: ``in_use`` slots, ``waiting`` callers, tracked
        ``keys``, and the counters ``timeouts`` and ``overflows`` (full map)."""
        result = {}
        for name in SCOPES:
            scope = self._scopes.get(name)
            if scope is None:
                result[name] = {"in_use": 0, "waiting": 0, "keys": 0, "timeouts": 0,
                                "overflows": 0}
            else:
                result[name] = {"in_use": scope.in_use, "waiting": scope.waiting,
                                "keys": len(scope.entries), "timeouts": scope.timeouts,
                                "overflows": scope.overflows}
        return result

    def reap(self) -> None:
        """Drop idle keys now (also done every minute and when a map is full)."""
        now = self.clock()
        for name, scope in self._scopes.items():
            if name != "all":
                scope.reap(now)


#: No limits at all: for endpoints and targets without a ``limits`` directive.
UNLIMITED = LimitSet(label="unlimited")


@register
class Limits(LimitSet, Module):
    """The ``limits`` module: a :class:`LimitSet` read from a config block."""

    name = "limits"
    kinds = frozenset({"limits"})
    # The lines are not fixed directive names: configure() reads them all.
    allow_unknown = True

    def __init__(self, instance_name: str | None, inline_args: list[str], node: Node):
        Module.__init__(self, instance_name, inline_args, node)
        LimitSet.__init__(self, (), label=self.instance_name)

    def configure(self, cfg, ctx) -> None:
        self._install(parse_rules(cfg.rest))
