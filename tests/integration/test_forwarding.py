"""target.smtp and target.lmtp against real peers (maddy-behaviour §3.6 T1–T6).

Smarthost: Postfix's smtp-sink (also without 8BITMIME, and it never offers SMTPUTF8;
with delays, to watch limits), gmta's own smtp/submission endpoints where the
downstream must do STARTTLS, AUTH or SMTPUTF8, and Dovecot's submission server for
AUTH EXTERNAL with a client certificate. Mailbox server: a private Dovecot LMTP.
Everything runs the real ``gmta run``, except the per-recipient LMTP checks, which
drive the configured target in this process (the endpoints in front of it answer
for the whole message today).
"""

# The peers' fixtures are imported, then named as test parameters: that is how pytest
# uses fixtures from another module, not a redefinition.
# ruff: noqa: F811

from __future__ import annotations

import concurrent.futures
import email
import smtplib
import subprocess

import pytest

import gmta.modules  # noqa: F401  (fills the module registry for load_block)
from gmta.config.loader import load_block
from gmta.buffer import MemoryBuffer
from gmta.delivery import MessageMeta, PartialDeliveryError
from gmta.errors import SMTPError
from tests.integration.conftest import GMTA, base_config, maildir_messages
from tests.integration.peers import (TestCA, ca, dovecot_lmtp, dovecot_submission,  # noqa: F401
                                     free_port, smtp_sink)

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
MESSAGE = b"From: a@example.org\r\nTo: b@example.test\r\nSubject: forwarded\r\n\r\nHello.\r\n"


def send(port: int, rcpts: list[str], message: bytes = MESSAGE, sender: str = "a@example.org"):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail(sender, rcpts, message)


def gmta_with_target(start_gmta, state_dir, target_block: str, extra: str = "tls off"):
    return start_gmta(base_config(state_dir, extra) + f"""
smtp tcp://127.0.0.1:0 {{
    deliver_to {target_block}
}}
""")


def queue_to(start_gmta, state_dir, sink, target_extra: str = ""):
    """The smtp endpoint into a queue whose target.smtp relays to *sink*."""
    return start_gmta(base_config(state_dir, "tls off") + f"""
target.smtp relay_out {{
    targets {sink.address}
    attempt_starttls no
    {target_extra}
}}
target.queue outbound {{
    target &relay_out
}}
smtp tcp://127.0.0.1:0 {{
    deliver_to &outbound
}}
""")


# --- T1, T2: targets tried in order. -------------------------------------------------

def test_t1_first_target_up_second_never_contacted(start_gmta, state_dir, smtp_sink):
    first, second = smtp_sink(), smtp_sink()
    gmta = gmta_with_target(start_gmta, state_dir,
                            f"target.smtp {{\n targets {first.address} {second.address}\n}}")
    assert send(gmta.port(), ["b@example.test", "c@example.test"]) == {}
    [dumped] = first.wait_for_messages(1)
    assert dumped["X-Mail-Args"] == "<a@example.org>"
    assert dumped.get_all("X-Rcpt-Args") == ["<b@example.test>", "<c@example.test>"]
    assert dumped["Subject"] == "forwarded"
    assert second.messages() == []


def test_t2_first_target_down_second_gets_the_message(start_gmta, state_dir, smtp_sink):
    sink = smtp_sink()
    down = f"tcp://127.0.0.1:{free_port()}"
    # The old directive name from maddy's seed 000 still works.
    gmta = gmta_with_target(start_gmta, state_dir,
                            f"smtp_downstream {{\n target {down} {sink.address}\n}}")
    assert send(gmta.port(), ["b@example.test"]) == {}
    assert len(sink.wait_for_messages(1)) == 1
    gmta.wait_for(r"event=target_failed .*stage=connect")


def test_all_targets_down_is_a_temporary_failure(start_gmta, state_dir):
    gmta = gmta_with_target(start_gmta, state_dir,
                            f"smtp tcp://127.0.0.1:{free_port()} tcp://127.0.0.1:{free_port()}")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(gmta.port(), ["b@example.test"])
    code, text = refused.value.recipients["b@example.test"]
    assert code == 451 and text.startswith(b"4.4.1 Connection to")


