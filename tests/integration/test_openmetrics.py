"""The ``openmetrics`` endpoint of the real ``gmta run``: counters move by exactly
what happened, the output parses strictly, bad requests get clean HTTP errors."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import time
import urllib.error
import urllib.request

import pytest

from tests.exposition import parse, value
from tests.integration.conftest import base_config
from tests.integration.peers import smtp_sink  # noqa: F401 (fixture)


def metrics_config(state_dir, ok_sink, soft_sink) -> str:
    return base_config(state_dir, "tls off\n") + f"""
target.smtp ok_sink {{ targets {ok_sink.address} }}
target.smtp soft_sink {{ targets {soft_sink.address} }}
target.queue q {{
    target &ok_sink
    post_init_delay 0
}}
target.queue later {{
    target &soft_sink
    post_init_delay 0
    initial_retry_time 1h
}}
smtp tcp://127.0.0.1:0 {{
    max_message_size 4K
    destination sink.test {{ deliver_to &q }}
    destination later.test {{ deliver_to &later }}
    default_destination {{ reject 550 5.1.1 "No such domain here" }}
}}
openmetrics tcp://127.0.0.1:0 {{ }}
"""


#: The endpoint label: the block's name as the logs give it.
SMTP = "smtp tcp://127.0.0.1:0"


def ports(gmta) -> tuple[int, int]:
    """The SMTP port and the HTTP port of a gmta with one smtp and one openmetrics block."""
    by_block = {block.split()[0]: int(address.rsplit(":", 1)[1])
                for address, block in gmta.addresses.items()}
    return by_block["smtp"], by_block["openmetrics"]


def scrape(port: int, openmetrics: bool = False) -> tuple[str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if openmetrics:
        request.add_header("Accept", "application/openmetrics-text; version=1.0.0")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def scrape_until(port: int, condition, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        samples = parse(scrape(port)[1])
        if condition(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_counters_move_by_what_happened(start_gmta, state_dir, smtp_sink):  # noqa: F811
    ok_sink = smtp_sink()
    soft_sink = smtp_sink("-r", "RCPT", "-b", "450 4.2.1 Try later")
    gmta = start_gmta(metrics_config(state_dir, ok_sink, soft_sink), listeners=2)
    smtp_port, http_port = ports(gmta)

    content_type, text = scrape(http_port)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    before = parse(text)
    assert value(before, "gmta_process_start_time_seconds") > 1.6e9
    assert value(before, "gmta_queue_entries", queue="q") == 0

    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
        # Accepted: one recipient, then one of two (the other refused at RCPT).
        client.sendmail("a@src.test", ["x@sink.test"], b"Subject: one\r\n\r\nhello\r\n")
        refused = client.sendmail("a@src.test", ["y@sink.test", "z@nowhere.test"],
                                  b"Subject: two\r\n\r\nhello\r\n")
        assert list(refused) == ["z@nowhere.test"]
        # Rejected at the end of data: larger than max_message_size (552).
        # (MAIL without SIZE=, or smtplib's SIZE would have it refused at MAIL.)
        client.mail("a@src.test")
        client.rcpt("x@sink.test")
        code, _ = client.data(b"Subject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 80)
        assert code == 552
        # Deferred by the soft sink: stays in the queue "later".
        client.sendmail("a@src.test", ["w@later.test"], b"Subject: three\r\n\r\nhello\r\n")
    ok_sink.wait_for_messages(2)

    after = scrape_until(http_port, lambda s: (
        value(s, "gmta_queue_deliveries_total", queue="q", result="delivered") == 2
        and value(s, "gmta_queue_deliveries_total", queue="later", result="deferred") == 1
        and value(s, "gmta_sessions_active", endpoint=SMTP) == 0
        and value(s, "gmta_queue_entries", queue="q") == 0
        and value(s, "gmta_queue_entries", queue="later") == 1))

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("gmta_sessions_opened_total", endpoint=SMTP) == 1
    assert value(after, "gmta_sessions_active", endpoint=SMTP) == 0
    assert moved("gmta_messages_accepted_total", endpoint=SMTP) == 3
    assert moved("gmta_messages_rejected_total", endpoint=SMTP, code_class="5xx") == 1
    assert moved("gmta_messages_rejected_total", endpoint=SMTP, code_class="4xx") == 0
    assert moved("gmta_recipients_accepted_total", endpoint=SMTP) == 4
    assert moved("gmta_recipients_rejected_total", endpoint=SMTP, code_class="5xx") == 1
    assert moved("gmta_queue_deliveries_total", queue="q", result="delivered") == 2
    assert moved("gmta_queue_deliveries_total", queue="q", result="deferred") == 0
    assert moved("gmta_queue_deliveries_total", queue="later", result="deferred") == 1
    assert moved("gmta_target_deliveries_total", target="ok_sink", result="delivered") == 2
    assert moved("gmta_target_deliveries_total", target="soft_sink",
                 result="temporary_failure") == 1
    assert value(after, "gmta_queue_entries", queue="q") == 0
    assert value(after, "gmta_queue_oldest_entry_age_seconds", queue="q") == 0
    assert value(after, "gmta_queue_entries", queue="later") == 1
    assert 0 < value(after, "gmta_queue_oldest_entry_age_seconds", queue="later") < 60

    content_type, text = scrape(http_port, openmetrics=True)
    assert content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    samples = parse(text, openmetrics=True)
    assert value(samples, "gmta_messages_accepted_total", endpoint=SMTP) == \
        value(after, "gmta_messages_accepted_total", endpoint=SMTP)


BAD_REQUESTS = [
    (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", b"405"),
    (b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n", b"431"),
    (b"GET /" + b"m" * 10000 + b" HTTP/1.1\r\n\r\n", b"414"),
    (b"GET /metrics HTTP/2.0\r\n\r\n", b"505"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"400"),
]


def test_bad_requests_get_clean_http_errors(start_gmta, state_dir):
    gmta = start_gmta(base_config(state_dir, "tls off\n")
                      + "smtp tcp://127.0.0.1:0 { deliver_to dummy }\n"
                      + "openmetrics tcp://127.0.0.1:0 { }\n", listeners=2)
    _, port = ports(gmta)
    for request_bytes, status in BAD_REQUESTS:
        reply = raw_request(port, request_bytes)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 " + status + b" "), (request_bytes[:40], reply[:200])
        assert b"Connection: close" in head
        assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
        if status == b"405":
            assert b"Allow: GET, HEAD" in head
    # urllib sees the same, and the server still answers scrapes afterwards.
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                                      data=b"x"), timeout=10)
    assert error.value.code == 405
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        parse(response.read().decode())


# --- workers 2: every scrape shows the whole server -----------------------------------

def test_with_two_workers_every_scrape_counts_every_worker(tmp_path, state_dir,
                                                           quiet_dns_server):
    """Sessions land on both workers and scrapes on either: each scrape shows all of
    them; a killed worker's counts survive into its successor's."""
    from tests.integration import test_workers as workers

    messages = 30
    conf = tmp_path / "gmta.conf"
    conf.write_text(f"dns_servers {quiet_dns_server.directive}\n"
                    # debug: each worker logs the scrapes it answers.
                    + base_config(state_dir, "tls off\nworkers 2\ndebug yes\n")
                    + "smtp tcp://127.0.0.1:0 { deliver_to dummy }\n"
                    + "openmetrics tcp://127.0.0.1:0 { }\n")
    gmta = workers.start(conf)
    try:
        smtp_port, http_port = ports(gmta)
        workers.send_in_parallel(smtp_port, messages)
        for index in (0, 1):
            assert any(f"worker={index} module=endpoint event=connected" in line
                       for line in gmta.lines), f"worker {index} got no session"

        def settled(count):
            return lambda s: (value(s, "gmta_messages_accepted_total", endpoint=SMTP) == count
                              and value(s, "gmta_sessions_active", endpoint=SMTP) == 0)

        first = scrape_until(http_port, settled(messages))
        start_time = value(first, "gmta_process_start_time_seconds")
        # Each scrape is a new connection, answered by either worker: all agree.
        for _ in range(10):
            samples = parse(scrape(http_port)[1])
            assert value(samples, "gmta_messages_accepted_total", endpoint=SMTP) == messages
            assert value(samples, "gmta_sessions_opened_total", endpoint=SMTP) == messages
            assert value(samples, "gmta_recipients_accepted_total", endpoint=SMTP) == messages
            assert value(samples, "gmta_sessions_active", endpoint=SMTP) == 0
            # The supervisor's start: when this run's counters began.
            assert value(samples, "gmta_process_start_time_seconds") == start_time
            assert value(samples, "gmta_build_info", version=gmta_version()) == 1
        assert (state_dir / "run" / "metrics" / "worker-1.metrics").is_file()

        ready_before = sum("event=worker_ready worker=1 " in line for line in gmta.lines)
        os.kill(workers.worker_pids(gmta)[1], signal.SIGKILL)
        # While worker 1 is down, and after its successor took its file over.
        samples = parse(scrape(http_port)[1])
        assert value(samples, "gmta_messages_accepted_total", endpoint=SMTP) == messages
        workers.wait_for_count(gmta, "event=worker_ready worker=1 ", ready_before + 1)
        for _ in range(6):
            samples = parse(scrape(http_port)[1])
            assert value(samples, "gmta_messages_accepted_total", endpoint=SMTP) == messages
            assert value(samples, "gmta_sessions_opened_total", endpoint=SMTP) == messages
            assert value(samples, "gmta_process_start_time_seconds") == start_time
        workers.send_in_parallel(smtp_port, messages)
        scrape_until(http_port, settled(2 * messages))
        for _ in range(6):
            samples = parse(scrape(http_port)[1])
            assert value(samples, "gmta_messages_accepted_total", endpoint=SMTP) == 2 * messages
        assert not any("metrics_file_discarded" in line for line in gmta.lines)
        for index in (0, 1):
            assert any(f"worker={index} module=openmetrics event=scraped" in line
                       for line in gmta.lines), f"worker {index} answered no scrape"
    finally:
        assert gmta.stop() == 0, "\n".join(gmta.lines)


def gmta_version() -> str:
    from gmta import __version__
    return __version__


# --- outbound TLS failures --------------------------------------------------------------

def test_outbound_tls_failures_are_counted(start_gmta, state_dir, tmp_path,
                                           smtp_sink):  # noqa: F811
    """target.smtp over tls:// to a server whose certificate comes from a CA gmta does
    not trust (verify), and to a server that speaks no TLS at all (handshake)."""
    from tests.integration import testca
    from tests.integration.tlspeer import TLSPeer

    trusted = testca.issue("Trusted CA", ca=True)
    untrusted = testca.issue("Untrusted CA", ca=True)
    cert, key = testca.write_chain(tmp_path / "tls", "peer",
                                   testca.issue("127.0.0.1", issuer=untrusted), untrusted)
    root_ca = testca.write_ca(tmp_path / "tls", "trusted", trusted)
    peer = TLSPeer("127.0.0.1", cert, key)
    plain = smtp_sink()
    try:
        gmta = start_gmta(base_config(state_dir, "tls off\n") + f"""
