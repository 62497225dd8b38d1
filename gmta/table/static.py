"""``table.static``: a table written in the configuration (maddy's module).

::

    table.static postmasters {
        entry postmaster postmaster@example.org
        entry sales alice@example.org bob@example.org
    }

Each ``entry KEY VALUE...`` gives a key one or more values; a key given twice
keeps its last entry, as in maddy. Lookups find the key as written, else
regardless of case, like ``table.file``.
"""

from __future__ import annotations

from gmta.config.module import register
from gmta.config.reader import Directive, Strings
from gmta.table import Table, fold_key


@register
class StaticTable(Table):
    name = "table.static"
    directives = (
        Directive("entry", Strings(2), repeat=True, doc="a key and its values"),
    )

    def configure(self, cfg, ctx) -> None:
        self.values: dict[str, list[str]] = {}
        for words in cfg.entry:
            self.values.pop(words[0], None)     # the last entry wins, in its position
            self.values[words[0]] = list(words[1:])
        self.folded: dict[str, str] = {}
        for key in self.values:
            self.folded.setdefault(fold_key(key), key)

    def lookup_multi(self, key: str) -> list[str]:
        found = key if key in self.values else self.folded.get(fold_key(key))
        return list(self.values[found]) if found is not None else []

    def keys(self) -> list[str]:
        return list(self.values)
