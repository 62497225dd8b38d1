#!/usr/bin/env python3
"""gmta's CPU time per received message, which other load on the machine hardly moves.

Wall-clock msg/s needs a quiet machine (bench/run); CPU time per message does
not: it is what one accepted message costs gmta, whoever else is running. This
starts ``bin/gmta run`` with bench/templates/gmta.conf (a fresh state directory
each time), sends a warm-up, then ``smtp-source -d -s SESSIONS -m MESSAGES -l
1024``, and reads the user and system time of gmta's processes (the supervisor
and its workers with ``--workers``) from /proc before and after.

    python3 bench/cpu_per_message.py --messages 2000 --rounds 3 [--workers 2] [--target dummy]
    python3 bench/cpu_per_message.py --queue     # smtp → target.queue (deliveries held back)

Not a test and not part of bench/run; needs smtp-source (Debian: postfix).
Network: 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (bench/bench.py: the Gmta class, /proc readers, smtp-source)

# --queue: smtp → target.queue → a target.smtp whose next hop (port 9) refuses
# connections (bench/templates/gmta-relay.conf, as the deferred scenario uses it):
# the message is committed to the queue (fsynced) before the 250, and the first
# delivery attempt fails at once and is deferred, as in bench/remote.py.
NOWHERE_PORT = 9


def measure(work: Path, label: str, args, checkout: Path) -> tuple[float, float]:
    bench.ROOT = checkout   # Gmta.start runs ROOT/bin/gmta
    gmta = bench.Gmta(work, label, sys.executable, target=args.target, workers=args.workers,
                      sink_port=NOWHERE_PORT if args.queue else 0)
    gmta.start()
    try:
        bench.smtp_source(gmta.port, min(args.sessions, 20), 200, 1024, 60)
        bench.settle()
        spy = None
        if args.py_spy:
            # Collapsed stacks of every thread of the (first) receiving process.
            pid = gmta.pids()[-1]
            spy = subprocess.Popen([args.py_spy, "record", "--nonblocking", "--threads", "--gil",
                                    "--format", "raw", "--rate", "400", "-o", f"{args.py_spy_out}.{label}",
                                    "--pid", str(pid)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        perf = None
        if args.perf:
            perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "2000", "-g",
                                     "-o", f"{args.perf}.{label}", "-p",
                                     ",".join(str(p) for p in gmta.pids())],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = gmta.cpu()
        seconds = bench.smtp_source(gmta.port, args.sessions, args.messages, 1024, 300)
        user, system = bench.sub(gmta.cpu(), before)
        for profiler in (spy, perf):
            if profiler is not None:
                profiler.send_signal(2)
                profiler.wait(30)
    finally:
        gmta.stop()
    per_message = 1000 / args.messages
    print(f"{label}: {args.messages / seconds:,.0f} msg/s, CPU {(user + system) * per_message:.3f}"
          f" ms/msg ({user * per_message:.3f} user + {system * per_message:.3f} sys)",
          flush=True)
    return user * per_message, system * per_message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--target", default="&mailboxes", help="&mailboxes or dummy")
    parser.add_argument("--queue", action="store_true", help="deliver_to a target.queue")
    parser.add_argument("--py-spy", metavar="PATH", help="record the measured run with py-spy")
    parser.add_argument("--py-spy-out", default="/tmp/gmta-cpu.pyspy",
                        help="collapsed stacks go to PATH.roundN")
    parser.add_argument("--perf", metavar="OUT", help="record the measured run with perf "
                        "(software cpu-clock events; OUT.roundN)")
    parser.add_argument("--compare", metavar="CHECKOUT", type=Path,
                        help="alternate rounds with bin/gmta of another checkout (A/B)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gmta-cpu."))
    bench.WORK[0] = str(work)
    bench.DISK_STAT[0] = bench.find_disk(work)
    checkouts = {"this": bench.BENCH.parent}
    if args.compare:
        checkouts["other"] = args.compare.resolve()
    results: dict[str, list] = {name: [] for name in checkouts}
    try:
        for n in range(args.rounds):
            for name, checkout in checkouts.items():
                results[name].append(measure(work, f"{name}{n + 1}", args, checkout))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, rounds in results.items():
        totals = [u + s for u, s in rounds]
        print(f"{name} ({checkouts[name]}): median CPU ms/msg {statistics.median(totals):.3f} "
              f"(user {statistics.median(u for u, _ in rounds):.3f}, "
              f"sys {statistics.median(s for _, s in rounds):.3f})")


if __name__ == "__main__":
    main()
