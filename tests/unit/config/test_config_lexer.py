"""The tokeniser of the configuration language (maddy-behaviour §1.1)."""

from __future__ import annotations

import pytest

from gmta.config.lexer import Kind, tokenize
from gmta.errors import ConfigError


def words(text: str) -> list[str]:
    """The tokens as short strings: words as is, braces as { }, line ends as '|'."""
    out = []
    for t in tokenize(text, "t.conf"):
        out.append("|" if t.kind is Kind.NEWLINE else t.text)
    return out


@pytest.mark.parametrize("text, expected", [
    ("a b c", ["a", "b", "c", "|"]),
    ("a\tb \f c\v", ["a", "b", "c", "|"]),
    ("a\n\n\n   \nb", ["a", "|", "b", "|"]),            # consecutive line ends collapse
    ("\n\na", ["a", "|"]),                             # no leading line end
    ("", []),
    ("# only a comment\n", []),
    ("a # comment { }\nb", ["a", "|", "b", "|"]),
    ("abc#def ghi\nx", ["abc", "|", "x", "|"]),        # '#' ends a word too
    ('a "b # not a comment"', ["a", "b # not a comment", "|"]),
    ("a\r\nb c\r\n", ["a", "|", "b", "c", "|"]),       # CRLF
    ("a {\n}", ["a", "{", "|", "}", "|"]),
    ("a {env:HOME} {}", ["a", "{env:HOME}", "{}", "|"]),
    ("a b{ }c", ["a", "b{", "}c", "|"]),               # braces only as words of their own
    ('a "{" "}"', ["a", "{", "}", "|"]),
    ('a"b c"', ['a"b', 'c"', "|"]),                    # a quote inside a word is literal
    ('"ab"cd', ["ab", "cd", "|"]),
    ('a ""', ["a", "", "|"]),
])
def test_words(text, expected):
    assert words(text) == expected


def test_braces_are_their_own_kind_only_unquoted():
    tokens = tokenize('a { "{" }', "t.conf")
    assert [t.kind for t in tokens] == [Kind.WORD, Kind.OPEN, Kind.WORD, Kind.CLOSE, Kind.NEWLINE]
    assert tokens[2].quoted and not tokens[0].quoted


def test_tokens_carry_file_and_line():
    tokens = tokenize('a\n  b "multi\nline" c\n\nd', "conf/x.conf")
    located = [(t.text, t.line) for t in tokens if t.kind is Kind.WORD]
    assert located == [("a", 1), ("b", 2), ("multi\nline", 2), ("c", 3), ("d", 5)]
    assert {t.file for t in tokens} == {"conf/x.conf"}


@pytest.mark.parametrize("text, expected", [
    (r'a "say \"hi\""', 'say "hi"'),          # \" is the one escape
    (r'a "C:\dir"', r"C:\dir"),               # other backslashes are kept
    (r'a "\n\t"', r"\n\t"),
    (r'a "x\\"', "x\\\\"),                    # \\ is kept and does not escape the quote
    (r'a "^(.+)\\.(.+)$"', r"^(.+)\\.(.+)$"),
    ('a "one\\\ntwo"', "one\\\ntwo"),         # a backslash before a line end is kept
])
def test_quoted_backslashes(text, expected):
    tokens = tokenize(text, "t.conf")
    assert tokens[1].text == expected
    assert tokens[1].quoted


def test_backslash_newline_inside_quotes_counts_the_line():
    tokens = tokenize('a "x\\\ny"\nb', "t.conf")
    assert [(t.text, t.line) for t in tokens if t.kind is Kind.WORD][-1] == ("b", 3)


@pytest.mark.parametrize("text, line", [
    ('a "never closed', 1),
    ('a\nb "spans\nlines', 2),
    ('a "ends in an escaped quote\\"', 1),
    ('a "ends in a backslash\\', 1),
])
def test_unterminated_quote(text, line):
    with pytest.raises(ConfigError) as e:
        tokenize(text, "t.conf")
    assert str(e.value).startswith(f"t.conf:{line}: unterminated quoted string")


@pytest.mark.parametrize("text, expected", [
    ("a b \\\n  c d\ne", ["a", "b", "c", "d", "|", "e", "|"]),
    ("a b\\\nc", ["a", "b", "c", "|"]),                 # attached to the last word, as in maddy
    ("a b \\ # comment\nc", ["a", "b", "c", "|"]),
    ("a \\\n\\\nb", ["a", "b", "|"]),                   # several continued lines
    ("a b \\", ["a", "b", "|"]),                        # at the end of the file
    ("a \\\n\nb", ["a", "|", "b", "|"]),                # an empty line still ends it
    ('a "x\\\\"\nb', ["a", "x\\\\", "|", "b", "|"]),      # a quoted backslash is no continuation
    ("a b\\c\nd", ["a", "b\\c", "|", "d", "|"]),         # only at the end of the line
])
def test_line_continuation(text, expected):
    assert words(text) == expected


def test_continued_line_keeps_the_first_line_number():
    tokens = [t for t in tokenize("x\na b\\\nc", "t.conf") if t.kind is Kind.WORD]
    assert [(t.text, t.line) for t in tokens] == [("x", 1), ("a", 2), ("b", 2), ("c", 3)]


def test_byte_order_mark_is_ignored():
    assert words("\ufeffhostname x") == ["hostname", "x", "|"]
