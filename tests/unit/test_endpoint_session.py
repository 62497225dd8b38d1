"""EndpointSession behind the real driver: an ``smtp``/``lmtp`` block loaded from text,
its ``_handle`` run on one end of a socketpair (no listener, no subprocess), mail
delivered into ``target.maildir`` under ``tmp_path``.

The end-to-end paths through ``gmta run`` are in tests/integration; these check
the glue quickly: header/body split, Received, buffers freed, aborts, refusals.
"""

from __future__ import annotations

import os
import re

import gevent
import pytest
from gevent import socket

import gmta.modules  # noqa: F401
from gmta.config.loader import load_text
from tests.unit.test_session_driver import WAIT, Client

PEER = ("192.0.2.7", 40000)

CONFIG = """hostname mx.test
state_dir {state}
tls off
{maildir}
{kind} {address} {{
{body}
}}
"""


class Conversation:
    def __init__(self, endpoint, peer=PEER):
        self.endpoint = endpoint
        server_sock, client_sock = socket.socketpair()
        self.client = Client(client_sock)
        self.greenlet = gevent.spawn(endpoint._handle, endpoint.addresses[0], server_sock, peer)

    @property
    def handler(self):
        return self.greenlet.driver.handler

    def say(self, data: bytes) -> str:
        return self.client.say(data)

    def send(self, data: bytes, replies: int) -> list[str]:
        self.client.send(data)
        return self.client.replies(replies)

    def transaction(self, sender: str, rcpts: list[str], message: bytes) -> list[str]:
        data = f"MAIL FROM:<{sender}>\r\n".encode()
        data += b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts) + b"DATA\r\n"
        replies = self.send(data, 2 + len(rcpts))
        if not replies[-1].startswith("354"):
            return replies
        return replies + self.send(message + b".\r\n", 1)

    def finish(self):
        self.greenlet.get(timeout=WAIT)


@pytest.fixture
def endpoint(tmp_path):
    def make(body="    deliver_to &mb", kind="smtp", address="tcp://127.0.0.1:0"):
        maildir = "target.maildir mb {\n    path maildir/{domain}/{local}\n}" \
            if "&mb" in body else ""
        config = load_text(CONFIG.format(state=tmp_path, kind=kind, address=address, body=body,
                                         maildir=maildir), "e.conf")
        [ep] = config.endpoints
        return ep
    return make


@pytest.fixture
def talk(endpoint):
    made = []

    def make(body="    deliver_to &mb", kind="smtp", address="tcp://127.0.0.1:0", peer=PEER,
             greet=True):
        c = Conversation(endpoint(body, kind, address), peer)
        made.append(c)
        assert c.client.reply().startswith("220 mx.test")
        if greet:
            hello = b"LHLO" if kind == "lmtp" else b"EHLO"
            assert c.say(hello + b" client.test\r\n").startswith("250-mx.test")
        return c

    yield make
    for c in made:
        c.greenlet.kill(block=True, timeout=WAIT)
        c.client.sock.close()


def stored(tmp_path, address: str) -> list[bytes]:
    local, domain = address.split("@")
    new = tmp_path / "maildir" / domain / local / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


def leftovers(tmp_path) -> list[str]:
    """Files left in buffer/ and any maildir tmp/."""
    found = []
    for directory, _, files in os.walk(tmp_path):
        if os.path.basename(directory) in ("buffer", "tmp"):
            found += [os.path.join(directory, f) for f in files]
    return found


RECEIVED = re.compile(
    rb"Received: from client\.test \(\[192\.0\.2\.7\]\) by mx\.test\r\n"
    rb"\t\(envelope-sender <a@x\.test>\) with ESMTP id ([0-9a-f]{16}) for <B@x\.test>;\r\n"
    rb"\t[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r\n")


def test_message_is_filed_with_received_and_delivery_fields(talk, tmp_path, log_lines):
    c = talk()
    replies = c.transaction("a@x.test", ["B@X.test"], b"Subject: hi\r\n\r\nhello\r\n")
    assert replies[-1] == "250 2.0.0 OK: queued"
    [message] = stored(tmp_path, "b@x.test")
    prefix = b"Return-Path: <a@x.test>\r\nDelivered-To: B@x.test\r\n"
    assert message.startswith(prefix)
    match = RECEIVED.match(message, len(prefix))
    assert match, message
    assert message[match.end():] == b"Subject: hi\r\n\r\nhello\r\n"
    [accepted] = [x for x in log_lines if "event=accepted" in x]
    assert f"msg_id={match.group(1).decode()} sender=a@x.test rcpts=1 size=" in accepted
    assert leftovers(tmp_path) == []


