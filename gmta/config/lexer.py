"""Tokeniser of maddy's configuration language (maddy-behaviour §1.1).

The lexer turns text into words, braces and line ends; it knows nothing about
directives. Rules, in the order they apply to each character:

* Inside ``"..."`` everything is literal, newlines included; the only escape
  is ``\\"``. As in maddy, a backslash always takes the next character
  with it: before ``"`` it yields the quote, before anything else both are
  kept, so ``"a\\\\"`` is ``a\\\\`` and ends at its final quote.
* ``#`` outside quotes starts a comment that runs to the end of the line.
* Spaces and tabs separate words; ``\\r`` is ignored so CRLF files work.
* A ``\\`` at the end of a line (alone, or ending the last unquoted word, as
  maddy allows) joins the next line to this one.
* A byte order mark at the start of the text is ignored, as in maddy.
* ``{`` and ``}`` are braces only when they stand alone as a word, so
  ``{env:HOME}`` is an ordinary word and so is a quoted ``"{"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from gmta.errors import ConfigError


class Kind(Enum):
    WORD = "word"
    OPEN = "{"
    CLOSE = "}"
    NEWLINE = "newline"


@dataclass(frozen=True)
class Token:
    kind: Kind
    text: str
    file: str
    line: int
    quoted: bool = False


def tokenize(text: str, file: str) -> list[Token]:
    """Split *text* into tokens; consecutive line ends collapse into one."""
    tokens: list[Token] = []
    line = 1
    i = 0
    n = len(text)

    def newline(at_line: int) -> None:
        if tokens and tokens[-1].kind is not Kind.NEWLINE:
            tokens.append(Token(Kind.NEWLINE, "\n", file, at_line))

    def continuation() -> bool:
        """Drop a trailing ``\\`` of the line's last word; True if there was one."""
        last = tokens[-1] if tokens else None
        if last is None or last.kind is not Kind.WORD or last.quoted \
                or not last.text.endswith("\\"):
            return False
        tokens.pop()
        if last.text != "\\":
            tokens.append(Token(Kind.WORD, last.text[:-1], file, last.line))
        return True

    if text.startswith("\ufeff"):
        i = 1
    while i < n:
        ch = text[i]
        if ch == "\n":
            # A line ending in a backslash continues on the next line.
            if not continuation():
                newline(line)
            line += 1
            i += 1
        elif ch in " \t\r\f\v":
            i += 1
        elif ch == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif ch == '"':
            start_line = line
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise ConfigError("unterminated quoted string", file, start_line,
                                      hint='add the closing "')
                ch = text[i]
                if ch == "\\" and i + 1 < n:
                    nxt = text[i + 1]
                    if nxt != '"':
                        chars.append("\\")
                    if nxt == "\n":
                        line += 1
                    chars.append(nxt)
                    i += 2
                    continue
                if ch == '"':
                    i += 1
                    break
                if ch == "\n":
                    line += 1
                chars.append(ch)
                i += 1
            tokens.append(Token(Kind.WORD, "".join(chars), file, start_line, quoted=True))
        else:
            start = i
            while i < n and text[i] not in " \t\r\f\v\n#":
                i += 1
            word = text[start:i]
            if word == "{":
                tokens.append(Token(Kind.OPEN, word, file, line))
            elif word == "}":
                tokens.append(Token(Kind.CLOSE, word, file, line))
            else:
                tokens.append(Token(Kind.WORD, word, file, line))
    continuation()
    newline(line)
    return tokens
