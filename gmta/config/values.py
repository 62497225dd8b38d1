"""Value types of the configuration language (maddy-behaviour §1.3).

Each parser takes the argument words of one directive and returns a Python
value, or raises ``ValueError`` with a sentence saying what is wrong; the
typed reader turns that into a ``file:line:`` error. Keeping these free of
nodes makes them easy to test on their own.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

TRUE_WORDS = frozenset({"yes", "true", "on", "1"})
FALSE_WORDS = frozenset({"no", "false", "off", "0"})


def parse_bool(args: list[str]) -> bool:
    """``yes/no``, ``true/false``, ``on/off``, ``1/0`` in any case; no argument means yes."""
    if not args:
        return True
    if len(args) != 1:
        raise ValueError("expected one boolean value (yes or no)")
    word = args[0].lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"invalid boolean {args[0]!r}: use yes/no, true/false, on/off or 1/0")


# Go's time.ParseDuration units, which maddy uses; days are deliberately absent.
_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3,
    "s": 1.0, "m": 60.0, "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(args: list[str]) -> float:
    """A duration in seconds: ``1h``, ``1h 5m``, ``1h5m``, ``500ms``, ``0``.

    Arguments are joined, as maddy does, so ``1h 5m`` equals ``1h5m``.
    """
    if not args:
        raise ValueError("expected a duration such as 30s, 5m or 1h 30m")
    text = "".join(args)
    if text.startswith("-"):
        raise ValueError(f"duration {' '.join(args)!r} is negative")
    if text.lstrip("+") == "0":
        return 0.0
    text = text.lstrip("+")
    if not text:
        raise ValueError("expected a duration such as 30s, 5m or 1h 30m")
    total = 0.0
    pos = 0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m:
            raise ValueError(f"invalid duration {' '.join(args)!r}: use numbers with units "
                             "h, m, s, ms, us or ns, such as 1h 30m")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return total


_SIZE_UNITS = {"b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
_SIZE_PART = re.compile(r"(\d+)([bBkKmMgG])\Z")


def parse_size(args: list[str]) -> int:
    """A size in bytes: ``32M``, ``3M 5K``, ``512b``; K, M and G are powers of 1024.

    Each argument is one number with one unit (``32M5K`` is refused, as in
    maddy); a bare ``0`` needs no unit.
    """
    if not args:
        raise ValueError("expected a size such as 32M, 512K or 100b")
    total = 0
    for word in args:
        if word == "0":
            continue
        m = _SIZE_PART.match(word)
        if not m:
            raise ValueError(f"invalid size {word!r}: use a number with a unit "
                             "B, K, M or G, such as 32M")
        total += int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    return total


def parse_int(args: list[str], minimum: int | None = None, maximum: int | None = None) -> int:
    if len(args) != 1:
        raise ValueError("expected one integer")
    try:
        value = int(args[0], 10)
    except ValueError:
        raise ValueError(f"invalid integer {args[0]!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{value} is too small: the minimum is {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{value} is too large: the maximum is {maximum}")
    return value


@dataclass(frozen=True)
class Endpoint:
    """A listen or connect address: ``tcp://HOST:PORT``, ``tls://HOST:PORT``, ``unix://PATH``.

    ``tls`` means implicit TLS (the handshake starts at connect time).
    """

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def tls(self) -> bool:
        return self.scheme == "tls"

    @property
    def is_unix(self) -> bool:
        return self.scheme == "unix"

    def __str__(self) -> str:
        if self.is_unix:
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_endpoint(word: str, runtime_dir: str | None = None) -> Endpoint:
    """One endpoint address; relative ``unix://`` paths are under *runtime_dir*."""
    scheme, sep, rest = word.partition("://")
    if not sep:
        raise ValueError(f"invalid address {word!r}: expected tcp://HOST:PORT, "
                         "tls://HOST:PORT or unix://PATH")
    scheme = scheme.lower()
    if scheme == "unix":
        if not rest:
            raise ValueError(f"invalid address {word!r}: the unix socket path is empty")
        path = rest
        if runtime_dir and not path.startswith("/"):
            path = runtime_dir.rstrip("/") + "/" + path
        return Endpoint("unix", path=path)
    if scheme not in ("tcp", "tls"):
        raise ValueError(f"unsupported scheme {scheme}:// in {word!r}: use tcp://, tls:// or unix://")
    if rest.startswith("["):
        host, bracket, port_part = rest[1:].partition("]")
        if not bracket or not port_part.startswith(":"):
            raise ValueError(f"invalid address {word!r}: expected [IPv6]:PORT")
        port_text = port_part[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address {host!r} in {word!r}") from None
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            raise ValueError(f"invalid address {word!r}: the port is missing (HOST:PORT)")
        if ":" in host:
            raise ValueError(f"invalid address {word!r}: write IPv6 addresses in brackets, "
                             "such as tcp://[::1]:25")
    # isascii: str.isdigit() also accepts digits such as '٣' or '²'.
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid port {port_text!r} in {word!r}")
    # An empty host (tcp://:25) listens on every address, as in Go.
    if "/" in host:
        raise ValueError(f"invalid host {host!r} in {word!r}")
    return Endpoint(scheme, host=host, port=int(port_text))
