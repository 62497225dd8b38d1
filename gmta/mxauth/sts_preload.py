"""``mx_auth.sts_preload``: a preloaded list of domains known to support STARTTLS.

The list format is the STARTTLS Everywhere project's ``policy.json`` (version
0.1): ``expires`` (RFC 3339), ``policies`` mapping a domain to ``{"mode":
"enforce"|"testing", "mxs": [...]}`` or to ``{"policy-alias": NAME}``, and
``policy-aliases`` holding the named entries. An MX pattern is a host name,
``.example.net`` for any name under example.net, or ``*.example.net`` for
one label (as in MTA-STS).

An entry acts like an MTA-STS policy published ahead of time: a listed MX
gets MX level ``mtasts``; in enforce mode (or testing with
``enforce_testing``) an unlisted MX is refused and the connection needs TLS
with a verified certificate. A live MTA-STS policy found by the ``mtasts``
policy wins over the list entry (it runs first in the fixed order).

The list is read from ``file://PATH`` (again when the file changes) or
``https://URL`` (again when it is about to expire, and daily); an expired
list is not used at all. ``eff`` — maddy's default, the EFF's list — was
retired by the EFF in 2020 and its last copy has long expired: it is accepted
so maddy configurations load, and it logs that it does nothing.
"""

from __future__ import annotations

import datetime
import json
import os
import time
import urllib.parse
from dataclasses import dataclass

import gevent.lock

import gmta.log
from gmta.config.reader import Bool, Directive, String
from gmta.durable import in_threadpool
from gmta.mxauth.https import FetchError, https_get, verifying_context
from gmta.mxauth.policy import Policy, register_policy
from gmta.mxauth.refusal import refusal
from gmta.mxauth.sts_policy import mx_matches
from gmta.net.dns import resolver_for
from gmta.target.security import MXLevel, TLSLevel

log = gmta.log.get("mx_auth.sts_preload")

#: The EFF list was about 1 MiB at its largest; a list beyond this is refused.
MAX_LIST_SIZE = 16 * 1024 * 1024
MAX_DOMAINS = 1_000_000
FETCH_TIMEOUT = 60.0
#: A downloaded list is fetched again this often, and this long before it expires.
REFRESH_AFTER = 24 * 3600.0
EXPIRY_MARGIN = 3600.0
#: After a failed download, the next try waits this long.
RETRY_AFTER = 300.0


class ListError(ValueError):
    pass


