"""Sender authentication against the real ``gmta run`` and a real DNS server (knot).

maddy-behaviour §3.1 E3–E8, E13, E14: SPF results and action overrides, the HELO
identity of the null sender, trusted and untrusted PROXY headers, DMARC
reject/quarantine/none and subdomain policy, DNSBL listing and score offset,
rDNS matching, an external command, early checks at EHLO, deferred sender
refusals. E7 (authorize_sender) is in test_authorize_sender.py. Clients connect
from chosen 127.0.0.x addresses.
"""

from __future__ import annotations

import smtplib
import socket
from contextlib import contextmanager

import pytest

from tests.integration.conftest import base_config, maildir_messages

pytestmark = pytest.mark.integration

CLIENT_IP = "127.0.0.17"

MAILDIR_BLOCK = """
target.maildir local_mailboxes {
    path maildir/{domain}/{local}
}
"""


def spf_zone(dns_server) -> None:
    dns_server.zone("spf.test", [
        f'pass TXT "v=spf1 ip4:{CLIENT_IP} -all"',
        'fail TXT "v=spf1 -all"',
        'softfail TXT "v=spf1 ~all"',
        'neutral TXT "v=spf1 ?all"',
        'none A 127.0.0.99',
        'permerror TXT "v=spf1 frobnicate:x -all"',
        # The server is authoritative for the test zones only: it refuses the
        # include's name at once, a temporary DNS failure (RFC 7208 §5.2).
        'temperror TXT "v=spf1 include:elsewhere.invalid -all"',
    ])


def connect(gmta, source: str = CLIENT_IP, helo: str = "client.test") -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", gmta.port(), timeout=30,
                          source_address=(source, 0))
    client.ehlo(helo)
    return client


@contextmanager
def proxied_session(gmta):
    """A raw session that sends a PROXY header naming CLIENT_IP, then EHLO:
    (socket, its reader) once the EHLO reply has been read."""
    with socket.create_connection(("127.0.0.1", gmta.port()), timeout=10) as sock:
        sock.sendall(f"PROXY TCP4 {CLIENT_IP} 127.0.0.1 4000 25\r\n".encode())
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        sock.sendall(b"EHLO client.test\r\n")
        # Up to the last line of the EHLO reply; at EOF readline gives b"" and ends it.
        line = reader.readline()
        while line.startswith(b"250-"):
            line = reader.readline()
        assert line.startswith(b"250 "), line
        yield sock, reader


def message(sender: str, rcpt: str, extra: str = "") -> bytes:
    return (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: test\r\n{extra}"
            f"Message-ID: <1@test>\r\n\r\nHello.\r\n").encode()


def send(client: smtplib.SMTP, sender: str, rcpt: str, data: bytes | None = None):
    """(code, text) of the first refusal, or of the final reply."""
    code, text = client.mail(f"<{sender}>" if sender else "<>")
    if code >= 400:
        return code, text.decode()
    code, text = client.rcpt(rcpt)
    if code >= 400:
        client.rset()
        return code, text.decode()
    code, text = client.data(data or message(sender or "postmaster@client.test", rcpt))
    return code, text.decode()


# -- SPF (E3, E4) ------------------------------------------------------------------------

SPF_OVERRIDES = """
    defer_sender_reject no
    check {
        spf {
            enforce_early yes
            none_action reject 551
            neutral_action reject
            fail_action reject 552
            softfail_action reject 553
            permerr_action reject 554
            temperr_action reject 455
        }
    }
"""


def endpoint(state_dir, dns, inner: str, listen: str = "tcp://127.0.0.1:0") -> str:
    return base_config(state_dir, f"tls off\ndns_servers {dns.directive}") + MAILDIR_BLOCK + \
        f"smtp {listen} {{\n{inner}\n    deliver_to &local_mailboxes\n}}\n"