# --- T3: downstream replies pass through. ---------------------------------------------

def test_t3_mail_refusal_passes_through_unchanged(start_gmta, state_dir, smtp_sink):
    sink = smtp_sink("-f", "MAIL", "-B", "550 5.1.2 Hey")
    gmta = gmta_with_target(start_gmta, state_dir, f"smtp {sink.address}")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(gmta.port(), ["b@example.test"])
    assert refused.value.recipients["b@example.test"] == (550, b"5.1.2 Hey")


def test_552_at_rcpt_becomes_temporary(start_gmta, state_dir, smtp_sink):
    sink = smtp_sink("-f", "RCPT", "-B", "552 5.5.3 Too many recipients")
    gmta = gmta_with_target(start_gmta, state_dir, f"smtp {sink.address}")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(gmta.port(), ["b@example.test"])
    assert refused.value.recipients["b@example.test"] == (452, b"4.5.3 Too many recipients")


def test_552_at_data_stays_permanent(start_gmta, state_dir, smtp_sink):
    sink = smtp_sink("-f", ".", "-B", "552 5.3.4 Message too big for me")
    gmta = gmta_with_target(start_gmta, state_dir, f"smtp {sink.address}")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(gmta.port(), ["b@example.test"])
    assert (refused.value.smtp_code, refused.value.smtp_error) == (
        552, b"5.3.4 Message too big for me")


def test_temporary_rcpt_refusal_for_one_recipient(start_gmta, state_dir, smtp_sink):
    sink = smtp_sink("-r", "RCPT", "-b", "450 4.2.1 Try later")
    gmta = gmta_with_target(start_gmta, state_dir, f"smtp {sink.address}")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(gmta.port(), ["b@example.test"])
    assert refused.value.recipients["b@example.test"] == (450, b"4.2.1 Try later")


# --- T4: TLS. ---------------------------------------------------------------------------

@pytest.fixture
def tls_downstream(start_gmta, state_dir, tmp_path, ca):
    """A gmta smtp endpoint with a CA-issued certificate, delivering into Maildirs."""
    cert, key = ca.issue("downstream.test")
    downstream_state = tmp_path / "downstream"
    downstream_state.mkdir()

    def start(extra_listener: str = ""):
        return start_gmta(base_config(downstream_state, f"tls file {cert} {key}") + f"""
smtp tcp://127.0.0.1:0 {extra_listener} {{
    deliver_to target.maildir {{
        path maildir/{{domain}}/{{local}}
    }}
}}
""", listeners=2 if extra_listener else 1)
    start.state_dir = downstream_state
    return start


def test_t4_starttls_to_the_downstream(start_gmta, state_dir, tls_downstream, ca):
    downstream = tls_downstream()
    gmta = gmta_with_target(start_gmta, state_dir, f"""target.smtp {{
    targets tcp://127.0.0.1:{downstream.port()}
    require_tls yes
    tls_client {{
        root_ca {ca.cert_path}
    }}
}}""")
    assert send(gmta.port(), ["b@example.test"]) == {}
    [stored] = maildir_messages(tls_downstream.state_dir, "b@example.test")
    assert b"with ESMTPS" in stored and b"Subject: forwarded" in stored


def test_t4_implicit_tls_target(start_gmta, state_dir, tls_downstream, ca):
    downstream = tls_downstream("tls://127.0.0.1:0")
    tls_port = downstream.port("tls://127.0.0.1")
    gmta = gmta_with_target(start_gmta, state_dir, f"""target.smtp {{
    targets tls://127.0.0.1:{tls_port}
    tls_client {{
        root_ca {ca.cert_path}
    }}
}}""")
    assert send(gmta.port(), ["b@example.test"]) == {}
    [stored] = maildir_messages(tls_downstream.state_dir, "b@example.test")
    assert b"with ESMTPS" in stored


def test_t4_require_tls_without_starttls_fails(start_gmta, state_dir, smtp_sink):
    sink = smtp_sink()
    gmta = gmta_with_target(start_gmta, state_dir,
                            f"target.smtp {{\n targets {sink.address}\n require_tls yes\n}}")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(gmta.port(), ["b@example.test"])
    code, text = refused.value.recipients["b@example.test"]
    assert code == 451 and text.startswith(b"4.7.10 TLS is required but unsupported")
    assert sink.messages() == []


