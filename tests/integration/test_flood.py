"""maddy-behaviour §3.1 E20: floods without limits all succeed."""

from __future__ import annotations

import smtplib
import threading
import time

import pytest

from tests.integration.conftest import base_config

pytestmark = pytest.mark.integration


def flood_config(state_dir) -> str:
    return base_config(state_dir, "tls off") + """
smtp tcp://127.0.0.1:0 {
    deliver_to dummy
}
"""


def send_many(port: int, count: int, results: list, full: bool = True) -> None:
    ok = 0
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        for n in range(count):
            if full:
                client.sendmail("a@sender.test", ["x@example.test"], f"Subject: {n}\r\n\r\n{n}\r\n")
                ok += 1
            else:
                ok += client.mail("a@sender.test")[0] == 250 and \
                    client.rcpt("x@example.test")[0] == 250 and client.rset()[0] == 250
    results.append(ok)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("connections, per_connection, full", [
    (1, 100, True), (10, 100, True), (10, 100, False)], ids=["1x100", "10x100", "10x100-aborts"])
def test_flood_without_limits(start_gmta, state_dir, connections, per_connection, full):
    gmta = start_gmta(flood_config(state_dir))
    results: list[int] = []
    threads = [threading.Thread(target=send_many, args=(gmta.port(), per_connection, results, full))
               for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert results == [per_connection] * connections
    if full:
        # The log is read by another thread: give it a moment to catch up.
        deadline = time.monotonic() + 10
        while sum("event=accepted" in line for line in list(gmta.lines)) < connections * per_connection:
            assert time.monotonic() < deadline, "not every message was accepted"
            time.sleep(0.05)
