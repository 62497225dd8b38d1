"""Command-level behaviour of the server machine, as byte scripts.

Most cases are ported from aiosmtpd's tests/test_smtp.py (peers-and-style §2.4) and
maddy's endpoint behaviours (maddy-behaviour §2.1, §3.1).
"""

import pytest

from gmta.errors import SMTPError
from gmta.proto import (
    Connected, Ehlo, Helo, Help, Mail, Noop, ProtocolError, Rcpt, Rset, State, Vrfy)
from gmta.proto.events import BodyType, DsnReturn, Notify
from proto_helpers import HOST, Session, greeted, parse_output

EHLO = b"EHLO client.example\r\n"
MAIL = b"MAIL FROM:<a@example.com>\r\n"
RCPT = b"RCPT TO:<b@example.net>\r\n"
HI, OK, SEQUENCE, ARGUMENT, SYNTAX, PARAMETER = (
    "250", "250 2.0.0", "503 5.5.1", "501 5.5.4", "500 5.5.2", "555 5.5.4")


def mail(params: bytes = b"", address: bytes = b"a@b.example") -> bytes:
    return b"MAIL FROM:<" + address + b">" + params + b"\r\n"


def rcpt(params: bytes = b"", address: bytes = b"c@d.example") -> bytes:
    return b"RCPT TO:<" + address + b">" + params + b"\r\n"