def test_untrusted_certificate_falls_back_to_plaintext(start_gmta, state_dir, tls_downstream):
    downstream = tls_downstream()
    # No root_ca: the test CA is not trusted, so the handshake fails and seed 003
    # says to go on in plaintext (attempt_starttls without require_tls).
    gmta = gmta_with_target(start_gmta, state_dir,
                            f"target.smtp {{\n targets tcp://127.0.0.1:{downstream.port()}\n}}")
    assert send(gmta.port(), ["b@example.test"]) == {}
    [stored] = maildir_messages(tls_downstream.state_dir, "b@example.test")
    assert b"with ESMTP " in stored or b"with ESMTP\r\n" in stored
    gmta.wait_for(r"event=starttls_failed .*fallback=plaintext")


def test_untrusted_certificate_with_require_tls_fails(start_gmta, state_dir, tls_downstream):
    downstream = tls_downstream()
    gmta = gmta_with_target(start_gmta, state_dir, f"""target.smtp {{
    targets tcp://127.0.0.1:{downstream.port()}
    require_tls yes
}}""")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(gmta.port(), ["b@example.test"])
    code, text = refused.value.recipients["b@example.test"]
    assert code == 451 and b"not trusted" in text
    assert maildir_messages(tls_downstream.state_dir, "b@example.test") == []


# --- limits (maddy #757: throttling a rate-limited smarthost). --------------------------

def send_in_parallel(port: int, rcpt_lists: list[list[str]]) -> list:
    with concurrent.futures.ThreadPoolExecutor(len(rcpt_lists)) as pool:
        return list(pool.map(lambda rcpts: send(port, rcpts), rcpt_lists))


def dump_times(sink) -> dict[str, float]:
    """When smtp-sink finished writing each transaction, by its first recipient."""
    times = {}
    for path in sink.dump_dir.iterdir():
        rcpt = email.message_from_bytes(path.read_bytes())["X-Rcpt-Args"]
        times[rcpt.strip("<>")] = path.stat().st_mtime
    return times


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(times[:-1], times[1:], strict=True)]


def limited_target(sink, limits: str, extra: str = "") -> str:
    return f"target.smtp {{\n targets {sink.address}\n {extra}\n limits {{\n {limits}\n }}\n}}"


def test_all_concurrency_1_never_overlaps_connections(start_gmta, state_dir, smtp_sink):
    # Each session waits a second for the greeting: overlapping sessions would end
    # together, serial ones at least a second apart.
    sink = smtp_sink("-W", "CONNECT:1")
    # Without reuse: a cached session would spare the second message the wait.
    gmta = gmta_with_target(start_gmta, state_dir, limited_target(sink, "all concurrency 1",
                                                                  "conn_max_idle_count 0"))
    # Two messages: the second waits about one session for the slot, well inside the
    # limits' 5 s wait even on a busy machine.
    assert send_in_parallel(gmta.port(), [["a@one.test"], ["b@two.test"]]) == [{}, {}]
    finished = sorted(dump_times(sink).values())
    assert len(finished) == 2
    assert all(gap >= 0.9 for gap in gaps(finished)), finished


def test_destination_concurrency_1_serialises_one_domain_only(start_gmta, state_dir, smtp_sink):
    # The destination slot is taken at the first RCPT of that domain, so the
    # sink's one-second wait before answering DATA is what serialises.
    sink = smtp_sink("-w", "1")
    gmta = gmta_with_target(start_gmta, state_dir,
                            limited_target(sink, "destination concurrency 1"))
    results = send_in_parallel(gmta.port(), [["a@one.test"], ["b@one.test"], ["c@two.test"]])
    assert results == [{}, {}, {}]
    finished = dump_times(sink)
    first, second = sorted([finished["a@one.test"], finished["b@one.test"]])
    assert second - first >= 0.9, finished
    # two.test had its own slot: it did not wait behind both one.test messages.
    assert finished["c@two.test"] < second, finished


