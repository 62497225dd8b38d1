"""Drive a ServerConnection the way the gevent driver will, with no sockets.

``Session.send(bytes)`` feeds the bytes, answers every event that waits for an answer
(accept, unless ``decide`` returns an error), and returns what the server wrote.
"""

from __future__ import annotations

from collections.abc import Callable

from gmta.errors import SMTPError
from gmta.proto import (
    CLOSED, NEED_DATA, BodyChunk, Event, ReplyParser, ServerConnection, StartTLS)

HOST = "mx.example.org"


class Session:
    def __init__(self, decide: Callable[[Event], SMTPError | None] | None = None, **options):
        self.conn = ServerConnection(HOST, **options)
        self.decide = decide
        self.events: list[Event] = []
        self.closed = False

    def send(self, data: bytes = b"") -> bytes:
        """Feed ``data``, play the driver until NEED_DATA or CLOSED, return the output."""
        self.conn.receive_data(data)
        output = bytearray()
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA or event is CLOSED:
                self.closed = event is CLOSED
                output += self.conn.data_to_send()
                return bytes(output)
            self.events.append(event)
            if event.needs_answer:
                error = self.decide(event) if self.decide else None
                if error is None:
                    self.conn.accept()
                else:
                    self.conn.reject(error)
            output += self.conn.data_to_send()
            if isinstance(event, StartTLS):
                self.conn.tls_established()

    def say(self, data: bytes = b"") -> list[str]:
        """Like send(), but return the replies as short strings: "250 2.0.0" or "354"."""
        return summary(self.send(data))

    def of_type(self, kind: type) -> list[Event]:
        return [event for event in self.events if isinstance(event, kind)]

    def body(self) -> bytes:
        return b"".join(event.data for event in self.of_type(BodyChunk))


def parse_output(output: bytes) -> list:
    """Every reply in the server's output, checking each line is well formed."""
    parser = ReplyParser()
    found = []
    lines = output.split(b"\r\n")
    assert lines[-1] == b"", f"output does not end with CRLF: {output[-40:]!r}"
    for line in lines[:-1]:
        reply = parser.feed_line(line)
        if reply is not None:
            found.append(reply)
    return found


def summary(output: bytes) -> list[str]:
    result = []
    for reply in parse_output(output):
        if reply.enhanced is None:
            result.append(str(reply.code))
        else:
            result.append(f"{reply.code} {'.'.join(map(str, reply.enhanced))}")
    return result


def greeted(command: bytes = b"EHLO client.example\r\n", **options) -> Session:
    """A session past the banner and the greeting."""
    session = Session(**options)
    session.send()
    session.send(command)
    return session


def in_data(**options) -> Session:
    """A session that has just been told 354."""
    session = greeted(**options)
    assert session.say(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n") == [
        "250 2.0.0", "250 2.0.0", "354"]
    return session