# (name, session options, [(client bytes, expected replies), ...]); every script
# starts right after the banner.
SCRIPTS = [
    ("helo", {}, [(b"HELO client.example\r\n", [HI])]),
    ("ehlo twice", {}, [(EHLO, [HI]), (EHLO, [HI])]),
    ("helo then ehlo", {}, [(b"HELO x\r\n", [HI]), (EHLO, [HI])]),
    ("ehlo then helo", {}, [(EHLO, [HI]), (b"HELO x\r\n", [HI])]),
    ("helo without name", {}, [(b"HELO\r\n", [ARGUMENT]), (b"HELO \r\n", [ARGUMENT])]),
    ("ehlo without name", {}, [(b"EHLO\r\n", [ARGUMENT])]),
    ("lowercase verbs", {}, [(b"ehlo x\r\n", [HI]), (b"mail from:<a@b.example>\r\n", [OK])]),
    ("lhlo on smtp", {}, [(b"LHLO x\r\n", ["500 5.5.1"])]),
    ("helo on lmtp", {"lmtp": True},
     [(b"HELO x\r\n", ["500 5.5.1"]), (EHLO, ["500 5.5.1"]), (b"LHLO x\r\n", [HI])]),
    # RFC 5321 §4.1.4 sequence errors are 503 (maddy says 502: DESIGN corrects it).
    ("mail before ehlo", {}, [(MAIL, [SEQUENCE])]),
    ("rcpt before ehlo", {}, [(RCPT, [SEQUENCE])]),
    ("rcpt before mail", {}, [(EHLO, [HI]), (RCPT, [SEQUENCE])]),
    ("data before mail", {}, [(EHLO, [HI]), (b"DATA\r\n", [SEQUENCE])]),
    ("data before rcpt", {}, [(EHLO, [HI]), (MAIL, [OK]), (b"DATA\r\n", [SEQUENCE])]),
    ("nested mail", {},
     [(EHLO, [HI]), (MAIL, [OK]), (MAIL, [SEQUENCE]), (RCPT, [OK]), (MAIL, [SEQUENCE])]),
    ("mail after rset", {}, [(EHLO, [HI]), (MAIL, [OK]), (b"RSET\r\n", [OK]), (MAIL, [OK])]),
    ("ehlo resets the transaction", {},
     [(EHLO, [HI]), (MAIL, [OK]), (EHLO, [HI]), (RCPT, [SEQUENCE]), (MAIL, [OK])]),
    ("data with argument", {},
     [(EHLO, [HI]), (MAIL + RCPT, [OK, OK]), (b"DATA x\r\n", [ARGUMENT])]),
    ("rset with argument", {}, [(b"RSET x\r\n", [ARGUMENT]), (b"RSET\r\n", [OK])]),
    ("rset before ehlo", {}, [(b"RSET\r\n", [OK]), (MAIL, [SEQUENCE])]),
    ("noop with argument", {}, [(b"NOOP\r\n", [OK]), (b"NOOP hello\r\n", [OK])]),
    ("quit with argument", {}, [(b"QUIT now\r\n", [ARGUMENT]), (b"QUIT\r\n", ["221 2.0.0"])]),
    ("vrfy", {}, [(b"VRFY\r\n", [ARGUMENT]), (b"VRFY someone\r\n", ["252 2.5.0"])]),
    ("help", {}, [(b"HELP\r\n", ["214 2.0.0"]), (b"HELP MAIL\r\n", ["214 2.0.0"])]),
    ("not implemented", {},
     [(b"EXPN list\r\n", ["502 5.5.1"]), (b"TURN\r\n", ["502 5.5.1"]),
      (b"ETRN x\r\n", ["502 5.5.1"])]),
    ("unknown and empty", {},
     [(b"FOO\r\n", [SYNTAX]), (b"\r\n", [SYNTAX]), (b" " + MAIL, [SYNTAX])]),
    ("not ascii verb", {}, [("ſTARTTLS\r\n".encode(), [SYNTAX])]),
    ("not utf-8", {}, [(b"NOOP \xff\r\n", [SYNTAX])]),
    # A bare LF inside a command line does not split it (only CRLF ends a line).
    ("bare lf in command", {},
     [(EHLO, [HI]), (b"NOOP\n" + MAIL, [SYNTAX]), (RCPT, [SEQUENCE])]),
    ("bare cr in command", {}, [(b"NOOP\rQUIT\r\n", [SYNTAX])]),
    ("max recipients", {"max_recipients": 2},
     [(EHLO, [HI]), (MAIL, [OK]), (RCPT * 3, [OK, OK, "452 4.5.3"])]),
    ("mail syntax", {},
     [(EHLO, [HI]), (b"MAIL\r\n", ["501 5.5.2"]), (b"MAIL TO:<a@b.example>\r\n", ["501 5.5.2"]),
      (b"MAIL FROM:a@b.example\r\n", ["501 5.5.2"]), (mail(b"x"), ["501 5.5.2"]),
      (mail(address=b"a@@b.example"), ["501 5.1.7"]),
      (b"MAIL FROM: <a@b.example>\r\n", [OK])]),
    ("rcpt syntax", {},
     [(EHLO, [HI]), (MAIL, [OK]), (b"RCPT\r\n", ["501 5.5.2"]),
      (b"RCPT TO:<>\r\n", ["501 5.1.3"]), (b"RCPT TO:<postmaster>\r\n", [OK])]),
    # bpo-27931 (aiosmtpd): an empty address with parameters.
    ("null sender with params", {}, [(EHLO, [HI]), (b"MAIL FROM:<> SIZE=10\r\n", [OK])]),
    ("params after helo", {},
     [(b"HELO x\r\n", [HI]), (mail(b" SIZE=10"), [PARAMETER]), (mail(), [OK]),
      (rcpt(b" NOTIFY=NEVER"), [PARAMETER])]),
    ("unknown parameter", {},
     [(EHLO, [HI]), (mail(b" FOO=1"), [PARAMETER]), (MAIL, [OK]), (rcpt(b" FOO"), [PARAMETER])]),
    ("size", {"max_message_size": 1000},
     [(EHLO, [HI]), (mail(b" SIZE=1001"), ["552 5.3.4"]), (mail(b" SIZE=abc"), [ARGUMENT]),
      (mail(b" SIZE"), [ARGUMENT]), (mail(b" SIZE=1000"), [OK])]),
    ("body", {},
     [(EHLO, [HI]), (mail(b" BODY=9BIT"), [ARGUMENT]), (mail(b" BODY=BINARYMIME"), [PARAMETER]),
      (mail(b" BODY=8bitmime"), [OK])]),
    ("smtputf8", {},
     [(EHLO, [HI]), (mail(address="δ@example.com".encode()), ["550 5.6.7"]),
      (mail(b" SMTPUTF8=yes"), [ARGUMENT]),
      (mail(b" SMTPUTF8", address="δ@example.com".encode()), [OK]),
      (rcpt(address="δ@παράδειγμα.example".encode()), [OK])]),
    ("utf8 recipient without smtputf8", {},
     [(EHLO, [HI]), (MAIL, [OK]), (rcpt(address="δ@example.com".encode()), ["553 5.6.7"])]),
    ("requiretls without tls", {}, [(EHLO, [HI]), (mail(b" REQUIRETLS"), [PARAMETER])]),
    ("requiretls with tls", {"tls_active": True},
     [(EHLO, [HI]), (mail(b" REQUIRETLS=1"), [ARGUMENT]), (mail(b" REQUIRETLS"), [OK])]),
    ("dsn params", {},
     [(EHLO, [HI]), (mail(b" RET=ALL"), [ARGUMENT]), (mail(b" ENVID=" + b"x" * 101), [ARGUMENT]),
      (mail(b" ENVID=a+ZZ"), [ARGUMENT]), (mail(b" RET=HDRS ENVID=QQ+2B1"), [OK]),
      (rcpt(b" NOTIFY=NEVER,DELAY"), [ARGUMENT]), (rcpt(b" NOTIFY=SOMETIMES"), [ARGUMENT]),
      (rcpt(b" ORCPT=rfc822"), [ARGUMENT]), (rcpt(b" ORCPT=;x"), [ARGUMENT]),
      (rcpt(b" NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40c.example"), [OK])]),
    ("auth param", {}, [(EHLO, [HI]), (mail(b" AUTH"), [ARGUMENT]), (mail(b" AUTH=<>"), [OK])]),
    ("duplicate param", {}, [(EHLO, [HI]), (mail(b" SIZE=1 SIZE=2"), [ARGUMENT])]),
]