def test_spf_results_take_their_actions(start_gmta, state_dir, dns_server):
    """E4: each SPF result gets the reply its action says, at MAIL FROM."""
    spf_zone(dns_server)
    dns_server.start()
    gmta = start_gmta(endpoint(state_dir, dns_server, SPF_OVERRIDES))
    expected = {
        "pass": (250, None),
        "none": (551, "5.7.0"),
        "neutral": (550, "5.7.23"),
        "fail": (552, "5.7.0"),
        "softfail": (553, "5.7.0"),
        "permerror": (554, "5.7.0"),
        "temperror": (455, "4.7.0"),
    }
    with connect(gmta) as client:
        for label, (code, enhanced) in expected.items():
            got, text = client.mail(f"<user@{label}.spf.test>")
            assert got == code, (label, got, text)
            if enhanced:
                assert text.decode().startswith(enhanced), (label, text)
            else:
                client.rset()


def test_spf_checks_the_helo_name_for_the_null_sender(start_gmta, state_dir, dns_server):
    """E4: MAIL FROM:<> is judged by the EHLO name (RFC 7208 §2.4)."""
    spf_zone(dns_server)
    dns_server.start()
    gmta = start_gmta(endpoint(state_dir, dns_server, SPF_OVERRIDES))
    with connect(gmta, helo="fail.spf.test") as client:
        code, text = client.mail("<>")
        assert (code, text[:5]) == (552, b"5.7.0")
    with connect(gmta, helo="pass.spf.test") as client:
        assert client.mail("<>")[0] == 250


def test_spf_follows_the_proxied_client_address(start_gmta, state_dir, dns_server):
    """E3: behind a trusted proxy, SPF judges the client the PROXY header names."""
    spf_zone(dns_server)
    dns_server.start()
    inner = SPF_OVERRIDES + "    proxy_protocol 127.0.0.1\n"
    gmta = start_gmta(endpoint(state_dir, dns_server, inner))
    with proxied_session(gmta) as (sock, reader):
        sock.sendall(b"MAIL FROM:<user@pass.spf.test>\r\n")
        assert reader.readline().startswith(b"250")
        sock.sendall(b"RSET\r\nMAIL FROM:<user@fail.spf.test>\r\n")
        assert reader.readline().startswith(b"250")
        assert reader.readline().startswith(b"552")


def test_spf_judges_the_real_address_behind_an_untrusted_proxy(start_gmta, state_dir,
                                                               dns_server):
    """E3, second half: a PROXY header from an untrusted peer is not believed."""
    spf_zone(dns_server)
    dns_server.start()
    inner = SPF_OVERRIDES + "    proxy_protocol {\n        trust 10.0.0.0/8\n    }\n"
    gmta = start_gmta(endpoint(state_dir, dns_server, inner))
    with proxied_session(gmta) as (sock, reader):
        # pass.spf.test allows CLIENT_IP only; the session's address is 127.0.0.1.
        sock.sendall(b"MAIL FROM:<user@pass.spf.test>\r\n")
        assert reader.readline().startswith(b"552 5.7.0")


def test_deferred_sender_refusal_answers_every_rcpt(start_gmta, state_dir, dns_server):
    """E14: with defer_sender_reject yes, MAIL gets 250 and each RCPT, repeated
    addresses too, the sender check's refusal."""
    spf_zone(dns_server)
    dns_server.start()
    inner = SPF_OVERRIDES.replace("defer_sender_reject no", "defer_sender_reject yes")
    gmta = start_gmta(endpoint(state_dir, dns_server, inner))
    with connect(gmta) as client:
        assert client.mail("<user@fail.spf.test>")[0] == 250
        replies = [client.rcpt(rcpt) for rcpt in ("a@local.test", "a@local.test", "b@local.test")]
        assert len(set(replies)) == 1, replies
        code, text = replies[0]
        assert (code, text[:5]) == (552, b"5.7.0"), text
        # The next transaction is judged afresh.
        client.rset()
        assert client.mail("<user@pass.spf.test>")[0] == 250
        assert client.rcpt("a@local.test")[0] == 250


