"""What the server machine reports to its driver: one frozen dataclass per event.

``ServerConnection.next_event()`` returns one of these, or one of the two sentinels
``NEED_DATA`` (feed more bytes) and ``CLOSED`` (the session is over).

Events whose ``needs_answer`` is true wait for the driver's decision (``accept()``,
``reject()``, or ``reply_per_recipient()`` for LMTP); the machine answers the others
itself and reports them so the driver can act and log.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar

from gmta.errors import SMTPError
from gmta.proto.replies import Reply


class _Sentinel:
    def __init__(self, name: str):
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")
CLOSED = _Sentinel("CLOSED")


@dataclass(frozen=True)
class Event:
    needs_answer: ClassVar[bool] = False


# --- Events the driver answers. ---------------------------------------------------

@dataclass(frozen=True)
class Connected(Event):
    """A client connected: ``accept()`` sends the 220 banner, ``reject()`` closes
    (RFC 5321 §3.1 allows 554, §3.8 allows 421 at any time)."""
    needs_answer: ClassVar[bool] = True


@dataclass(frozen=True)
class Helo(Event):
    name: str
    needs_answer: ClassVar[bool] = True


@dataclass(frozen=True)
class Ehlo(Event):
    name: str
    needs_answer: ClassVar[bool] = True


@dataclass(frozen=True)
class Lhlo(Event):
    name: str
    needs_answer: ClassVar[bool] = True


@dataclass(frozen=True)
class Auth(Event):
    """Credentials from AUTH PLAIN (RFC 4616) or LOGIN; the driver checks them."""
    mechanism: str
    username: str
    password: str = field(repr=False)  # never in logs (aiosmtpd TestSanitize)
    authorization_id: str = ""
    needs_answer: ClassVar[bool] = True


class BodyType(enum.StrEnum):
    """The MAIL BODY= parameter (RFC 6152 §2, RFC 3030 §3)."""
    SEVEN_BIT = "7BIT"
    EIGHT_BIT_MIME = "8BITMIME"
    BINARY_MIME = "BINARYMIME"


class DsnReturn(enum.StrEnum):
    """The MAIL RET= parameter (RFC 3461 §4.3)."""
    FULL = "FULL"
    HEADERS = "HDRS"


@dataclass(frozen=True)
class Mail(Event):
    """MAIL FROM; ``address`` is ``""`` for the null reverse path ``<>``."""
    address: str
    size: int | None = None                 # RFC 1870 SIZE=
    body: BodyType | None = None            # RFC 6152 / RFC 3030 BODY=
    smtputf8: bool = False                  # RFC 6531 SMTPUTF8
    requiretls: bool = False                # RFC 8689 REQUIRETLS
    auth: str | None = None                 # RFC 4954 §5 AUTH=, xtext-decoded; "<>" kept
    ret: DsnReturn | None = None            # RFC 3461 §4.3 RET=
    envid: str | None = None                # RFC 3461 §4.4 ENVID=, xtext-decoded
    needs_answer: ClassVar[bool] = True


class Notify(enum.StrEnum):
    """The values of the RCPT NOTIFY= parameter (RFC 3461 §4.1)."""
    NEVER = "NEVER"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DELAY = "DELAY"


@dataclass(frozen=True)
class Rcpt(Event):
    address: str
    notify: frozenset[Notify] | None = None     # RFC 3461 §4.1 NOTIFY=
    orcpt: tuple[str, str] | None = None        # RFC 3461 §4.2 ORCPT=type;address
    needs_answer: ClassVar[bool] = True


@dataclass(frozen=True)
class DataStart(Event):
    """DATA (``chunking`` false: accept() sends 354) or the first BDAT of a message."""
    chunking: bool
    needs_answer: ClassVar[bool] = True


@dataclass(frozen=True)
class MessageEnd(Event):
    """The body is complete.

    ``error`` is set when the body broke a limit (size, header size): the machine has
    then already sent that error, the driver only discards the message. Otherwise
    the driver commits the message and answers.
    """
    error: SMTPError | None = None

    @property
    def needs_answer(self) -> bool:  # type: ignore[override]
        return self.error is None


# --- Events the machine has answered itself. --------------------------------------

@dataclass(frozen=True)
class BodyChunk(Event):
    """Message content, dot-unstuffed (DATA) or as sent (BDAT); at most a bounded size."""
    data: bytes

    def __repr__(self) -> str:
        return f"BodyChunk(<{len(self.data)} bytes>)"


@dataclass(frozen=True)
class StartTLS(Event):
    """The 220 is queued: flush it, do the handshake, then call ``tls_established()``.

    ``discarded_bytes`` counts plaintext the client pipelined after STARTTLS, which
    RFC 3207 §4.2 makes us throw away (the CVE-2011-0411 command injection).
    """
    discarded_bytes: int = 0


@dataclass(frozen=True)
class Rset(Event):
    pass


@dataclass(frozen=True)
class Noop(Event):
    pass


@dataclass(frozen=True)
class Quit(Event):
    pass


@dataclass(frozen=True)
class Vrfy(Event):
    argument: str


@dataclass(frozen=True)
class Help(Event):
    argument: str


@dataclass(frozen=True)
class ProtocolError(Event):
    """The client broke the protocol and the machine answered with ``reply``.

    ``fatal`` means the machine closed the session after that reply.
    """
    reply: Reply
    fatal: bool = False