def test_destination_rate_spaces_messages_to_one_domain(start_gmta, state_dir, smtp_sink):
    sink = smtp_sink()
    gmta = gmta_with_target(start_gmta, state_dir, limited_target(sink, "destination rate 1 1s"))
    for rcpt in ["a@one.test", "b@one.test", "c@one.test"]:
        assert send(gmta.port(), [rcpt]) == {}
    finished = sorted(dump_times(sink).values())
    assert len(finished) == 3
    # One message per second, allowing for the timer's and the sink's granularity.
    assert all(gap >= 0.8 for gap in gaps(finished)), finished


# --- SMTPUTF8 and 8BITMIME to a server without them (maddy-behaviour §2.5). -----------

def send_utf8(port: int, sender: str, rcpts: list[str], message: bytes = MESSAGE,
              options: tuple[str, ...] = ("SMTPUTF8",)):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail(sender, rcpts, message, mail_options=list(options))


def test_utf8_domains_become_a_labels_for_a_server_without_smtputf8(start_gmta, state_dir,
                                                                    smtp_sink):
    sink = smtp_sink()   # smtp-sink never offers SMTPUTF8
    gmta = gmta_with_target(start_gmta, state_dir, f"smtp {sink.address}")
    assert send_utf8(gmta.port(), "a@bücher.example", ["b@bücher.example"]) == {}
    [dumped] = sink.wait_for_messages(1)
    # RFC 6531 §3.4 / maddy-behaviour §2.5: no SMTPUTF8 parameter, A-label domains.
    assert dumped["X-Mail-Args"] == "<a@xn--bcher-kva.example>"
    assert dumped["X-Rcpt-Args"] == "<b@xn--bcher-kva.example>"


def test_utf8_local_part_to_a_server_without_smtputf8_is_refused(start_gmta, state_dir,
                                                                 smtp_sink):
    sink = smtp_sink()
    gmta = gmta_with_target(start_gmta, state_dir, f"smtp {sink.address}")
    refused = send_utf8(gmta.port(), "a@example.org", ["b@example.test", "jürgen@example.test"])
    code, text = refused["jürgen@example.test"]
    assert (code, text[:5]) == (553, b"5.6.7"), text
    assert b"SMTPUTF8 is unsupported" in text
    [dumped] = sink.wait_for_messages(1)
    assert dumped.get_all("X-Rcpt-Args") == ["<b@example.test>"]
    # The sender's local part cannot be converted either: 550 5.6.7 for every recipient.
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send_utf8(gmta.port(), "jürgen@example.org", ["b@example.test"])
    code, text = refused.value.recipients["b@example.test"]
    assert (code, text[:5]) == (550, b"5.6.7"), text
    assert len(sink.messages()) == 1


def test_smtputf8_is_passed_on_to_a_server_that_offers_it(start_gmta, state_dir,
                                                          tls_downstream):
    downstream = tls_downstream()   # a gmta smtp endpoint: it offers SMTPUTF8
    gmta = gmta_with_target(start_gmta, state_dir,
                            f"smtp tcp://127.0.0.1:{downstream.port()}")
    message = "From: jürgen@bücher.example\r\nSubject: Grüße\r\n\r\nHallo.\r\n".encode()
    assert send_utf8(gmta.port(), "jürgen@bücher.example", ["jörg@example.test"], message) == {}
    # The downstream takes a non-ASCII MAIL only with SMTPUTF8 (else 550 5.6.7).
    downstream.wait_for(r"event=accepted .*sender=jürgen@bücher\.example")
    [stored] = maildir_messages(tls_downstream.state_dir, "jörg@example.test")
    assert "Subject: Grüße".encode() in stored


def test_8bit_content_to_a_server_without_8bitmime_is_refused(start_gmta, state_dir,
                                                              smtp_sink):
    sink = smtp_sink("-8")   # no 8BITMIME in EHLO
    gmta = gmta_with_target(start_gmta, state_dir, f"smtp {sink.address}")
    eight_bit = "From: a@example.org\r\nSubject: x\r\n\r\nGrüße\r\n".encode()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send_utf8(gmta.port(), "a@example.org", ["b@example.test"], eight_bit,
                  options=("BODY=8BITMIME",))
    # RFC 6152 §3: convert or return; gmta does not convert (RFC 3463 X.6.3).
    assert refused.value.smtp_code == 554
    assert refused.value.smtp_error.startswith(b"5.6.3 8-bit content")
    # Declared 8BITMIME but 7-bit in fact: delivered, without the BODY parameter.
    assert send_utf8(gmta.port(), "a@example.org", ["b@example.test"],
                     options=("BODY=8BITMIME",)) == {}
    [dumped] = sink.wait_for_messages(1)
    assert dumped["X-Mail-Args"] == "<a@example.org>"


