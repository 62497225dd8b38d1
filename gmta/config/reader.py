"""The one typed reader every module uses for its configuration block.

A module declares its directives as a tuple of :class:`Directive` (name, type,
default, whether it is required, whether it inherits the global value, whether
it may repeat). :func:`read_block` checks a block against that declaration, so
unknown, duplicate and missing directives are reported the same way in every
module, with ``file:line:`` and a hint, and returns a :class:`Values` object.

Types are small callables that turn a directive node into a value; they raise
``ValueError`` with a plain sentence, which the reader prefixes with the
location and the directive's name.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from gmta.config import values as v
from gmta.config.parser import Node
from gmta.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from gmta.config.loader import Context


class ValueType:
    """Base of directive types: ``type(node, ctx) -> value``."""

    syntax = "value"
    takes_block = False
    takes_args = True

    def __call__(self, node: Node, ctx: "Context") -> Any:
        if node.children is not None and not self.takes_block:
            raise node.error(f"{node.name} does not take a block")
        if node.args and not self.takes_args:
            raise node.error(f"{node.name} takes no arguments", hint=f"write {node.name} {{ ... }}")
        try:
            return self.parse(node, ctx)
        except ValueError as e:
            raise node.error(f"{node.name}: {e}") from None

    def parse(self, node: Node, ctx: "Context") -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class String(ValueType):
    syntax = "string"

    def parse(self, node, ctx):
        if len(node.args) != 1:
            raise ValueError("expected exactly one argument")
        return node.args[0]


class Strings(ValueType):
    """One or more words (``minimum`` = 0 allows none)."""

    syntax = "string..."

    def __init__(self, minimum: int = 1):
        self.minimum = minimum

    def parse(self, node, ctx):
        if len(node.args) < self.minimum:
            raise ValueError(f"expected at least {self.minimum} argument(s)")
        return list(node.args)


class Bool(ValueType):
    syntax = "boolean"

    def parse(self, node, ctx):
        return v.parse_bool(node.args)


class Int(ValueType):
    syntax = "integer"

    def __init__(self, minimum: int | None = None, maximum: int | None = None):
        self.minimum = minimum
        self.maximum = maximum

    def parse(self, node, ctx):
        return v.parse_int(node.args, self.minimum, self.maximum)


class Float(ValueType):
    syntax = "number"

    def __init__(self, minimum: float | None = None):
        self.minimum = minimum

    def parse(self, node, ctx):
        if len(node.args) != 1:
            raise ValueError("expected one number")
        try:
            value = float(node.args[0])
        except ValueError:
            raise ValueError(f"invalid number {node.args[0]!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"invalid number {node.args[0]!r}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{value:g} is too small: the minimum is {self.minimum:g}")
        return value


class Duration(ValueType):
    syntax = "duration"

    def parse(self, node, ctx):
        return v.parse_duration(node.args)


class Size(ValueType):
    syntax = "size"

    def parse(self, node, ctx):
        return v.parse_size(node.args)


class Enum(ValueType):
    def __init__(self, *choices: str):
        self.choices = choices
        self.syntax = "|".join(choices)

    def parse(self, node, ctx):
        if len(node.args) != 1:
            raise ValueError(f"expected one of {', '.join(self.choices)}")
        word = node.args[0].lower()
        if word not in self.choices:
            raise ValueError(f"invalid value {node.args[0]!r}: expected one of "
                             f"{', '.join(self.choices)}")
        return word


class Endpoints(ValueType):
    """One or more ``tcp://``, ``tls://`` or ``unix://`` addresses."""

    syntax = "endpoint..."

    def parse(self, node, ctx):
        if not node.args:
            raise ValueError("expected at least one address such as tcp://127.0.0.1:25")
        return [v.parse_endpoint(a, ctx.runtime_dir) for a in node.args]


class Path(ValueType):
    """A file system path; relative paths are relative to ``state_dir``."""

    syntax = "path"

    def parse(self, node, ctx):
        if len(node.args) != 1 or not node.args[0]:
            raise ValueError("expected one path")
        return ctx.state_path(node.args[0])


class Domain(ValueType):
    """A host or domain name, kept as given and checked to be encodable as IDNA."""

    syntax = "domain"

    def parse(self, node, ctx):
        if len(node.args) != 1:
            raise ValueError("expected one domain name")
        return check_domain(node.args[0])


def check_domain(name: str) -> str:
    text = name.rstrip(".")
    if not text or len(text) > 253 or any(c.isspace() for c in text) \
            or any(not label for label in text.split(".")):
        raise ValueError(f"invalid domain name {name!r}")
    try:
        text.encode("idna")
    except UnicodeError:
        # For an ASCII name this means a label longer than 63 octets.
        what = "domain name" if text.isascii() else "internationalised domain name"
        raise ValueError(f"invalid {what} {name!r}") from None
    return name


