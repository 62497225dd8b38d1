#!/usr/bin/env python3
"""The delivery side alone: CPU time and connections per message of target.smtp.

The relay scenario's process receives and delivers at once, and its CPU per
message mixes both; this measures what forwarding costs. It loads a
``target.smtp`` towards Postfix's ``smtp-sink`` in this process and has
PARALLEL greenlets (the queue's ``max_parallelism``) deliver MESSAGES 1 KiB
messages the way the queue does (``MessageMeta.batch`` where the checkout has
it: every recipient before the body), after a warm-up; it reports user and
system milliseconds per message from getrusage, and sessions opened per message.
Log lines are not counted (the ``gmta`` loggers are left at WARNING).

    python3 bench/delivery_cpu.py --messages 3000 [--parallel 16] [--checkout DIR]

``--checkout`` measures another tree (an older commit, from ``git archive``).
Not a test and not part of bench/run; needs smtp-sink (Debian: postfix).
Network: 127.0.0.1 only; every wait is bounded (the target's own timeouts).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (bench/bench.py: free_port, wait_until, listens, stop_process)

WARM_UP = 200
SINK_START = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--checkout", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args()
    sys.path.insert(0, str(args.checkout.resolve()))

    import dataclasses

    import gevent.pool

    import gmta.modules  # noqa: F401  (fills the registry)
    from gmta.buffer import MemoryBuffer
    from gmta.config.loader import load_block
    from gmta.delivery import MessageMeta

    port = bench.free_port(0)
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    sink = subprocess.Popen(["smtp-sink", *user, f"127.0.0.1:{port}", "256"],
                            stdin=subprocess.DEVNULL)
    try:
        if not bench.wait_until(lambda: bench.listens(port), SINK_START, 0.05):
            raise SystemExit(f"smtp-sink did not listen on port {port}")
        with tempfile.TemporaryDirectory() as state:
            config = Path(state) / "gmta.conf"
            config.write_text(f"hostname mx.bench.test\nstate_dir {state}\nlog off\n"
                              f"target.smtp out {{\n targets tcp://127.0.0.1:{port}\n"
                              f" attempt_starttls no\n}}\n")
            target = load_block(str(config), "out")
            target.start()
            opened = [0]
            target.on_connect = lambda client: opened.__setitem__(0, opened[0] + 1)
            header = (b"From: s@c.bench.test\r\nTo: r@bench.test\r\nSubject: bench\r\n"
                      b"Message-Id: <bench@c.bench.test>\r\n\r\n")
            body = MemoryBuffer((b"x" * 70 + b"\r\n") * 13)   # 1 KiB with the header
            batch = "batch" in {f.name for f in dataclasses.fields(MessageMeta)}
            failures: list[BaseException] = []

            def deliver(n: int) -> None:
                meta = MessageMeta(id=f"m{n}", **({"batch": True} if batch else {}))
                try:
                    delivery = target.start_delivery(meta, "s@c.bench.test")
                    delivery.add_rcpt("r@bench.test", {})
                    delivery.body(header, body)
                    delivery.commit()
                except Exception as error:   # counted and reported, never hidden
                    failures.append(error)

            pool = gevent.pool.Pool(args.parallel)
            for n in range(WARM_UP):
                pool.spawn(deliver, n)
            pool.join()
            before, started, sessions = resource.getrusage(resource.RUSAGE_SELF), \
                time.monotonic(), opened[0]
            for n in range(args.messages):
                pool.spawn(deliver, n)
            pool.join()
            after, elapsed = resource.getrusage(resource.RUSAGE_SELF), \
                time.monotonic() - started
            target.stop()
        count = args.messages
        print(f"checkout={args.checkout} batch={batch} messages={count} "
              f"parallel={args.parallel} failures={len(failures)} "
              f"msg/s={count / elapsed:.0f} "
              f"user_ms={(after.ru_utime - before.ru_utime) * 1e3 / count:.3f} "
              f"sys_ms={(after.ru_stime - before.ru_stime) * 1e3 / count:.3f} "
              f"connections/msg={(opened[0] - sessions) / count:.3f}")
        if failures:
            print(f"first failure: {failures[0]!r}", file=sys.stderr)
    finally:
        bench.stop_process(sink, 5)


if __name__ == "__main__":
    main()
