"""The modifier interface: modules that rewrite a message (``modify { }``).

A modifier module (``kinds = {"modify"}``) makes one :class:`ModifierState`
per message. The pipeline asks it, in order:

* ``rewrite_sender(mail_from)`` → the new sender (once, at the sender stage);
* ``rewrite_rcpt(rcpt)`` → the list of addresses that replace *rcpt* (1:N;
  a list with *rcpt* alone means "unchanged");
* ``rewrite_body(header, body)`` → the new header (a DKIM signer returns the
  header with its ``DKIM-Signature`` field on top; the body is read-only).

Addresses are given and returned in the pipeline's normalised form
(``gmta.proto.grammar.normalize_address``). A state is used for one message
only; ``close()`` is called once when the message is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gmta.config.module import Module, register
from gmta.config.parser import Node
from gmta.delivery import MessageMeta
from gmta.pipeline.check import module_from_directive


class ModifierState:
    """One message as a modifier sees it; every stage leaves it unchanged unless overridden."""

    def rewrite_sender(self, mail_from: str) -> str:
        return mail_from

    def rewrite_rcpt(self, rcpt: str) -> list[str]:
        return [rcpt]

    def rewrite_body(self, header: bytes, body) -> bytes:
        return header

    def close(self) -> None:
        pass


class Modifier(Module):
    """Base class of modifier modules (registered as ``modify.NAME``)."""

    kinds = frozenset({"modify"})

    def modifier_state(self, meta: MessageMeta, mail_from: str) -> ModifierState:  # pragma: no cover
        raise NotImplementedError


def parse_modifier_list(node: Node, ctx) -> list[Modifier]:
    """``modify { NAME args...; &ref }`` or ``modify &modifiers_block``."""
    if node.children is None:
        if len(node.args) == 1 and node.args[0].startswith("&"):
            group = ctx.reference(node.args[0][1:], node, "modifiers")
            return list(group.modifiers)
        raise node.error("modify: expected a block of modifiers or a &reference to a "
                         "modifiers block", hint="such as 'modify { replace_rcpt &aliases }'")
    if node.args:
        raise node.error("modify takes no arguments before its block")
    return [module_from_directive(child, "modify", ctx) for child in node.children]


@register
class ModifiersGroup(Module):
    """``modifiers NAME { ... }``: modifiers that blocks share with ``modify &NAME``."""

    name = "modifiers"
    kinds = frozenset({"modifiers"})
    allow_unknown = True

    def configure(self, cfg, ctx) -> None:
        self.modifiers = [module_from_directive(child, "modify", ctx) for child in cfg.rest]


#: An upper bound on what one RCPT may expand to through every modifier of
#: every level: an alias table that lists thousands of addresses is a
#: mailing list, which a table lookup is not meant to be (DESIGN §4.2).
MAX_EXPANSION = 1000


@dataclass
class ModifierStates:
    """The states of one list of modifiers for one message."""

    states: list[ModifierState] = field(default_factory=list)

    @classmethod
    def start(cls, modifiers: list[Modifier], meta: MessageMeta,
              mail_from: str) -> "ModifierStates":
        return cls([m.modifier_state(meta, mail_from) for m in modifiers])

    def rewrite_sender(self, mail_from: str) -> str:
        for state in self.states:
            mail_from = state.rewrite_sender(mail_from)
        return mail_from

    def rewrite_rcpt(self, rcpt: str) -> list[str]:
        """*rcpt* through every modifier in order, each result through the next; no duplicates."""
        addresses = [rcpt]
        for state in self.states:
            expanded: list[str] = []
            for address in addresses:
                for new in state.rewrite_rcpt(address):
                    if new not in expanded:
                        expanded.append(new)
            addresses = expanded
        return addresses

    def rewrite_body(self, header: bytes, body) -> bytes:
        for state in self.states:
            header = state.rewrite_body(header, body)
        return header

    def close(self) -> None:
        for state in self.states:
            state.close()
