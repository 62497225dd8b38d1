"""``workers 2``: the real ``gmta run`` as a supervisor with two receiving processes.

Every worker tags its log lines ``worker=N``; the supervisor logs each
worker's pid (``event=worker_started``). The tests read both, and
``/proc`` for which processes still run.
"""

from __future__ import annotations

import os
import pwd
import random
import re
import signal
import smtplib
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.integration import test_queue_crash as crash
from tests.integration.conftest import (START_TIMEOUT, GmtaProcess, base_config,
                                       maildir_messages)
from tests.integration.peers import smtp_sink  # noqa: F401, F811 (fixture)
from tests.integration.test_process_shell import (_free_privileged_port,
                                                  command_readable_by_nobody, notify_socket,
                                                  world_readable_dir)  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

SUPERVISOR_READY = r"event=started .*workers=2"
CONNECTIONS = 40


def maildir_config(state_dir: Path, queue: bool = False) -> str:
    deliver = "&q" if queue else "&mb"
    queue_block = "target.queue q {\n    target &mb\n    post_init_delay 0\n}\n" if queue else ""
    return base_config(state_dir, "tls off\nworkers 2\n") + queue_block + f"""
target.maildir mb {{ path maildir/{{domain}}/{{local}} }}
smtp tcp://127.0.0.1:0 {{ deliver_to {deliver} }}
lmtp unix://lmtp.sock {{ deliver_to {deliver} }}
"""


