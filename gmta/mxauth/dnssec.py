"""``mx_auth.dnssec``: MX level ``dnssec`` for a DNSSEC-validated MX answer.

gmta does not validate DNSSEC itself; like maddy it relies on a validating
resolver, which answers SERVFAIL for bogus data (RFC 4035 §5.5) and sets the
AD flag on validated answers (RFC 4035 §3.2.3). The flag is believed only
from a loopback resolver: on the way from any other resolver nothing protects
it (RFC 6698 §1.3, RFC 7672 §1.3). ``gmta.net.dns.Answer.authenticated`` is
that rule; the remote target passes its value for the MX answer as
``mx_authenticated``.
"""

from __future__ import annotations

from gmta.mxauth.policy import Policy, register_policy
from gmta.target.security import MXLevel


@register_policy
class DNSSECPolicy(Policy):
    name = "mx_auth.dnssec"
    word = "dnssec"

    def check_mx(self, domain, mx, level):
        return MXLevel.DNSSEC if mx.authenticated else level
