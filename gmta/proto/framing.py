"""Message content framing: DATA dot-unstuffing and the limits on the content.

Both work a piece at a time, so a message is never held whole in memory.
"""

from __future__ import annotations

import re

from gmta.errors import SMTPError
from gmta.proto import replies

_END_OF_DATA = b".\r\n"


class LineTooLong(Exception):
    """A DATA line is longer than the limit; the session must end."""


class DataDecoder:
    """Turns the bytes that follow DATA into message content.

    RFC 5321 §4.5.2: a line that starts with "." loses that dot, and a line that is
    only "." ends the data. A line ends with CRLF and nothing else (§2.3.8): a bare
    LF or CR is content, so ``\\n.\\n``, ``\\r.\\r`` and ``\\n.\\r\\n`` never end the
    data. That is the whole defence against SMTP smuggling.
    """

    def __init__(self, max_line_length: int):
        # A line may hold max_line_length bytes plus the CR of its CRLF. Lengths are
        # counted between LFs (as go-smtp does), so a body written with bare-LF line
        # ends is not taken for one endless line.
        self._longest_line = max_line_length + 1
        self._line_length = 0  # bytes since the last LF
        # The DATA command's own CRLF starts the first line, so a body that is just
        # ".\r\n" is an empty message.
        self._at_line_start = True
        self.finished = False

    def decode(self, data: bytes | bytearray) -> tuple[bytes, int]:
        """Decode a prefix of ``data``; return (content, number of bytes consumed).

        At most two bytes stay unconsumed (a "\\r" that may start a CRLF, or "." /
        ".\\r" that may start the end marker); offer them again with what follows.
        ``finished`` becomes true once the end marker has been consumed.
        Raises LineTooLong.
        """
        pieces = []
        position = 0
        end = len(data)
        while position < end and not self.finished:
            if self._at_line_start:
                head = bytes(data[position:position + 3])
                if head == _END_OF_DATA:
                    self._count(head)
                    position += 3
                    self.finished = True
                    break
                if _END_OF_DATA.startswith(head):
                    break  # "." or ".\r": the end marker or a stuffed dot, can't tell yet
                self._at_line_start = False
                if head.startswith(b"."):
                    self._count(b".")  # the stuffed dot was sent, so it counts
                    position += 1
                    continue
            # Only lines that start with a dot need attention; the rest pass through.
            found = data.find(b"\r\n.", position)
            if found != -1:
                stop = found + 2
                self._at_line_start = True
            elif data.endswith(b"\r\n", position):
                stop = end
                self._at_line_start = True
            elif data.endswith(b"\r", position):
                stop = end - 1  # keep it: it may be the CR of a CRLF before a dot
                if stop == position:
                    break
            else:
                stop = end
            piece = bytes(data[position:stop])
            self._count(piece)
            pieces.append(piece)
            position = stop
        return b"".join(pieces), position

    def _count(self, raw: bytes) -> None:
        lines = raw.split(b"\n")
        longest = self._line_length + len(lines[0])
        if len(lines) > 1:
            longest = max(longest, *map(len, lines[1:]))
            self._line_length = len(lines[-1])
        else:
            self._line_length = longest
        if longest > self._longest_line:
            raise LineTooLong()


class DataEncoder:
    """Turns message content into the bytes a client sends after DATA (or in BDAT).

    RFC 5321 §2.3.8 allows only CRLF line ends on the wire, so a bare LF becomes
    CRLF (a lone CR is content and passes, as go-smtp's DotWriter does).
    With ``dot_stuffing`` (DATA, RFC 5321 §4.5.2) a line starting with "." gets a
    second one; BDAT (RFC 3030 §2) sends the content as it is. Works a piece at a
    time: a CR at the end of a piece is held until the next one shows whether an
    LF follows.
    """

    def __init__(self, *, dot_stuffing: bool = True):
        self.dot_stuffing = dot_stuffing
        self._at_line_start = True
        self._held_cr = False
        self.finished = False

    def encode(self, content: bytes) -> bytes:
        if self.finished:
            raise ValueError("encode() after finish()")
        if self._held_cr:
            content = b"\r" + content
            self._held_cr = False
        if content.endswith(b"\r"):
            content = content[:-1]
            self._held_cr = True
        if not content:
            return b""
        # CRLF -> LF -> CRLF turns bare LFs into CRLFs and leaves lone CRs alone.
        wire = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self.dot_stuffing:
            if self._at_line_start and wire.startswith(b"."):
                wire = b"." + wire
            wire = wire.replace(b"\r\n.", b"\r\n..")
        self._at_line_start = wire.endswith(b"\r\n")
        return wire

    def finish(self) -> bytes:
        """The rest: a held CR, a CRLF if the content did not end a line, and the end
        marker ".CRLF" when dot-stuffing (RFC 5321 §4.1.1.4)."""
        self.finished = True
        tail = b""
        if self._held_cr:
            # A CR that ends the content is not a line end; CRLF then ends the line.
            tail = b"\r"
            self._at_line_start = False
        if not self._at_line_start:
            tail += b"\r\n"
        if self.dot_stuffing:
            tail += _END_OF_DATA
        return tail


# The header ends at the first empty line; bare LFs count as line ends here so a
# message written with bare LFs is not taken for one huge header.
_EMPTY_LINE = re.compile(rb"\n\r?\n")


class BodyLimits:
    """Counts message content (after unstuffing) against the size limits.

    The size is every content byte (RFC 1870 §5: CRLFs included, the end marker and
    stuffed dots not). The header is the bytes before the first empty line; a
    message without one is all header. ``error`` holds the first limit broken.
    """

    def __init__(self, max_size: int, max_header_size: int):
        self.max_size = max_size
        self.max_header_size = max_header_size
        self.size = 0
        self.error: SMTPError | None = None
        self._header_size: int | None = None  # known once the empty line is seen
        # Read the stream as if a line had just ended, so a message that starts with
        # an empty line has an empty header.
        self._tail = b"\n"

    def feed(self, content: bytes) -> None:
        if self.error is not None:
            return
        start = self.size
        self.size += len(content)
        if self._header_size is None:
            window = self._tail + content
            found = _EMPTY_LINE.search(window)
            if found:
                self._header_size = start - len(self._tail) + found.start() + 1
            else:
                self._tail = window[-2:]
        if self.size > self.max_size:
            self.error = replies.MESSAGE_TOO_BIG.to_error()
        elif self._header_bytes_seen() > self.max_header_size:
            self.error = replies.HEADER_TOO_BIG.to_error()

    def finish(self) -> SMTPError | None:
        """The first limit broken, now that the content is complete."""
        if self.error is None and self._header_size is None and self.size > self.max_header_size:
            self.error = replies.HEADER_TOO_BIG.to_error()
        return self.error

    def _header_bytes_seen(self) -> int:
        if self._header_size is not None:
            return self._header_size
        # A trailing "\n\r" may be the start of the empty line: its CR is not header.
        return self.size - 1 if self._tail.endswith(b"\n\r") else self.size
