"""SSL contexts from the ``tls`` and ``tls_client`` settings (gmta.config.tls)."""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile

import gevent.ssl
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gmta.config.tls import TLSClientConfig, TLSProtocolSettings, TLSServerConfig

_VERSIONS = {
    "tls1.0": ssl.TLSVersion.TLSv1,
    "tls1.1": ssl.TLSVersion.TLSv1_1,
    "tls1.2": ssl.TLSVersion.TLSv1_2,
    "tls1.3": ssl.TLSVersion.TLSv1_3,
}


def _apply_settings(context: ssl.SSLContext, settings: TLSProtocolSettings) -> None:
    if settings.min_version:
        context.minimum_version = _VERSIONS[settings.min_version]
    if settings.max_version:
        context.maximum_version = _VERSIONS[settings.max_version]
    if settings.ciphers:
        context.set_ciphers(":".join(settings.ciphers))
    if settings.curves:
        # The ssl module can set one ECDH curve; TLS 1.3 groups follow OpenSSL's defaults.
        context.set_ecdh_curve(settings.curves[0])


def self_signed_pem(hostname: str) -> tuple[bytes, bytes]:
    """A fresh P-256 key and a self-signed certificate for *hostname* (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def server_context(config: TLSServerConfig, hostname: str) -> ssl.SSLContext | None:
    """The server context for an endpoint, or None for ``tls off``."""
    if not config.enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _apply_settings(context, config.settings)
    if config.mode == "self_signed":
        cert, key = self_signed_pem(hostname)
        # load_cert_chain reads files only; the file lives for the call alone.
        with tempfile.NamedTemporaryFile(prefix="gmta-self-signed-") as f:
            os.chmod(f.name, 0o600)
            f.write(key + cert)
            f.flush()
            context.load_cert_chain(f.name)
    else:
        for cert_path, key_path in config.pairs:
            context.load_cert_chain(cert_path, key_path)
    return context


def client_context(config: TLSClientConfig | None, verify: bool = True, *,
                   cooperative: bool = False) -> ssl.SSLContext:
    """A client context; *verify* False still encrypts (opportunistic STARTTLS).

    *cooperative* makes gevent's context, whose sockets yield to the hub even
    in a process that is not monkey-patched (tools, the test suite).
    """
    context = (gevent.ssl.SSLContext if cooperative else ssl.SSLContext)(ssl.PROTOCOL_TLS_CLIENT)
    config = config or TLSClientConfig()
    _apply_settings(context, config.settings)
    if config.root_cas:
        for path in config.root_cas:
            context.load_verify_locations(cafile=path)
    else:
        context.load_default_certs()
    if config.cert:
        context.load_cert_chain(config.cert, config.key)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def peer_chain(sock: ssl.SSLSocket) -> tuple[bytes, ...]:
    """The certificates the peer sent, DER, leaf first, verified or not.

    DANE needs them from unverified handshakes too (RFC 7672 §3.1), and
    DANE-TA needs the whole chain, not only the leaf, to find the trust anchor
    (RFC 7672 §3.1.2). Python 3.13 has ``get_unverified_chain()``; 3.10–3.12
    have the same call on the internal ``_sslobj`` only. Without either, the
    leaf alone (enough for DANE-EE; DANE-TA then finds no trust anchor).
    """
    chain = None
    public = getattr(sock, "get_unverified_chain", None)
    if public is not None:
        chain = public()
    else:
        internal = getattr(getattr(sock, "_sslobj", None), "get_unverified_chain", None)
        if internal is not None:
            chain = internal()
    if chain:
        return tuple(c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)
                     for c in chain)
    leaf = sock.getpeercert(binary_form=True)
    return (leaf,) if leaf else ()
