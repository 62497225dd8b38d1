"""The mx_auth policies seen through target.remote's hook (``gmta/target/security.py``).

target.remote (branch ``remote``) calls an ``mx_auth`` instance as
``start(meta)`` → an object with ``prepare_domain(domain)``,
``check_mx(candidate, level)``, ``check_conn(facts)`` and ``close()``, and
checks REQUIRETLS and ``TLS-Required: No`` itself. :class:`RemoteHook` maps
those calls onto :class:`~gmta.mxauth.policy.MessagePolicy`, duck-typed on
the hook's objects so that this package does not import the target layer.
"""

from __future__ import annotations

from gmta.mxauth.facts import ConnectionFacts
from gmta.mxauth.levels import MXLevel, TLSLevel
from gmta.mxauth.policy import MessagePolicy


class RemoteHook:
    """One message's policies, with the hook's call signatures."""

    def __init__(self, message: MessagePolicy):
        self.message = message

    def prepare_domain(self, domain: str) -> None:
        self.message.prepare_domain(domain)

    def check_mx(self, candidate, level) -> MXLevel:
        """*candidate* has ``domain``, ``name`` and ``mx_list.authenticated``."""
        found = self.message.check_mx(candidate.domain, candidate.name,
                                      mx_authenticated=bool(candidate.mx_list.authenticated))
        # The caller's own enum back (target.remote logs it by name: "mtasts", not "1").
        return type(level)(max(int(level), int(found)))

    def check_conn(self, facts) -> TLSLevel:
        """*facts* is the hook's ConnectionFacts (leaf certificate, measured TLS level)."""
        tls = getattr(facts, "tls", None)
        encrypted = tls is not None
        ours = ConnectionFacts(
            starttls_offered=encrypted or facts.tls_error is not None,
            tls_version=(getattr(tls, "version", None) or "TLS") if encrypted else None,
            pkix_verified=int(facts.tls_level) == TLSLevel.AUTHENTICATED,
            peer_chain=getattr(facts, "peer_chain", None) or
            ((facts.peer_certificate,) if facts.peer_certificate else ()),
            tls_error=facts.tls_error, requiretls_offered=facts.requiretls_offered)
        verdict = self.message.check_connection(facts.domain, facts.mx,
                                                MXLevel(int(facts.mx_level)), ours)
        return type(facts.tls_level)(int(verdict.tls_level))

    def close(self) -> None:
        self.message.close()
