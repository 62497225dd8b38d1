"""Command line limits: the input buffer is capped however the bytes arrive.

slimta buffered 4 MiB without a newline (peers-and-style §1.6); maddy answers an
over-long line with 500 5.4.0 and closes.
"""

import pytest

from gmta.proto import ProtocolError
from proto_helpers import Session, greeted


def test_four_mebibytes_without_newline_in_one_write():
    session = greeted()
    assert session.say(b"x" * (4 * 1024 * 1024)) == ["500 5.4.0"]
    assert session.closed
    assert session.conn.buffered_bytes == 0


def test_long_line_arriving_slowly_is_cut_off_at_the_limit():
    session = greeted(max_line_length=1000)
    sent = 0
    while not session.closed:
        session.send(b"x" * 100)
        sent += 100
        assert session.conn.buffered_bytes <= 1001
    assert sent <= 1100
    assert session.events[-1] == ProtocolError(session.events[-1].reply, fatal=True)
    assert str(session.events[-1].reply) == "500 5.4.0 Too long line, closing connection"


@pytest.mark.parametrize("length, closes", [(1000, False), (1001, True)])
def test_line_limit_excludes_the_crlf(length, closes):
    session = greeted(max_line_length=1000)
    session.send(b"NOOP " + b"x" * (length - 5) + b"\r\n")
    assert session.closed == closes


def test_a_full_line_may_wait_for_its_lf():
    session = greeted(max_line_length=1000)
    assert session.say(b"NOOP " + b"x" * 995 + b"\r") == []
    assert session.say(b"\n") == ["250 2.0.0"]


def test_too_long_line_before_the_banner_is_accepted():
    session = Session(max_line_length=1000)
    session.conn.receive_data(b"x" * 5000)   # a client talking before the banner
    assert session.say() == ["220", "500 5.4.0"]
