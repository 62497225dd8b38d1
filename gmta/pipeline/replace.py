"""``modify.replace_rcpt`` and ``modify.replace_sender``: addresses rewritten by a table.

::

    modify {
        replace_rcpt file /etc/gmta/aliases
        replace_rcpt &local_rewrites
        replace_sender static { entry old@example.org new@example.org }
    }

The words after the module name choose the table, as ``table`` would; a block
after them is the table's block. The lookup is maddy's (maddy-behaviour §2.2):
the whole address first, then the local part alone, whose replacement keeps
the domain unless it contains ``@``. A key with several values expands one
recipient into several (1:N). Replacements are not looked up again (use
``reroute`` to route them anew).
"""

from __future__ import annotations

import gmta.log
from gmta.config.module import register
from gmta.config.parser import Node
from gmta.config.reader import Directive, ModuleRef
from gmta.errors import SMTPError
from gmta.pipeline.modify import Modifier, ModifierState
from gmta.proto.grammar import normalize_address, split_address

log = gmta.log.get("pipeline")


def bad_table_value(table: str, key: str, value: str) -> SMTPError:
    # The operator's table is wrong, not the client: a temporary failure lets
    # the mail through once the table is fixed.
    log.error("invalid_replacement", table=table, key=key, value=value)
    return SMTPError(451, (4, 3, 5), "Address rewriting is misconfigured, try again later")


def replacements(table, table_name: str, address: str) -> list[str] | None:
    """What *address* is replaced by, normalised, or None when the table has no entry."""
    values = table.lookup_multi(address)
    local, domain = split_address(address)
    if not values and domain:
        values = table.lookup_multi(local)
        values = [v if "@" in v or not v else f"{v}@{domain}" for v in values]
    if not values:
        return None
    result: list[str] = []
    for value in values:
        vlocal, vdomain = split_address(value)
        if not vlocal or (not vdomain and vlocal.lower() != "postmaster"):
            raise bad_table_value(table_name, address, value)
        try:
            normalized = normalize_address(value)
        except SMTPError:
            raise bad_table_value(table_name, address, value) from None
        if normalized not in result:
            result.append(normalized)
    return result


class _Replace(Modifier):
    directives = (Directive("table", ModuleRef("table"),
                            doc="the table, when it is not named after the module name"),)
    max_inline_args = 64
    allow_unknown = True    # with inline arguments, the block is the table's

    def configure(self, cfg, ctx) -> None:
        if self.inline_args:
            if cfg.given("table"):
                raise cfg.error("table", "table given both after the module name and in the block")
            use = Node("table", list(self.inline_args), self.node.children, self.node.file,
                       self.node.line)
            self.table = ctx.instance_from_node(use, "table")
        elif cfg.table is not None:
            if cfg.rest:
                raise cfg.rest[0].error(f"unexpected directive: {cfg.rest[0].name}",
                                        hint="expected one of: table")
            self.table = cfg.table
        else:
            raise self.node.error(f"{self.name}: expected a table",
                                  hint=f"such as '{self.name.split('.')[-1]} file "
                                       "/etc/gmta/aliases' or '... &aliases'")

    @property
    def table_name(self) -> str:
        return self.table.instance_name


class _RcptState(ModifierState):
    def __init__(self, modifier: "ReplaceRcpt"):
        self.modifier = modifier

    def rewrite_rcpt(self, rcpt: str) -> list[str]:
        found = replacements(self.modifier.table, self.modifier.table_name, rcpt)
        return [rcpt] if found is None else found


@register
class ReplaceRcpt(_Replace):
    name = "modify.replace_rcpt"

    def modifier_state(self, meta, mail_from) -> ModifierState:
        return _RcptState(self)


class _SenderState(ModifierState):
    def __init__(self, modifier: "ReplaceSender"):
        self.modifier = modifier

    def rewrite_sender(self, mail_from: str) -> str:
        if not mail_from:
            return mail_from    # the null sender has nothing to replace
        found = replacements(self.modifier.table, self.modifier.table_name, mail_from)
        if found is None:
            return mail_from
        if len(found) != 1:
            raise bad_table_value(self.modifier.table_name, mail_from, ", ".join(found))
        return found[0]


@register
class ReplaceSender(_Replace):
    name = "modify.replace_sender"

    def modifier_state(self, meta, mail_from) -> ModifierState:
        return _SenderState(self)
