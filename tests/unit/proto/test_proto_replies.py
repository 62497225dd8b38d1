"""The Reply type, the catalogue (checked like aiosmtpd's qa/test_1testsuite) and the parser."""

import pytest

from gmta.errors import SMTPError
from gmta.proto import replies
from gmta.proto.replies import Reply, ReplyParser, parse_reply_line


def test_single_line():
    assert Reply(250, (2, 0, 0), "OK").to_bytes() == b"250 2.0.0 OK\r\n"


def test_multi_line_has_the_enhanced_code_on_every_line():
    reply = Reply(550, (5, 7, 1), "first\nsecond\nthird")
    assert reply.to_bytes() == b"550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n"
    assert reply.lines == ["first", "second", "third"]


def test_without_enhanced_code_and_text():
    assert Reply(334, None, "").to_bytes() == b"334 \r\n"
    assert str(Reply(354, None, "")) == "354"


def test_non_ascii_text_is_replaced_unless_utf8():
    reply = Reply(550, (5, 1, 1), "no such user δοκιμή")
    assert reply.to_bytes() == b"550 5.1.1 no such user ??????\r\n"
    assert reply.to_bytes(utf8=True) == "550 5.1.1 no such user δοκιμή\r\n".encode()


def test_cr_in_text_cannot_forge_a_line():
    assert Reply(250, (2, 0, 0), "a\r250 b").to_bytes() == b"250 2.0.0 a 250 b\r\n"


@pytest.mark.parametrize("code, enhanced", [(199, None), (600, None), (250, (4, 0, 0)),
                                            (354, (3, 0, 0)), (451, (5, 0, 0))])
def test_invalid_replies(code, enhanced):
    with pytest.raises(ValueError):
        Reply(code, enhanced, "x")


def test_error_round_trip():
    error = SMTPError(452, (4, 5, 3), "too many")
    reply = Reply.from_error(error)
    assert reply == Reply(452, (4, 5, 3), "too many")
    assert reply.to_error() == error
    assert str(reply) == "452 4.5.3 too many"


def _catalogue():
    entries = {}
    for name in dir(replies):
        value = getattr(replies, name)
        if isinstance(value, Reply):
            entries[name] = value
    entries["greeting"] = replies.greeting("h", lmtp=False)
    entries["helo_ok"] = replies.helo_ok("h", "c")
    entries["ehlo_ok"] = replies.ehlo_ok("h", "c", ["PIPELINING"])
    for name in ("mail_ok", "rcpt_ok", "lmtp_recipient_ok"):
        entries[name] = getattr(replies, name)("a@b")
    entries["chunk_ok"] = replies.chunk_ok(5)
    entries["too_many_recipients"] = replies.too_many_recipients(5)
    entries["no_arguments"] = replies.no_arguments("RSET")
    entries["help_text"] = replies.help_text(lmtp=True)
    return entries


@pytest.mark.parametrize("name, reply", sorted(_catalogue().items()))
def test_catalogue_is_sane(name, reply):
    # RFC 2034 §3: an enhanced code on every 2xx/4xx/5xx reply except the greeting
    # and the answers to HELO/EHLO; none on 3xx.
    exempt = {"greeting", "helo_ok", "ehlo_ok"}
    if reply.code // 100 == 3 or name in exempt:
        assert reply.enhanced is None
    else:
        assert reply.enhanced is not None and reply.enhanced[0] == reply.code // 100
    assert reply.text.isascii()


def test_catalogue_follows_design_corrections():
    # DESIGN §1.3: the codes where gmta deliberately differs from maddy.
    assert str(replies.MESSAGE_TOO_BIG) == "552 5.3.4 Max message size exceeded"
    assert str(replies.NESTED_MAIL).startswith("503 5.5.1")
    assert str(replies.AUTH_REQUIRED) == "530 5.7.0 Authentication required"


@pytest.mark.parametrize("line, parsed", [
    (b"250 OK", (250, True, "OK")),
    (b"250-PIPELINING", (250, False, "PIPELINING")),
    (b"250", (250, True, "")),
    (b"250-", (250, False, "")),
    (b"550 5.1.1 \xff", (550, True, "5.1.1 \ufffd")),
])
def test_parse_reply_line(line, parsed):
    assert parse_reply_line(line) == parsed


@pytest.mark.parametrize("line", [b"", b"25", b"2500 x", b"650 x", b"abc", b"250x"])
def test_malformed_reply_lines_are_temporary_errors(line):
    with pytest.raises(SMTPError) as caught:
        parse_reply_line(line)
    assert caught.value.temporary


def test_parser_collects_multi_line_replies():
    parser = ReplyParser()
    assert parser.feed_line(b"250-mx.example Hello") is None
    assert parser.feed_line(b"250-PIPELINING") is None
    reply = parser.feed_line(b"250 SIZE 100")
    assert reply == Reply(250, None, "mx.example Hello\nPIPELINING\nSIZE 100")
    # The parser is ready for the next reply.
    assert parser.feed_line(b"221 2.0.0 Bye") == Reply(221, (2, 0, 0), "Bye")


def test_parser_takes_enhanced_codes_off_every_line():
    parser = ReplyParser()
    parser.feed_line(b"550-5.7.1 first")
    assert parser.feed_line(b"550 5.7.1 second") == Reply(550, (5, 7, 1), "first\nsecond")


@pytest.mark.parametrize("lines, expected", [
    ([b"250 5.0.0 class does not match"], Reply(250, None, "5.0.0 class does not match")),
    ([b"354 3.0.0 no codes on 3xx"], Reply(354, None, "3.0.0 no codes on 3xx")),
    ([b"250 2.0.0"], Reply(250, (2, 0, 0), "")),
    ([b"250-2.0.0 a", b"250 b"], Reply(250, (2, 0, 0), "a\nb")),
])
def test_parser_enhanced_code_edge_cases(lines, expected):
    parser = ReplyParser()
    for line in lines[:-1]:
        parser.feed_line(line)
    assert parser.feed_line(lines[-1]) == expected


def test_parser_refuses_mixed_codes():
    parser = ReplyParser()
    parser.feed_line(b"250-a")
    with pytest.raises(SMTPError):
        parser.feed_line(b"251 b")
