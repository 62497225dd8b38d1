"""DKIM signatures made by gmta (modify.dkim), checked by dkimpy, by gmta's
check.dkim and by OpenDKIM's ``opendkim-testmsg``, with the keys gmta
generated at start published in a real DNS server (knot).
"""

from __future__ import annotations

import shutil
import smtplib
import subprocess
from unittest import mock

import dkim
import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.integration import dnsserver
from tests.integration.conftest import base_config, maildir_messages

pytestmark = pytest.mark.integration

OPENDKIM_TESTMSG = shutil.which("opendkim-testmsg")


def signing_config(state_dir, dns) -> str:
    return base_config(state_dir, f"tls off\ndns_servers {dns.directive}") + """
target.maildir local_mailboxes {
    path maildir/{domain}/{local}
}
smtp tcp://127.0.0.1:0 {
    modify {
        dkim sign.test rsa
        dkim sign.test ed {
            newkey_algo ed25519
        }
    }
    deliver_to &local_mailboxes
}
smtp tcp://127.0.0.2:0 {
    dmarc no
    check {
        dkim {
            broken_sig_action reject
        }
    }
    deliver_to &local_mailboxes
}
"""


def published_records(state_dir) -> list[str]:
    return [(state_dir / "dkim_keys" / f"sign.test_{s}.dns").read_text().strip()
            for s in ("rsa", "ed")]


def txt_lookup(server):
    def lookup(name: bytes, timeout: float = 5):
        query = dns.message.make_query(name.decode(), dns.rdatatype.TXT)
        response = dns.query.udp(query, server.address, port=server.port, timeout=timeout)
        for rrset in response.answer:
            for record in rrset:
                return b"".join(record.strings)
        return None
    return lookup


def without_local_fields(stored: bytes) -> bytes:
    """The message as gmta sent it on: without the Maildir's Return-Path/Delivered-To."""
    lines = stored.split(b"\r\n")
    while lines[0].startswith((b"Return-Path:", b"Delivered-To:")):
        lines.pop(0)
    return b"\r\n".join(lines)


MESSAGE = (b"From: Alice <alice@sign.test>\r\nTo: <bob@local.test>\r\nSubject: signed\r\n"
           b"Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <s1@sign.test>\r\n\r\n"
           b"Hello,  world.\r\n\r\n")


@pytest.fixture
def signed(start_gmta, state_dir, dns_server):
    """(gmta, stored message, DNS records): one message signed with RSA and Ed25519."""
    dns_server.zone("sign.test", [])
    dns_server.start()
    gmta = start_gmta(signing_config(state_dir, dns_server), listeners=2)
    gmta.wait_for(r"event=dkim_key_generated .*selector=rsa")
    gmta.wait_for(r"event=dkim_key_generated .*selector=ed")
    records = published_records(state_dir)
    assert records[0].startswith('rsa._domainkey.sign.test. TXT "v=DKIM1; k=rsa; p=')
    assert records[1].startswith('ed._domainkey.sign.test. TXT "v=DKIM1; k=ed25519; p=')
    dns_server.zone("sign.test", records)
    dns_server.reload()
    with smtplib.SMTP("127.0.0.1", gmta.port("tcp://127.0.0.1"), timeout=30) as client:
        client.sendmail("alice@sign.test", ["bob@local.test"], MESSAGE)
    [stored] = maildir_messages(state_dir, "bob@local.test")
    return gmta, without_local_fields(stored), records


def test_gmta_signatures_verify_with_dkimpy(signed, dns_server):
    _, message, _ = signed
    verifier = dkim.DKIM(message)
    signatures = [v for n, v in verifier.headers if n.lower() == b"dkim-signature"]
    assert len(signatures) == 2
    lookup = txt_lookup(dns_server)
    assert verifier.verify(idx=0, dnsfunc=lookup)
    assert verifier.verify(idx=1, dnsfunc=lookup)
    algorithms = {dkim.util.parse_tag_value(s)[b"a"] for s in signatures}
    assert algorithms == {b"rsa-sha256", b"ed25519-sha256"}
    # Oversigning: From and Subject are listed once more than they occur.
    tags = dkim.util.parse_tag_value(signatures[0])
    signed_fields = [f.strip().lower() for f in tags[b"h"].split(b":")]
    assert signed_fields.count(b"subject") == 2
    # A changed body no longer verifies.
    with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
        dkim.DKIM(message.replace(b"Hello,", b"Bye,")).verify(dnsfunc=lookup)


