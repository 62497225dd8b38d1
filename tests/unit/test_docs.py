"""Docs are part of the feature: every directive a module accepts is documented.

A directive that exists but has no ``### name`` section in docs/reference is a
bug; so is a registered module that docs/FEATURES.md does not mention.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import gmta.modules  # noqa: F401  (fills the registry)
from gmta.config import module as registry
from gmta.config.loader import GLOBAL_DIRECTIVES

DOCS = Path(__file__).resolve().parents[2] / "docs"


def documented_headings() -> set[str]:
    headings = set()
    for page in (DOCS / "reference").glob("*.md"):
        for line in page.read_text().splitlines():
            m = re.match(r"#{2,4} `?([a-z_][a-z0-9_.]*)`?\b", line)
            if m:
                headings.add(m.group(1))
    return headings


def gmta_modules():
    return [cls for cls in registry.registered_modules() if cls.__module__.startswith("gmta.")]


@pytest.mark.parametrize("cls", gmta_modules(), ids=lambda cls: cls.name)
def test_every_directive_of_every_module_is_documented(cls):
    missing = [d.name for d in cls.directives if d.name not in documented_headings()]
    assert missing == [], f"{cls.name}: no '### name' section in docs/reference for {missing}"


def test_every_global_directive_is_documented():
    missing = [d.name for d in GLOBAL_DIRECTIVES if d.name not in documented_headings()]
    assert missing == []


@pytest.mark.parametrize("cls", gmta_modules(), ids=lambda cls: cls.name)
def test_every_module_has_a_features_row(cls):
    features = (DOCS / "FEATURES.md").read_text()
    assert f"`{cls.name}" in features
