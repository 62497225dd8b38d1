"""SIGTERM while a queue attempt waits for an MX's reply to the content.

The MX (a ScriptedMX on 127.0.0.5, the MX of two.remote.test) holds its reply to
the end of the content longer than gmta's stop allows. gmta must cut the
attempt, record nothing as delivered, release the entry's lock and exit; the
next ``gmta run`` on the same queue delivers the message, once (DESIGN §4.4:
a retry never repeats a recorded delivery; the held transaction was never
acknowledged, so the MX keeps nothing from it).
"""

# ruff: noqa: F811  (fixtures imported from peers, then named as parameters)

from __future__ import annotations

import json
import smtplib
import time

import pytest

from tests.integration.scriptedmx import ScriptedMX
from tests.integration.test_queue import cli
from tests.integration.test_remote import port, queue_to_remote, remote_dns  # noqa: F401

pytestmark = pytest.mark.integration

HOLD = 60.0          # the MX's first session holds its reply this long: longer than any grace
GRACE = 2.0          # the endpoint's shutdown_timeout: what running attempts get on SIGTERM


def config(state_dir, remote_dns, port) -> str:
    return queue_to_remote(state_dir, remote_dns, port,
                           "command_timeout 5s\n    submission_timeout 2m",
                           f"shutdown_timeout {GRACE:g}s")


def test_sigterm_mid_data_delivers_once_after_restart(start_gmta, state_dir, remote_dns, port):
    mx = ScriptedMX("127.0.0.5", port, data_delay=HOLD, faulty_sessions=1)
    try:
        text = config(state_dir, remote_dns, port)
        gmta = start_gmta(text)
        with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=30) as client:
            client.sendmail("s@example.org", ["a@two.remote.test"],
                            b"Subject: cut mid-DATA\r\n\r\nHi\r\n")
        assert mx.holding.wait(15), "the MX never got the content"

        stopping = time.monotonic()
        assert gmta.stop() == 0
        stopped_in = time.monotonic() - stopping
        # The endpoint's drain is immediate (no session open); the attempt gets GRACE.
        assert GRACE <= stopped_in < GRACE + 8, stopped_in
        assert not any("event=delivered" in line and "module=queue" in line
                       for line in gmta.lines), gmta.lines
        [entry] = json.loads(cli("list", "-c", str(gmta.config_path), "--json").stdout)
        [rcpt] = entry["recipients"]
        assert rcpt["state"] == "pending", entry
        assert mx.received == []

        again = start_gmta(text)
        again.wait_for(r"event=done .*delivered=1 failed=0", timeout=20)
        [received] = mx.received
        assert received.rcpts == ["a@two.remote.test"] and received.session == 2
        assert json.loads(cli("list", "-c", str(again.config_path), "--json").stdout) == []
    finally:
        mx.stop()