def test_several_recipients_and_a_duplicate(talk, tmp_path):
    c = talk()
    replies = c.transaction("a@x.test", ["b@x.test", "c@x.test", "b@x.test"],
                            b"Subject: hi\r\n\r\nx\r\n")
    assert [r[:3] for r in replies] == ["250"] * 4 + ["354", "250"]
    assert len(stored(tmp_path, "b@x.test")) == 1
    [message] = stored(tmp_path, "c@x.test")
    assert b" for <" not in message      # "for" only names a single recipient


def test_message_without_an_empty_line_is_all_header(talk, tmp_path):
    c = talk()
    c.transaction("a@x.test", ["b@x.test"], b"Subject: only\r\nX-A: b\r\n")
    [message] = stored(tmp_path, "b@x.test")
    assert message.endswith(b"\r\nSubject: only\r\nX-A: b\r\n")


def test_message_with_an_empty_header(talk, tmp_path):
    c = talk()
    c.transaction("a@x.test", ["b@x.test"], b"\r\nbody only\r\n")
    [message] = stored(tmp_path, "b@x.test")
    assert re.search(rb";\r\n\t[^\r\n]+\r\n\r\nbody only\r\n\Z", message)


def test_header_split_across_bdat_chunks(talk, tmp_path):
    c = talk()
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n", 2)
    parts = [b"Subj", b"ect: x\r", b"\n\r", b"\nbo", b"dy"]
    for i, part in enumerate(parts):
        last = b" LAST" if i == len(parts) - 1 else b""
        assert c.say(b"BDAT %d%s\r\n" % (len(part), last) + part).startswith("250")
    [message] = stored(tmp_path, "b@x.test")
    assert message.endswith(b"\r\nSubject: x\r\n\r\nbody")


def test_bdat_header_without_final_crlf_gets_one(talk, tmp_path):
    c = talk()
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n", 2)
    assert c.say(b"BDAT 10 LAST\r\nSubject: x").startswith("250")
    [message] = stored(tmp_path, "b@x.test")
    assert message.endswith(b"\r\nSubject: x\r\n")


def test_too_many_received_fields(talk, tmp_path):
    c = talk("    deliver_to &mb\n    max_received 2")
    header = b"Received: from a\r\nReceived: from b\r\nreceived: from c\r\n\r\nx\r\n"
    replies = c.transaction("a@x.test", ["b@x.test"], header)
    assert replies[-1] == ("554 5.4.6 Too many Received header fields (3), "
                           "possible forwarding loop")
    assert stored(tmp_path, "b@x.test") == []
    assert leftovers(tmp_path) == []
    # Two are fine.
    replies = c.transaction("a@x.test", ["b@x.test"], header.split(b"received: from c\r\n")[0]
                            + header.split(b"received: from c\r\n")[1])
    assert replies[-1].startswith("250")


def test_spilled_buffer_is_removed_after_delivery(talk, tmp_path):
    c = talk("    deliver_to &mb\n    buffer fs")
    c.transaction("a@x.test", ["b@x.test"], b"Subject: x\r\n\r\n" + b"y" * 1000 + b"\r\n")
    assert (tmp_path / "buffer").is_dir()
    assert leftovers(tmp_path) == []
    [message] = stored(tmp_path, "b@x.test")
    assert message.endswith(b"y" * 1000 + b"\r\n")


def test_disconnect_mid_data_leaves_nothing_behind(talk, tmp_path):
    c = talk("    deliver_to &mb\n    buffer fs")
    replies = c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n", 3)
    assert replies[-1].startswith("354")
    c.client.send(b"Subject: x\r\n\r\n" + b"z" * 998 + b"\r\n")
    gevent.sleep(0.05)
    assert os.listdir(tmp_path / "buffer") != []    # the body had started to spill
    c.client.sock.close()
    c.finish()
    assert leftovers(tmp_path) == []
    assert stored(tmp_path, "b@x.test") == []


def test_rset_aborts_the_delivery(talk, tmp_path):
    c = talk()
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n", 2)
    assert c.say(b"RSET\r\n").startswith("250")
    assert c.handler.delivery is None and c.handler.rcpts == []


def test_reject_block_refuses_every_recipient(talk, tmp_path, log_lines):
    c = talk("    reject 550 5.7.1 We do not want it")
    replies = c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n", 2)
    assert replies[0].startswith("250 ") and replies[1] == "550 5.7.1 We do not want it"
    assert any("event=rcpt_refused" in x and "rcpt=b@x.test" in x for x in log_lines)


def test_escaping_recipient_is_refused_and_logged_a_bounded_number_of_times(talk, tmp_path,
                                                                           log_lines):
    c = talk("    deliver_to &mb\n    max_logged_rcpt_errors 2")
    c.say(b"MAIL FROM:<a@x.test>\r\n")
    for i in range(4):
        assert c.say(f"RCPT TO:<a/{i}@x.test>\r\n".encode()) == \
            "550 5.1.3 Mailbox name not allowed"
    assert len([x for x in log_lines if "event=rcpt_refused" in x]) == 2
    assert c.say(b"RCPT TO:<ok@x.test>\r\n").startswith("250")
    assert not (tmp_path / "maildir" / "x.test" / "a").exists()


