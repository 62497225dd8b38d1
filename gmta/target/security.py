"""Security levels of outbound delivery, and the hook the ``mx_auth`` policies plug into.

``target.remote`` measures two things about every connection it makes
(maddy's "Security levels", target-remote.md):

- the **MX level**: how sure we are that the MX host really serves the
  recipient domain — ``none`` < ``mtasts`` (the MX matches the domain's
  MTA-STS policy, RFC 8461 §4.1) < ``dnssec`` (the MX answer was DNSSEC-signed);
- the **TLS level**: how the session is protected — ``none`` (plaintext) <
  ``encrypted`` (TLS, certificate not verified) < ``authenticated`` (the
  certificate verified for the MX name, or DANE matched, RFC 7672 §3).

The remote target computes the TLS level from the handshake and leaves the MX
level at ``none``; raising it (MTA-STS, DNSSEC), raising the TLS level (DANE)
and refusing connections below a minimum (local_policy) is the policies' job.
They implement :class:`Policy`; the target calls them at three points, as
maddy does (internal/target/remote/policy.go):

=====================  =================================  ============================
when                   call                                may
=====================  =================================  ============================
per message            ``Policy.start(meta)``              return a :class:`DeliveryPolicy`
per recipient domain   ``prepare_domain(domain)``          fetch (MTA-STS policy); raise
per MX host            ``check_mx(mx, level)``             raise the level; raise SMTPError
                                                           to skip this MX
per connection         ``check_conn(facts)``               raise the TLS level; raise
                                                           SMTPError to refuse the MX
end of message         ``close()``                         release what ``start`` took
=====================  =================================  ============================

The policies are ``gmta/mxauth``'s: the ``mx_auth`` module's instances provide
:class:`Policy`; without ``mx_auth`` :data:`NO_POLICY` is used, which changes
nothing. The level enums defined here are the only ones: ``gmta.mxauth`` (below
this layer in DESIGN §3) uses them too, so levels pass both ways unconverted.
Everything here is pure: no I/O, so the levels and the hook are tested without
a network.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from gmta.delivery import MessageMeta
    from gmta.net.client import TLSInfo
    from gmta.net.mx import MXHost, MXList


class _Ladder(enum.IntEnum):
    """A security level: compared with ``<`` and ``max()``, shown as its configuration word."""

    @property
    def word(self) -> str:
        """The configuration word, such as ``mtasts`` or ``encrypted``."""
        return self.name.lower()

    def __str__(self) -> str:   # logs, texts and DSNs show the word, not the number
        return self.word


class MXLevel(_Ladder):
    """How authentic the MX is; compare with ``<``."""

    NONE = 0
    MTASTS = 1
    DNSSEC = 2


class TLSLevel(_Ladder):
    """How protected the connection is; compare with ``<``."""

    NONE = 0
    ENCRYPTED = 1
    AUTHENTICATED = 2


def parse_level(enum_type, text: str):
    """``mtasts`` → ``MXLevel.MTASTS`` (for the policies' config readers)."""
    try:
        return enum_type[text.upper()]
    except KeyError:
        choices = ", ".join(str(level) for level in enum_type)
        raise ValueError(f"unknown level {text!r}: expected one of {choices}") from None


@dataclass(frozen=True)
class MXCandidate:
    """An MX host about to be tried for a recipient domain."""

    domain: str
    host: "MXHost"
    #: The whole MX answer: ``mx_list.authenticated`` is the DNSSEC fact
    #: (AD flag from a loopback resolver) the dnssec policy turns into a level.
    mx_list: "MXList"

    @property
    def name(self) -> str:
        return self.host.name


@dataclass(frozen=True)
class ConnectionFacts:
    """What is known about an established, greeted connection to an MX."""

    domain: str
    mx: str
    address: str
    port: int
    mx_level: MXLevel
    #: As measured: none, encrypted (verification failed or was skipped),
    #: authenticated (verified against the trusted roots for the MX name).
    tls_level: TLSLevel
    tls: "TLSInfo | None"
    #: Why TLS is not up although the server offered STARTTLS (for error texts).
    tls_error: str | None
    #: The server advertised REQUIRETLS (RFC 8689 §4.1).
    requiretls_offered: bool
    #: Every certificate the server sent (DER, leaf first, verified or not):
    #: DANE-TA matches its trust anchor among them (RFC 7672 §3.1.2).
    peer_chain: tuple[bytes, ...] = ()

    @property
    def peer_certificate(self) -> bytes | None:
        """The server's certificate (DER) when TLS is up: the first of ``peer_chain``."""
        return self.peer_chain[0] if self.peer_chain else None


class DeliveryPolicy(Protocol):
    """The policies' view of one message (see the module docstring for when each is called)."""

    def prepare_domain(self, domain: str) -> None:
        """Get ready for *domain* (fetch what the checks need); may raise SMTPError."""

    def check_mx(self, mx: MXCandidate, level: MXLevel) -> MXLevel:
        """The MX level of *mx* given the level so far; raise SMTPError to skip it."""

    def check_conn(self, facts: ConnectionFacts) -> TLSLevel:
        """The TLS level of the connection; raise SMTPError to refuse this MX."""

    def close(self) -> None:
        """The message is done."""


class Policy(Protocol):
    """What an ``mx_auth`` instance provides."""

    def start(self, meta: "MessageMeta") -> DeliveryPolicy:
        """The policies for one message."""


class _NoDeliveryPolicy:
    """No policies: the levels stay as measured, nothing is refused."""

    def prepare_domain(self, domain: str) -> None:
        return None

    def check_mx(self, mx: MXCandidate, level: MXLevel) -> MXLevel:
        return level

    def check_conn(self, facts: ConnectionFacts) -> TLSLevel:
        return facts.tls_level

    def close(self) -> None:
        return None


class NoPolicy:
    """The policy of a ``target.remote`` without ``mx_auth``, and of a message whose
    ``TLS-Required: No`` header turns the policies off (RFC 8689 §5)."""

    _delivery = _NoDeliveryPolicy()

    def start(self, meta: "MessageMeta") -> DeliveryPolicy:
        return self._delivery


NO_POLICY = NoPolicy()
