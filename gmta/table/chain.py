"""``table.chain``: tables applied one after the other (maddy's module).

::

    table.chain local_rewrites {
        optional_step regexp "(.+)\\+(.+)@(.+)" "$1@$3"
        optional_step static { entry postmaster postmaster@example.org }
        optional_step file /etc/gmta/aliases
    }

The values a step finds are the keys of the next step (each value is looked
up; several values fan out). A ``step`` that finds nothing for any key makes
the whole lookup find nothing; an ``optional_step`` that finds nothing for a
key passes the key on unchanged. So a chain of optional steps always finds
the key: its value is the key, rewritten by whichever steps matched.
"""

from __future__ import annotations

from gmta.config.module import register
from gmta.config.reader import Directive, ModuleRef
from gmta.table import Table

#: Values one lookup may fan out to; more means a table meant as a mailing list.
MAX_VALUES = 1000


@register
class ChainTable(Table):
    name = "table.chain"
    directives = (
        Directive("step", ModuleRef("table"), repeat=True,
                  doc="a table whose values replace the keys; a miss ends the lookup"),
        Directive("optional_step", ModuleRef("table"), repeat=True,
                  doc="a table whose values replace the keys; a miss keeps the key"),
    )

    def configure(self, cfg, ctx) -> None:
        # Steps run in the order written, step and optional_step interleaved.
        by_node = {}
        for name, optional in (("step", False), ("optional_step", True)):
            for node, table in zip(cfg.nodes.get(name, []), cfg[name], strict=True):
                by_node[id(node)] = (table, optional)
        self.steps = [by_node[id(n)] for n in self.node.block if id(n) in by_node]
        if not self.steps:
            raise self.node.error("table.chain: expected at least one step",
                                  hint="add 'step TABLE' or 'optional_step TABLE'")

    def lookup_multi(self, key: str) -> list[str]:
        keys = [key]
        for table, optional in self.steps:
            found: list[str] = []
            for k in keys:
                values = table.lookup_multi(k)
                if not values and optional:
                    values = [k]
                found += [v for v in values if v not in found]
            if not found:
                return []
            keys = found[:MAX_VALUES]
        return keys