def test_8bitmime_is_passed_on_to_a_server_that_offers_it(start_gmta, state_dir, smtp_sink):
    sink = smtp_sink()
    gmta = gmta_with_target(start_gmta, state_dir, f"smtp {sink.address}")
    eight_bit = "From: a@example.org\r\nSubject: x\r\n\r\nGrüße\r\n".encode()
    assert send_utf8(gmta.port(), "a@example.org", ["b@example.test"], eight_bit,
                     options=("BODY=8BITMIME",)) == {}
    [dumped] = sink.wait_for_messages(1)
    assert dumped["X-Mail-Args"] == "<a@example.org> BODY=8BITMIME"
    assert dumped.get_payload(decode=True).startswith("Grüße\n".encode())


# --- AUTH. ------------------------------------------------------------------------------

def start_auth_downstream(start_gmta, tmp_path, ca, users: tuple[str, ...]):
    """gmta's submission endpoint with auth.pass_table knowing *users* (password
    PASSWORD): it refuses mail without AUTH."""
    cert, key = ca.issue("submission.test")
    state = tmp_path / "submission"
    state.mkdir()
    config_text = base_config(state, f"tls file {cert} {key}") + f"""
auth.pass_table local_authdb {{
    table file {state}/passwd
}}
submission tcp://127.0.0.1:0 {{
    auth &local_authdb
    deliver_to target.maildir {{
        path maildir/{{domain}}/{{local}}
    }}
}}
"""
    config = tmp_path / "submission.conf"
    config.write_text(config_text)
    for user in users:
        created = subprocess.run(GMTA + ["creds", "create", "-c", str(config), "--password",
                                         PASSWORD, user], capture_output=True, text=True,
                                 timeout=60)
        assert created.returncode == 0, created.stderr
    process = start_gmta(config_text)
    process.state_dir = state
    process.passwd = state / "passwd"
    return process


@pytest.fixture
def auth_downstream(start_gmta, tmp_path, ca):
    """gmta's submission endpoint with auth.pass_table: it refuses mail without AUTH."""
    return start_auth_downstream(start_gmta, tmp_path, ca, ("alice@example.org",))


def tls_client_block(ca) -> str:
    return f"tls_client {{\n root_ca {ca.cert_path}\n }}"


def auth_forward_upstream(start_gmta, state_dir, downstream, ca):
    """A submission endpoint checking *downstream*'s password file and forwarding
    each client's credentials to it (``auth forward``)."""
    return start_gmta(base_config(state_dir, "tls off") + f"""
auth.pass_table upstream_authdb {{
    table file {downstream.passwd}
}}
submission tcp://127.0.0.1:0 {{
    auth &upstream_authdb
    deliver_to target.smtp {{
        targets tcp://127.0.0.1:{downstream.port()}
        require_tls yes
        auth forward
        {tls_client_block(ca)}
    }}
}}
""")


def test_auth_plain_to_a_downstream_that_requires_it(start_gmta, state_dir, auth_downstream, ca):
    gmta = gmta_with_target(start_gmta, state_dir, f"""target.smtp {{
    targets tcp://127.0.0.1:{auth_downstream.port()}
    require_tls yes
    auth plain alice@example.org "{PASSWORD}"
    {tls_client_block(ca)}
}}""")
    assert send(gmta.port(), ["b@example.test"]) == {}
    [stored] = maildir_messages(auth_downstream.state_dir, "b@example.test")
    assert b"with ESMTPSA" in stored
    auth_downstream.wait_for(r"event=authenticated .*username=alice@example.org")


