"""Fuzzing: whatever the text, the parser and the loader fail only with configuration errors."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gmta.config.loader import load_text
from gmta.config.parser import Node, Parser
from gmta.errors import ConfigError, ConfigErrors

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Pieces of the language, so most examples reach the parser's interesting paths
# rather than stopping at the first invalid character.
SYNTAX = ["{", "}", '"', "\\", "#", "$", "(", ")", "&", "\n", "\r\n", " ", "\t", "=", "{}",
          "import", "import ", "$(a)", "$(b)", "(s)", "a", "b", "1", "x.y", "{env:X}", "{env:",
          "$(a) = 1 2", "(s) {", "\ufeff", "é", "\x00", "import a", "import self", "import bad",
          "import s", "a {\n", "}\n", "\\\n", '"\\"', "$(a", "}}"]

LOADER = SYNTAX + ["ut.endpoint ", "tcp://127.0.0.1:25 ", "unix://s ", "deliver_to ", "dummy ",
                   "ut_target ", "target.ut_target ", "&t ", "t ", "table ", "ut_table ",
                   "limits ", "entry k v", "count 3", "hostname ", "mx.example.org", "tls off",
                   "log stderr", "debug", "state_dir ", "dns_servers ::1", "next &t", "hostname"]


def text_from(pieces):
    return st.one_of(st.text(max_size=200),
                     st.lists(st.sampled_from(pieces), max_size=60).map("".join))


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    """A directory with a few files for fuzzed imports (never the working directory)."""
    d = tmp_path_factory.mktemp("fuzz")
    (d / "a.conf").write_text("a b {\n  c $(a)\n}\n")
    (d / "self.conf").write_text("import self\n")
    (d / "bad.conf").write_bytes(b"\xff\n")
    return d


def check_tree(nodes):
    assert isinstance(nodes, list)
    for node in nodes:
        assert isinstance(node, Node) and isinstance(node.name, str)
        assert all(isinstance(a, str) for a in node.args)
        assert node.line >= 1
        if node.children is not None:
            check_tree(node.children)


@FUZZ
@given(text=text_from(SYNTAX))
def test_parser_raises_only_config_errors(text, fuzz_dir):
    try:
        nodes = Parser({"X": "x y"}).parse_text(text, str(fuzz_dir / "fuzz.conf"))
    except ConfigError as e:
        assert e.file and e.line is not None and e.message
    else:
        check_tree(nodes)


@FUZZ
@given(text=text_from(LOADER))
def test_loader_raises_only_config_errors(text, fuzz_dir, mods):
    try:
        load_text(text, str(fuzz_dir / "fuzz.conf"), environ={})
    except ConfigErrors as e:
        assert e.errors and all(isinstance(x, ConfigError) for x in e.errors)