@pytest.mark.parametrize("name, options, script", SCRIPTS, ids=[case[0] for case in SCRIPTS])
def test_scripts(name, options, script):
    session = Session(**options)
    assert session.say() == ["220"]
    for data, expected in script:
        assert session.say(data) == expected, data


def test_banner():
    assert Session().send() == b"220 mx.example.org ESMTP Service Ready\r\n"
    assert Session(lmtp=True).send() == b"220 mx.example.org LMTP Service Ready\r\n"


def test_refused_connection_is_closed():
    session = Session(decide=lambda event: SMTPError(421, (4, 7, 0), "Too busy"))
    assert session.say() == ["421 4.7.0"]
    assert session.closed
    assert session.send(b"EHLO x\r\n") == b""


def test_ehlo_capabilities_plain():
    session = Session()
    session.send()
    ehlo = parse_output(session.send(EHLO))[0]
    assert ehlo.lines == [f"{HOST} Hello client.example", "PIPELINING", "8BITMIME",
                          "ENHANCEDSTATUSCODES", "CHUNKING", "SMTPUTF8", "DSN",
                          "SIZE 33554432", "LIMITS RCPTMAX=20000"]


@pytest.mark.parametrize("options, present, absent", [
    ({"tls_available": True}, ["STARTTLS"], ["AUTH PLAIN", "REQUIRETLS"]),
    ({"tls_available": True, "tls_active": True}, ["REQUIRETLS"], ["STARTTLS"]),
    ({"auth_mechanisms": ["plain"]}, [], ["AUTH PLAIN"]),          # needs TLS by default
    ({"auth_mechanisms": ["PLAIN"], "auth_requires_tls": False}, ["AUTH PLAIN"], []),
    ({"auth_mechanisms": ["PLAIN", "LOGIN"], "tls_active": True}, ["AUTH PLAIN LOGIN"], []),
    ({"max_message_size": 1000, "max_recipients": 5}, ["SIZE 1000", "LIMITS RCPTMAX=5"], []),
])
def test_ehlo_capabilities_depend_on_options(options, present, absent):
    session = Session(**options)
    session.send()
    lines = parse_output(session.send(EHLO))[0].lines
    for keyword in present:
        assert keyword in lines
    for keyword in absent:
        assert keyword not in lines
    # maddy's order: STARTTLS and AUTH sit between CHUNKING and SMTPUTF8.
    assert lines.index("CHUNKING") < lines.index("SMTPUTF8") < lines.index("DSN")


