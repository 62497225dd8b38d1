"""SIGKILL the real ``gmta run`` while messages stream through its queue; nothing answered 250 is lost.

Two set-ups share one driver (:func:`stream_with_kills`):

- messages go through ``target.queue`` to ``target.maildir`` (200 messages);
- messages stream in *and out*: ``target.queue`` wrapping ``target.smtp`` to a
  real Postfix ``smtp-sink`` that dumps every transaction it accepts (500
  messages, the issue's crash test).

The process is killed at random moments several times and restarted on the
same queue. Every message that got ``250`` must arrive at least once. A message
may arrive twice only where the kill fell between the downstream's commit and
the queue's record of it (DESIGN §4.4): at most the attempts in flight at each
kill, so at most ``kills × max_parallelism``; the duplicate count is printed.
"""

from __future__ import annotations

import random
import re
import signal
import smtplib
import threading
import time
from pathlib import Path
from typing import Callable

from tests.integration.conftest import GmtaProcess, START_TIMEOUT, base_config
from tests.integration.peers import smtp_sink  # noqa: F401 (fixture)

SENDERS = 4
#: The queue's max_parallelism in these configurations (the duplicate bound below).
PARALLELISM = 8
SUBJECT = re.compile(rb"Subject: crash-test (\d+)")


def queue_config(state_dir: Path, inner: str) -> str:
    return base_config(state_dir, "tls off\n") + inner + f"""
target.queue q {{
    target &out
    max_parallelism {PARALLELISM}
    initial_retry_time 200ms
    retry_time_scale 1
    post_init_delay 0
}}
smtp tcp://127.0.0.1:0 {{ deliver_to &q }}
"""


class Stream:
    """Sender threads that take message numbers from a shared counter."""

    def __init__(self, messages: int, pause: float):
        self.messages = messages
        self.pause = pause
        self.next = 0
        self.accepted: set[int] = set()
        self.lock = threading.Lock()

    def take(self) -> int | None:
        with self.lock:
            if self.next >= self.messages:
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
                # Paced so that the kills fall while messages stream in.
                time.sleep(random.uniform(0, self.pause))
        finally:
            try:
                client.close()
            except OSError:
                pass


def count_subjects(texts) -> dict[int, int]:
    counts: dict[int, int] = {}
    for text in texts:
        for m in SUBJECT.finditer(text):
            counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + 1
    return counts


def wait_drained(stream: Stream, delivered: Callable[[], dict[int, int]], queue_dir: Path,
                 timeout: float = 30.0) -> None:
    """Until every accepted message is *delivered* and the queue is empty, or *timeout*
    (the caller's checks then say what is missing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = delivered()
        if all(n in counts for n in stream.accepted) and not list((queue_dir / "msg").iterdir()):
            return
        time.sleep(0.2)


def stream_with_kills(conf: Path, queue_dir: Path, stream: Stream, kills: int,
                      delivered: Callable[[], dict[int, int]],
                      gap: tuple[float, float]) -> dict[int, int]:
    """Start gmta, stream, SIGKILL it after a random *gap*, restart; *kills* times.

    Returns what *delivered* counts once the last process emptied the queue.
    """
    rng = random.Random()
    processes = []
    try:
        for round_ in range(kills + 1):
            process = GmtaProcess(conf)
            processes.append(process)
            process.wait_for(r"event=started", START_TIMEOUT)
            port = process.port()
            senders = [threading.Thread(target=stream.send, args=(port,), daemon=True)
                       for _ in range(SENDERS)]
            for t in senders:
                t.start()
            if round_ < kills:
                time.sleep(rng.uniform(*gap))
                process.stop(signal.SIGKILL)
            for t in senders:
                t.join(60)
                assert not t.is_alive()
        final = processes[-1]
        # Whatever is still queued is delivered by the last process.
        wait_drained(stream, delivered, queue_dir)
        assert final.proc.poll() is None, "\n".join(final.lines)
    finally:
        for process in processes:
            process.stop()
    return delivered()


def check(stream: Stream, counts: dict[int, int], kills: int, queue_dir: Path,
          what: str) -> None:
    lost = sorted(n for n in stream.accepted if n not in counts)
    duplicates = sum(c - 1 for c in counts.values() if c > 1)
    print(f"crash test ({what}): messages={stream.messages} accepted={len(stream.accepted)} "
          f"kills={kills} lost={len(lost)} duplicates={duplicates}")
    assert len(stream.accepted) > stream.messages // 4
    assert lost == []
    assert duplicates <= kills * PARALLELISM
    assert not list((queue_dir / "msg").iterdir())
    assert not any((queue_dir / "corrupt").iterdir())
    # Spare files (gmta.queue.spares) of killed processes were deleted by the
    # next start's recovery, and the last process deleted its own at its stop.
    assert not any((queue_dir / "spare").iterdir())


def test_no_message_answered_250_is_lost_across_sigkills(tmp_path, state_dir):
    """Into a Maildir: a duplicate needs a kill between the Maildir's rename and our record."""
    conf = tmp_path / "gmta.conf"
    conf.write_text(queue_config(state_dir, """
target.maildir out { path maildir/{domain}/{local} }
"""))
    new = state_dir / "maildir" / "d.test" / "u" / "new"

    def delivered() -> dict[int, int]:
        return count_subjects(p.read_bytes() for p in new.iterdir()) if new.is_dir() else {}

    stream = Stream(messages=200, pause=0.2)
    counts = stream_with_kills(conf, state_dir / "q", stream, 3, delivered, (0.3, 1.5))
    check(stream, counts, 3, state_dir / "q", "maildir")


def test_500_messages_in_and_out_to_smtp_sink_across_sigkills(tmp_path, state_dir,
                                                             smtp_sink):  # noqa: F811
    """The issue's crash test: 500 messages stream in through SMTP and out to Postfix's
    smtp-sink while gmta is SIGKILLed at random moments; the sink's dumps are the truth."""
    sink = smtp_sink()
    conf = tmp_path / "gmta.conf"
    conf.write_text(queue_config(state_dir, f"""
target.smtp out {{
    targets {sink.address}
    connect_timeout 5s
    command_timeout 10s
}}
"""))

    def delivered() -> dict[int, int]:
        return count_subjects(p.read_bytes() for p in sink.dump_dir.iterdir())

    kills = 5
    stream = Stream(messages=500, pause=0.1)
    counts = stream_with_kills(conf, state_dir / "q", stream, kills, delivered, (0.5, 2.0))
    check(stream, counts, kills, state_dir / "q", "smtp-sink")