def test_spf_result_in_authentication_results(start_gmta, state_dir, dns_server):
    """One Authentication-Results field named after the hostname; a forged one removed."""
    spf_zone(dns_server)
    dns_server.start()
    gmta = start_gmta(endpoint(state_dir, dns_server, "    check { spf }"))
    forged = "Authentication-Results: mx.gmta.test; spf=pass smtp.mailfrom=evil.test\r\n"
    with connect(gmta) as client:
        code, _ = send(client, "user@pass.spf.test", "a@local.test",
                       message("user@pass.spf.test", "a@local.test", forged))
        assert code == 250
    [stored] = maildir_messages(state_dir, "a@local.test")
    fields = [line for line in stored.split(b"\r\n")
              if line.lower().startswith(b"authentication-results")]
    assert len(fields) == 1
    assert fields[0].startswith(b"Authentication-Results: mx.gmta.test;")
    assert b"spf=pass" in stored and b"evil.test" not in stored


# -- DMARC (E5) --------------------------------------------------------------------------

def dmarc_zone(dns_server) -> None:
    dns_server.zone("dm.test", [
        # SPF fails for every sender domain here; only DMARC decides.
        'reject TXT "v=spf1 -all"',
        '_dmarc.reject TXT "v=DMARC1; p=reject"',
        'quarantine TXT "v=spf1 -all"',
        '_dmarc.quarantine TXT "v=DMARC1; p=quarantine"',
        'none TXT "v=spf1 -all"',
        '_dmarc.none TXT "v=DMARC1; p=none"',
        f'aligned TXT "v=spf1 ip4:{CLIENT_IP} -all"',
        '_dmarc.aligned TXT "v=DMARC1; p=reject"',
        # The organisational domain's record: reject, but sp=none for subdomains.
        '_dmarc TXT "v=DMARC1; p=reject; sp=none"',
        'sub TXT "v=spf1 -all"',
        'x.sub TXT "v=spf1 -all"',
        f'pass TXT "v=spf1 ip4:{CLIENT_IP} -all"',
    ])


def test_dmarc_reject_quarantine_none(start_gmta, state_dir, dns_server):
    """E5 (without maddy's defect): SPF fail is left to DMARC when it is enforced."""
    dmarc_zone(dns_server)
    dns_server.start()
    gmta = start_gmta(endpoint(state_dir, dns_server, "    dmarc yes\n    check { spf }"))
    with connect(gmta) as client:
        code, text = send(client, "u@reject.dm.test", "a@local.test")
        assert (code, text[:5]) == (550, "5.7.1"), text
        assert "DMARC" in text
        # Aligned SPF pass: DMARC passes.
        assert send(client, "u@aligned.dm.test", "b@local.test")[0] == 250
        # quarantine: accepted, flagged.
        assert send(client, "u@quarantine.dm.test", "c@local.test")[0] == 250
        # p=none: SPF acts alone (fail_action quarantine by default), accepted.
        assert send(client, "u@none.dm.test", "d@local.test")[0] == 250
        # Subdomain without its own record: the organisational record's sp=none.
        assert send(client, "u@x.sub.dm.test", "e@local.test")[0] == 250
        # The organisational domain itself: p=reject.
        code, text = send(client, "u@dm.test", "f@local.test",
                          message("u@dm.test", "f@local.test"))
        assert code == 550
    assert maildir_messages(state_dir, "a@local.test") == []
    [aligned] = maildir_messages(state_dir, "b@local.test")
    assert b"dmarc=pass header.from=aligned.dm.test" in aligned
    [quarantined] = maildir_messages(state_dir, "c@local.test")
    assert b"dmarc=fail" in quarantined and b"policy.dmarc=quarantine" in quarantined
    gmta.wait_for(r"event=dmarc .*from_domain=quarantine\.dm\.test .*action=quarantine")
    [subdomain] = maildir_messages(state_dir, "e@local.test")
    assert b"policy.dmarc=none" in subdomain


