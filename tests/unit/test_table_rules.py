"""table.regexp, table.chain and table.identity (maddy-behaviour §2.2)."""

from __future__ import annotations

import pytest

import gmta.modules  # noqa: F401
from gmta.config.loader import Context, load_text
from gmta.config.parser import parse_text
from gmta.errors import ConfigErrors

HEAD = "hostname mx.test\ntls off\nstate_dir {state}\n"


def table(tmp_path, text: str):
    """The table ``t`` defined at top level by *text*, or written inline (``regexp ...``)."""
    inline = not text.startswith("table.")
    use = text if inline else "&t"
    config = load_text(HEAD.format(state=tmp_path) + ("" if inline else text) +
                       f"\nsmtp tcp://127.0.0.1:0 {{\n destination_in {use} {{\n"
                       "  deliver_to dummy\n }\n default_destination {\n  reject\n }\n}\n",
                       "t.conf")
    [(found, _, _)] = config.endpoints[0].pipeline.sources.default.destinations.tables
    return found


def test_regexp_with_placeholders(tmp_path):
    t = table(tmp_path, 'regexp "(.+)\\+(?P<tag>.+)@(.+)" "$1@${3} (${tag})"')
    assert t.lookup_multi("Alice+lists@example.org") == ["Alice@example.org (lists)"]
    assert t.lookup_multi("alice@example.org") == []


def test_regexp_without_replacement_returns_the_key_and_is_case_insensitive(tmp_path):
    t = table(tmp_path, 'regexp "admin@.*"')
    assert t.lookup("ADMIN@x.test") == "ADMIN@x.test"
    assert t.lookup("xadmin@x.test") is None          # full match by default


def test_regexp_options(tmp_path):
    # Written where a table is used, with the table's own block (as after replace_rcpt).
    node = parse_text('table regexp admin "$1x" {\n full_match no\n case_insensitive no\n'
                      ' expand_placeholders no\n}', "t.conf", environ={})[0]
    t = Context("t.conf").instance_from_node(node, "table")
    assert t.lookup("xadminx") == "$1x"
    assert t.lookup("ADMIN") is None


@pytest.mark.parametrize("text, message", [
    ('regexp "(a"', "t.conf:6: table.regexp: invalid regular expression"),
    ('regexp "(a)" "$2"', "refers to $2, which the expression does not have"),
    ("table.regexp t {\n}", "t.conf:4: table.regexp: expected a regular expression"),
    ("table.chain t {\n}", "t.conf:4: table.chain: expected at least one step"),
])
def test_config_errors(tmp_path, text, message):
    with pytest.raises(ConfigErrors) as e:
        table(tmp_path, text)
    assert message in str(e.value)


def test_chain_steps_in_order_optional_and_required(tmp_path):
    t = table(tmp_path, 'table.chain t {\n'
                        ' optional_step regexp "(.+)\\+.*@(.+)" "$1@$2"\n'
                        ' step static {\n  entry a@x.test b@x.test c@x.test\n'
                        '  entry d@x.test d@x.test\n }\n'
                        ' optional_step static {\n  entry c@x.test e@x.test\n }\n}')
    assert t.lookup_multi("a+tag@x.test") == ["b@x.test", "e@x.test"]
    assert t.lookup_multi("d@x.test") == ["d@x.test"]
    assert t.lookup_multi("unknown@x.test") == []      # the required step misses


def test_chain_of_optional_steps_finds_every_key(tmp_path):
    t = table(tmp_path, "table.chain t {\n optional_step static {\n  entry a b\n }\n}")
    assert (t.lookup("a"), t.lookup("z")) == ("b", "z")


def test_identity(tmp_path):
    t = table(tmp_path, "table.identity t {\n}")
    assert t.lookup_multi("Any@Thing") == ["Any@Thing"]