def test_helo_reply():
    session = Session()
    session.send()
    assert session.send(b"HELO client\r\n") == f"250 {HOST} Hello client\r\n".encode()
    assert session.conn.esmtp is False and session.conn.client_name == "client"


def test_events_carry_the_parameters():
    session = greeted()
    session.send(b"MAIL FROM:<a@b.example> SIZE=10 BODY=7BIT SMTPUTF8 AUTH=a+2Bb@c.example "
                 b"RET=FULL ENVID=id+20x\r\n"
                 b"RCPT TO:<c@d.example> NOTIFY=FAILURE,DELAY ORCPT=rfc822;c+40d.example\r\n")
    assert session.of_type(Mail) == [Mail("a@b.example", size=10, body=BodyType.SEVEN_BIT,
                                          smtputf8=True, auth="a+b@c.example", ret=DsnReturn.FULL,
                                          envid="id x")]
    notify = frozenset({Notify.FAILURE, Notify.DELAY})
    assert session.of_type(Rcpt) == [Rcpt("c@d.example", notify=notify,
                                          orcpt=("rfc822", "c@d.example"))]


def test_informational_events():
    session = greeted(b"HELO x\r\n")
    session.send(b"NOOP\r\nRSET\r\nVRFY bob\r\nHELP me\r\nFOO\r\n")
    assert session.events[:2] == [Connected(), Helo("x")]
    assert session.events[2:6] == [Noop(), Rset(), Vrfy("bob"), Help("me")]
    assert isinstance(session.events[6], ProtocolError) and not session.events[6].fatal


def test_reply_texts():
    session = greeted()
    out = session.send(MAIL + RCPT + b"VRFY x\r\nNOOP\r\n")
    assert out == (b"250 2.0.0 Roger, accepting mail from <a@example.com>\r\n"
                   b"250 2.0.0 I'll make sure <b@example.net> gets this\r\n"
                   b"252 2.5.0 Cannot VRFY user, but will accept message\r\n"
                   b"250 2.0.0 I have successfully done nothing\r\n")
    assert session.send(b"QUIT\r\n") == b"221 2.0.0 Bye\r\n"


def test_utf8_replies_only_in_smtputf8_transactions():
    session = greeted()
    out = session.send("MAIL FROM:<δ@example.com> SMTPUTF8\r\n".encode())
    assert "<δ@example.com>".encode() in out
    reject = SMTPError(550, (5, 1, 1), "δ is unknown")
    session.decide = lambda event: reject if isinstance(event, Rcpt) else None
    assert "δ is unknown".encode() in session.send(b"RCPT TO:<b@example.net>\r\n")
    session.send(b"RSET\r\n")
    session.send(MAIL)
    assert session.send(b"RCPT TO:<b@example.net>\r\n") == b"550 5.1.1 ? is unknown\r\n"


def test_driver_rejections_change_nothing():
    refuse = SMTPError(550, (5, 7, 1), "no")
    session = greeted(decide=lambda event: refuse if isinstance(event, (Mail, Rcpt)) else None)
    assert session.say(MAIL + RCPT) == ["550 5.7.1", "503 5.5.1"]
    assert session.conn.state is State.READY and not session.conn.in_transaction


