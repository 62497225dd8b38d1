"""The public suffix list fallback for Debian agrees with the publicsuffixlist package."""

from __future__ import annotations

import os

import pytest
from publicsuffixlist import PublicSuffixList

from gmta.check.psl import DEBIAN_LIST, SuffixList

RULES = SuffixList("""
// comment
com
uk
co.uk
*.ck
!www.ck
jp
*.kawasaki.jp
!city.kawasaki.jp
""".splitlines())


@pytest.mark.parametrize("domain, expected", [
    ("example.com", "example.com"),
    ("a.b.example.com", "example.com"),
    ("com", None),
    ("example.co.uk", "example.co.uk"),
    ("mail.example.co.uk", "example.co.uk"),
    ("co.uk", None),
    ("foo.example.ck", "foo.example.ck"),   # wildcard: example.ck is a suffix
    ("example.ck", None),
    ("www.ck", "www.ck"),                   # exception beats the wildcard
    ("a.www.ck", "www.ck"),
    ("city.kawasaki.jp", "city.kawasaki.jp"),
    ("example.unlisted", "example.unlisted"),   # the implicit "*" rule
])
def test_rules_follow_the_list_algorithm(domain, expected):
    assert RULES.private_suffix(domain) == expected


@pytest.mark.skipif(not os.path.exists(DEBIAN_LIST), reason="Debian's publicsuffix not installed")
def test_debian_list_agrees_with_the_library():
    with open(DEBIAN_LIST, encoding="utf-8") as source:
        debian = SuffixList(source)
    library = PublicSuffixList()
    for domain in ("example.com", "mail.example.co.uk", "x.y.github.io", "a.b.s3.amazonaws.com",
                   "foo.bar.ck", "www.ck", "shop.example.de", "a.example.com.au",
                   "mx.example.org", "example.xn--p1ai", "deep.sub.example.net"):
        assert debian.private_suffix(domain) == library.privatesuffix(domain), domain
