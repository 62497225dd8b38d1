"""The parser: directives, blocks, macros, snippets, imports, {env:} (maddy-behaviour §1.1, §1.2, §3.7).

The first tables follow maddy's own parser tests case by case.
"""

from __future__ import annotations

import pytest

from gmta.config import parser as parser_mod
from gmta.config.parser import MAX_NESTING, Node, Parser, parse_file, parse_text
from gmta.errors import ConfigError

ENV = {"TESTING_VARIABLE": "ABCDEF", "TWO_WORDS": "ABC DEF"}


def tree(nodes):
    """Nodes as (name, args, children, line) tuples; children None when there is no block."""
    return [(n.name, n.args, None if n.children is None else tree(n.children), n.line)
            for n in nodes]


def parse(text, env=None, file="t.conf"):
    return tree(Parser(ENV if env is None else env).parse_text(text, file))


def error(text, env=None, file="t.conf") -> ConfigError:
    with pytest.raises(ConfigError) as e:
        Parser(ENV if env is None else env).parse_text(text, file)
    return e.value


# -- structure (maddy's parse_test.go) ------------------------------------------

@pytest.mark.parametrize("text, expected", [
    pytest.param("a", [("a", [], None, 1)], id="directive without args"),
    pytest.param("a a1 a2", [("a", ["a1", "a2"], None, 1)], id="directive with args"),
    pytest.param("a { }", [("a", [], [], 1)], id="empty braces with space"),
    pytest.param("a {}", [("a", [], [], 1)], id="empty braces"),
    pytest.param("a {\n}", [("a", [], [], 1)], id="empty block over two lines"),
    pytest.param("a a1 a2 { }", [("a", ["a1", "a2"], [], 1)], id="args and empty braces"),
    pytest.param("a a1 a2 {\n  c1 x y\n  c2 z\n}",
                 [("a", ["a1", "a2"], [("c1", ["x", "y"], None, 2), ("c2", ["z"], None, 3)], 1)],
                 id="block"),
    pytest.param("a {\n b {\n  c {\n   d e\n  }\n }\n}",
                 [("a", [], [("b", [], [("c", [], [("d", ["e"], None, 4)], 3)], 2)], 1)],
                 id="nested blocks"),
    pytest.param("a\n b", [("a", [], None, 1), ("b", [], None, 2)], id="two directives"),
    pytest.param("a a1 a2 \\\n   a3 a4", [("a", ["a1", "a2", "a3", "a4"], None, 1)],
                 id="backslash continuation joins args"),
    pytest.param("a a1 {\n c1 x\n c2 y }\nb",
                 [("a", ["a1"], [("c1", ["x"], None, 2), ("c2", ["y"], None, 3)], 1),
                  ("b", [], None, 4)],
                 id="closing brace on the last child's line"),
    pytest.param("a b { c d }", [("a", ["b"], [("c", ["d"], None, 1)], 1)],
                 id="children on the header line"),
    pytest.param("a {\n b { c }\n}", [("a", [], [("b", [], [("c", [], None, 2)], 2)], 1)],
                 id="one-line block inside a block"),
    pytest.param("a {} b", [("a", ["{}", "b"], None, 1)], id="{} in the middle is a word"),
    pytest.param('a "{" "}"', [("a", ["{", "}"], None, 1)], id="quoted braces are words"),
    pytest.param("a.b-c_d x\n_e\n-f\n.g", [("a.b-c_d", ["x"], None, 1), ("_e", [], None, 2),
                                          ("-f", [], None, 3), (".g", [], None, 4)],
                 id="name characters"),
    pytest.param("a 1\n\n# comment\n\n  b 2 # trailing\n",
                 [("a", ["1"], None, 1), ("b", ["2"], None, 5)], id="comments and empty lines"),
    pytest.param("a \"two\nlines\" b\nc", [("a", ["two\nlines", "b"], None, 1), ("c", [], None, 3)],
                 id="quoted string spanning lines"),
    pytest.param('a "x # y"', [("a", ["x # y"], None, 1)], id="hash inside quotes"),
    pytest.param("a {\r\n  b c\r\n}\r\n", [("a", [], [("b", ["c"], None, 2)], 1)], id="CRLF"),
])
def test_structure(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize("text, message, line", [
    pytest.param("a {", "missing closing }", 1, id="missing brace"),
    pytest.param("a a1 {\n  c x\n", "missing closing }", 1, id="missing brace on another line"),
    pytest.param("a {\n b {\n }\n", "missing closing }", 1, id="missing outer brace"),
    pytest.param("a }", "unexpected }", 1, id="stray brace after directive"),
    pytest.param("}", "unexpected }", 1, id="stray brace alone"),
    pytest.param("a {\n child\n} }\n", "unexpected }", 3, id="extra closing brace"),
    pytest.param("a {\n}\n}", "unexpected }", 3, id="extra closing brace on its own line"),
    pytest.param("a { {\n}", "block without a directive name", 1, id="extra opening brace"),
    pytest.param("{ a b c }", "block without a directive name", 1, id="block without header"),
    pytest.param("a\n{\n}", "block without a directive name", 2, id="brace on the next line"),
    pytest.param("a {\n} b b1", "expected a new line after }, found 'b'", 2,
                 id="closing brace in next header"),
    pytest.param("a { b } {", "expected a new line after }, found '{'", 1,
                 id="brace after closing brace"),
    pytest.param("a-a4@%8 whatever", "invalid directive name: a-a4@%8", 1, id="invalid characters"),
    pytest.param("x\nno/slash", "invalid directive name: no/slash", 2, id="slash in name"),
    pytest.param("1w whatever", "directive name cannot start with a digit: 1w", 1,
                 id="leading digit"),
    pytest.param("a\n\"open", "unterminated quoted string", 2, id="unterminated quote"),
    pytest.param("a " + "a { " * 1000 + " }" * 1000, "nesting limit reached", 1, id="nesting limit"),
])
def test_structure_errors(text, message, line):
    e = error(text)
    assert e.message == message
    assert (e.file, e.line) == ("t.conf", line)
    assert str(e).startswith(f"t.conf:{line}: {message}")


def test_nesting_limit_is_exactly_maddys():
    deepest = "a {\n" * MAX_NESTING + "}\n" * MAX_NESTING
    nodes = parse_text(deepest, environ={})
    depth = 0
    while nodes:
        depth += 1
        nodes = nodes[0].children
    assert depth == MAX_NESTING              # 255 nested blocks are allowed, 256 are not
    too_deep = "a {\n" * (MAX_NESTING + 1) + "}\n" * (MAX_NESTING + 1)
    assert error(too_deep).line == MAX_NESTING + 1


# -- environment ----------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    pytest.param("a {env:TESTING_VARIABLE}", [("a", ["ABCDEF"], None, 1)], id="expansion"),
    pytest.param("a {env:UNSET_VARIABLE} b", [("a", ["", "b"], None, 1)], id="unset is empty arg"),
    pytest.param("a {env:TESTING_VARIABLE", [("a", ["{env:TESTING_VARIABLE"], None, 1)],
                 id="incomplete kept"),
    pytest.param("a x{env:TESTING_VARIABLE}y", [("a", ["xABCDEFy"], None, 1)], id="inside a word"),
    pytest.param('a "{env:TWO_WORDS}"', [("a", ["ABC DEF"], None, 1)], id="inside quotes"),
    pytest.param("a {env:TWO_WORDS}", [("a", ["ABC DEF"], None, 1)], id="value stays one arg"),
    pytest.param("{env:TESTING_VARIABLE}_x y", [("ABCDEF_x", ["y"], None, 1)], id="in a name"),
    pytest.param("a {\n b {env:TESTING_VARIABLE}\n}", [("a", [], [("b", ["ABCDEF"], None, 2)], 1)],
                 id="in a block"),
    pytest.param("a {env:bad-name}", [("a", ["{env:bad-name}"], None, 1)],
                 id="not a variable name"),
])
def test_environment(text, expected):
    assert parse(text) == expected


