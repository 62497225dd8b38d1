"""Forward-confirmed reverse DNS of the client (issue 3) in the Received field.

maddy's Received line reads ``from EHLO (rDNS [IP])`` (maddy-behaviour §2.1).
gmta shows the PTR name only when it resolves back to the client's address,
keeps the result in the message's connection facts, and never makes the
greeting wait for DNS.
"""

from __future__ import annotations

import re
import smtplib
import socket
import time

import pytest

import gmta.modules  # noqa: F401
from gmta.config.loader import load_text
from gmta.net.dns import Resolver
from gmta.net.rdns import (CONFIRMED, NO_PTR, RDNS_TIMEOUT, TEMPERROR, UNCONFIRMED,
                           ReverseLookup, reverse_name)
from tests.integration.conftest import base_config, maildir_messages
from tests.unit.test_endpoint_session import Conversation

pytestmark = pytest.mark.integration


@pytest.fixture
def rdns_dns(dns_server):
    dns_server.zone("rdns.test", [
        "mail A 127.0.0.5",
        "liar A 127.0.0.99",           # PTR of 127.0.0.6 claims it; it is elsewhere
        "second A 127.0.0.7",
        "via-cname CNAME real",
        "real A 127.0.0.8",
    ])
    dns_server.ptr("127.0.0.5", "mail.rdns.test")
    dns_server.ptr("127.0.0.6", "liar.rdns.test")
    dns_server.ptr("127.0.0.7", "a-first.rdns.test", "second.rdns.test")  # first has no A
    dns_server.ptr("127.0.0.8", "via-cname.rdns.test")
    dns_server.start()
    return dns_server


@pytest.fixture
def black_hole():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.59", 0))
        yield sock.getsockname()


@pytest.mark.parametrize("ip, name, status", [
    ("127.0.0.5", "mail.rdns.test", CONFIRMED),
    ("127.0.0.6", None, UNCONFIRMED),
    ("127.0.0.7", "second.rdns.test", CONFIRMED),
    ("127.0.0.8", "via-cname.rdns.test", CONFIRMED),
    ("127.0.0.9", None, NO_PTR),
])
def test_reverse_name_is_forward_confirmed(rdns_dns, ip, name, status):
    result = reverse_name(Resolver(((rdns_dns.address, rdns_dns.port),)), ip)
    assert (result.ip, result.name, result.status) == (ip, name, status)
    assert result.facts() == {"rdns": name, "rdns_status": status}


def test_unconfirmed_result_keeps_the_ptr_names(rdns_dns):
    result = reverse_name(Resolver(((rdns_dns.address, rdns_dns.port),)), "127.0.0.6")
    assert result.ptr_names == ("liar.rdns.test",)


def test_slow_dns_is_a_temporary_error_within_the_timeout(black_hole):
    lookup = ReverseLookup(Resolver((black_hole,)), "127.0.0.5", timeout=0.5)
    started = time.monotonic()
    result = lookup.result()
    assert (result.name, result.status) == (None, TEMPERROR)
    assert time.monotonic() - started < 2


ENDPOINT_CONFIG = """hostname mx.test
state_dir {state}
tls off
dns_servers {dns}
target.maildir mb {{
    path maildir/{{domain}}/{{local}}
}}
smtp tcp://127.0.0.1:0 {{
    deliver_to &mb
}}
"""


@pytest.mark.parametrize("peer, shown, status", [
    ("127.0.0.5", "mail.rdns.test [127.0.0.5]", CONFIRMED),
    ("127.0.0.6", "[127.0.0.6]", UNCONFIRMED),
])
def test_endpoint_keeps_rdns_in_the_connection_facts(rdns_dns, tmp_path, peer, shown, status):
    config = load_text(ENDPOINT_CONFIG.format(state=tmp_path, dns=rdns_dns.directive), "e.conf")
    [endpoint] = config.endpoints
    c = Conversation(endpoint, (peer, 40000))
    try:
        assert c.client.reply().startswith("220 ")
        c.say(b"EHLO client.test\r\n")
        replies = c.transaction("a@x.test", ["b@x.test"], b"Subject: hi\r\n\r\nhello\r\n")
        assert replies[-1] == "250 2.0.0 OK: queued"
        assert c.handler.meta.conn["rdns"] == (shown.split()[0] if status == CONFIRMED else None)
        assert c.handler.meta.conn["rdns_status"] == status
    finally:
        c.greenlet.kill(block=True, timeout=5)
        c.client.sock.close()
    [message] = (tmp_path / "maildir" / "x.test" / "b" / "new").iterdir()
    assert f"Received: from client.test ({shown}) by mx.test".encode() in message.read_bytes()


def smtp_config(state_dir, dns: str) -> str:
    return base_config(state_dir, f"tls off\ndns_servers {dns}") + """
target.maildir mb {
    path maildir/{domain}/{local}
}
smtp tcp://127.0.0.1:0 {
    deliver_to &mb
}
"""


def send_from(source_ip: str, port: int, rcpt: str) -> float:
    """Send one message from *source_ip*; return the seconds the greeting took."""
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source_ip, 0),
                      local_hostname="client.test") as client:
        greeted = time.monotonic() - started
        assert client.sendmail("a@sender.test", [rcpt], b"Subject: rdns\r\n\r\nhi\r\n") == {}
    return greeted


def test_received_shows_the_confirmed_name_end_to_end(start_gmta, state_dir, rdns_dns):
    gmta = start_gmta(smtp_config(state_dir, rdns_dns.directive))
    send_from("127.0.0.5", gmta.port(), "confirmed@example.test")
    send_from("127.0.0.6", gmta.port(), "unconfirmed@example.test")
    [confirmed] = maildir_messages(state_dir, "confirmed@example.test")
    assert b"Received: from client.test (mail.rdns.test [127.0.0.5]) by mx.gmta.test\r\n" \
        in confirmed
    [unconfirmed] = maildir_messages(state_dir, "unconfirmed@example.test")
    assert re.search(rb"Received: from client\.test \(\[127\.0\.0\.6\]\) by mx\.gmta\.test\r\n",
                     unconfirmed)


def test_unanswered_rdns_does_not_delay_the_greeting(start_gmta, state_dir, black_hole):
    """The PTR lookup runs beside the session: the banner comes at once; the
    message waits at most RDNS_TIMEOUT at its end, then goes without a name."""
    gmta = start_gmta(smtp_config(state_dir, "%s:%d" % black_hole))
    started = time.monotonic()
    greeted = send_from("127.0.0.5", gmta.port(), "slow@example.test")
    assert greeted < 1.0
    assert time.monotonic() - started < RDNS_TIMEOUT + 3
    [message] = maildir_messages(state_dir, "slow@example.test")
    assert b"Received: from client.test ([127.0.0.5]) by mx.gmta.test\r\n" in message
