"""``mx_auth.mtasts``: SMTP MTA Strict Transport Security (RFC 8461).

For each recipient domain, in the background while the MX lookup runs:

1. TXT ``_mta-sts.<domain>`` gives the policy id (RFC 8461 §3.1);
2. a cached, unexpired policy with that id is used as it is; otherwise the
   policy is fetched from ``https://mta-sts.<domain>/.well-known/mta-sts.txt``
   (RFC 8461 §3.3), resolved through gmta's resolver, certificate verified
   against ``tls_client``'s roots, within ``FETCH_TIMEOUT`` and
   ``MAX_POLICY_SIZE``, and cached for its ``max_age``;
3. with no TXT record, or a failed fetch, an unexpired cached policy is still
   used (RFC 8461 §5.1), so stripping the record does not switch MTA-STS off.

Then, per MX (RFC 8461 §5): a policy of any mode listing the MX gives it MX
level ``mtasts``. In ``enforce`` mode an MX not listed is refused, and so is a
connection without TLS or without a certificate verified for the MX name
(§4.2). In ``testing`` mode those failures are logged and delivery goes on.

gmta differs from maddy on purpose: an MX refused by an enforce policy is a
*temporary* failure (451 4.7.0, maddy 550 5.7.0), because a policy that does
not match the MX records is usually a policy being updated (RFC 8461 §10.2).
"""

from __future__ import annotations

import time

import gevent
import gevent.lock

import gmta.log
from gmta.config.reader import Directive, Enum, Int, Path
from gmta.mxauth.https import FetchError, HTTPSResponse, https_get, verifying_context
from gmta.mxauth.policy import Policy, register_policy
from gmta.mxauth.refusal import refusal
from gmta.mxauth.sts_cache import CachedPolicy, FSCache, RAMCache
from gmta.mxauth.sts_policy import PolicyError, parse_policy, parse_txt
from gmta.net.dns import DNSError, resolver_for
from gmta.target.security import MXLevel, TLSLevel

log = gmta.log.get("mx_auth.mtasts")

#: Seconds for the whole HTTPS fetch (connect, TLS, request, body).
FETCH_TIMEOUT = 20.0
#: RFC 8461 §3.3 suggests a 64 KiB limit on the policy body.
MAX_POLICY_SIZE = 64 * 1024
#: A policy whose id did not change is fetched again after this long anyway,
#: so a new max_age or mx list reaches us (RFC 8461 §5.1, "proactively refresh").
REFRESH_AFTER = 24 * 3600.0
#: Concurrent fetches for distinct domains at most; more wait for a free one.
MAX_FETCHES = 100
WELL_KNOWN = "/.well-known/mta-sts.txt"


