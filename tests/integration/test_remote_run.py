"""target.remote in the real ``gmta run`` (R17) and STARTTLS levels (R11) against gmta MX hosts.

The MX hosts here are gmta's own smtp endpoints on 127.0.0.3/127.0.0.5 with a
certificate from the test CA, delivering into Maildirs, so each stored message's
Received field says whether it came over TLS and their logs count sessions.
DNS is the knot fixture (``dns_servers``); the sending gmta delivers
synchronously (``deliver_to target.remote``).
"""

# ruff: noqa: F811  (fixtures imported from peers, then named as parameters)

from __future__ import annotations

import smtplib

import pytest

import gmta.modules  # noqa: F401
from gmta.buffer import MemoryBuffer
from gmta.config.loader import load_block
from gmta.delivery import MessageMeta
from gmta.errors import SMTPError
from gmta.target.security import MXLevel, TLSLevel
from tests.integration.conftest import base_config, maildir_messages
from tests.integration.dnsserver import AuthoritativeDNS
from tests.integration.mxauth_world import world  # noqa: F401
from tests.integration.peers import ca, smtp_sink  # noqa: F401
from tests.integration.test_remote import port  # noqa: F401

pytestmark = pytest.mark.integration

MESSAGE = b"From: a@example.org\r\nTo: b@tls.remote.test\r\nSubject: via mx\r\n\r\nHi\r\n"


@pytest.fixture(scope="module")
def tls_dns(tmp_path_factory):
    server = AuthoritativeDNS(tmp_path_factory.mktemp("tls-dns"))
    server.zone("remote.test", [
        "tls MX 10 mx.hosts", "mx.hosts A 127.0.0.3",
        "plain MX 10 plainmx.hosts", "plainmx.hosts A 127.0.0.5",
    ])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def gmta_mx(start_gmta, tmp_path, ca, port):
    """``gmta_mx(address, tls_line)`` → a gmta endpoint on address:port storing into Maildirs."""
    def start(address: str = "127.0.0.3", tls: str | None = None):
        state = tmp_path / f"mx-{address}"
        state.mkdir()
        if tls is None:
            cert, key = ca.issue("mx.hosts.remote.test")
            tls = f"tls file {cert} {key}"
        process = start_gmta(base_config(state, tls + "\ndebug yes") + f"""
smtp tcp://{address}:{port} {{
    deliver_to target.maildir {{
        path maildir/{{domain}}/{{local}}
    }}
}}
""")
        process.state_dir = state
        return process
    return start


def remote_target(tmp_path, tls_dns, port, extra: str = ""):
    config = tmp_path / "remote.conf"
    config.write_text(f"hostname client.gmta.test\nstate_dir {tmp_path}/state\n"
                      f"dns_servers {tls_dns.directive}\n"
                      f"target.remote out {{\n smtp_port {port}\n command_timeout 5s\n"
                      f" {extra}\n}}\n")
    target = load_block(str(config), "out")
    target.connections = []
    target.on_connect = target.connections.append
    return target


