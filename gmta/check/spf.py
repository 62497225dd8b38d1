"""``check.spf``: is the client allowed to send for the sender's domain (RFC 7208)?

The evaluation is pyspf's (macros, mechanisms, the lookup limits of
RFC 7208 §4.6.4) with every query through gmta's resolver
(``gmta.check.dnsfuncs.SPFQuery``). The identity is the MAIL FROM domain,
or the HELO name for the null sender (RFC 7208 §2.4).

With ``enforce_early yes`` the verdict is given at the sender stage. Without
it the evaluation starts there in the background and the verdict is given
with the body, where DMARC (RFC 7489 §10.1: do not reject on SPF alone when
the domain has a DMARC policy) may take the decision instead.
"""

from __future__ import annotations

import gevent

import authres
import gmta.log
from gmta.check.action import IGNORE, QUARANTINE, REJECT, Action, ActionType
from gmta.check.dnsfuncs import SPFQuery
from gmta.config.module import register
from gmta.config.reader import Bool, Directive
from gmta.errors import SMTPError
from gmta.net.dns import resolver_for
from gmta.pipeline.check import PASS, Check, CheckResult, CheckState
from gmta.proto.grammar import domain_to_ascii, split_address

log = gmta.log.get("check")

# RFC 7208 §4.6.4: an evaluation should be allowed at least 20 seconds in all;
# each query gets the resolver's own lifetime within that.
EVALUATION_TIMEOUT = 20.0
QUERY_LIFETIME = 10.0

# Replies per result (maddy's texts; RFC 7372 §3.2 gives X.7.23 to SPF failures).
REPLIES = {
    "none": SMTPError(550, (5, 7, 23), "No SPF policy"),
    "neutral": SMTPError(550, (5, 7, 23), "Neutral SPF result is not permitted"),
    "fail": SMTPError(550, (5, 7, 23), "SPF authentication failed"),
    "softfail": SMTPError(550, (5, 7, 23), "SPF authentication soft-failed"),
    "temperror": SMTPError(451, (4, 7, 23), "SPF authentication failed with a temporary error"),
    "permerror": SMTPError(550, (5, 7, 23), "SPF authentication failed with a permanent error"),
}


def evaluate(resolver, ip: str, sender: str, helo: str,
             timeout: float = EVALUATION_TIMEOUT) -> tuple[str, str]:
    """(result, explanation) of ``check_host()`` for *ip*, *sender* and *helo*."""
    query = SPFQuery(resolver, i=ip, s=sender, h=helo, timeout=min(QUERY_LIFETIME, timeout))
    try:
        with gevent.Timeout(timeout):
            result, _code, explanation = query.check()
    except gevent.Timeout:
        return "temperror", f"no result within {timeout:g} s"
    # pyspf says "ambiguous"/"unknown" only in its pre-RFC 7208 modes.
    result = {"error": "temperror", "unknown": "permerror"}.get(result, result)
    return result, explanation


@register
class SPFCheck(Check):
    name = "check.spf"
    legacy_names = ("apply_spf",)
    directives = (
        Directive("debug", Bool(), False, inherit_global=True, doc="log every result"),
        Directive("enforce_early", Bool(), False,
                  doc="act at MAIL FROM instead of at the end of data (no DMARC override)"),
        Directive("none_action", ActionType(), Action(IGNORE), doc="action for 'none'"),
        Directive("neutral_action", ActionType(), Action(IGNORE), doc="action for 'neutral'"),
        Directive("fail_action", ActionType(), Action(QUARANTINE), doc="action for 'fail'"),
        Directive("softfail_action", ActionType(), Action(IGNORE), doc="action for 'softfail'"),
        Directive("permerr_action", ActionType(), Action(REJECT), doc="action for 'permerror'"),
        Directive("temperr_action", ActionType(), Action(REJECT), doc="action for 'temperror'"),
    )

    def configure(self, cfg, ctx) -> None:
        self.debug = cfg.debug
        self.enforce_early = cfg.enforce_early
        self.actions = {"none": cfg.none_action, "neutral": cfg.neutral_action,
                        "fail": cfg.fail_action, "softfail": cfg.softfail_action,
                        "permerror": cfg.permerr_action, "temperror": cfg.temperr_action}
        self.resolver = resolver_for(ctx.globals.dns_servers)

    def check_state(self, meta, mail_from) -> CheckState:
        return _SPFState(self, meta, mail_from)


class _SPFState(CheckState):
    def __init__(self, check: SPFCheck, meta, mail_from: str):
        self.check = check
        self.meta = meta
        self.mail_from = mail_from
        self.pending: gevent.Greenlet | None = None
        self.done = False

    def _identity(self) -> tuple[str, str, str] | None:
        """(ip, sender in A-labels, helo), or None for mail that has no client IP."""
        conn = self.meta.conn
        ip = conn.get("ip")
        if not ip:
            return None  # locally generated (DSNs) or over a unix socket: nothing to check
        helo = conn.get("helo", "")
        sender = self.mail_from
        if sender:
            local, domain = split_address(sender)
            try:
                domain = domain_to_ascii(domain) if domain else ""
            except (SMTPError, UnicodeError, ValueError):
                return ip, "", helo
            # RFC 8616 §4: the domain in A-labels; %{l} of a UTF-8 local part matches nothing.
            sender = f"{local if local.isascii() else ''}@{domain}" if domain else ""
        return ip, sender, helo

    def check_connection(self) -> CheckResult:
        identity = self._identity()
        if identity is None:
            self.done = True
            return PASS
        if self.check.enforce_early:
            self.done = True
            return self._verdict(*self._evaluate(identity), deferrable=False)
        self.pending = gevent.spawn(self._evaluate, identity)
        return PASS

    def _evaluate(self, identity) -> tuple[str, str, str]:
        ip, sender, helo = identity
        result, explanation = evaluate(self.check.resolver, ip, sender, helo)
        return result, explanation, sender or f"postmaster@{helo}"

    def check_body(self, header: bytes, body) -> CheckResult:
        if self.done or self.pending is None:
            return PASS
        self.pending.join(timeout=EVALUATION_TIMEOUT + 1)
        self.done = True
        if not self.pending.successful():
            self.pending.kill(block=False)
            log.error("spf_failed", msg_id=self.meta.id, error=repr(self.pending.exception))
            return self._verdict("temperror", "evaluation failed", "", deferrable=True)
        return self._verdict(*self.pending.value, deferrable=True)

    def _verdict(self, result: str, explanation: str, identity: str, *,
                 deferrable: bool) -> CheckResult:
        helo = self.meta.conn.get("helo") or None
        auth = authres.SPFAuthenticationResult(
            result=result, smtp_mailfrom=identity.rpartition("@")[2] if self.mail_from else None,
            smtp_helo=helo, reason=explanation or None)
        level = log.info if result != "pass" or self.check.debug else log.debug
        level("spf", msg_id=self.meta.id, result=result, identity=identity,
              ip=self.meta.conn.get("ip"), reason=explanation)
        if result == "pass":
            return CheckResult(auth=(auth,))
        action = self.check.actions.get(result, Action(REJECT))
        reason = REPLIES.get(result, REPLIES["permerror"])
        return action.apply(reason, (auth,), dmarc_deferrable=deferrable)

    def close(self) -> None:
        if self.pending is not None and not self.pending.dead:
            self.pending.kill(block=False)