@register_policy
class MTASTSPolicy(Policy):
    name = "mx_auth.mtasts"
    word = "mtasts"
    directives = (
        Directive("cache", Enum("fs", "ram"), "fs", doc="where policies are cached"),
        Directive("fs_dir", Path(), None, doc="the directory of the fs cache"),
        Directive("https_port", Int(1, 65535), 443,
                  doc="port of the policy servers (a test hook; RFC 8461 says 443)"),
    )

    def configure(self, cfg, ctx) -> None:
        globals_ = ctx.globals
        self.resolver = resolver_for(globals_.dns_servers if globals_ is not None else ())
        tls_client = globals_.tls_client if globals_ is not None else None
        self.context = verifying_context(tls_client)
        self.https_port = cfg.https_port
        if cfg.cache == "fs":
            self.cache: RAMCache = FSCache(cfg.fs_dir or ctx.state_path("mtasts_cache"))
        else:
            self.cache = RAMCache()
        self.clock = time.time
        # One lookup per domain at a time: concurrent messages share it.
        self._inflight: dict[str, gevent.Greenlet] = {}
        self._fetch_slots = gevent.lock.BoundedSemaphore(MAX_FETCHES)

    # -- finding the policy of a domain ---------------------------------------------------

    def policy(self, domain: str) -> CachedPolicy | None:
        """The policy that applies to *domain* now (None: no MTA-STS), fetched if needed."""
        job = self._inflight.get(domain)
        if job is None:
            job = self._inflight[domain] = gevent.spawn(self._find, domain)
            job.link(lambda _job: self._inflight.pop(domain, None))
        return job.get()

    def _find(self, domain: str) -> CachedPolicy | None:
        cached = self.cache.get(domain)
        try:
            policy_id = self._txt_id(domain)
        except (DNSError, PolicyError) as e:
            # RFC 8461 §5.1: without a valid record, a cached policy still applies.
            log.info("txt_unusable", domain=domain, error=str(e),
                     cached_id=cached.policy_id if cached else None)
            return cached
        if policy_id is None:
            return cached
        now = self.clock()
        if cached is not None and cached.policy_id == policy_id \
                and now - cached.fetched_at < REFRESH_AFTER:
            return cached
        try:
            fresh = self._fetch(domain, policy_id)
        except (FetchError, PolicyError) as e:
            # RFC 8461 §5.1: a failed fetch keeps the previous policy in force.
            log.warning("fetch_failed", domain=domain, id=policy_id, error=str(e),
                        cached_id=cached.policy_id if cached else None)
            return cached
        log.info("policy_fetched", domain=domain, id=policy_id, mode=fresh.policy.mode,
                 max_age=fresh.policy.max_age, mx=",".join(fresh.policy.mx),
                 previous_id=cached.policy_id if cached else None)
        self.cache.put(fresh)
        return fresh

    def _txt_id(self, domain: str) -> str | None:
        try:
            answer = self.resolver.txt(f"_mta-sts.{domain}")
        except DNSError as e:
            if not e.temporary:
                return None  # NXDOMAIN: no record
            raise
        return parse_txt(answer.texts)

    def _fetch(self, domain: str, policy_id: str) -> CachedPolicy:
        host = f"mta-sts.{domain}"
        with self._fetch_slots:
            response = https_get(host, WELL_KNOWN, resolver=self.resolver, context=self.context,
                                 port=self.https_port, timeout=FETCH_TIMEOUT,
                                 max_size=MAX_POLICY_SIZE)
        policy = parse_policy(_checked_body(response, host))
        fetched = self.clock()
        return CachedPolicy(domain, policy_id, policy, fetched, fetched + policy.max_age)

    # -- the hooks ------------------------------------------------------------------------------

    def prepare_domain(self, domain):
        domain.spawn(self.word, lambda: self.policy(domain.name))

    def _policy_of(self, domain) -> CachedPolicy | None:
        if not domain.has_job(self.word):
            self.prepare_domain(domain)
        try:
            return domain.result(self.word, FETCH_TIMEOUT + self.resolver.lifetime + 2.0)
        except TimeoutError as e:
            log.warning("policy_unavailable", domain=domain.name, error=str(e))
            return None

    def check_mx(self, domain, mx, level):
        found = self._policy_of(domain)
        domain.data[self.word] = found
        if found is None or found.policy.mode == "none":
            return level
        if found.policy.matches(mx.name):
            return max(level, MXLevel.MTASTS)
        detail = (f"{mx.name} is not listed in the MTA-STS policy of {domain.name} "
                  f"(id {found.policy_id}, {found.policy.describe()})")
        if found.policy.mode == "enforce":
            raise refusal("mtasts", 451, (4, 7, 0),
                          "Failed to establish the MX record authenticity", detail, mx=mx.name)
        log.info("testing_failure", domain=domain.name, mx=mx.name, reason=detail)
        return level

    def check_connection(self, domain, mx, level, facts):
        found = domain.data.get(self.word)
        if found is None or found.policy.mode == "none" or not found.policy.matches(mx.name):
            return level
        where = f"{mx.name}: {facts.describe_tls()}; policy of {domain.name} id {found.policy_id}"
        # RFC 8461 §4.2: TLS, a certificate chaining to a trusted root, valid for the MX name.
        if not facts.encrypted:
            failure = refusal("mtasts", 451, (4, 7, 1),
                              "TLS is required but unavailable or failed", where, mx=mx.name)
        elif not facts.pkix_verified:
            failure = refusal("mtasts", 451, (4, 7, 1),
                              "Recipient server TLS certificate is not trusted but "
                              "authentication is required", where, mx=mx.name)
        else:
            return max(level, TLSLevel.AUTHENTICATED)
        if found.policy.mode == "enforce":
            raise failure
        log.info("testing_failure", domain=domain.name, mx=mx.name, reason=failure.text)
        return level


def _checked_body(response: HTTPSResponse, host: str) -> bytes:
    """RFC 8461 §3.3: only a 200 counts (no redirects); the type must be text/plain."""
    if response.status != 200:
        raise PolicyError(f"https://{host}{WELL_KNOWN} answered HTTP {response.status}")
    if response.content_type != "text/plain":
        raise PolicyError(f"https://{host}{WELL_KNOWN} is {response.content_type or 'untyped'}, "
                          "not text/plain")
    return response.body
