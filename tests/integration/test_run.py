"""``gmta run`` as a user sees it: real process, real sockets, real clients.

Scenarios follow maddy-behaviour §3.1 (E1, E10, E11, E15, E18) on what is
built: the smtp and lmtp endpoints, STARTTLS and tls://, deliver_to into
target.maildir, and the process shell (clean stop, exit status 2).
"""

from __future__ import annotations

import signal
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from tests.integration.conftest import (GMTA, ROOT, base_config, maildir_messages,
                                        strip_delivery_fields)

pytestmark = pytest.mark.integration

MAILDIR_BLOCK = """
target.maildir local_mailboxes {
    path maildir/{domain}/{local}
}
"""


def smtp_config(state_dir, endpoint_extra: str = "", tls: str = "tls off",
                listen: str = "tcp://127.0.0.1:0") -> str:
    return base_config(state_dir, tls) + MAILDIR_BLOCK + f"""
smtp {listen} {{
    deliver_to &local_mailboxes
    {endpoint_extra}
}}
"""


def insecure_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_banner_and_capabilities_without_tls(start_gmta, state_dir):
    """E1: banner, EHLO capabilities, no STARTTLS when tls is off, QUIT."""
    gmta = start_gmta(smtp_config(state_dir))
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        code, banner = client.ehlo("localhost")
        assert code == 250
        assert client.sock is not None
        features = banner.decode().split("\n")[1:]
        assert features[:4] == ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING"]
        assert "STARTTLS" not in features and "REQUIRETLS" not in features
        assert "SIZE 33554432" in features
        assert features[-1] == "LIMITS RCPTMAX=20000"
        assert "DSN" in features  # RFC 3461, honoured by target.queue
        assert client.noop() == (250, b"2.0.0 I have successfully done nothing")
    # smtplib's context manager sent QUIT: a 221 was read without error.


def test_banner_text(start_gmta, state_dir):
    gmta = start_gmta(smtp_config(state_dir))
    with socket.create_connection(("127.0.0.1", gmta.port()), timeout=10) as sock:
        assert sock.recv(1024) == b"220 mx.gmta.test ESMTP Service Ready\r\n"


def test_message_lands_in_maildir_byte_exact(start_gmta, state_dir):
    """E11/E18: a 1.4 MiB message with dot-stuffed lines is filed byte for byte."""
    gmta = start_gmta(smtp_config(state_dir))
    lines = [b"Subject: big", b"From: a@sender.test", b""]
    lines += [(b"." if i % 7 == 0 else b"") + b"x" * 498 + b"%04d" % i for i in range(3000)]
    message = b"\r\n".join(lines) + b"\r\n"
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=30) as client:
        refused = client.sendmail("a@sender.test", ["Bob@Example.TEST"], message)
    assert refused == {}
    [stored] = maildir_messages(state_dir, "bob@example.test")
    assert stored.startswith(b"Return-Path: <a@sender.test>\r\nDelivered-To: Bob@example.test\r\n"
                             b"Received: from localhost") or \
        stored.startswith(b"Return-Path: <a@sender.test>\r\nDelivered-To: ")
    assert strip_delivery_fields(stored) == message
    assert b"(envelope-sender <a@sender.test>) with ESMTP id " in stored
    assert b"for <" in stored  # one recipient: the Received field names it


def test_three_messages_in_one_session_and_rset(start_gmta, state_dir):
    """E15: MAIL/RCPT/RSET delivers nothing; the full transactions that follow all do."""
    gmta = start_gmta(smtp_config(state_dir))
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        client.ehlo()
        client.mail("a@sender.test")
        client.rcpt("carol@example.test")
        assert client.rset()[0] == 250
        for n in range(3):
            client.sendmail("a@sender.test", ["carol@example.test"], f"Subject: {n}\r\n\r\n{n}\r\n")
    stored = maildir_messages(state_dir, "carol@example.test")
    assert len(stored) == 3
    assert sorted(strip_delivery_fields(m) for m in stored) == \
        [f"Subject: {n}\r\n\r\n{n}\r\n".encode() for n in range(3)]


