#!/usr/bin/env python3
"""What one idle SMTP session costs gmta, allocation site by allocation site.

Not run by ``bench/run``. It starts ``gmta run`` with bench/templates/gmta.conf
(this checkout) inside a wrapper that can take ``tracemalloc`` snapshots, opens
N sessions that read the banner, send EHLO and stay idle (as the ``idle``
scenario does), and prints the RSS growth per session and, with --trace, the
Python allocations that the idle sessions hold, grouped by traceback::

    bench/idle_breakdown.py                 # RSS only, 2,000 sessions
    bench/idle_breakdown.py --trace 12      # and tracemalloc, 12 frames deep

tracemalloc adds its own memory per allocation, so the RSS printed with
--trace is higher than without. Memory that is not a Python allocation does
not appear in the list: greenlet's copies of C stacks do (they are PyMem
allocations, charged to the line where the greenlet parked), CPython 3.11's
data stack of each greenlet does not (a 16 KiB mmap per greenlet, of which the
pages touched count in RSS). See bench/README.md, idle sessions.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (bench/bench.py: the idle scenario's sessions, /proc readers)

ROOT = bench.ROOT

# Runs in the gmta process: start tracemalloc before gmta, then take a snapshot
# when asked through a file (before the idle sessions, and while they are idle).
WRAPPER = r"""
import os, sys, tracemalloc
depth = int(os.environ["BREAKDOWN_TRACE"])
if depth:
    tracemalloc.start(depth)
import gc
import gevent

def snapshots(control):
    first = None
    for _ in range(30000):                      # at most 100 minutes
        gevent.sleep(0.2)
        if first is None and os.path.exists(control + "/before"):
            gc.collect()
            first = tracemalloc.take_snapshot() if depth else True
            open(control + "/before.done", "w").close()
        if os.path.exists(control + "/after"):
            gc.collect()
            if depth:
                stats = tracemalloc.take_snapshot().compare_to(first, "traceback")
                with open(control + "/report", "w") as out:
                    for stat in stats:
                        frames = " <- ".join(f"{f.filename}:{f.lineno}" for f in
                                             reversed(stat.traceback[-2:]))
                        out.write(f"{stat.size_diff} {stat.count_diff} {frames}\n")
            open(control + "/after.done", "w").close()
            return

gevent.spawn(snapshots, os.environ["BREAKDOWN_DIR"])
from gmta.cli import main
sys.argv = ["gmta", "run", "-c", sys.argv[1]]
main()
"""


def ask(control: Path, name: str, seconds: float = 120) -> None:
    (control / name).touch()
    deadline = time.monotonic() + seconds
    while not (control / f"{name}.done").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"gmta did not answer the {name!r} request")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--trace", type=int, default=0, metavar="FRAMES",
                        help="tracemalloc depth (0: RSS only)")
    parser.add_argument("--top", type=int, default=30, help="allocation sites shown")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.sessions + 200
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    work = Path(tempfile.mkdtemp(prefix="gmta-idle."))
    proc = None
    try:
        config = (ROOT / "bench/templates/gmta.conf").read_text() \
            .replace("@STATE@", str(work / "state")).replace("@TARGET@", "&mailboxes")
        (work / "gmta.conf").write_text(config)
        (work / "wrapper.py").write_text(WRAPPER)
        env = dict(os.environ, BREAKDOWN_DIR=str(work), BREAKDOWN_TRACE=str(args.trace),
                   PYTHONPATH=str(ROOT))
        with open(work / "gmta.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, str(work / "wrapper.py"),
                                     str(work / "gmta.conf")], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, cwd=work, env=env)
        port = 0
        for _ in range(600):                  # tracemalloc makes the start slow
            found = re.search(rb"event=listening .*address=tcp://127\.0\.0\.1:(\d+)",
                              (work / "gmta.log").read_bytes())
            if found:
                port = int(found.group(1))
                break
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        if not port:
            raise SystemExit("gmta did not listen:\n" + (work / "gmta.log").read_text())
        bench.one_session(port)
        time.sleep(1)
        ask(work, "before")
        before = bench.status_kib(proc.pid, "VmRSS")

        def while_idle() -> int:
            after = bench.status_kib(proc.pid, "VmRSS")
            ask(work, "after")
            return after

        n = args.sessions
        idle, after, errors = bench.idle_sessions(port, n, while_idle)
        if idle != n:
            raise SystemExit(f"only {idle} of {n} sessions went idle: {errors}")
        print(f"{n} idle sessions: RSS {before} -> {after} KiB = "
              f"{(after - before) / n:.2f} KiB/session"
              + (" (with tracemalloc's own overhead)" if args.trace else ""))
        if args.trace:
            rows = [line.split(" ", 2) for line in (work / "report").read_text().splitlines()]
            total = sum(int(size) for size, _, _ in rows)
            print(f"Python allocations held: {total / n:.0f} B/session; largest sites "
                  "(bytes and blocks per session, innermost frame first):")
            for size, count, frames in rows[:args.top]:
                frames = frames.replace(str(ROOT) + "/", "")
                frames = re.sub(r"\S*/site-packages/", "", frames)
                print(f"  {int(size) / n:7.0f} B {int(count) / n:5.1f}  {frames}")
    finally:
        if proc is not None:
            bench.stop_process(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
