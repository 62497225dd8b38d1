"""The typed reader every module uses for its block (gmta/config/reader.py)."""

from __future__ import annotations

import pytest

from gmta.config.loader import Context
from gmta.config.parser import parse_text
from gmta.config.reader import (Bool, Custom, Directive, Domain, Duration, Endpoints, Enum, Float,
                                Int, Path, Size, String, Strings, ValueType, Values, check_domain,
                                read_block, state_relative)
from gmta.config.values import Endpoint
from gmta.errors import ConfigError


@pytest.fixture
def ctx():
    c = Context("t.conf")
    c.state_dir = "/var/lib/ut"
    c.runtime_dir = "/run/ut"
    return c


def block(text: str):
    """The first node of *text*, which should be ``blk { ... }``."""
    return parse_text(text, "t.conf", environ={})[0]


def read(text, directives, ctx, **kwargs):
    node = block(text)
    return read_block(node, node.block, directives, ctx, **kwargs)


def value_of(vtype, line, ctx):
    """The value of the one directive ``d ...`` in a block, read as *vtype*."""
    return read("blk {\n" + line + "\n}", (Directive("d", vtype),), ctx).d


# -- value types ----------------------------------------------------------------------

@pytest.mark.parametrize("vtype, line, expected", [
    (String(), "d hello", "hello"),
    (String(), 'd "two words"', "two words"),
    (Strings(), "d a b c", ["a", "b", "c"]),
    (Strings(minimum=0), "d", []),
    (Bool(), "d", True),
    (Bool(), "d Off", False),
    (Int(), "d 42", 42),
    (Int(1, 3), "d 3", 3),
    (Float(), "d 1.5", 1.5),
    (Float(minimum=1.0), "d 1", 1.0),
    (Duration(), "d 1h 30m", 5400.0),
    (Size(), "d 3M 5K", 3 * 1024 ** 2 + 5 * 1024),
    (Enum("fast", "slow"), "d SLOW", "slow"),
    (Endpoints(), "d tcp://[::1]:25 unix://s.sock",
     [Endpoint("tcp", "::1", 25), Endpoint("unix", path="/run/ut/s.sock")]),
    (Path(), "d queue", "/var/lib/ut/queue"),
    (Path(), "d /abs/queue", "/abs/queue"),
    (Path(), "d ../x/./y", "/var/lib/x/y"),
    (Domain(), "d mx.example.org", "mx.example.org"),
    (Domain(), "d mx.example.org.", "mx.example.org."),
    (Domain(), "d bücher.example", "bücher.example"),
    (Custom(lambda node, ctx: node.args[::-1]), "d 1 2", ["2", "1"]),
    (Custom(lambda node, ctx: len(node.block)), "d {\n  x\n  y\n}", 2),
])
def test_value_types(vtype, line, expected, ctx):
    assert value_of(vtype, line, ctx) == expected


@pytest.mark.parametrize("vtype, line, message", [
    (String(), "d", "d: expected exactly one argument"),
    (String(), "d a b", "d: expected exactly one argument"),
    (Strings(), "d", "d: expected at least 1 argument(s)"),
    (Strings(minimum=3), "d a b", "d: expected at least 3 argument(s)"),
    (Bool(), "d maybe", "d: invalid boolean 'maybe'"),
    (Int(1, 3), "d 4", "d: 4 is too large: the maximum is 3"),
    (Int(1, 3), "d 0", "d: 0 is too small: the minimum is 1"),
    (Float(), "d", "d: expected one number"),
    (Float(), "d x", "d: invalid number 'x'"),
    (Float(), "d nan", "d: invalid number 'nan'"),
    (Float(), "d inf", "d: invalid number 'inf'"),
    (Float(), "d -Infinity", "d: invalid number '-Infinity'"),
    (Float(minimum=1.0), "d 0.5", "d: 0.5 is too small: the minimum is 1"),
    (Duration(), "d 1d", "d: invalid duration '1d'"),
    (Size(), "d 10", "d: invalid size '10'"),
    (Enum("fast", "slow"), "d medium", "d: invalid value 'medium': expected one of fast, slow"),
    (Enum("fast", "slow"), "d", "d: expected one of fast, slow"),
    (Endpoints(), "d", "d: expected at least one address"),
    (Endpoints(), "d smtp://h:25", "d: unsupported scheme smtp://"),
    (Path(), "d", "d: expected one path"),
    (Path(), 'd ""', "d: expected one path"),
    (Domain(), "d", "d: expected one domain name"),
    (Domain(), "d a..b", "d: invalid domain name 'a..b'"),
    (String(), "d x {\n}", "d does not take a block"),
    (Bool(), "d {\n  y\n}", "d does not take a block"),
])
def test_value_type_errors(vtype, line, message, ctx):
    with pytest.raises(ConfigError) as e:
        value_of(vtype, line, ctx)
    assert str(e.value).startswith("t.conf:2: " + message)