def test_auth_plain_with_a_wrong_password_passes_the_refusal_on(start_gmta, state_dir,
                                                                auth_downstream, ca):
    gmta = gmta_with_target(start_gmta, state_dir, f"""target.smtp {{
    targets tcp://127.0.0.1:{auth_downstream.port()}
    require_tls yes
    auth plain alice@example.org wrong
    {tls_client_block(ca)}
}}""")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(gmta.port(), ["b@example.test"])
    code, _ = refused.value.recipients["b@example.test"]
    assert code == 535
    assert maildir_messages(auth_downstream.state_dir, "b@example.test") == []


def test_auth_forward_uses_the_clients_credentials(start_gmta, state_dir, auth_downstream, ca):
    gmta = auth_forward_upstream(start_gmta, state_dir, auth_downstream, ca)
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=30) as client:
        client.login("alice@example.org", PASSWORD)
        client.sendmail("alice@example.org", ["b@example.test"],
                        b"From: alice@example.org\r\nTo: b@example.test\r\n"
                        b"Subject: forwarded\r\n\r\nHi\r\n")
    [stored] = maildir_messages(auth_downstream.state_dir, "b@example.test")
    assert b"Subject: forwarded" in stored
    auth_downstream.wait_for(r"event=authenticated .*username=alice@example.org")
    # The password is in no log line of either side.
    assert not any(PASSWORD in line for line in gmta.lines + auth_downstream.lines)


def test_auth_forward_without_client_credentials_is_530(start_gmta, state_dir, smtp_sink):
    sink = smtp_sink()
    gmta = gmta_with_target(start_gmta, state_dir,
                            f"target.smtp {{\n targets {sink.address}\n auth forward\n}}")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(gmta.port(), ["b@example.test"])
    assert refused.value.recipients["b@example.test"] == (
        530, b"5.7.0 Authentication is required")


def external_target(server, ca, cert, key) -> str:
    return f"""target.smtp {{
    targets {server.address}
    require_tls yes
    auth external
    tls_client {{
        root_ca {ca.cert_path}
        cert {cert}
        key {key}
    }}
}}"""


def test_auth_external_with_a_client_certificate(start_gmta, state_dir, ca, smtp_sink,
                                                 dovecot_submission):
    # A real EXTERNAL server: Dovecot's submission service takes the user name from
    # the certificate's commonName and relays the mail to the sink.
    sink = smtp_sink()
    dovecot = dovecot_submission(ca, sink.port)
    cert, key = ca.issue("alice@example.org", client=True)
    gmta = gmta_with_target(start_gmta, state_dir, external_target(dovecot, ca, cert, key))
    assert send(gmta.port(), ["b@example.test"], sender="alice@example.org") == {}
    [relayed] = sink.wait_for_messages(1)
    # Dovecot passes the authenticated identity on as MAIL's AUTH= parameter.
    assert relayed["X-Mail-Args"] == "<alice@example.org> AUTH=alice@example.org"
    assert relayed["Subject"] == "forwarded"
    # Received fields: smtp-sink's, Dovecot's (an authenticated TLS session), gmta's.
    assert "by submission.test with ESMTPSA" in relayed.get_all("Received")[1]
    dovecot.wait_for_log("user=<alice@example.org>, method=EXTERNAL")


def test_auth_external_with_an_untrusted_certificate_is_not_delivered(
        start_gmta, state_dir, ca, tmp_path, smtp_sink, dovecot_submission):
    sink = smtp_sink()
    dovecot = dovecot_submission(ca, sink.port)
    other_dir = tmp_path / "other-ca"
    other_dir.mkdir()
    cert, key = TestCA(other_dir).issue("mallory@example.org", client=True)
    gmta = gmta_with_target(start_gmta, state_dir, external_target(dovecot, ca, cert, key))
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(gmta.port(), ["b@example.test"], sender="mallory@example.org")
    # Dovecot refuses the certificate in the TLS layer and closes the connection (after
    # the client's Finished, in TLS 1.3): gmta cannot tell why, so it is temporary.
    code, text = refused.value.recipients["b@example.test"]
    assert (code, text[:5]) == (451, b"4.4.2"), text
    dovecot.wait_for_log("client sent an invalid cert")
    assert sink.messages() == []


# --- T5, T6: LMTP to Dovecot. -----------------------------------------------------------