@dataclass(frozen=True)
class PreloadEntry:
    mode: str
    mxs: tuple[str, ...]

    def matches(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for pattern in self.mxs:
            if pattern.startswith("."):
                if host.endswith(pattern) and len(host) > len(pattern):
                    return True
            elif mx_matches(pattern, host):
                return True
        return False


@dataclass(frozen=True)
class PreloadList:
    expires: float
    policies: dict[str, PreloadEntry]


def _timestamp(value, what: str) -> float:
    if not isinstance(value, str):
        raise ListError(f"{what}: expected an RFC 3339 time")
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ListError(f"{what}: invalid time {value!r}") from None
    if moment.tzinfo is None:
        raise ListError(f"{what}: the time {value!r} has no time zone")
    return moment.timestamp()


def _entry(raw, where: str) -> PreloadEntry:
    if not isinstance(raw, dict):
        raise ListError(f"{where}: expected an object")
    mode = raw.get("mode")
    if mode not in ("enforce", "testing"):
        raise ListError(f"{where}: mode must be enforce or testing, not {mode!r}")
    mxs = raw.get("mxs")
    if not isinstance(mxs, list) or not mxs or not all(isinstance(m, str) and m for m in mxs):
        raise ListError(f"{where}: mxs must be a list of host names")
    return PreloadEntry(mode, tuple(m.lower().rstrip(".") for m in mxs))


def parse_list(data: bytes) -> PreloadList:
    """The STARTTLS Everywhere ``policy.json`` format, checked entry by entry."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ListError(f"not JSON: {e}") from None
    if not isinstance(document, dict):
        raise ListError("expected a JSON object")
    expires = _timestamp(document.get("expires"), "expires")
    aliases_raw = document.get("policy-aliases") or {}
    policies_raw = document.get("policies")
    if not isinstance(aliases_raw, dict) or not isinstance(policies_raw, dict):
        raise ListError("policies and policy-aliases must be objects")
    if len(policies_raw) > MAX_DOMAINS:
        raise ListError(f"more than {MAX_DOMAINS} domains")
    aliases = {name: _entry(raw, f"policy-aliases.{name}") for name, raw in aliases_raw.items()}
    policies = {}
    for domain, raw in policies_raw.items():
        if isinstance(raw, dict) and "policy-alias" in raw:
            alias = raw["policy-alias"]
            if alias not in aliases:
                raise ListError(f"policies.{domain}: unknown policy-alias {alias!r}")
            policies[domain.lower().rstrip(".")] = aliases[alias]
        else:
            policies[domain.lower().rstrip(".")] = _entry(raw, f"policies.{domain}")
    return PreloadList(expires, policies)


@register_policy
class STSPreloadPolicy(Policy):
    name = "mx_auth.sts_preload"
    word = "sts_preload"
    directives = (
        Directive("source", String(), "eff", doc="eff | file://PATH | https://URL"),
        Directive("enforce_testing", Bool(), True, doc="treat testing entries as enforce"),
    )

    def configure(self, cfg, ctx) -> None:
        self.enforce_testing = cfg.enforce_testing
        self.source = cfg.source
        self.clock = time.time
        self._list: PreloadList | None = None
        self._loaded_mark: object = None  # file mtime, or the time of the download
        self._next_try = 0.0
        self._lock = gevent.lock.BoundedSemaphore()
        if self.source == "eff":
            self.kind = "eff"
            log.warning("list_retired", source="eff",
                        detail="the EFF retired the STARTTLS Everywhere list in 2020; "
                               "sts_preload with source eff does nothing")
            return
        url = urllib.parse.urlsplit(self.source)
        if url.scheme == "file" and (url.path or url.netloc):
            self.kind = "file"
            self.path = ctx.state_path(url.netloc + url.path)
        elif url.scheme == "https" and url.hostname:
            self.kind = "https"
            self.url = url
            globals_ = ctx.globals
            self.resolver = resolver_for(globals_.dns_servers if globals_ is not None else ())
            self.context = verifying_context(globals_.tls_client if globals_ is not None else None)
        else:
            raise cfg.error("source", f"sts_preload source: expected eff, file://PATH or "
                                      f"https://URL, got {self.source!r}")

    # -- the list ---------------------------------------------------------------------------

    def current(self) -> PreloadList | None:
        """The list in force now (None: no list, or only an expired one)."""
        if self.kind == "eff":
            return None
        with self._lock:
            try:
                if self.kind == "file":
                    self._reload_file()
                else:
                    self._refresh_download()
            except (OSError, ListError, FetchError) as e:
                self._next_try = self.clock() + RETRY_AFTER
                log.warning("list_unavailable", source=self.source,
                            error=getattr(e, "strerror", None) or str(e),
                            keeping="previous list" if self._list else None)
            found = self._list
        if found is not None and found.expires <= self.clock():
            log.warning("list_expired", source=self.source,
                        expires=datetime.datetime.fromtimestamp(found.expires,
                                                                datetime.timezone.utc).isoformat())
            return None
        return found

    def _reload_file(self) -> None:
        mtime = os.stat(self.path).st_mtime_ns
        if mtime == self._loaded_mark:
            return
        data = in_threadpool(_read_capped, self.path)
        self._list = parse_list(data)
        self._loaded_mark = mtime
        log.info("list_loaded", source=self.source, domains=len(self._list.policies))

    def _refresh_download(self) -> None:
        now = self.clock()
        current = self._list
        due = (current is None or now - self._loaded_mark >= REFRESH_AFTER
               or current.expires - now <= EXPIRY_MARGIN)
        if not due or now < self._next_try:
            return
        path = self.url.path or "/"
        if self.url.query:
            path += "?" + self.url.query
        response = https_get(self.url.hostname, path, resolver=self.resolver,
                             context=self.context, port=self.url.port or 443,
                             timeout=FETCH_TIMEOUT, max_size=MAX_LIST_SIZE)
        if response.status != 200:
            raise FetchError(f"{self.source} answered HTTP {response.status}")
        self._list = parse_list(response.body)
        self._loaded_mark = now
        log.info("list_loaded", source=self.source, domains=len(self._list.policies))

    # -- the hooks ----------------------------------------------------------------------------

    def _entry(self, domain) -> PreloadEntry | None:
        # A live MTA-STS policy, when the mtasts policy found one, is newer than any list.
        if domain.data.get("mtasts") is not None:
            return None
        found = self.current()
        return found.policies.get(domain.name) if found is not None else None

    def _enforced(self, entry: PreloadEntry) -> bool:
        return entry.mode == "enforce" or self.enforce_testing

    def check_mx(self, domain, mx, level):
        entry = self._entry(domain)
        domain.data[self.word] = entry
        if entry is None:
            return level
        if entry.matches(mx.name):
            return max(level, MXLevel.MTASTS)
        detail = (f"{mx.name} is not among the MX hosts the list {self.source} gives for "
                  f"{domain.name} (mode {entry.mode}: {', '.join(entry.mxs)})")
        if self._enforced(entry):
            raise refusal("sts_preload", 451, (4, 7, 0),
                          "Failed to establish the MX record authenticity", detail, mx=mx.name)
        log.info("testing_failure", domain=domain.name, mx=mx.name, reason=detail)
        return level

    def check_connection(self, domain, mx, level, facts):
        entry = domain.data.get(self.word)
        if entry is None or not entry.matches(mx.name):
            return level
        if facts.encrypted and facts.pkix_verified:
            return max(level, TLSLevel.AUTHENTICATED)
        summary = ("TLS is required but unavailable or failed" if not facts.encrypted else
                   "Recipient server TLS certificate is not trusted but authentication "
                   "is required")
        failure = refusal("sts_preload", 451, (4, 7, 1), summary,
                          f"{mx.name}: {facts.describe_tls()}; {domain.name} is in the list "
                          f"{self.source} (mode {entry.mode})", mx=mx.name)
        if self._enforced(entry):
            raise failure
        log.info("testing_failure", domain=domain.name, mx=mx.name, reason=failure.text)
        return level


def _read_capped(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_LIST_SIZE + 1)
    if len(data) > MAX_LIST_SIZE:
        raise ListError(f"{path} is larger than {MAX_LIST_SIZE} bytes")
    return data
