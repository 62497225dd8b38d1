"""The global ``workers N`` directive (gmta.daemon.workers)."""

from __future__ import annotations

import pytest

from gmta.config import load_text
from gmta.errors import ConfigErrors

EP = "ut.endpoint tcp://127.0.0.1:2525 {\n  deliver_to dummy\n}\n"


def globals_of(text: str):
    return load_text(text + EP, "t.conf", environ={}).globals


def test_workers_defaults_to_one(mods):
    assert globals_of("").workers == 1


def test_workers_takes_a_count(mods):
    assert globals_of("workers 4\n").workers == 4


@pytest.mark.parametrize("line, message", [
    ("workers", "t.conf:1: workers:"),
    ("workers 0", "t.conf:1: workers:"),
    ("workers 65", "t.conf:1: workers:"),
    ("workers two", "t.conf:1: workers:"),
    ("workers 2 3", "t.conf:1: workers:"),
    ("workers 2\nworkers 3", "t.conf:2: duplicate directive: workers"),
])
def test_workers_errors(line, message, mods):
    with pytest.raises(ConfigErrors) as e:
        load_text(line + "\n" + EP, "t.conf", environ={})
    assert [str(x) for x in e.value.errors][0].startswith(message)
