"""Loading a whole configuration: globals, named blocks, endpoints (maddy-behaviour §1.4).

Order of work, as in maddy:

1. parse the file (macros, snippets, imports, ``{env:}``);
2. read the global directives, wherever they are in the file;
3. register every other top-level block under its name and aliases, without
   configuring it;
4. configure the endpoints in file order; a block is configured the first
   time something refers to it (``&name``), and its instance exists before
   its own block is read, so reference cycles (queue → bounce pipeline →
   queue) work;
5. report every registered block nothing referred to ("unused configuration
   block"), and require at least one endpoint.

Independent errors (one per endpoint or global) are collected and reported
together; ``check-config`` prints them all.

:func:`load_block` does steps 1–3 and then configures a single named block,
for tools such as ``gmta creds`` that need one block and not the server.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from dataclasses import dataclass, field

from gmta.config import module as registry
from gmta.config.module import Module
from gmta.config.parser import Node, Parser
from gmta.config.reader import (Bool, Custom, Directive, Domain, Int, Values, read_block,
                                state_relative)
from gmta.config.tls import parse_client_tls, parse_server_tls
from gmta.errors import ConfigError, ConfigErrors

DEFAULT_CONFIG = "/etc/gmta/gmta.conf"
DEFAULT_STATE_DIR = "/var/lib/gmta"
DEFAULT_RUNTIME_DIR = "/run/gmta"
#: More processes than this would only share the same cores and spool locks.
MAX_WORKERS = 64

# Modules DESIGN §1.2 promises that are not in this build yet; naming them
# gives a clearer error than "unknown module".
PLANNED_MODULES = frozenset({
    "smtp", "submission", "lmtp", "target.remote",
    "target.maildir", "table.file", "table.static", "table.regexp",
    "table.chain", "table.identity", "modify.replace_rcpt", "modify.replace_sender",
    "modify.dkim", "auth.pass_table", "limits", "mx_auth", "mx_auth.mtasts",
    "mx_auth.sts_preload", "mx_auth.dnssec", "mx_auth.dane", "mx_auth.local_policy",
    "check.spf", "check.dkim",
    "check.require_mx_record", "check.require_matching_rdns", "check.dnsbl",
    "check.authorize_sender", "check.command",
})


@dataclass(frozen=True)
class LogTarget:
    """Where log lines go: ``stderr``, ``stderr_ts``, ``syslog`` or ``file`` (with path)."""

    kind: str
    path: str | None = None


def _parse_log(node: Node, ctx: "Context") -> tuple[LogTarget, ...]:
    if node.children is not None:
        raise node.error("log does not take a block")
    if not node.args:
        raise node.error("log: expected stderr, stderr_ts, syslog, off or a file path")
    targets: list[LogTarget] = []
    args = list(node.args)
    while args:
        word = args.pop(0)
        if word in ("stderr", "stderr_ts", "syslog"):
            targets.append(LogTarget(word))
        elif word == "off":
            if len(node.args) != 1:
                raise node.error("log off cannot be combined with other targets")
        elif word == "file":
            if not args:
                raise node.error("log file: expected a path")
            targets.append(LogTarget("file", ctx.state_path(args.pop(0))))
        elif "/" in word or word.endswith(".log"):
            targets.append(LogTarget("file", ctx.state_path(word)))
        else:
            raise node.error(f"log: unknown target {word!r}",
                             hint="use stderr, stderr_ts, syslog, off, or a file path")
    return tuple(targets)


def parse_dns_server(word: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or a bare IPv6 address → (ip, port)."""
    host, port = word, 53
    if word.startswith("["):
        host, bracket, rest = word[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"invalid DNS server {word!r}: expected [IPv6]:PORT")
        if rest:
            port = _port(rest[1:], word)
    elif word.count(":") == 1:
        host, _, port_text = word.partition(":")
        port = _port(port_text, word)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"invalid DNS server {word!r}: expected an IP address, "
                         "such as 127.0.0.1 or [::1]:53") from None
    return host, port