class Custom(ValueType):
    """A type defined by a function ``fn(node, ctx) -> value``.

    The function checks blocks and arguments itself, so it may accept both.
    """

    takes_block = True

    def __init__(self, fn: Callable[[Node, "Context"], Any], syntax: str = "..."):
        self.fn = fn
        self.syntax = syntax

    def parse(self, node, ctx):
        return self.fn(node, ctx)


class ModuleRef(ValueType):
    """A reference to a module instance: ``&name``, ``module args...``, or ``{ ... }``.

    *kind* is what the instance must provide (``target``, ``table``, ...);
    the module name is looked up as ``kind.name`` first, then as ``name``.
    *block_module* is the module used for a bare block (``limits { ... }``).
    """

    takes_block = True

    def __init__(self, kind: str, block_module: str | None = None):
        self.kind = kind
        self.block_module = block_module
        self.syntax = f"&name | {kind} module" + (" | { ... }" if block_module else "")

    def parse(self, node, ctx):
        return ctx.instance_from_node(node, self.kind, self.block_module)


_NO_DEFAULT = object()


@dataclass(frozen=True)
class Directive:
    """Declaration of one directive a module accepts."""

    name: str
    type: ValueType
    default: Any = None
    required: bool = False
    inherit_global: bool = False
    repeat: bool = False
    doc: str = ""


class Values:
    """The values read from one block, by directive name (``values.max_tries``).

    ``nodes[name]`` keeps the node each value came from, so a module can
    report a semantic error at the right line; ``rest`` holds the directives a
    module asked to handle itself (``allow_unknown``).
    """

    def __init__(self, block_node: Node | None):
        self.block_node = block_node
        self.nodes: dict[str, Node | list[Node]] = {}
        self.rest: list[Node] = []
        self._values: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def given(self, name: str) -> bool:
        """Whether the directive was written in this block (not defaulted or inherited)."""
        return name in self.nodes

    def error(self, name: str, message: str, hint: str | None = None) -> ConfigError:
        """An error located at directive *name*, or at the block if it was not written."""
        node = self.nodes.get(name)
        if isinstance(node, list):
            node = node[0]
        node = node or self.block_node
        if node is None:
            return ConfigError(message, hint=hint)
        return node.error(message, hint)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


def read_block(block_node: Node | None, children: list[Node], directives: tuple[Directive, ...],
               ctx: "Context", allow_unknown: bool = False,
               global_values: "Values | None" = None) -> Values:
    """Read *children* against *directives*; see the module docstring."""
    by_name = {d.name: d for d in directives}
    values = Values(block_node)
    for child in children:
        spec = by_name.get(child.name)
        if spec is None:
            if allow_unknown:
                values.rest.append(child)
                continue
            raise unknown_directive(child, by_name)
        if spec.repeat:
            values.nodes.setdefault(spec.name, []).append(child)
            values._values.setdefault(spec.name, []).append(spec.type(child, ctx))
            continue
        if spec.name in values.nodes:
            first = values.nodes[spec.name]
            raise child.error(f"duplicate directive: {child.name}",
                              hint=f"first given at {first.location}")
        values.nodes[spec.name] = child
        values._values[spec.name] = spec.type(child, ctx)

    for spec in directives:
        if spec.name in values._values:
            continue
        if spec.inherit_global and global_values is not None and global_values.given(spec.name):
            values._values[spec.name] = global_values[spec.name]
            continue
        if spec.required:
            where = block_node.error if block_node is not None else ConfigError
            hint = ("set it in this block or as a global directive" if spec.inherit_global
                    else f"add '{spec.name} {spec.type.syntax}' to this block")
            raise where(f"missing required directive: {spec.name}", hint=hint)
        default = spec.default
        if spec.repeat and default is None:
            default = []
        values._values[spec.name] = default
    return values


def unknown_directive(node: Node, known: dict[str, Directive] | list[str]) -> ConfigError:
    names = sorted(known)
    close = difflib.get_close_matches(node.name, names, n=1)
    if close:
        hint = f"did you mean {close[0]}?"
    elif names:
        hint = "expected one of: " + ", ".join(names)
    else:
        hint = "this block takes no directives"
    return node.error(f"unexpected directive: {node.name}", hint=hint)


def state_relative(state_dir: str, path: str) -> str:
    """*path* made absolute against *state_dir*, as maddy's chdir into it does."""
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(state_dir, path))