def test_environment_runs_after_macros():
    # A macro's value is expanded like any argument, after macro expansion.
    assert parse("$(m) = {env:TESTING_VARIABLE}\na $(m)") == [("a", ["ABCDEF"], None, 2)]


def test_environment_defaults_to_the_process_environment(monkeypatch):
    monkeypatch.setenv("GMTA_UT_VAR", "from-os")
    assert tree(Parser().parse_text("a {env:GMTA_UT_VAR}")) == [("a", ["from-os"], None, 1)]


@pytest.mark.parametrize("value", ["", "two words", "9lives"])
def test_environment_making_an_invalid_name(value):
    e = error("{env:X} arg", env={"X": value})
    assert e.message.startswith("invalid directive name after {env:} expansion")
    assert e.line == 1


# -- macros -----------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    pytest.param("$(foo) = bar\ndir $(foo)", [("dir", ["bar"], None, 2)], id="single"),
    pytest.param("$(foo) = bar baz\ndir $(foo) x", [("dir", ["bar", "baz", "x"], None, 2)],
                 id="multi"),
    pytest.param("$(foo) = bar\ndir aaa/$(foo)/bbb", [("dir", ["aaa/bar/bbb"], None, 2)],
                 id="inside a string"),
    pytest.param("$(foo) = bar\ndir \"$(foo) and $(foo)\"", [("dir", ["bar and bar"], None, 2)],
                 id="inside quotes"),
    pytest.param("dir $(foo)", [("dir", [], None, 1)], id="undefined expands to nothing"),
    pytest.param("dir a$(foo)b", [("dir", ["ab"], None, 1)], id="undefined inside a string"),
    pytest.param("$(foo) = a\n$(bar) = $(foo) b\ndir $(bar)", [("dir", ["a", "b"], None, 3)],
                 id="nested"),
    pytest.param("$(a) = 1\n$(a) = 2\nd $(a)", [("d", ["2"], None, 3)], id="redefined"),
    pytest.param("$(foo) = a\n(bar) {\n  dir $(foo)\n}\nimport bar", [("dir", ["a"], None, 3)],
                 id="used inside snippet"),
    pytest.param("(bar) {\n  dir $(foo)\n}\n$(foo) = a\nimport bar", [("dir", [], None, 2)],
                 id="snippet does not see a later macro"),
    pytest.param("$(f) = x\nblk {\n  d $(f)\n}", [("blk", [], [("d", ["x"], None, 3)], 2)],
                 id="used inside a block"),
    pytest.param('$(f) = x\n"$(f)" y', [("$(f)", ["y"], None, 2)], id="quoted name is literal"),
    pytest.param("d $(f", [("d", ["$(f"], None, 1)], id="incomplete macro kept"),
])
def test_macros(text, expected):
    assert parse(text) == expected


