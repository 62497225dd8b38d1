"""DATA dot-unstuffing and the body limits (gmta.proto.framing), fed in every way."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gmta.proto.framing import BodyLimits, DataDecoder, LineTooLong


def decode_in_pieces(data: bytes, sizes, max_line_length=1000):
    """Feed ``data`` in pieces like a socket would; return (content, leftover, finished)."""
    decoder = DataDecoder(max_line_length)
    buffer = bytearray()
    content = bytearray()
    position = 0
    for size in sizes:
        buffer += data[position:position + size]
        position += size
        piece, consumed = decoder.decode(buffer)
        content += piece
        del buffer[:consumed]
        if decoder.finished:
            break
    buffer += data[position:]
    while not decoder.finished:
        piece, consumed = decoder.decode(buffer)
        content += piece
        del buffer[:consumed]
        if consumed == 0:
            break
    return bytes(content), bytes(buffer), decoder.finished


@pytest.mark.parametrize("data, content, leftover", [
    (b".\r\n", b"", b""),                                          # empty message
    (b"a\r\n.\r\n", b"a\r\n", b""),
    (b"a\r\n.\r\nQUIT\r\n", b"a\r\n", b"QUIT\r\n"),                  # stops at the marker
    (b"..\r\n.\r\n", b".\r\n", b""),                                # RFC 5321 §4.5.2
    (b"a\r\n..b\r\n...\r\n.\r\n", b"a\r\n.b\r\n..\r\n", b""),
    (b".a\r\n.\r\n", b"a\r\n", b""),
    # A line is ended by CRLF only: none of these end the data (SMTP smuggling).
    (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n", b""),
    (b"a\r.\rb\r\n.\r\n", b"a\r.\rb\r\n", b""),
    (b"a\n.\r\nb\r\n.\r\n", b"a\n.\r\nb\r\n", b""),
    (b"a\r\n.\nb\r\n.\r\n", b"a\r\n\nb\r\n", b""),                   # ".\n" is a stuffed line
    (b"a\r\n. \r\n.\r\n", b"a\r\n \r\n", b""),
])
def test_decoding(data, content, leftover):
    for size in (1, 2, 3, len(data)):
        assert decode_in_pieces(data, [size] * len(data)) == (content, leftover, True)


@pytest.mark.parametrize("data, kept", [
    (b"abc\r", 1),       # the CR may begin the CRLF of a dot line
    (b"abc\r\n.", 1),    # "." may be the end marker
    (b"abc\r\n.\r", 2),
])
def test_holds_back_at_most_two_bytes(data, kept):
    decoder = DataDecoder(1000)
    content, consumed = decoder.decode(data)
    assert len(data) - consumed == kept
    assert not decoder.finished


def test_nothing_to_decode():
    assert DataDecoder(1000).decode(b"") == (b"", 0)


def test_line_length_is_counted_over_pieces():
    decoder = DataDecoder(10)
    decoder.decode(b"x" * 6)
    decoder.decode(b"x" * 5 + b"\r")  # 11 bytes: the CR of the CRLF is allowed for
    with pytest.raises(LineTooLong):
        decoder.decode(b"\r\n" + b"y" * 12)


@pytest.mark.parametrize("data", [
    b"x" * 12 + b"\r\n",
    b"ok\r\n" + b"x" * 12 + b"\r\nok\r\n",
    b"." + b"x" * 11 + b"\r\n",    # the stuffed dot was sent, so it counts
])
def test_too_long_lines(data):
    with pytest.raises(LineTooLong):
        DataDecoder(10).decode(data)


def test_bare_lf_resets_the_line_length():
    decoder = DataDecoder(10)
    content, _ = decoder.decode((b"x" * 10 + b"\n") * 10 + b"\r\n.\r\n")
    assert decoder.finished


def stuff(content: bytes) -> bytes:
    """What a client sends for ``content`` (RFC 5321 §4.5.2), end marker included."""
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


lines = st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\r\n", b"")), max_size=20)


@given(lines, st.lists(st.integers(1, 9), min_size=1, max_size=30))
def test_unstuffing_undoes_stuffing_however_the_bytes_arrive(body_lines, sizes):
    content = b"".join(line + b"\r\n" for line in body_lines)
    data = stuff(content) + b"MAIL FROM:<next@example.com>\r\n"
    assert decode_in_pieces(data, sizes) == (content, b"MAIL FROM:<next@example.com>\r\n", True)


def test_size_limit():
    limits = BodyLimits(max_size=10, max_header_size=100)
    limits.feed(b"x" * 10)
    assert limits.error is None
    limits.feed(b"x")
    assert str(limits.error) == "552 5.3.4 Max message size exceeded"
    limits.feed(b"more")  # counting stops at the first error
    assert limits.size == 11


@pytest.mark.parametrize("pieces, header_size", [
    ([b"\r\nbody"], 0),
    ([b"\r", b"\nbody"], 0),
    ([b"A: b\r\n\r\nbody"], 6),
    ([b"A: b\r\n", b"\r\n", b"body"], 6),
    ([b"A: b\r\n\r", b"\nbody"], 6),
    ([b"A: b\n\nbody"], 5),          # bare LF line ends count for the header
])
def test_header_size_is_the_bytes_before_the_empty_line(pieces, header_size):
    at_limit = BodyLimits(max_size=1000, max_header_size=header_size)
    below = BodyLimits(max_size=1000, max_header_size=header_size - 1) if header_size else None
    for piece in pieces:
        at_limit.feed(piece)
        if below:
            below.feed(piece)
    assert at_limit.finish() is None
    if below:
        assert str(below.finish()) == "552 5.3.4 Message header size exceeds limit"


def test_a_message_without_empty_line_is_all_header():
    limits = BodyLimits(max_size=1000, max_header_size=5)
    limits.feed(b"A: b\r")    # five bytes, and the CR may still start the empty line
    assert limits.error is None
    limits.feed(b"\n")
    assert limits.error is not None


def test_an_unfinished_empty_line_is_not_counted_as_header():
    limits = BodyLimits(max_size=1000, max_header_size=6)
    limits.feed(b"A: b\r\n\r")   # 7 bytes, but the last CR belongs to the empty line
    assert limits.error is None
    assert limits.finish() is not None   # the message ended there: all of it was header
