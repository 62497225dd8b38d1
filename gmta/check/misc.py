"""The simple checks: ``require_mx_record``, ``require_matching_rdns``, ``require_tls``.

Each has one ``fail_action`` (default ``quarantine``; ``reject`` for
require_tls, as maddy's docs say) and answers about the connection or the
sender. A DNS failure that may pass is a temporary refusal whatever the
action: quarantining good mail because a resolver hiccuped would be worse.
"""

from __future__ import annotations

import authres
import dns.name

import gmta.log
from gmta.check.action import QUARANTINE, REJECT, Action, ActionType
from gmta.config.module import register
from gmta.config.reader import Bool, Directive
from gmta.errors import SMTPError
from gmta.net import rdns
from gmta.net.dns import DNSError, resolver_for
from gmta.pipeline.check import PASS, Check, CheckResult, CheckState
from gmta.proto.grammar import split_address

log = gmta.log.get("check")

MX_LOOKUP_TIMEOUT = 10.0


class _SimpleCheck(Check):
    default_action = Action(QUARANTINE)

    @classmethod
    def _directives(cls, default: Action):
        return (
            Directive("debug", Bool(), False, inherit_global=True, doc="log every result"),
            Directive("fail_action", ActionType(), default, doc="what a failure does"),
        )

    def configure(self, cfg, ctx) -> None:
        self.debug = cfg.debug
        self.fail_action = cfg.fail_action
        self.resolver = resolver_for(ctx.globals.dns_servers)


@register
class RequireMXRecord(_SimpleCheck):
    """The sender's domain has MX records and none is null (RFC 7505)."""

    name = "check.require_mx_record"
    directives = _SimpleCheck._directives(Action(QUARANTINE))

    def check_state(self, meta, mail_from) -> CheckState:
        return _MXState(self, meta, mail_from)


NO_MX = SMTPError(501, (5, 7, 27), "Sender domain has no MX records")
NULL_MX = SMTPError(556, (5, 7, 27), "Sender domain does not accept email (null MX)")
DNS_LATER = SMTPError(451, (4, 4, 3), "DNS lookup failed, try again later")


class _MXState(CheckState):
    def __init__(self, check: RequireMXRecord, meta, mail_from: str):
        self.check = check
        self.meta = meta

    def check_sender(self, mail_from: str) -> CheckResult:
        _, domain = split_address(mail_from)
        if not mail_from or not domain:
            return PASS  # the null sender and bare postmaster have no domain to ask about
        try:
            answer = self.check.resolver.mx(domain, lifetime=MX_LOOKUP_TIMEOUT)
            exchanges = [r.exchange for r in answer.records]
        except DNSError as error:
            if error.temporary:
                log.info("require_mx_record", msg_id=self.meta.id, domain=domain,
                         error=str(error))
                return CheckResult(reject=DNS_LATER)
            exchanges = []
        # RFC 7505 §3: a single MX with the root as exchange says "no mail here".
        if len(exchanges) == 1 and exchanges[0] == dns.name.root:
            reason = NULL_MX
        elif not exchanges:
            reason = NO_MX
        else:
            return PASS
        log.info("require_mx_record", msg_id=self.meta.id, domain=domain, reply=str(reason))
        return self.check.fail_action.apply(reason)


@register
class RequireMatchingRDNS(_SimpleCheck):
    """The client's forward-confirmed rDNS name is its EHLO name (or under it)."""

    name = "check.require_matching_rdns"
    directives = _SimpleCheck._directives(Action(QUARANTINE))

    def check_state(self, meta, mail_from) -> CheckState:
        return _RDNSState(self, meta)


RDNS_MISMATCH = SMTPError(550, (5, 7, 25), "rDNS name does not match source hostname")
RDNS_NONE = SMTPError(550, (5, 7, 25), "No PTR record found")


class _RDNSState(CheckState):
    def __init__(self, check: RequireMatchingRDNS, meta):
        self.check = check
        self.meta = meta

    def check_body(self, header: bytes, body) -> CheckResult:
        # The endpoint looked the name up when the session began and keeps it in
        # meta.conn by the time the body arrives (gmta.net.rdns).
        conn = self.meta.conn
        if not conn.get("ip"):
            return PASS
        status = conn.get("rdns_status")
        name = (conn.get("rdns") or "").lower().rstrip(".")
        helo = (conn.get("helo") or "").lower().rstrip(".")
        if status is None and conn.get("ip"):
            # No Received lookup (submission): ask now, bounded.
            found = rdns.reverse_name(self.check.resolver, conn["ip"])
            conn.update(found.facts())
            status, name = found.status, (found.name or "")
        if status == rdns.TEMPERROR:
            return CheckResult(reject=DNS_LATER, auth=(_iprev("temperror", conn),))
        if status == rdns.CONFIRMED and (name == helo or helo.endswith("." + name)
                                         or name.endswith("." + helo)):
            return CheckResult(auth=(_iprev("pass", conn),))
        reason = RDNS_NONE if status == rdns.NO_PTR else RDNS_MISMATCH
        log.info("require_matching_rdns", msg_id=self.meta.id, ip=conn.get("ip"), helo=helo,
                 rdns=name or None, status=status)
        return self.check.fail_action.apply(reason, (_iprev("fail", conn),))


def _iprev(result: str, conn: dict):
    # RFC 8601 §2.7.3: the iprev method reports the address it checked.
    return authres.IPRevAuthenticationResult(result=result, policy_iprev=conn.get("ip"))


@register
class RequireTLS(_SimpleCheck):
    """The client talks over TLS (implicit or after STARTTLS)."""

    name = "check.require_tls"
    directives = _SimpleCheck._directives(Action(REJECT))

    def check_state(self, meta, mail_from) -> CheckState:
        return _TLSState(self, meta)


TLS_REQUIRED = SMTPError(550, (5, 7, 1), "TLS conversation required")


class _TLSState(CheckState):
    def __init__(self, check: RequireTLS, meta):
        self.check = check
        self.meta = meta

    def check_connection(self) -> CheckResult:
        if self.meta.conn.get("tls") or not self.meta.conn.get("ip"):
            return PASS
        return self.check.fail_action.apply(TLS_REQUIRED)