def worker_pids(gmta: GmtaProcess) -> dict[int, int]:
    """The latest pid of each worker, from the supervisor's log."""
    pids = {}
    for line in gmta.lines:
        m = re.search(r"event=worker_started worker=(\d+) pid=(\d+)", line)
        if m:
            pids[int(m.group(1))] = int(m.group(2))
    return pids


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def wait_gone(pids, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while any(running(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if running(p)]}"
        time.sleep(0.05)


def wait_for_count(gmta: GmtaProcess, pattern: str, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while sum(1 for line in gmta.lines if regex.search(line)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} lines matching {pattern!r}:\n" \
                                            + "\n".join(gmta.lines)
        time.sleep(0.05)


def send_one(port: int, n: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("s@src.test", ["u@d.test"],
                        f"Subject: workers {n}\r\nMessage-ID: <{n}@w.test>\r\n\r\nbody {n}\r\n")


def send_in_parallel(port: int, count: int) -> None:
    """*count* connections, each with one message, several at a time (distinct source ports)."""
    errors = []

    def sender(numbers):
        for n in numbers:
            try:
                send_one(port, n)
            except Exception as e:  # collected: a failure is reported with its message
                errors.append(e)

    threads = [threading.Thread(target=sender, args=(range(i, count, 8),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def start(config_path: Path) -> GmtaProcess:
    gmta = GmtaProcess(config_path)
    gmta.wait_for(SUPERVISOR_READY)
    return gmta


def test_two_workers_share_the_port_and_lose_nothing(tmp_path, state_dir, quiet_dns_server):
    conf = tmp_path / "gmta.conf"
    conf.write_text(f"dns_servers {quiet_dns_server.directive}\n" +
                    maildir_config(state_dir, queue=True))
    gmta = start(conf)
    try:
        pids = worker_pids(gmta)
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
        send_in_parallel(gmta.port(), CONNECTIONS)
        # Both processes took connections on the one port (SO_REUSEPORT).
        for index in (0, 1):
            assert any(f"worker={index} module=endpoint event=connected" in line
                       for line in gmta.lines), f"worker {index} got no session"
        # Each worker attempts what it received, at once: delivered within
        # seconds and without a rescan of the queue.
        deadline = time.monotonic() + 10
        while len(maildir_messages(state_dir, "u@d.test")) < CONNECTIONS:
            assert time.monotonic() < deadline, "messages not delivered in time"
            time.sleep(0.05)
        assert not any("event=scanned startup=no" in line for line in gmta.lines)
        assert not any("event=wakeup" in line for line in gmta.lines)
        for index in (0, 1):
            assert any(f"worker={index} module=queue event=delivered" in line
                       for line in gmta.lines), f"worker {index} delivered nothing"
        # Only worker 0 runs the full scheduler.
        assert any("worker=1 module=queue event=queue_started" in line and
                   'scheduler="worker 0"' in line for line in gmta.lines)
        # The shared unix socket is served too.
        lmtp = smtplib.LMTP(str(state_dir / "run" / "lmtp.sock"), timeout=10)
        lmtp.sendmail("s@src.test", ["u@d.test"], b"Subject: over lmtp\r\n\r\nx\r\n")
        lmtp.quit()
    finally:
        status = gmta.stop()
    assert status == 0, "\n".join(gmta.lines)
    bodies = maildir_messages(state_dir, "u@d.test")
    numbers = sorted(int(m.group(1)) for b in bodies if (m := re.search(rb"workers (\d+)", b)))
    assert numbers == list(range(CONNECTIONS))
    # SIGTERM reached both workers; everything stopped.
    assert sum('event=worker_stopped' in line and 'status="exit 0"' in line
               for line in gmta.lines) == 2, "\n".join(gmta.lines)
    wait_gone(pids.values(), 5)


def test_a_killed_worker_is_restarted(tmp_path, state_dir, quiet_dns_server):
    conf = tmp_path / "gmta.conf"
    conf.write_text(f"dns_servers {quiet_dns_server.directive}\n" + maildir_config(state_dir))
    gmta = start(conf)
    try:
        old = worker_pids(gmta)[1]
        os.kill(old, signal.SIGKILL)
        wait_for_count(gmta, r"event=worker_ready worker=1 ", 2)
        new = worker_pids(gmta)[1]
        assert new != old and running(new)
        assert any("event=worker_exited worker=1" in line and "SIGKILL" in line
                   for line in gmta.lines)
        send_in_parallel(gmta.port(), 16)
        assert len(maildir_messages(state_dir, "u@d.test")) == 16
    finally:
        assert gmta.stop() == 0, "\n".join(gmta.lines)


def test_a_worker_that_keeps_crashing_stops_everything(tmp_path, state_dir, quiet_dns_server):
    conf = tmp_path / "gmta.conf"
    conf.write_text(f"dns_servers {quiet_dns_server.directive}\n" + maildir_config(state_dir))
    gmta = start(conf)
    pids = worker_pids(gmta)
    # A restarted worker reads the file again: now it cannot (exit 2), every time.
    conf.write_text("this is not a gmta configuration\n")
    os.kill(pids[1], signal.SIGKILL)
    try:
        assert gmta.proc.wait(30) == 1
    finally:
        gmta.stop()
    assert any("event=workers_crash_loop worker=1" in line for line in gmta.lines)
    wait_gone(pids.values(), 5)


def test_killing_the_supervisor_stops_its_workers(tmp_path, state_dir, quiet_dns_server):
    conf = tmp_path / "gmta.conf"
    conf.write_text(f"dns_servers {quiet_dns_server.directive}\n" + maildir_config(state_dir))
    gmta = start(conf)
    pids = worker_pids(gmta)
    gmta.stop(signal.SIGKILL)
    # They see the supervisor's end of their socketpair close, and drain.
    wait_gone(pids.values(), 15)


# --- the queue crash test, with two workers ------------------------------------------

def crash_config(state_dir: Path, sink_address: str, dns: str) -> str:
    return f"dns_servers {dns}\n" + base_config(state_dir, "tls off\nworkers 2\n") + f"""
target.smtp out {{ targets {sink_address} }}
target.queue q {{
    target &out
    initial_retry_time 200ms
    retry_time_scale 1
    post_init_delay 0
}}
smtp tcp://127.0.0.1:0 {{ deliver_to &q }}
"""


#: As the queue's own crash test (test_queue_crash.py), here with workers.
CRASH_MESSAGES = 200
CRASH_KILLS = 3


def delivered_to_sink(sink) -> dict[int, int]:
    return crash.count_subjects(p.read_bytes() for p in sink.dump_dir.iterdir())


def test_no_message_answered_250_is_lost_when_workers_or_the_supervisor_die(
        tmp_path, state_dir, smtp_sink, quiet_dns_server):  # noqa: F811
    rng = random.Random()
    sink = smtp_sink()
    conf = tmp_path / "gmta.conf"
    conf.write_text(crash_config(state_dir, sink.address, quiet_dns_server.directive))
    stream = crash.Stream(messages=CRASH_MESSAGES, pause=0.2)
    gmta = start(conf)
    processes = [gmta]
    kills = []
    try:
        for round_ in range(CRASH_KILLS + 1):
            port = gmta.port()
            senders = [threading.Thread(target=stream.send, args=(port,), daemon=True)
                       for _ in range(crash.SENDERS)]
            for t in senders:
                t.start()
            if round_ < CRASH_KILLS:
                time.sleep(rng.uniform(0.3, 1.5))
                # The first kill is always the supervisor's, then at random.
                victim = "supervisor" if round_ == 0 else rng.choice(["supervisor", 0, 1])
                kills.append(victim)
                pids = worker_pids(gmta)
                if victim == "supervisor":
                    gmta.stop(signal.SIGKILL)
                    # The orphaned workers drain and exit before the restart,
                    # as systemd's KillMode=control-group would make them.
                    wait_gone(pids.values(), 30)
                    gmta = start(conf)
                    processes.append(gmta)
                else:
                    ready_before = sum(f"event=worker_ready worker={victim} " in line
                                       for line in gmta.lines)
                    os.kill(pids[victim], signal.SIGKILL)
                    wait_for_count(gmta, f"event=worker_ready worker={victim} ",
                                   ready_before + 1)
            for t in senders:
                t.join(30)
                assert not t.is_alive()
        crash.wait_drained(stream, lambda: delivered_to_sink(sink), state_dir / "q")
        assert gmta.proc.poll() is None, "\n".join(gmta.lines)
    finally:
        for process in processes:
            process.stop()
    counts = delivered_to_sink(sink)
    lost = sorted(n for n in stream.accepted if n not in counts)
    duplicates = sum(c - 1 for c in counts.values() if c > 1)
    print(f"workers crash test: messages={CRASH_MESSAGES} accepted={len(stream.accepted)} "
          f"kills={kills} lost={len(lost)} duplicates={duplicates}")
    assert len(stream.accepted) > CRASH_MESSAGES // 4
    assert lost == []
    assert not list((state_dir / "q" / "msg").iterdir())
    assert not any((state_dir / "q" / "corrupt").iterdir())


def test_a_deferral_in_another_worker_is_retried_by_worker_0(tmp_path, state_dir,
                                                            quiet_dns_server):
    """Worker 1 makes the first attempt of what it received; what it cannot deliver
    goes to worker 0's scheduler, which makes the retries (by datagram, no rescan)."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there: every attempt is refused, 4xx
    conf = tmp_path / "gmta.conf"
    conf.write_text(f"dns_servers {quiet_dns_server.directive}\n" +
                    base_config(state_dir, "tls off\nworkers 2\n") + f"""
target.smtp out {{
    targets tcp://127.0.0.1:{dead_port}
    attempt_starttls no
}}
target.queue q {{
    target &out
    initial_retry_time 300ms
    max_tries 2
    post_init_delay 0
}}
smtp tcp://127.0.0.1:0 {{ deliver_to &q }}
""")
    gmta = start(conf)
    try:
        send_in_parallel(gmta.port(), 16)
        wait_for_count(gmta, r"module=queue event=failed ", 16)
    finally:
        status = gmta.stop()
    assert status == 0, "\n".join(gmta.lines)
    first, second = {}, {}
    for line in gmta.lines:
        m = re.search(r"worker=(\d) module=queue event=(?:deferred|failed) queue_id=(\S+) "
                      r".*attempt=(\d)", line)
        if m:
            (first if m.group(3) == "1" else second)[m.group(2)] = int(m.group(1))
    assert len(first) == len(second) == 16
    from_worker_1 = [queue_id for queue_id, worker in first.items() if worker == 1]
    assert from_worker_1, "worker 1 received nothing; SO_REUSEPORT spreads 16 connections"
    assert all(second[queue_id] == 0 for queue_id in second), second
    assert not any("event=scanned startup=no" in line for line in gmta.lines)


def test_start_fails_cleanly_when_the_port_is_taken(tmp_path, state_dir, quiet_dns_server):
    conf = tmp_path / "gmta.conf"
    conf.write_text(f"dns_servers {quiet_dns_server.directive}\n" + maildir_config(state_dir))
    first = start(conf)
    try:
        port = first.port()
        conf2 = tmp_path / "second.conf"
        conf2.write_text(conf.read_text().replace("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}")
                         .replace("unix://lmtp.sock", "unix://lmtp2.sock"))
        second = GmtaProcess(conf2)
        assert second.proc.wait(START_TIMEOUT) == 1
        second.stop()
        assert any("event=start_failed" in line and "cannot listen" in line
                   for line in second.lines), second.lines
        assert not any("event=worker_started" in line for line in second.lines)
    finally:
        assert first.stop() == 0


def test_systemd_hears_ready_once_both_workers_listen(tmp_path, state_dir, quiet_dns_server):
    conf = tmp_path / "gmta.conf"
    conf.write_text(f"dns_servers {quiet_dns_server.directive}\n" + maildir_config(state_dir))
    with notify_socket(tmp_path / "notify.sock", timeout=15) as notify:
        gmta = GmtaProcess(conf, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        try:
            assert notify.recv(4096).decode() == "READY=1\nSTATUS=accepting mail with 2 workers"
            # Only the supervisor speaks to systemd, and only after both workers are ready.
            # (The datagram can overtake the log lines: wait for the supervisor's
            # "started", which it logs after both worker_ready lines and before READY.)
            gmta.wait_for(SUPERVISOR_READY)
            assert sum("event=worker_ready" in line for line in gmta.lines) == 2
        finally:
            assert gmta.stop() == 0
        assert notify.recv(4096).decode() == "STOPPING=1\nSTATUS=draining open sessions"


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_workers_run_as_nobody_on_a_privileged_port(world_readable_dir):  # noqa: F811
    command = command_readable_by_nobody(world_readable_dir)
    state = world_readable_dir / "state"
    port = _free_privileged_port()
    config = world_readable_dir / "gmta.conf"
    config.write_text(f"""hostname mx.gmta.test
state_dir {state}
runtime_dir {state}/run
run_as nobody
workers 2
log stderr
target.maildir mb {{ path maildir/{{domain}}/{{local}} }}
smtp tcp://127.0.0.1:{port} {{
    tls off
    deliver_to &mb
}}
""")
    nobody = pwd.getpwnam("nobody")
    gmta = GmtaProcess(config, command=command)
    try:
        gmta.wait_for(SUPERVISOR_READY)
        # The supervisor bound the port as root, then dropped; the workers never were root.
        for pid in [gmta.proc.pid, *worker_pids(gmta).values()]:
            status = Path(f"/proc/{pid}/status").read_text()
            uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4, pid
        send_in_parallel(port, 8)
        assert len(maildir_messages(state, "u@d.test")) == 8
    finally:
        assert gmta.stop() == 0, "\n".join(gmta.lines)


def test_reload_reaches_every_worker_and_keeps_one_scheduler(tmp_path, state_dir,
                                                           quiet_dns_server):
    """SIGHUP to the supervisor: each worker reloads; mail sent across it is delivered once;
    a reload that adds a listening address is refused by the workers, which keep serving."""
    conf = tmp_path / "gmta.conf"
    config = f"dns_servers {quiet_dns_server.directive}\n" + maildir_config(state_dir, queue=True)
    conf.write_text(config)
    gmta = start(conf)
    try:
        port = gmta.port()
        send_in_parallel(port, 16)
        conf.write_text(config.replace("hostname mx.gmta.test", "hostname mx2.gmta.test"))
        gmta.proc.send_signal(signal.SIGHUP)
        wait_for_count(gmta, r"worker=\d module=\S+ event=reloaded|worker=\d event=reloaded", 2)
        # Both workers now greet with the new name (new connections, new config).
        banners = set()
        for _ in range(12):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                banners.add(s.recv(512).split(b" ")[1])
        assert banners == {b"mx2.gmta.test"}
        send_in_parallel(port, 16)
        # Still exactly one scheduler: worker 0 took over from itself, worker 1 has none.
        assert any("worker=0" in line and "event=scheduler_taken_over" in line
                   for line in gmta.lines)
        assert not any("worker=1" in line and "event=scheduler_taken_over" in line
                       for line in gmta.lines)
        # An added listener cannot be bound by a worker: refused, the old config serves on.
        conf.write_text(config.replace("hostname mx.gmta.test", "hostname mx3.gmta.test")
                        + "smtp tcp://127.0.0.1:0 tcp://127.0.0.2:0 { deliver_to &q }\n")
        gmta.proc.send_signal(signal.SIGHUP)
        wait_for_count(gmta, r"event=reload_failed .*restart gmta to add", 2)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert s.recv(512).split(b" ")[1] == b"mx2.gmta.test"
        deadline = time.monotonic() + 15
        while len(maildir_messages(state_dir, "u@d.test")) < 32:
            assert time.monotonic() < deadline, "messages not delivered in time"
            time.sleep(0.05)
    finally:
        status = gmta.stop()
    assert status == 0, "\n".join(gmta.lines)
    # 16 + 16 messages, numbered 0..15 twice: each delivered exactly once per sending.
    bodies = maildir_messages(state_dir, "u@d.test")
    assert len(bodies) == 32