def test_dmarc_policy_lookup_failure_is_temporary(start_gmta, state_dir, dns_server):
    """A policy that cannot be fetched answers 450 4.7.1 (the server refuses the zone)."""
    dmarc_zone(dns_server)
    dns_server.start()
    gmta = start_gmta(endpoint(state_dir, dns_server, "    dmarc yes\n    check { spf }"))
    with connect(gmta) as client:
        code, text = send(client, "u@pass.dm.test", "a@local.test",
                          message("u@elsewhere.invalid", "a@local.test"))
        assert (code, text[:5]) == (450, "4.7.1"), text


def test_dmarc_off_leaves_spf_to_act(start_gmta, state_dir, dns_server):
    """maddy §5 defect not copied: with dmarc off, SPF does not defer to a DMARC record."""
    dmarc_zone(dns_server)
    dns_server.start()
    inner = "    dmarc no\n    check {\n        spf {\n            fail_action reject\n" \
            "        }\n    }"
    gmta = start_gmta(endpoint(state_dir, dns_server, inner))
    with connect(gmta) as client:
        code, text = send(client, "u@reject.dm.test", "a@local.test")
        assert (code, text[:6]) == (550, "5.7.23"), text


# -- DNSBL (E6, E13) --------------------------------------------------------------------

def dnsbl_zone(dns_server) -> None:
    reversed_ip = ".".join(reversed(CLIENT_IP.split(".")))
    dns_server.zone("bl.test", [f"{reversed_ip} A 127.0.0.2", "spammer A 127.0.0.2",
                                "outside A 10.0.0.1"])
    dns_server.zone("allow.test", [f"{reversed_ip} A 127.0.0.2"])


def test_dnsbl_listing_rejects(start_gmta, state_dir, dns_server):
    """E6: a listed client IP or sender domain gets 554 5.7.0 at MAIL."""
    dnsbl_zone(dns_server)
    dns_server.start()
    inner = """    defer_sender_reject no
    check {
        dnsbl {
            reject_threshold 1
            bl.test {
                mailfrom yes
            }
        }
    }"""
    gmta = start_gmta(endpoint(state_dir, dns_server, inner))
    with connect(gmta) as client:
        code, text = client.mail("<u@example.test>")
        assert code == 554 and b"listed in the used DNSBL" in text
    with connect(gmta, source="127.0.0.18") as client:
        assert client.mail("<u@example.test>")[0] == 250
        client.rset()
        code, text = client.mail("<u@spammer>")
        assert code == 554
        client.rset()
        # An answer outside `responses` does not list anyone.
        assert client.mail("<u@outside>")[0] == 250


def test_dnsbl_negative_score_offsets(start_gmta, state_dir, dns_server):
    """E6: a list with score -1 offsets a listing."""
    dnsbl_zone(dns_server)
    dns_server.start()
    inner = """    defer_sender_reject no
    check {
        dnsbl {
            reject_threshold 1
            quarantine_threshold 5
            bl.test
            allow.test {
                score -1
            }
        }
    }"""
    gmta = start_gmta(endpoint(state_dir, dns_server, inner))
    with connect(gmta) as client:
        assert send(client, "u@example.test", "a@local.test")[0] == 250


def test_early_dnsbl_refuses_ehlo(start_gmta, state_dir, dns_server):
    """E13: a connection-level check answers EHLO; no transaction is possible."""
    dnsbl_zone(dns_server)
    dns_server.start()
    inner = """    check {
        dnsbl bl.test {
            check_early yes
            reject_threshold 1
        }
    }"""
    gmta = start_gmta(endpoint(state_dir, dns_server, inner))
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=30,
                      source_address=(CLIENT_IP, 0)) as client:
        code, text = client.ehlo("client.test")
        assert code == 554 and b"DNSBL" in text
        code, _ = client.docmd("MAIL FROM:<u@example.test>")
        assert code >= 500


# -- require_mx_record, command (E8) ------------------------------------------------------

