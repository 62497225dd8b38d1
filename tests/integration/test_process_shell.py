"""The process shell of the real ``gmta run``: sd_notify, SIGUSR1, SIGHUP, SIGTERM, run_as.

Each test starts ``bin/gmta run`` (tests/integration/conftest.py) and looks
at it from outside: a datagram socket standing in for systemd, the log file
on disk, ``/proc/PID/status``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, GmtaProcess, base_config, maildir_messages

pytestmark = pytest.mark.integration

MAILDIR = """
target.maildir local_mailboxes {
    path maildir/{domain}/{local}
}
smtp tcp://127.0.0.1:0 {
    tls off
    deliver_to &local_mailboxes
}
"""


def notify_socket(path: Path, timeout: float = 10.0) -> socket.socket:
    """A datagram socket on *path* standing in for systemd's (NOTIFY_SOCKET, sd_notify(3))."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(path))
    notify.settimeout(timeout)
    return notify


def test_systemd_hears_ready_then_stopping(start_gmta, state_dir, tmp_path):
    with notify_socket(tmp_path / "notify.sock") as notify:
        gmta = start_gmta(base_config(state_dir) + MAILDIR,
                          env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        ready = notify.recv(4096).decode()
        assert ready == "READY=1\nSTATUS=accepting mail on 1 endpoint(s)"
        # READY comes after the listener is bound: the port answers.
        smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10).quit()
        assert gmta.stop() == 0
        assert notify.recv(4096).decode() == "STOPPING=1\nSTATUS=draining open sessions"


def test_sigusr1_reopens_the_log_file_after_rotation(start_gmta, state_dir):
    log_file = state_dir / "gmta.log"
    config = base_config(state_dir).replace("log stderr", f"log stderr file {log_file}")
    gmta = start_gmta(config + MAILDIR)
    wait_for_text(log_file, "event=started")
    # logrotate's default: rename, then signal.
    rotated = state_dir / "gmta.log.1"
    os.rename(log_file, rotated)
    gmta.proc.send_signal(signal.SIGUSR1)
    gmta.wait_for(r"event=logs_reopened files=1")
    wait_for_text(log_file, "event=logs_reopened files=1")
    assert "logs_reopened" not in rotated.read_text()
    # Later lines go to the new file, too.
    smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10).quit()
    gmta.wait_for(r"event=connected")
    assert gmta.stop() == 0
    new_text = log_file.read_text()
    assert "event=connected" in new_text and "event=stopped" in new_text
    assert "event=connected" not in rotated.read_text()


def test_systemd_hears_reloading_then_ready(start_gmta, state_dir, tmp_path):
    """sd_notify(3): RELOADING=1 with MONOTONIC_USEC (systemd ≥ 253), then READY=1 —
    also after a refused reload, since gmta goes on serving."""
    with notify_socket(tmp_path / "notify.sock") as notify:
        gmta = start_gmta(base_config(state_dir) + MAILDIR,
                          env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        assert notify.recv(4096).startswith(b"READY=1\n")
        for sig, ready_status in ((signal.SIGHUP, "accepting mail on 1 endpoint(s)"),
                                  (signal.SIGUSR2, "reload failed; running the previous "
                                                   "configuration")):
            if sig == signal.SIGUSR2:
                gmta.config_path.write_text(gmta.config_path.read_text() + "bogus_global 1\n")
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            gmta.proc.send_signal(sig)
            fields = dict(line.split("=", 1) for line in notify.recv(4096).decode().split("\n"))
            after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert fields["RELOADING"] == "1"
            assert before <= int(fields["MONOTONIC_USEC"]) <= after
            assert notify.recv(4096).decode() == f"READY=1\nSTATUS={ready_status}"
        smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10).quit()
        assert gmta.stop() == 0


