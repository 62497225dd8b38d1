"""Configuration reload (SIGHUP, SIGUSR2) of the real ``gmta run``.

The configuration file the fixture wrote is rewritten, then the signal is
sent; the log says ``reloaded`` or ``reload_failed``. Clients are smtplib and
raw sockets; mail lands in Maildirs, through a queue where the scheduler's
handover matters.
"""

from __future__ import annotations

import signal
import smtplib
import socket
import threading
import time
import urllib.request

import pytest

from tests.integration.conftest import GmtaProcess, base_config, maildir_messages

pytestmark = pytest.mark.integration

QUEUED = """
target.maildir local_mailboxes {{
    path maildir/{{domain}}/{{local}}
}}
target.queue inbound {{
    target &local_mailboxes
    post_init_delay 0
}}
smtp {listen} {{
    hostname {hostname}
    tls off
    {rules}
}}
"""


def queued_config(state_dir, hostname="a.gmta.test", listen="tcp://127.0.0.1:0",
                  rules="deliver_to &inbound") -> str:
    return base_config(state_dir) + QUEUED.format(listen=listen, hostname=hostname, rules=rules)


def count_lines(gmta: GmtaProcess, pattern: str) -> int:
    return sum(pattern in line for line in list(gmta.lines))


def reload(gmta: GmtaProcess, new_text: str, sig: int = signal.SIGHUP,
           expect: str = "event=reloaded", timeout: float = 15.0) -> None:
    """Rewrite the configuration (keeping the test DNS server line), signal, wait for *expect*."""
    first_line = gmta.config_path.read_text().splitlines()[0]
    if first_line.startswith("dns_servers") and not new_text.startswith("dns_servers"):
        new_text = first_line + "\n" + new_text
    gmta.config_path.write_text(new_text)
    before = count_lines(gmta, expect)
    gmta.proc.send_signal(sig)
    deadline = time.monotonic() + timeout
    while count_lines(gmta, expect) <= before:
        assert gmta.proc.poll() is None, "\n".join(gmta.lines)
        assert time.monotonic() < deadline, f"no new {expect!r}; log:\n" + "\n".join(gmta.lines)
        time.sleep(0.02)


