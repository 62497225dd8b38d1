"""The mx_auth policies seen through target.remote's hook (``gmta/target/security.py``).

target.remote calls an ``mx_auth`` instance as ``start(meta)`` → an object
with ``prepare_domain(domain)``, ``check_mx(candidate, level)``,
``check_conn(facts)`` and ``close()``, and checks REQUIRETLS and
``TLS-Required: No`` itself. :class:`RemoteHook` maps those calls onto
:class:`~gmta.mxauth.policy.MessagePolicy`. The levels are the same enums on
both sides (``gmta.target.security``), so they pass unconverted; only the
connection facts are translated, because the policies need less (and other)
detail than the target records.
"""

from __future__ import annotations

from gmta.mxauth.facts import ConnectionFacts as PolicyFacts
from gmta.mxauth.policy import MessagePolicy
from gmta.target.security import ConnectionFacts, MXCandidate, MXLevel, TLSLevel


class RemoteHook:
    """One message's policies, with the hook's call signatures."""

    def __init__(self, message: MessagePolicy):
        self.message = message

    def prepare_domain(self, domain: str) -> None:
        self.message.prepare_domain(domain)

    def check_mx(self, candidate: MXCandidate, level: MXLevel) -> MXLevel:
        found = self.message.check_mx(candidate.domain, candidate.name,
                                      mx_authenticated=bool(candidate.mx_list.authenticated))
        return max(level, found)

    def check_conn(self, facts: ConnectionFacts) -> TLSLevel:
        tls = facts.tls
        encrypted = tls is not None
        ours = PolicyFacts(
            starttls_offered=encrypted or facts.tls_error is not None,
            tls_version=(tls.version or "TLS") if encrypted else None,
            # The target measures authenticated = PKIX-verified for the MX name.
            pkix_verified=facts.tls_level == TLSLevel.AUTHENTICATED,
            peer_chain=facts.peer_chain,
            tls_error=facts.tls_error, requiretls_offered=facts.requiretls_offered)
        verdict = self.message.check_connection(facts.domain, facts.mx, facts.mx_level, ours)
        return verdict.tls_level

    def close(self) -> None:
        self.message.close()
