"""target.remote against a real knotd and real MX hosts on 127.0.0.2…9 (maddy-behaviour §3.5).

The target is configured from a file and driven in this process, as the queue
drives it, so each recipient's result and the limits' counters can be checked.
Every MX host listens on one port (``smtp_port``); who listens where:

====== ================================================================
.2 .4  nobody (connection refused)
.3 .5  smtp-sink, or a scripted fault (options per test)
.6     smtp-sink for the implicit MX domain
.7     a tarpit: accepts TCP, never greets (timeouts)
.8     smtp-sink answering 554 at the greeting
::1    smtp-sink for the AAAA-only MX (IPv6 loopback)
====== ================================================================
"""

# ruff: noqa: F811  (fixtures imported from peers, then named as parameters)

from __future__ import annotations

import socket
import time

import gevent
import pytest

import gmta.modules  # noqa: F401  (fills the module registry for load_block)
from gmta.buffer import MemoryBuffer
from gmta.config.loader import load_block
from gmta.delivery import MessageMeta, PartialDeliveryError
from gmta.errors import SMTPError
from gmta.target.conncache import TRIM_DELAY
from tests.integration.conftest import base_config
from tests.integration.dnsserver import AuthoritativeDNS, free_port
from tests.integration.peers import smtp_sink  # noqa: F401

pytestmark = pytest.mark.integration

HEADER = b"From: a@example.org\r\nTo: b@example.test\r\nSubject: remote\r\n\r\n"
BODY = b"Hello over the Internet.\r\n"

ZONE = [
    "pref MX 10 down.hosts", "pref MX 20 up.hosts",
    "addrs MX 10 twoaddr.hosts",
    "implicit A 127.0.0.6",
    "null MX 0 .",
    "nomx TXT \"no MX and no address\"",
    "alldown MX 10 down.hosts", "alldown MX 20 down2.hosts",
    "refusing MX 10 refuser.hosts", "refusing MX 20 up.hosts",
    "slow MX 10 tarpit.hosts", "slow MX 20 up.hosts",
    "slowonly MX 10 tarpit.hosts",
    "one MX 10 up.hosts",
    "two MX 10 other.hosts",
    "shared1 MX 10 up.hosts", "shared2 MX 10 up.hosts",
    "danglingmx MX 10 gone.hosts",
    "v6only MX 10 v6.hosts",
    "spread MX 10 up.hosts", "spread MX 10 other.hosts",
    "down.hosts A 127.0.0.2", "up.hosts A 127.0.0.3", "down2.hosts A 127.0.0.4",
    "other.hosts A 127.0.0.5", "twoaddr.hosts A 127.0.0.4", "twoaddr.hosts A 127.0.0.5",
    "tarpit.hosts A 127.0.0.7", "refuser.hosts A 127.0.0.8",
    "v6.hosts AAAA ::1",
]


@pytest.fixture(scope="module")
def remote_dns(tmp_path_factory):
    server = AuthoritativeDNS(tmp_path_factory.mktemp("remote-dns"))
    server.zone("remote.test", ZONE)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def port() -> int:
    """One port for every MX host of a test, free on each address it uses."""
    for _ in range(20):
        candidate = free_port("127.0.0.3")
        if all(_free(f"127.0.0.{n}", candidate) for n in range(2, 10)) \
                and _free("::1", candidate):
            return candidate
    raise RuntimeError("no port free on 127.0.0.2-9 and ::1")