def test_require_mx_record(start_gmta, state_dir, dns_server):
    dns_server.zone("mx.test", ["@ MX 10 mail", "mail A 127.0.0.2", "nomx A 127.0.0.2",
                                "nullmx MX 0 ."])
    dns_server.start()
    inner = """    defer_sender_reject no
    check {
        require_mx_record {
            fail_action reject
        }
    }"""
    gmta = start_gmta(endpoint(state_dir, dns_server, inner))
    with connect(gmta) as client:
        assert client.mail("<u@mx.test>")[0] == 250
        client.rset()
        code, text = client.mail("<u@nomx.mx.test>")
        assert (code, text[:6]) == (501, b"5.7.27")
        code, _ = client.mail("<u@nullmx.mx.test>")
        assert code == 556
        assert client.mail("<>")[0] == 250


def test_require_matching_rdns(start_gmta, state_dir, dns_server):
    """The EHLO name must match the client's forward-confirmed PTR name (550 5.7.25)."""
    dns_server.zone("rdns.test", ["mail A 127.0.0.5", "liar A 127.0.0.99"])
    dns_server.ptr("127.0.0.5", "mail.rdns.test")
    dns_server.ptr("127.0.0.6", "liar.rdns.test")   # does not resolve back to .6
    dns_server.start()
    inner = """    check {
        require_matching_rdns {
            fail_action reject
        }
    }"""
    gmta = start_gmta(endpoint(state_dir, dns_server, inner))
    with connect(gmta, source="127.0.0.5", helo="mail.rdns.test") as client:
        assert send(client, "u@example.test", "a@local.test")[0] == 250
    # A subdomain of the PTR name (or the other way round) matches too.
    with connect(gmta, source="127.0.0.5", helo="rdns.test") as client:
        assert send(client, "u@example.test", "b@local.test")[0] == 250
    with connect(gmta, source="127.0.0.5", helo="elsewhere.test") as client:
        code, text = send(client, "u@example.test", "c@local.test")
        assert (code, text[:6]) == (550, "5.7.25"), text
    with connect(gmta, source="127.0.0.6", helo="liar.rdns.test") as client:
        code, text = send(client, "u@example.test", "d@local.test")
        assert (code, text[:6]) == (550, "5.7.25"), text
    assert len(maildir_messages(state_dir, "a@local.test")) == 1
    assert maildir_messages(state_dir, "c@local.test") == []


def test_command_check(start_gmta, state_dir, dns_server, tmp_path):
    """E8: the script reads the message (LF endings), adds a header, exit 12 rejects."""
    dns_server.start()
    script = tmp_path / "filter.sh"
    seen = tmp_path / "seen"
    script.write_text(f"""#!/bin/sh
cat > {seen}
echo "X-Filtered: by-script $1"
case "$1" in *bad*) exit 12;; esac
exit 0
""")
    script.chmod(0o755)
    inner = f"""    check {{
        command {script} {{sender}} {{
            code 12 reject
            timeout 10s
        }}
    }}"""
    gmta = start_gmta(endpoint(state_dir, dns_server, inner))
    with connect(gmta) as client:
        assert send(client, "good@example.test", "a@local.test")[0] == 250
        assert b"\r\n" not in seen.read_bytes() and b"Subject: test\n" in seen.read_bytes()
        code, text = send(client, "bad@example.test", "b@local.test")
        assert code == 550 and text.startswith("5.7.1")
    [stored] = maildir_messages(state_dir, "a@local.test")
    assert b"X-Filtered: by-script good@example.test\r\n" in stored
    assert maildir_messages(state_dir, "b@local.test") == []


def test_command_timeout_is_temporary(start_gmta, state_dir, dns_server, tmp_path):
    dns_server.start()
    inner = """    check {
        command /bin/sleep 30 {
            timeout 1s
        }
    }"""
    gmta = start_gmta(endpoint(state_dir, dns_server, inner))
    with connect(gmta) as client:
        code, text = send(client, "u@example.test", "a@local.test")
        assert (code, text[:5]) == (451, "4.7.1")
    gmta.wait_for(r"event=command_timeout")
