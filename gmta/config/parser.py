"""From tokens to a tree of directives (maddy-behaviour §1.1–§1.2).

A configuration is a list of directives ``name arg... [{ children }]``.
While it builds the tree the parser also expands the three compile-time
features of the language, in document order, exactly once:

* macros ``$(name) = value...`` (top level only), used as a whole argument
  (every value becomes an argument) or inside a word (single-valued only);
* snippets ``(name) { ... }`` (top level only) and ``import``, which splices
  a snippet, a file relative to the importing file, or ``X.conf``;
* ``{env:VAR}`` in names and arguments, done last over the whole tree, so an
  unset variable is an empty argument and ``import {env:X}`` is not special.

Errors are :class:`~gmta.errors.ConfigError` with the file and line of the
token at fault. Warnings (legal but suspicious input, such as a macro that is
not defined) are collected on the :class:`Parser` for ``check-config``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from gmta.config.lexer import Kind, Token, tokenize
from gmta.errors import ConfigError

# maddy stops at 255 nested blocks; the limit keeps a hostile file from
# exhausting the Python stack.
MAX_NESTING = 255
# Imports may nest (a file importing a file); loops are reported by name long
# before this, which only bounds pathological but loop-free chains.
MAX_IMPORT_DEPTH = 50

_NAME_RE = re.compile(r"[A-Za-z_.\-][A-Za-z0-9_.\-]*\Z")
_MACRO_DECL_RE = re.compile(r"\$\(([A-Za-z0-9_.\-]+)\)\Z")
_MACRO_USE_RE = re.compile(r"\$\(([A-Za-z0-9_.\-]+)\)")
_SNIPPET_RE = re.compile(r"\(([A-Za-z0-9_.\-]+)\)\Z")
_ENV_RE = re.compile(r"\{env:([A-Za-z0-9_]+)\}")


@dataclass
class Node:
    """One directive: ``name args...`` with an optional block of children.

    ``children`` is ``None`` when the directive has no block at all and a
    (possibly empty) list when it has one; ``x { }`` and ``x`` mean the same
    to almost every reader, but a few (``tls {}``) care.
    """

    name: str
    args: list[str] = field(default_factory=list)
    children: list["Node"] | None = None
    file: str = "<config>"
    line: int = 0

    @property
    def block(self) -> list["Node"]:
        return self.children or []

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"

    def error(self, message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(message, self.file, self.line, hint)

    def dump(self, indent: int = 0) -> str:
        """The node back as configuration text (used by tests and debug output)."""
        pad = "    " * indent
        words = " ".join([_quote(self.name)] + [_quote(a) for a in self.args])
        if self.children is None:
            return pad + words + "\n"
        inner = "".join(c.dump(indent + 1) for c in self.children)
        return f"{pad}{words} {{\n{inner}{pad}}}\n"


def _quote(word: str) -> str:
    if word and not re.search(r'[\s"#{}\\]', word):
        return word
    return '"' + word.replace('"', '\\"') + '"'


@dataclass
class _Directive:
    """A directive as read from tokens, before macro/snippet/import expansion."""

    name: Token
    args: list[Token]
    children: list["_Directive"] | None


class Parser:
    """Parses one configuration file and everything it imports.

    Macros and snippets live on the parser, so an imported file can define
    them for the importer, as in maddy.
    """

    def __init__(self, environ: dict[str, str] | None = None):
        self.environ = dict(os.environ if environ is None else environ)
        self.macros: dict[str, list[str]] = {}
        self.snippets: dict[str, list[Node]] = {}
        self.warnings: list[ConfigError] = []
        self._import_stack: list[str] = []

    # -- entry points ---------------------------------------------------------

    def parse_file(self, path: str) -> list[Node]:
        text = self._read(path, None)
        return self.parse_text(text, path)

    def parse_text(self, text: str, file: str = "<config>") -> list[Node]:
        self._import_stack.append(_import_key(file))
        try:
            directives = _read_block(tokenize(text, file), file)
            nodes = self._expand(directives, file, top_level=True)
        finally:
            self._import_stack.pop()
        for node in nodes:
            self._expand_env(node)
        return nodes

    # -- reading files ---------------------------------------------------------

    def _read(self, path: str, at: Token | None) -> str:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            reason = e.strerror or str(e)
            if at is None:
                raise ConfigError(f"cannot read configuration: {reason}", path) from None
            raise ConfigError(f"cannot read imported file {path}: {reason}",
                              at.file, at.line) from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[:e.start].count(b"\n") + 1
            raise ConfigError("the file is not valid UTF-8", path, line) from None

    # -- expansion of macros, snippets and imports ----------------------------

    def _expand(self, directives: list[_Directive], file: str, top_level: bool,
                depth: int = 0, nesting: int = 0) -> list[Node]:
        """Expand *directives*; *depth* counts file imports, *nesting* enclosing blocks."""
        out: list[Node] = []
        for d in directives:
            name = d.name.text
            if not d.name.quoted and _MACRO_DECL_RE.match(name):
                self._define_macro(d, top_level)
                continue
            if not d.name.quoted and _SNIPPET_RE.match(name):
                self._define_snippet(d, top_level)
                continue
            if name == "import" and not d.name.quoted:
                out.extend(self._import(d, file, top_level, depth, nesting))
                continue
            if not d.name.quoted and _MACRO_USE_RE.search(name):
                raise ConfigError("a macro cannot be used as a directive name",
                                  d.name.file, d.name.line,
                                  hint="macros may only appear in arguments")
            args = self._expand_args(d.args)
            children = None
            if d.children is not None:
                children = self._expand(d.children, file, top_level=False, depth=depth,
                                        nesting=nesting + 1)
            out.append(Node(name, args, children, d.name.file, d.name.line))
        return out

    def _define_macro(self, d: _Directive, top_level: bool) -> None:
        name = _MACRO_DECL_RE.match(d.name.text).group(1)
        where = (d.name.file, d.name.line)
        if not top_level:
            raise ConfigError("macro declarations are only allowed at top level", *where)
        if d.children is not None:
            raise ConfigError(f"macro $({name}) cannot have a block", *where)
        if not d.args or d.args[0].text != "=" or d.args[0].quoted:
            raise ConfigError(f"missing = in the declaration of macro $({name})", *where,
                              hint=f"write $({name}) = value")
        if len(d.args) == 1:
            raise ConfigError(f"macro $({name}) needs at least one value", *where,
                              hint=f"write $({name}) = value")
        self.macros[name] = self._expand_args(d.args[1:])

    def _define_snippet(self, d: _Directive, top_level: bool) -> None:
        name = _SNIPPET_RE.match(d.name.text).group(1)
        where = (d.name.file, d.name.line)
        if not top_level:
            raise ConfigError("snippets can only be defined at top level", *where)
        if d.args:
            raise ConfigError(f"snippet ({name}) cannot have arguments", *where)
        if d.children is None:
            raise ConfigError(f"snippet ({name}) needs a block", *where,
                              hint=f"write ({name}) {{ ... }}")
        # The body is expanded now, where it is defined: maddy expands macros
        # in document order, so a snippet sees the macros defined before it
        # and not those defined after it; imports inside it are relative to
        # the file that defines it.
        self.snippets[name] = self._expand(d.children, d.name.file, top_level=False)

    def _import(self, d: _Directive, file: str, top_level: bool, depth: int,
                nesting: int) -> list[Node]:
        where = (d.name.file, d.name.line)
        if d.children is not None:
            raise ConfigError("import cannot have a block", *where)
        args = self._expand_args(d.args)
        if len(args) != 1:
            raise ConfigError("import needs exactly one argument", *where,
                              hint="import SNIPPET, import FILE or import FILE.conf")
        target = args[0]
        if depth >= MAX_IMPORT_DEPTH:
            raise ConfigError("hit import expansion limit", *where)

        if target in self.snippets:
            body = self.snippets[target]
            # A snippet spliced into a deep block (or into another snippet)
            # must still respect the nesting limit that bounds recursion.
            if nesting + _height(body) > MAX_NESTING:
                raise ConfigError("nesting limit reached", *where,
                                  hint=f"snippet ({target}) is too deeply nested here")
            # Each import gets its own copy: later passes (env expansion)
            # change nodes in place.
            return _copy_nodes(body)

        path = target
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(os.path.abspath(d.name.file)), path)
        if not os.path.isfile(path) and os.path.isfile(path + ".conf"):
            path += ".conf"
        if not os.path.isfile(path):
            raise ConfigError(f"unknown import: {target}", *where,
                              hint="no snippet of that name, and no file "
                                   f"{path} or {path}.conf")
        self._enter_import(_import_key(path), d)
        try:
            text = self._read(path, d.name)
            directives = _read_block(tokenize(text, path), path, nesting)
            return self._expand(directives, path, top_level, depth + 1, nesting)
        finally:
            self._import_stack.pop()

    def _enter_import(self, key: str, d: _Directive) -> None:
        if key in self._import_stack:
            chain = " -> ".join(self._import_stack[self._import_stack.index(key):] + [key])
            raise ConfigError(f"import loop: {chain}", d.name.file, d.name.line)
        self._import_stack.append(key)

    def _expand_args(self, tokens: list[Token]) -> list[str]:
        out: list[str] = []
        for t in tokens:
            whole = None if t.quoted else _MACRO_DECL_RE.match(t.text)
            if whole:
                values = self.macros.get(whole.group(1))
                if values is None:
                    self._warn_undefined(whole.group(1), t)
                    values = []
                out.extend(values)
                continue
            out.append(self._expand_in_word(t))
        return out

    def _expand_in_word(self, t: Token) -> str:
        def substitute(m: re.Match) -> str:
            values = self.macros.get(m.group(1))
            if values is None:
                self._warn_undefined(m.group(1), t)
                return ""
            if len(values) != 1:
                raise ConfigError("can't expand macro with multiple arguments inside a string",
                                  t.file, t.line,
                                  hint=f"$({m.group(1)}) has {len(values)} values")
            return values[0]
        return _MACRO_USE_RE.sub(substitute, t.text)

    def _warn_undefined(self, name: str, t: Token) -> None:
        self.warnings.append(ConfigError(
            f"warning: macro $({name}) is not defined and expands to nothing", t.file, t.line))

    # -- environment ------------------------------------------------------------

    def _expand_env(self, node: Node) -> None:
        def substitute(m: re.Match) -> str:
            return self.environ.get(m.group(1), "")
        if _ENV_RE.search(node.name):
            node.name = _ENV_RE.sub(substitute, node.name)
            if not _NAME_RE.match(node.name):
                raise node.error(f"invalid directive name after {{env:}} expansion: {node.name!r}")
        node.args = [_ENV_RE.sub(substitute, a) for a in node.args]
        for child in node.block:
            self._expand_env(child)


def _height(nodes: list[Node]) -> int:
    """How many block levels lie below *nodes* (0 when none has a block)."""
    return max((1 + _height(n.children) for n in nodes if n.children is not None), default=0)


def _copy_nodes(nodes: list[Node]) -> list[Node]:
    """A copy of a tree (``copy.deepcopy`` needs several frames per level and
    overflows the stack well before the nesting limit)."""
    return [Node(n.name, list(n.args), None if n.children is None else _copy_nodes(n.children),
                 n.file, n.line) for n in nodes]


def _import_key(path: str) -> str:
    return os.path.abspath(path) if not path.startswith("<") else path


def _read_block(tokens: list[Token], file: str, nesting: int = 0) -> list[_Directive]:
    """Group tokens into directives and blocks (the structure only).

    *nesting* is the number of blocks around the text (an imported file
    spliced into a block), so the nesting limit covers the whole tree.
    """
    pos = 0

    def parse_body(depth: int, opener: Token | None) -> list[_Directive]:
        nonlocal pos
        out: list[_Directive] = []
        while True:
            t = tokens[pos] if pos < len(tokens) else None
            if t is None:
                if opener is not None:
                    raise ConfigError("missing closing }", opener.file, opener.line,
                                      hint="the block opened here is never closed")
                return out
            if t.kind is Kind.NEWLINE:
                pos += 1
                continue
            if t.kind is Kind.CLOSE:
                if opener is None:
                    raise ConfigError("unexpected }", t.file, t.line,
                                      hint="there is no open block to close")
                pos += 1
                return out
            if t.kind is Kind.OPEN:
                raise ConfigError("block without a directive name", t.file, t.line,
                                  hint="put { at the end of the directive's line")
            out.append(parse_directive(depth))

    def parse_directive(depth: int) -> _Directive:
        nonlocal pos
        name = tokens[pos]
        pos += 1
        if not name.quoted and not _valid_name(name.text):
            if name.text[:1].isdigit():
                raise ConfigError(f"directive name cannot start with a digit: {name.text}",
                                  name.file, name.line)
            raise ConfigError(f"invalid directive name: {name.text}", name.file, name.line,
                              hint="names use letters, digits, '.', '-' and '_'")
        args: list[Token] = []
        children: list[_Directive] | None = None
        while pos < len(tokens):
            t = tokens[pos]
            if t.kind is Kind.WORD:
                if t.text == "{}" and not t.quoted and _ends_line(pos + 1):
                    children = []
                    pos += 1
                    break
                args.append(t)
                pos += 1
            elif t.kind is Kind.OPEN:
                if depth + 1 > MAX_NESTING:
                    raise ConfigError("nesting limit reached", t.file, t.line)
                pos += 1
                children = parse_body(depth + 1, t)
                break
            else:  # NEWLINE or CLOSE ends the directive
                break
        # After a block, or the last argument, the directive must end: a new
        # line, the end of the file, or the } of the enclosing block.
        if pos < len(tokens) and tokens[pos].kind in (Kind.WORD, Kind.OPEN):
            t = tokens[pos]
            raise ConfigError(f"expected a new line after }}, found {t.text!r}", t.file, t.line)
        return _Directive(name, args, children)

    def _ends_line(p: int) -> bool:
        return p >= len(tokens) or tokens[p].kind in (Kind.NEWLINE, Kind.CLOSE)

    return parse_body(nesting, None)


def _valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name)) or bool(_MACRO_DECL_RE.match(name)) \
        or bool(_SNIPPET_RE.match(name)) or bool(_MACRO_USE_RE.search(name)) \
        or bool(_ENV_RE.search(name))


def parse_file(path: str, environ: dict[str, str] | None = None) -> tuple[list[Node], Parser]:
    parser = Parser(environ)
    return parser.parse_file(path), parser


def parse_text(text: str, file: str = "<config>",
               environ: dict[str, str] | None = None) -> list[Node]:
    return Parser(environ).parse_text(text, file)