def test_undefined_macro_warns_once_per_use():
    p = Parser({})
    nodes = p.parse_text("a $(nope)\nb x$(nope)y", "t.conf")
    assert tree(nodes) == [("a", [], None, 1), ("b", ["xy"], None, 2)]
    assert [str(w) for w in p.warnings] == [
        "t.conf:1: warning: macro $(nope) is not defined and expands to nothing",
        "t.conf:2: warning: macro $(nope) is not defined and expands to nothing",
    ]


def test_defined_macro_does_not_warn():
    p = Parser({})
    p.parse_text("$(x) = 1\na $(x)")
    assert p.warnings == []


@pytest.mark.parametrize("text, message, line", [
    pytest.param("$(foo) = bar baz\ndir aaa/$(foo)/bbb",
                 "can't expand macro with multiple arguments inside a string", 2,
                 id="multi inside a string"),
    pytest.param("$(foo) =", "macro $(foo) needs at least one value", 1, id="no value"),
    pytest.param("$(foo) a b", "missing = in the declaration of macro $(foo)", 1, id="missing ="),
    pytest.param("$(foo)", "missing = in the declaration of macro $(foo)", 1, id="bare"),
    pytest.param('$(foo) "=" a', "missing = in the declaration of macro $(foo)", 1,
                 id="quoted = is not ="),
    pytest.param("$(foo) = a b\n$(foo) 1", "missing = in the declaration of macro $(foo)", 2,
                 id="macro as directive name"),
    pytest.param("x$(foo) 1", "a macro cannot be used as a directive name", 1,
                 id="macro inside a directive name"),
    pytest.param("a {\n  $(foo) = a b\n}", "macro declarations are only allowed at top level", 2,
                 id="macro in a block"),
    pytest.param("$(foo) = a {\n}", "macro $(foo) cannot have a block", 1, id="macro with block"),
])
def test_macro_errors(text, message, line):
    e = error(text)
    assert (e.message, e.line) == (message, line)


