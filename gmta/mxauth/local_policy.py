"""``mx_auth.local_policy``: minimum MX and TLS levels required for every message.

Runs last (``policy.ORDER``), so it sees the levels the other policies set.
``local_policy off`` is both minimums ``none``; the default ``min_tls_level``
is ``encrypted`` (DESIGN §1.3, the newer seed page). A refusal names the
level the MX or connection had and the minimum it missed, so an operator
can tell a policy doing its job from a policy not applied (maddy #717).
"""

from __future__ import annotations

from gmta.config.reader import Directive, Enum
from gmta.mxauth.policy import Policy, register_policy
from gmta.mxauth.refusal import refusal
from gmta.target.security import MXLevel, TLSLevel, parse_level


@register_policy
class LocalPolicy(Policy):
    name = "mx_auth.local_policy"
    word = "local_policy"
    max_inline_args = 1
    directives = (
        Directive("min_tls_level", Enum("none", "encrypted", "authenticated"), "encrypted",
                  doc="the lowest TLS level a connection may have"),
        Directive("min_mx_level", Enum("none", "mtasts", "dnssec"), "none",
                  doc="the lowest MX level an MX host may have"),
    )

    def configure(self, cfg, ctx) -> None:
        if self.inline_args:
            if [a.lower() for a in self.inline_args] != ["off"] or self.node.children is not None:
                raise self.node.error("local_policy: the only argument is 'off', without a block",
                                      hint="write 'local_policy off' or 'local_policy { ... }'")
            self.min_tls, self.min_mx = TLSLevel.NONE, MXLevel.NONE
            return
        self.min_tls = parse_level(TLSLevel, cfg.min_tls_level)
        self.min_mx = parse_level(MXLevel, cfg.min_mx_level)

    def check_mx(self, domain, mx, level):
        if level < self.min_mx:
            raise refusal("local_policy", 451, (4, 7, 0),
                          "Failed to establish the MX record authenticity",
                          f"{mx.name} has MX level {level.word}, min_mx_level is "
                          f"{self.min_mx.word}", mx=mx.name)
        return level

    def check_connection(self, domain, mx, level, facts):
        if level < self.min_tls:
            raise refusal("local_policy", 451, (4, 7, 1),
                          "TLS is not available or unauthenticated but required",
                          f"{mx.name} gives TLS level {level.word} ({facts.describe_tls()}), "
                          f"min_tls_level is {self.min_tls.word}", mx=mx.name)
        return level
