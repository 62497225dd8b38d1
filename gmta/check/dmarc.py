"""DMARC (RFC 7489): the From domain's policy applied to SPF and DKIM results.

Enforced by an endpoint's ``dmarc`` directive, after the body checks: the
pipeline gives this module the RFC 8601 results of ``check.spf`` and
``check.dkim`` and the message header. DMARC passes when SPF passed for a
domain aligned with the From domain, or a DKIM signature with an aligned
``d=`` verified (RFC 7489 §3.1, §4.2). Otherwise the domain's policy
applies: ``reject`` refuses the message with ``550 5.7.1``, ``quarantine``
flags it; a policy that cannot be fetched now answers ``450 4.7.1``.

The organisational domain (RFC 7489 §3.2) comes from the public suffix list
(``gmta/check/psl.py``: bundled with ``publicsuffixlist``, or Debian's list;
no network at run time).
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import functools
import random
from dataclasses import dataclass

import authres
import authres.dmarc

import gmta.log
from gmta.check.psl import load_private_suffix
from gmta.errors import SMTPError
from gmta.net.dns import DNSError, Resolver
from gmta.pipeline.check import CheckResult

log = gmta.log.get("check")

POLICY_LOOKUP_TIMEOUT = 10.0

REJECTED = SMTPError(550, (5, 7, 1), "DMARC check failed")
TEMPORARY = SMTPError(450, (4, 7, 1), "DMARC check failed with a temporary error, "
                                      "try again later")

_private_suffix = None


def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix plus one label (the domain itself if none)."""
    global _private_suffix
    if _private_suffix is None:
        _private_suffix = load_private_suffix()  # loaded once, offline
    domain = domain.lower().rstrip(".")
    return _private_suffix(domain) or domain


def aligned(domain: str, from_domain: str, strict: bool) -> bool:
    """RFC 7489 §3.1.1/§3.1.2: strict = the same name, relaxed = the same organisation."""
    domain, from_domain = domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    if strict:
        return domain == from_domain
    return organizational_domain(domain) == organizational_domain(from_domain)


@dataclass(frozen=True)
class Record:
    """A DMARC policy record (RFC 7489 §6.3) and the domain it was found at."""

    domain: str
    policy: str
    subdomain_policy: str | None
    strict_dkim: bool
    strict_spf: bool
    percent: int

    def policy_for(self, from_domain: str) -> str:
        # RFC 7489 §6.6.3: sp= applies to mail from a subdomain of the record's domain.
        if from_domain.lower() != self.domain and self.subdomain_policy:
            return self.subdomain_policy
        return self.policy


class PolicyTemporaryError(Exception):
    pass


def parse_record(text: str, domain: str) -> Record | None:
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), value.strip())
    if tags.get("v") != "DMARC1":
        return None
    policies = ("none", "quarantine", "reject")
    policy = tags.get("p", "").lower()
    if policy not in policies:
        # RFC 7489 §6.6.3 step 6: an invalid p= with a valid rua= counts as none.
        if "rua" not in tags:
            return None
        policy = "none"
    subdomain = tags.get("sp", "").lower()
    try:
        percent = min(max(int(tags.get("pct", "100")), 0), 100)
    except ValueError:
        percent = 100
    return Record(domain, policy, subdomain if subdomain in policies else None,
                  tags.get("adkim", "r").lower() == "s", tags.get("aspf", "r").lower() == "s",
                  percent)


def _lookup(resolver: Resolver, domain: str) -> Record | None:
    try:
        answer = resolver.txt(f"_dmarc.{domain}", lifetime=POLICY_LOOKUP_TIMEOUT)
    except DNSError as error:
        if error.temporary:
            raise PolicyTemporaryError(str(error)) from None
        return None
    records = [t.decode("utf-8", "replace") for t in answer.texts
               if t[:8].upper() == b"V=DMARC1"]
    # RFC 7489 §6.6.3 step 2: anything but exactly one record is no record.
    if len(records) != 1:
        return None
    return parse_record(records[0], domain)


def fetch_record(resolver: Resolver, from_domain: str) -> Record | None:
    """RFC 7489 §6.6.3: the record at the From domain, else at its organisational domain."""
    from_domain = from_domain.lower().rstrip(".")
    record = _lookup(resolver, from_domain)
    if record is None:
        org = organizational_domain(from_domain)
        if org != from_domain:
            record = _lookup(resolver, org)
    return record


