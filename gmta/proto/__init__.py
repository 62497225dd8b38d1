"""Sans-I/O SMTP and LMTP: bytes in, events out, bytes out (the h11 model).

Nothing here touches a socket, a file, TLS or gevent; the drivers in gmta.net do.
``server`` is the server session machine; ``grammar`` and ``replies`` are the parts
the client machine shares with it.
"""

from gmta.proto.events import (
    CLOSED, NEED_DATA, Auth, BodyChunk, BodyType, Connected, DataStart, DsnReturn, Ehlo,
    Event, Helo, Help, Lhlo, Mail, MessageEnd, Noop, Notify, ProtocolError, Quit, Rcpt,
    Rset, StartTLS, Vrfy)
from gmta.proto.proxy import ProxyHeader, ProxyHeaderParser, ProxyProtocolError, ProxySSL, trusted
from gmta.proto.replies import Reply, ReplyParser
from gmta.proto.server import LocalProtocolError, ServerConnection, State

__all__ = [
    "CLOSED", "NEED_DATA", "Auth", "BodyChunk", "BodyType", "Connected", "DataStart",
    "DsnReturn", "Ehlo", "Event", "Helo", "Help", "Lhlo", "LocalProtocolError", "Mail",
    "MessageEnd", "Noop", "Notify", "ProtocolError", "ProxyHeader", "ProxyHeaderParser",
    "ProxyProtocolError", "ProxySSL", "Quit", "Rcpt", "Reply", "ReplyParser", "Rset",
    "ServerConnection", "StartTLS", "State", "Vrfy", "trusted",
]
