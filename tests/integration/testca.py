"""Certificates for tests: a CA, intermediates, server certificates, written as PEM files.

Every certificate follows the RFC 5280 profile that OpenSSL and cryptography's
verifier expect (basic constraints, key usage, key identifiers, a SAN for
servers), so a test failing on verification fails for the reason it tests.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    @property
    def spki(self) -> bytes:
        return self.cert.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def issue(name: str, *, issuer: Issued | None = None, ca: bool = False,
          sans: tuple[str, ...] = (), days: int = 30) -> Issued:
    """A certificate for *name*, signed by *issuer* (self-signed without one)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.cert.subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = (builder
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.DNSName(n) for n in (sans or (name,))]), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False))
    signer = issuer or None
    if signer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
            critical=False)
    cert = builder.sign(signer.key if signer else key, hashes.SHA256())
    return Issued(cert, key)


def write_chain(directory: Path, stem: str, leaf: Issued, *chain: Issued) -> tuple[str, str]:
    """``stem.pem`` (leaf then *chain*) and ``stem.key``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(leaf.pem + b"".join(c.pem for c in chain))
    key_path.write_bytes(leaf.key_pem)
    return str(cert_path), str(key_path)


def write_ca(directory: Path, stem: str, ca: Issued) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.pem"
    path.write_bytes(ca.pem)
    return str(path)


def tlsa(usage: int, selector: int, mtype: int, issued: Issued) -> str:
    """A TLSA record's type and data for *issued* (RFC 6698 §2.1): ``TLSA 3 1 1 <hex>``.

    Selector 0 is the whole certificate, 1 its SubjectPublicKeyInfo; matching
    type 0 is the data itself, 1 its SHA-256, 2 its SHA-512.
    """
    data = issued.der if selector == 0 else issued.spki
    if mtype == 1:
        data = hashlib.sha256(data).digest()
    elif mtype == 2:
        data = hashlib.sha512(data).digest()
    return f"TLSA {usage} {selector} {mtype} {data.hex()}"