def test_type_without_arguments(ctx):
    class BlockOnly(ValueType):
        takes_args = False
        takes_block = True

        def parse(self, node, ctx):
            return [c.name for c in node.block]

    assert value_of(BlockOnly(), "d {\n  a\n}", ctx) == ["a"]
    with pytest.raises(ConfigError) as e:
        value_of(BlockOnly(), "d x", ctx)
    assert str(e.value) == "t.conf:2: d takes no arguments (write d { ... })"


@pytest.mark.parametrize("name, ok", [
    ("mx.example.org", True),
    ("localhost", True),
    ("_dmarc.example.org", True),
    ("a" * 63 + ".org", True),
    ("a" * 64 + ".org", False),               # a label has at most 63 octets
    ("é" * 60 + ".org", False),              # too long once encoded
    (".".join(["a" * 50] * 4 + ["a" * 49]), True),     # 253 characters
    (".".join(["a" * 50] * 5), False),                  # 254
    ("", False), (".", False), ("a..b", False), (".a", False),
    ("a b", False), ("a\tb", False),
])
def test_check_domain(name, ok):
    if ok:
        assert check_domain(name) == name
    else:
        with pytest.raises(ValueError, match="invalid"):
            check_domain(name)


# -- blocks -----------------------------------------------------------------------------

DIRECTIVES = (
    Directive("max_tries", Int(1), 20),
    Directive("hostname", Domain(), required=True, inherit_global=True),
    Directive("target", String(), required=True),
    Directive("source", Strings(), repeat=True),
    Directive("debug", Bool(), False, inherit_global=True),
    Directive("limits", Strings(), repeat=True, default=[["x"]]),
)


def test_read_block_values_and_defaults(ctx):
    v = read("blk {\n  target t\n  hostname h.example\n  source a b\n  source c\n}", DIRECTIVES, ctx)
    assert (v.target, v.hostname, v.max_tries, v.debug) == ("t", "h.example", 20, False)
    assert v.source == [["a", "b"], ["c"]]
    assert v.limits == [["x"]]                      # a repeat directive's own default
    assert v["max_tries"] == 20 and "max_tries" in v and "nothing" not in v
    assert v.given("target") and not v.given("max_tries")
    assert [n.line for n in v.nodes["source"]] == [4, 5]
    assert v.as_dict() == {"target": "t", "hostname": "h.example", "source": [["a", "b"], ["c"]],
                           "max_tries": 20, "debug": False, "limits": [["x"]]}
    with pytest.raises(AttributeError):
        getattr(v, "nothing")  # noqa: B009


def test_repeat_directive_defaults_to_an_empty_list(ctx):
    v = read("blk {\n  target t\n  hostname h\n}", DIRECTIVES, ctx)
    assert v.source == []


def test_empty_block_and_no_block_read_the_same(ctx):
    spec = (Directive("x", Int(), 7),)
    for text in ("blk", "blk {}", "blk {\n}"):
        node = block(text)
        assert read_block(node, node.block, spec, ctx).x == 7


def test_unknown_directive_suggests_the_closest_name(ctx):
    with pytest.raises(ConfigError) as e:
        read("blk {\n  target t\n  maxtries 3\n}", DIRECTIVES, ctx)
    assert str(e.value) == "t.conf:3: unexpected directive: maxtries (did you mean max_tries?)"


