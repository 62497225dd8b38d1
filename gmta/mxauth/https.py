"""A small HTTPS GET for policy documents (MTA-STS policies, STARTTLS-Everywhere lists).

Why not ``urllib``: the host name must be resolved by gmta's resolver (the
global ``dns_servers``, so that tests and split-horizon setups work and no
query goes to the system resolver behind gmta's back), the socket must yield
to the gevent hub, the whole exchange needs one deadline, and the body a size
cap. So :func:`https_get` resolves the name itself, connects a gevent socket
to each address in turn, and runs ``http.client`` over it with SNI and
certificate verification for the *name* (RFC 6125 via OpenSSL's hostname
check). Redirects are never followed: RFC 8461 §3.3 forbids it for MTA-STS,
and a list source is a URL the operator wrote.
"""

from __future__ import annotations

import http.client
import socket as _stdlib_socket
import ssl
from dataclasses import dataclass

import gevent
from gevent import socket

from gmta.config.tls import TLSClientConfig, TLSProtocolSettings
from gmta.net.dns import DNSError, Resolver
from gmta.net.tls import client_context

USER_AGENT = "gmta"


class FetchError(Exception):
    """The document could not be fetched; the text says why (for logs)."""


@dataclass(frozen=True)
class HTTPSResponse:
    status: int
    content_type: str
    body: bytes


def verifying_context(config: TLSClientConfig | None) -> ssl.SSLContext:
    """A cooperative client context trusting ``tls_client``'s roots (or the system's).

    The client certificate of ``tls_client`` is not sent: a policy server has
    no use for it. TLS 1.2 is the floor unless ``tls_client`` sets its own.
    """
    config = config or TLSClientConfig()
    settings = config.settings
    if settings.min_version is None:
        settings = TLSProtocolSettings("tls1.2", settings.max_version, settings.ciphers,
                                       settings.curves)
    return client_context(TLSClientConfig(config.root_cas, None, None, settings),
                          cooperative=True)


class _ConnectedHTTPS(http.client.HTTPConnection):
    """``http.client`` over a TLS socket we connected ourselves."""

    def __init__(self, host: str, sock):
        super().__init__(host)
        self.sock = sock

    def connect(self) -> None:  # pragma: no cover - the socket is connected already
        raise RuntimeError("already connected")


def https_get(host: str, path: str, *, resolver: Resolver, context: ssl.SSLContext,
              port: int = 443, timeout: float = 30.0, max_size: int = 64 * 1024) -> HTTPSResponse:
    """GET ``https://host:port/path``: the status, content type and at most *max_size* bytes.

    Raises :class:`FetchError` when no address of *host* gives a response
    within *timeout* seconds in all, or the body is longer than *max_size*.
    """
    timer = gevent.Timeout(timeout)
    timer.start()
    try:
        return _get(host, path, resolver, context, port, timeout, max_size)
    except gevent.Timeout as expired:
        if expired is not timer:
            raise
        raise FetchError(f"https://{host}{path}: no response within {timeout:g} s") from None
    finally:
        timer.close()


def _get(host, path, resolver, context, port, timeout, max_size) -> HTTPSResponse:
    try:
        addresses = resolver.addresses(host, lifetime=timeout).addresses
    except DNSError as e:
        raise FetchError(f"https://{host}{path}: {e}") from None
    if not addresses:
        raise FetchError(f"https://{host}{path}: {host} has no address")
    errors = []
    for address in addresses:
        try:
            return _get_from(address, host, path, context, port, timeout, max_size)
        except FetchError:
            raise
        except (OSError, ssl.SSLError, http.client.HTTPException) as e:
            # A certificate error is the same from every address: say so and stop.
            if isinstance(e, ssl.SSLCertVerificationError):
                raise FetchError(f"https://{host}{path}: certificate not trusted: "
                                 f"{e.verify_message or e}") from None
            errors.append(f"{address}: {getattr(e, 'strerror', None) or e}")
    raise FetchError(f"https://{host}{path}: " + "; ".join(errors))


def _get_from(address, host, path, context, port, timeout, max_size) -> HTTPSResponse:
    family = _stdlib_socket.AF_INET6 if ":" in address else _stdlib_socket.AF_INET
    raw = socket.socket(family, _stdlib_socket.SOCK_STREAM)
    raw.settimeout(timeout)
    try:
        raw.connect((address, port))
        tls = context.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise
    connection = _ConnectedHTTPS(host if port == 443 else f"{host}:{port}", tls)
    try:
        connection.request("GET", path, headers={"User-Agent": USER_AGENT,
                                                 "Accept": "text/plain, application/json",
                                                 "Connection": "close"})
        response = connection.getresponse()
        length = response.getheader("Content-Length")
        if length and length.isdigit() and int(length) > max_size:
            raise FetchError(f"https://{host}{path}: the document is {length} bytes, "
                             f"more than the limit of {max_size}")
        body = response.read(max_size + 1)
        if len(body) > max_size:
            raise FetchError(f"https://{host}{path}: the document is longer than the "
                             f"limit of {max_size} bytes")
        content_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        return HTTPSResponse(response.status, content_type, body)
    finally:
        connection.close()
