"""The ``limits`` module: config lines, token buckets, semaphores, leases, key maps.

Rate arithmetic runs on a fake clock (its ``sleep`` moves the clock), so no
test sleeps for a token; concurrency waits use real gevent waits of a few
hundredths of a second at most.
"""

from __future__ import annotations

import gc
import logging
import time

import gevent
import pytest

import gmta.limits as limits_mod
from tests.unit.logcapture import captured_log
from gmta.config import module as registry
from gmta.config.loader import load_text
from gmta.config.module import Module
from gmta.config.reader import Directive, ModuleRef
from gmta.errors import ConfigErrors, SMTPError
from gmta.limits import (DEFAULT_MAX_KEYS, REAP_INTERVAL, UNLIMITED, LimitSet, Limits, Rule,
                         TokenBucket, domain_of)

ZERO = {"in_use": 0, "waiting": 0}


class LimitsUser(Module):
    """A throw-away endpoint with the directive the real endpoints declare."""

    name = "ut.limits_user"
    endpoint = True
    max_inline_args = 10
    directives = (Directive("limits", ModuleRef("limits", block_module="limits")),)

    def configure(self, cfg, ctx):
        self.limits = cfg.limits


@pytest.fixture
def user():
    registry.register(Limits)
    registry.register(LimitsUser)
    yield LimitsUser
    registry.unregister(LimitsUser)


class FakeTime:
    """A clock for the rate arithmetic whose sleep moves it forward."""

    def __init__(self):
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        gevent.sleep(0)


@pytest.fixture
def clock():
    return FakeTime()


@pytest.fixture
def events():
    """The key=value lines the limits module logs."""
    with captured_log(logging.NOTSET, "gmta.limits") as lines:
        yield lines


def load_limits(body: str) -> Limits:
    config = load_text(f"ut.limits_user {{\n  limits {{\n{body}  }}\n}}\n", "t.conf")
    return config.endpoints[0].limits


def error(body: str) -> str:
    with pytest.raises(ConfigErrors) as e:
        load_limits(body)
    return str(e.value.errors[0])


def make(*lines: str, clock=None, **kw) -> LimitSet:
    """A LimitSet from config lines, with a fake clock when given."""
    from gmta.config.parser import Parser
    from gmta.limits import parse_rules

    nodes = Parser().parse_text("".join(line + "\n" for line in lines), "t.conf")
    if clock is not None:
        kw.update(clock=clock, sleep=clock.sleep)
    return LimitSet(parse_rules(nodes), **kw)


def busy(limits: LimitSet) -> dict:
    """The in-use and waiting counters of every scope (zero when nothing leaked)."""
    return {scope: {k: s[k] for k in ("in_use", "waiting")} for scope, s in limits.state().items()}


def idle(limits: LimitSet) -> bool:
    return all(v == ZERO for v in busy(limits).values())


def is_high_load(e: SMTPError) -> bool:
    return (e.code, e.enhanced, e.text) == (451, (4, 4, 5), "High load, try again later")


# -- configuration ---------------------------------------------------------------


def test_registered_as_maddy_names_it():
    import gmta.modules  # noqa: F401

    assert registry.lookup("limits") is Limits
    assert Limits.kinds == frozenset({"limits"})
    assert Limits.allow_unknown and Limits.directives == ()


def test_inline_block_reads_every_scope_and_kind(user):
    lim = load_limits("    all rate 20\n    all concurrency 10\n    ip rate 5 1m\n"
                      "    source rate 3 1h 30m\n    destination concurrency 2\n"
                      "    ip concurrency 0\n")
    assert isinstance(lim, Limits) and lim.is_inline
    assert lim.rules == (
        Rule("all", "rate", 20, 1.0, "t.conf:3"), Rule("all", "concurrency", 10, 0.0, "t.conf:4"),
        Rule("ip", "rate", 5, 60.0, "t.conf:5"), Rule("source", "rate", 3, 5400.0, "t.conf:6"),
        Rule("destination", "concurrency", 2, 0.0, "t.conf:7"),
        Rule("ip", "concurrency", 0, 0.0, "t.conf:8"))
    assert [str(r) for r in lim.rules[:3]] == ["all rate 20 1s", "all concurrency 10",
                                              "ip rate 5 60s"]
    assert [s for s in ("all", "ip", "source", "destination") if lim.has_scope(s)] == [
        "all", "ip", "source", "destination"]
    assert lim.wait_timeout == 5.0 and lim.max_keys == DEFAULT_MAX_KEYS