# -- snippets ----------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    pytest.param("(foo) { a }\nimport foo", [("a", [], None, 1)], id="at root"),
    pytest.param("(foo) { a }\nfoo {\n  boo\n  import foo\n}",
                 [("foo", [], [("boo", [], None, 3), ("a", [], None, 1)], 2)],
                 id="inside a block, keeping its own lines"),
    pytest.param("(s) {\n  x 1\n  y {\n    z\n  }\n}\nimport s\nimport s",
                 [("x", ["1"], None, 2), ("y", [], [("z", [], None, 4)], 3)] * 2,
                 id="imported twice"),
    pytest.param("(a) { x }\n(b) {\n  import a\n  y\n}\nimport b",
                 [("x", [], None, 1), ("y", [], None, 4)], id="snippet importing a snippet"),
    pytest.param("(s) {\n}\nimport s\nz", [("z", [], None, 4)], id="empty snippet"),
])
def test_snippets(text, expected):
    assert parse(text) == expected


def test_each_import_of_a_snippet_is_a_copy():
    p = Parser({"V": "value"})
    nodes = p.parse_text("(s) { a {env:V} }\nimport s\nimport s")
    assert [n.args for n in nodes] == [["value"], ["value"]]
    assert nodes[0] is not nodes[1]
    # The stored snippet is untouched by the expansion of its copies.
    assert p.snippets["s"][0].args == ["{env:V}"]


@pytest.mark.parametrize("text, message, line", [
    pytest.param("(foo) a b c { }", "snippet (foo) cannot have arguments", 1, id="with args"),
    pytest.param("abc {\n  (foo) { }\n}", "snippets can only be defined at top level", 2,
                 id="inside a block"),
    pytest.param("(foo)\nimport foo", "snippet (foo) needs a block", 1, id="without block"),
    pytest.param("(foo) { import foo }\nimport foo", "unknown import: foo", 1,
                 id="recursive snippet"),
    pytest.param("import", "import needs exactly one argument", 1, id="import without arg"),
    pytest.param("import a b", "import needs exactly one argument", 1, id="import with two args"),
    pytest.param("(a) { x }\nimport a {\n}", "import cannot have a block", 2, id="import block"),
    pytest.param("import $(undefined)", "import needs exactly one argument", 1,
                 id="import of an undefined macro"),
])
def test_snippet_errors(text, message, line, tmp_path):
    e = error(text, file=str(tmp_path / "main.conf"))
    assert (e.message, e.line) == (message, line)


def test_deep_snippet_spliced_into_a_deep_block_hits_the_nesting_limit():
    # Regression: splicing used copy.deepcopy, which overflowed the Python
    # stack (RecursionError) instead of reporting the nesting limit.
    deep = 200
    snippet = "(s) {\n" + "a {\n" * deep + "}\n" * deep + "}\n"
    assert len(parse_text(snippet + "import s\n", environ={})) == 1
    outer = MAX_NESTING - deep
    fits = snippet + "b {\n" * outer + "import s\n" + "}\n" * outer
    assert len(parse_text(fits, environ={})) == 1
    too_deep = snippet + "b {\n" * (outer + 1) + "import s\n" + "}\n" * (outer + 1)
    e = error(too_deep)
    assert e.message == "nesting limit reached"
    snippet_lines = 2 * deep + 2
    assert e.line == snippet_lines + (outer + 1) + 1     # the import line


def test_snippets_compounding_past_the_nesting_limit():
    half = MAX_NESTING // 2 + 1
    text = ("(s) {\n" + "a {\n" * half + "}\n" * half + "}\n"
            "(t) {\n" + "b {\n" * half + "import s\n" + "}\n" * half + "}\n")
    assert error(text).message == "nesting limit reached"


# -- imports of files ---------------------------------------------------------------

def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_import_is_relative_to_the_importing_file(tmp_path):
    main = write(tmp_path / "main.conf", "first\nimport sub/b.conf\nlast")
    b = write(tmp_path / "sub" / "b.conf", "from_b\nimport c\n")
    c = write(tmp_path / "sub" / "c.conf", "from_c x")
    write(tmp_path / "c.conf", "wrong_c")          # beside main.conf: must not be used
    nodes, _ = parse_file(main, environ={})
    assert [(n.name, n.file, n.line) for n in nodes] == [
        ("first", main, 1), ("from_b", b, 1), ("from_c", c, 1), ("last", main, 3)]


def test_import_name_resolution(tmp_path):
    write(tmp_path / "x", "plain_x")
    write(tmp_path / "x.conf", "x_dot_conf")
    write(tmp_path / "y.conf", "y_dot_conf")
    absolute = write(tmp_path / "elsewhere" / "abs.conf", "absolute")
    main = write(tmp_path / "main.conf",
                 f"import x\nimport y\nimport {absolute}\n(y) {{ snippet_y }}\nimport y\n")
    nodes, _ = parse_file(main, environ={})
    assert [n.name for n in nodes] == ["plain_x", "y_dot_conf", "absolute", "snippet_y"]


