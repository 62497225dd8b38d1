"""Authentication providers (maddy's ``auth.*`` modules) for SMTP AUTH.

An auth module has kinds ``{"auth"}`` and provides::

    authenticate(username, password, *, session=None) -> bool

It returns False for wrong credentials (the endpoint answers ``535 5.7.8``)
and raises ``SMTPError(454, (4, 7, 0), "Temporary authentication failure")``
when it cannot tell (RFC 4954 §6). It runs expensive work (password hashing)
in gevent's threadpool, logs every failure as an ``auth_failed`` event with the
user name, and never logs a password.
"""

from __future__ import annotations

import unicodedata

from gmta.errors import GmtaError, SMTPError
from gmta.proto.grammar import normalize_domain


def temporary_failure() -> SMTPError:
    """The reply for an authentication that failed for an internal reason (RFC 4954 §6)."""
    return SMTPError(454, (4, 7, 0), "Temporary authentication failure")


class CredentialsError(GmtaError):
    """A user-management request that cannot be done (not an editable table, empty password)."""


def normalize_username(name: str) -> str:
    """The form a user name is stored and looked up in: maddy's ``auth_map_normalize auto``.

    NFC and lower case (PRECIS UsernameCaseMapped); for an address, the domain
    also becomes its U-label (``alice@XN--BCHER-KVA.example`` is
    ``alice@bücher.example``). Raises ValueError for a name that is empty, has
    spaces or control characters, or cannot be a table key (``:``, leading ``#``).
    """
    if not name:
        raise ValueError("the user name is empty")
    if any(c.isspace() or unicodedata.category(c).startswith("C") for c in name):
        raise ValueError("a user name cannot contain spaces or control characters")
    text = unicodedata.normalize("NFC", name).lower()
    if ":" in text or text.startswith("#"):
        raise ValueError("a user name cannot contain ':' or start with '#'")
    local, at, domain = text.rpartition("@")
    if at and local and domain:
        try:
            text = f"{local}@{normalize_domain(domain)}"
        except SMTPError:
            pass              # not a valid domain: the name is kept as a plain name
    return text