def test_rejected_ehlo_leaves_the_client_ungreeted():
    # maddy E13: a failing connection-level check answers EHLO and allows no mail.
    session = Session(decide=lambda event: SMTPError(523, (5, 7, 10), "TLS please")
                      if isinstance(event, Ehlo) else None)
    session.send()
    assert session.say(EHLO) == ["523 5.7.10"]
    assert session.say(MAIL) == ["503 5.5.1"]


def test_rejected_second_ehlo_ends_the_greeting():
    session = greeted()
    session.send(MAIL)
    session.decide = lambda event: SMTPError(550, (5, 7, 1), "no")
    assert session.say(EHLO) == ["550 5.7.1"]
    assert session.conn.state is State.NEED_HELO and not session.conn.in_transaction


def test_too_many_bad_commands_close_the_session():
    session = greeted(max_bad_commands=3)
    assert session.say(b"FOO\r\nBAR\r\n") == ["500 5.5.2", "500 5.5.2"]
    assert session.say(b"BAZ\r\nNOOP\r\n") == ["421 4.7.0"]
    assert session.closed
    assert session.events[-1] == ProtocolError(session.events[-1].reply, fatal=True)


def test_bad_command_counter_counts_consecutive_errors():
    session = greeted(max_bad_commands=3)
    for _ in range(5):
        assert session.say(b"FOO\r\nFOO\r\nNOOP\r\n") == ["500 5.5.2", "500 5.5.2", "250 2.0.0"]
    assert not session.closed


def test_quit_closes_and_ignores_what_follows():
    session = greeted()
    assert session.say(b"QUIT\r\nNOOP\r\n") == ["221 2.0.0"]
    assert session.closed and session.conn.state is State.CLOSED
    assert session.send(b"NOOP\r\n") == b""
    assert session.conn.buffered_bytes == 0


@pytest.mark.parametrize("options", [
    {"auth_mechanisms": ["CRAM-MD5"]},
    {"submission": True},
    {"max_line_length": 100},
    {"max_recipients": 0},
    {"max_bad_commands": 0},
])
def test_invalid_options(options):
    with pytest.raises(ValueError):
        Session(**options)


def test_without_dsn_the_extension_is_not_offered_and_its_parameters_are_refused():
    """RFC 5321 §4.1.1.11: an endpoint that cannot honour NOTIFY must not take it."""
    session = Session(dsn=False)
    session.send()
    ehlo = session.send(b"EHLO client.example\r\n")
    assert b"DSN" not in ehlo and b"SIZE " in ehlo
    assert session.say(b"MAIL FROM:<a@b.example> RET=HDRS\r\n") == ["555 5.5.4"]
    assert session.say(b"MAIL FROM:<a@b.example> ENVID=x\r\n") == ["555 5.5.4"]
    assert session.say(b"MAIL FROM:<a@b.example>\r\n") == ["250 2.0.0"]
    assert session.say(b"RCPT TO:<c@d.example> NOTIFY=NEVER\r\n") == ["555 5.5.4"]
    assert session.say(b"RCPT TO:<c@d.example> ORCPT=rfc822;c@d.example\r\n") == ["555 5.5.4"]
    assert session.say(b"RCPT TO:<c@d.example>\r\n") == ["250 2.0.0"]


@pytest.mark.parametrize("options, present, absent", [
    ({}, [b"EHLO", b"HELO", b"MAIL"], [b"STARTTLS", b"AUTH", b"LHLO"]),
    ({"tls_available": True}, [b"STARTTLS"], [b"AUTH"]),
    ({"tls_available": True, "tls_active": True}, [], [b"STARTTLS"]),
    ({"auth_mechanisms": ["PLAIN"]}, [b"AUTH"], [b"STARTTLS"]),
    ({"lmtp": True}, [b"LHLO"], [b"EHLO", b"HELO"]),
])
def test_help_lists_only_what_the_session_can_use(options, present, absent):
    session = Session(**options)
    session.send()
    session.send(b"LHLO x\r\n" if options.get("lmtp") else b"EHLO x\r\n")
    words = session.send(b"HELP\r\n").split()
    for word in present:
        assert word in words
    for word in absent:
        assert word not in words