def send_one(target, rcpt="b@tls.remote.test", meta=None):
    delivery = target.start_delivery(meta or MessageMeta("m"), "a@example.org")
    try:
        delivery.add_rcpt(rcpt)
        delivery.body(MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n", MemoryBuffer(b"Hi\r\n"))
        delivery.commit()
    except BaseException:
        delivery.abort()
        raise
    finally:
        target.stop()


# --- R11: STARTTLS levels. ---------------------------------------------------------------

def test_r11_trusted_certificate_is_authenticated(tmp_path, tls_dns, port, gmta_mx, ca):
    mx = gmta_mx()
    target = remote_target(tmp_path, tls_dns, port, f"tls_client {{\n root_ca {ca.cert_path}\n}}")
    send_one(target)
    [connection] = target.connections
    assert connection.facts.tls_level is TLSLevel.AUTHENTICATED
    assert connection.facts.mx_level is MXLevel.NONE
    assert connection.facts.peer_certificate   # DER, for DANE
    [stored] = maildir_messages(mx.state_dir, "b@tls.remote.test")
    assert b"with ESMTPS" in stored


def test_r11_untrusted_certificate_is_encrypted(tmp_path, tls_dns, port, gmta_mx):
    mx = gmta_mx()
    target = remote_target(tmp_path, tls_dns, port)   # the test CA is not trusted
    send_one(target)
    [connection] = target.connections
    assert connection.facts.tls_level is TLSLevel.ENCRYPTED
    assert "not trusted" in connection.facts.tls_error
    [stored] = maildir_messages(mx.state_dir, "b@tls.remote.test")
    assert b"with ESMTPS" in stored


def test_r11_handshake_failure_falls_back_to_plaintext(tmp_path, tls_dns, port, gmta_mx, ca):
    cert, key = ca.issue("mx.hosts.remote.test")
    mx = gmta_mx(tls=f"tls file {cert} {key} {{\n protocols tls1.3 tls1.3\n}}")
    target = remote_target(tmp_path, tls_dns, port, f"""tls_client {{
    root_ca {ca.cert_path}
    protocols tls1.2 tls1.2
}}""")
    send_one(target)
    [connection] = target.connections
    assert connection.facts.tls_level is TLSLevel.NONE
    assert connection.facts.tls_error
    [stored] = maildir_messages(mx.state_dir, "b@tls.remote.test")
    assert b"with ESMTPS" not in stored


def test_requiretls_refused_over_unverified_tls_without_fallback(tmp_path, tls_dns, port,
                                                                  gmta_mx):
    mx = gmta_mx()
    target = remote_target(tmp_path, tls_dns, port)
    with pytest.raises(SMTPError) as refused:
        send_one(target, meta=MessageMeta("rt", mail_params={"requiretls": True}))
    # Without mx_auth the MX level is none: refused before any connection (RFC 8689).
    assert (refused.value.code, refused.value.enhanced) == (550, (5, 7, 30))
    assert target.connections == []
    assert maildir_messages(mx.state_dir, "b@tls.remote.test") == []


# --- The mx_auth hook: a policy plugged in decides levels and refusals. -----------------------

class MTASTSLikePolicy:
    """A policy as gmta/mxauth will provide: MX level mtasts for one host, TLS required."""

    def __init__(self, trusted_mx: str):
        self.trusted_mx = trusted_mx
        self.calls: list[str] = []

    def start(self, meta):
        return self

    def prepare_domain(self, domain):
        self.calls.append(f"prepare {domain}")

    def check_mx(self, mx, level):
        self.calls.append(f"mx {mx.name}")
        return MXLevel.MTASTS if mx.name == self.trusted_mx else level

    def check_conn(self, facts):
        self.calls.append(f"conn {facts.mx} {facts.tls_level}")
        if facts.tls_level < TLSLevel.ENCRYPTED:
            raise SMTPError(451, (4, 7, 1), "TLS is required but unavailable (test policy)")
        return facts.tls_level

    def close(self):
        self.calls.append("close")


def test_policy_hook_enables_requiretls(tmp_path, tls_dns, port, gmta_mx, ca):
    mx = gmta_mx()
    target = remote_target(tmp_path, tls_dns, port, f"tls_client {{\n root_ca {ca.cert_path}\n}}")
    policy = target.policy = MTASTSLikePolicy("mx.hosts.remote.test")
    send_one(target, meta=MessageMeta("rt", mail_params={"requiretls": True}))
    assert policy.calls == ["prepare tls.remote.test", "mx mx.hosts.remote.test",
                            "conn mx.hosts.remote.test authenticated", "close"]
    [stored] = maildir_messages(mx.state_dir, "b@tls.remote.test")
    assert b"with ESMTPS" in stored


def test_policy_hook_refuses_plaintext(tmp_path, tls_dns, port, smtp_sink):
    sink = smtp_sink(host="127.0.0.5", port=port)   # smtp-sink has no STARTTLS
    target = remote_target(tmp_path, tls_dns, port, "limits { destination concurrency 1 }")
    target.policy = MTASTSLikePolicy("none")
    with pytest.raises(SMTPError) as refused:
        send_one(target, rcpt="b@plain.remote.test")
    assert (refused.value.code, refused.value.enhanced) == (451, (4, 7, 1))
    assert "TLS is required" in refused.value.text
    assert sink.messages() == []
    assert target.limits.state()["destination"]["in_use"] == 0
    # TLS-Required: No turns the policy off for that message (RFC 8689 §5).
    target.policy = MTASTSLikePolicy("none")
    send_one(target, rcpt="b@plain.remote.test", meta=MessageMeta("o", tls_required_no=True))
    assert len(sink.wait_for_messages(1)) == 1


# --- R17: the real gmta run, synchronous remote delivery. ------------------------------------

def test_r17_gmta_run_delivers_to_the_mx_in_one_session(start_gmta, state_dir, tls_dns, port,
                                                         gmta_mx, ca):
    mx = gmta_mx()
    gmta = start_gmta(base_config(state_dir, f"tls off\ndns_servers {tls_dns.directive}") + f"""
smtp tcp://127.0.0.1:0 {{
    deliver_to target.remote {{
        smtp_port {port}
        tls_client {{
            root_ca {ca.cert_path}
        }}
    }}
}}
""")
    for _n in range(2):
        with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=30) as client:
            assert client.sendmail("a@example.org", ["b@tls.remote.test", "c@tls.remote.test"],
                                   MESSAGE) == {}
    assert len(maildir_messages(mx.state_dir, "b@tls.remote.test")) == 2
    assert len(maildir_messages(mx.state_dir, "c@tls.remote.test")) == 2
    # Two messages, one session at the MX (the second reused the first's).
    assert sum("event=connected" in line for line in mx.lines) == 1
    gmta.wait_for(r"event=mx_connected .*tls=authenticated")


