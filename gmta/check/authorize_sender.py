"""``check.authorize_sender``: submission users send only as themselves.

The envelope sender, and with ``check_header`` the From (or Sender) field,
must be an address the authenticated user may use: ``prepare_email`` maps an
address to its canonical form first (aliases), then ``user_to_email`` lists
what the user may use: addresses, whole domains, or ``*``. With the default
``identity`` tables the user name must be the address itself. Addresses are compared
case-folded, as maddy's default ``precis_casefold_email`` does (maddy-behaviour §3.1 E7:
``E\u0301@EXAMPLE1.org`` is ``é@example1.org``).
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import unicodedata

import gmta.log
from gmta.check.action import REJECT, Action, ActionType
from gmta.config.module import register
from gmta.config.reader import Bool, Directive, ModuleRef
from gmta.errors import SMTPError
from gmta.pipeline.check import PASS, Check, CheckResult, CheckState
from gmta.proto.grammar import normalize_address, split_address
from gmta.table.identity import IdentityTable

log = gmta.log.get("check")

UNAUTHENTICATED = SMTPError(530, (5, 7, 0), "Authentication required")
NOT_YOURS = SMTPError(553, (5, 7, 1), "Unauthorized use of sender address")
MALFORMED = SMTPError(553, (5, 1, 7), "Malformed sender address")
LOOKUP_FAILED = SMTPError(451, (4, 7, 1), "Unable to check sender address, try again later")


def _normalize(address: str) -> str | None:
    """*address* with its local part case-folded, or None if it cannot be normalised.

    RFC 8265 §3.3.2 (the PRECIS UsernameCaseMapped profile that maddy's
    ``precis_casefold_email`` applies): case folding, then NFC. Mailbox names are
    case-sensitive in SMTP (RFC 5321 §2.4), but who may use which address is not.
    """
    try:
        normalized = normalize_address(address, sender=True)
    except SMTPError:
        return None
    local, domain = split_address(normalized)
    local = unicodedata.normalize("NFC", local.casefold())
    return f"{local}@{domain}" if domain else local


@register
class AuthorizeSender(Check):
    name = "check.authorize_sender"
    directives = (
        Directive("debug", Bool(), False, inherit_global=True, doc="log every decision"),
        Directive("user_to_email", ModuleRef("table"), doc="user name -> allowed addresses"),
        Directive("prepare_email", ModuleRef("table"), doc="address -> canonical address"),
        Directive("check_header", Bool(), True, doc="check From/Sender too"),
        Directive("unauth_action", ActionType(), Action(REJECT), doc="not authenticated"),
        Directive("no_match_action", ActionType(), Action(REJECT), doc="not the user's address"),
        Directive("malformed_action", ActionType(), Action(REJECT), doc="unparsable From/Sender"),
        Directive("err_action", ActionType(), Action(REJECT), doc="a table lookup failed"),
    )

    def configure(self, cfg, ctx) -> None:
        self.debug = cfg.debug
        self.user_to_email = cfg.user_to_email or IdentityTable(None, [], self.node)
        self.prepare_email = cfg.prepare_email or IdentityTable(None, [], self.node)
        self.check_header = cfg.check_header
        self.unauth_action = cfg.unauth_action
        self.no_match_action = cfg.no_match_action
        self.malformed_action = cfg.malformed_action
        self.err_action = cfg.err_action

    def allowed(self, user: str, address: str) -> bool:
        """Whether *user* may send as *address* (both already normalised)."""
        canonical = self.prepare_email.lookup_multi(address) or [address]
        canonical = [_normalize(a) or a for a in canonical]
        allowed = self.user_to_email.lookup_multi(user)
        for value in allowed:
            value = value.strip()
            if value == "*":
                return True
            if "@" in value:
                if (_normalize(value) or value) in canonical:
                    return True
            elif any(split_address(a)[1] == value.lower().rstrip(".") for a in canonical):
                return True  # a whole domain
        return False

    def check_state(self, meta, mail_from) -> CheckState:
        return _AuthorizeState(self, meta)


class _AuthorizeState(CheckState):
    def __init__(self, check: AuthorizeSender, meta):
        self.check = check
        self.meta = meta

    def _user(self) -> str | None:
        user = self.meta.conn.get("auth_user")
        if not user:
            return None
        # The same normalisation as addresses, so "User@EXAMPLE.org" matches.
        return (_normalize(user) if "@" in user else None) or user.lower()

    def _decide(self, user: str, address: str, what: str) -> CheckResult:
        try:
            allowed = self.check.allowed(user, address)
        except Exception as e:  # a table backend failing is the operator's to fix
            log.error("authorize_sender", msg_id=self.meta.id, error=repr(e))
            return self.check.err_action.apply(LOOKUP_FAILED)
        if allowed:
            return PASS
        log.info("authorize_sender", msg_id=self.meta.id, user=user, address=address,
                 field=what, result="denied")
        return self.check.no_match_action.apply(NOT_YOURS)

    def check_sender(self, mail_from: str) -> CheckResult:
        user = self._user()
        if user is None:
            return self.check.unauth_action.apply(UNAUTHENTICATED)
        if not mail_from:
            return PASS  # the null sender claims no address
        return self._decide(user, mail_from, "envelope")

    def check_body(self, header: bytes, body) -> CheckResult:
        if not self.check.check_header:
            return PASS
        user = self._user()
        if user is None:
            return self.check.unauth_action.apply(UNAUTHENTICATED)
        # RFC 6532 §3.2: an SMTPUTF8 message's fields are UTF-8, so the addresses in them
        # are too (the bytes parser would turn those bytes into U+FFFD).
        text = header.decode("utf-8", "surrogateescape")
        fields = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(text)
        # RFC 5322 §3.6.2: Sender names the one who sent it when From lists several.
        value = fields.get_all("Sender") or fields.get_all("From") or []
        addresses = email.utils.getaddresses([str(v) for v in value])
        if len(addresses) != 1 or not addresses[0][1]:
            return self.check.malformed_action.apply(MALFORMED)
        address = _normalize(addresses[0][1])
        if address is None:
            return self.check.malformed_action.apply(MALFORMED)
        return self._decide(user, address, "header")
