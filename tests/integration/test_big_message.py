"""A 50 MiB message is accepted without holding it in memory (issue: receiving mail)."""

from __future__ import annotations

import smtplib

import pytest

from tests.integration.conftest import base_config, maildir_messages

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def peak_rss(pid: int) -> int:
    """VmHWM: the largest resident set the process has had, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


@pytest.mark.timeout(180)
def test_50_mib_message_stays_out_of_memory(start_gmta, state_dir):
    gmta = start_gmta(base_config(state_dir, "tls off") + """
target.maildir mailboxes {
    path maildir/{domain}/{local}
}
smtp tcp://127.0.0.1:0 {
    max_message_size 64M
    deliver_to &mailboxes
}
""")
    line = b"x" * 998 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (50 * MIB // len(line))
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=120) as client:
        # A small message first, so the baseline includes every code path's imports.
        client.sendmail("a@sender.test", ["sam@example.test"], b"Subject: small\r\n\r\nx\r\n")
        baseline = peak_rss(gmta.proc.pid)
        client.sendmail("a@sender.test", ["sam@example.test"], body)
    growth = peak_rss(gmta.proc.pid) - baseline
    stored = maildir_messages(state_dir, "sam@example.test")
    assert len(stored) == 2
    assert max(len(m) for m in stored) > len(body)
    assert body in max(stored, key=len)
    print(f"peak RSS growth {growth / MIB:.1f} MiB")
    assert growth < 16 * MIB, f"peak RSS grew by {growth / MIB:.1f} MiB"
