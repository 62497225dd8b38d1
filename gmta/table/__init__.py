"""Tables: string keys to lists of string values (maddy's ``table.*`` modules).

Every table module provides ``lookup_multi(key) -> list[str]`` (no values: the
key is absent) and ``lookup(key) -> str | None`` (the first value, or None).
Tables whose entries can be listed also have ``keys()``; tables that can be
edited (``table.file``, for ``gmta creds``) also have ``set()`` and ``remove()``.

Lookups are cheap and never block the gevent hub for long: a table that
reads a file does so when the configuration is loaded, and re-reads it in
the threadpool.
"""

from __future__ import annotations

import unicodedata
from typing import ClassVar

from gmta.config.module import Module
from gmta.errors import GmtaError, SMTPError
from gmta.proto.grammar import normalize_domain


class TableError(GmtaError):
    """An edit of a table that cannot be done (see the subclasses)."""


class KeyExistsError(TableError):
    """``set(..., replace=False)`` found the key already present."""


class KeyNotFoundError(TableError):
    """``set(..., create=False)`` or ``remove()`` did not find the key."""


def fold_key(key: str) -> str:
    """The case-insensitive form of a key: NFC, lower case, and an address's domain as U-label.

    ``Alice@XN--Bcher-kva.Example`` and ``alice@bücher.example`` fold to the same
    key. A key that is not an address is only lower-cased and NFC-normalised.
    """
    text = unicodedata.normalize("NFC", key).lower()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        return text
    try:
        return f"{local}@{normalize_domain(domain)}"
    except (SMTPError, UnicodeError, ValueError):
        return text


class Table(Module):
    """Base class of table modules: ``lookup`` from ``lookup_multi``."""

    kinds: ClassVar[frozenset[str]] = frozenset({"table"})

    def lookup_multi(self, key: str) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def lookup(self, key: str) -> str | None:
        """The first value of *key*, or None when the key is absent."""
        values = self.lookup_multi(key)
        return values[0] if values else None
