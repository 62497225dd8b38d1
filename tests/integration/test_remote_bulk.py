"""1,000 messages to 50 domains through the real ``gmta run``: queue → target.remote.

Issue 7's volume test. Messages are submitted over SMTP by several clients at
once; the queue hands them to ``target.remote``, which resolves each domain
through a real knotd (one zone per domain, plus ``hosts.test`` for the MX
hosts) and delivers to four smtp-sinks on 127.0.0.2…5 sharing one port
(``smtp_port``). Every (message, recipient) pair must arrive at the sink its
domain's MX names exactly once: nothing lost, nothing duplicated, no bounce,
the queue empty at the end, and sessions reused (fewer sessions than
messages, counted from gmta's ``mx_connected`` events). A ``destination``
limit makes a leaked slot show as a deferral (the run must need no retry).
"""

# ruff: noqa: F811  (fixtures imported from peers, then named as parameters)

from __future__ import annotations

import email
import re
import smtplib
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.dnsserver import AuthoritativeDNS
from tests.integration.peers import smtp_sink  # noqa: F401
from tests.integration.test_remote import port, queue_to_remote  # noqa: F401
from tests.integration.test_queue import cli

pytestmark = pytest.mark.integration

MESSAGES = 1000
DOMAINS = 50
MX_HOSTS = 4          # 127.0.0.2 … 127.0.0.5
CLIENTS = 8
DEADLINE = 60.0       # submission and delivery together


def domain(n: int) -> str:
    return f"d{n:02d}.test"


def mx_address(n: int) -> str:
    """The sink domain *n*'s MX is on."""
    return f"127.0.0.{2 + n % MX_HOSTS}"


def recipients(n: int) -> list[str]:
    """Message *n* goes to two domains (one session each, content sent in parallel)."""
    first, second = n % DOMAINS, (n * 7 + 3) % DOMAINS
    if second == first:
        second = (first + 1) % DOMAINS
    return [f"u{n % 3}@{domain(first)}", f"v{n % 5}@{domain(second)}"]


@pytest.fixture(scope="module")
def bulk_dns(tmp_path_factory):
    server = AuthoritativeDNS(tmp_path_factory.mktemp("bulk-dns"))
    for n in range(DOMAINS):
        # Every fifth domain has a backup MX on the next sink, never needed.
        backup = [f"@ MX 20 mx{(n + 1) % MX_HOSTS}.hosts.test."] if n % 5 == 0 else []
        server.zone(domain(n), [f"@ MX 10 mx{n % MX_HOSTS}.hosts.test.", *backup])
    server.zone("hosts.test", [f"mx{k} A 127.0.0.{2 + k}" for k in range(MX_HOSTS)])
    server.start()
    yield server
    server.stop()


def send_batch(gmta_port: int, numbers: range) -> None:
    with smtplib.SMTP("127.0.0.1", gmta_port, timeout=30) as client:
        for n in numbers:
            message = (f"From: a@example.org\r\nTo: {', '.join(recipients(n))}\r\n"
                       f"Subject: bulk {n}\r\nMessage-ID: <bulk-{n}@example.org>\r\n\r\n"
                       f"Message number {n}.\r\n")
            assert client.sendmail("a@example.org", recipients(n), message) == {}


def arrived(sinks) -> Counter:
    """(subject, recipient, sink address) for every recipient of every dumped transaction."""
    seen: Counter = Counter()
    for sink in sinks:
        for path in sink.dump_dir.iterdir():
            message = email.message_from_bytes(path.read_bytes())
            for rcpt in message.get_all("X-Rcpt-Args") or []:
                seen[(message["Subject"], rcpt.strip("<>"), sink.host)] += 1
    return seen


def test_1000_messages_to_50_domains_through_the_queue(start_gmta, state_dir, bulk_dns,
                                                       smtp_sink, port):
    sinks = [smtp_sink(host=f"127.0.0.{2 + k}", port=port) for k in range(MX_HOSTS)]
    gmta = start_gmta(queue_to_remote(state_dir, bulk_dns, port, "command_timeout 10s\n"
                                      "    limits { destination concurrency 3 }"))
    started = time.monotonic()
    per_client = MESSAGES // CLIENTS
    with ThreadPoolExecutor(CLIENTS) as pool:
        batches = [pool.submit(send_batch, gmta.port(), range(c * per_client, (c + 1) * per_client))
                   for c in range(CLIENTS)]
        for batch in batches:
            batch.result(timeout=DEADLINE)
    submitted = time.monotonic() - started

    expected = Counter((f"bulk {n}", rcpt, mx_address(int(rcpt.split("@d")[1][:2])))
                       for n in range(MESSAGES) for rcpt in recipients(n))
    seen: Counter = Counter()
    while time.monotonic() - started < DEADLINE:
        seen = arrived(sinks)
        if sum(seen.values()) >= len(expected):
            break
        time.sleep(0.2)
    delivered = time.monotonic() - started
    missing = expected - seen
    assert not missing, f"{len(missing)} of {len(expected)} not delivered, e.g. " \
                        f"{sorted(missing)[:3]}"
    duplicates = {key: count for key, count in seen.items() if count > 1}
    assert not duplicates, f"delivered more than once: {sorted(duplicates)[:3]}"
    assert set(seen) == set(expected), "a recipient arrived at a sink its MX does not name"

    # Nothing left in the queue, nothing bounced.
    deadline = time.monotonic() + 10
    while "Queue is empty" not in cli("list", "-c", str(gmta.config_path)).stdout:
        assert time.monotonic() < deadline, cli("list", "-c", str(gmta.config_path)).stdout
        time.sleep(0.2)
    assert not (state_dir / "maildir").exists()
    # Sessions were reused (conn_reuse_limit 10): far fewer than the 2,000 transactions.
    sessions = sum("event=mx_connected" in line for line in gmta.lines)
    assert 0 < sessions <= len(expected) // 4, sessions
    # And no attempt needed a second try.
    trouble = [line for line in gmta.lines
               if re.search(r"event=(deferred|failed|mx_failed|\w+_refused|\w+_error)\b", line)]
    assert not trouble, trouble[:5]
    print(f"\nsubmitted in {submitted:.1f}s, all delivered after {delivered:.1f}s, "
          f"{sessions} sessions for {len(expected)} transactions")