def test_sub_second_period_and_case_of_kind(user):
    lim = load_limits("    all RATE 2 500ms\n")
    assert lim.rules[0].period == 0.5


def test_empty_block_limits_nothing(user):
    lim = load_limits("")
    assert lim.rules == () and not any(lim.has_scope(s) for s in limits_mod.SCOPES)
    lease = lim.take(ip="192.0.2.1", source="example.org")
    assert lease.slots == 0
    lease.release()


@pytest.mark.parametrize("line, message", [
    ("sources rate 5", "t.conf:3: unknown limit scope: sources (did you mean source? the scopes "
                      "are all, ip, source and destination)"),
    ("everyone rate 5", "t.conf:3: unknown limit scope: everyone (the scopes are all, ip, "
                        "source and destination)"),
    ("all", "t.conf:3: all: expected a limit kind (write 'all rate BURST [PERIOD]' or "
            "'all concurrency MAX')"),
    ("all speed 5", "t.conf:3: unknown limit kind: speed (expected rate or concurrency)"),
    ("ip rate", "t.conf:3: ip rate: expected a burst size (such as 'ip rate 20 1s')"),
    ("ip rate ten", "t.conf:3: ip rate: invalid burst 'ten': expected a whole number "
                    "(0 means unlimited)"),
    ("ip rate 1.5", "t.conf:3: ip rate: invalid burst '1.5': expected a whole number"),
    ("ip rate 1_000", "t.conf:3: ip rate: invalid burst '1_000': expected a whole number"),
    ("ip rate -1", "t.conf:3: ip rate: burst must not be negative: -1 (0 means unlimited)"),
    ("ip rate 2000000000", "t.conf:3: ip rate: burst 2000000000 is too large: "
                           "the maximum is 1000000000"),
    ("ip rate 5 soon", "t.conf:3: ip rate: invalid duration 'soon'"),
    ("ip rate 5 -1s", "t.conf:3: ip rate: duration '-1s' is negative"),
    ("ip rate 5 0", "t.conf:3: ip rate: the period must be longer than zero"),
    ("ip rate 5 0s", "t.conf:3: ip rate: the period must be longer than zero"),
    ("all concurrency", "t.conf:3: all concurrency: expected one number, the maximum "
                        "(such as 'all concurrency 10')"),
    ("all concurrency 1 2", "t.conf:3: all concurrency: expected one number, the maximum"),
    ("all concurrency x", "t.conf:3: all concurrency: invalid maximum 'x': expected a whole number"),
    ("all concurrency -3", "t.conf:3: all concurrency: maximum must not be negative: -3"),
    ("all rate 5 {\n    }", "t.conf:3: all: a limit line takes no block"),
])
def test_config_errors(line, message, user):
    assert error(f"    {line}\n").startswith(message)


def test_duplicate_scope_and_kind_is_an_error(user):
    assert error("    ip rate 5\n    ip concurrency 2\n    ip rate 10 1m\n") == (
        "t.conf:5: duplicate limit: ip rate (first given at t.conf:3)")


def test_limits_takes_no_inline_arguments(user):
    with pytest.raises(ConfigErrors) as e:
        load_text("ut.limits_user {\n  limits limits x {\n  }\n}\n", "t.conf")
    assert "module limits takes no inline arguments" in str(e.value)


def test_top_level_block_is_shared_by_reference(user):
    config = load_text("limits inbound {\n  all concurrency 1\n}\n"
                       "ut.limits_user tcp://127.0.0.1:1 {\n  limits &inbound\n}\n"
                       "ut.limits_user tcp://127.0.0.1:2 {\n  limits &inbound\n}\n", "t.conf")
    one, two = (ep.limits for ep in config.endpoints)
    assert one is two and one.instance_name == "inbound" and not one.is_inline
    one.wait_timeout = 0.01
    lease = one.take(ip="192.0.2.1")
    with pytest.raises(SMTPError) as e:
        two.take(ip="192.0.2.2")            # the other endpoint: same counter
    assert is_high_load(e.value)
    lease.release()
    two.take(ip="192.0.2.2").release()
    assert idle(one)


