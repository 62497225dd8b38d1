"""``proxy_protocol`` on the smtp endpoint (maddy-behaviour §2.1, E3's trust rule)."""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import struct
import subprocess
import time

import pytest

from tests.integration.conftest import base_config, maildir_messages

pytestmark = pytest.mark.integration


def proxied_config(state_dir, proxy: str) -> str:
    return base_config(state_dir, "tls off") + f"""
target.maildir mailboxes {{
    path maildir/{{domain}}/{{local}}
}}
smtp tcp://127.0.0.1:0 {{
    {proxy}
    deliver_to &mailboxes
}}
"""


def v2_header(source: str, source_port: int) -> bytes:
    addresses = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + \
        struct.pack("!HH", source_port, 25)
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) +
            struct.pack("!H", len(addresses)) + addresses)


def send_through(port: int, header: bytes, rcpt: str) -> list[bytes]:
    """Send a PROXY header, then one message pipelined in the same packet."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(header)
        reader = sock.makefile("rb")
        replies = [reader.readline()]
        sock.sendall(b"HELO proxied.example\r\nMAIL FROM:<a@sender.test>\r\n"
                     b"RCPT TO:<" + rcpt.encode() + b">\r\nDATA\r\n")
        replies += [reader.readline() for _ in range(4)]
        sock.sendall(b"Subject: p\r\n\r\nx\r\n.\r\nQUIT\r\n")
        replies += [reader.readline(), reader.readline()]
        return replies


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n",
    v2_header("192.0.2.7", 40000),
], ids=["v1", "v2"])
def test_trusted_proxy_header_sets_the_client_address(start_gmta, state_dir, header):
    gmta = start_gmta(proxied_config(state_dir, "proxy_protocol 127.0.0.0/8"))
    replies = send_through(gmta.port(), header, "pat@example.test")
    assert replies[0].startswith(b"220 ") and replies[-2].startswith(b"250 ")
    [stored] = maildir_messages(state_dir, "pat@example.test")
    assert b"Received: from proxied.example ([192.0.2.7]) by mx.gmta.test" in stored


def test_untrusted_proxy_header_is_read_but_not_believed(start_gmta, state_dir):
    gmta = start_gmta(proxied_config(state_dir, "proxy_protocol {\n trust 10.0.0.0/8\n }"))
    send_through(gmta.port(), b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n", "quinn@example.test")
    [stored] = maildir_messages(state_dir, "quinn@example.test")
    assert b"([127.0.0.1])" in stored and b"192.0.2.7" not in stored
    gmta.wait_for(r"event=proxy_untrusted .*claimed=192.0.2.7")


def test_a_connection_without_a_valid_header_is_closed_without_a_banner(start_gmta, state_dir):
    gmta = start_gmta(proxied_config(state_dir, "proxy_protocol"))
    with socket.create_connection(("127.0.0.1", gmta.port()), timeout=10) as sock:
        sock.sendall(b"EHLO not-a-proxy\r\n")
        assert sock.recv(1024) == b""
    gmta.wait_for(r"event=proxy_header_refused")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_behind_a_real_haproxy(start_gmta, state_dir, tmp_path, send_proxy):
    """haproxy (Debian package) in front of gmta; the client connects from 127.0.0.9."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(haproxy):
        pytest.fail("haproxy is not installed: run the README's test command (bash tests/run)")
    gmta = start_gmta(proxied_config(state_dir, "proxy_protocol 127.0.0.1"))
    front = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smtp
    bind 127.0.0.1:{front}
    default_backend gmta
backend gmta
    server gmta 127.0.0.1:{gmta.port()} {send_proxy}
""")
    proc = subprocess.Popen([haproxy, "-f", str(config), "-db"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", front), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "haproxy did not start"
                time.sleep(0.1)
        with smtplib.SMTP("127.0.0.1", front, timeout=10,
                          source_address=("127.0.0.9", 0)) as client:
            client.sendmail("a@sender.test", ["rory@example.test"], b"Subject: h\r\n\r\nx\r\n")
    finally:
        proc.terminate()
        proc.wait(10)
    [stored] = maildir_messages(state_dir, "rory@example.test")
    assert b"([127.0.0.9])" in stored
