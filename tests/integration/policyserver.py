"""A real HTTPS server for MTA-STS policies and preload lists, run as a child process.

It serves ``<root>/<host>/<path>`` for ``Host: <host>``; a file
``<root>/<host>/<path>.meta.json`` may give ``status``, ``content_type`` and
``location`` for the answer. Tests change the files while it runs. Run it with
:class:`PolicyServer` (free port, readiness deadline, always stopped).
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

READY_TIMEOUT = 10.0


class _Handler(BaseHTTPRequestHandler):
    root: Path

    def do_GET(self):  # noqa: N802 (http.server's name)
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        path = (self.root / host / self.path.lstrip("/")).resolve()
        if self.root.resolve() not in path.parents or not path.is_file():
            self.send_error(404)
            return
        meta_path = path.with_name(path.name + ".meta.json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        body = path.read_bytes()
        self.send_response(meta.get("status", 200))
        self.send_header("Content-Type", meta.get("content_type", "text/plain"))
        if "location" in meta:
            self.send_header("Location", meta["location"])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        sys.stderr.write("policyserver: " + (format % args) + "\n")


def main(address: str, port: int, cert: str, key: str, root: str) -> None:
    _Handler.root = Path(root)
    server = ThreadingHTTPServer((address, port), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


class PolicyServer:
    """The server above on *address* and a free port, serving files under *root*."""

    def __init__(self, root: Path, cert: str, key: str, address: str = "127.0.0.80"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.cert, self.key, self.address = cert, key, address
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None

    def put(self, host: str, path: str, body: bytes | str, **meta) -> None:
        file = self.root / host / path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(body.encode() if isinstance(body, str) else body)
        meta_file = file.with_name(file.name + ".meta.json")
        if meta:
            meta_file.write_text(json.dumps(meta))
        elif meta_file.exists():
            meta_file.unlink()

    def policy(self, domain: str, text: str, **meta) -> None:
        self.put(f"mta-sts.{domain}", "/.well-known/mta-sts.txt", text, **meta)

    def start(self) -> "PolicyServer":
        with socket.socket() as probe:
            probe.bind((self.address, 0))
            self.port = probe.getsockname()[1]
        # The child keeps its own copy of the log's descriptor; ours is closed at once.
        with open(self.root.parent / "policyserver.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, self.address, str(self.port), self.cert, self.key,
                 str(self.root)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=log)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection((self.address, self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the policy server did not start; log:\n" +
                           (self.root.parent / "policyserver.log").read_text(errors="replace"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:6])