target.smtp untrusted_peer {{
    targets tls://127.0.0.1:{peer.port}
    tls_client {{ root_ca {root_ca} }}
}}
target.smtp plaintext_peer {{
    targets tls://{plain.address.split("://")[-1]}
    tls_client {{ root_ca {root_ca} }}
}}
smtp tcp://127.0.0.1:0 {{
    destination untrusted.test {{ deliver_to &untrusted_peer }}
    destination plain.test {{ deliver_to &plaintext_peer }}
    default_destination {{ reject }}
}}
openmetrics tcp://127.0.0.1:0 {{ }}
""", listeners=2)
        smtp_port, http_port = ports(gmta)
        before = parse(scrape(http_port)[1])
        for rcpt in ("a@untrusted.test", "b@plain.test"):
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
                # target.smtp connects at the first RCPT: the handshake's failure is its answer.
                client.ehlo()
                client.mail("s@src.test")
                code, text = client.rcpt(rcpt)
                assert code == 451, text
        after = parse(scrape(http_port)[1])
    finally:
        peer.stop()
    assert value(before, "gmta_outbound_tls_failures_total", kind="verify") == 0
    assert value(after, "gmta_outbound_tls_failures_total", kind="verify") == 1
    assert value(after, "gmta_outbound_tls_failures_total", kind="handshake") == 1
    assert any("not trusted" in line for line in gmta.lines), gmta.lines
