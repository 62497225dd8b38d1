"""Endpoint module ``openmetrics``: gmta's metrics over HTTP for Prometheus.

``openmetrics tcp://127.0.0.1:9749 { }`` (maddy's module and default port)
serves ``GET /metrics`` with the registry of :mod:`gmta.metrics` in the
Prometheus text format 0.0.4, or in OpenMetrics 1.0 when the scraper's
``Accept`` asks for ``application/openmetrics-text`` (as Prometheus does).

The HTTP side is deliberately tiny: one request per connection, read within
``REQUEST_TIMEOUT`` and at most ``MAX_REQUEST_SIZE`` bytes of request line
and header, answered with ``Connection: close``; at most ``MAX_CONNECTIONS``
are served at once (the rest wait in the listen backlog). A request body is
never read. gevent.pywsgi was not used: it reads a request body to its end
before closing, has no deadline for a whole request, and prints client
errors to stderr, none of which suits a port that only ever needs one GET.
"""

from __future__ import annotations

import socket as _stdlib_socket
from dataclasses import dataclass

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer

import gmta.log
from gmta import metrics
from gmta.config.module import Module, register
from gmta.config.values import parse_endpoint
from gmta.endpoint.listeners import Listeners
from gmta.metrics.registry import OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE

#: Request line and header fields together (RFC 9112 §2.3 leaves the bound to
#: the server; a scrape request is a few hundred bytes).
MAX_REQUEST_SIZE = 8192
#: Time for the whole request to arrive, and for the whole response to leave.
REQUEST_TIMEOUT = 10.0
RESPONSE_TIMEOUT = 10.0
#: Scrapes served at once.
MAX_CONNECTIONS = 16
#: After the response, unread request bytes (a POST body) are read and
#: dropped for at most this long and this much, so that closing the socket
#: does not reset the connection before the client has read the response.
LINGER_TIME = 1.0
LINGER_BYTES = 65536

METRICS_PATH = "/metrics"

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 414: "URI Too Long",
           431: "Request Header Fields Too Large", 505: "HTTP Version Not Supported"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]


class HTTPError(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status
        self.text = text


def request_head(data: bytes) -> bytes | None:
    """The request line and header fields once the empty line that ends them has
    arrived (RFC 9112 §2.1), else None; raises HTTPError when they are too long."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")  # RFC 9112 §2.2: a bare LF may end a line
    if end >= 0 and end <= MAX_REQUEST_SIZE:
        return data[:end]
    if len(data) > MAX_REQUEST_SIZE:
        if b"\n" not in data[:MAX_REQUEST_SIZE]:
            raise HTTPError(414, "request line too long")
        raise HTTPError(431, "request header too large")
    return None


def parse_request(head: bytes) -> Request:
    """Parse a request line and its header fields (RFC 9112 §3, §5)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HTTPError(400, "request is not ASCII") from None
    lines = text.replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not all(parts):
        raise HTTPError(400, "malformed request line")
    method, target, version = parts
    if not version.startswith("HTTP/"):
        raise HTTPError(400, "malformed request line")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise HTTPError(505, f"{version} is not supported")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        # RFC 9112 §5.1: no whitespace between the field name and the colon.
        if not colon or not name or name != name.strip() or " " in name:
            raise HTTPError(400, "malformed header field")
        headers[name.lower()] = value.strip()
    return Request(method, target, headers)


def route(request: Request) -> tuple[int, dict[str, str], bytes]:
    """The response to *request*: status, extra header fields, body."""
    path = request.path.split("?", 1)[0]
    if request.method not in ("GET", "HEAD"):
        return 405, {"Allow": "GET, HEAD"}, b"only GET is supported\n"
    if path != METRICS_PATH:
        return 404, {}, b"metrics are at /metrics\n"
    openmetrics = "application/openmetrics-text" in request.headers.get("accept", "")
    body = metrics.REGISTRY.render(openmetrics=openmetrics).encode("utf-8")
    content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else PROMETHEUS_CONTENT_TYPE
    return 200, {"Content-Type": content_type}, body


def response_bytes(status: int, headers: dict[str, str], body: bytes,
                   head_only: bool = False) -> bytes:
    fields = {"Content-Type": "text/plain; charset=utf-8", **headers,
              "Content-Length": str(len(body)), "Connection": "close"}
    lines = [f"HTTP/1.1 {status} {REASONS[status]}"] + [f"{k}: {v}" for k, v in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (b"" if head_only else body)


@register
class OpenMetricsEndpoint(Listeners, Module):
    name = "openmetrics"
    kinds = frozenset({"endpoint"})
    endpoint = True
    max_inline_args = 16
    directives = ()

    def configure(self, cfg, ctx) -> None:
        if not self.inline_args:
            raise self.node.error("openmetrics: expected at least one listen address",
                                  hint="such as 'openmetrics tcp://127.0.0.1:9749 { }'")
        try:
            self.addresses = [parse_endpoint(a, ctx.runtime_dir) for a in self.inline_args]
        except ValueError as e:
            raise self.node.error(f"openmetrics: {e}") from None
        if any(a.tls for a in self.addresses):
            raise self.node.error("openmetrics serves plain HTTP only",
                                  hint="listen on tcp://127.0.0.1:PORT or unix://PATH")
        self.log = gmta.log.get("openmetrics")
        self.init_listeners()

    def start(self) -> None:
        self.start_listeners(self._server)

    def _server(self, address, sock) -> StreamServer:
        server = StreamServer(sock, self._handle, spawn=Pool(MAX_CONNECTIONS))
        server.start()
        return server

    def stop(self) -> None:
        self.stop_accepting()
        for server in self.servers:
            server.stop(timeout=RESPONSE_TIMEOUT)
        self.servers = []

    # -- reload: the new configuration's block took the sockets; a scrape in
    # progress gets its answer (each connection is one short request).
    retire = stop

    def hurry(self) -> None:
        pass  # nothing long-lived to end early

    # -- one connection ------------------------------------------------------------------

    def _handle(self, sock, peer) -> None:
        try:
            self._serve(sock, peer)
        finally:
            sock.close()

    def _serve(self, sock, peer) -> None:
        method = "GET"
        try:
            with gevent.Timeout(REQUEST_TIMEOUT, HTTPError(408, "request not received in time")):
                request = parse_request(_read_head(sock))
            method = request.method
            status, headers, body = route(request)
        except HTTPError as e:
            status, headers, body = e.status, {}, (e.text + "\n").encode()
        except OSError:
            return  # the client went away
        if status == 200:
            self.log.debug("scraped", peer=_peer_text(peer), size=len(body))
        else:
            self.log.info("http_refused", peer=_peer_text(peer), status=status,
                          reason=body.decode().strip())
        data = response_bytes(status, headers, body, head_only=method == "HEAD")
        try:
            with gevent.Timeout(RESPONSE_TIMEOUT, False):
                sock.sendall(data)
                sock.shutdown(_stdlib_socket.SHUT_WR)
            _linger(sock)
        except OSError:
            pass


def _read_head(sock) -> bytes:
    data = b""
    # Bounded: each pass adds at least a byte and the head is refused past
    # MAX_REQUEST_SIZE; the caller's timeout bounds the time.
    while True:
        head = request_head(data)
        if head is not None:
            return head
        chunk = sock.recv(4096)
        if not chunk:
            raise HTTPError(400, "connection closed before the end of the request")
        data += chunk


def _linger(sock) -> None:
    """Read and drop what the client still sends, briefly, before the close."""
    received = 0
    with gevent.Timeout(LINGER_TIME, False):
        while received < LINGER_BYTES:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += len(chunk)


def _peer_text(peer) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "unix"