def test_r17_gmta_run_null_mx_refused_at_rcpt(start_gmta, state_dir, tmp_path):
    dns = AuthoritativeDNS(tmp_path / "nulldns")
    dns.zone("null.test", ["@ MX 0 ."])
    dns.start()
    try:
        gmta = start_gmta(base_config(state_dir, f"tls off\ndns_servers {dns.directive}") + """
smtp tcp://127.0.0.1:0 {
    deliver_to remote
}
""")
        with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=30) as client:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.sendmail("a@example.org", ["b@null.test"], MESSAGE)
        assert refused.value.recipients["b@null.test"] == (
            556, b"5.1.10 Domain null.test does not accept email (null MX)")
    finally:
        dns.stop()


def test_r17_signed_a_only_domain_with_dnssec_and_dane_is_delivered(start_gmta, world,
                                                                     smtp_sink, port):
    # maddy #321: an implicit MX (A record only) in a DNSSEC-signed zone without
    # TLSA records must not stop delivery when mx_auth has dnssec and dane.
    world.zone("aonly.test", ["@ A 127.0.0.2"])
    world.start()
    sink = smtp_sink(host="127.0.0.2", port=port)
    config = base_config(world.state_dir, f"tls off\ndns_servers {world.resolver.directive}")
    gmta = start_gmta(config + f"""
smtp tcp://127.0.0.1:0 {{
    deliver_to target.remote {{
        smtp_port {port}
        mx_auth {{
            dnssec
            dane
        }}
    }}
}}
""")
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=30) as client:
        assert client.sendmail("a@example.org", ["b@aonly.test", "c@aonly.test"], MESSAGE) == {}
    [message] = sink.wait_for_messages(1)
    assert message.get_all("X-Rcpt-Args") == ["<b@aonly.test>", "<c@aonly.test>"]
    gmta.wait_for(r"event=mx_connected .*mx=aonly\.test .*tls=none mx_level=dnssec")
