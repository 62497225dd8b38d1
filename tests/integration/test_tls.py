"""Real TLS with a generated CA: ``tls file CERT KEY`` verified by the client."""

from __future__ import annotations

import datetime
import smtplib
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.conftest import base_config, maildir_messages

pytestmark = pytest.mark.integration


def make_ca_and_server(directory, hostname: str):
    """A CA, and a server certificate for *hostname* signed by it (PEM files)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gmta test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key")}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


@pytest.mark.parametrize("form", ["tls {cert} {key}", "tls file {cert} {key}",
                                  "tls file {cert} {key} {{\n protocols tls1.3 tls1.3\n}}"])
def test_starttls_certificate_verifies_against_the_ca(start_gmta, state_dir, tmp_path, form):
    paths = make_ca_and_server(tmp_path, "mx.gmta.test")
    tls = form.format(cert=paths["cert"], key=paths["key"])
    gmta = start_gmta(base_config(state_dir, tls) + """
target.maildir mailboxes {
    path maildir/{domain}/{local}
}
smtp tcp://127.0.0.1:0 {
    deliver_to &mailboxes
}
""")
    context = ssl.create_default_context(cafile=str(paths["ca"]))
    with smtplib.SMTP("127.0.0.1", gmta.port(), timeout=10) as client:
        client.ehlo("client.example")
        # smtplib checks the certificate against the name it connected to; the
        # server is reached by address, so give it the name in the certificate.
        client._host = "mx.gmta.test"
        client.starttls(context=context)
        assert isinstance(client.sock, ssl.SSLSocket)
        if "tls1.3" in form:
            assert client.sock.version() == "TLSv1.3"
        client.ehlo("client.example")
        client.sendmail("a@sender.test", ["tess@example.test"], b"Subject: ca\r\n\r\nx\r\n")
    [stored] = maildir_messages(state_dir, "tess@example.test")
    assert b" with ESMTPS id " in stored
