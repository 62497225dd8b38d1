"""``mx_auth.dane``: DANE for SMTP (RFC 7672, with RFC 7671 and RFC 6698).

Per MX host, started in the background when the MX is checked:

1. the host's A/AAAA answers must be DNSSEC-authenticated, or DANE does not
   apply (RFC 7672 §2.2.2); a CNAME'd host has its TLSA records looked up at
   the CNAME's target first, then at the original name (RFC 7672 §2.2.2);
2. TLSA ``_25._tcp.<host>`` must be authenticated too; unsigned records are
   ignored (RFC 7672 §2.2.3). A lookup that fails (SERVFAIL, timeout) may be
   an attack and defers the message (RFC 7672 §2.2);
3. records are *usable* with usage DANE-TA(2) or DANE-EE(3), selector 0/1
   and matching type 0/1/2 with the right digest length (RFC 7672 §3.1,
   RFC 7671 §5; PKIX-TA/EE usages are not for SMTP, RFC 7672 §3.1.3).

Then, per connection: usable records require TLS, and the certificate chain
must match one of them — DANE-EE: the leaf itself, no name or date checks
(RFC 7672 §3.1.1); DANE-TA: a certificate of the chain is the trust anchor,
the leaf must chain to it and carry the MX name (RFC 7672 §3.1.2, §3.2.3).
A match makes the TLS level ``authenticated``, whatever PKIX said. If the
TLSA RRset has only unusable records, TLS is still required, unauthenticated
(RFC 7672 §2.2: "the SMTP client MUST ... use TLS").

Failures defer the message (4xx): RFC 7672 §2.2 asks the client to treat an
authentication failure as a temporary one, so that a fixed TLSA record or
certificate lets the message through on a later try. maddy answers 550
instead; gmta deliberately does not.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

import gmta.log
from gmta.mxauth.policy import JOIN_GRACE, Policy, register_policy
from gmta.mxauth.refusal import refusal
from gmta.net.dns import DNSError, resolver_for
from gmta.target.security import TLSLevel

log = gmta.log.get("mx_auth.dane")

DANE_TA, DANE_EE = 2, 3
#: RFC 6698 §2.1.3 matching types and the digest length each must have.
DIGEST_LENGTH = {0: None, 1: 32, 2: 64}
#: Longest chain DANE-TA walks (leaf, intermediates, trust anchor).
MAX_CHAIN_DEPTH = 8


@dataclass(frozen=True)
class TLSARecord:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        """RFC 7672 §3.1: only DANE-TA/DANE-EE with known selector and matching type."""
        if self.usage not in (DANE_TA, DANE_EE) or self.selector not in (0, 1) \
                or self.mtype not in DIGEST_LENGTH:
            return False
        length = DIGEST_LENGTH[self.mtype]
        return length is None or len(self.data) == length

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()[:16]}…"


@dataclass(frozen=True)
class DANEState:
    """The TLSA records that apply to one MX host."""

    tlsa_name: str
    records: tuple[TLSARecord, ...]
    #: Names the certificate may carry for DANE-TA (RFC 7672 §3.2.3).
    reference_names: tuple[str, ...]

    @property
    def usable(self) -> tuple[TLSARecord, ...]:
        return tuple(r for r in self.records if r.usable)


def _selected(cert: x509.Certificate, der: bytes, selector: int) -> bytes:
    if selector == 0:
        return der
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def _digest(data: bytes, mtype: int) -> bytes:
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def record_matches(record: TLSARecord, der: bytes, cert: x509.Certificate | None = None) -> bool:
    """Whether *record*'s association data is that of the certificate *der* (RFC 6698 §2.1)."""
    cert = cert or x509.load_der_x509_certificate(der)
    return _digest(_selected(cert, der, record.selector), record.mtype) == record.data


def match_chain(records, chain: tuple[bytes, ...], reference_names: tuple[str, ...],
                now: datetime.datetime | None = None) -> tuple[TLSARecord | None, str]:
    """The record the chain (DER, leaf first) satisfies and how, or (None, why not)."""
    if not chain:
        return None, "the server sent no certificate"
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError as e:
        return None, f"a certificate of the chain cannot be parsed: {e}"
    leaf = certs[0]
    # RFC 7672 §3.1.1: DANE-EE binds the key or certificate; names and dates do not matter.
    for record in records:
        if record.usage == DANE_EE and record_matches(record, chain[0], leaf):
            return record, "DANE-EE matches the server certificate"
    reasons = []
    for record in records:
        if record.usage != DANE_TA:
            continue
        for index in range(1, len(certs)):
            if not record_matches(record, chain[index], certs[index]):
                continue
            # RFC 7672 §3.1.2: the anchor is trusted for the chain below it, with the
            # usual path checks, and the leaf must name the MX host (§3.2.3).
            error = _verify_to_anchor(certs, index, reference_names, now)
            if error is None:
                return record, f"DANE-TA matches certificate {index} of the chain"
            reasons.append(error)
    subject = leaf.subject.rfc4514_string() or "an empty subject"
    why = "; ".join(reasons) if reasons else "no record matches any certificate of the chain"
    return None, f"server certificate {subject}: {why}"