def test_sigterm_drain_lets_a_message_mid_data_finish(start_gmta, state_dir):
    """SIGTERM while the client is in the middle of DATA: the rest of the message is
    still read, the message is delivered (250), then the session gets 421."""
    gmta = start_gmta(base_config(state_dir) + MAILDIR)
    with socket.create_connection(("127.0.0.1", gmta.port()), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        sock.sendall(b"EHLO client.test\r\nMAIL FROM:<a@sender.test>\r\n"
                     b"RCPT TO:<judy@example.test>\r\nDATA\r\n")
        replies = [reader.readline() for _ in range(4)]
        while not replies[-1].startswith(b"354"):
            replies.append(reader.readline())
        sock.sendall(b"Subject: drain\r\n\r\nfirst half\r\n")
        gmta.proc.send_signal(signal.SIGTERM)
        gmta.wait_for("event=stopping signal=SIGTERM")
        time.sleep(0.2)
        sock.sendall(b"second half\r\n.\r\n")
        assert reader.readline().startswith(b"250 ")
        sock.sendall(b"NOOP\r\n")
        assert reader.readline().startswith(b"421 4.3.2")
    assert gmta.proc.wait(15) == 0
    [message] = maildir_messages(state_dir, "judy@example.test")
    assert message.endswith(b"Subject: drain\r\n\r\nfirst half\r\nsecond half\r\n")


def wait_for_text(path: Path, text: str, timeout: float = 10.0) -> None:
    """Wait until *path* contains *text* (stderr gets a line a moment before the file)."""
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{text!r} not in {path}"
        time.sleep(0.05)


# -- run_as -----------------------------------------------------------------------------------

SYSTEM_PYTHON = "/usr/bin/python3"


def _free_privileged_port(below: int = 1024) -> int:
    for port in range(below - 1, 900, -1):
        if _port_is_free(port):
            return port
    pytest.skip(f"no free port below {below} on 127.0.0.1")


def command_readable_by_nobody(directory: Path) -> list[str]:
    """``gmta run``'s command with a copy of gmta in *directory*, for a test that drops
    to nobody (skipped where the system python's libraries are missing)."""
    # After the drop gmta may import lazily: the interpreter, its libraries and
    # gmta must be readable by nobody. Debian's python3 with Debian's gevent,
    # dnspython, cryptography, click and argon2 (the package's own setting) is;
    # a checkout or virtualenv under /root may not be.
    check = subprocess.run([SYSTEM_PYTHON, "-c", "import gevent, dns, cryptography, click, argon2"],
                           capture_output=True, timeout=30)
    if check.returncode != 0:
        pytest.skip("Debian's python3-gevent/dnspython/cryptography/click/argon2 are not "
                    "installed (bash tests/run installs them)")
    code = directory / "code"
    shutil.copytree(ROOT / "gmta", code / "gmta", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "bin" / "gmta", code / "gmta-run")
    return [SYSTEM_PYTHON, str(code / "gmta-run")]


@pytest.fixture
def world_readable_dir():
    """A directory ``nobody`` can enter (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="gmta-run-as-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_run_as_binds_a_privileged_port_then_drops_to_nobody(world_readable_dir):
    command = command_readable_by_nobody(world_readable_dir)
    state = world_readable_dir / "state"
    port = _free_privileged_port()
    config = world_readable_dir / "gmta.conf"
    config.write_text(f"""hostname mx.gmta.test
state_dir {state}
runtime_dir {state}/run
run_as nobody
log stderr
target.maildir local_mailboxes {{
    path maildir/{{domain}}/{{local}}
}}
smtp tcp://127.0.0.1:{port} tcp://127.0.0.1:0 {{
    tls off
    deliver_to &local_mailboxes
}}
""")
    nobody = pwd.getpwnam("nobody")
    gmta = GmtaProcess(config, command=command)
    try:
        gmta.wait_for(r"event=started")
        assert f"event=privileges_dropped user=nobody uid={nobody.pw_uid} " \
               f"gid={nobody.pw_gid}" in "\n".join(gmta.lines)
        status = Path(f"/proc/{gmta.proc.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4
        gid_line = next(line for line in status.splitlines() if line.startswith("Gid:"))
        assert gid_line.split()[1:] == [str(nobody.pw_gid)] * 4
        # The privileged port was bound before the drop and serves after it;
        # the Maildir is created by nobody.
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("a@gmta.test", ["bob@gmta.test"], b"Subject: drop\r\n\r\nbody\r\n")
        [message] = maildir_messages(state, "bob@gmta.test")
        assert b"Subject: drop" in message
        new = state / "maildir" / "gmta.test" / "bob" / "new"
        assert {p.stat().st_uid for p in new.iterdir()} == {nobody.pw_uid}
        assert state.stat().st_uid == nobody.pw_uid

        # Reload as nobody: the privileged port is handed over, never bound again...
        text = config.read_text()
        config.write_text(text.replace("hostname mx.gmta.test", "hostname two.gmta.test"))
        gmta.proc.send_signal(signal.SIGHUP)
        gmta.wait_for(r"event=reloaded")
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            assert b"two.gmta.test" in client.ehlo()[1]
        # ...but a new one cannot be bound any more: refused, and the log says why.
        other = _free_privileged_port(below=port)
        config.write_text(text.replace("tcp://127.0.0.1:0 {", f"tcp://127.0.0.1:{other} {{"))
        gmta.proc.send_signal(signal.SIGHUP)
        line = gmta.wait_for(r"event=reload_failed")
        assert "Permission denied" in line and "CAP_NET_BIND_SERVICE" in line
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            assert b"two.gmta.test" in client.ehlo()[1]
    finally:
        assert gmta.stop() == 0


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True