def test_lmtp_answers_per_recipient(talk, tmp_path):
    c = talk(kind="lmtp", address="unix://lmtp.sock")
    replies = c.transaction("a@x.test", ["b@x.test", "c@x.test"], b"Subject: x\r\n\r\ny\r\n")
    assert replies[-1] == "250 2.0.0 <b@x.test> OK: queued"
    assert c.client.reply() == "250 2.0.0 <c@x.test> OK: queued"
    assert len(stored(tmp_path, "b@x.test")) == len(stored(tmp_path, "c@x.test")) == 1


def test_delivery_failure_is_a_temporary_error(talk, tmp_path, monkeypatch):
    c = talk()
    [target] = c.endpoint.pipeline.targets

    def broken(maildir, header, body):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(target, "write_tmp", broken)
    replies = c.transaction("a@x.test", ["b@x.test"], b"Subject: x\r\n\r\ny\r\n")
    assert replies[-1] == "451 4.3.0 Local delivery failed, try again later"
    assert leftovers(tmp_path) == []


def test_unexpected_error_at_commit_is_451_with_the_message_id(talk, tmp_path, monkeypatch,
                                                               log_lines):
    c = talk()
    [target] = c.endpoint.pipeline.targets

    def broken(pending):
        raise RuntimeError("bug")

    monkeypatch.setattr(target, "move_to_new", broken)
    replies = c.transaction("a@x.test", ["b@x.test"], b"Subject: x\r\n\r\ny\r\n")
    assert re.fullmatch(r"451 4\.0\.0 Internal server error \(msg ID = [0-9a-f]{16}\)",
                        replies[-1])
    assert any("event=target_failed" in x and "RuntimeError" in x for x in log_lines)
    assert leftovers(tmp_path) == []   # the tmp file was aborted


def test_stop_says_421_to_idle_sessions(talk):
    c = talk()
    gevent.sleep(0.01)
    c.endpoint.shutdown_timeout = 2
    stopper = gevent.spawn(c.endpoint.stop)
    assert c.client.reply() == "421 4.3.2 Service shutting down, try again later"
    stopper.get(timeout=WAIT)
    c.finish()


def test_stop_lets_a_transaction_finish(talk, tmp_path):
    c = talk()
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n", 2)
    gevent.sleep(0.01)
    c.endpoint.shutdown_timeout = 2
    stopper = gevent.spawn(c.endpoint.stop)
    gevent.sleep(0.05)
    assert not stopper.dead
    assert c.say(b"DATA\r\n").startswith("354")
    c.client.send(b"Subject: x\r\n\r\ny\r\n.\r\n")
    assert c.client.reply().startswith("250")
    assert c.client.reply().startswith("421 4.3.2")
    stopper.get(timeout=WAIT)
    assert len(stored(tmp_path, "b@x.test")) == 1


# -- unexpected failures are temporary (DESIGN §3) ---------------------------------------------

def test_unexpected_error_at_rcpt_is_a_temporary_refusal(talk, monkeypatch):
    c = talk()
    [target] = c.endpoint.pipeline.targets

    def broken(rcpt):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(target, "maildir_for", broken)
    c.say(b"MAIL FROM:<a@x.test>\r\n")
    try:
        reply = c.say(b"RCPT TO:<b@x.test>\r\n")
    except EOFError:
        reply = "connection closed without a reply"
    assert reply.startswith("451 ")


def test_buffer_write_error_is_a_temporary_failure(talk, tmp_path):
    (tmp_path / "buffer").write_text("a file where the buffer directory should be")
    c = talk("    deliver_to &mb\n    buffer fs")
    replies = c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n", 3)
    assert replies[-1].startswith("354")
    c.client.send(b"Subject: x\r\n\r\ny\r\n.\r\n")
    try:
        reply = c.client.reply()
    except EOFError:
        reply = "connection closed without a reply"
    assert reply.startswith("451 ")



@pytest.mark.parametrize("name, utf8, shown", [
    ("client.example", False, "client.example"),
    ("[192.0.2.1]", False, "[192.0.2.1]"),
    ("b\u00fccher.example", False, "xn--bcher-kva.example"),
    ("b\u00fccher.example", True, "b\u00fccher.example"),
    ("evil.test) by mx.test (x", False, "evil.test??by?mx.test??x"),
    ("a;b", False, "a?b"),
    ("", False, "?"),
])
def test_the_ehlo_name_cannot_forge_the_received_field(name, utf8, shown):
    from gmta.endpoint.smtp import _trace_name
    assert _trace_name(name, utf8) == shown
