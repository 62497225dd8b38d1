"""AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN; submission needs it for MAIL.

Ported from aiosmtpd's TestSMTPAuth / TestAuthMechanisms / TestRequiredAuthentication.
"""

import base64

import pytest

from gmta.errors import SMTPError
from gmta.proto import Auth, ProtocolError, State
from proto_helpers import greeted


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


PLAIN = b64("\0alice\0secret")
MAIL = b"MAIL FROM:<alice@example.com>\r\n"
WRONG = SMTPError(535, (5, 7, 8), "Invalid credentials")


def auth_session(**options):
    options.setdefault("auth_mechanisms", ["PLAIN", "LOGIN"])
    options.setdefault("tls_active", True)
    return greeted(**options)


def test_plain_with_initial_response():
    session = auth_session()
    out = session.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
    assert out == b"235 2.7.0 Authentication successful\r\n"
    assert session.of_type(Auth) == [Auth("PLAIN", "alice", "secret")]
    assert session.conn.authenticated_as == "alice"


def test_plain_with_authorization_id():
    session = auth_session()
    session.send(b"AUTH PLAIN " + b64("admin\0alice\0secret") + b"\r\n")
    assert session.of_type(Auth)[0].authorization_id == "admin"


def test_plain_with_continuation():
    session = auth_session()
    assert session.send(b"AUTH plain\r\n") == b"334 \r\n"
    assert session.conn.state is State.AUTH
    assert session.say(PLAIN + b"\r\n") == ["235 2.7.0"]


def test_login():
    session = auth_session()
    assert session.send(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"      # "Username:"
    assert session.send(b64("alice") + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"  # "Password:"
    assert session.say(b64("secret") + b"\r\n") == ["235 2.7.0"]
    assert session.of_type(Auth) == [Auth("LOGIN", "alice", "secret")]


def test_login_with_initial_response():
    session = auth_session()
    assert session.send(b"AUTH LOGIN " + b64("alice") + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"
    assert session.say(b64("secret") + b"\r\n") == ["235 2.7.0"]


def test_empty_initial_response():
    # RFC 4954 §4: "=" is an empty initial response; PLAIN can't be empty.
    session = auth_session()
    assert session.say(b"AUTH PLAIN =\r\n") == ["501 5.5.2"]
    assert session.say(b"AUTH LOGIN =\r\n") == ["334"]


def test_password_is_not_in_the_event_repr():
    session = auth_session()
    session.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
    assert "secret" not in repr(session.events)


def test_star_cancels():
    session = auth_session()
    session.send(b"AUTH LOGIN\r\n")
    assert session.say(b"*\r\n") == ["501 5.0.0"]
    assert session.conn.state is State.READY and session.conn.authenticated_as is None
    assert isinstance(session.events[-1], ProtocolError)


@pytest.mark.parametrize("response", [b"not base64!", b"\xff\xfe", b64("\0only-one-part"),
                                      b64("\0\0"), base64.b64encode(b"\0a\0\xff")])
def test_undecodable_responses(response):
    session = auth_session()
    session.send(b"AUTH PLAIN\r\n")
    assert session.say(response + b"\r\n") == ["501 5.5.2"]
    assert session.say(b"AUTH PLAIN " + PLAIN + b"\r\n") == ["235 2.7.0"]


def test_bad_initial_response():
    session = auth_session()
    assert session.say(b"AUTH PLAIN !!!\r\n") == ["501 5.5.2"]
    assert session.conn.state is State.READY


def test_wrong_credentials_then_right_ones():
    session = auth_session(decide=lambda event: WRONG if isinstance(event, Auth) else None)
    assert session.say(b"AUTH PLAIN " + PLAIN + b"\r\n") == ["535 5.7.8"]
    assert session.conn.authenticated_as is None
    session.decide = None
    assert session.say(b"AUTH PLAIN " + PLAIN + b"\r\n") == ["235 2.7.0"]


@pytest.mark.parametrize("options, command, expected", [
    ({}, b"AUTH PLAIN\r\n", "502 5.5.1"),                                  # not offered
    ({"auth_mechanisms": ["PLAIN"]}, b"AUTH PLAIN\r\n", "523 5.7.10"),     # needs TLS
    ({"auth_mechanisms": ["PLAIN"], "tls_active": True}, b"AUTH LOGIN\r\n", "504 5.5.4"),
    ({"auth_mechanisms": ["PLAIN"], "tls_active": True}, b"AUTH\r\n", "504 5.5.4"),
    ({"auth_mechanisms": ["PLAIN"], "auth_requires_tls": False}, b"AUTH PLAIN\r\n", "334"),
])
def test_auth_availability(options, command, expected):
    session = greeted(**options)
    assert session.say(command) == [expected]


def test_auth_before_ehlo_and_during_a_transaction():
    session = auth_session(command=b"")
    assert session.say(b"AUTH PLAIN " + PLAIN + b"\r\n") == ["503 5.5.1"]
    session.send(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\n")
    assert session.say(b"AUTH PLAIN " + PLAIN + b"\r\n") == ["503 5.5.1"]


def test_auth_twice():
    session = auth_session()
    session.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
    assert session.say(b"AUTH PLAIN " + PLAIN + b"\r\n") == ["503 5.5.1"]


def test_rset_and_ehlo_keep_authentication():
    session = auth_session()
    session.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
    session.send(b"RSET\r\nEHLO again\r\n")
    assert session.conn.authenticated_as == "alice"


def test_submission_requires_auth_for_mail():
    # RFC 4954 §6: 530 (maddy answers 502; DESIGN §1.3 corrects it).
    session = auth_session(submission=True)
    assert session.send(MAIL) == b"530 5.7.0 Authentication required\r\n"
    session.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
    assert session.say(MAIL) == ["250 2.0.0"]


def test_too_long_auth_line_closes():
    session = auth_session(max_line_length=1000)
    session.send(b"AUTH PLAIN\r\n")
    assert session.say(b"A" * 2000) == ["500 5.4.0"]
    assert session.closed


def test_auth_response_split_over_receives():
    session = auth_session()
    session.send(b"AUTH PLAIN\r\n")
    assert session.say(PLAIN[:5]) == []
    assert session.say(PLAIN[5:] + b"\r\n") == ["235 2.7.0"]
