"""SIGKILL the real ``gmta run`` while messages stream into its queue; nothing answered 250 is lost.

Messages go through ``target.queue`` to ``target.maildir``. The process is
killed at random moments a few times and restarted on the same queue. Every
message that got ``250`` must be in the Maildir exactly once, or twice where
the kill fell between the Maildir's commit and the queue's record of it
(DESIGN §4.4); the duplicate count is printed.
"""

from __future__ import annotations

import random
import re
import signal
import smtplib
import threading
import time
from pathlib import Path

from tests.integration.conftest import GmtaProcess, START_TIMEOUT, base_config

MESSAGES = 200
KILLS = 3
SENDERS = 4


def config(state_dir: Path) -> str:
    return base_config(state_dir, "tls off\n") + """
target.maildir mb { path maildir/{domain}/{local} }
target.queue q {
    target &mb
    initial_retry_time 200ms
    retry_time_scale 1
    post_init_delay 0
}
smtp tcp://127.0.0.1:0 { deliver_to &q }
"""


class Stream:
    """Sender threads that take message numbers from a shared counter."""

    def __init__(self):
        self.next = 0
        self.accepted: set[int] = set()
        self.lock = threading.Lock()

    def take(self) -> int | None:
        with self.lock:
            if self.next >= MESSAGES:
                return None
            self.next += 1
            return self.next - 1

    def send(self, port: int) -> None:
        try:
            client = smtplib.SMTP("127.0.0.1", port, timeout=10)
        except OSError:
            return
        try:
            while (n := self.take()) is not None:
                body = (f"Subject: crash-test {n:05d}\r\nMessage-ID: <{n}@crash.test>\r\n\r\n"
                        + ("x" * 76 + "\r\n") * random.randint(1, 300))
                try:
                    client.sendmail("s@src.test", ["u@d.test"], body.encode())
                except (smtplib.SMTPException, OSError):
                    return  # unanswered: not counted as accepted (the daemon may still have it)
                with self.lock:
                    self.accepted.add(n)
                # Paced so that the kills fall while messages stream in (~5 s in all).
                time.sleep(random.uniform(0, 0.2))
        finally:
            try:
                client.close()
            except OSError:
                pass


def delivered(state_dir: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    new = state_dir / "maildir" / "d.test" / "u" / "new"
    if not new.is_dir():
        return counts
    for path in new.iterdir():
        m = re.search(rb"Subject: crash-test (\d+)", path.read_bytes())
        counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + 1
    return counts


def test_no_message_answered_250_is_lost_across_sigkills(tmp_path, state_dir):
    rng = random.Random()
    conf = tmp_path / "gmta.conf"
    conf.write_text(config(state_dir))
    stream = Stream()
    processes = []
    try:
        for round_ in range(KILLS + 1):
            process = GmtaProcess(conf)
            processes.append(process)
            process.wait_for(r"event=started", START_TIMEOUT)
            port = process.port()
            senders = [threading.Thread(target=stream.send, args=(port,), daemon=True)
                       for _ in range(SENDERS)]
            for t in senders:
                t.start()
            if round_ < KILLS:
                time.sleep(rng.uniform(0.3, 1.5))
                process.stop(signal.SIGKILL)
            for t in senders:
                t.join(30)
                assert not t.is_alive()
        final = processes[-1]
        # Whatever is still queued is delivered by the last process.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            counts = delivered(state_dir)
            if all(n in counts for n in stream.accepted) and \
                    not list((state_dir / "q" / "msg").iterdir()):
                break
            time.sleep(0.2)
        assert final.proc.poll() is None, "\n".join(final.lines)
    finally:
        for process in processes:
            process.stop()
    counts = delivered(state_dir)
    lost = sorted(n for n in stream.accepted if n not in counts)
    duplicates = sum(c - 1 for c in counts.values() if c > 1)
    print(f"crash test: messages={MESSAGES} accepted={len(stream.accepted)} kills={KILLS} "
          f"lost={len(lost)} duplicates={duplicates}")
    assert len(stream.accepted) > MESSAGES // 4
    assert lost == []
    assert not list((state_dir / "q" / "msg").iterdir())
    assert not any((state_dir / "q" / "corrupt").iterdir())
