"""The organisational domain of RFC 7489 §3.2, from the Public Suffix List.

With pip, the list comes from the ``publicsuffixlist`` package (bundled data,
no network at run time). Debian 12 packages no such library, so the Debian
package of gmta reads the list of Debian's ``publicsuffix`` package instead,
matched with the list's own algorithm (https://publicsuffix.org/list/,
"Algorithm"): the longest matching rule wins, a wildcard rule ``*.x``
matches one more label, an exception rule ``!a.x`` wins over everything and
counts one label fewer, and an unlisted TLD is a public suffix ("*").
"""

from __future__ import annotations

from collections.abc import Iterable

from gmta.errors import SMTPError
from gmta.proto.grammar import domain_to_unicode

#: Where Debian's ``publicsuffix`` package puts the list.
DEBIAN_LIST = "/usr/share/publicsuffix/public_suffix_list.dat"


class SuffixList:
    """The rules of a public suffix list file (UTF-8 text, one rule per line)."""

    def __init__(self, lines: Iterable[str]):
        self.rules: set[str] = set()
        self.exceptions: set[str] = set()
        for line in lines:
            words = line.split()
            if not words or words[0].startswith("//"):
                continue
            rule = words[0].lower()
            if rule.startswith("!"):
                self.exceptions.add(rule[1:])
            else:
                self.rules.add(rule)

    def suffix_length(self, labels: list[str]) -> int:
        """How many trailing *labels* form the public suffix."""
        count = len(labels)
        longest = 1  # the implicit "*" rule: any TLD is a public suffix
        for start in range(count):
            candidate = ".".join(labels[start:])
            if candidate in self.exceptions:
                return count - start - 1
            parent = ".".join(labels[start + 1:])
            if candidate in self.rules or (parent and "*." + parent in self.rules):
                longest = max(longest, count - start)
        return longest

    def private_suffix(self, domain: str) -> str | None:
        """The public suffix plus one label, or None when *domain* is a public suffix."""
        labels = domain.split(".")
        length = self.suffix_length(labels)
        if length >= len(labels):
            return None
        return ".".join(labels[-(length + 1):])


def _to_unicode(domain: str) -> str:
    # The list spells IDN rules in U-labels; a From domain may come in A-labels.
    try:
        return domain_to_unicode(domain)
    except SMTPError:
        return domain  # not a valid domain: matched as written, like the library does


def load_private_suffix():
    """A function ``domain -> private suffix or None`` from the best list available."""
    try:
        from publicsuffixlist import PublicSuffixList
    except ImportError:
        with open(DEBIAN_LIST, encoding="utf-8") as source:
            suffixes = SuffixList(source)
        return lambda domain: suffixes.private_suffix(_to_unicode(domain))
    psl = PublicSuffixList()
    return psl.privatesuffix
