"""Source and destination rules: which block an address selects (maddy-behaviour §2.2).

A rule is a domain (``example.org``), a full address (``alice@example.org``)
or the bare ``postmaster``. Rules and addresses are compared in one form,
:func:`match_key`: NFC, lower case, domain as U-label, so ``Alice@XN--Bcher-kva.Example``
and ``alice@bücher.example`` select the same block.

The order is maddy's: the ``*_in`` tables in configuration order (first hit
wins), then an exact address rule, then a domain rule, then the default
block. The null sender ``<>`` matches no rule, only the default.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import gmta.log
from gmta.config.parser import Node
from gmta.errors import SMTPError
from gmta.proto.grammar import normalize_domain, split_address

log = gmta.log.get("pipeline")

Block = TypeVar("Block")


def _fold(text: str) -> str:
    # NFC on both sides of lower(): lower-casing can leave a composable pair.
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).lower())


def match_key(address: str) -> str:
    """The form in which addresses and rules are compared (case-insensitive, NFC, U-label)."""
    local, domain = split_address(address)
    if not domain:
        return _fold(local)
    try:
        domain = normalize_domain(domain)
    except SMTPError:
        domain = _fold(domain)    # not a valid domain: it can only match itself
    return f"{_fold(local)}@{domain}"


def parse_rule(word: str, node: Node) -> str:
    """One rule of ``source``/``destination`` as its match key; a bad rule is a ConfigError."""
    local, at, domain = word.rpartition("@")
    if at and not local:
        raise node.error(f"invalid rule {word!r}: the local part is empty",
                         hint="write a domain (example.org) or an address (user@example.org)")
    if not at and word.lower() == "postmaster":
        return "postmaster"
    name = domain if at else word
    try:
        if not name or name.endswith(".") or name.startswith("["):
            raise SMTPError(501, None, "")
        normalized = normalize_domain(name)
    except SMTPError:
        raise node.error(f"invalid rule {word!r}: {name!r} is not a domain name",
                         hint="write a domain (example.org) or an address "
                              "(user@example.org)") from None
    return match_key(word) if at else normalized


@dataclass
class Match(Generic[Block]):
    """The block an address selected, and why (for logs and ``gmta route``)."""

    block: Block
    #: ``table NAME``, ``address RULE``, ``domain RULE`` or ``default``.
    how: str


@dataclass
class Rules(Generic[Block]):
    """The rules of one level (sources of a pipeline, destinations of a source block)."""

    #: ``source_in``/``destination_in``: (table, block, where), in configuration order.
    tables: list[tuple[object, Block, Node]] = field(default_factory=list)
    #: match key of a rule → block.
    by_key: dict[str, Block] = field(default_factory=dict)
    default: Block | None = None

    def add(self, key: str, block: Block) -> bool:
        """Add a rule; False if the key already had one (the first stays, as in maddy)."""
        if key in self.by_key:
            return False
        self.by_key[key] = block
        return True

    def select(self, address: str, *, what: str = "address") -> Match[Block]:
        # With no rules (a bare deliver_to) every address takes the default,
        # and its match key would be computed for nothing.
        if address and (self.tables or self.by_key):
            key = match_key(address)
            for table, block, where in self.tables:
                try:
                    hit = table.lookup(key) is not None
                except Exception as e:  # a table that fails is skipped, as in maddy
                    log.error("table_lookup_failed", table=getattr(table, "instance_name", table),
                              key=key, error=repr(e), at=where.location)
                    continue
                if hit:
                    return Match(block, f"table {table.instance_name} ({where.location})")
            block = self.by_key.get(key)
            if block is not None:
                return Match(block, f"address rule {key}")
            _, domain = split_address(key)
            block = self.by_key.get(domain) if domain else None
            if block is not None:
                return Match(block, f"domain rule {domain}")
        return Match(self.default, "default")