def test_inline_blocks_do_not_share(user):
    config = load_text("ut.limits_user tcp://127.0.0.1:1 {\n  limits {\n    all concurrency 1\n"
                       "  }\n}\nut.limits_user tcp://127.0.0.1:2 {\n  limits {\n"
                       "    all concurrency 1\n  }\n}\n", "t.conf")
    one, two = (ep.limits for ep in config.endpoints)
    with one.take(), two.take():
        assert one.state()["all"]["in_use"] == two.state()["all"]["in_use"] == 1


def test_unused_top_level_block_is_an_error(user):
    with pytest.raises(ConfigErrors) as e:
        load_text("limits spare {\n  all rate 1\n}\nut.limits_user {\n}\n", "t.conf")
    assert str(e.value) == ("t.conf:1: unused configuration block spare (limits) "
                            "(refer to it with &spare or remove it)")


def test_errors_in_a_shared_block_are_located_there(user):
    with pytest.raises(ConfigErrors) as e:
        load_text("limits shared {\n  all rate 1\n  ip flood 3\n}\n"
                  "ut.limits_user {\n  limits &shared\n}\n", "t.conf")
    assert str(e.value).startswith("t.conf:3: unknown limit kind: flood")


# -- token bucket arithmetic -----------------------------------------------------


def test_bucket_refills_smoothly_not_in_bursts():
    bucket = TokenBucket(10, 1.0, now=0.0)
    assert [bucket.reserve(0.0, 0.0) for _ in range(10)] == [0.0] * 10
    assert bucket.reserve(0.0, 0.0) is None          # empty, and not allowed to wait
    assert bucket.level(0.0) == 0.0
    # A tenth of the period brings one token, not zero (maddy) and not ten.
    assert bucket.level(0.1) == pytest.approx(1.0)
    assert bucket.level(0.35) == pytest.approx(3.5)
    assert bucket.level(5.0) == 10.0                 # never above the burst
    assert bucket.is_full(5.0)


def test_bucket_reservations_queue_up_in_order():
    bucket = TokenBucket(2, 1.0, now=0.0)
    waits = [bucket.reserve(0.0, 10.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5])
    assert bucket.level(0.0) == pytest.approx(-3.0)
    assert bucket.reserve(0.0, 1.9) is None          # 2.0 s away: refused, nothing taken
    assert bucket.level(0.0) == pytest.approx(-3.0)
    assert bucket.full_at(0.0) == pytest.approx(2.5)
    bucket.refund(0.0)
    assert bucket.level(0.0) == pytest.approx(-2.0)


def test_bucket_refund_never_overfills():
    bucket = TokenBucket(3, 60.0, now=0.0)
    bucket.reserve(0.0, 0.0)
    bucket.refund(120.0)
    assert bucket.level(120.0) == 3.0


def test_bucket_rejects_useless_parameters():
    with pytest.raises(ValueError):
        TokenBucket(0, 1.0, 0.0)
    with pytest.raises(ValueError):
        TokenBucket(1, 0.0, 0.0)


# -- rate limits through LimitSet (fake clock) -----------------------------------


def test_rate_waits_for_a_smoothly_refilled_token(clock):
    lim = make("all rate 2 1s", clock=clock)
    start = clock.now
    for _ in range(6):
        lim.take().release()
    # Two at once, then one every half second: throttled, not rejected.
    assert clock.slept == pytest.approx([0.5, 0.5, 0.5, 0.5])
    assert clock.now - start == pytest.approx(2.0)
    assert idle(lim)


def test_rate_token_that_cannot_come_in_time_fails_at_once(clock, events):
    lim = make("ip rate 1 10s", clock=clock, wait_timeout=5.0)
    lim.take(ip="192.0.2.1").release()
    with pytest.raises(SMTPError) as e:
        lim.take(ip="192.0.2.1")
    assert is_high_load(e.value)
    assert e.value.misc == {"limit_scope": "ip", "limit_key": "192.0.2.1"}
    assert clock.slept == []                          # no pointless 5 s wait
    assert any("event=limit_wait_timeout" in line and "scope=ip" in line and
               "key=192.0.2.1" in line and "limit=rate" in line for line in events)
    assert lim.state()["ip"]["timeouts"] == 1
    clock.now += 10
    lim.take(ip="192.0.2.1").release()                # the token came back