def test_disconnect_in_the_middle_of_data_delivers_nothing(start_gmta, state_dir):
    """E15: a client that goes away mid-DATA leaves no message and no temp file behind."""
    gmta = start_gmta(smtp_config(state_dir, "buffer fs"))
    with socket.create_connection(("127.0.0.1", gmta.port()), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"EHLO x\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        sock.sendall(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<dave@example.test>\r\nDATA\r\n")
        assert reader.readline().startswith(b"250")
        assert reader.readline().startswith(b"250")
        assert reader.readline().startswith(b"354")
        sock.sendall(b"Subject: cut\r\n\r\n" + b"y" * 100_000)
    gmta.wait_for(r"event=connected")
    # The session ends when gmta reads EOF; give it a moment through a second session.
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        client.noop()
    assert maildir_messages(state_dir, "dave@example.test") == []
    buffers = state_dir / "buffer"
    assert not buffers.exists() or list(buffers.iterdir()) == []


def test_empty_body_is_delivered(start_gmta, state_dir):
    gmta = start_gmta(smtp_config(state_dir))
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        client.ehlo()
        client.mail("")
        client.rcpt("erin@example.test")
        assert client.data(b"")[0] == 250
    [stored] = maildir_messages(state_dir, "erin@example.test")
    assert stored.startswith(b"Return-Path: <>\r\n")


def test_oversized_message_is_refused_with_552_and_not_delivered(start_gmta, state_dir):
    gmta = start_gmta(smtp_config(state_dir, "max_message_size 10K"))
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        client.ehlo()
        # Declared size over the limit: refused at MAIL.
        code, text = client.mail("a@sender.test", ["SIZE=20000"])
        assert (code, text[:5]) == (552, b"5.3.4")
        # Undeclared: refused after the final dot, and the session goes on.
        client.mail("a@sender.test")
        client.rcpt("frank@example.test")
        code, text = client.data(b"Subject: big\r\n\r\n" + (b"z" * 990 + b"\r\n") * 20)
        assert (code, text) == (552, b"5.3.4 Max message size exceeded")
        assert client.noop()[0] == 250
    assert maildir_messages(state_dir, "frank@example.test") == []


def test_bare_postmaster_and_duplicate_recipients(start_gmta, state_dir):
    """maddy #384 (bare postmaster) and #94 (duplicates delivered once)."""
    config = smtp_config(state_dir).replace("path maildir/{domain}/{local}",
                                             "path maildir/{address}")
    gmta = start_gmta(config)
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        client.ehlo()
        client.mail("a@sender.test")
        assert client.rcpt("postmaster")[0] == 250
        assert client.rcpt("grace@example.test")[0] == 250
        assert client.rcpt("grace@example.test")[0] == 250
        assert client.data(b"Subject: x\r\n\r\nx\r\n")[0] == 250
    assert len(list((state_dir / "maildir" / "postmaster" / "new").iterdir())) == 1
    assert len(list((state_dir / "maildir" / "grace@example.test" / "new").iterdir())) == 1


def test_reject_directive(start_gmta, state_dir):
    config = base_config(state_dir, "tls off") + """
smtp tcp://127.0.0.1:0 {
    reject 550 5.7.1 "No mail here"
}
"""
    gmta = start_gmta(config)
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        client.ehlo()
        client.mail("a@sender.test")
        assert client.rcpt("x@example.test") == (550, b"5.7.1 No mail here")


def test_starttls_with_self_signed_certificate(start_gmta, state_dir):
    """E2 (the TLS part): STARTTLS is offered, the handshake works, mail flows; the
    Received field says ESMTPS and REQUIRETLS is offered only inside TLS."""
    gmta = start_gmta(smtp_config(state_dir, tls="tls self_signed"))
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        client.ehlo()
        assert client.has_extn("starttls") and not client.has_extn("requiretls")
        assert client.starttls(context=insecure_context())[0] == 220
        client.ehlo()
        assert not client.has_extn("starttls") and client.has_extn("requiretls")
        client.sendmail("a@sender.test", ["heidi@example.test"], b"Subject: tls\r\n\r\nsecret\r\n")
    [stored] = maildir_messages(state_dir, "heidi@example.test")
    assert b" with ESMTPS id " in stored