def _verify_to_anchor(certs, index, names, now) -> str | None:
    try:
        from cryptography.x509.verification import (DNSName, PolicyBuilder, Store,
                                                     VerificationError)
    except ImportError:
        # Debian 12's cryptography (38) has no path verifier: a DANE-TA record
        # cannot be checked there, and the message is deferred saying so.
        return "checking a DANE-TA chain needs cryptography 42 or later"
    builder = (PolicyBuilder().store(Store([certs[index]])).max_chain_depth(MAX_CHAIN_DEPTH)
               .time(now or datetime.datetime.now(datetime.timezone.utc)))
    errors = []
    for name in names:
        try:
            builder.build_server_verifier(DNSName(name)).verify(certs[0], certs[1:index])
            return None
        except (VerificationError, ValueError) as e:
            errors.append(f"{name}: {e}")
    return "the chain does not verify to the DANE-TA anchor (" + "; ".join(errors) + ")"


@register_policy
class DANEPolicy(Policy):
    name = "mx_auth.dane"
    word = "dane"

    def configure(self, cfg, ctx) -> None:
        globals_ = ctx.globals
        self.resolver = resolver_for(globals_.dns_servers if globals_ is not None else ())

    # -- finding the records ----------------------------------------------------------------

    def lookup(self, mx: str) -> DANEState | None:
        """The TLSA records for *mx* (None: DANE does not apply); a refusal when lookups fail."""
        try:
            addresses = self.resolver.addresses(mx)
        except DNSError as e:
            if not e.temporary:
                return None  # no such host: the connection fails anyway, DANE has no say
            raise self._lookup_failed(mx, e) from None
        if not addresses.authenticated:
            log.debug("not_applicable", mx=mx, reason="address records are not authenticated")
            return None
        names = [addresses.canonical_name] if addresses.canonical_name != mx else []
        names.append(mx)
        for name in names:
            found = self._tlsa(mx, name)
            if found is not None:
                return DANEState(f"_25._tcp.{name}", found, tuple(dict.fromkeys(names)))
        return None

    def _tlsa(self, mx: str, name: str) -> tuple[TLSARecord, ...] | None:
        try:
            answer = self.resolver.tlsa(name, 25)
        except DNSError as e:
            if not e.temporary:
                return None  # NXDOMAIN: no records
            raise self._lookup_failed(mx, e) from None
        if not answer.records:
            return None
        if not answer.authenticated:
            log.info("tlsa_ignored", mx=mx, name=answer.qname,
                     reason="the TLSA answer is not DNSSEC-authenticated")
            return None
        return tuple(TLSARecord(r.usage, r.selector, r.mtype, bytes(r.cert))
                     for r in answer.records)

    def _lookup_failed(self, mx: str, error: DNSError):
        # RFC 7672 §2.2: a failed lookup may hide records an attacker suppressed: defer.
        return refusal("dane", 451, (4, 4, 3), "DNS failure while looking up TLSA records",
                       f"{mx}: {error}", mx=mx)

    # -- the hooks --------------------------------------------------------------------------

    def check_mx(self, domain, mx, level):
        domain.spawn(f"dane:{mx.name}", lambda: self.lookup(mx.name))
        return level

    def check_connection(self, domain, mx, level, facts):
        try:
            state = domain.result(f"dane:{mx.name}", self.resolver.lifetime * 3 + JOIN_GRACE)
        except TimeoutError as e:
            raise refusal("dane", 451, (4, 4, 3), "DNS failure while looking up TLSA records",
                          f"{mx.name}: {e}", mx=mx.name) from None
        if state is None:
            return level
        usable = state.usable
        if not facts.encrypted:
            raise refusal("dane", 451, (4, 7, 10), "TLS is required but unsupported or failed",
                          f"{mx.name} has TLSA records at {state.tlsa_name}; "
                          f"{facts.describe_tls()}", mx=mx.name)
        if not usable:
            # RFC 7672 §2.2: TLS is still mandatory, but nothing authenticates the server.
            log.info("tlsa_unusable", mx=mx.name, name=state.tlsa_name,
                     records=" ".join(str(r) for r in state.records))
            return level
        record, how = match_chain(usable, facts.peer_chain, state.reference_names)
        if record is None:
            raise refusal("dane", 451, (4, 7, 5), "No matching TLSA records",
                          f"{mx.name}: {how} ({len(usable)} usable record(s) at "
                          f"{state.tlsa_name})", mx=mx.name)
        log.debug("matched", mx=mx.name, name=state.tlsa_name, record=str(record), how=how)
        return max(level, TLSLevel.AUTHENTICATED)