def test_rate_per_ip_keys_are_independent(clock):
    lim = make("ip rate 1 1s", clock=clock)
    for ip in ("192.0.2.1", "192.0.2.2", "2001:db8::1"):
        lim.take(ip=ip).release()
    assert clock.slept == []
    lim.take(ip="192.0.2.1").release()
    assert clock.slept == pytest.approx([1.0])


def test_waiting_for_a_token_is_visible_and_counted_back(clock):
    lim = make("all rate 1 1s", clock=clock)
    seen = []
    lim.sleep = lambda s: seen.append(busy(lim)["all"]["waiting"])
    lim.take().release()
    lim.take().release()
    assert seen == [1] and idle(lim)


def test_killed_while_waiting_for_a_token_gives_it_back(clock):
    lim = make("all rate 1 1s", clock=clock)
    lim.take().release()
    lim.sleep = lambda s: gevent.sleep(1)        # a real wait, to be killed in
    g = gevent.spawn(lim.take)
    gevent.sleep(0.01)
    assert busy(lim)["all"]["waiting"] == 1
    g.kill()
    assert idle(lim)
    bucket = lim._scopes["all"].entries[""].bucket
    assert bucket.level(clock.now) == pytest.approx(0.0)   # the reservation was undone


# -- concurrency ----------------------------------------------------------------


def test_concurrency_waiter_gets_the_released_slot():
    lim = make("all concurrency 1", wait_timeout=2.0)
    first = lim.take()
    waiter = gevent.spawn(lim.take)
    gevent.sleep(0.01)
    assert lim.state()["all"] | {} == {"in_use": 1, "waiting": 1, "keys": 1, "timeouts": 0,
                                       "overflows": 0}
    first.release()
    second = waiter.get(timeout=1)
    assert lim.state()["all"]["in_use"] == 1 and busy(lim)["all"]["waiting"] == 0
    second.release()
    assert idle(lim)


def test_concurrency_timeout_is_451_and_holds_nothing(events):
    lim = make("all concurrency 1", "ip concurrency 5", wait_timeout=0.05)
    held = lim.take(ip="192.0.2.1")
    started = time.monotonic()
    with pytest.raises(SMTPError) as e:
        lim.take(ip="192.0.2.2")
    assert 0.04 <= time.monotonic() - started < 1.0
    assert is_high_load(e.value) and str(e.value) == "451 4.4.5 High load, try again later"
    assert e.value.temporary
    assert busy(lim) == {"all": {"in_use": 1, "waiting": 0}, "ip": {"in_use": 1, "waiting": 0},
                         "source": ZERO, "destination": ZERO}
    assert lim.state()["ip"]["keys"] == 1            # 192.0.2.2 was not kept
    line = next(line for line in events if "event=limit_wait_timeout" in line)
    assert "scope=all" in line and "limit=concurrency" in line and "key=" not in line
    held.release()
    assert idle(lim) and lim.state()["ip"]["keys"] == 0


def test_zero_wait_timeout_fails_without_waiting():
    lim = make("all concurrency 1", wait_timeout=0)
    with lim.take():
        with pytest.raises(SMTPError):
            lim.take()
    assert idle(lim)


def test_timeout_argument_overrides_the_wait():
    lim = make("all concurrency 1", wait_timeout=60)
    with lim.take():
        with pytest.raises(SMTPError):
            lim.take(timeout=0.01)


def test_killed_while_waiting_for_a_slot_holds_nothing():
    lim = make("ip concurrency 1", wait_timeout=5)
    held = lim.take(ip="192.0.2.1")
    g = gevent.spawn(lim.take, ip="192.0.2.1")
    gevent.sleep(0.01)
    assert busy(lim)["ip"] == {"in_use": 1, "waiting": 1}
    g.kill()
    assert busy(lim)["ip"] == {"in_use": 1, "waiting": 0}
    held.release()
    assert idle(lim) and lim.state()["ip"]["keys"] == 0
    lim.take(ip="192.0.2.1", timeout=0).release()     # the slot really is free


