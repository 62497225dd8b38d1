"""STARTTLS (RFC 3207): plaintext pipelined after it is dropped, the session starts over.

Ported from aiosmtpd's test_starttls.py, plus slimta's plaintext command injection
(peers-and-style §1.6, CVE-2011-0411).
"""

import pytest

from gmta.proto import NEED_DATA, Mail, StartTLS, State
from gmta.proto.server import LocalProtocolError
from proto_helpers import Session, greeted, parse_output


def tls_session(**options):
    return greeted(tls_available=True, **options)


def test_starttls():
    session = Session(tls_available=True)
    session.send()
    session.send(b"EHLO x\r\n")
    conn = session.conn
    conn.receive_data(b"STARTTLS\r\n")
    assert conn.next_event() == StartTLS(0)
    assert conn.state is State.TLS_HANDSHAKE
    assert conn.data_to_send() == b"220 2.0.0 Ready to start TLS\r\n"
    assert conn.next_event() is NEED_DATA
    conn.tls_established()
    assert conn.tls_active and conn.state is State.NEED_HELO


def test_pipelined_plaintext_is_discarded():
    # slimta ran both commands inside the TLS session; they must vanish.
    session = tls_session()
    injected = b"EHLO x\r\nMAIL FROM:<injected@plaintext.example>\r\n"
    assert session.say(b"STARTTLS\r\n" + injected) == ["220 2.0.0"]
    assert session.events[-1] == StartTLS(discarded_bytes=len(injected))
    assert not session.of_type(Mail)
    assert session.conn.buffered_bytes == 0


def test_plaintext_fed_during_the_handshake_is_ignored():
    session = tls_session()
    conn = session.conn
    conn.receive_data(b"STARTTLS\r\n")
    conn.next_event()
    conn.receive_data(b"MAIL FROM:<injected@plaintext.example>\r\n")
    conn.tls_established()
    assert conn.buffered_bytes == 0


def test_session_state_is_forgotten_after_tls():
    # TestTLSForgetsSessionData: the EHLO name and anything learnt before are gone.
    session = tls_session()
    session.send(b"STARTTLS\r\n")      # Session calls tls_established() for us
    assert session.conn.client_name is None
    assert session.say(b"MAIL FROM:<a@b.example>\r\n") == ["503 5.5.1"]
    lines = parse_output(session.send(b"EHLO x\r\n"))[0].lines
    assert "STARTTLS" not in lines and "REQUIRETLS" in lines


def test_authentication_before_tls_is_forgotten():
    session = tls_session(auth_mechanisms=["PLAIN"], auth_requires_tls=False)
    session.send(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
    assert session.conn.authenticated_as == "alice"
    session.send(b"STARTTLS\r\n")
    assert session.conn.authenticated_as is None


@pytest.mark.parametrize("options, before, command, expected", [
    ({}, b"", b"STARTTLS\r\n", "502 5.5.1"),                                   # not offered
    ({"tls_available": True}, b"", b"STARTTLS now\r\n", "501 5.5.4"),          # RFC 3207 §4
    ({"tls_available": True, "tls_active": True}, b"", b"STARTTLS\r\n", "503 5.5.1"),
    ({"tls_available": True}, b"MAIL FROM:<a@b.example>\r\n", b"STARTTLS\r\n", "503 5.5.1"),
])
def test_starttls_refused(options, before, command, expected):
    session = greeted(**options)
    session.send(before)
    assert session.say(command) == [expected]
    assert session.conn.tls_active == options.get("tls_active", False)


def test_starttls_before_ehlo_is_allowed():
    session = Session(tls_available=True)
    session.send()
    assert session.say(b"STARTTLS\r\n") == ["220 2.0.0"]


def test_tls_established_without_starttls_is_a_driver_bug():
    with pytest.raises(LocalProtocolError):
        greeted().conn.tls_established()