def test_unknown_directive_lists_the_known_ones(ctx):
    with pytest.raises(ConfigError) as e:
        read("blk {\n  zzz\n}", (Directive("b", Bool()), Directive("a", Bool())), ctx)
    assert str(e.value) == "t.conf:2: unexpected directive: zzz (expected one of: a, b)"


def test_unknown_directive_in_a_block_without_directives(ctx):
    with pytest.raises(ConfigError) as e:
        read("blk {\n  x\n}", (), ctx)
    assert str(e.value) == "t.conf:2: unexpected directive: x (this block takes no directives)"


def test_allow_unknown_keeps_the_rest(ctx):
    v = read("blk {\n  target t\n  hostname h\n  custom 1 2\n  other\n}", DIRECTIVES, ctx,
             allow_unknown=True)
    assert [(n.name, n.args, n.line) for n in v.rest] == [("custom", ["1", "2"], 4),
                                                          ("other", [], 5)]


def test_duplicate_directive_names_the_first(ctx):
    with pytest.raises(ConfigError) as e:
        read("blk {\n  target a\n  hostname h\n  target b\n}", DIRECTIVES, ctx)
    assert str(e.value) == "t.conf:4: duplicate directive: target (first given at t.conf:2)"


def test_missing_required_is_located_at_the_block(ctx):
    node = parse_text("x\n\nblk {\n  hostname h\n}", "t.conf", environ={})[1]
    with pytest.raises(ConfigError) as e:
        read_block(node, node.block, DIRECTIVES, ctx)
    assert str(e.value) == ("t.conf:3: missing required directive: target "
                            "(add 'target string' to this block)")


def test_missing_required_inheritable_directive(ctx):
    with pytest.raises(ConfigError) as e:
        read("blk {\n  target t\n}", DIRECTIVES, ctx)
    assert str(e.value) == ("t.conf:1: missing required directive: hostname "
                            "(set it in this block or as a global directive)")


def test_missing_required_without_a_block_node(ctx):
    with pytest.raises(ConfigError) as e:
        read_block(None, [], (Directive("x", Int(), required=True),), ctx)
    assert (e.value.file, e.value.message) == (None, "missing required directive: x")


def global_values(text, ctx):
    nodes = parse_text(text, "g.conf", environ={})
    return read_block(None, nodes, (Directive("hostname", Domain()), Directive("debug", Bool(), False)),
                      ctx)


def test_inherit_global(ctx):
    g = global_values("hostname global.example\ndebug yes", ctx)
    v = read("blk {\n  target t\n}", DIRECTIVES, ctx, global_values=g)
    assert (v.hostname, v.debug) == ("global.example", True)
    assert not v.given("hostname")                  # inherited, not written here


def test_block_value_beats_global(ctx):
    g = global_values("hostname global.example\ndebug yes", ctx)
    v = read("blk {\n  target t\n  hostname local.example\n  debug no\n}", DIRECTIVES, ctx,
             global_values=g)
    assert (v.hostname, v.debug) == ("local.example", False)


def test_global_default_is_not_inherited(ctx):
    # A global only counts when it was written; otherwise the block's default applies.
    g = global_values("hostname global.example", ctx)
    spec = (Directive("debug", Bool(), "block-default", inherit_global=True),)
    assert read("blk", spec, ctx, global_values=g).debug == "block-default"


def test_only_inherit_global_directives_inherit(ctx):
    g = global_values("hostname global.example", ctx)
    spec = (Directive("hostname", Domain(), "own-default"),)
    assert read("blk", spec, ctx, global_values=g).hostname == "own-default"


def test_values_error_locations(ctx):
    v = read("blk {\n  target t\n  hostname h\n  source a\n  source b\n}", DIRECTIVES, ctx)
    assert str(v.error("target", "bad target")) == "t.conf:2: bad target"
    assert str(v.error("source", "bad source", hint="h")) == "t.conf:4: bad source (h)"
    assert str(v.error("max_tries", "not written")) == "t.conf:1: not written"
    assert str(Values(None).error("x", "nowhere")) == "nowhere"


def test_state_relative():
    assert state_relative("/var/lib/gmta", "queue") == "/var/lib/gmta/queue"
    assert state_relative("/var/lib/gmta", "/abs") == "/abs"
    assert state_relative("/var/lib/gmta", "a/../b") == "/var/lib/gmta/b"
