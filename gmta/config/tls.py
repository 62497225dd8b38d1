"""The ``tls`` and ``tls_client`` directives (maddy-behaviour §1.4, DESIGN §1.3).

These produce plain settings; ``gmta.net.tls`` turns them into SSL contexts.
Certificate and key files are read here, when the configuration is loaded,
so a missing or malformed file is a ``file:line:`` error at ``check-config``
time instead of a failed handshake hours later.

Server forms::

    tls off
    tls self_signed
    tls CERT KEY                       # maddy's older form
    tls file CERT KEY [CERT2 KEY2...]  # maddy's current form
    tls file CERT KEY { protocols tls1.2 tls1.3; ciphers ...; curves ... }
    tls { loader file CERT KEY; protocols ...; ciphers ...; curves ... }

Client block (``tls_client { ... }``): ``root_ca PATH...``, ``cert PATH``,
``key PATH``, ``protocols MIN [MAX]``, ``ciphers ...``, ``curves ...``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gmta.config.parser import Node
from gmta.config.reader import Directive, Strings, read_block

if TYPE_CHECKING:  # pragma: no cover
    from gmta.config.loader import Context

PROTOCOLS = ("tls1.0", "tls1.1", "tls1.2", "tls1.3")


@dataclass(frozen=True)
class TLSProtocolSettings:
    min_version: str | None = None
    max_version: str | None = None
    ciphers: tuple[str, ...] = ()
    curves: tuple[str, ...] = ()


@dataclass(frozen=True)
class TLSServerConfig:
    """``mode`` is ``off``, ``file`` or ``self_signed``."""

    mode: str
    pairs: tuple[tuple[str, str], ...] = ()
    settings: TLSProtocolSettings = field(default_factory=TLSProtocolSettings)

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


@dataclass(frozen=True)
class TLSClientConfig:
    root_cas: tuple[str, ...] = ()
    cert: str | None = None
    key: str | None = None
    settings: TLSProtocolSettings = field(default_factory=TLSProtocolSettings)


def _protocols(node: Node, ctx: "Context") -> tuple[str, str]:
    if not 1 <= len(node.args) <= 2:
        raise ValueError("expected a protocol range such as 'tls1.2 tls1.3'")
    words = [a.lower() for a in node.args]
    for w in words:
        if w not in PROTOCOLS:
            raise ValueError(f"unknown protocol {w!r}: expected one of {', '.join(PROTOCOLS)}")
    low, high = words[0], words[-1]
    if PROTOCOLS.index(low) > PROTOCOLS.index(high):
        raise ValueError(f"the range {low} {high} is empty")
    return low, high


_SETTINGS = (
    Directive("protocols", Strings(), doc="TLS versions: MIN [MAX]"),
    Directive("ciphers", Strings(), doc="OpenSSL cipher names"),
    Directive("curves", Strings(), doc="key exchange groups, such as X25519 prime256v1"),
)


def _settings_from(values) -> TLSProtocolSettings:
    low = high = None
    if values.protocols:
        node = values.nodes["protocols"]
        try:
            low, high = _protocols(node, None)
        except ValueError as e:
            raise node.error(f"protocols: {e}") from None
    return TLSProtocolSettings(low, high, tuple(values.ciphers or ()), tuple(values.curves or ()))


def parse_server_tls(node: Node, ctx: "Context") -> TLSServerConfig:
    args = list(node.args)
    loader_node = None
    if node.children is not None:
        specs = _SETTINGS + (Directive("loader", Strings(), doc="file CERT KEY | self_signed | off"),)
        values = read_block(node, node.children, specs, ctx)
        settings = _settings_from(values)
        if values.loader:
            if args:
                raise node.error("tls: give the certificate either as arguments or with "
                                 "'loader', not both")
            loader_node = values.nodes["loader"]
            args = list(values.loader)
    else:
        settings = TLSProtocolSettings()
    where = loader_node or node
    if not args:
        raise where.error("tls: expected 'off', 'self_signed', 'CERT KEY' or 'file CERT KEY...'")
    mode = args[0].lower()
    if mode.startswith("&"):
        raise where.error("tls: references to tls blocks are not supported",
                          hint="write 'tls file CERT KEY' here or as a global directive")
    if mode == "off" or mode == "self_signed":
        if len(args) != 1:
            raise where.error(f"tls {mode} takes no further arguments")
        return TLSServerConfig(mode, settings=settings)
    if mode == "file":
        args = args[1:]
    if not args or len(args) % 2:
        raise where.error("tls: expected certificate and key paths in pairs",
                          hint="tls file CERT KEY [CERT2 KEY2 ...]")
    pairs = []
    for cert, key in zip(args[0::2], args[1::2], strict=True):
        cert, key = ctx.state_path(cert), ctx.state_path(key)
        _check_pem(where, cert, "CERTIFICATE", "certificate")
        _check_pem(where, key, "PRIVATE KEY", "private key")
        pairs.append((cert, key))
    return TLSServerConfig("file", tuple(pairs), settings)


def parse_client_tls(node: Node, ctx: "Context") -> TLSClientConfig:
    if node.args:
        raise node.error("tls_client takes a block, not arguments",
                         hint="tls_client { root_ca PATH; cert PATH; key PATH }")
    specs = _SETTINGS + (
        Directive("root_ca", Strings(), repeat=False, doc="PEM files of trusted CAs"),
        Directive("cert", Strings(), doc="client certificate (PEM)"),
        Directive("key", Strings(), doc="client certificate key (PEM)"),
    )
    values = read_block(node, node.block, specs, ctx)
    settings = _settings_from(values)
    roots = []
    for path in values.root_ca or ():
        path = ctx.state_path(path)
        _check_pem(values.nodes["root_ca"], path, "CERTIFICATE", "CA certificate")
        roots.append(path)
    cert = key = None
    if bool(values.cert) != bool(values.key):
        raise values.error("cert" if values.cert else "key",
                           "tls_client: cert and key must be given together")
    if values.cert:
        for name in ("cert", "key"):
            if len(values[name]) != 1:
                raise values.nodes[name].error(f"{name}: expected one path")
        cert, key = ctx.state_path(values.cert[0]), ctx.state_path(values.key[0])
        _check_pem(values.nodes["cert"], cert, "CERTIFICATE", "certificate")
        _check_pem(values.nodes["key"], key, "PRIVATE KEY", "private key")
    return TLSClientConfig(tuple(roots), cert, key, settings)


def _check_pem(node: Node, path: str, marker: str, what: str) -> None:
    """Fail at load time when *path* is unreadable or holds no PEM *marker* block."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as e:
        raise node.error(f"cannot read {what} {path}: {e.strerror or e}") from None
    if marker.encode() not in data or b"-----BEGIN " not in data:
        raise node.error(f"{path} does not contain a PEM {what}")