def test_import_inside_a_block(tmp_path):
    write(tmp_path / "common.conf", "a 1\nb {\n  c\n}")
    main = write(tmp_path / "main.conf", "blk {\n  import common\n}")
    nodes, _ = parse_file(main, environ={})
    assert tree(nodes) == [("blk", [], [("a", ["1"], None, 1), ("b", [], [("c", [], None, 3)], 2)],
                            1)]


def test_imported_file_defines_macros_and_snippets_for_the_importer(tmp_path):
    write(tmp_path / "defs.conf", "$(domains) = a.org b.org\n(snip) {\n  from_snippet $(domains)\n}")
    main = write(tmp_path / "main.conf", "import defs\nuse $(domains)\nimport snip")
    nodes, parser = parse_file(main, environ={})
    assert tree(nodes) == [("use", ["a.org", "b.org"], None, 2),
                           ("from_snippet", ["a.org", "b.org"], None, 3)]
    assert parser.macros == {"domains": ["a.org", "b.org"]}


def test_import_inside_a_block_cannot_define_macros(tmp_path):
    write(tmp_path / "defs.conf", "$(m) = 1")
    main = write(tmp_path / "main.conf", "blk {\n  import defs\n}")
    with pytest.raises(ConfigError) as e:
        parse_file(main, environ={})
    assert str(e.value).startswith(f"{tmp_path / 'defs.conf'}:1: macro declarations are only")


def test_snippet_imports_are_relative_to_the_file_defining_the_snippet(tmp_path):
    write(tmp_path / "lib" / "defs.conf", "(s) {\n  import part\n}")
    write(tmp_path / "lib" / "part.conf", "from_lib_part")
    write(tmp_path / "part.conf", "from_top_part")
    main = write(tmp_path / "main.conf", "import lib/defs\nimport s")
    nodes, _ = parse_file(main, environ={})
    assert [n.name for n in nodes] == ["from_lib_part"]


def test_import_env_is_not_expanded_before_the_import(tmp_path):
    write(tmp_path / "{env:X}", "literal_name")
    main = write(tmp_path / "main.conf", "import {env:X}")
    nodes, _ = parse_file(main, environ={"X": "other"})
    assert [n.name for n in nodes] == ["literal_name"]


def test_unknown_import(tmp_path):
    (tmp_path / "adir").mkdir()
    main = write(tmp_path / "main.conf", "a\nimport nothing_here\n")
    with pytest.raises(ConfigError) as e:
        parse_file(main, environ={})
    assert str(e.value).startswith(f"{main}:2: unknown import: nothing_here (")
    main = write(tmp_path / "main.conf", "import adir")
    with pytest.raises(ConfigError) as e:
        parse_file(main, environ={})
    assert e.value.message == "unknown import: adir"


def test_file_importing_itself(tmp_path):
    main = write(tmp_path / "main.conf", "a\nimport main.conf\n")
    with pytest.raises(ConfigError) as e:
        parse_file(main, environ={})
    assert str(e.value) == f"{main}:2: import loop: {main} -> {main}"


def test_import_loop_through_another_file(tmp_path):
    a = write(tmp_path / "a.conf", "import b\n")
    b = write(tmp_path / "b.conf", "x\nimport a.conf\n")
    with pytest.raises(ConfigError) as e:
        parse_file(a, environ={})
    assert str(e.value) == f"{b}:2: import loop: {a} -> {b} -> {a}"


def test_importing_the_same_file_twice_is_not_a_loop(tmp_path):
    write(tmp_path / "part.conf", "p")
    main = write(tmp_path / "main.conf", "import part\nimport part\n")
    nodes, _ = parse_file(main, environ={})
    assert [n.name for n in nodes] == ["p", "p"]


def test_import_expansion_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(parser_mod, "MAX_IMPORT_DEPTH", 2)
    write(tmp_path / "c.conf", "import d")
    write(tmp_path / "d.conf", "deep")
    write(tmp_path / "b.conf", "import c")
    main = write(tmp_path / "main.conf", "import b")
    with pytest.raises(ConfigError) as e:
        parse_file(main, environ={})
    assert e.value.message == "hit import expansion limit"
    assert e.value.file == str(tmp_path / "c.conf")