def _free(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


@pytest.fixture
def tarpit(port):
    """127.0.0.7: the kernel completes the TCP handshake, nobody ever greets."""
    sock = socket.socket()
    sock.bind(("127.0.0.7", port))
    sock.listen(16)
    yield sock
    sock.close()


@pytest.fixture
def remote(tmp_path, remote_dns, port):
    """``remote(extra_directives)`` → a configured target.remote (stopped at the end)."""
    made = []

    def make(extra: str = "") -> object:
        config = tmp_path / f"remote-{len(made)}.conf"
        config.write_text(f"""
hostname client.gmta.test
state_dir {tmp_path}/state
dns_servers {remote_dns.directive}
target.remote out {{
    smtp_port {port}
    connect_timeout 2s
    command_timeout 2s
    submission_timeout 5s
    {extra}
}}
""")
        target = load_block(str(config), "out")
        target.start()
        target.connections = []
        target.on_connect = target.connections.append
        made.append(target)
        return target

    yield make
    for target in made:
        target.stop()


def deliver(target, rcpts, *, meta=None, sender="a@example.org"):
    """Drive one message like the queue: per-recipient results (None = delivered)."""
    meta = meta or MessageMeta("msg-1")
    results = {}
    delivery = target.start_delivery(meta, sender)
    accepted = []
    try:
        for rcpt in rcpts:
            try:
                delivery.add_rcpt(rcpt)
                accepted.append(rcpt)
            except SMTPError as error:
                results[rcpt] = error
        if accepted:
            try:
                delivery.body(HEADER, MemoryBuffer(BODY))
                results.update({rcpt: None for rcpt in accepted})
            except PartialDeliveryError as partial:
                results.update(partial.results)
            except SMTPError as error:
                results.update({rcpt: error for rcpt in accepted})
    finally:
        if any(v is None for v in results.values()):
            delivery.commit()
        else:
            delivery.abort()
    return results


def rcpts_of(sink) -> list[list[str]]:
    return [m.get_all("X-Rcpt-Args") for m in sink.messages()]


def queue_to_remote(state_dir, dns, port: int, remote_extra: str = "command_timeout 5s",
                    smtp_extra: str = "") -> str:
    """A ``gmta run`` configuration: the smtp endpoint into a queue (first retry after
    1 s, bounces into the Maildir) whose target.remote resolves through *dns* and
    connects to *port*."""
    return base_config(state_dir, f"tls off\ndns_servers {dns.directive}\n"
                                  "autogenerated_msg_domain gmta.test") + f"""
target.maildir bounces {{ path maildir/{{domain}}/{{local}} }}
target.remote out {{
    smtp_port {port}
    connect_timeout 5s
    {remote_extra}
}}
target.queue q {{
    target &out
    initial_retry_time 1s
    retry_time_scale 1
    post_init_delay 0
    bounce {{ deliver_to &bounces }}
}}
smtp tcp://127.0.0.1:0 {{
    {smtp_extra}
    deliver_to &q
}}
"""


# --- R1, R8: MX order, fallback to the next MX and the next address. -------------------

def test_r1_delivered_to_the_mx_with_the_null_sender(remote, smtp_sink, port):
    sink = smtp_sink(host="127.0.0.3", port=port)
    target = remote()
    assert deliver(target, ["b@one.remote.test"], sender="") == {"b@one.remote.test": None}
    [message] = sink.wait_for_messages(1)
    assert message["X-Mail-Args"] == "<>"
    assert message["Subject"] == "remote"
    assert message.get_all("X-Rcpt-Args") == ["<b@one.remote.test>"]


def test_r8_dead_first_mx_falls_back_to_the_next(remote, smtp_sink, port):
    sink = smtp_sink(host="127.0.0.3", port=port)
    target = remote()
    assert deliver(target, ["b@pref.remote.test"]) == {"b@pref.remote.test": None}
    assert len(sink.wait_for_messages(1)) == 1
    [connection] = target.connections
    assert connection.mx == "up.hosts.remote.test"


def test_every_address_of_an_mx_is_tried(remote, smtp_sink, port):
    sink = smtp_sink(host="127.0.0.5", port=port)
    target = remote()
    assert deliver(target, ["b@addrs.remote.test"]) == {"b@addrs.remote.test": None}
    assert len(sink.wait_for_messages(1)) == 1
    assert target.connections[0].facts.address == "127.0.0.5"


def test_r8_all_mx_down_is_temporary_and_says_why(remote):
    target = remote("limits { destination concurrency 1 }")
    [error] = deliver(target, ["b@alldown.remote.test"]).values()
    assert (error.code, error.enhanced) == (451, (4, 4, 1))
    assert "No usable MX for alldown.remote.test" in error.text
    assert "down.hosts.remote.test [127.0.0.2]" in error.text
    assert "down2.hosts.remote.test [127.0.0.4]" in error.text
    assert "Connection refused" in error.text
    assert error.misc["failure"] == "refused"
    assert target.limits.state()["destination"]["in_use"] == 0


def test_aaaa_only_mx_is_reached_over_ipv6(remote, smtp_sink, port):
    sink = smtp_sink(host="::1", port=port)
    target = remote()
    assert deliver(target, ["b@v6only.remote.test"]) == {"b@v6only.remote.test": None}
    assert rcpts_of(sink) == [["<b@v6only.remote.test>"]]
    assert target.connections[0].facts.address == "::1"


def test_force_ipv4_skips_an_aaaa_only_mx_and_says_so(remote, smtp_sink, port):
    sink = smtp_sink(host="::1", port=port)
    target = remote("force_ipv4 yes\n limits { destination concurrency 1 }")
    [error] = deliver(target, ["b@v6only.remote.test"]).values()
    assert (error.code, error.enhanced) == (550, (5, 4, 4)), error
    assert "v6.hosts.remote.test" in error.text and "force_ipv4" in error.text, error
    assert target.connections == [] and sink.messages() == []
    assert target.limits.state()["destination"]["in_use"] == 0


def test_equal_preference_mx_hosts_share_the_messages(remote, smtp_sink, port):
    # RFC 5321 §5.1: equal preferences are tried in random order, so new sessions
    # (one per message here) land on both hosts. All 16 on one: p = 2**-15.
    up = smtp_sink(host="127.0.0.3", port=port)
    other = smtp_sink(host="127.0.0.5", port=port)
    target = remote("conn_reuse_limit 1")
    for n in range(16):
        assert deliver(target, [f"u{n}@spread.remote.test"],
                       meta=MessageMeta(f"m{n}")) == {f"u{n}@spread.remote.test": None}
    assert len(target.connections) == 16
    used = {c.facts.address for c in target.connections}
    assert used == {"127.0.0.3", "127.0.0.5"}
    assert len(up.messages()) + len(other.messages()) == 16


def test_r2_implicit_mx(remote, smtp_sink, port):
    sink = smtp_sink(host="127.0.0.6", port=port)
    target = remote()
    assert deliver(target, ["b@implicit.remote.test"]) == {"b@implicit.remote.test": None}
    assert len(sink.wait_for_messages(1)) == 1


def test_address_literal(remote, smtp_sink, port):
    sink = smtp_sink(host="127.0.0.5", port=port)
    target = remote()
    assert deliver(target, ["b@[127.0.0.5]"]) == {"b@[127.0.0.5]": None}
    assert rcpts_of(sink) == [["<b@[127.0.0.5]>"]]


# --- R3, R4, NXDOMAIN: nothing connects. -----------------------------------------------

@pytest.mark.parametrize("domain, code, enhanced, words", [
    ("null.remote.test", 556, (5, 1, 10), "does not accept email (null MX)"),
    ("nomx.remote.test", 550, (5, 1, 2), "no MX and no address"),
    ("missing.remote.test", 550, (5, 1, 2), "NXDOMAIN"),
    ("danglingmx.remote.test", 550, (5, 4, 4), "gone.hosts.remote.test"),
])
def test_domains_that_cannot_receive(remote, domain, code, enhanced, words):
    target = remote("limits { destination concurrency 1 }")
    results = deliver(target, [f"b@{domain}", f"c@{domain}"])
    error = results[f"b@{domain}"]
    assert results[f"c@{domain}"] == error
    assert (error.code, error.enhanced) == (code, enhanced), error
    assert words in error.text
    assert target.connections == []
    assert target.limits.state()["destination"]["in_use"] == 0


def test_dns_failure_is_temporary(tmp_path, remote_dns, port):
    # A resolver that does not answer: the DNS timeout is 451 4.4.3, not a refusal.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.53", 0))
    try:
        config = tmp_path / "silent.conf"
        config.write_text(f"hostname client.gmta.test\nstate_dir {tmp_path}\n"
                          f"dns_servers 127.0.0.53:{silent.getsockname()[1]}\n"
                          f"target.remote out {{\n smtp_port {port}\n}}\n")
        target = load_block(str(config), "out")
        target.settings.resolver.lifetime = 1.0
        [error] = deliver(target, ["b@one.remote.test"]).values()
    finally:
        silent.close()
    assert (error.code, error.enhanced) == (451, (4, 4, 3))
    assert "DNS timeout" in error.text


# --- Refusals: R5, R6, R7, permanent refusal ends the walk, greeting 421. ---------------

def test_r5_quarantined_message_is_refused(remote, smtp_sink, port):
    sink = smtp_sink(host="127.0.0.3", port=port)
    target = remote()
    meta = MessageMeta("q", quarantine=True)
    [error] = deliver(target, ["b@one.remote.test"], meta=meta).values()
    assert str(error) == "550 5.7.0 Refusing to deliver a quarantined message"
    assert target.connections == [] and sink.messages() == []


def test_bare_postmaster_cannot_go_remote(remote):
    [error] = deliver(remote(), ["postmaster"]).values()
    assert (error.code, error.enhanced) == (550, (5, 1, 1))


def test_r6_mail_refusal_is_each_recipients_answer(remote, smtp_sink, port):
    smtp_sink("-f", "MAIL", "-B", "550 5.1.2 Hey", host="127.0.0.3", port=port)
    target = remote("limits { destination concurrency 1 }")
    results = deliver(target, ["b@one.remote.test", "c@one.remote.test"])
    assert {str(e) for e in results.values()} == {"550 5.1.2 up.hosts.remote.test said: Hey"}
    assert len(target.connections) == 1   # the second recipient did not walk again
    assert target.limits.state()["destination"]["in_use"] == 0


def test_r7_rcpt_refusal_is_that_recipients_only(remote, smtp_sink, port):
    # smtp-sink -r refuses every RCPT, so two domains: one refusing, one accepting.
    refusing = smtp_sink("-r", "RCPT", "-b", "450 4.2.1 Mailbox busy", host="127.0.0.5",
                         port=port)
    accepting = smtp_sink(host="127.0.0.3", port=port)
    target = remote("limits { destination concurrency 2 }")
    results = deliver(target, ["b@two.remote.test", "c@one.remote.test"])
    assert results["c@one.remote.test"] is None
    error = results["b@two.remote.test"]
    assert str(error) == "450 4.2.1 other.hosts.remote.test said: Mailbox busy"
    assert rcpts_of(accepting) == [["<c@one.remote.test>"]]
    assert refusing.messages() == []
    assert target.limits.state()["destination"]["in_use"] == 0


def test_552_at_rcpt_is_temporary_but_at_data_permanent(remote, smtp_sink, port):
    smtp_sink("-f", "RCPT", "-B", "552 5.5.3 Too many", host="127.0.0.5", port=port)
    smtp_sink("-f", ".", "-B", "552 5.3.4 Too big", host="127.0.0.3", port=port)
    target = remote()
    results = deliver(target, ["b@two.remote.test", "c@one.remote.test"])
    assert str(results["b@two.remote.test"]) == \
        "452 4.5.3 other.hosts.remote.test said: Too many"
    assert str(results["c@one.remote.test"]) == "552 5.3.4 up.hosts.remote.test said: Too big"


def test_permanent_greeting_refusal_ends_the_walk(remote, smtp_sink, port):
    smtp_sink("-f", "CONNECT", "-B", "554 5.7.1 Go away", host="127.0.0.8", port=port,
              banner=b"554")
    backup = smtp_sink(host="127.0.0.3", port=port)
    target = remote("limits { destination concurrency 1 }")
    [error] = deliver(target, ["b@refusing.remote.test"]).values()
    assert (error.code, error.enhanced) == (554, (5, 7, 1)), error
    assert "refuser.hosts.remote.test [127.0.0.8]" in error.text and "Go away" in error.text
    assert backup.messages() == []
    assert target.limits.state()["destination"]["in_use"] == 0


def test_greeting_421_is_temporary_and_the_next_mx_is_tried(remote, smtp_sink, port):
    smtp_sink("-r", "CONNECT", "-b", "421 4.3.2 Busy", host="127.0.0.8", port=port,
              banner=b"421")
    backup = smtp_sink(host="127.0.0.3", port=port)
    target = remote()
    assert deliver(target, ["b@refusing.remote.test"]) == {"b@refusing.remote.test": None}
    assert len(backup.wait_for_messages(1)) == 1


def test_tarpit_times_out_and_the_next_mx_is_tried(remote, smtp_sink, port, tarpit):
    backup = smtp_sink(host="127.0.0.3", port=port)
    target = remote("limits { destination concurrency 1 }")
    assert deliver(target, ["b@slow.remote.test"]) == {"b@slow.remote.test": None}
    assert len(backup.wait_for_messages(1)) == 1
    [error] = deliver(target, ["b@slowonly.remote.test"]).values()
    assert (error.code, error.enhanced) == (451, (4, 4, 1)), error
    assert "Timed out" in error.text and error.misc["failure"] == "timeout"
    assert target.limits.state()["destination"]["in_use"] == 0


# --- R9, R10: two domains, per-recipient results. ---------------------------------------

def test_r9_each_domain_gets_its_recipients(remote, smtp_sink, port):
    one = smtp_sink(host="127.0.0.3", port=port)
    two = smtp_sink(host="127.0.0.5", port=port)
    target = remote()
    results = deliver(target, ["a@one.remote.test", "b@two.remote.test", "c@one.remote.test"])
    assert set(results.values()) == {None}
    assert rcpts_of(one) == [["<a@one.remote.test>", "<c@one.remote.test>"]]
    assert rcpts_of(two) == [["<b@two.remote.test>"]]


def test_two_domains_on_one_mx(remote, smtp_sink, port):
    sink = smtp_sink(host="127.0.0.3", port=port)
    target = remote()
    results = deliver(target, ["a@shared1.remote.test", "b@shared2.remote.test"])
    assert set(results.values()) == {None}
    assert sorted(rcpts_of(sink)) == [["<a@shared1.remote.test>"], ["<b@shared2.remote.test>"]]


def test_r10_data_failure_in_one_domain_is_a_partial_result(remote, smtp_sink, port):
    smtp_sink("-r", ".", "-b", "421 4.1.2 Closing", host="127.0.0.5", port=port)
    one = smtp_sink(host="127.0.0.3", port=port)
    target = remote("limits { destination concurrency 2 }")
    delivery = target.start_delivery(MessageMeta("r10"), "a@example.org")
    delivery.add_rcpt("a@one.remote.test")
    delivery.add_rcpt("b@two.remote.test")
    with pytest.raises(PartialDeliveryError) as partial:
        delivery.body(HEADER, MemoryBuffer(BODY))
    delivery.commit()
    assert partial.value.delivered == ["a@one.remote.test"]
    failed = partial.value.failed["b@two.remote.test"]
    assert failed.code == 421 and failed.temporary
    assert partial.value.code == 421      # the summary is temporary
    assert len(one.messages()) == 1
    assert target.limits.state()["destination"]["in_use"] == 0
    # The session whose DATA failed is not kept; the other one is.
    assert target.cache.idle(target.cache_key("two.remote.test", delivery)) == 0
    assert target.cache.idle(target.cache_key("one.remote.test", delivery)) == 1


# --- R12: connection reuse, and idle sessions closed. ------------------------------------

def test_r12_connection_reuse_up_to_the_limit(remote, smtp_sink, port):
    sink = smtp_sink(host="127.0.0.3", port=port)
    target = remote("conn_reuse_limit 3")
    for n in range(5):
        assert deliver(target, [f"u{n}@one.remote.test"],
                       meta=MessageMeta(f"m{n}")) == {f"u{n}@one.remote.test": None}
    assert len(sink.wait_for_messages(5)) == 5
    # Three transactions on the first session, two on the second.
    assert [c.client.transactions for c in target.connections] == [3, 2]


def test_no_reuse_across_security_requirements(remote, smtp_sink, port):
    smtp_sink(host="127.0.0.3", port=port)
    target = remote()
    assert deliver(target, ["a@one.remote.test"]) == {"a@one.remote.test": None}
    # TLS-Required: No turns the policies off: a different requirement, a new session.
    assert deliver(target, ["b@one.remote.test"],
                   meta=MessageMeta("m2", tls_required_no=True)) == {"b@one.remote.test": None}
    assert len(target.connections) == 2
    assert deliver(target, ["c@one.remote.test"]) == {"c@one.remote.test": None}
    assert len(target.connections) == 2


def test_idle_sessions_are_closed_before_max_idle_time(remote, smtp_sink, port):
    import gevent
    smtp_sink(host="127.0.0.3", port=port)
    target = remote("conn_max_idle_time 1s")
    assert deliver(target, ["a@one.remote.test"]) == {"a@one.remote.test": None}
    [connection] = target.connections
    assert len(target.cache) == 1 and connection.client.usable
    gevent.sleep(1.0)   # the reaper closes it before it is a second old
    assert len(target.cache) == 0 and not connection.client.usable
    assert deliver(target, ["b@one.remote.test"]) == {"b@one.remote.test": None}
    assert len(target.connections) == 2


def test_a_dead_cached_session_is_replaced(remote, smtp_sink, port):
    sink = smtp_sink(host="127.0.0.3", port=port)
    target = remote()
    assert deliver(target, ["a@one.remote.test"]) == {"a@one.remote.test": None}
    sink.stop()
    restarted = smtp_sink(host="127.0.0.3", port=port)
    # The cached session's NOOP fails (its server is gone): a new one is made.
    assert deliver(target, ["b@one.remote.test"]) == {"b@one.remote.test": None}
    assert len(target.connections) == 2
    assert len(restarted.wait_for_messages(1)) == 1


def test_conn_max_idle_count_bounds_idle_sessions(remote, smtp_sink, port):
    smtp_sink(host="127.0.0.3", port=port)
    target = remote("conn_max_idle_count 1")
    deliveries = []
    for n in range(3):   # three messages open at once: three sessions
        delivery = target.start_delivery(MessageMeta(f"m{n}"), "a@example.org")
        delivery.add_rcpt(f"u{n}@one.remote.test")
        delivery.body(HEADER, MemoryBuffer(BODY))
        deliveries.append(delivery)
    for delivery in deliveries:
        delivery.commit()
    assert len(target.connections) == 3
    # The surplus may be taken again for a while (conncache.TRIM_DELAY), then goes.
    deadline = time.monotonic() + TRIM_DELAY + 5
    while len(target.cache) > 1 and time.monotonic() < deadline:
        gevent.sleep(0.05)
    assert len(target.cache) == 1
    assert sum(c.client.usable for c in target.connections) == 1


# --- REQUIRETLS without mx_auth and without TLS: refused, no MAIL. ---------------------------

def test_requiretls_is_refused_without_authenticated_tls(remote, smtp_sink, port):
    sink = smtp_sink(host="127.0.0.3", port=port)
    target = remote("limits { destination concurrency 1 }")
    meta = MessageMeta("rt", mail_params={"requiretls": True})
    [error] = deliver(target, ["b@one.remote.test"], meta=meta).values()
    assert (error.code, error.enhanced) == (550, (5, 7, 30)), error
    assert "REQUIRETLS" in error.text
    assert target.connections == [] and sink.messages() == []
    assert target.limits.state()["destination"]["in_use"] == 0


# --- Limits released on every path. -------------------------------------------------------

def test_message_limits_released_after_failures(remote, smtp_sink, port, tarpit):
    smtp_sink("-f", ".", "-B", "554 5.6.0 No", host="127.0.0.3", port=port)
    target = remote("limits {\n all concurrency 1\n destination concurrency 1\n }")
    for rcpt in ["b@alldown.remote.test", "b@slowonly.remote.test", "b@one.remote.test",
                 "b@null.remote.test"]:
        deliver(target, [rcpt])
        state = target.limits.state()
        assert state["all"]["in_use"] == 0 and state["destination"]["in_use"] == 0, rcpt


def test_destination_limit_waits_and_times_out(remote, smtp_sink, port):
    smtp_sink(host="127.0.0.3", port=port)
    target = remote("limits { destination concurrency 1 }")
    target.limits.wait_timeout = 0.2
    first = target.start_delivery(MessageMeta("a"), "a@example.org")
    first.add_rcpt("a@one.remote.test")
    second = target.start_delivery(MessageMeta("b"), "a@example.org")
    with pytest.raises(SMTPError) as busy:
        second.add_rcpt("b@one.remote.test")
    assert busy.value.code == 451
    second.abort()
    first.abort()
    assert target.limits.state()["destination"]["in_use"] == 0


# --- mx_auth policies acting inside target.remote (issue 8 through issue 7). -----------

def test_local_policy_refuses_a_plaintext_mx_and_says_which_policy(remote, smtp_sink, port):
    smtp_sink(host="127.0.0.3", port=port)   # no STARTTLS: TLS level none
    strict = remote("mx_auth {\n local_policy {\n  min_tls_level encrypted\n }\n}")
    [error] = deliver(strict, ["b@one.remote.test"]).values()
    assert error is not None and error.temporary
    assert "local_policy" in error.text
    relaxed = remote("mx_auth {\n local_policy off\n}")
    assert deliver(relaxed, ["b@one.remote.test"]) == {"b@one.remote.test": None}
