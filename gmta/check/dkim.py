"""``check.dkim``: verify the DKIM signatures of a message (RFC 6376 §6).

dkimpy does the cryptography (RSA and, with PyNaCl, Ed25519 of RFC 8463);
keys are fetched through gmta's resolver (``DKIMKeyLookup``). Each signature
gets one RFC 8601 result: ``pass``, ``fail`` (bad signature or body hash),
``neutral`` (it lacks a field ``required_fields`` names), ``temperror``
(the key lookup failed temporarily), ``permerror`` (malformed, or no key).
"""

from __future__ import annotations

import re

import authres
import dkim as dkimpy

import gmta.log
from gmta.check.action import IGNORE, Action, ActionType
from gmta.check.dnsfuncs import DKIMKeyLookup
from gmta.config.module import register
from gmta.config.reader import Bool, Directive, Strings
from gmta.errors import SMTPError
from gmta.net.dns import resolver_for
from gmta.pipeline.check import Check, CheckResult, CheckState

log = gmta.log.get("check")

# Seconds for one key lookup.
KEY_LOOKUP_TIMEOUT = 10.0
# Signatures verified per message at most: each costs a DNS query and an RSA
# operation, and a message with hundreds would be a denial-of-service tool.
MAX_SIGNATURES = 8

NO_SIGNATURE = SMTPError(550, (5, 7, 20), "No DKIM signatures")
NO_VALID_SIGNATURE = SMTPError(550, (5, 7, 20), "No passing DKIM signatures")
# RFC 6376 §6.1.2 / RFC 7372 §3.1: a key that cannot be fetched now is TEMPFAIL.
TEMPORARY = SMTPError(451, (4, 7, 20), "DKIM verification failed with a temporary error, "
                                       "try again later")

_TAG = re.compile(rb"(?:^|;)\s*([a-z]+)\s*=\s*([^;]*)", re.IGNORECASE)


def signature_tags(value: bytes) -> dict[bytes, bytes]:
    """The tag=value pairs of a DKIM-Signature field (RFC 6376 §3.2), for reporting."""
    return {m.group(1).lower(): re.sub(rb"\s+", b"", m.group(2))
            for m in _TAG.finditer(value)}


def verify_all(message: bytes, resolver, required: list[str]) -> list[tuple[str, dict, str]]:
    """(result, tags, reason) for each signature of *message*, in header order."""
    verifier = dkimpy.DKIM(message, timeout=KEY_LOOKUP_TIMEOUT)
    signatures = [value for name, value in verifier.headers
                  if name.lower() == b"dkim-signature"][:MAX_SIGNATURES]
    results = []
    for index, value in enumerate(signatures):
        tags = signature_tags(value)
        lookup = DKIMKeyLookup(resolver, KEY_LOOKUP_TIMEOUT)
        try:
            valid = verifier.verify(idx=index, dnsfunc=lookup)
        except dkimpy.ValidationError as error:
            # The body hash differs: a broken signature (RFC 6376 §6.1.3), not a malformed one.
            results.append(("fail", tags, str(error)))
            continue
        except dkimpy.DKIMException as error:
            results.append(("permerror", tags, str(error)))
            continue
        if lookup.temporary_error is not None:
            results.append(("temperror", tags, str(lookup.temporary_error)))
        elif lookup.missing_key:
            results.append(("permerror", tags, "no key for signature"))
        elif not valid:
            results.append(("fail", tags, "signature did not verify"))
        else:
            signed = {name.lower() for name, _ in verifier.signed_headers}
            missing = [f for f in required if f.lower().encode() not in signed]
            if missing:
                # RFC 6376 §6.1.1: a verifier may ignore signatures that do not
                # cover the fields it needs.
                results.append(("neutral", tags, "not signed: " + ", ".join(missing)))
            else:
                results.append(("pass", tags, ""))
    return results


@register
class DKIMCheck(Check):
    name = "check.dkim"
    legacy_names = ("verify_dkim",)
    directives = (
        Directive("debug", Bool(), False, inherit_global=True, doc="log every result"),
        Directive("required_fields", Strings(), ["From", "Subject"],
                  doc="fields every signature must cover (From always)"),
        Directive("allow_body_subset", Bool(), False,
                  doc="accept signatures that cover part of the body only (l= tag)"),
        Directive("no_sig_action", ActionType(), Action(IGNORE),
                  doc="action for a message without signatures"),
        Directive("broken_sig_action", ActionType(), Action(IGNORE),
                  doc="action for a message without a valid signature"),
        Directive("fail_open", Bool(), False,
                  doc="accept the message when verification fails temporarily"),
    )

    def configure(self, cfg, ctx) -> None:
        self.debug = cfg.debug
        required = list(cfg.required_fields)
        if "from" not in (f.lower() for f in required):
            required.append("From")  # RFC 6376 §5.4: From MUST be signed
        self.required_fields = required
        self.allow_body_subset = cfg.allow_body_subset
        self.no_sig_action = cfg.no_sig_action
        self.broken_sig_action = cfg.broken_sig_action
        self.fail_open = cfg.fail_open
        self.resolver = resolver_for(ctx.globals.dns_servers)

    def check_state(self, meta, mail_from) -> CheckState:
        return _DKIMState(self, meta)


class _DKIMState(CheckState):
    def __init__(self, check: DKIMCheck, meta):
        self.check = check
        self.meta = meta

    def check_body(self, header: bytes, body) -> CheckResult:
        with body.open() as f:
            message = header + f.read()
        results = verify_all(message, self.check.resolver, self.check.required_fields)
        auth = []
        for result, tags, reason in results:
            if result == "pass" and b"l" in tags and not self.check.allow_body_subset:
                result, reason = "policy", "signature covers part of the body only"
            auth.append(authres.DKIMAuthenticationResult(
                result=result, header_d=tags.get(b"d", b"").decode("ascii", "replace") or None,
                header_s=tags.get(b"s", b"").decode("ascii", "replace") or None,
                reason=reason or None))
            level = log.info if result != "pass" or self.check.debug else log.debug
            level("dkim", msg_id=self.meta.id, result=result,
                  domain=tags.get(b"d", b"").decode("ascii", "replace"), reason=reason)
        if not results:
            auth.append(authres.DKIMAuthenticationResult(result="none"))
            return self.check.no_sig_action.apply(NO_SIGNATURE, tuple(auth))
        outcomes = {a.result for a in auth}
        if "pass" in outcomes:
            return CheckResult(auth=tuple(auth))
        if "temperror" in outcomes and not self.check.fail_open:
            return CheckResult(reject=TEMPORARY, auth=tuple(auth))
        return self.check.broken_sig_action.apply(NO_VALID_SIGNATURE, tuple(auth))
