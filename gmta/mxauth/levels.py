"""Security levels of an MX host and of a connection, and the refusal every policy gives.

maddy's two ladders (maddy-behaviour §2.5, the "Security levels" page):

- **MX level** — how sure we are that the MX host is the recipient domain's
  real mail server: ``none`` < ``mtasts`` (an MTA-STS policy lists it) <
  ``dnssec`` (the MX answer was DNSSEC-validated).
- **TLS level** — how the connection is protected: ``none`` (plaintext) <
  ``encrypted`` (TLS, server not authenticated) < ``authenticated`` (TLS with a
  certificate verified by PKIX for the MX host name, or matched by DANE).

Both are ``IntEnum``s, so ``max()`` and ``<`` compare them as the ladders do.
"""

from __future__ import annotations

import enum

from gmta.errors import SMTPError


class MXLevel(enum.IntEnum):
    NONE = 0
    MTASTS = 1
    DNSSEC = 2

    @property
    def word(self) -> str:
        """The configuration word: ``none``, ``mtasts``, ``dnssec``."""
        return self.name.lower()

    def __str__(self) -> str:   # logs and texts show the word, not the number
        return self.word

    @classmethod
    def from_word(cls, word: str) -> "MXLevel":
        return cls[word.upper()]


class TLSLevel(enum.IntEnum):
    NONE = 0
    ENCRYPTED = 1
    AUTHENTICATED = 2

    @property
    def word(self) -> str:
        """The configuration word: ``none``, ``encrypted``, ``authenticated``."""
        return self.name.lower()

    def __str__(self) -> str:
        return self.word

    @classmethod
    def from_word(cls, word: str) -> "TLSLevel":
        return cls[word.upper()]


def refusal(policy: str, code: int, enhanced: tuple[int, int, int], summary: str,
            detail: str, **misc) -> SMTPError:
    """The error a policy raises to refuse an MX or a connection.

    The text always names the policy and says why, so an operator reading a
    DSN or a log line knows what to change (maddy issue #717: a refusal that
    did not say which policy refused looked like ``min_tls_level none`` being
    ignored). ``summary`` is maddy's wording where maddy has one.
    """
    return SMTPError(code, enhanced, f"{summary} ({policy}): {detail}",
                     misc={"policy": policy, **misc})
