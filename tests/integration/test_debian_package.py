"""The Debian package: build it, install it, send mail through it, purge it.

The package is built with ``dpkg-buildpackage -us -uc -b`` from a copy of the
tree in a temporary directory (the .deb lands beside the copy, not beside
the checkout). It is installed into a throw-away overlay of this machine's
root file system, in a private mount namespace: ``gmta`` conflicts with
every other MTA (Debian's mail-transport-agent rule), so installing it for
real would remove Postfix, which other tests use, and would take over
/usr/sbin/sendmail. In the overlay, apt-get removes Postfix and installs
gmta; the machine sees nothing of it, and the overlay is discarded at the end.
A policy-rc.d in the overlay forbids every service start and stop, and /run
is a fresh tmpfs, so no maintainer script touches the machine's services.

systemd is not PID 1 here: the installed ``/usr/bin/gmta run`` is started as
the ``gmta`` user by hand, and a message goes through the installed
``/usr/sbin/sendmail`` as ``nobody``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from gmta.net.tls import self_signed_pem
from tests.integration.conftest import ROOT, GmtaProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.package,
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a Debian package: needs root"),
    pytest.mark.skipif(shutil.which("dpkg-buildpackage") is None or
                       shutil.which("dh_python3") is None,
                       reason="needs dpkg-dev, debhelper and dh-python (bash tests/run installs "
                              "them)"),
]

BUILD_TIMEOUT = 180
APT_TIMEOUT = 180
COMMAND_TIMEOUT = 60
NAMESPACE_LIFETIME = 900  # seconds; the holder exits by itself if the test dies
# What a clean checkout has: no virtualenv, caches, or earlier build output.
NOT_IN_CHECKOUT = shutil.ignore_patterns(
    ".git", ".venv", "dev-state", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache",
    ".ruff_cache", ".hypothesis", ".tox", "build", "dist", ".coverage*", "htmlcov",
    ".debhelper", "debhelper-build-stamp", "files", "*.substvars", ".pybuild", "*.debhelper")


class Overlay:
    """A private copy-on-write view of / at *root*, alive while a holder process sleeps."""

    def __init__(self, base: Path):
        self.upper, self.work, self.root = base / "upper", base / "work", base / "root"
        for path in (self.upper, self.work, self.root):
            path.mkdir()
        script = textwrap.dedent(f"""\
            set -e
            mount -t overlay overlay -o lowerdir=/,upperdir={self.upper},workdir={self.work} \\
                {self.root}
            mount -t proc proc {self.root}/proc
            mount --rbind /dev {self.root}/dev
            mount -t tmpfs tmpfs {self.root}/run
            mount -t tmpfs tmpfs {self.root}/tmp
            echo ready
            exec sleep {NAMESPACE_LIFETIME}
            """)
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline()  # bounded: the script either echoes or exits
        if line.strip() != "ready":
            error = self.holder.stderr.read()
            self.holder.wait(10)
            pytest.skip(f"cannot mount an overlay of / in a mount namespace here: {error.strip()}")

    def command(self, *argv: str) -> list[str]:
        """*argv* run inside the overlay (chroot), as root."""
        return ["nsenter", f"--target={self.holder.pid}", "--mount", "--",
                "chroot", str(self.root), *argv]

    def run(self, *argv: str, input: str | bytes | None = None,
            timeout: float = COMMAND_TIMEOUT, env: dict | None = None) -> str:
        done = subprocess.run(self.command(*argv), input=input, capture_output=True,
                              timeout=timeout, env={**os.environ, **(env or {})},
                              text=not isinstance(input, bytes))
        assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def write(self, path: str, text: str, mode: str = "644") -> None:
        self.run("sh", "-c", f"cat > {path} && chmod {mode} {path}", input=text)

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait(10)


@pytest.fixture
def built_deb(tmp_path) -> Path:
    source = tmp_path / "build" / "gmta"
    shutil.copytree(ROOT, source, ignore=NOT_IN_CHECKOUT, symlinks=True)
    done = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=source,
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [deb] = (tmp_path / "build").glob("gmta_*_all.deb")
    return deb


@pytest.fixture
def overlay(tmp_path):
    (tmp_path / "overlay").mkdir()
    view = Overlay(tmp_path / "overlay")
    yield view
    view.close()


TEST_CONFIG = """\
hostname mx.gmta.test
state_dir /var/lib/gmta
runtime_dir /run/gmta
log stderr
target.maildir local_mailboxes {
    path maildir/{domain}/{local}
}
smtp unix://sendmail.sock tcp://127.0.0.1:0 {
    tls off
    deliver_to &local_mailboxes
}
"""


def test_package_installs_runs_sends_mail_and_purges(built_deb, overlay):
    started = time.monotonic()
    # No maintainer script may start or stop a service (Postfix's prerm would
    # stop the machine's Postfix, which shares our PID namespace).
    overlay.write("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", mode="755")
    overlay.run("cp", "/dev/stdin", "/tmp/" + built_deb.name, input=built_deb.read_bytes())
    overlay.run("apt-get", "install", "-y", "-q", "--no-install-recommends",
                "/tmp/" + built_deb.name, timeout=APT_TIMEOUT,
                env={"DEBIAN_FRONTEND": "noninteractive"})

    # -- what the package put in place ----------------------------------------------------
    status = overlay.run("dpkg-query", "-W", "-f=${Status} ${Provides}\n${Conffiles}\n", "gmta")
    assert status.startswith("install ok installed mail-transport-agent\n")
    assert " /etc/gmta/gmta.conf " in status
    passwd = overlay.run("getent", "passwd", "gmta").strip().split(":")
    assert passwd[0] == "gmta" and passwd[5:] == ["/var/lib/gmta", "/usr/sbin/nologin"]
    assert int(passwd[2]) < 1000  # a system user
    owners = overlay.run("stat", "-c", "%n %U %G %a", "/var/lib/gmta", "/run/gmta").splitlines()
    assert owners == ["/var/lib/gmta gmta gmta 750", "/run/gmta gmta gmta 755"]
    assert overlay.run("readlink", "/usr/lib/sendmail").strip() == "../sbin/sendmail"
    assert "exec /usr/bin/gmta sendmail" in overlay.run("cat", "/usr/sbin/sendmail")
    unit = overlay.run("cat", "/lib/systemd/system/gmta.service")
    for setting in ("Type=notify", "User=gmta", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                    "ProtectSystem=strict", "ReadWritePaths=/var/lib/gmta /run/gmta",
                    "NoNewPrivileges=yes", "RestartPreventExitStatus=2", "TimeoutStopSec=600",
                    "ExecReload=/bin/kill -HUP $MAINPID"):
        assert f"\n{setting}\n" in unit
    # Enabled (a symlink for boot), not started: there is no systemd to start it.
    assert overlay.run("readlink", "/etc/systemd/system/multi-user.target.wants/gmta.service") \
        .strip() == "/lib/systemd/system/gmta.service"
    assert overlay.run("/usr/bin/gmta", "version").strip().startswith("gmta ")
    # systemd's own check of the unit (syntax, settings, the executable).
    overlay.run("systemd-analyze", "verify", "/lib/systemd/system/gmta.service")

    # The shipped configuration is valid once its certificate exists.
    cert, key = self_signed_pem("mx.example.org")
    overlay.run("mkdir", "-p", "/etc/gmta/certs/mx.example.org")
    overlay.write("/etc/gmta/certs/mx.example.org/fullchain.pem", cert.decode())
    overlay.write("/etc/gmta/certs/mx.example.org/privkey.pem", key.decode(), mode="600")
    assert overlay.run("/usr/bin/gmta", "check-config", "-c", "/etc/gmta/gmta.conf") \
        .strip() == "No errors detected"

    # -- the installed gmta, as the gmta user, on loopback and its unix socket ------------
    overlay.write("/etc/gmta/test.conf", TEST_CONFIG)
    gmta = GmtaProcess(Path("/etc/gmta/test.conf"), command=overlay.command(
        "setpriv", "--reuid=gmta", "--regid=gmta", "--init-groups", "/usr/bin/gmta"))
    try:
        gmta.wait_for(r"event=started")
        assert "event=start_failed" not in "\n".join(gmta.lines)
        message = (b"To: alice@gmta.test\nBcc: bob@gmta.test\nSubject: from cron\n\n"
                   b"disk 93% full\n")
        send = subprocess.run(overlay.command(
            "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            "/usr/sbin/sendmail", "-C", "/etc/gmta/test.conf", "-t", "-oi"),
            input=message, capture_output=True, timeout=COMMAND_TIMEOUT)
        assert send.returncode == 0, send.stderr
        gmta.wait_for(r"event=accepted .*sender=nobody@mx.gmta.test rcpts=2")
        for rcpt in ("alice", "bob"):
            files = overlay.run("find", f"/var/lib/gmta/maildir/gmta.test/{rcpt}/new",
                                "-type", "f", "-printf", "%u %p\n").splitlines()
            assert len(files) == 1 and files[0].startswith("gmta /")
            stored = overlay.run("cat", files[0].split(" ", 1)[1])
            assert "Subject: from cron" in stored and "disk 93% full" in stored
            assert "Bcc:" not in stored
    finally:
        assert gmta.stop() == 0, "\n".join(gmta.lines)

    # -- purge ---------------------------------------------------------------------------
    # What the operator added to /etc/gmta is theirs; gone here as an operator
    # would remove it, so the purge can remove the directory.
    overlay.run("rm", "-r", "/etc/gmta/test.conf", "/etc/gmta/certs")
    overlay.run("apt-get", "purge", "-y", "-q", "gmta", timeout=APT_TIMEOUT,
                env={"DEBIAN_FRONTEND": "noninteractive"})
    left = overlay.run("sh", "-c", "ls -d /etc/gmta /var/lib/gmta/* /run/gmta /usr/sbin/sendmail "
                                   "/usr/lib/sendmail /lib/systemd/system/gmta.service "
                                   "/etc/systemd/system/multi-user.target.wants/gmta.service "
                                   "/usr/bin/gmta 2>/dev/null || true")
    # Delivered mail is the users' and stays; everything else is gone.
    assert left.split() == ["/var/lib/gmta/maildir"]
    assert overlay.run("sh", "-c", "dpkg-query -W -f='${Status}' gmta 2>/dev/null || true") \
        in ("", "unknown ok not-installed")
    assert time.monotonic() - started < 120
