"""A real TLS server presenting a chosen certificate chain, and the client side of the handshake.

The server is a thread with a plain ``ssl`` listening socket on a loopback
address: it completes handshakes and closes. :func:`handshake_facts` does what
the remote target does after STARTTLS — verify against the trusted roots and
the MX name, and if that fails connect again without verification (maddy's
fallback) — and returns the :class:`ConnectionFacts` the policies see.
"""

from __future__ import annotations

import socket
import ssl
import threading

import gevent.socket

from gmta.config.tls import TLSClientConfig
from gmta.mxauth.facts import ConnectionFacts
from gmta.net.tls import client_context

TIMEOUT = 5.0


class TLSPeer:
    def __init__(self, address: str, cert_path: str, key_path: str):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert_path, key_path)
        self.listener = socket.create_server((address, 0))
        self.listener.settimeout(0.2)
        self.address = address
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(TIMEOUT)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        self.listener.close()


def handshake_facts(peer: TLSPeer, mx_name: str, root_ca: str) -> ConnectionFacts:
    """Handshake with *peer* as the remote target would for MX *mx_name*."""
    config = TLSClientConfig(root_cas=(root_ca,))
    for verify in (True, False):
        raw = gevent.socket.create_connection((peer.address, peer.port), timeout=TIMEOUT)
        try:
            tls = client_context(config, verify=verify, cooperative=True).wrap_socket(
                raw, server_hostname=mx_name)
        except ssl.SSLCertVerificationError:
            raw.close()
            continue
        try:
            return ConnectionFacts.from_tls_socket(tls, pkix_verified=verify)
        finally:
            tls.close()
    raise AssertionError("the handshake failed even without verification")
