"""What the remote target learnt about one connection, as the policies need it.

:class:`ConnectionFacts` is filled by the caller after EHLO (and STARTTLS, if
any) and handed to ``MessagePolicy.check_connection``. The peer's certificate
chain is kept as DER bytes, leaf first, so DANE can match it whether or not
PKIX verification succeeded (RFC 7672 §3.1: DANE-EE ignores the chain and the
names, so the certificate must be available from an unverified handshake).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from gmta.net.tls import peer_chain
from gmta.target.security import TLSLevel

__all__ = ["ConnectionFacts", "peer_chain"]


@dataclass(frozen=True)
class ConnectionFacts:
    """One SMTP connection to an MX host, after EHLO (and STARTTLS when done)."""

    #: The server offered STARTTLS in its first EHLO reply.
    starttls_offered: bool
    #: A TLS session is up (the TLS version, such as ``TLSv1.3``), or None.
    tls_version: str | None = None
    #: The certificate chain verified against the trusted roots *and* is valid
    #: for the MX host name (RFC 6125), as MTA-STS requires (RFC 8461 §4.2).
    pkix_verified: bool = False
    #: The certificates the server sent, DER, leaf first (possibly unverified).
    peer_chain: tuple[bytes, ...] = ()
    #: Why STARTTLS or the handshake failed, when it was tried and failed.
    tls_error: str | None = None
    #: The server advertised REQUIRETLS (RFC 8689 §3) in the EHLO after STARTTLS.
    requiretls_offered: bool = False

    @property
    def encrypted(self) -> bool:
        return self.tls_version is not None

    @property
    def tls_level(self) -> TLSLevel:
        """The level the connection has by itself, before any policy (DANE) raises it."""
        if not self.encrypted:
            return TLSLevel.NONE
        return TLSLevel.AUTHENTICATED if self.pkix_verified else TLSLevel.ENCRYPTED

    def describe_tls(self) -> str:
        """A few words for refusal texts: what the connection had."""
        if self.encrypted:
            how = "verified" if self.pkix_verified else "unverified"
            return f"{self.tls_version} with an {how} certificate"
        if self.tls_error:
            return f"TLS failed: {self.tls_error}"
        if not self.starttls_offered:
            return "the server did not offer STARTTLS"
        return "the connection is not encrypted"

    @classmethod
    def from_tls_socket(cls, sock: ssl.SSLSocket, *, pkix_verified: bool,
                        requiretls_offered: bool = False) -> "ConnectionFacts":
        """The facts of a connection whose STARTTLS handshake succeeded."""
        return cls(starttls_offered=True, tls_version=sock.version() or "TLS",
                   pkix_verified=pkix_verified, peer_chain=peer_chain(sock),
                   requiretls_offered=requiretls_offered)