def header_from_domain(header: bytes) -> str | None:
    """The domain of the one author in From (RFC 7489 §6.6.1), or None."""
    fields = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header)
    values = fields.get_all("From") or []
    addresses = email.utils.getaddresses([str(v) for v in values])
    if len(addresses) != 1:
        return None
    domain = addresses[0][1].rpartition("@")[2].strip().rstrip(".")
    if not domain:
        return None
    try:
        return domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None


class Evaluation:
    """DMARC for one message: the policy found for its From domain, then the verdict."""

    def __init__(self, resolver: Resolver, header: bytes, msg_id: str):
        self.resolver = resolver
        self.msg_id = msg_id
        self._header = header
        self._fetched = False
        self._record: Record | None = None
        self.temporary: str | None = None

    @functools.cached_property
    def from_domain(self) -> str | None:
        """Parsed at the first use: most messages meet no SPF or DKIM check, and
        parsing every header cost more CPU than the rest of DMARC (bench/README.md)."""
        return header_from_domain(self._header)

    @property
    def record(self) -> Record | None:
        """The policy, fetched at the first use (not at all for mail nobody authenticated)."""
        if not self._fetched and self.from_domain is not None:
            self._fetched = True
            try:
                self._record = fetch_record(self.resolver, self.from_domain)
            except PolicyTemporaryError as e:
                self.temporary = str(e)
        return self._record

    @property
    def policy_applies(self) -> bool:
        """Whether DMARC takes the decisions SPF would otherwise take (RFC 7489 §10.1)."""
        return self.record is not None and self.record.policy_for(self.from_domain) != "none"

    def verdict(self, auth: list) -> CheckResult:
        """The result for the RFC 8601 results *auth* of the message's checks."""
        spf = [r for r in auth if r.method == "spf"]
        dkim = [r for r in auth if r.method == "dkim"]
        if not spf and not dkim:
            # maddy's rule: without SPF and DKIM checks there is nothing to align.
            return CheckResult()
        if self.from_domain is None:
            return CheckResult()
        record = self.record
        if self.temporary is not None:
            return self._result("temperror", None, reject=TEMPORARY, reason=self.temporary)
        if record is None:
            return self._result("none", None)
        passed = any(r.result == "pass" and r.header_d and
                     aligned(r.header_d, self.from_domain, record.strict_dkim) for r in dkim)
        passed = passed or any(r.result == "pass" and _spf_domain(r) and
                               aligned(_spf_domain(r), self.from_domain, record.strict_spf)
                               for r in spf)
        if passed:
            return self._result("pass", record)
        policy = record.policy_for(self.from_domain)
        if any(r.result == "temperror" for r in [*spf, *dkim]) and policy != "none":
            # An identity that might have passed could not be checked: try later.
            return self._result("temperror", record, reject=TEMPORARY)
        # RFC 7489 §6.6.4: outside the pct= sample the next weaker policy applies.
        if record.percent < 100 and random.randrange(100) >= record.percent:
            policy = {"reject": "quarantine", "quarantine": "none"}.get(policy, policy)
        if policy == "reject":
            return self._result("fail", record, reject=REJECTED, policy=policy)
        if policy == "quarantine":
            return self._result("fail", record, quarantine=True, policy=policy)
        return self._result("fail", record, policy=policy)

    def _result(self, result: str, record: Record | None, *, reject: SMTPError | None = None,
                quarantine: bool = False, reason: str | None = None,
                policy: str | None = None) -> CheckResult:
        log.info("dmarc", msg_id=self.msg_id, result=result, from_domain=self.from_domain,
                 policy=policy or (record.policy if record else None),
                 action="reject" if reject else "quarantine" if quarantine else "none")
        auth = authres.dmarc.DMARCAuthenticationResult(
            result=result, header_from=self.from_domain, reason=reason,
            policy=(record.policy_for(self.from_domain) if record else None))
        return CheckResult(reject=reject, quarantine=quarantine, auth=(auth,))


def _spf_domain(result) -> str | None:
    # RFC 7489 §4.2: the identity SPF authenticated, MAIL FROM or else HELO.
    return result.smtp_mailfrom or result.smtp_helo
