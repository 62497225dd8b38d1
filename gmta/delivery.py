"""The interface that joins receiving, routing, queueing and delivering (DESIGN §3).

A *delivery target* starts one :class:`Delivery` per message. The endpoint
(or the queue, on retry) then adds recipients one by one, hands over the
body, and either commits or aborts. Every failure is an ``SMTPError``;
anything else escaping a target is treated as temporary by the caller.

The pipeline is a target, the queue is a target that wraps a target, and
remote, smtp, lmtp, maildir and dummy are targets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from gmta.errors import SMTPError

if TYPE_CHECKING:  # pragma: no cover
    from gmta.buffer import Buffer


@dataclass
class MessageMeta:
    """What is known about a message besides its envelope and bytes."""

    id: str
    #: ESMTP parameters of MAIL FROM (SIZE, BODY, SMTPUTF8, REQUIRETLS, RET, ENVID...).
    mail_params: dict = field(default_factory=dict)
    #: Connection facts (peer address, EHLO name, TLS, authenticated user...).
    conn: dict = field(default_factory=dict)
    #: Set by checks: targets that deliver to the outside refuse such messages.
    quarantine: bool = False
    #: final recipient -> recipient as first received (before alias rewriting).
    original_rcpts: dict = field(default_factory=dict)
    #: The header has "TLS-Required: No" (RFC 8689 §5). Set by whoever knows the
    #: header before delivery starts (the queue, on each attempt): target.remote
    #: then delivers without its mx_auth policies (requiretls_override).
    tls_required_no: bool = False
    #: The caller adds every recipient before ``body()`` and takes each one's
    #: result from ``body()`` (PartialDeliveryError), as the queue does. A
    #: forwarding target may then answer ``add_rcpt`` from local checks only and
    #: send MAIL, the RCPTs and DATA in one write (RFC 2920 §3.1); it leaves the
    #: ``delivered`` log line to the caller, giving what the server said in its
    #: delivery's ``receipts`` (recipient -> log fields).
    batch: bool = False
    #: What the client authenticated with, for target.smtp's ``auth forward``.
    #: Kept apart from ``conn`` because it is a secret: a queue persists
    #: ``conn`` and never this, so forwarding works on synchronous paths only.
    credentials: "ClientCredentials | None" = field(default=None, repr=False)


@dataclass(frozen=True)
class ClientCredentials:
    """What a client authenticated with (``MessageMeta.credentials``).

    The password never appears in a repr or str (logs are data, DESIGN §4.7).
    """

    username: str
    password: str = field(repr=False)

    def __str__(self) -> str:
        return f"<credentials of {self.username}>"


_TLS_REQUIRED_NO = re.compile(rb"(?im)^TLS-Required[ \t]*:[ \t]*No[ \t]*\r?$")


def tls_required_no(header: bytes) -> bool:
    """Whether the header has a ``TLS-Required: No`` field (RFC 8689 §5).

    The queue sets ``MessageMeta.tls_required_no`` from it before each
    attempt, so that target.remote knows it before it chooses a connection.
    """
    return _TLS_REQUIRED_NO.search(header) is not None


class PartialDeliveryError(SMTPError):
    """The outcome of ``body()`` or ``commit()`` differs between recipients.

    Targets that learn one result per recipient (LMTP, a queue retrying a
    message) raise this instead of a single ``SMTPError``. ``results`` maps
    every recipient of the delivery to ``None`` (delivered: never send it
    again, DESIGN §4.4) or the ``SMTPError`` it got. The exception's own
    code is the one a caller that can only give a single answer should use:
    temporary when any recipient failed temporarily (a retry then skips the
    delivered ones), else permanent.
    """

    def __init__(self, results: dict[str, SMTPError | None]):
        failures = [error for error in results.values() if error is not None]
        if not failures:
            raise ValueError("PartialDeliveryError needs at least one failed recipient")
        summary = next((e for e in failures if e.temporary), failures[0])
        delivered = len(results) - len(failures)
        super().__init__(summary.code, summary.enhanced,
                         f"{summary.text} ({len(failures)} of {len(results)} recipients failed,"
                         f" {delivered} delivered)")
        self.results = dict(results)

    @property
    def delivered(self) -> list[str]:
        return [rcpt for rcpt, error in self.results.items() if error is None]

    @property
    def failed(self) -> dict[str, SMTPError]:
        return {rcpt: error for rcpt, error in self.results.items() if error is not None}


def raise_for(results: dict[str, SMTPError | None]) -> None:
    """Nothing when every recipient was delivered; else the one error they share,
    or PartialDeliveryError."""
    errors = set(results.values())
    if errors == {None}:
        return
    if len(errors) == 1:
        raise errors.pop()   # every recipient failed the same way
    raise PartialDeliveryError(results)


class Delivery(Protocol):
    def add_rcpt(self, rcpt: str, params: dict | None = None) -> None:
        """Accept *rcpt* for this message or raise SMTPError."""

    def body(self, header: bytes, body: "Buffer") -> None:
        """Take the message: *header* (up to and including the empty line) and the body.

        ``body.open()`` may be called as often as the target needs. Raises
        ``SMTPError`` for all recipients, or ``PartialDeliveryError`` when the
        result differs per recipient.
        """

    def commit(self) -> None:
        """Make the delivery final; after this returns the target owns the message."""

    def abort(self) -> None:
        """Forget the message; safe to call at any point, including after a failure."""


class Target(Protocol):
    def start_delivery(self, meta: MessageMeta, mail_from: str) -> Delivery:
        """Begin a message from *mail_from* (``""`` for the null sender)."""
