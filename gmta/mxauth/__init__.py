"""Outbound transport security: the ``mx_auth`` policies (MTA-STS, STARTTLS
Everywhere lists, DANE, DNSSEC, local policy) and REQUIRETLS (RFC 8689).

How the remote target uses this package
=======================================

Configuration. target.remote declares :data:`MX_AUTH_DIRECTIVE` among its
directives; it reads ``mx_auth { ... }`` (inline) and ``mx_auth &NAME`` (a
top-level ``mx_auth NAME { }`` block shared by several targets). The value is
an :class:`MXAuth` module or None; :func:`policies_of` turns it into a
:class:`PolicySet` (no directive: :data:`NO_POLICIES`, which still checks
REQUIRETLS)::

    directives = (..., MX_AUTH_DIRECTIVE, ...)
    def configure(self, cfg, ctx):
        self.policies = policies_of(cfg.mx_auth)

Per message (per delivery attempt)::

    auth = self.policies.for_message(
        requiretls=meta.requiretls,                    # MAIL ... REQUIRETLS
        tls_required_no=override and has_tls_required_no_header,
        relaxed_requiretls=self.relaxed_requiretls, msg_id=meta.id)
    try:
        auth.prepare_domain(domain)       # MTA-STS fetch starts now, in parallel
        mx_list = resolve_mx(resolver, domain)
        for host in mx_list.hosts:
            try:
                mx_level = auth.check_mx(domain, host.name,
                                         mx_authenticated=mx_list.authenticated)
            except SMTPError as e:        # refused before connecting: next MX
                last_error = e; continue
            client = connect(...); ...; STARTTLS as usual (verify, else retry
            unverified, else plaintext: maddy's fallbacks), then:
            facts = ConnectionFacts.from_tls_socket(client.sock,
                        pkix_verified=client.tls.verified,
                        requiretls_offered=client.supports("REQUIRETLS"))
            # or, without TLS:
            facts = ConnectionFacts(starttls_offered=..., tls_error="...")
            try:
                verdict = auth.check_connection(domain, host.name, mx_level, facts)
            except SMTPError as e:        # refused after EHLO: QUIT, next MX
                last_error = e; continue
            # verdict.tls_level, verdict.mx_level: for logs, Received, the pool key;
            # verdict.send_requiretls: put REQUIRETLS on MAIL FROM
            break
    finally:
        auth.close()                      # stops background work left over

``pkix_verified`` must mean: the chain verified against tls_client's roots
*and* the certificate is valid for the MX host name (RFC 8461 §4.2). The
peer chain is taken even from an unverified handshake, for DANE.

Refusals are ``SMTPError``s; temporary ones (4xx) should make the caller try
the next MX and, if none works, defer. ``error.misc["policy"]`` names the
policy, and the text says which policy refused and why (maddy issue #717).
Every refusal and every accepted connection is logged with the levels.

Order. Policies run in maddy's fixed order whatever the config order:
mtasts → sts_preload → dane → dnssec → local_policy, then REQUIRETLS. Each
may refuse or raise the level; the level is the highest any gave.

Codes (gmta differs from maddy where the RFCs ask for deferral):

==============================================  ==============  ==================
refusal                                          gmta            maddy
==============================================  ==============  ==================
mtasts enforce, MX not in the policy             451 4.7.0       550 5.7.0
mtasts enforce, no TLS                           451 4.7.1       451 4.7.1
mtasts enforce, certificate not verified         451 4.7.1       451 4.7.1
sts_preload (as mtasts)                          451 4.7.0/4.7.1 (no-op)
dane, TLSA lookup failed                         451 4.4.3       temporary
dane, TLSA present but no TLS                    451 4.7.10      550 5.7.1
dane, no matching TLSA record                    451 4.7.5       550 5.7.0
local_policy, MX level below min_mx_level        451 4.7.0       451 4.7.0
local_policy, TLS level below min_tls_level      451 4.7.1       451 4.7.1
REQUIRETLS not satisfiable                       550 5.7.30      550 5.7.30
==============================================  ==============  ==================

target.remote on branch ``remote`` already has a hook protocol
(``gmta/target/security.py``: ``start(meta)`` → ``prepare_domain``,
``check_mx(candidate, level)``, ``check_conn(facts)``, ``close``).
``MXAuth.start(meta)`` returns :class:`~gmta.mxauth.remote_hook.RemoteHook`,
which speaks that protocol over the same :class:`MessagePolicy`; with it the
target keeps its own REQUIRETLS and ``TLS-Required: No`` handling. Its facts
carry the whole peer chain (``gmta.net.tls.peer_chain``), not only the leaf,
or DANE-TA could not match. The levels are the target layer's own
(``gmta.target.security.MXLevel``/``TLSLevel``; re-exported here): one
definition, so the hook passes them both ways without conversion.

Layering (DESIGN §3): this package imports the config, net and log layers and
the target layer's ``gmta.target.security`` (levels and hook types); nothing
in ``gmta/target`` imports this package: target.remote finds ``mx_auth``
through the module registry.
"""

import gmta.mxauth.dane  # noqa: F401  (registers mx_auth.dane)
import gmta.mxauth.dnssec  # noqa: F401
import gmta.mxauth.local_policy  # noqa: F401
import gmta.mxauth.mtasts  # noqa: F401
import gmta.mxauth.sts_preload  # noqa: F401
from gmta.mxauth.facts import ConnectionFacts, peer_chain
from gmta.mxauth.policy import (MX_AUTH_DIRECTIVE, NO_POLICIES, ConnectionVerdict, MessagePolicy,
                                MXAuth, PolicySet, policies_of)
from gmta.target.security import MXLevel, TLSLevel

__all__ = ["ConnectionFacts", "ConnectionVerdict", "MX_AUTH_DIRECTIVE", "MXAuth", "MXLevel",
           "MessagePolicy", "NO_POLICIES", "PolicySet", "TLSLevel", "peer_chain", "policies_of"]
