"""A private Postfix smtpd with STARTTLS on a loopback address: an MX that never offers REQUIRETLS.

Debian's Postfix (3.7) has no REQUIRETLS (RFC 8689), so it is the real, common
case of a TLS-capable MX without it. The instance shares nothing with a
system Postfix but the binaries, the ``postfix`` user and the ``postdrop``
group (bench/templates/postfix-main.cf is the same recipe): its own
configuration, queue and data directories under a world-accessible /tmp
directory (Postfix's daemons run as ``postfix``, and pytest's tmp_path is
private to root), chroot off, one smtpd service on ADDRESS:PORT, and a log
file written by postlogd.

Every message it accepts goes to the hold queue (fsynced before its 250, and
never relayed onwards): the log's ``hold:`` line names its recipients. Needs
root, as ``postfix start`` does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.peers import world_dir

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

MAIN_CF = """\
compatibility_level = 3.6
config_directory = {dir}/etc
queue_directory = {dir}/queue
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
myhostname = {hostname}
# Postfix refuses an inet_interfaces address that no interface has (only 127.0.0.1
# is on lo); master.cf binds the smtpd service to ADDRESS:PORT itself.
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
relayhost =
smtpd_peername_lookup = no
local_transport = error:no local delivery here
# Nothing leaves: every accepted message is held (and logged with its recipients).
smtpd_end_of_data_restrictions = check_client_access static:HOLD
# STARTTLS offered, not required; the certificate is the test CA's for the MX name.
smtpd_tls_security_level = may
smtpd_tls_chain_files = {dir}/etc/key.pem, {dir}/etc/cert.pem
smtpd_tls_loglevel = 1
"""


class PostfixMX:
    """Postfix's smtpd on *address*:*port* with STARTTLS, certificate *cert* and key *key*."""

    def __init__(self, address: str, port: int, cert: Path, key: Path,
                 hostname: str = "postfix.gmta.test"):
        if os.geteuid() != 0:
            pytest.skip("a private Postfix instance needs root (postfix start)")
        if shutil.which("postfix") is None and not os.path.exists("/usr/sbin/postfix"):
            pytest.fail("postfix is not installed: run the README's test command (bash tests/run)")
        self.address, self.port = address, port
        self.dir = world_dir("gmta-postfix-")
        self.etc = self.dir / "etc"
        for sub in ("etc", "queue"):   # data: Postfix makes it, owned by postfix
            (self.dir / sub).mkdir()
        shutil.copy(cert, self.etc / "cert.pem")
        shutil.copy(key, self.etc / "key.pem")
        (self.etc / "key.pem").chmod(0o600)
        (self.etc / "main.cf").write_text(MAIN_CF.format(dir=self.dir, address=address,
                                                         hostname=hostname))
        shutil.copy("/etc/postfix/master.cf", self.etc / "master.cf")
        if os.path.exists("/etc/postfix/dynamicmaps.cf"):
            shutil.copy("/etc/postfix/dynamicmaps.cf", self.etc / "dynamicmaps.cf")
        self._postconf("-M#", "smtp/inet")
        self._postconf("-Me", f"{address}:{port}/inet = {address}:{port} inet n - n - - smtpd")
        self._postconf("-F", "*/*/chroot = n")
        self.master = 0
        self.started = False

    def _postconf(self, *args: str) -> None:
        subprocess.run(["postconf", "-c", str(self.etc), *args], check=True, timeout=30,
                       capture_output=True)

    def _postfix(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(["postfix", "-c", str(self.etc), command], timeout=60,
                              capture_output=True, text=True)
        if check and done.returncode != 0:
            raise AssertionError(f"postfix {command} failed: {done.stderr}\n{self.log()[-2000:]}")
        return done

    def start(self) -> "PostfixMX":
        self._postfix("start")
        self.started = True
        pid_file = self.dir / "queue" / "pid" / "master.pid"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                self.master = int(pid_file.read_text().strip())
                with socket.create_connection((self.address, self.port), timeout=2) as sock:
                    if sock.recv(512).startswith(b"220"):
                        return self
            except (FileNotFoundError, ValueError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"Postfix did not answer on {self.address}:{self.port}:\n"
                             + self.log()[-2000:])

    def log(self) -> str:
        try:
            return (self.dir / "maillog").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def smtpd_sessions(self) -> list[str]:
        """The ``disconnect from`` lines: one per session, with its command counts."""
        return [line for line in self.log().splitlines()
                if "postfix/smtpd" in line and "disconnect from" in line]

    def held_for(self, rcpt: str) -> list[str]:
        """The log's ``hold:`` lines of messages accepted for *rcpt*."""
        return [line for line in self.log().splitlines()
                if " hold: " in line and f"to=<{rcpt}>" in line]

    def wait_for_held(self, rcpt: str, timeout: float = 10.0) -> list[str]:
        """:meth:`held_for` once postlogd (asynchronous) has written a line for *rcpt*."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = self.held_for(rcpt)
            if held:
                return held
            time.sleep(0.05)
        raise AssertionError(f"Postfix held nothing for {rcpt}:\n{self.log()[-2000:]}")

    def wait_for_sessions(self, count: int, timeout: float = 10.0) -> list[str]:
        """postlogd writes asynchronously: wait until *count* sessions are logged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sessions = self.smtpd_sessions()
            if len(sessions) >= count:
                return sessions
            time.sleep(0.05)
        raise AssertionError(f"Postfix logged {len(self.smtpd_sessions())} sessions, not "
                             f"{count}:\n{self.log()[-2000:]}")

    def stop(self) -> None:
        if self.started:
            self._postfix("stop", check=False)
            self.started = False
            deadline = time.monotonic() + STOP_TIMEOUT
            while self.master and time.monotonic() < deadline and _alive(self.master):
                time.sleep(0.05)
            if self.master and _alive(self.master):
                os.kill(self.master, signal.SIGKILL)   # only this instance's master, by pid
        shutil.rmtree(self.dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