def test_gmta_signatures_verify_with_gmta(signed, state_dir):
    gmta, message, _ = signed
    with smtplib.SMTP("127.0.0.2", gmta.port("tcp://127.0.0.2"), timeout=30) as client:
        client.sendmail("alice@sign.test", ["carol@local.test"], message)
        tampered = message.replace(b"Hello,", b"Bye,")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("alice@sign.test", ["dave@local.test"], tampered)
        assert refused.value.smtp_code == 550
    gmta.wait_for(r"event=dkim .*result=fail .*body hash mismatch")
    [stored] = maildir_messages(state_dir, "carol@local.test")
    results = stored.split(b"Authentication-Results: ", 1)[1].split(b"\r\n\r\n")[0]
    assert results.count(b"dkim=pass") == 2
    assert b"header.d=sign.test header.s=rsa" in results
    assert b"header.d=sign.test header.s=ed" in results


@pytest.mark.skipif(OPENDKIM_TESTMSG is None, reason="opendkim-tools is not installed")
def test_gmta_rsa_signature_verifies_with_opendkim(signed, tmp_path):
    """OpenDKIM's library asks the system resolver on port 53: it runs in its own
    mount namespace whose resolv.conf names a knot server on 127.0.0.56:53."""
    _, message, records = signed
    server = dnsserver.AuthoritativeDNS(tmp_path / "dns53", address="127.0.0.56")
    server.zone("sign.test", records)
    with mock.patch.object(dnsserver, "free_port", lambda address: 53):
        server.start()
    try:
        resolv = tmp_path / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.56\noptions timeout:2 attempts:1\n")
        # Only the RSA signature: the Ed25519 one is removed from the copy.
        lines = message.split(b"\r\n")
        rsa_only = _drop_signature(lines, b"a=ed25519-sha256")
        script = f"mount --bind {resolv} /etc/resolv.conf && exec {OPENDKIM_TESTMSG}"
        run = subprocess.run(["unshare", "-m", "sh", "-c", script], input=rsa_only,
                             capture_output=True, timeout=30)
        assert run.returncode == 0, run.stderr
        bad = subprocess.run(["unshare", "-m", "sh", "-c", script],
                             input=rsa_only.replace(b"Hello,", b"Bye,"),
                             capture_output=True, timeout=30)
        assert bad.returncode != 0
    finally:
        server.stop()


def _drop_signature(lines: list[bytes], marker: bytes) -> bytes:
    """The message without the DKIM-Signature field that contains *marker*."""
    fields: list[list[bytes]] = []
    end = lines.index(b"")
    for line in lines[:end]:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept = [f for f in fields
            if not (f[0].lower().startswith(b"dkim-signature") and marker in b"".join(f))]
    return b"\r\n".join([line for f in kept for line in f] + lines[end:])


def test_dmarc_passes_on_an_aligned_dkim_signature_when_spf_fails(signed, start_gmta, tmp_path,
                                                                   dns_server):
    """RFC 7489 §4.2: either aligned identifier passing is enough. SPF fails for
    sign.test from 127.0.0.1; gmta's DKIM signature carries the message, and a
    tampered copy (DKIM fail too) meets the p=reject policy."""
    _, message, records = signed
    dns_server.zone("sign.test", records + ['@ TXT "v=spf1 -all"',
                                            '_dmarc TXT "v=DMARC1; p=reject"'])
    dns_server.reload()
    verifier_state = tmp_path / "verifier"
    verifier_state.mkdir()
    verifier = start_gmta(base_config(verifier_state, f"tls off\ndns_servers "
                                                      f"{dns_server.directive}") + """
target.maildir local_mailboxes {
    path maildir/{domain}/{local}
}
smtp tcp://127.0.0.1:0 {
    dmarc yes
    check {
        spf
        dkim
    }
    deliver_to &local_mailboxes
}
""")
    with smtplib.SMTP("127.0.0.1", verifier.port(), timeout=30) as client:
        client.sendmail("alice@sign.test", ["erin@local.test"], message)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("alice@sign.test", ["frank@local.test"],
                            message.replace(b"Hello,", b"Bye,"))
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1")
    [stored] = maildir_messages(verifier_state, "erin@local.test")
    results = stored.split(b"Authentication-Results: ", 1)[1].split(b"\r\n\r\n")[0]
    assert b"spf=fail" in results and b"dmarc=pass header.from=sign.test" in results
    assert maildir_messages(verifier_state, "frank@local.test") == []