def test_many_waiters_all_served_in_turn():
    lim = make("source concurrency 2", wait_timeout=2.0)
    peak = []

    def work():
        with lim.take(source="example.org"):
            peak.append(lim.state()["source"]["in_use"])
            gevent.sleep(0.005)

    gevent.joinall([gevent.spawn(work) for _ in range(10)], timeout=2, raise_error=True)
    assert len(peak) == 10 and max(peak) == 2
    assert idle(lim) and lim.state()["source"]["keys"] == 0


# -- all or nothing, idempotent release ----------------------------------------


def test_failed_acquisition_gives_back_earlier_slots_and_tokens(clock):
    lim = make("all rate 10", "all concurrency 5", "ip concurrency 5", "source concurrency 1",
               clock=clock, wait_timeout=0)
    held = lim.take(ip="192.0.2.1", source="example.org")
    bucket = lim._scopes["all"].entries[""].bucket
    level = bucket.level(clock.now)
    with pytest.raises(SMTPError) as e:                # 3rd limit (source) is full
        lim.take(ip="192.0.2.2", source="example.org")
    assert e.value.misc["limit_scope"] == "source"
    assert busy(lim) == {"all": {"in_use": 1, "waiting": 0}, "ip": {"in_use": 1, "waiting": 0},
                         "source": {"in_use": 1, "waiting": 0}, "destination": ZERO}
    assert bucket.level(clock.now) == level            # the rate token was refunded
    assert lim.state()["ip"]["keys"] == 1              # 192.0.2.2's entry is gone
    held.release()
    assert idle(lim)


def test_release_is_idempotent_and_a_context_manager():
    lim = make("all concurrency 2", "destination concurrency 1")
    lease = lim.take()
    assert lease.slots == 1 and not lease.released
    lease.release()
    lease.release()
    assert lease.released and lease.slots == 0 and idle(lim)
    with pytest.raises(RuntimeError):
        with lim.take_destination("example.net") as dest:
            assert busy(lim)["destination"]["in_use"] == 1
            raise RuntimeError("delivery failed")
    assert dest.released and idle(lim)
    assert "released" in repr(dest)


def test_a_lost_lease_is_released_when_collected(events):
    lim = make("ip concurrency 1")
    lease = lim.take(ip="192.0.2.9")
    del lease
    gc.collect()
    assert idle(lim) and lim.state()["ip"]["keys"] == 0
    assert any("event=limit_lease_leaked" in line for line in events)


def test_destinations_are_taken_once_per_domain():
    lim = make("destination concurrency 1", "all concurrency 1")
    lease = lim.acquire({"destination": "Example.NET."},
                        destinations=["example.net", "example.com", "EXAMPLE.COM"])
    assert lease.slots == 2                            # 'all' was not asked for
    assert lim.state()["destination"]["keys"] == 2
    with pytest.raises(SMTPError):
        lim.take_destination("example.com", timeout=0)
    lim.take(timeout=0).release()
    lease.release()
    assert idle(lim) and lim.state()["destination"]["keys"] == 0


def test_take_skips_scopes_without_a_key():
    lim = make("ip concurrency 1", "source concurrency 1")
    with lim.take(ip=None, source=None) as lease:
        assert lease.slots == 0
    with lim.take(source="") as lease:                 # the null sender's key
        assert lease.slots == 1


def test_unknown_scope_in_acquire_is_a_programming_error():
    with pytest.raises(ValueError):
        make("all concurrency 1").acquire({"sender": "x"})


def test_limitset_rejects_bad_parameters():
    with pytest.raises(ValueError):
        LimitSet(wait_timeout=-1)
    with pytest.raises(ValueError):
        LimitSet(max_keys=0)


# -- keys: normalisation, bound, expiry ----------------------------------------