def _port(text: str, word: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise ValueError(f"invalid port in DNS server {word!r}")
    return int(text)


def _parse_dns_servers(node: Node, ctx: "Context") -> tuple[tuple[str, int], ...]:
    if node.children is not None:
        raise node.error("dns_servers does not take a block")
    if not node.args:
        raise node.error("dns_servers: expected at least one address such as 127.0.0.1:53")
    try:
        return tuple(parse_dns_server(a) for a in node.args)
    except ValueError as e:
        raise node.error(f"dns_servers: {e}") from None


def _parse_run_as(node: Node, ctx: "Context") -> tuple[str, str | None]:
    """``run_as USER [GROUP]``; both must exist here, so check-config catches a typo."""
    import grp
    import pwd

    if node.children is not None or not 1 <= len(node.args) <= 2:
        raise node.error("run_as: expected a user and optionally a group",
                         hint="such as 'run_as gmta' or 'run_as gmta mail'")
    user, group = node.args[0], (node.args[1] if len(node.args) == 2 else None)
    try:
        pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise node.error(f"run_as: no such user: {user}") from None
    if group is not None:
        try:
            grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
        except KeyError:
            raise node.error(f"run_as: no such group: {group}") from None
    return user, group


def _parse_dir(node: Node, ctx: "Context") -> str:
    if node.children is not None or len(node.args) != 1 or not node.args[0]:
        raise node.error(f"{node.name}: expected one directory")
    path = node.args[0]
    # Relative directories are relative to the configuration file, so a
    # checkout's development config can keep its state beside it.
    return os.path.normpath(os.path.join(ctx.config_dir, path))


GLOBAL_DIRECTIVES: tuple[Directive, ...] = (
    Directive("state_dir", Custom(_parse_dir, "directory"), DEFAULT_STATE_DIR,
              doc="where queues and other state live; module paths are relative to it"),
    Directive("runtime_dir", Custom(_parse_dir, "directory"), DEFAULT_RUNTIME_DIR,
              doc="where unix sockets live; relative unix:// paths are relative to it"),
    Directive("hostname", Domain(), doc="this server's name: banner, EHLO, Received"),
    Directive("autogenerated_msg_domain", Domain(),
              doc="domain of the sender and Message-ID of generated messages (DSNs)"),
    Directive("tls", Custom(parse_server_tls, "off | self_signed | [file] CERT KEY... [{ }]"),
              doc="server certificates for endpoints that do not set their own"),
    Directive("tls_client", Custom(parse_client_tls, "{ ... }"),
              doc="client TLS settings for outbound connections"),
    Directive("log", Custom(_parse_log, "stderr | stderr_ts | syslog | off | file PATH"),
              (LogTarget("stderr"),), doc="log destinations"),
    Directive("debug", Bool(), False, doc="verbose logging"),
    Directive("dns_servers", Custom(_parse_dns_servers, "HOST[:PORT]..."), (),
              doc="resolvers to use instead of /etc/resolv.conf"),
    Directive("run_as", Custom(_parse_run_as, "USER [GROUP]"),
              doc="the user (and group) gmta run becomes after binding its listeners as root"),
    Directive("workers", Int(minimum=1, maximum=MAX_WORKERS), 1,
              doc="receiving processes gmta run starts (gmta.daemon.workers); 1 = no supervisor"),
)
GLOBAL_NAMES = frozenset(d.name for d in GLOBAL_DIRECTIVES)

# Kinds and the namespace tried first when a module is named there.
KIND_NAMESPACES = {
    "target": "target", "table": "table", "check": "check", "modify": "modify",
    "auth": "auth", "mx_auth": "mx_auth", "limits": None, "pipeline": None,
}


@dataclass
class _Block:
    """A top-level named block, configured the first time it is referred to."""

    node: Node
    cls: type[Module]
    name: str
    instance: Module | None = None


@dataclass
class LoadedConfig:
    file: str
    globals: Values
    endpoints: list[Module]
    instances: list[Module]
    warnings: list[ConfigError] = field(default_factory=list)

    @property
    def state_dir(self) -> str:
        return self.globals.state_dir

    @property
    def runtime_dir(self) -> str:
        return self.globals.runtime_dir


class Context:
    """What modules see while they are configured."""

    def __init__(self, file: str):
        self.file = file
        self.config_dir = os.path.dirname(os.path.abspath(file)) if not file.startswith("<") \
            else os.getcwd()
        self.globals: Values | None = None
        self.state_dir = DEFAULT_STATE_DIR
        self.runtime_dir = DEFAULT_RUNTIME_DIR
        self.blocks: dict[str, _Block] = {}
        self.instances: list[Module] = []
        self.warnings: list[ConfigError] = []

    # -- paths -----------------------------------------------------------------

    def state_path(self, path: str) -> str:
        """*path* resolved against ``state_dir`` (maddy runs with it as working directory)."""
        return state_relative(self.state_dir, path)

    # -- instances ---------------------------------------------------------------

    def instance_from_node(self, node: Node, kind: str, block_module: str | None = None) -> Module:
        """The instance a directive names: ``&ref``, ``module args { }`` or a bare block."""
        args = node.args
        if not args:
            if block_module is not None and node.children is not None:
                cls = registry.lookup(block_module)
                if cls is None:
                    raise node.error(f"{node.name}: module {block_module} is not available "
                                     "in this build of gmta")
                return self.new_instance(cls, None, [], node)
            raise node.error(f"{node.name}: expected a module name or a &reference",
                             hint=f"such as '{node.name} &name'" +
                                  (f" or '{node.name} {{ ... }}'" if block_module else ""))
        first = args[0]
        if first.startswith("&"):
            if len(args) != 1 or node.children is not None:
                raise node.error("exactly one argument is required to use existing config block",
                                 hint=f"write '{node.name} {first}' with nothing after it")
            return self.reference(first[1:], node, kind)
        cls = registry.lookup(first, KIND_NAMESPACES.get(kind))
        if cls is None or kind not in cls.kinds:
            raise self._unknown_module(node, first, kind)
        return self.new_instance(cls, None, args[1:], node)

    def reference(self, name: str, node: Node, kind: str) -> Module:
        block = self.blocks.get(name)
        if block is None:
            close = difflib.get_close_matches(name, list(self.blocks), n=1)
            raise node.error(f"unknown configuration block: &{name}",
                             hint=f"did you mean &{close[0]}?" if close else
                             "define it at top level, such as 'MODULE " + name + " { ... }'")
        if kind not in block.cls.kinds:
            raise node.error(f"&{name} is a {block.cls.name} block and cannot be used as {kind}",
                             hint=f"defined at {block.node.location}")
        if block.instance is None:
            block.instance = self.new_instance(block.cls, block.name, [], block.node,
                                               register=block)
        return block.instance

    def new_instance(self, cls: type[Module], instance_name: str | None, inline_args: list[str],
                     node: Node, register: _Block | None = None) -> Module:
        if len(inline_args) > cls.max_inline_args:
            if cls.max_inline_args == 0:
                raise node.error(f"module {cls.name} takes no inline arguments",
                                 hint="configure it in its block")
            raise node.error(f"module {cls.name} takes at most {cls.max_inline_args} "
                             "inline argument(s)")
        instance = cls(instance_name, inline_args, node)
        if register is not None:
            # Visible before its block is read: a reference back to it from
            # inside its own configuration gets this (unfinished) instance.
            register.instance = instance
        self.instances.append(instance)
        values = read_block(node, node.block, cls.directives, self,
                            allow_unknown=cls.allow_unknown, global_values=self.globals)
        instance.configure(values, self)
        return instance

    def _unknown_module(self, node: Node, name: str, kind: str) -> ConfigError:
        namespace = KIND_NAMESPACES.get(kind)
        full = f"{namespace}.{name}" if namespace and "." not in name else name
        cls = registry.lookup(name, namespace)
        if cls is not None:
            return node.error(f"module {cls.name} cannot be used as {kind}")
        return node.error(f"unknown {kind} module: {name}", hint=_module_hint(full, kind))

    def warn(self, node: Node, message: str) -> None:
        self.warnings.append(node.error("warning: " + message))


def _module_hint(name: str, kind: str | None = None) -> str:
    advice = registry.NOT_IN_GMTA.get(name)
    if advice:
        return advice
    if name in PLANNED_MODULES:
        return "not built yet in this version of gmta (see docs/FEATURES.md)"
    candidates = [c.name for c in registry.registered_modules()
                  if kind is None or kind in c.kinds]
    bare = name.split(".")[-1]
    close = difflib.get_close_matches(name, candidates, n=1) or \
        difflib.get_close_matches(bare, [c.split(".")[-1] for c in candidates], n=1)
    if close:
        return f"did you mean {close[0]}?"
    return "see docs/FEATURES.md for the modules gmta provides"


def load(path: str, environ: dict[str, str] | None = None) -> LoadedConfig:
    """Load and check the configuration in *path*; raise ConfigErrors on any error."""
    parser = Parser(environ)
    try:
        nodes = parser.parse_file(path)
    except ConfigError as e:
        raise ConfigErrors([e]) from None
    return build(nodes, path, parser.warnings)


def load_text(text: str, file: str = "<config>", environ: dict[str, str] | None = None) -> LoadedConfig:
    parser = Parser(environ)
    try:
        nodes = parser.parse_text(text, file)
    except ConfigError as e:
        raise ConfigErrors([e]) from None
    return build(nodes, file, parser.warnings)


def build(nodes: list[Node], file: str, warnings: list[ConfigError] | None = None) -> LoadedConfig:
    """Steps 2–5 of the module docstring over an already parsed tree."""
    ctx = Context(file)
    ctx.warnings.extend(warnings or ())
    errors: list[ConfigError] = []

    global_nodes: list[Node] = []
    endpoint_nodes: list[tuple[Node, type[Module]]] = []
    block_nodes: list[tuple[Node, type[Module]]] = []
    for node in nodes:
        if node.name in GLOBAL_NAMES:
            global_nodes.append(node)
            continue
        cls = registry.lookup(node.name)
        if cls is None:
            hint = _module_hint(node.name)
            close = difflib.get_close_matches(node.name, sorted(GLOBAL_NAMES), n=1)
            if close and hint.startswith("see docs"):
                hint = f"did you mean {close[0]}?"
            errors.append(node.error(f"unknown module or global directive: {node.name}", hint))
        elif cls.endpoint:
            endpoint_nodes.append((node, cls))
        else:
            block_nodes.append((node, cls))

    _read_globals(ctx, global_nodes, errors)
    _register_blocks(ctx, block_nodes, errors)

    endpoints: list[Module] = []
    for node, cls in endpoint_nodes:
        try:
            endpoints.append(ctx.new_instance(cls, f"{node.name} {' '.join(node.args)}".strip(),
                                              list(node.args), node))
        except ConfigError as e:
            errors.append(e)

    if not endpoint_nodes and not errors:
        errors.append(ConfigError("at least one endpoint should be configured", file,
                                  hint="such as 'smtp tcp://127.0.0.1:2525 { ... }'"))
    if not errors:
        seen: set[int] = set()
        for block in ctx.blocks.values():
            if id(block) in seen:
                continue
            seen.add(id(block))
            if block.instance is None:
                errors.append(block.node.error(
                    f"unused configuration block {block.name} ({block.cls.name})",
                    hint="refer to it with &" + block.name + " or remove it"))
    if errors:
        raise ConfigErrors(errors)
    return LoadedConfig(file, ctx.globals, endpoints, ctx.instances, ctx.warnings)


def _read_globals(ctx: Context, global_nodes: list[Node], errors: list[ConfigError]) -> None:
    """Step 2: the global directives into ``ctx.globals``; an error raises with *errors*."""
    # Directories first: the other globals resolve paths against them.
    dir_specs = tuple(d for d in GLOBAL_DIRECTIVES if d.name in ("state_dir", "runtime_dir"))
    other_specs = tuple(d for d in GLOBAL_DIRECTIVES if d not in dir_specs)
    try:
        dirs = read_block(None, [n for n in global_nodes if n.name in ("state_dir", "runtime_dir")],
                          dir_specs, ctx)
        ctx.state_dir, ctx.runtime_dir = dirs.state_dir, dirs.runtime_dir
        others = read_block(None, [n for n in global_nodes
                                   if n.name not in ("state_dir", "runtime_dir")], other_specs, ctx)
    except ConfigError as e:
        raise ConfigErrors(errors + [e]) from None
    for name in ("state_dir", "runtime_dir"):
        others._values[name] = dirs[name]
        if dirs.given(name):
            others.nodes[name] = dirs.nodes[name]
    ctx.globals = others


def _register_blocks(ctx: Context, block_nodes: list[tuple[Node, type[Module]]],
                     errors: list[ConfigError]) -> None:
    """Step 3: every named block into ``ctx.blocks``, unconfigured; problems go to *errors*."""
    for node, cls in block_nodes:
        if not node.args:
            names = [cls.name]
        else:
            names = node.args
        for name in names:
            if name.startswith("&") or not name:
                errors.append(node.error(f"invalid block name {name!r}"))
                continue
            existing = ctx.blocks.get(name)
            if existing is not None:
                errors.append(node.error(f"config block named {name} already exists",
                                         hint=f"defined at {existing.node.location}"))
                continue
            block = _Block(node, cls, names[0])
            # Aliases share the first name's _Block, hence one instance.
            ctx.blocks[name] = ctx.blocks.get(names[0], block) if name != names[0] else block


def load_block(path: str, name: str | None = None, *, module: str | None = None,
               environ: dict[str, str] | None = None) -> Module:
    """Configure one top-level block of *path*, and what it refers to, and nothing else.

    For tools that work on one block, such as ``gmta creds`` on an
    ``auth.pass_table``: endpoints are not configured, the other blocks need
    not be referred to, and blocks of modules this build does not know are
    skipped. Globals are read as for :func:`load` (``state_dir`` matters).
    *name* selects the block (a name or an alias); without it, the one block of
    *module* is taken, and none or several is an error. Errors raise ConfigErrors.
    """
    if name is None and module is None:
        raise ValueError("load_block needs a block name or a module name")
    parser = Parser(environ)
    try:
        nodes = parser.parse_file(path)
    except ConfigError as e:
        raise ConfigErrors([e]) from None
    ctx = Context(path)
    errors: list[ConfigError] = []
    global_nodes = [n for n in nodes if n.name in GLOBAL_NAMES]
    block_nodes = []
    for node in nodes:
        cls = registry.lookup(node.name) if node.name not in GLOBAL_NAMES else None
        if cls is not None and not cls.endpoint:
            block_nodes.append((node, cls))
    _read_globals(ctx, global_nodes, errors)
    _register_blocks(ctx, block_nodes, errors)
    if errors:
        raise ConfigErrors(errors)

    blocks = list({id(b): b for b in ctx.blocks.values()}.values())
    if name is not None:
        block = ctx.blocks.get(name)
        if block is None:
            names = [b.name for b in blocks if module is None or b.cls.name == module]
            raise ConfigErrors([ConfigError(
                f"no configuration block named {name}", path,
                hint=("the " + (f"{module} " if module else "") + "blocks are: " + ", ".join(names))
                if names else None)])
        if module is not None and block.cls.name != module:
            raise ConfigErrors([block.node.error(f"{name} is a {block.cls.name} block, "
                                                 f"not {module}")])
    else:
        found = [b for b in blocks if b.cls.name == module]
        if not found:
            raise ConfigErrors([ConfigError(
                f"no {module} block in this configuration", path,
                hint=f"gmta looks for a top-level block such as '{module} NAME {{ ... }}'")])
        if len(found) > 1:
            raise ConfigErrors([ConfigError(
                f"several {module} blocks: " + ", ".join(b.name for b in found), path,
                hint="choose one by name")])
        block = found[0]
    try:
        return ctx.new_instance(block.cls, block.name, [], block.node, register=block)
    except ConfigError as e:
        raise ConfigErrors([e]) from None
