#!/usr/bin/env python3
"""gmta against a private Postfix on loopback, driven by Postfix's smtp-source.

Started by ``bench/run``, which installs what is missing, raises the open-file
limit, makes the work directory and stops any server left behind. This file
runs the scenarios and prints the table; see bench/README.md for what each
one measures.

Scenarios (each server gets a fresh instance for each measurement, and only
the server being measured is running):

  throughput  smtp-source -d -s 20 -m 5000 -l 1024: 20 sessions, 5,000 messages
              of 1 KiB, every one fsynced before its 250 (gmta: target.maildir;
              Postfix: its queue, then virtual(8) into a Maildir, or the hold
              queue). Median of --rounds rounds; gmta and Postfix-hold alternate,
              Postfix delivering into the Maildir runs after them (it deletes its
              queue files, which slows file creation for minutes on ext4 without
              a journal).
  idle        2,000 SMTP sessions opened and left idle after EHLO: RSS growth
              per session (gmta: its one process; Postfix: the sum over its
              smtpd processes, and the sum of their PSS).
  big         one 50 MiB message with smtp-source -l: seconds until the 250,
              and gmta's peak RSS growth (VmHWM).
  remote      the queue delivering 2,000 messages to 20 domains, each MX an
              smtp-sink on 127.0.1.x, both servers resolving through one knotd
              (bench/remote.py): msg/s and connections opened per message.
  relay       smtp-source -d -s 20 -m 5000 -l 1024 into gmta (target.queue, then
              target.smtp) and into Postfix (relayhost), each forwarding to a
              Postfix smtp-sink that dumps what it accepts: messages/second until
              the sink has them all, and the Message-Ids lost or duplicated there.
  deferred    gmta started on a queue of 100,000 deferred messages (written by
              bench/fill-queue through gmta's store): seconds until it listens and
              until its start-up scan is done, and RSS after it, against the same
              gmta on an empty queue.

Diagnostics, never in a ratio: dummy (gmta with deliver_to dummy), experiments
(bench/gmta-variant: threadpool size, GIL switch interval, file work inline, no
fsync), and with --py-spy / --perf one profiled gmta run each.

Network: 127.0.0.1 only. Every wait is bounded; the whole run has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import grp
import json
import os
import pwd
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/remote.py imports this module as "bench": the same one, not a second copy.
sys.modules.setdefault("bench", sys.modules[__name__])

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TEMPLATES = BENCH / "templates"
CLK_TCK = os.sysconf("SC_CLK_TCK")
KIB = 1024
MIB = 1024 * 1024

RCPT = "rcpt@bench.test"
SENDER = "sender@client.bench.test"
HELO = "client.bench.test"

COMMANDS: list[str] = []   # every command the benchmark ran against a server, for the report
DEADLINE = [float("inf")]
WORK = [""]                # the scratch directory, as written in the report's commands


class BenchError(Exception):
    pass


def say(text: str) -> None:
    print(text, flush=True)


def check_deadline(what: str) -> None:
    if time.monotonic() > DEADLINE[0]:
        raise BenchError(f"time budget used up before {what}")


def record(cmd: list[str]) -> None:
    """Note *cmd* for the report, as a template: $WORK/INSTANCE is each instance's
    fresh directory, PORT the server's port (gmta's from its event=listening line)."""
    cmd = list(cmd)
    if cmd[0] == "smtp-source":
        cmd[-1] = "127.0.0.1:PORT"
    if "--pid" in cmd:
        cmd[cmd.index("--pid") + 1] = "GMTA_PID"
    text = shlex.join(cmd)
    if WORK[0]:
        text = re.sub(re.escape(WORK[0]) + r"/[^/ ']+(?=/)", "$WORK/INSTANCE", text)
        text = text.replace(WORK[0], "$WORK")
    if text not in COMMANDS:
        COMMANDS.append(text)


def settle() -> None:
    """Before a timed run: flush dirty pages (and the discards of the previous
    instance's deleted files) and wait, up to 15 s, for the machine to be quiet."""
    os.sync()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        a = machine_cpu()
        time.sleep(0.5)
        b = machine_cpu()
        if (b[0] - a[0]) / max(1, b[1] - a[1]) < 0.10:
            return


def run(cmd: list[str], timeout: float, check: bool = True, quiet: bool = False,
        show: bool = True) -> subprocess.CompletedProcess:
    if show:
        record(cmd)
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise BenchError(f"{shlex.join(cmd)} exited with {result.returncode}:\n"
                         f"{result.stdout}{result.stderr}")
    if not quiet and (result.stdout.strip() or result.stderr.strip()):
        say(f"    ({shlex.join(cmd)}: {(result.stdout + result.stderr).strip()[:300]})")
    return result


def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM *proc* if it still runs, and SIGKILL it if it has not gone in *timeout* s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def listens(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:*port*."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- /proc --------------------------------------------------------------------

def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {key} for pid {pid}")


def rollup_kib(pid: int) -> dict[str, int]:
    """Rss, Pss and Uss (private pages) of *pid* from smaps_rollup (0 if it has gone)."""
    values = {"Rss": 0, "Pss": 0, "Private_Clean": 0, "Private_Dirty": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in values:
                    values[key] = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    values["Uss"] = values["Private_Clean"] + values["Private_Dirty"]
    return values


def proc_stat(pid) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The fields after "(comm)"; comm may contain spaces and parentheses.
    return text[text.rindex(")") + 2:].split()


def cpu_seconds(pid: int, children: bool = False, task: int | None = None) -> tuple[float, float]:
    """(user, system) CPU seconds of *pid* (all its threads, or only thread *task*),
    plus its reaped children's if asked."""
    fields = proc_stat(pid if task is None else f"{pid}/task/{task}")
    if fields is None:
        return 0.0, 0.0
    user, system = int(fields[11]), int(fields[12])      # utime, stime (fields 14, 15)
    if children:
        user, system = user + int(fields[13]), system + int(fields[14])  # cutime, cstime
    return user / CLK_TCK, system / CLK_TCK


def add(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return a[0] + b[0], a[1] + b[1]


def sub(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return a[0] - b[0], a[1] - b[1]


def children_of(ppid: int) -> list[tuple[int, str]]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = proc_stat(int(entry.name))
        if fields is None or int(fields[1]) != ppid:
            continue
        try:
            with open(f"/proc/{entry.name}/comm") as f:
                comm = f.read().strip()
        except FileNotFoundError:
            continue
        found.append((int(entry.name), comm))
    return found


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


DISK_STAT = [""]   # /sys/dev/block/MAJ:MIN/stat of the disk under the scratch directory


def find_disk(path: Path) -> str:
    dev = os.stat(path).st_dev
    block = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not block.exists():
        return ""
    block = block.resolve()
    if (block / "partition").exists():
        block = block.parent
    return str(block / "stat") if (block / "stat").exists() else ""


def disk_counters() -> tuple[int, int, int]:
    """(write requests, flush requests, ms spent flushing) of that disk, 0s if unknown."""
    if not DISK_STAT[0]:
        return 0, 0, 0
    with open(DISK_STAT[0]) as f:
        fields = [int(v) for v in f.read().split()]
    if len(fields) < 17:
        return fields[4], 0, 0
    return fields[4], fields[15], fields[16]


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            # As Postfix binds it: a port with connections in TIME_WAIT is free.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise BenchError("no free port on 127.0.0.1")


def count_files(directory: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(directory))
    except FileNotFoundError:
        return 0


# -- servers ------------------------------------------------------------------

class Gmta:
    """``bin/gmta run`` on a fresh state directory."""

    kind = "gmta"

    def __init__(self, work: Path, label: str, python: str, target: str = "&mailboxes",
                 variant: dict[str, str] | None = None, workers: int = 1,
                 sink_port: int = 0):
        self.dir = work / label
        self.dir.mkdir(parents=True)
        self.state = self.dir / "state"
        self.config = self.dir / "gmta.conf"
        if sink_port:
            # A relay: the queue, then target.smtp to 127.0.0.1:sink_port.
            text = (TEMPLATES / "gmta-relay.conf").read_text().replace("@SINK@", str(sink_port))
        else:
            text = (TEMPLATES / "gmta.conf").read_text()
        if target != "&mailboxes":
            # An unused target block is a configuration error.
            text = re.sub(r"\ntarget\.maildir mailboxes \{.*?\n\}\n", "\n", text, flags=re.S)
        if workers > 1:
            # A supervisor and N receiving processes on the one port (SO_REUSEPORT).
            text = text.replace("\ntls off\n", f"\ntls off\nworkers {workers}\n")
        self.workers = workers
        self.config.write_text(text.replace("@STATE@", str(self.state))
                               .replace("@TARGET@", target))
        self.python = python
        self.variant = variant or {}
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.pid_file = work / "gmta.pid"

    @property
    def maildir_new(self) -> Path:
        return self.state / "maildir" / "bench.test" / "rcpt" / "new"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> None:
        script = BENCH / "gmta-variant" if self.variant else ROOT / "bin" / "gmta"
        cmd = [self.python, str(script), "run", "-c", str(self.config)]
        record(["env", *(f"{k}={v}" for k, v in self.variant.items()), *cmd]
               if self.variant else cmd)
        self.log = open(self.dir / "gmta.log", "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=self.dir,
                                     env={**os.environ, **self.variant})
        self.pid_file.write_text(str(self.proc.pid))

        def listening() -> bool:
            lines = (self.dir / "gmta.log").read_text(errors="replace").splitlines()
            if self.workers > 1 and not any("event=started" in line and
                                            f"workers={self.workers}" in line for line in lines):
                return False  # not every worker listens yet
            for line in lines:
                if "event=listening" in line and "address=tcp://127.0.0.1:" in line:
                    self.port = int(line.rsplit(":", 1)[1].split()[0])
                    return True
            return False

        if not wait_until(lambda: listening() or self.proc.poll() is not None, 30, 0.05) \
                or not self.port:
            raise BenchError("gmta did not start:\n" +
                             (self.dir / "gmta.log").read_text(errors="replace")[-2000:])

    def pids(self) -> list[int]:
        """The process, and with ``workers N`` its worker processes."""
        if self.workers == 1:
            return [self.proc.pid]
        return [self.proc.pid] + [pid for pid, _ in children_of(self.proc.pid)]

    def cpu(self) -> tuple[float, float]:
        total = (0.0, 0.0)
        for pid in self.pids():
            total = add(total, cpu_seconds(pid))
        return total

    def main_thread_cpu(self) -> tuple[float, float]:
        """The thread that runs the gevent hub and every greenlet (holding the GIL);
        with workers, the sum over the workers' (so up to N × 100% busy)."""
        total = (0.0, 0.0)
        for pid in self.pids():
            total = add(total, cpu_seconds(pid, task=pid))
        return total

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, 20)
        self.log.close()
        self.pid_file.unlink(missing_ok=True)


class Postfix:
    """A private Postfix instance with its own config, queue and data directories."""

    kind = "postfix"

    def __init__(self, work: Path, label: str, port: int, hold: bool = False,
                 relay_port: int = 0):
        self.dir = work / label
        self.etc = self.dir / "etc"
        self.queue = self.dir / "queue"
        self.mail = self.dir / "mail"
        self.port = port
        self.hold = hold
        self.master = 0
        self.started = False
        nobody = pwd.getpwnam("nobody")
        for d in (self.etc, self.queue, self.mail):
            d.mkdir(parents=True)
        os.chmod(self.dir, 0o755)
        os.chown(self.mail, nobody.pw_uid, nobody.pw_gid)
        main_cf = ((TEMPLATES / "postfix-main.cf").read_text()
                   .replace("@DIR@", str(self.dir))
                   .replace("@NOBODY_UID@", str(nobody.pw_uid))
                   .replace("@NOBODY_GID@", str(nobody.pw_gid)))
        if hold:
            main_cf += ("\n# Hold mode: every message goes to the hold queue (fsynced before\n"
                        "# the 250, as always) and is never delivered.\n"
                        "smtpd_end_of_data_restrictions = check_client_access static:HOLD\n")
        if relay_port:
            # Replaced rather than repeated (Postfix warns about a repeated parameter).
            main_cf = re.sub(r"(?m)^(virtual_mailbox_domains|relayhost) =.*\n", "", main_cf)
            main_cf += (
                "\n# Relay mode (scenario relay): bench.test is no local or virtual domain;\n"
                "# everything goes through the smtp(8) client to the smtp-sink (relaying\n"
                "# is allowed by mynetworks, the default smtpd_relay_restrictions).\n"
                "virtual_mailbox_domains =\n"
                "default_transport = smtp\n"
                f"relayhost = [127.0.0.1]:{relay_port}\n"
                "smtp_tls_security_level = none\n")
        (self.etc / "main.cf").write_text(main_cf)
        shutil.copy("/etc/postfix/master.cf", self.etc / "master.cf")
        if os.path.exists("/etc/postfix/dynamicmaps.cf"):
            shutil.copy("/etc/postfix/dynamicmaps.cf", self.etc / "dynamicmaps.cf")
        c = ["-c", str(self.etc)]
        run(["postconf", *c, "-M#", "smtp/inet"], 30)
        run(["postconf", *c, "-Me",
             f"127.0.0.1:{port}/inet = 127.0.0.1:{port} inet n - n - - smtpd"], 30)
        run(["postconf", *c, "-F", "*/*/chroot = n"], 30)
        # bench/run's exit trap stops any instance listed here that is still running.
        with (work / "postfix-dirs").open("a") as f:
            f.write(f"{self.etc}\n")

    @property
    def maildir_new(self) -> Path:
        return self.mail / "rcpt" / "new"

    @property
    def pid(self) -> int:
        return self.master

    def delivered(self) -> int:
        if self.hold:
            return count_files(self.queue / "hold")
        return count_files(self.maildir_new)

    def start(self) -> None:
        run(["postfix", "-c", str(self.etc), "check"], 60, quiet=True)
        run(["postfix", "-c", str(self.etc), "start"], 60, quiet=True)
        self.started = True
        pid_file = self.queue / "pid" / "master.pid"

        def up() -> bool:
            try:
                self.master = int(pid_file.read_text().strip())
            except (FileNotFoundError, ValueError):
                return False
            return listens(self.port)

        if not wait_until(up, 30, 0.1):
            raise BenchError("Postfix did not start; maillog:\n" + self.maillog()[-2000:])

    def maillog(self) -> str:
        try:
            return (self.dir / "maillog").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def processes(self) -> list[tuple[int, str]]:
        return children_of(self.master) if self.master else []

    def smtpd_pids(self) -> list[int]:
        return [pid for pid, comm in self.processes() if comm == "smtpd"]

    def cpu(self) -> tuple[float, float]:
        """CPU of the whole instance: master, its live children, and its reaped children."""
        total = cpu_seconds(self.master, children=True)
        for pid, _ in self.processes():
            total = add(total, cpu_seconds(pid, children=True))
        return total

    def stop(self) -> None:
        if not self.started:
            return
        leftovers = [pid for pid, _ in self.processes()]
        run(["postfix", "-c", str(self.etc), "stop"], 60, check=False, quiet=True)
        self.started = False
        if self.master and not wait_until(lambda: proc_stat(self.master) is None, 20, 0.1):
            os.kill(self.master, signal.SIGKILL)
        # The master tells its children to go; make sure they have, one pid at a time.
        if not wait_until(lambda: all(proc_stat(p) is None for p in leftovers), 30, 0.1):
            for pid in leftovers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


# -- smtp-source ----------------------------------------------------------------

def smtp_source(port: int, sessions: int, messages: int, size: int, timeout: float) -> float:
    """Run smtp-source; its wall time in seconds."""
    cmd = ["smtp-source", "-4", "-d", "-s", str(sessions), "-m", str(messages), "-l", str(size),
           "-M", HELO, "-f", SENDER, "-t", RCPT, f"127.0.0.1:{port}"]
    start = time.monotonic()
    run(cmd, timeout)
    return time.monotonic() - start


# -- scenario 1: throughput ------------------------------------------------------

def throughput_once(server, args, warmup: int) -> dict:
    check_deadline(f"throughput ({server.dir.name})")
    server.start()
    try:
        expected = warmup
        smtp_source(server.port, args.sessions, warmup, args.size, 60)
        if not wait_until(lambda: server_count(server) >= expected, 60):
            raise BenchError(f"{server.dir.name}: warm-up messages not delivered")
        settle()
        is_gmta = isinstance(server, Gmta)
        cpu0, m0, d0 = server.cpu(), machine_cpu(), disk_counters()
        main0 = server.main_thread_cpu() if is_gmta else (0.0, 0.0)
        seconds = smtp_source(server.port, args.sessions, args.messages, args.size, 300)
        cpu1, m1, d1 = server.cpu(), machine_cpu(), disk_counters()
        main1 = server.main_thread_cpu() if is_gmta else (0.0, 0.0)
        expected += args.messages
        user, system = sub(cpu1, cpu0)
        result = {"seconds": seconds, "rate": args.messages / seconds,
                  "cpu_ms_per_msg": (user + system) * 1000 / args.messages,
                  "user_ms_per_msg": user * 1000 / args.messages,
                  "sys_ms_per_msg": system * 1000 / args.messages,
                  "server_cores": (user + system) / seconds,
                  "machine_busy": (m1[0] - m0[0]) / max(1, m1[1] - m0[1]),
                  "disk_writes_per_msg": (d1[0] - d0[0]) / args.messages,
                  "disk_flushes_per_msg": (d1[1] - d0[1]) / args.messages,
                  "disk_flushes_per_s": (d1[1] - d0[1]) / seconds,
                  "disk_ms_per_flush": (d1[2] - d0[2]) / max(1, d1[1] - d0[1])}
        if is_gmta:
            result["main_thread_busy"] = sum(sub(main1, main0)) / seconds
        start_drain = time.monotonic()
        if not wait_until(lambda: server_count(server) >= expected, 180):
            raise BenchError(f"{server.dir.name}: {server_count(server)} of {expected} "
                             "messages arrived")
        drain = time.monotonic() - start_drain
        if isinstance(server, Postfix) and not server.hold:
            # Until the last message is in the Maildir: the same end state as gmta's 250.
            cpu2 = server.cpu()
            result["to_maildir_rate"] = args.messages / (seconds + drain)
            result["cpu_ms_per_msg_to_maildir"] = sum(sub(cpu2, cpu0)) * 1000 / args.messages
        return result
    finally:
        server.stop()


def server_count(server) -> int:
    return server.delivered() if isinstance(server, Postfix) else count_files(server.maildir_new)


def scenario_throughput(args, work: Path, pf_port: int, results: dict, phase: str) -> None:
    """Phase "receive": gmta and Postfix-hold, alternating. Phase "deliver": Postfix
    delivering into the Maildir, after every other file-creating run, because its
    deletions of delivered queue files slow down the creation of new files for
    the next minutes on this file system (see bench/README.md)."""
    kinds = ["gmta", "postfix-hold"] if phase == "receive" else ["postfix"]
    workers = f", gmta with workers {args.workers}" if args.workers > 1 and phase == "receive" \
        else ""
    say(f"\n== throughput ({' and '.join(kinds)}{workers}): smtp-source -d -s {args.sessions} "
        f"-m {args.messages} -l {args.size}, {args.rounds} rounds")
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for n in range(args.rounds):
        order = kinds if n % 2 == 0 else list(reversed(kinds))
        for kind in order:
            label = f"tp{n}-{kind}"
            if kind == "gmta":
                server = Gmta(work, label, args.gmta_python, workers=args.workers)
            else:
                server = Postfix(work, label, pf_port, hold=kind == "postfix-hold")
            r = throughput_once(server, args, warmup=args.warmup)
            runs[kind].append(r)
            extra = (f", {r['to_maildir_rate']:.0f} msg/s until all in the Maildir"
                     if "to_maildir_rate" in r else "")
            main = (f", main thread {r['main_thread_busy'] * 100:.0f}% busy"
                    if "main_thread_busy" in r else "")
            say(f"  round {n + 1} {kind:13s} {r['rate']:7.0f} msg/s  ({r['seconds']:.2f} s, "
                f"server CPU {r['user_ms_per_msg']:.3f} user + {r['sys_ms_per_msg']:.3f} sys "
                f"ms/msg = {r['server_cores']:.2f} cores{main}, "
                f"machine {r['machine_busy'] * 100:.0f}% busy, disk "
                f"{r['disk_flushes_per_msg']:.2f} flushes/msg = {r['disk_flushes_per_s']:.0f}/s"
                f"{extra})")
    tp = results.setdefault("throughput", {})
    for k, v in runs.items():
        tp[k] = {"runs": v, "median_rate": statistics.median(x["rate"] for x in v)}


def gmta_variant_runs(args, work: Path, label: str, target: str = "&mailboxes",
                      variant: dict[str, str] | None = None) -> dict:
    """Throughput of a gmta variant (same load as scenario 1); never in a ratio."""
    runs = []
    for n in range(args.rounds if label == "dummy" else min(args.rounds, 3)):
        server = Gmta(work, f"{label}{n}", args.gmta_python, target=target, variant=variant,
                      workers=args.workers)
        check_deadline(f"{label} throughput")
        server.start()
        try:
            smtp_source(server.port, args.sessions, args.warmup, args.size, 60)
            settle()
            cpu0, main0, d0 = server.cpu(), server.main_thread_cpu(), disk_counters()
            seconds = smtp_source(server.port, args.sessions, args.messages, args.size, 300)
            cpu, main = sum(sub(server.cpu(), cpu0)), sum(sub(server.main_thread_cpu(), main0))
            d1 = disk_counters()
            if target != "dummy" and count_files(server.maildir_new) != args.warmup + args.messages:
                raise BenchError(f"{label}: {count_files(server.maildir_new)} messages stored")
        finally:
            server.stop()
        r = {"seconds": seconds, "rate": args.messages / seconds,
             "cpu_ms_per_msg": cpu * 1000 / args.messages, "server_cores": cpu / seconds,
             "main_thread_busy": main / seconds,
             "disk_flushes_per_msg": (d1[1] - d0[1]) / args.messages}
        runs.append(r)
        say(f"  round {n + 1} {label:18s} {r['rate']:7.0f} msg/s  (server CPU "
            f"{r['cpu_ms_per_msg']:.3f} ms/msg = {r['server_cores']:.2f} cores, main thread "
            f"{r['main_thread_busy'] * 100:.0f}% busy, disk {r['disk_flushes_per_msg']:.2f} "
            "flushes/msg)")
    return {"runs": runs, "median_rate": statistics.median(x["rate"] for x in runs)}


def scenario_dummy(args, work: Path, results: dict) -> None:
    """gmta with deliver_to dummy: the same load without any disk work (not in a ratio)."""
    say("\n== gmta with deliver_to dummy (no disk; for 'where does the time go')")
    results["dummy"] = gmta_variant_runs(args, work, "dummy", target="dummy")


def scenario_experiments(args, work: Path, results: dict) -> None:
    """gmta's target.maildir with one thing changed (bench/gmta-variant; not in a ratio)."""
    say("\n== experiments: gmta target.maildir with one thing changed (for 'where does the "
        "time go')")
    out = {}
    variants = [("pool-20-threads", {"GMTA_BENCH_POOL": "20"}),
                ("pool-5-threads", {"GMTA_BENCH_POOL": "5"}),
                ("switch-interval-0.5ms", {"GMTA_BENCH_SWITCH": "0.0005"}),
                ("inline-no-threadpool", {"GMTA_BENCH_INLINE": "1"}),
                ("no-fsync", {"GMTA_BENCH_NOFSYNC": "1"})]
    only = [v.strip() for v in args.experiments.split(",") if v.strip()]
    for label, variant in variants:
        if only and label not in only:
            continue
        out[label] = gmta_variant_runs(args, work, label, variant=variant)
    results["experiments"] = out


# -- scenario 2: idle sessions ----------------------------------------------------

async def _open_sessions(port: int, count: int, budget: float, measure) -> tuple[int, list]:
    """Open *count* sessions (banner + EHLO), call *measure()* while all are idle, close them."""
    sem = asyncio.Semaphore(100)      # connections being set up at once
    writers: list[asyncio.StreamWriter] = []
    errors: list[str] = []

    async def one() -> None:
        async with sem:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), 20)
            writers.append(writer)
            line = await asyncio.wait_for(reader.readline(), 20)
            if not line.startswith(b"220"):
                raise BenchError(f"banner {line!r}")
            writer.write(f"EHLO {HELO}\r\n".encode())
            await writer.drain()
            while True:
                line = await asyncio.wait_for(reader.readline(), 20)
                if line.startswith(b"250 "):
                    return
                if not line.startswith(b"250-"):
                    raise BenchError(f"EHLO reply {line!r}")

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=budget)
    for task in pending:
        task.cancel()
    ok = 0
    for task in done:
        if task.exception() is None:
            ok += 1
        elif len(errors) < 5:
            errors.append(repr(task.exception()))
    await asyncio.sleep(2)            # let every server-side session settle into its idle read
    measured = measure()
    for writer in writers:
        writer.close()
    await asyncio.sleep(0.5)
    return ok, [measured, errors]


def idle_sessions(port: int, count: int, measure) -> tuple[int, dict, list]:
    ok, (measured, errors) = asyncio.run(_open_sessions(port, count, 180, measure))
    return ok, measured, errors


def one_session(port: int) -> None:
    """A complete session (banner, EHLO, QUIT), so the baseline has run every code path."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rwb")
        f.readline()
        f.write(f"EHLO {HELO}\r\n".encode())
        f.flush()
        for _ in range(50):           # bounded: a server that closes sends b"" forever
            if f.readline().startswith(b"250 "):
                break
        f.write(b"QUIT\r\n")
        f.flush()
        f.readline()


def gmta_memory(server: Gmta) -> dict:
    rollup = rollup_kib(server.pid)
    return {"rss": status_kib(server.pid, "VmRSS"), "pss": rollup["Pss"], "uss": rollup["Uss"]}


def postfix_memory(server: Postfix) -> dict:
    pids = server.smtpd_pids()
    rss = pss = uss = 0
    for pid in pids:
        rollup = rollup_kib(pid)
        rss += rollup["Rss"]
        pss += rollup["Pss"]
        uss += rollup["Uss"]
    return {"rss": rss, "pss": pss, "uss": uss, "smtpd": len(pids)}


def scenario_idle(args, work: Path, pf_port: int, results: dict) -> None:
    say(f"\n== idle sessions: {args.idle} sessions left idle after banner + EHLO")
    out = {}
    for kind in ("gmta", "postfix"):
        check_deadline(f"idle ({kind})")
        if kind == "gmta":
            server, measure = Gmta(work, "idle-gmta", args.gmta_python), gmta_memory
        else:
            server, measure = Postfix(work, "idle-postfix", pf_port), postfix_memory
        server.start()
        try:
            one_session(server.port)
            time.sleep(1)
            before = measure(server)
            ok, after, errors = idle_sessions(server.port, args.idle,
                                              lambda m=measure, srv=server: m(srv))
        finally:
            server.stop()
        if ok < args.idle:
            say(f"  {kind}: only {ok} of {args.idle} sessions opened: {errors}")
        if ok == 0:
            raise BenchError(f"{kind}: no idle session could be opened: {errors}")
        r = {"sessions": ok, "before": before, "after": after,
             "rss_kib_per_session": (after["rss"] - before["rss"]) / ok,
             "pss_kib_per_session": (after["pss"] - before["pss"]) / ok,
             "uss_kib_per_session": (after["uss"] - before["uss"]) / ok}
        out[kind] = r
        smtpd = f", {after['smtpd']} smtpd processes" if "smtpd" in after else ""
        say(f"  {kind:8s} {ok} sessions: RSS {before['rss'] / KIB:.1f} -> "
            f"{after['rss'] / KIB:.1f} MiB = {r['rss_kib_per_session']:.1f} KiB/session; "
            f"private (USS) {r['uss_kib_per_session']:.1f}, PSS {r['pss_kib_per_session']:.1f} "
            f"KiB/session{smtpd}")
    results["idle"] = out


# -- scenario 3: one big message ---------------------------------------------------------

def scenario_big(args, work: Path, pf_port: int, results: dict) -> None:
    size = args.big_mib * MIB
    say(f"\n== one {args.big_mib} MiB message: smtp-source -s 1 -m 1 -l {size}, "
        f"{args.big_rounds} rounds")
    runs: dict[str, list[dict]] = {"gmta": [], "postfix": []}
    for n in range(args.big_rounds):
        order = ["gmta", "postfix"] if n % 2 == 0 else ["postfix", "gmta"]
        for kind in order:
            check_deadline(f"big message ({kind})")
            if kind == "gmta":
                server = Gmta(work, f"big{n}-gmta", args.gmta_python)
            else:
                server = Postfix(work, f"big{n}-postfix", pf_port)
            server.start()
            try:
                # A small message first, so the baseline includes every code path.
                smtp_source(server.port, 1, 1, 1024, 30)
                if not wait_until(lambda srv=server: server_count(srv) >= 1, 30):
                    raise BenchError(f"{kind}: the small message did not arrive")
                settle()
                r: dict = {}
                if kind == "gmta":
                    r["hwm_before_kib"] = status_kib(server.pid, "VmHWM")
                    r["rss_before_kib"] = status_kib(server.pid, "VmRSS")
                r["seconds"] = smtp_source(server.port, 1, 1, size, 120)
                t0 = time.monotonic()
                if not wait_until(lambda srv=server: server_count(srv) >= 2, 120):
                    raise BenchError(f"{kind}: the big message did not arrive")
                if kind == "gmta":
                    r["hwm_after_kib"] = status_kib(server.pid, "VmHWM")
                    r["growth_mib"] = (r["hwm_after_kib"] - r["hwm_before_kib"]) / KIB
                    say(f"  round {n + 1} gmta     {r['seconds']:.2f} s to the 250, peak RSS "
                        f"{r['hwm_before_kib'] / KIB:.1f} -> {r['hwm_after_kib'] / KIB:.1f} MiB "
                        f"(+{r['growth_mib']:.1f} MiB)")
                else:
                    r["to_maildir_seconds"] = r["seconds"] + time.monotonic() - t0
                    peaks = {}
                    for pid, comm in server.processes():
                        if comm in ("smtpd", "cleanup", "virtual"):
                            try:
                                peaks[comm] = max(peaks.get(comm, 0), status_kib(pid, "VmHWM"))
                            except (BenchError, FileNotFoundError):
                                pass
                    r["peak_kib"] = peaks
                    say(f"  round {n + 1} postfix  {r['seconds']:.2f} s to the 250, "
                        f"{r['to_maildir_seconds']:.2f} s until in the Maildir; largest peak RSS "
                        "per process: " + ", ".join(f"{k} {v / KIB:.1f} MiB"
                                                    for k, v in sorted(peaks.items())))
                runs[kind].append(r)
            finally:
                server.stop()
    results["big"] = {
        "gmta": {"runs": runs["gmta"],
                 "median_seconds": statistics.median(r["seconds"] for r in runs["gmta"]),
                 "max_growth_mib": max(r["growth_mib"] for r in runs["gmta"])},
        "postfix": {"runs": runs["postfix"],
                    "median_seconds": statistics.median(r["seconds"] for r in runs["postfix"])}}


# -- scenario 4: end-to-end relay ---------------------------------------------------------

def tmpfs_dir() -> Path | None:
    """``/dev/shm`` if it is a writable tmpfs (for the sink's files), else None."""
    try:
        with open("/proc/mounts") as f:
            mounts = {fields[1]: fields[2] for fields in (line.split() for line in f)
                      if len(fields) > 2}
    except OSError:
        return None
    shm = Path("/dev/shm")
    return shm if mounts.get(str(shm)) == "tmpfs" and os.access(shm, os.W_OK) else None


class Sink:
    """Postfix's ``smtp-sink`` on 127.0.0.1: the relays' downstream. It appends every
    transaction it accepts to one dump file (``-D``), where the benchmark counts the
    Message-Ids that arrived (smtp-source gives each message its own).

    Its files are on a tmpfs when there is one (``--sink-dir``): for every
    transaction smtp-sink creates a capture file next to the dump file and
    unlinks it at once. On this machine's ext4 (no journal) each of those
    costs an inode allocation that gets slower the more files were deleted in
    the last minutes (``recently_deleted()``), in the block groups of the
    relays' own queues: in a later relay round perf found smtp-sink spending
    28% of the machine there (bench/README.md). The judge should cost both
    relays the same, small, amount in every round.
    """

    def __init__(self, work: Path, label: str, files_dir: Path | None = None):
        self.dir = work / label
        self.dir.mkdir(parents=True)
        # The pid file for bench/run's exit trap stays in the work directory.
        self.files_dir = Path(tempfile.mkdtemp(prefix=f"gmta-bench-{label}.",
                                               dir=files_dir)) if files_dir else self.dir
        for path in {self.dir, self.files_dir}:
            os.chmod(path, 0o777)      # smtp-sink writes as nobody
        self.dump = self.files_dir / "dump"
        self.port = free_port(0)
        self.proc: subprocess.Popen | None = None
        self._offset = 0
        self._carry = b""
        self.ids: dict[bytes, int] = {}

    def start(self) -> None:
        # 256: the listen backlog; -u nobody: smtp-sink refuses to run as root.
        cmd = ["smtp-sink", "-u", "nobody", "-D", str(self.dump), f"127.0.0.1:{self.port}", "256"]
        record(cmd)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        # bench/run's exit trap stops any sink listed here that is still running.
        with (self.dir.parent / "sink-pids").open("a") as f:
            f.write(f"{self.proc.pid}\n")
        if not wait_until(lambda: listens(self.port), 15, 0.05):
            raise BenchError("smtp-sink did not start")

    def count(self) -> int:
        """Transactions arrived so far (reads only what was appended since the last call)."""
        try:
            with open(self.dump, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        self._offset += len(data)
        lines = (self._carry + data).split(b"\n")
        self._carry = lines.pop()          # an unfinished last line: next time
        for line in lines:
            if line[:11].lower() == b"message-id:":
                key = line[11:].strip()
                self.ids[key] = self.ids.get(key, 0) + 1
        return sum(self.ids.values())

    def unique(self) -> int:
        return len(self.ids)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        if self.files_dir != self.dir:
            shutil.rmtree(self.files_dir, ignore_errors=True)


def relay_once(kind: str, args, work: Path, label: str, pf_port: int) -> dict:
    """One relay measurement: smtp-source -> server -> smtp-sink, until the sink has all."""
    check_deadline(f"relay ({label})")
    sink = Sink(work, f"{label}-sink", args.sink_dir)
    sink.start()
    if kind == "gmta":
        server = Gmta(work, label, args.gmta_python, sink_port=sink.port,
                      workers=args.workers)
    else:
        server = Postfix(work, label, pf_port, relay_port=sink.port)
    try:
        server.start()
        warmup = args.warmup
        smtp_source(server.port, args.sessions, warmup, args.size, 60)
        if not wait_until(lambda: sink.count() >= warmup, 120, 0.1):
            raise BenchError(f"{label}: {sink.count()} of {warmup} warm-up messages at the sink")
        settle()
        expected = warmup + args.relay_messages
        cpu0, m0, d0 = server.cpu(), machine_cpu(), disk_counters()
        start = time.monotonic()
        received = smtp_source(server.port, args.sessions, args.relay_messages, args.size, 300)
        if not wait_until(lambda: sink.count() >= expected, 300, 0.1):
            raise BenchError(f"{label}: {sink.count()} of {expected} messages at the sink")
        seconds = time.monotonic() - start
        cpu1, m1, d1 = server.cpu(), machine_cpu(), disk_counters()
        # Late duplicates would come now, after the count was reached.
        time.sleep(1)
        total = sink.count()
    finally:
        server.stop()
        sink.stop()
    n = args.relay_messages
    # A relay that retries (a 4xx or a lost connection) is slow for a reason of its
    # own; the count says whether that happened.
    if kind == "gmta":
        text = (server.dir / "gmta.log").read_text(errors="replace")
        deferred = text.count("event=deferred")
    else:
        deferred = server.maillog().count("status=deferred")
    return {"seconds": seconds, "deferred_attempts": deferred, "rate": n / seconds,
            "receive_seconds": received,
            "receive_rate": n / received, "at_sink": total, "unique_at_sink": sink.unique(),
            "lost": expected - sink.unique(), "duplicates": total - sink.unique(),
            "cpu_ms_per_msg": sum(sub(cpu1, cpu0)) * 1000 / n,
            "machine_busy": (m1[0] - m0[0]) / max(1, m1[1] - m0[1]),
            "disk_flushes_per_msg": (d1[1] - d0[1]) / n}


def scenario_relay(args, work: Path, pf_port: int, results: dict) -> None:
    """smtp-source -> gmta (target.queue, target.smtp) -> smtp-sink, against Postfix
    relaying (relayhost) to a sink of its own, alternating, median of --relay-rounds."""
    say(f"\n== relay: smtp-source -d -s {args.sessions} -m {args.relay_messages} -l {args.size} "
        f"-> server -> smtp-sink, {args.relay_rounds} rounds; the sink's files in "
        f"{args.sink_dir or 'the scratch directory'}")
    runs: dict[str, list[dict]] = {"gmta": [], "postfix": []}
    for n in range(args.relay_rounds):
        for kind in (["gmta", "postfix"] if n % 2 == 0 else ["postfix", "gmta"]):
            r = relay_once(kind, args, work, f"relay{n}-{kind}", pf_port)
            runs[kind].append(r)
            say(f"  round {n + 1} {kind:8s} {r['rate']:7.0f} msg/s end to end ({r['seconds']:.2f} s; "
                f"received at {r['receive_rate']:.0f} msg/s), server CPU "
                f"{r['cpu_ms_per_msg']:.3f} ms/msg, machine {r['machine_busy'] * 100:.0f}% busy, "
                f"disk {r['disk_flushes_per_msg']:.2f} flushes/msg; at the sink "
                f"{r['at_sink']} (lost {r['lost']}, duplicates {r['duplicates']}); "
                f"{r['deferred_attempts']} deferred attempts")
            if r["lost"] or r["duplicates"]:
                say(f"  !! {kind}: {r['lost']} lost and {r['duplicates']} duplicated messages")
    results["relay"] = {k: {"runs": v, "median_rate": statistics.median(x["rate"] for x in v),
                            "lost": sum(x["lost"] for x in v),
                            "duplicates": sum(x["duplicates"] for x in v)}
                        for k, v in runs.items()}


# -- scenario 5: start-up with a large deferred queue -------------------------------------

def gmta_startup(server: Gmta, expect_entries: int) -> dict:
    """Start *server*; seconds until it listens and until its start-up scan is done,
    a session's banner wait during that scan, and its memory after the scan."""
    log = server.dir / "gmta.log"
    t0 = time.monotonic()
    server.start()
    listening = time.monotonic() - t0
    # A client arriving while the queue is being scanned (the hub must not block).
    t1 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.makefile("rb").readline()
    banner = time.monotonic() - t1
    scanned: dict[str, str] = {}

    def scan_done() -> bool:
        for line in log.read_text(errors="replace").splitlines():
            if "event=scanned" in line and "startup=yes" in line:
                scanned.update(re.findall(r"(\w+)=(\S+)", line))
                return True
        return False

    if not wait_until(scan_done, 300, 0.02):
        raise BenchError("gmta's start-up scan did not finish:\n" + log.read_text()[-2000:])
    scan = time.monotonic() - t0
    if int(scanned["entries"]) != expect_entries:
        raise BenchError(f"the scan found {scanned['entries']} entries, not {expect_entries}")
    time.sleep(2)      # let anything the scan allocated settle
    return {"listening_s": listening, "scan_done_s": scan, "banner_during_scan_s": banner,
            "entries": int(scanned["entries"]), "in_window": int(scanned["in_window"]),
            "rss_kib": status_kib(server.pid, "VmRSS"), "hwm_kib": status_kib(server.pid, "VmHWM")}


def scenario_deferred(args, work: Path, results: dict) -> None:
    """gmta's start-up on a queue of --deferred deferred messages (written by
    bench/fill-queue through gmta's store), against the same gmta on an empty queue."""
    say(f"\n== deferred: gmta start-up with {args.deferred} deferred messages in its queue")
    check_deadline("deferred")
    dead_port = free_port(0)      # nobody listens: the entries would stay deferred
    out = {}
    for label, count in (("empty", 0), ("full", args.deferred)):
        server = Gmta(work, f"deferred-{label}", args.gmta_python, sink_port=dead_port)
        if count:
            t = time.monotonic()
            run([args.gmta_python, str(BENCH / "fill-queue"), str(server.state / "outbound"),
                 str(count), str(args.size)], 900)
            out["fill_seconds"] = time.monotonic() - t
            settle()
        try:
            out[label] = gmta_startup(server, count)
        finally:
            server.stop()
        r = out[label]
        say(f"  {label:5s} queue ({r['entries']} entries): listening after "
            f"{r['listening_s']:.2f} s, start-up scan done after {r['scan_done_s']:.2f} s "
            f"({r['in_window']} in the scheduler's window), banner during the scan after "
            f"{r['banner_during_scan_s'] * 1000:.0f} ms, RSS {r['rss_kib'] / KIB:.1f} MiB "
            f"(peak {r['hwm_kib'] / KIB:.1f} MiB)")
    out["rss_growth_mib"] = (out["full"]["rss_kib"] - out["empty"]["rss_kib"]) / KIB
    out["hwm_growth_mib"] = (out["full"]["hwm_kib"] - out["empty"]["hwm_kib"]) / KIB
    results["deferred"] = out


# -- where the time goes -----------------------------------------------------------------

def fsync_latency(work: Path, count: int = 200) -> dict:
    """What one durable 1 KiB file costs on this disk: write, fsync file, fsync directory."""
    d = work / f"fsync-probe-{time.monotonic_ns()}"
    d.mkdir()
    times = []
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for n in range(count):
            t = time.perf_counter()
            fd = os.open(d / f"f{n}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, b"x" * 1400)
            os.fsync(fd)
            os.close(fd)
            os.fsync(dfd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(dfd)
    times.sort()
    return {"median_ms": times[len(times) // 2] * 1000, "p90_ms": times[int(len(times) * .9)] * 1000}


def scenario_profile(args, work: Path, results: dict) -> None:
    """One gmta throughput run under py-spy; where the samples of each thread fall."""
    if not args.py_spy:
        return
    say("\n== profile: gmta (target.maildir) under py-spy, one throughput run (not in the table)")
    check_deadline("profile")
    server = Gmta(work, "profile", args.gmta_python)
    raw = work / "py-spy.txt"
    server.start()
    try:
        smtp_source(server.port, args.sessions, args.warmup, args.size, 60)
        settle()
        cmd = [args.py_spy, "record", "--pid", str(server.pid), "--rate", "200", "--threads",
               "--nonblocking", "--format", "raw", "--output", str(raw)]
        record(cmd)
        spy = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        seconds = smtp_source(server.port, args.sessions, args.messages, args.size, 300)
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate(timeout=5)
    finally:
        server.stop()
    if not raw.exists():
        say(f"  py-spy wrote nothing: {err.strip()[-500:]}")
        return
    summary = summarise_profile(raw.read_text(), server.pid)
    summary["rate_under_profiler"] = args.messages / seconds
    summary["seconds"] = seconds
    results["profile"] = summary
    if args.profile_out:
        shutil.copy(raw, args.profile_out)
    rate = 200 * seconds    # samples per thread if it were busy all the time
    say(f"  {summary['rate_under_profiler']:.0f} msg/s under the profiler, {seconds:.1f} s; "
        f"samples where a thread was not idle (out of about {rate:.0f} per thread):")
    for thread, n in summary["threads"]:
        role = "main thread (hub and greenlets)" if thread == summary["main_thread"] \
            else "threadpool"
        say(f"    {n:6d}  {thread} {role}")
    say("  main thread, by own time (top 20):")
    for name, n in summary["main_self"]:
        say(f"    {100 * n / summary['main_total']:5.1f}%  {name}")
    say("  main thread, by area (inclusive; areas overlap):")
    for name, n in summary["main_inclusive"]:
        say(f"    {100 * n / summary['main_total']:5.1f}%  {name}")
    say("  threadpool threads, by own time (top 8):")
    for name, n in summary["pool_self"]:
        say(f"    {100 * n / summary['pool_total']:5.1f}%  {name}{source_line(name)}")


def perf_lines(data: Path, *options: str) -> list[tuple[float, str]]:
    """(percent of all samples, name) from ``perf report --stdio`` with *options*."""
    out = run(["perf", "report", "-i", str(data), "--stdio", "-g", "none",
               "--percentage", "absolute", *options], 120, check=False, quiet=True,
              show=False).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(?:[\d.]+%\s+)?(.*\S)", line)
        if m and not line.lstrip().startswith("#"):
            rows.append((float(m.group(1)), m.group(2)))
    return rows


def scenario_perf(args, work: Path, results: dict) -> None:
    """One gmta throughput run with the whole machine sampled by perf: how much of the
    two CPUs gmta takes, and which system calls its kernel time is in."""
    if not args.perf:
        return
    say("\n== perf: the whole machine during one gmta (target.maildir) run (not in the table)")
    check_deadline("perf")
    server = Gmta(work, "perf", args.gmta_python)
    data = work / "perf.data"
    server.start()
    try:
        smtp_source(server.port, args.sessions, args.warmup, args.size, 60)
        settle()
        cmd = ["perf", "record", "-a", "-g", "-o", str(data)]
        record(cmd)
        perf = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(1)
        seconds = smtp_source(server.port, args.sessions, args.messages, args.size, 300)
        perf.send_signal(signal.SIGINT)
        try:
            perf.wait(60)
        except subprocess.TimeoutExpired:
            perf.kill()
            perf.wait(5)
    finally:
        server.stop()
    if not data.exists():
        say("  perf wrote nothing")
        return
    # gmta's threads are all "python3"; bench.py, also python3, sleeps in subprocess.run.
    record(["perf", "report", "-i", "$WORK/perf.data", "--stdio", "-g", "none", "--percentage",
            "absolute", "--sort", "comm|dso|sym", "[--children] [--comm python3]"])
    by_comm = perf_lines(data, "--no-children", "--sort", "comm")
    gmta_share = sum(p for p, name in by_comm if name == "python3")
    idle = sum(p for p, name in by_comm if name == "swapper")
    source = sum(p for p, name in by_comm if name == "smtp-source")
    dsos = perf_lines(data, "--no-children", "--sort", "dso", "--comm", "python3")
    python = sum(p for p, name in dsos if "libpython" in name or name.startswith("python"))
    user = sum(p for p, name in dsos if not name.startswith("[k"))
    syms = perf_lines(data, "--children", "--sort", "sym", "--comm", "python3")
    calls = [(p, name.split("] ", 1)[1]) for p, name in syms
             if "] __x64_sys_" in name or name.endswith("] futex_wake")]
    out = {"rate": args.messages / seconds, "gmta": gmta_share, "idle": idle,
           "smtp_source": source, "gmta_user": user, "gmta_python": python,
           "gmta_kernel": gmta_share - user, "calls": calls[:10]}
    results["perf"] = out
    say(f"  {out['rate']:.0f} msg/s under perf. Shares of all samples (2 CPUs x the run):")
    say(f"    gmta {gmta_share:.1f}% (user space {user:.1f}%, of which the interpreter "
        f"libpython {python:.1f}%; kernel {out['gmta_kernel']:.1f}%); smtp-source {source:.1f}%; "
        f"idle {idle:.1f}%; other {100 - gmta_share - idle - source:.1f}%")
    say("  gmta's kernel time by system call (inclusive; perf's kernel stacks are not always "
        "complete), and futex wake-ups:")
    for p, name in calls[:10]:
        say(f"    {p:5.1f}%  {name}")


def source_line(frame: str) -> str:
    """The text of a gmta source line named in a frame such as "f (gmta/x.py:12)"."""
    m = re.search(r"\((gmta/[^:()]+):(\d+)\)$", frame)
    if not m or not (ROOT / m.group(1)).exists():
        return ""
    lines = (ROOT / m.group(1)).read_text().splitlines()
    number = int(m.group(2))
    return f"  [{lines[number - 1].strip()}]" if 0 < number <= len(lines) else ""


def summarise_profile(text: str, pid: int) -> dict:
    """py-spy's raw stacks ("thread (TID);frame;...;leaf COUNT") summed per thread,
    per leaf function, and for the main thread also by area of the code."""
    main_thread = f"thread ({pid})"      # the thread that runs the hub and every greenlet
    threads: dict[str, int] = {}
    main_self: dict[str, int] = {}
    pool_self: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    markers = {
        "logging (gmta/log.py and the logging package)": ("gmta/log.py", "logging/__init__.py"),
        "SMTP protocol machine (gmta/proto)": ("gmta/proto/",),
        "session driver (gmta/net/session.py)": ("gmta/net/session.py",),
        "gevent socket reads and writes": ("gevent/_socket", "socket.py"),
        "hand-off to the threadpool (in_threadpool, waiting excluded)": ("in_threadpool",),
        "message buffer (gmta/buffer.py)": ("gmta/buffer.py",),
        "endpoint (gmta/endpoint/smtp.py)": ("gmta/endpoint/smtp.py",),
        "pipeline (gmta/pipeline)": ("gmta/pipeline/",),
    }
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        n = int(count)
        threads[frames[0]] = threads.get(frames[0], 0) + n
        leaf = frames[-1] if len(frames) > 1 else "(no Python frame: the gevent hub, libev)"
        if frames[0] == main_thread:
            # "func (file:line)" -> "func (file)": lines of one function counted together.
            leaf = leaf.rsplit(":", 1)[0] + ")" if ":" in leaf else leaf
            main_self[leaf] = main_self.get(leaf, 0) + n
            for name, needles in markers.items():
                if any(needle in frame for frame in frames[1:] for needle in needles):
                    inclusive[name] = inclusive.get(name, 0) + n
        else:
            pool_self[leaf] = pool_self.get(leaf, 0) + n
    main_total = threads.get(main_thread, 0)
    return {
        "total": sum(threads.values()),
        "threads": sorted(threads.items(), key=lambda kv: -kv[1]),
        "main_thread": main_thread,
        "main_total": max(1, main_total),
        "main_self": sorted(main_self.items(), key=lambda kv: -kv[1])[:20],
        "main_inclusive": sorted(inclusive.items(), key=lambda kv: -kv[1]),
        "pool_total": max(1, sum(pool_self.values())),
        "pool_self": sorted(pool_self.items(), key=lambda kv: -kv[1])[:8],
    }


# -- report ----------------------------------------------------------------------------

def ratio(a: float, b: float) -> str:
    """*a*/*b* for the report's ratio column ("-" when *b* is 0)."""
    return f"{a / b:.2f}" if b else "-"


def report(args, results: dict) -> None:
    rows = []

    if "throughput" in results:
        tp = results["throughput"]
        g = tp["gmta"]["median_rate"]
        p = tp["postfix"]["median_rate"]
        h = tp["postfix-hold"]["median_rate"]
        fastest = max(p, h)
        rows.append((f"throughput, msg/s (median of {args.rounds}; vs Postfix queue + "
                     "virtual(8) Maildir)", f"{g:.0f}", f"{p:.0f}", ratio(g, p), "gmta/Postfix ≥ 1.5"))
        rows.append(("throughput, msg/s (vs Postfix queue only, hold)", f"{g:.0f}", f"{h:.0f}",
                     ratio(g, h), "gmta/Postfix ≥ 1.5"))
        def med(kind, key):
            return statistics.median(r[key] for r in tp[kind]["runs"])
        rows.append(("  server CPU per message while receiving, ms (median)",
                     f"{med('gmta', 'cpu_ms_per_msg'):.3f}",
                     f"{med('postfix', 'cpu_ms_per_msg'):.3f}"
                     f" / {med('postfix-hold', 'cpu_ms_per_msg'):.3f} hold",
                     ratio(med('gmta', 'cpu_ms_per_msg'), med('postfix', 'cpu_ms_per_msg')), ""))
        rows.append(("  disk flushes per message while receiving (median)",
                     f"{med('gmta', 'disk_flushes_per_msg'):.2f}",
                     f"{med('postfix', 'disk_flushes_per_msg'):.2f}"
                     f" / {med('postfix-hold', 'disk_flushes_per_msg'):.2f} hold", "", ""))
        rows.append(("  Postfix until the last message is in the Maildir, msg/s", "",
                     f"{med('postfix', 'to_maildir_rate'):.0f}", "", ""))
        results["headline_ratio"] = g / fastest
    if "dummy" in results:
        rows.append(("  gmta with deliver_to dummy (no disk), msg/s",
                     f"{results['dummy']['median_rate']:.0f}", "", "", "not a target"))
    for label, r in results.get("experiments", {}).items():
        rows.append((f"  gmta target.maildir, {label} (bench/gmta-variant), msg/s",
                     f"{r['median_rate']:.0f}", "", "", "not a target"))
    if "idle" in results:
        gi, pi = results["idle"]["gmta"], results["idle"]["postfix"]
        rows.append((f"idle session, RSS growth KiB/session ({gi['sessions']}/{pi['sessions']} "
                     "sessions; Postfix: sum over smtpd)", f"{gi['rss_kib_per_session']:.1f}",
                     f"{pi['rss_kib_per_session']:.1f}",
                     ratio(gi["rss_kib_per_session"], pi["rss_kib_per_session"]), "gmta ≤ 12"))
        rows.append(("idle session, private memory (USS) growth KiB/session",
                     f"{gi['uss_kib_per_session']:.1f}", f"{pi['uss_kib_per_session']:.1f}",
                     ratio(gi["uss_kib_per_session"], pi["uss_kib_per_session"]), ""))
        rows.append(("idle session, Postfix PSS growth KiB/session (shared pages split)", "",
                     f"{pi['pss_kib_per_session']:.1f}", "", ""))
    if "big" in results:
        bg, bp = results["big"]["gmta"], results["big"]["postfix"]
        rows.append((f"{args.big_mib} MiB message, peak RSS growth MiB (max of {args.big_rounds})",
                     f"{bg['max_growth_mib']:.1f}", "", "", "gmta ≤ 8"))
        rows.append((f"{args.big_mib} MiB message, seconds to the 250 (median of {args.big_rounds})",
                     f"{bg['median_seconds']:.2f}", f"{bp['median_seconds']:.2f}",
                     ratio(bg["median_seconds"], bp["median_seconds"]), "gmta/Postfix ≤ 2"))
    if "remote" in results:
        import remote
        rows += remote.report_rows(args, results)
    if "relay" in results:
        rg, rp = results["relay"]["gmta"], results["relay"]["postfix"]
        rows.append((f"relay end to end, msg/s (smtp-source -> server -> smtp-sink; median of "
                     f"{args.relay_rounds})", f"{rg['median_rate']:.0f}", f"{rp['median_rate']:.0f}",
                     ratio(rg["median_rate"], rp["median_rate"]), "gmta/Postfix ≥ 1.5"))
        rows.append(("  relay: lost / duplicated at the sink (all rounds)",
                     f"{rg['lost']} / {rg['duplicates']}", f"{rp['lost']} / {rp['duplicates']}",
                     "", "0 / 0"))
    if "deferred" in results:
        d = results["deferred"]
        rows.append((f"deferred queue of {d['full']['entries']}: seconds until listening "
                     f"(empty queue: {d['empty']['listening_s']:.2f})",
                     f"{d['full']['listening_s']:.2f}", "", "", "seconds"))
        rows.append(("  deferred queue: seconds until the start-up scan is done",
                     f"{d['full']['scan_done_s']:.2f}", "", "", ""))
        rows.append((f"  deferred queue: RSS after the scan, MiB (growth over an empty "
                     f"queue; window {d['full']['in_window']})",
                     f"{d['full']['rss_kib'] / KIB:.1f} (+{d['rss_growth_mib']:.1f})", "", "",
                     "bounded"))
    header = ("figure", "gmta", "Postfix", "gmta/Postfix", "target")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(5)]
    say("\n== results")
    for row in [header, None, *rows]:
        if row is None:
            say("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        else:
            say("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    if "fsync" in results:
        f = results["fsync"]
        e = results.get("fsync_end", f)
        say(f"\nfsync probe (one thread: write 1.4 KiB, fsync the file, fsync the directory): "
            f"median {f['median_ms']:.2f} ms, p90 {f['p90_ms']:.2f} ms before the scenarios; "
            f"{e['median_ms']:.2f} / {e['p90_ms']:.2f} ms after")
    say("\n== commands")
    for cmd in COMMANDS:
        say(f"  {cmd}")


# -- main --------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, type=Path, help="scratch directory (bench/run makes it)")
    parser.add_argument("--gmta-python", default=sys.executable)
    parser.add_argument("--py-spy", default="", help="py-spy binary: profile one gmta run")
    parser.add_argument("--profile-out", default="", help="keep py-spy's raw stacks here")
    parser.add_argument("--perf", action="store_true",
                        help="sample the machine with perf during one gmta run")
    parser.add_argument("--scenarios",
                        default="throughput,dummy,experiments,idle,big,remote,relay,deferred",
                        help="comma-separated: throughput,dummy,experiments,idle,big,remote,"
                             "relay,deferred")
    parser.add_argument("--experiments", default="",
                        help="only these experiments (comma-separated labels)")
    parser.add_argument("--workers", type=int, default=1,
                        help="gmta's 'workers N' in the throughput, dummy, experiments and relay "
                             "scenarios (idle and big always run one process)")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds")
    parser.add_argument("--big-rounds", type=int, default=3, help="50 MiB message rounds")
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--big-mib", type=int, default=50)
    parser.add_argument("--remote-messages", type=int, default=2000,
                        help="remote: queued messages per run (a multiple of 20)")
    parser.add_argument("--remote-rounds", type=int, default=3, help="remote: rounds")
    parser.add_argument("--remote-timeout", type=float, default=180,
                        help="remote: seconds allowed for one delivery run")
    parser.add_argument("--relay-messages", type=int, default=5000,
                        help="messages per relay round (after --warmup)")
    parser.add_argument("--relay-rounds", type=int, default=3)
    parser.add_argument("--sink-dir", type=Path, default=tmpfs_dir(),
                        help="where the relay's smtp-sink writes its dump and capture files "
                             "(default: /dev/shm when it is a tmpfs, else the scratch "
                             "directory); see Sink")
    parser.add_argument("--deferred", type=int, default=100000,
                        help="deferred messages in the queue of the start-up scenario")
    parser.add_argument("--postfix-port", type=int, default=10025)
    parser.add_argument("--budget", type=float, default=1500, help="seconds for the whole run")
    parser.add_argument("--json", default="", help="write the figures here as JSON")
    args = parser.parse_args()

    DEADLINE[0] = time.monotonic() + args.budget
    WORK[0] = str(args.work)
    DISK_STAT[0] = find_disk(args.work)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit("bench: stopped by a signal"))
    for tool in ("smtp-source", "postfix", "postconf"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run bench/run, which installs it")
    if os.geteuid() != 0:
        raise SystemExit("Postfix's master runs as root: run bench/run as root")
    try:
        grp.getgrnam("postdrop")
        pwd.getpwnam("postfix")
    except KeyError:
        raise SystemExit("the postfix user or the postdrop group is missing (Debian package postfix)")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.idle + 200:
        raise SystemExit(f"open-file limit {soft} is too low for {args.idle} sessions: ulimit -n")

    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    pf_port = free_port(args.postfix_port)
    results: dict = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                                 "postfix": run(["postconf", "-d", "-h", "mail_version"], 30,
                                                quiet=True, show=False).stdout.strip()},
                     "args": {k: str(v) for k, v in vars(args).items()}}
    say(f"gmta from {ROOT} ({args.gmta_python}), Postfix {results['machine']['postfix']} "
        f"on 127.0.0.1:{pf_port}, {os.cpu_count()} CPUs, open-file limit {soft}")
    results["fsync"] = fsync_latency(args.work)
    say(f"fsync probe: median {results['fsync']['median_ms']:.2f} ms")
    started = time.monotonic()
    # Order matters on this machine's file system (ext4 without a journal): every
    # run that creates files goes before the first run that deletes many (Postfix
    # delivering removes its queue files), and the benchmark itself deletes nothing
    # until the end (bench/run removes the scratch directory).
    if "throughput" in scenarios:
        scenario_throughput(args, args.work, pf_port, results, "receive")
    if "dummy" in scenarios:
        scenario_dummy(args, args.work, results)
    if "experiments" in scenarios:
        scenario_experiments(args, args.work, results)
    scenario_profile(args, args.work, results)
    scenario_perf(args, args.work, results)
    if "throughput" in scenarios:
        scenario_throughput(args, args.work, pf_port, results, "deliver")
    if "idle" in scenarios:
        scenario_idle(args, args.work, pf_port, results)
    if "big" in scenarios:
        scenario_big(args, args.work, pf_port, results)
    # Both relays delete every queue file they deliver, so the relay goes after the
    # scenarios that time file creation; the deferred queue (200,000 files) goes last.
    if "relay" in scenarios:
        scenario_relay(args, args.work, pf_port, results)
    if "deferred" in scenarios:
        scenario_deferred(args, args.work, results)
    if "remote" in scenarios:
        # After the relay: both servers delete their queue files after delivering.
        import remote
        remote.scenario_remote(args, args.work, pf_port, results)
    results["fsync_end"] = fsync_latency(args.work)
    results["seconds"] = time.monotonic() - started
    report(args, results)
    say(f"\n(measured in {results['seconds']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