def test_t6_smtp_to_dovecot_over_lmtp(start_gmta, state_dir, dovecot_lmtp):
    dovecot = dovecot_lmtp({"alice@example.test": None, "bob@example.test": None})
    gmta = start_gmta(base_config(state_dir, "tls off") + f"""
target.lmtp local_mailboxes {{
    targets {dovecot.address}
}}
smtp tcp://127.0.0.1:0 {{
    deliver_to &local_mailboxes
}}
smtp tcp://127.0.0.1:0 {{
    deliver_to lmtp unix://{dovecot.socket_path}
}}
""", listeners=2)
    first, second = gmta.ports("tcp://127.0.0.1")
    connects_before = dovecot.log().count("Connect from")
    assert send(first, ["alice@example.test", "bob@example.test"]) == {}
    # One LMTP session for the message (maddy #308).
    assert dovecot.log().count("Connect from") == connects_before + 1
    assert send(second, ["bob@example.test"]) == {}
    [alice] = dovecot.messages("alice@example.test")
    assert b"Subject: forwarded" in alice
    assert len(dovecot.messages("bob@example.test")) == 2


def test_t5_unknown_mailbox_is_refused_at_rcpt(start_gmta, state_dir, dovecot_lmtp):
    dovecot = dovecot_lmtp({"alice@example.test": None})
    gmta = gmta_with_target(start_gmta, state_dir, f"lmtp {dovecot.address}")
    refused = send(gmta.port(), ["alice@example.test", "nobody@example.test"])
    code, text = refused["nobody@example.test"]
    assert code == 550 and text.startswith(b"5.1.1 <nobody@example.test> User doesn't exist")
    assert len(dovecot.messages("alice@example.test")) == 1


def load_target(tmp_path, state_dir, block: str):
    config = tmp_path / "target.conf"
    config.write_text(base_config(state_dir, "tls off") + block)
    return load_block(str(config), "mailboxes")


def test_t5_quota_failure_is_reported_for_that_recipient_only(tmp_path, state_dir,
                                                              dovecot_lmtp):
    dovecot = dovecot_lmtp({"alice@example.test": None, "full@example.test": "*:storage=1K"})
    target = load_target(tmp_path, state_dir,
                         f"target.lmtp mailboxes {{\n targets {dovecot.address}\n}}\n")
    big = MESSAGE + b"x" * 70 + b"\r\n"
    body = MemoryBuffer(b"".join([b"y" * 70 + b"\r\n"] * 60))
    delivery = target.start_delivery(MessageMeta("t5"), "a@example.org")
    delivery.add_rcpt("alice@example.test")
    delivery.add_rcpt("full@example.test")
    with pytest.raises(PartialDeliveryError) as partial:
        delivery.body(big, body)
    delivery.abort()
    assert partial.value.delivered == ["alice@example.test"]
    error = partial.value.failed["full@example.test"]
    assert (error.code, error.enhanced) == (552, (5, 2, 2))   # stays permanent (maddy #800)
    assert "Quota exceeded" in error.text
    assert len(dovecot.messages("alice@example.test")) == 1
    assert dovecot.messages("full@example.test") == []


def test_lmtp_target_all_delivered_over_unix_socket(tmp_path, state_dir, dovecot_lmtp):
    dovecot = dovecot_lmtp({"alice@example.test": None, "bob@example.test": None})
    target = load_target(tmp_path, state_dir,
                         f"target.lmtp mailboxes {{\n targets unix://{dovecot.socket_path}\n}}\n")
    delivery = target.start_delivery(MessageMeta("t5b"), "a@example.org")
    delivery.add_rcpt("alice@example.test")
    delivery.add_rcpt("bob@example.test")
    with pytest.raises(SMTPError) as refused:
        delivery.add_rcpt("nobody@example.test")
    assert refused.value.code == 550
    delivery.body(MESSAGE, MemoryBuffer(b"body\r\n.dot line\r\n"))
    delivery.commit()
    [stored] = dovecot.messages("bob@example.test")
    # Dovecot stores LF line ends; the stuffed dot was removed again.
    assert stored.endswith(b"Hello.\nbody\n.dot line\n")