def test_implicit_tls_listener(start_gmta, state_dir):
    gmta = start_gmta(smtp_config(state_dir, tls="tls self_signed", listen="tls://127.0.0.1:0"))
    port = gmta.port("tls://127.0.0.1")
    with smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=insecure_context()) as client:
        client.ehlo()
        assert not client.has_extn("starttls")
        client.sendmail("a@sender.test", ["ivan@example.test"], b"Subject: 465\r\n\r\nhi\r\n")
    assert len(maildir_messages(state_dir, "ivan@example.test")) == 1


def test_lmtp_replies_once_per_recipient(start_gmta, state_dir):
    """E10: LHLO, two recipients, one reply each after the final dot; also over unix://."""
    config = base_config(state_dir) + MAILDIR_BLOCK + """
lmtp tcp://127.0.0.1:0 unix://lmtp.sock {
    deliver_to &local_mailboxes
}
"""
    gmta = start_gmta(config, listeners=2)
    with socket.create_connection(("127.0.0.1", gmta.port()), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline() == b"220 mx.gmta.test LMTP Service Ready\r\n"
        sock.sendall(b"LHLO client\r\nMAIL FROM:<a@sender.test>\r\n"
                     b"RCPT TO:<to1@example.test>\r\nRCPT TO:<to2@example.test>\r\nDATA\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        assert [reader.readline()[:3] for _ in range(4)] == [b"250", b"250", b"250", b"354"]
        sock.sendall(b"Subject: lmtp\r\n\r\nbody\r\n.\r\n")
        assert reader.readline() == b"250 2.0.0 <to1@example.test> OK: queued\r\n"
        assert reader.readline() == b"250 2.0.0 <to2@example.test> OK: queued\r\n"
    with smtplib.LMTP(str(state_dir / "run" / "lmtp.sock"), timeout=10) as client:
        client.sendmail("a@sender.test", ["to3@example.test"], b"Subject: unix\r\n\r\nx\r\n")
    for rcpt in ("to1@example.test", "to2@example.test", "to3@example.test"):
        [stored] = maildir_messages(state_dir, rcpt)
        assert b" with LMTP id " in stored


def test_sigterm_stops_cleanly(start_gmta, state_dir):
    gmta = start_gmta(smtp_config(state_dir))
    assert gmta.stop(signal.SIGTERM) == 0
    gmta.wait_for(r"event=stopping signal=SIGTERM")
    gmta.wait_for(r"event=stopped")


def test_sigint_stops_cleanly(start_gmta, state_dir):
    gmta = start_gmta(smtp_config(state_dir))
    assert gmta.stop(signal.SIGINT) == 0
    gmta.wait_for(r"event=stopping signal=SIGINT")


def test_config_error_exits_2_with_file_and_line(tmp_path):
    config = tmp_path / "broken.conf"
    config.write_text("hostname mx.gmta.test\nsmtp tcp://127.0.0.1:0 {\n    max_message_size 32MB\n"
                      "    deliver_to dummy\n}\n")
    result = subprocess.run(GMTA + ["run", "-c", str(config)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{config}:3: max_message_size: invalid size '32MB'")


def test_occupied_port_is_a_clear_error(tmp_path, state_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        config = tmp_path / "busy.conf"
        config.write_text(smtp_config(state_dir, listen=f"tcp://127.0.0.1:{port}"))
        result = subprocess.run(GMTA + ["run", "-c", str(config)], capture_output=True, text=True,
                                timeout=30)
    assert result.returncode == 1
    assert f"cannot listen on tcp://127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize("name", ["gmta-dev.conf", "gmta.conf"])
def test_shipped_configs_check_out(tmp_path, name):
    """etc/gmta-dev.conf as it is; etc/gmta.conf with its certificate swapped for a
    generated one (the production paths do not exist on a test machine)."""
    text = (ROOT / "etc" / name).read_text()
    if name == "gmta.conf":
        text = text.replace("tls file /etc/gmta/certs/$(hostname)/fullchain.pem "
                            "/etc/gmta/certs/$(hostname)/privkey.pem", "tls self_signed")
        text = text.replace("state_dir /var/lib/gmta", f"state_dir {tmp_path}")
        assert "tls self_signed" in text
        path = tmp_path / name
        path.write_text(text)
    else:
        path = ROOT / "etc" / name
    result = subprocess.run(GMTA + ["check-config", "-c", str(path)], capture_output=True,
                            text=True, timeout=30)
    assert (result.returncode, result.stdout) == (0, "No errors detected\n"), result.stderr


def test_sigterm_says_421_to_idle_sessions_at_once(start_gmta, state_dir):
    """An idle client does not hold up the stop: it gets 421 4.3.2 right away."""
    gmta = start_gmta(smtp_config(state_dir))
    with socket.create_connection(("127.0.0.1", gmta.port()), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"EHLO x\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        started = time.monotonic()
        gmta.proc.send_signal(signal.SIGTERM)
        assert reader.readline() == b"421 4.3.2 Service shutting down, try again later\r\n"
        assert time.monotonic() - started < 5
    assert gmta.proc.wait(15) == 0


def test_sigterm_lets_a_transaction_finish(start_gmta, state_dir):
    gmta = start_gmta(smtp_config(state_dir))
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        client.ehlo()
        client.mail("a@sender.test")
        client.rcpt("judy@example.test")
        gmta.proc.send_signal(signal.SIGTERM)
        gmta.wait_for("event=stopping")
        assert client.data(b"Subject: late\r\n\r\nstill delivered\r\n")[0] == 250
        assert client.noop()[0] == 421
    assert gmta.proc.wait(15) == 0
    assert len(maildir_messages(state_dir, "judy@example.test")) == 1


def test_second_signal_stops_at_once(start_gmta, state_dir):
    gmta = start_gmta(smtp_config(state_dir))
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        client.ehlo()
        client.mail("a@sender.test")
        client.rcpt("judy@example.test")
        gmta.proc.send_signal(signal.SIGTERM)
        gmta.wait_for("event=stopping")
        gmta.proc.send_signal(signal.SIGINT)
        assert gmta.proc.wait(15) == 1
    gmta.wait_for("event=stopping_now signal=SIGINT")
    assert maildir_messages(state_dir, "judy@example.test") == []


def test_addresses_are_normalised_before_delivery(start_gmta, state_dir):
    """U-label and A-label spellings of one domain reach one Maildir (maddy §2.1)."""
    gmta = start_gmta(smtp_config(state_dir))
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        client.sendmail("a@sender.test", ["kim@xn--bcher-kva.example"], b"Subject: 1\r\n\r\n1\r\n")
        client.sendmail("a@sender.test", ["kim@B\u00fccher.example"], b"Subject: 2\r\n\r\n2\r\n",
                        mail_options=["SMTPUTF8"])
    assert len(maildir_messages(state_dir, "kim@b\u00fccher.example")) == 2


@pytest.mark.parametrize("received, accepted", [(3, True), (4, False)])
def test_max_received_refuses_loops(start_gmta, state_dir, received, accepted):
    gmta = start_gmta(smtp_config(state_dir, "max_received 3"))
    header = b"".join(b"Received: from hop%d by x; Sat, 21 Nov 2026 05:00:00 +0000\r\n" % i
                      for i in range(received))
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        client.ehlo()
        client.mail("a@sender.test")
        client.rcpt("liam@example.test")
        code, text = client.data(header + b"Subject: loop\r\n\r\nx\r\n")
    if accepted:
        assert code == 250
    else:
        assert (code, text) == (554, b"5.4.6 Too many Received header fields (4), "
                                      b"possible forwarding loop")
    assert len(maildir_messages(state_dir, "liam@example.test")) == int(accepted)


def test_io_debug_logs_the_dialogue(start_gmta, state_dir):
    gmta = start_gmta(smtp_config(state_dir, "io_debug yes"))
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        client.noop()
    gmta.wait_for(r'event=io .*direction=in data="noop\\r\\n"')
    gmta.wait_for(r'event=io .*direction=out data="250 2.0.0 I have successfully done nothing')
