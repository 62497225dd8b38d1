"""Run the real ``bin/gmta run`` on loopback for integration tests.

A test writes a configuration with ``tcp://127.0.0.1:0`` listeners; the
fixture starts gmta, reads the ``listening`` log lines to learn the ports the
kernel chose, and stops it with SIGTERM at the end (every wait is bounded).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.dnsserver import (dns_server, quiet_dns_server,  # noqa: F401 (fixtures)
                                         validating_resolver)
from tests.integration.dnssec import signed_dns, signed_zone_resolver  # noqa: F401 (fixtures)
from tests.integration.mxauth_world import world  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]
GMTA = [sys.executable, str(ROOT / "bin" / "gmta")]
START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0


class GmtaProcess:
    """A running ``gmta run`` and what it logged."""

    def __init__(self, config_path: Path, env: dict | None = None, command: list | None = None):
        self.config_path = config_path
        self.lines: list[str] = []
        self.addresses: dict[str, str] = {}
        self._new_line = threading.Condition()
        self.proc = subprocess.Popen(
            (command or GMTA) + ["run", "-c", str(config_path)], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                m = re.search(r'event=listening endpoint="?([^"]+?)"? address=(\S+)', line)
                if m:
                    self.addresses[m.group(2)] = m.group(1)
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> str:
        """The first log line matching *pattern*, waiting up to *timeout* seconds."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        with self._new_line:
            while True:
                for line in self.lines:
                    if regex.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no log line matching {pattern!r}; log:\n" +
                                         "\n".join(self.lines))
                self._new_line.wait(min(remaining, 0.5))

    def port(self, scheme_prefix: str = "tcp://127.0.0.1") -> int:
        """The port of the first listener whose address starts with *scheme_prefix*."""
        for address in self.addresses:
            if address.startswith(scheme_prefix):
                return int(address.rsplit(":", 1)[1])
        raise AssertionError(f"no listener {scheme_prefix}: {self.addresses}")

    def ports(self, scheme_prefix: str) -> list[int]:
        return [int(a.rsplit(":", 1)[1]) for a in self.addresses if a.startswith(scheme_prefix)]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError("gmta did not stop within the timeout; log:\n" +
                                     "\n".join(self.lines))
        self._reader.join(5)
        return self.proc.returncode


@pytest.fixture
def start_gmta(tmp_path, request):
    """``start_gmta(config_text, listeners=N)`` → a started GmtaProcess.

    A config that names no ``dns_servers`` gets the quiet test DNS server, so
    gmta never asks the machine's resolver (no outside network here).
    """
    started: list[GmtaProcess] = []

    def start(config_text: str, listeners: int = 1, env: dict | None = None) -> GmtaProcess:
        if not re.search(r"^\s*dns_servers\b", config_text, re.MULTILINE):
            quiet_dns = request.getfixturevalue("quiet_dns_server")
            config_text = f"dns_servers {quiet_dns.directive}\n" + config_text
        config = tmp_path / f"gmta-{len(started)}.conf"
        config.write_text(config_text)
        process = GmtaProcess(config, env)
        started.append(process)
        process.wait_for(r"event=started")
        assert len(process.addresses) == listeners, process.lines
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def state_dir(tmp_path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


def base_config(state_dir: Path, extra: str = "") -> str:
    """Globals every test config starts with."""
    return (f"hostname mx.gmta.test\nstate_dir {state_dir}\nruntime_dir {state_dir}/run\n"
            f"log stderr\n{extra}\n")


def maildir_messages(state_dir: Path, address: str) -> list[bytes]:
    local, domain = address.lower().split("@")
    new = state_dir / "maildir" / domain / local / "new"
    if not new.is_dir():
        return []
    return [p.read_bytes() for p in sorted(new.iterdir())]


def strip_delivery_fields(message: bytes) -> bytes:
    """The message as the client sent it: without the fields gmta prepended."""
    lines = message.split(b"\r\n")
    index = 0
    while lines[index].startswith((b"Return-Path:", b"Delivered-To:", b"Received:", b"\t")):
        index += 1
    return b"\r\n".join(lines[index:])