def test_keys_are_normalised():
    lim = make("ip concurrency 1", "source concurrency 1")
    with lim.take(ip="192.0.2.1", source="Example.ORG."):
        with pytest.raises(SMTPError):
            lim.take(ip="::ffff:192.0.2.1", timeout=0)
        with pytest.raises(SMTPError):
            lim.take(source="example.org", timeout=0)
        with pytest.raises(SMTPError):
            lim.take(ip="[192.0.2.1]", timeout=0)
        lim.take(ip="2001:DB8::1", source="example.net", timeout=0).release()
        lim.take(ip="not-an-ip", timeout=0).release()   # kept as given
    assert domain_of("Alice@Example.ORG") == "example.org"
    assert domain_of("") == domain_of("postmaster") == ""
    assert domain_of('"a@b"@example.net') == "example.net"


def test_full_map_fails_fast_then_recovers(events):
    lim = make("ip concurrency 1", max_keys=3, wait_timeout=5)
    held = [lim.take(ip=f"192.0.2.{i}") for i in range(3)]
    started = time.monotonic()
    with pytest.raises(SMTPError) as e:
        lim.take(ip="192.0.2.200")
    assert time.monotonic() - started < 0.5            # no waiting, no panic
    assert is_high_load(e.value)
    state = lim.state()["ip"]
    assert state["keys"] == 3 and state["overflows"] == 1 and state["in_use"] == 3
    assert any("event=limit_keys_full" in line and "key=192.0.2.200" in line for line in events)
    held[0].release()
    lim.take(ip="192.0.2.200").release()
    for lease in held:
        lease.release()
    assert idle(lim) and lim.state()["ip"]["keys"] == 0


def test_full_map_of_rate_buckets_drops_the_refilled_ones(clock):
    lim = make("ip rate 1 1s", clock=clock, max_keys=2)
    lim.take(ip="192.0.2.1").release()
    clock.now += 0.5
    lim.take(ip="192.0.2.2").release()
    with pytest.raises(SMTPError):                      # both buckets still refilling
        lim.take(ip="192.0.2.3")
    clock.now += 0.5                                    # 192.0.2.1 is full again
    lim.take(ip="192.0.2.3").release()
    assert set(lim._scopes["ip"].entries) == {"192.0.2.2", "192.0.2.3"}
    assert clock.slept == []


def test_idle_keys_expire(clock):
    lim = make("source rate 5 1s", "ip concurrency 3", clock=clock)
    for i in range(50):
        lim.take(ip=f"192.0.2.{i}", source=f"d{i}.example").release()
    state = lim.state()
    assert state["ip"]["keys"] == 0                    # semaphores: dropped on release
    assert state["source"]["keys"] == 50               # buckets: kept until refilled
    clock.now += REAP_INTERVAL
    lim.take(source="new.example").release()           # a new key triggers the reap
    assert lim.state()["source"]["keys"] == 1
    clock.now += 1
    lim.reap()
    assert lim.state()["source"]["keys"] == 0


def test_all_scope_keeps_its_single_entry(clock):
    lim = make("all rate 1 1s", clock=clock)
    lim.take().release()
    clock.now += REAP_INTERVAL * 2
    lim.reap()
    assert lim.state()["all"]["keys"] == 1


# -- unlimited -----------------------------------------------------------------


def test_zero_means_unlimited(clock):
    lim = make("all rate 0", "ip concurrency 0", "source rate 0 1m", clock=clock)
    assert not any(lim.has_scope(s) for s in limits_mod.SCOPES)
    leases = [lim.take(ip="192.0.2.1", source="example.org") for _ in range(100)]
    assert clock.slept == [] and all(lease.slots == 0 for lease in leases)
    assert all(s["keys"] == 0 for s in lim.state().values())


def test_unlimited_singleton_for_modules_without_limits():
    with UNLIMITED.take(ip="192.0.2.1", source="example.org") as lease:
        assert lease.slots == 0
    UNLIMITED.take_destination("example.net").release()
    assert idle(UNLIMITED)


def test_state_snapshot_shape():
    lim = make("ip concurrency 1")
    assert lim.state() == {scope: {"in_use": 0, "waiting": 0, "keys": 0, "timeouts": 0,
                                   "overflows": 0}
                           for scope in ("all", "ip", "source", "destination")}
    snap = lim.state()
    snap["ip"]["in_use"] = 99                          # a copy: the counters are untouched
    assert lim.state()["ip"]["in_use"] == 0
