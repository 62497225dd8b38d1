"""``table.identity``: every key is found, and its value is the key (maddy's module).

Useful as the last step of a ``table.chain`` or where a table is required but
no mapping is wanted.
"""

from __future__ import annotations

from gmta.config.module import register
from gmta.table import Table


@register
class IdentityTable(Table):
    name = "table.identity"

    def lookup_multi(self, key: str) -> list[str]:
        return [key]
