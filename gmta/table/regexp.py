"""``table.regexp``: keys that match a regular expression (maddy's module).

::

    table.regexp "(.+)\\+(.+)@(.+)" "$1@$3"

A key that matches the expression is found; its value is the replacement
with ``$1``, ``${1}`` or ``${name}`` replaced by the groups, or the key itself
when there is no replacement. Python's ``re`` syntax is used; for the
expressions people write for addresses it is the same as Go's RE2.
"""

from __future__ import annotations

import re

from gmta.config.module import register
from gmta.config.reader import Bool, Directive
from gmta.table import Table

_PLACEHOLDER = re.compile(r"\$(?:(\d+)|\{(\w+)\})")


@register
class RegexpTable(Table):
    name = "table.regexp"
    max_inline_args = 2
    directives = (
        Directive("full_match", Bool(), True, doc="the expression must match the whole key"),
        Directive("case_insensitive", Bool(), True, doc="letters match in any case"),
        Directive("expand_placeholders", Bool(), True,
                  doc="replace $1 and ${name} in the replacement with the groups"),
    )

    def configure(self, cfg, ctx) -> None:
        if not self.inline_args:
            raise self.node.error("table.regexp: expected a regular expression",
                                  hint='such as regexp "(.+)@example.org" "$1@example.com"')
        flags = re.IGNORECASE if cfg.case_insensitive else 0
        try:
            self.regexp = re.compile(self.inline_args[0], flags)
        except re.error as e:
            raise self.node.error(f"table.regexp: invalid regular expression "
                                  f"{self.inline_args[0]!r}: {e}") from None
        self.replacement = self.inline_args[1] if len(self.inline_args) > 1 else None
        self.full_match = cfg.full_match
        self.expand = cfg.expand_placeholders
        if self.replacement is not None and self.expand:
            for m in _PLACEHOLDER.finditer(self.replacement):
                group = _group(m)
                if (isinstance(group, int) and group > self.regexp.groups) or \
                        (isinstance(group, str) and group not in self.regexp.groupindex):
                    raise self.node.error(f"table.regexp: the replacement refers to "
                                          f"{m.group(0)}, which the expression does not have")

    def lookup_multi(self, key: str) -> list[str]:
        m = (self.regexp.fullmatch if self.full_match else self.regexp.search)(key)
        if m is None:
            return []
        if self.replacement is None:
            return [key]
        if not self.expand:
            return [self.replacement]
        return [_PLACEHOLDER.sub(lambda p: m.group(_group(p)) or "", self.replacement)]


def _group(placeholder: re.Match) -> int | str:
    """The group a ``$1``, ``${1}`` or ``${name}`` placeholder refers to."""
    spec = placeholder.group(1) or placeholder.group(2)
    return int(spec) if spec.isascii() and spec.isdigit() else spec
