"""Scenario ``remote`` of bench.py: queue → remote delivery to 20 MX hosts, gmta and Postfix.

20 recipient domains ``dNN.remote.test``, each with one MX record naming its
own host on 127.0.1.(NN+1), where an smtp-sink listens on one shared port.
Both servers resolve every domain through the same knotd, which serves the 20
zones on 127.0.1.53 port 53 (TTL 0: every lookup reaches it):

- gmta through ``dns_servers 127.0.1.53:53``;
- Postfix through glibc's resolver, which takes no port and reads
  ``/etc/resolv.conf``. Its smtp(8) runs chrooted in the queue directory, so
  it reads the instance's own ``$queue_directory/etc/resolv.conf`` (Postfix's
  classic chroot layout), which names 127.0.1.53. ``transport_maps`` sends each
  domain to ``smtp:dNN.remote.test:PORT``: without brackets, Postfix still looks
  up the MX records and only takes the port from the map.

A measurement: the messages (1 KiB, one recipient each, spread evenly over the
domains) are submitted with smtp-source and wait in the queue (gmta: the sinks
are down, so each is deferred for an hour; Postfix: the hold queue). Then the
sinks start, the queue is released (``gmta queue flush``; ``postsuper -H ALL``
and ``postqueue -f``), and the figure is the time until the sinks have dumped
every message. Connections opened: gmta's ``mx_connected`` events; Postfix's
``status=sent`` lines without ``conn_use=`` (a reused connection logs
``conn_use=N``). The sinks dump into /dev/shm, so their writes cost no disk.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import bench
from bench import BenchError, Gmta, Postfix, run, say, wait_until

sys.path.insert(0, str(bench.ROOT))
from tests.integration import dnsserver  # noqa: E402  (after the path)
from tests.integration.dnsserver import AuthoritativeDNS  # noqa: E402

DOMAINS = 20
DNS_ADDRESS = "127.0.1.53"
DNS_PORT = 53                 # glibc's resolv.conf has no port
SINK_PORT = 10026


def domain(n: int) -> str:
    return f"d{n:02d}.remote.test"


def mx_address(n: int) -> str:
    return f"127.0.1.{n + 1}"


# -- the world: DNS and the MX hosts --------------------------------------------------

def start_dns(work: Path) -> AuthoritativeDNS:
    if not os.path.exists(dnsserver.KNOTD):
        raise BenchError("knotd is missing: bench/run installs the Debian package knot")
    dns = AuthoritativeDNS(work / "remote-dns", address=DNS_ADDRESS, port=DNS_PORT)
    for n in range(DOMAINS):
        dns.zone(domain(n), [f"@ MX 10 mx.{domain(n)}.", f"mx A {mx_address(n)}"])
    try:
        return dns.start()
    except RuntimeError as e:
        raise BenchError(f"knotd could not serve {DNS_ADDRESS}:{DNS_PORT}: {e}") from None


class Sinks:
    """One smtp-sink per MX host, dumping each message into tmpfs."""

    def __init__(self, label: str, port: int):
        self.dir = Path(f"/dev/shm/gmta-bench-{os.getpid()}-{label}")
        self.port = port
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        self.dir.mkdir(parents=True)
        os.chmod(self.dir, 0o777)
        for n in range(DOMAINS):
            dump = self.dir / f"mx{n:02d}"
            dump.mkdir()
            os.chmod(dump, 0o777)
            cmd = ["smtp-sink", "-u", "nobody", "-h", f"mx.{domain(n)}", "-d", f"{dump}/msg.",
                   f"{mx_address(n)}:{self.port}", "256"]
            bench.record(cmd)
            self.procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
        for n in range(DOMAINS):
            if not wait_until(lambda n=n: _answers(mx_address(n), self.port), 15, 0.05):
                raise BenchError(f"smtp-sink on {mx_address(n)}:{self.port} did not start")

    def counts(self) -> list[int]:
        return [bench.count_files(self.dir / f"mx{n:02d}") for n in range(DOMAINS)]

    def arrival_window(self) -> float:
        """Seconds from the first dumped message to the last (file times on tmpfs)."""
        times = [entry.stat().st_mtime_ns for n in range(DOMAINS)
                 for entry in os.scandir(self.dir / f"mx{n:02d}")]
        return (max(times) - min(times)) / 1e9 if times else 0.0

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs = []
        shutil.rmtree(self.dir, ignore_errors=True)   # tmpfs: no ext4 slow-down


def _answers(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1) as s:
            return s.recv(64).startswith(b"220")
    except OSError:
        return False


def submit(port: int, messages: int, size: int) -> None:
    """*messages* one-recipient messages, evenly over the domains, with smtp-source."""
    per_domain = messages // DOMAINS
    procs = []
    for n in range(DOMAINS):
        cmd = ["smtp-source", "-4", "-d", "-s", "2", "-m", str(per_domain), "-l", str(size),
               "-M", bench.HELO, "-f", bench.SENDER, "-t", f"rcpt@{domain(n)}",
               f"127.0.0.1:{port}"]
        if n == 0:
            bench.record(cmd[:-2] + ["rcpt@dNN.remote.test", cmd[-1]])
        procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
        if len(procs) >= 4:        # four smtp-source runs at a time
            _reap(procs.pop(0))
    for proc in procs:
        _reap(proc)


def _reap(proc: subprocess.Popen) -> None:
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise BenchError("smtp-source did not finish within 120 s") from None
    if proc.returncode != 0:
        raise BenchError(f"smtp-source exited with {proc.returncode}: {err.strip()[:300]}")


# -- the two servers ------------------------------------------------------------------

class RemoteGmta(Gmta):
    """gmta with templates/gmta-remote.conf: smtp → target.queue → target.remote."""

    def __init__(self, work: Path, label: str, python: str, dns: AuthoritativeDNS):
        super().__init__(work, label, python)
        text = (bench.TEMPLATES / "gmta-remote.conf").read_text()
        self.config.write_text(text.replace("@STATE@", str(self.state))
                               .replace("@DNS@", dns.directive)
                               .replace("@PORT@", str(SINK_PORT)))

    def events(self, name: str) -> int:
        text = (self.dir / "gmta.log").read_text(errors="replace")
        return text.count(f" event={name} ")

    def flush(self) -> None:
        cmd = [self.python, str(bench.ROOT / "bin" / "gmta"), "queue", "flush", "-c",
               str(self.config)]
        run(cmd, 60, quiet=True)


class RemotePostfix(Postfix):
    """Postfix receiving into the hold queue, its smtp(8) chrooted with a private resolv.conf."""

    def __init__(self, work: Path, label: str, port: int):
        super().__init__(work, label, port, hold=True)
        transport = self.etc / "transport"
        transport.write_text("".join(f"{domain(n)} smtp:{domain(n)}:{SINK_PORT}\n"
                                     for n in range(DOMAINS)))
        with (self.etc / "main.cf").open("a") as f:
            f.write("\n# Scenario remote (bench/remote.py): each domain's MX records are\n"
                    "# looked up (no brackets), the port comes from the map.\n"
                    f"transport_maps = texthash:{transport}\n"
                    "smtp_tls_security_level = none\n")
        # smtp(8) in a chroot reads $queue_directory/etc/resolv.conf (and what
        # glibc needs beside it), not the machine's.
        run(["postconf", "-c", str(self.etc), "-F", "smtp/unix/chroot = y"], 30)
        chroot_etc = self.queue / "etc"
        chroot_etc.mkdir(parents=True, exist_ok=True)
        (chroot_etc / "resolv.conf").write_text(f"nameserver {DNS_ADDRESS}\n"
                                                "options attempts:2 timeout:2\n")
        for name in ("services", "hosts", "nsswitch.conf", "host.conf", "localtime"):
            if os.path.exists(f"/etc/{name}"):
                shutil.copy(f"/etc/{name}", chroot_etc / name)

    def release(self) -> None:
        run(["postsuper", "-c", str(self.etc), "-H", "ALL"], 60, quiet=True)
        run(["postqueue", "-c", str(self.etc), "-f"], 60, quiet=True)

    def connections(self) -> tuple[int, int]:
        """(messages sent, of which over a new connection) from the maillog."""
        sent = [line for line in self.maillog().splitlines()
                if "postfix/smtp[" in line and "status=sent" in line]
        return len(sent), sum("conn_use=" not in line for line in sent)


# -- one measurement --------------------------------------------------------------------

def gmta_once(args, work: Path, label: str, dns: AuthoritativeDNS) -> dict:
    bench.check_deadline(f"remote ({label})")
    server = RemoteGmta(work, label, args.gmta_python, dns)
    sinks = Sinks(label, SINK_PORT)
    n = args.remote_messages
    server.start()
    try:
        submit(server.port, n, args.size)
        if not wait_until(lambda: server.events("deferred") >= n, 120, 0.1):
            raise BenchError(f"{label}: {server.events('deferred')} of {n} messages deferred")
        sinks.start()
        bench.settle()
        connected0 = server.events("mx_connected")
        done, seconds, cpu, counts, window = _timed_release(server, server.flush, sinks, n,
                                                            args.remote_timeout)
        if not done or sum(counts) != n:
            raise BenchError(f"{label}: the sinks got {sum(counts)} of {n} messages")
        if not wait_until(lambda: server.events("done") >= n, 30, 0.1):
            raise BenchError(f"{label}: only {server.events('done')} of {n} queue entries done")
        connections = server.events("mx_connected") - connected0
    finally:
        server.stop()
        sinks.stop()
    return _result(n, seconds, window, cpu, connections, counts)


def postfix_once(args, work: Path, label: str, pf_port: int) -> dict:
    bench.check_deadline(f"remote ({label})")
    server = RemotePostfix(work, label, pf_port)
    sinks = Sinks(label, SINK_PORT)
    n = args.remote_messages
    server.start()
    try:
        submit(server.port, n, args.size)
        if not wait_until(lambda: server.delivered() >= n, 120, 0.1):
            raise BenchError(f"{label}: {server.delivered()} of {n} messages on hold")
        sinks.start()
        bench.settle()
        done, seconds, cpu, counts, window = _timed_release(server, server.release, sinks, n,
                                                            args.remote_timeout)
        if not done or sum(counts) != n:
            raise BenchError(f"{label}: the sinks got {sum(counts)} of {n} messages; maillog:\n"
                             + server.maillog()[-1500:])
        wait_until(lambda: server.connections()[0] >= n, 10, 0.1)   # the log lags a little
        sent, connections = server.connections()
        if sent != n:
            say(f"    ({label}: the maillog has {sent} status=sent lines for {n} messages)")
    finally:
        server.stop()
        sinks.stop()
    return _result(n, seconds, window, cpu, connections, counts)


def _timed_release(server, release, sinks: Sinks, n: int,
                   timeout: float) -> tuple[bool, float, float, list[int], float]:
    """The timed phase: *release()* the queue and wait until the sinks have *n* messages.
    Returns (all arrived in time, seconds, the server's CPU seconds, messages per sink,
    the first-to-last arrival window in seconds)."""
    cpu0 = server.cpu()
    start = time.monotonic()
    release()
    done = wait_until(lambda: sum(sinks.counts()) >= n, timeout, 0.05)
    seconds = time.monotonic() - start
    cpu = sum(bench.sub(server.cpu(), cpu0))
    return done, seconds, cpu, sinks.counts(), sinks.arrival_window()


def _result(n: int, seconds: float, window: float, cpu: float, connections: int,
            counts: list[int]) -> dict:
    """rate: from the release of the queue to the last message at a sink; flow_rate: the
    messages after the first over the first-to-last arrival window (leaves out the
    release command, e.g. gmta's CLI starting its Python)."""
    return {"seconds": seconds, "rate": n / seconds, "window": window,
            "flow_rate": (n - 1) / window if window > 0 else 0.0,
            "cpu_ms_per_msg": cpu * 1000 / n,
            "connections": connections, "connections_per_msg": connections / n,
            "per_mx_min": min(counts), "per_mx_max": max(counts)}


def scenario_remote(args, work: Path, pf_port: int, results: dict) -> None:
    n = args.remote_messages
    say(f"\n== remote: {n} queued messages of {args.size} bytes to {DOMAINS} domains, each MX "
        f"an smtp-sink on its own 127.0.1.x, DNS from knotd on {DNS_ADDRESS}:{DNS_PORT}; "
        f"{args.remote_rounds} rounds")
    if n % DOMAINS:
        raise BenchError(f"--remote-messages must be a multiple of {DOMAINS}")
    dns = start_dns(work)
    runs: dict[str, list[dict]] = {"gmta": [], "postfix": []}
    try:
        for r in range(args.remote_rounds):
            order = ["gmta", "postfix"] if r % 2 == 0 else ["postfix", "gmta"]
            for kind in order:
                label = f"remote{r}-{kind}"
                result = (gmta_once(args, work, label, dns) if kind == "gmta"
                          else postfix_once(args, work, label, pf_port))
                runs[kind].append(result)
                say(f"  round {r + 1} {kind:8s} {result['rate']:7.0f} msg/s  "
                    f"({result['seconds']:.2f} s from the release; first to last arrival "
                    f"{result['window']:.2f} s = {result['flow_rate']:.0f} msg/s; server CPU "
                    f"{result['cpu_ms_per_msg']:.3f} ms/msg, {result['connections']} connections = "
                    f"{result['connections_per_msg']:.3f} per message, "
                    f"{result['per_mx_min']}-{result['per_mx_max']} messages per MX)")
    finally:
        dns.stop()
    results["remote"] = {
        kind: {"runs": v, "median_rate": statistics.median(x["rate"] for x in v),
               "median_flow_rate": statistics.median(x["flow_rate"] for x in v),
               "median_connections_per_msg":
                   statistics.median(x["connections_per_msg"] for x in v),
               "median_cpu_ms_per_msg": statistics.median(x["cpu_ms_per_msg"] for x in v)}
        for kind, v in runs.items()}


def report_rows(args, results: dict) -> list[tuple]:
    if "remote" not in results:
        return []
    g, p = results["remote"]["gmta"], results["remote"]["postfix"]
    return [
        (f"queue → 20 MX hosts, msg/s (median of {args.remote_rounds}, "
         f"{args.remote_messages} msgs)", f"{g['median_rate']:.0f}", f"{p['median_rate']:.0f}",
         bench.ratio(g["median_rate"], p["median_rate"]), ""),
        ("  the same, first to last arrival at the sinks, msg/s (median)",
         f"{g['median_flow_rate']:.0f}", f"{p['median_flow_rate']:.0f}",
         bench.ratio(g["median_flow_rate"], p["median_flow_rate"]), ""),
        ("  connections opened per message (median)",
         f"{g['median_connections_per_msg']:.3f}", f"{p['median_connections_per_msg']:.3f}",
         "", "reuse: < 1"),
        ("  server CPU per message while delivering, ms (median)",
         f"{g['median_cpu_ms_per_msg']:.3f}", f"{p['median_cpu_ms_per_msg']:.3f}",
         bench.ratio(g["median_cpu_ms_per_msg"], p["median_cpu_ms_per_msg"]), ""),
    ]