def wait_for_mail(state_dir, address: str, count: int, timeout: float = 20.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while len(messages := maildir_messages(state_dir, address)) < count:
        assert time.monotonic() < deadline, f"{len(messages)} of {count} messages arrived"
        time.sleep(0.05)
    return messages


class Sender(threading.Thread):
    """Sends messages until told to stop: one session for all, or a new session for each."""

    def __init__(self, port: int, rcpt: str, reuse: bool, limit: int = 2000):
        super().__init__(daemon=True)
        self.port, self.rcpt, self.reuse, self.limit = port, rcpt, reuse, limit
        self.sent = 0
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        client = None
        try:
            while not self.stop.is_set() and self.sent < self.limit:
                if client is None:
                    client = smtplib.SMTP("127.0.0.1", self.port, timeout=15)
                client.sendmail("load@sender.test", [self.rcpt],
                                f"Subject: {self.sent}\r\n\r\nmessage {self.sent}\r\n".encode())
                self.sent += 1
                if not self.reuse:
                    client.quit()
                    client = None
            if client is not None:
                client.quit()
        except Exception as e:  # the test asserts there was none
            self.errors.append(repr(e))


def test_reload_under_load_loses_nothing(start_gmta, state_dir):
    """Two clients send all the time, one session for everything and one session per
    message, across three reloads: every message is delivered once, no client sees an error."""
    gmta = start_gmta(queued_config(state_dir))
    port = gmta.port()
    senders = [Sender(port, "steady@example.test", reuse=True),
               Sender(port, "fresh@example.test", reuse=False)]
    for sender in senders:
        sender.start()
    try:
        for n in range(3):
            time.sleep(0.4)
            reload(gmta, queued_config(state_dir, hostname=f"r{n}.gmta.test"),
                   sig=signal.SIGHUP if n % 2 == 0 else signal.SIGUSR2)
        time.sleep(0.4)
    finally:
        for sender in senders:
            sender.stop.set()
        for sender in senders:
            sender.join(30)
    assert [s.errors for s in senders] == [[], []]
    assert all(s.sent > 3 for s in senders), [s.sent for s in senders]
    for sender in senders:
        messages = wait_for_mail(state_dir, sender.rcpt, sender.sent)
        subjects = sorted(int(m.split(b"Subject: ")[1].split(b"\r\n")[0]) for m in messages)
        assert subjects == list(range(sender.sent))
    # One scheduler per queue directory at a time: each reload handed it over.
    assert count_lines(gmta, "event=scheduler_taken_over") == 3
    assert count_lines(gmta, "event=reload_failed") == 0


def banner_and_rcpt(sock_file, sock, rcpt: str) -> tuple[bytes, bytes]:
    sock.sendall(f"MAIL FROM:<a@sender.test>\r\nRCPT TO:<{rcpt}>\r\n".encode())
    mail = sock_file.readline()
    assert mail.startswith(b"250"), mail
    rcpt_reply = sock_file.readline()
    sock.sendall(b"RSET\r\n")
    assert sock_file.readline().startswith(b"250")
    return mail, rcpt_reply


def test_e19_open_session_keeps_the_old_configuration(start_gmta, state_dir):
    """E19: a session opened under A (reject) keeps rejecting after the reload to B
    (deliver, another hostname); a new session gets B."""
    reject = ('destination other.test {\n deliver_to &inbound\n }\n'
              'default_destination {\n reject 550 5.7.1 "Closed for the test"\n }')
    gmta = start_gmta(queued_config(state_dir, hostname="a.gmta.test", rules=reject))
    port = gmta.port()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as old:
        old_file = old.makefile("rb")
        assert old_file.readline().startswith(b"220 a.gmta.test ")
        old.sendall(b"EHLO client.test\r\n")
        while not old_file.readline().startswith(b"250 "):
            pass
        assert banner_and_rcpt(old_file, old, "kim@example.test")[1].startswith(b"550 5.7.1")

        reload(gmta, queued_config(state_dir, hostname="b.gmta.test"))

        with smtplib.SMTP("127.0.0.1", port, timeout=10) as new:
            assert b"b.gmta.test" in new.ehlo()[1]
            new.sendmail("a@sender.test", ["kim@example.test"], b"Subject: B\r\n\r\nbody\r\n")
        # The old session still answers as A, transaction after transaction.
        for _ in range(2):
            assert banner_and_rcpt(old_file, old, "kim@example.test")[1].startswith(b"550 5.7.1")
        old.sendall(b"QUIT\r\n")
        assert old_file.readline().startswith(b"221 ")
    [message] = wait_for_mail(state_dir, "kim@example.test", 1)
    assert b"by b.gmta.test" in message
    gmta.wait_for("event=old_configuration_stopped")


def test_a_broken_configuration_is_refused_and_the_old_one_keeps_serving(start_gmta, state_dir):
    good = queued_config(state_dir)
    gmta = start_gmta(good)
    port = gmta.port()
    broken = good.replace("    tls off\n", "    tls off\n    no_such_directive yes\n")
    reload(gmta, broken, expect="event=reload_failed")
    line = gmta.wait_for("event=reload_failed")
    # file:line of the bad directive (the fixture's dns_servers line comes first).
    bad_line = gmta.config_path.read_text().splitlines().index("    no_such_directive yes") + 1
    assert f'error="{gmta.config_path}:{bad_line}: ' in line
    assert "kept=" in line
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        assert b"a.gmta.test" in client.ehlo()[1]
        client.sendmail("a@sender.test", ["kim@example.test"], b"Subject: 1\r\n\r\n1\r\n")
    wait_for_mail(state_dir, "kim@example.test", 1)
    # A module that fails to start (a port another process holds) is refused too.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        taken = squatter.getsockname()[1]
        reload(gmta, queued_config(state_dir, listen=f"tcp://127.0.0.1:0 tcp://127.0.0.1:{taken}"),
               expect="event=reload_failed")
        assert count_lines(gmta, "Address already in use") == 1
    # Fixed: the next reload is taken.
    reload(gmta, queued_config(state_dir, hostname="fixed.gmta.test"))
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        assert b"fixed.gmta.test" in client.ehlo()[1]
    assert gmta.proc.poll() is None


def test_removed_addresses_close_and_new_ones_listen(start_gmta, state_dir):
    two = "tcp://127.0.0.1:0 tcp://127.0.0.1:0"
    gmta = start_gmta(queued_config(state_dir, listen=two), listeners=2)
    kept, removed = gmta.ports("tcp://127.0.0.1")
    lmtp_path = state_dir / "run" / "new.sock"
    reload(gmta, queued_config(state_dir, listen=f"tcp://127.0.0.1:0 unix://{lmtp_path}"))
    # The first port-0 address kept the kernel's port (matched by its position).
    with smtplib.SMTP("127.0.0.1", kept, timeout=10) as client:
        client.sendmail("a@sender.test", ["kim@example.test"], b"Subject: 1\r\n\r\n1\r\n")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", removed), timeout=5).close()
    with socket.socket(socket.AF_UNIX) as unix:
        unix.settimeout(10)
        unix.connect(str(lmtp_path))
        assert unix.makefile("rb").readline().startswith(b"220 ")
    wait_for_mail(state_dir, "kim@example.test", 1)


def test_openmetrics_keeps_its_port_across_a_reload(start_gmta, state_dir):
    """Every endpoint module hands its listeners over, not only smtp: a config with an
    openmetrics block reloads, and the scrape port keeps answering."""
    metrics_block = "openmetrics tcp://127.0.0.1:0 { }\n"
    gmta = start_gmta(queued_config(state_dir) + metrics_block, listeners=2)
    by_block = {block.split()[0]: int(address.rsplit(":", 1)[1])
                for address, block in gmta.addresses.items()}
    metrics_port = by_block["openmetrics"]

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=10) as response:
            return response.read().decode()

    assert "gmta_sessions_opened_total" in scrape()
    reload(gmta, queued_config(state_dir, hostname="b.gmta.test") + metrics_block)
    assert "gmta_sessions_opened_total" in scrape()
    with socket.create_connection(("127.0.0.1", by_block["smtp"]), timeout=10) as s:
        assert s.recv(512).split(b" ")[1] == b"b.gmta.test"
