"""Modules and the registry of module names (maddy-behaviour §1.4).

A module is a class with a registered, namespaced name (``target.queue``),
the kinds of thing it provides (``target``, ``table``, ``auth``...), the
directives of its block, and ``configure()``. One class can have many
instances: top-level named blocks (``target.remote outbound { }``) and inline
uses (``deliver_to smtp tcp://127.0.0.1:2525 { }``).

The registry is filled by importing the modules' packages (``gmta.modules``
does that for the program); the config layer itself imports none of them, so
it stays below them in the layering of DESIGN §3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from gmta.config.reader import Directive, Values

if TYPE_CHECKING:  # pragma: no cover
    from gmta.config.loader import Context
    from gmta.config.parser import Node


class Module:
    """Base class of everything that can be named in a configuration."""

    #: The registered name, namespaced like maddy's (``target.remote``).
    name: ClassVar[str] = ""
    #: Older maddy names that still load (``remote``, ``smtp_downstream``).
    legacy_names: ClassVar[tuple[str, ...]] = ()
    #: What instances can be used as: ``target``, ``table``, ``auth``, ...
    kinds: ClassVar[frozenset[str]] = frozenset()
    #: The directives of the module's block.
    directives: ClassVar[tuple[Directive, ...]] = ()
    #: How many inline arguments (``deliver_to smtp ARG...``) it accepts.
    max_inline_args: ClassVar[int] = 0
    #: Endpoints are top-level blocks whose arguments are listen addresses.
    endpoint: ClassVar[bool] = False
    #: Whether unknown directives go to ``Values.rest`` instead of being errors.
    allow_unknown: ClassVar[bool] = False

    def __init__(self, instance_name: str | None, inline_args: list[str], node: "Node"):
        self.instance_name = instance_name or self.name
        #: True for a module written where it is used (``deliver_to smtp ...``).
        self.is_inline = instance_name is None
        self.inline_args = list(inline_args)
        self.node = node

    def configure(self, cfg: Values, ctx: "Context") -> None:
        """Take the values read from the block; raise ConfigError on bad combinations."""

    def bind(self) -> None:
        """Take what may need root (listening sockets); called before ``gmta run`` drops root.

        Every instance is bound before any starts; ``start()`` then uses what
        was bound.
        """

    def unbind(self) -> None:
        """Release what ``bind()`` took when ``start()`` will not run (another module failed)."""

    def start(self) -> None:
        """Begin work (listen, schedule); called by ``gmta run`` after loading succeeded."""

    def stop(self) -> None:
        """Stop work; called in the reverse order of ``start``."""

    def stop_grace(self, timeout: float) -> None:
        """Before ``stop()`` when gmta stops: work under way may take up to *timeout*
        seconds to finish (the longest endpoint ``shutdown_timeout``)."""

    # -- reload (gmta.daemon.reload) ------------------------------------------------

    def exclusive_key(self) -> object | None:
        """What only one instance in the process may work on at a time, or None.

        A queue's directory, for one: two schedulers on one spool would each
        run it. On reload, the new instance with the key of an old one is
        told to ``follow`` it, and later to ``take_over`` that work.
        """
        return None

    def follow(self, predecessor: "Module") -> None:
        """Before ``start()`` on reload: *predecessor* (same key) still does the exclusive work."""

    def take_over(self, timeout: float) -> None:
        """After every new instance started: take the exclusive work from the predecessor.

        Must not block: the predecessor may need up to *timeout* seconds to
        finish what it is doing; wait for that in a greenlet.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.instance_name}>"


_REGISTRY: dict[str, type[Module]] = {}


def register(cls: type[Module]) -> type[Module]:
    """Class decorator: make *cls* loadable under its name and legacy names."""
    for name in (cls.name, *cls.legacy_names):
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise RuntimeError(f"module name {name} registered twice "
                               f"({existing.__qualname__} and {cls.__qualname__})")
        _REGISTRY[name] = cls
    return cls


def unregister(cls: type[Module]) -> None:
    """Remove *cls* (tests register throw-away modules)."""
    for name in (cls.name, *cls.legacy_names):
        if _REGISTRY.get(name) is cls:
            del _REGISTRY[name]


def lookup(name: str, namespace: str | None = None) -> type[Module] | None:
    """The module for *name*, trying ``namespace.name`` before the bare name."""
    if namespace:
        cls = _REGISTRY.get(f"{namespace}.{name}")
        if cls is not None:
            return cls
    return _REGISTRY.get(name)


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


def registered_modules() -> list[type[Module]]:
    """Each registered class once, sorted by name."""
    return sorted(set(_REGISTRY.values()), key=lambda c: c.name)


# maddy modules that gmta does not provide, with what to use instead, so a
# maddy user's config fails with advice rather than a bare "unknown module".
NOT_IN_GMTA = {
    "imap": "gmta is an MTA without IMAP; deliver to Dovecot with target.lmtp "
            "or into Maildirs with target.maildir",
    "storage.imapsql": "gmta has no mailbox storage; use target.lmtp (Dovecot) "
                       "or target.maildir",
    "table.sql_table": "SQL tables are not supported; use table.file",
    "table.sql_query": "SQL tables are not supported; use table.file",
    "auth.pam": "PAM is not supported; use auth.pass_table",
    "auth.shadow": "shadow authentication is not supported; use auth.pass_table",
    "auth.external": "external authentication helpers are not supported; "
                     "use auth.pass_table",
    "auth.ldap": "LDAP is not supported; use auth.pass_table",
    "auth.dovecot_sasl": "Dovecot SASL is not supported; use auth.pass_table",
    "auth.netauth": "netauth is not supported; use auth.pass_table",
    "auth.plain_separate": "use auth.pass_table",
    "tls.loader.acme": "ACME is not supported; point tls at certificate files",
    "tls.loader.file": "write 'tls file CERT KEY' or 'tls CERT KEY'",
}