def test_imported_file_in_a_deep_block_counts_towards_the_nesting_limit(tmp_path):
    write(tmp_path / "part.conf", "x {\n  y {\n  }\n}")
    fits = MAX_NESTING - 2
    main = write(tmp_path / "main.conf", "b {\n" * fits + "import part\n" + "}\n" * fits)
    assert len(parse_file(main, environ={})[0]) == 1
    main = write(tmp_path / "main.conf", "b {\n" * (fits + 1) + "import part\n" + "}\n" * (fits + 1))
    with pytest.raises(ConfigError) as e:
        parse_file(main, environ={})
    assert e.value.message == "nesting limit reached"
    assert e.value.file == str(tmp_path / "part.conf")


# -- reading files ------------------------------------------------------------------

def test_parse_file_reads_crlf_and_bom(tmp_path):
    path = tmp_path / "main.conf"
    path.write_bytes(b"\xef\xbb\xbfa 1\r\nb {\r\n  c\r\n}\r\n")
    nodes, _ = parse_file(str(path), environ={})
    assert tree(nodes) == [("a", ["1"], None, 1), ("b", [], [("c", [], None, 3)], 2)]


def test_missing_configuration_file(tmp_path):
    path = str(tmp_path / "absent.conf")
    with pytest.raises(ConfigError) as e:
        parse_file(path)
    assert str(e.value) == f"{path}: cannot read configuration: No such file or directory"


def test_non_utf8_file_names_the_line(tmp_path):
    path = tmp_path / "main.conf"
    path.write_bytes(b"a\nb\nc \xff\xfe\n")
    with pytest.raises(ConfigError) as e:
        parse_file(str(path))
    assert str(e.value) == f"{path}:3: the file is not valid UTF-8"


def test_non_utf8_imported_file(tmp_path):
    (tmp_path / "bad.conf").write_bytes(b"ok\n\x80\n")
    main = write(tmp_path / "main.conf", "import bad")
    with pytest.raises(ConfigError) as e:
        parse_file(main)
    assert str(e.value) == f"{tmp_path / 'bad.conf'}:2: the file is not valid UTF-8"


def test_unreadable_imported_file(tmp_path, monkeypatch):
    part = write(tmp_path / "part.conf", "p")
    main = write(tmp_path / "main.conf", "x\nimport part")
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == part:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(parser_mod, "open", fake_open, raising=False)
    with pytest.raises(ConfigError) as e:
        parse_file(main)
    assert str(e.value) == f"{main}:2: cannot read imported file {part}: Permission denied"


def test_parse_text_imports_relative_to_the_working_directory(tmp_path, monkeypatch):
    write(tmp_path / "here.conf", "from_cwd")
    monkeypatch.chdir(tmp_path)
    assert [n.name for n in parse_text("import here", environ={})] == ["from_cwd"]


# -- nodes --------------------------------------------------------------------------

def test_node_helpers():
    node = parse_text("a {\n  b x\n}", "f.conf", environ={})[0]
    assert node.location == "f.conf:1"
    assert node.block[0].location == "f.conf:2"
    assert node.block[0].block == []                  # no block reads as empty
    err = node.block[0].error("bad", hint="fix it")
    assert str(err) == "f.conf:2: bad (fix it)"


def test_dump_round_trips():
    text = ('top "two words" "" "with \\"quote\\"" "#hash" "{" x\n'
            "blk arg {\n  child 1\n  inner {\n  }\n  deeper {\n    leaf\n  }\n}\n"
            "plain\n")
    nodes = parse_text(text, environ={})
    dumped = "".join(n.dump() for n in nodes)
    assert dumped.startswith('top "two words" "" "with \\"quote\\"" "#hash" "{" x\n')
    assert "    inner {\n    }\n" in dumped
    assert tree(parse_text(dumped, environ={})) == tree(nodes)


def test_node_default_values():
    n = Node("x")
    assert (n.args, n.children, n.block, n.location) == ([], None, [], "<config>:0")


def test_structure_reader_without_a_final_line_end():
    # tokenize() always ends with a line end; the structure reader does not rely on it.
    from gmta.config.lexer import Kind, Token
    from gmta.config.parser import _read_block

    directives = _read_block([Token(Kind.WORD, "a", "f", 1), Token(Kind.WORD, "b", "f", 1)], "f")
    assert [(d.name.text, [a.text for a in d.args], d.children) for d in directives] == [
        ("a", ["b"], None)]
