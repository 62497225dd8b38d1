"""The one DNS resolver of gmta (dnspython), cooperative under gevent.

Every lookup gmta makes goes through a :class:`Resolver`: MX, A/AAAA, TXT,
TLSA and PTR. It asks the servers of the global ``dns_servers`` directive, or
those of ``/etc/resolv.conf`` when the directive is absent, and every lookup is
bounded by a lifetime (``LOOKUP_LIFETIME`` unless the caller gives less).

Results are :class:`Answer` objects that keep what the outbound security
policies need later: the AD flag (RFC 4035 §3.2.3, "authenticated data") of
every response that made the answer, and whether every one came from a
loopback resolver. Only the two together make an answer *authenticated*: a
resolver across the network could set AD, but nothing protects the flag on
the way (RFC 6698 §1.3, RFC 7672 §1.3; maddy's rule, target-remote.md).

Failures are :class:`DNSError` subclasses that tell a name that does not
exist (:class:`NXDomain`, permanent) from a timeout (:class:`DNSTimeout`) and
a server that failed or refused (:class:`ServerFailure`), both temporary. A
name that exists without records of the type asked is not an error: the
answer has no records (NODATA), as RFC 5321 §5.1 needs to tell implicit MX
from a missing domain.

Cooperation with the gevent hub: dnspython waits on its sockets with
``selectors``, which ``gmta run`` monkey-patches before anything else
(cli.py), so a lookup suspends only its greenlet. In a process that is not
patched (tools, the test suite) the same blocking code runs in the hub's
threadpool instead, so the hub never blocks either way (DESIGN §4.2).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver
import dns.reversename
import gevent
import gevent.monkey

from gmta import metrics

RESOLV_CONF = "/etc/resolv.conf"

# Seconds one server has to answer one query before the next server (or the
# next try) is asked, and seconds a whole lookup may take, retries and CNAME
# hops included. Go's resolver, which maddy uses, waits 5 s per try.
QUERY_TIMEOUT = 5.0
LOOKUP_LIFETIME = 10.0

# Answers kept by TTL in a least-recently-used cache of this many entries
# (dnspython's LRUCache: expired entries are never returned).
CACHE_SIZE = 4096

# A chain of more CNAMEs than this is a loop or an attack; resolvers stop at
# similar depths (BIND: 16, Unbound: 11).
MAX_CNAME_HOPS = 8

# EDNS0 payload size recommended by DNS Flag Day 2020: no IP fragmentation.
EDNS_PAYLOAD = 1232


class DNSError(Exception):
    """A lookup that gave no answer. ``temporary`` says whether trying later may help."""

    temporary = True
    #: A short word for logs and error texts: ``nxdomain``, ``timeout``, ...
    kind = "error"

    def __init__(self, name: str, rdtype: str, detail: str):
        self.name = name
        self.rdtype = rdtype
        self.detail = detail
        super().__init__(f"{rdtype} lookup of {name}: {detail}")


class NXDomain(DNSError):
    """The name does not exist (RCODE 3, RFC 1035 §4.1.1): permanent."""

    temporary = False
    kind = "nxdomain"


class BadName(DNSError):
    """The name cannot be asked about at all (empty label, too long): permanent."""

    temporary = False
    kind = "bad_name"


class DNSTimeout(DNSError):
    """No server answered within the lifetime of the lookup."""

    kind = "timeout"


class ServerFailure(DNSError):
    """Every server answered with a failure (SERVFAIL, REFUSED, ...) or none is configured.

    A validating resolver answers SERVFAIL for a badly signed zone (RFC 4035 §5.5).
    """

    kind = "servfail"


@dataclass(frozen=True)
class Answer:
    """The records of one type at one name, after following CNAMEs.

    ``records`` holds dnspython rdata objects (``.preference``/``.exchange``
    for MX, ``.address`` for A/AAAA, ``.strings`` for TXT, ``.target`` for
    PTR, ``.usage``/``.selector``/``.mtype``/``.cert`` for TLSA); it is empty
    when the name exists without records of that type (NODATA).
    """

    qname: str
    rdtype: str
    canonical_name: str
    records: tuple
    ttl: int
    #: The AD flag was set in every response that made this answer.
    ad: bool
    #: Every one of those responses came from a loopback resolver.
    loopback_resolver: bool

    @property
    def authenticated(self) -> bool:
        """DNSSEC-validated data we may rely on: AD from a loopback resolver only."""
        return self.ad and self.loopback_resolver

    @property
    def texts(self) -> tuple[bytes, ...]:
        """TXT records, each the concatenation of its strings (RFC 7208 §3.3)."""
        return tuple(b"".join(r.strings) for r in self.records)


@dataclass(frozen=True)
class Addresses:
    """The A and AAAA records of a host, IPv6 first (RFC 6724 prefers IPv6)."""

    name: str
    canonical_name: str
    addresses: tuple[str, ...]
    #: Both families' answers were authenticated (RFC 7672 §2.2.2 needs it for DANE).
    authenticated: bool


def _text(name: dns.name.Name) -> str:
    """A name as gmta writes it: A-labels, no final dot, lower case."""
    return name.to_text(omit_final_dot=True).lower()


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a DoH URL or anything else that is not an address


def _cooperative(function, *args):
    """Run blocking dnspython code without blocking the gevent hub (module docstring)."""
    if gevent.monkey.is_module_patched("socket"):
        return function(*args)
    # The error comes back as a value: gevent's threadpool prints a traceback
    # for every exception a task raises, and NXDOMAIN is not worth one.
    value, error = gevent.get_hub().threadpool.apply(_catching, (function,) + args)
    if error is not None:
        raise error
    return value


def _catching(function, *args):
    try:
        return function(*args), None
    except DNSError as error:
        return None, error


class Resolver:
    """Lookups against the configured servers, with a bounded TTL cache.

    *servers* is the value of ``dns_servers``: ``(ip, port)`` pairs; empty
    means the servers of ``/etc/resolv.conf``, read at the first lookup.
    """

    def __init__(self, servers: tuple[tuple[str, int], ...] = (), *,
                 query_timeout: float = QUERY_TIMEOUT, lifetime: float = LOOKUP_LIFETIME,
                 cache_size: int = CACHE_SIZE, resolv_conf: str | None = None):
        self.servers = tuple(servers)
        self.query_timeout = query_timeout
        self.lifetime = lifetime
        self.cache_size = cache_size
        self.resolv_conf = resolv_conf
        self._resolver: dns.resolver.Resolver | None = None
        self._setup_lock = threading.Lock()

    # -- the dnspython resolver --------------------------------------------------------

    def _dnspython(self) -> dns.resolver.Resolver:
        with self._setup_lock:
            if self._resolver is None:
                self._resolver = self._make_resolver()
            return self._resolver

    def _make_resolver(self) -> dns.resolver.Resolver:
        if self.servers:
            resolver = dns.resolver.Resolver(configure=False)
            # Ports first: dnspython ≥ 2.4 turns the addresses into server
            # objects when they are assigned. (Debian 12 has 2.3, without
            # dns.nameserver, so the portable spelling is used.)
            resolver.nameserver_ports = {host: port for host, port in self.servers}
            resolver.nameservers = [host for host, _ in self.servers]
        else:
            # May raise NoResolverConfiguration, reported as a ServerFailure.
            resolver = dns.resolver.Resolver(filename=self.resolv_conf or RESOLV_CONF)
        # Names are always absolute: a search list would turn a failed lookup of
        # "example.com" into lookups of "example.com.corp.local".
        resolver.search = []
        resolver.use_search_by_default = False
        resolver.ndots = 1
        resolver.timeout = self.query_timeout
        resolver.lifetime = self.lifetime
        # RFC 6840 §5.7: AD in a query asks a validating resolver to say whether
        # it validated the answer, without the DO bit and the RRSIGs it brings.
        resolver.flags = dns.flags.RD | dns.flags.AD
        resolver.use_edns(0, 0, EDNS_PAYLOAD)
        resolver.cache = dns.resolver.LRUCache(self.cache_size)
        return resolver

    # -- generic lookup --------------------------------------------------------------------

    def resolve(self, name: str, rdtype: str, *, lifetime: float | None = None) -> Answer:
        """The *rdtype* records of *name*, following CNAMEs; raise DNSError on failure."""
        try:
            return _cooperative(self._resolve_blocking, name, rdtype, lifetime)
        except DNSError as error:
            metrics.DNS_FAILURES.labels(error.kind, rdtype).inc()
            raise

    def _resolve_blocking(self, name: str, rdtype: str, lifetime: float | None) -> Answer:
        resolver = self._dnspython_or_failure(name, rdtype)
        budget = self.lifetime if lifetime is None else min(lifetime, self.lifetime)
        deadline = _now() + budget
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as e:
            raise BadName(name, rdtype, str(e)) from None
        wanted = dns.rdatatype.from_text(rdtype)
        ad = loopback = True
        ttl: int | None = None
        current = qname
        for _hop in range(MAX_CNAME_HOPS + 1):
            remaining = deadline - _now()
            if remaining <= 0:
                raise DNSTimeout(name, rdtype, f"no answer within {budget:g} s")
            answer = self._query(resolver, current, wanted, remaining, name, rdtype)
            ad = ad and bool(answer.response.flags & dns.flags.AD)
            loopback = loopback and _is_loopback(str(answer.nameserver))
            ttl = _min_ttl(ttl, answer.chaining_result.minimum_ttl)
            if answer.rrset is not None or answer.canonical_name == current:
                records = tuple(answer.rrset) if answer.rrset is not None else ()
                return Answer(name, rdtype, _text(answer.canonical_name), records,
                              ttl if records else 0, ad, loopback)
            # The server gave the CNAME but not its target's records (an
            # authoritative server for another zone does that): ask for the target.
            current = answer.canonical_name
        raise ServerFailure(name, rdtype, f"more than {MAX_CNAME_HOPS} CNAMEs")

    def _dnspython_or_failure(self, name: str, rdtype: str) -> dns.resolver.Resolver:
        try:
            return self._dnspython()
        except dns.resolver.NoResolverConfiguration:
            raise ServerFailure(name, rdtype,
                                "no DNS server configured (dns_servers, "
                                f"{self.resolv_conf or RESOLV_CONF})") from None

    def _query(self, resolver, qname, wanted, lifetime, name, rdtype) -> dns.resolver.Answer:
        try:
            return resolver.resolve(qname, wanted, raise_on_no_answer=False, search=False,
                                    lifetime=lifetime)
        except dns.resolver.NXDOMAIN:
            raise NXDomain(name, rdtype, "no such domain (NXDOMAIN)") from None
        except dns.resolver.LifetimeTimeout as e:
            raise DNSTimeout(name, rdtype, f"no answer within {lifetime:.3g} s from "
                             f"{_servers_text(e)}") from None
        except dns.exception.Timeout:
            raise DNSTimeout(name, rdtype, f"no answer within {lifetime:.3g} s") from None
        except dns.resolver.NoNameservers as e:
            raise ServerFailure(name, rdtype, _failure_text(e)) from None
        except dns.resolver.YXDOMAIN:
            raise BadName(name, rdtype, "name too long after DNAME substitution") from None
        except dns.exception.DNSException as e:
            raise ServerFailure(name, rdtype, str(e) or type(e).__name__) from None

    # -- the lookups gmta makes --------------------------------------------------------------

    def mx(self, domain: str, *, lifetime: float | None = None) -> Answer:
        return self.resolve(domain, "MX", lifetime=lifetime)

    def txt(self, name: str, *, lifetime: float | None = None) -> Answer:
        return self.resolve(name, "TXT", lifetime=lifetime)

    def tlsa(self, host: str, port: int = 25, protocol: str = "tcp", *,
             lifetime: float | None = None) -> Answer:
        """TLSA records of a service (RFC 6698 §3: ``_PORT._PROTO.HOST``), CNAMEs followed."""
        return self.resolve(f"_{port}._{protocol}.{host}", "TLSA", lifetime=lifetime)

    def ptr(self, ip: str, *, lifetime: float | None = None) -> Answer:
        """PTR records of an address (RFC 1035 §3.5, RFC 3596 §2.5)."""
        try:
            name = dns.reversename.from_address(ip)
        except (ValueError, dns.exception.SyntaxError) as e:
            raise BadName(ip, "PTR", f"not an IP address: {e}") from None
        return self.resolve(_text(name), "PTR", lifetime=lifetime)

    def addresses(self, host: str, *, force_ipv4: bool = False,
                  lifetime: float | None = None) -> Addresses:
        """A and AAAA of *host* (only A with *force_ipv4*), both asked at once.

        One family failing temporarily while the other has addresses gives the
        addresses we have (the caller can deliver); both failing raises the
        AAAA error if it is the more telling (NXDOMAIN), else the A error.
        """
        kinds = ("A",) if force_ipv4 else ("AAAA", "A")
        jobs = [gevent.spawn(self.resolve, host, kind, lifetime=lifetime) for kind in kinds]
        try:
            gevent.joinall(jobs, timeout=(lifetime or self.lifetime) + 1.0)
        finally:
            for job in jobs:
                if not job.ready():
                    job.kill(block=False)
        answers: list[Answer] = []
        errors: list[BaseException] = []
        for job in jobs:
            if not job.ready():
                errors.append(DNSTimeout(host, job.args[1], "lookup did not finish"))
            elif job.successful():
                answers.append(job.value)
            else:
                errors.append(job.exception)
        found = tuple(r.address for a in answers for r in a.records)
        if errors and not found:
            # NXDOMAIN is an answer about the name, whichever family saw it.
            permanent = [e for e in errors if isinstance(e, DNSError) and not e.temporary]
            raise (permanent or errors)[0]
        canonical = answers[0].canonical_name if answers else host.lower().rstrip(".")
        return Addresses(host, canonical, found,
                         bool(answers) and not errors and all(a.authenticated for a in answers))


def _now() -> float:
    return time.monotonic()


def _min_ttl(current: int | None, new: int | None) -> int | None:
    if new is None:
        return current
    return new if current is None else min(current, new)


def _servers_text(error: dns.resolver.LifetimeTimeout) -> str:
    errors = error.kwargs.get("errors") or []
    servers = sorted({_server_text(item[0]) for item in errors}) if errors else []
    return ", ".join(servers) or "any server"


def _server_text(server: object) -> str:
    """dnspython's "Do53:127.0.0.1@53" as "127.0.0.1@53" (the notation of kdig and unbound)."""
    return str(server).removeprefix("Do53:")


def _failure_text(error: dns.resolver.NoNameservers) -> str:
    """What the servers said, such as ``SERVFAIL from 127.0.0.53``."""
    said = []
    # Each item is (server, tcp, port, problem, ...): problem is an rcode's
    # text (SERVFAIL, REFUSED) or the exception one server raised.
    for item in (error.kwargs.get("errors") or [])[:4]:
        problem = item[3]
        if isinstance(problem, BaseException):
            problem = str(problem) or type(problem).__name__
        why = _extended_errors_text(item[4] if len(item) > 4 else None)
        said.append(f"{problem} from {_server_text(item[0])}{why}")
    return "; ".join(said) or "no server answered"


#: RFC 8914 §4 codes that mean the answer failed DNSSEC validation (1, 2: unsupported
#: algorithms; 5–12: indeterminate, bogus, expired, not yet valid, DNSKEY, RRSIGs,
#: zone key bit or NSEC missing).
DNSSEC_EDE_CODES = frozenset({1, 2, 5, 6, 7, 8, 9, 10, 11, 12})


def _extended_errors_text(response: dns.message.Message | None) -> str:
    """Why a server failed, when it says (RFC 8914 Extended DNS Errors), such as
    `` (DNSSEC validation failed, EDE 6 DNSSEC BOGUS: ...)``. A validating resolver's
    SERVFAIL looks the same for a badly signed zone and an unreachable one; only
    this tells an operator that it is DNSSEC."""
    if response is None:
        return ""
    try:
        options = response.extended_errors()
    except (AttributeError, ValueError):
        return ""
    shown = []
    for option in options[:2]:
        try:
            name = dns.edns.EDECode(option.code).name.replace("_", " ")
        except ValueError:
            name = "unknown"
        text = f": {option.text[:200]}" if option.text else ""
        dnssec = "DNSSEC validation failed, " if option.code in DNSSEC_EDE_CODES else ""
        shown.append(f"{dnssec}EDE {int(option.code)} {name}{text}")
    return f" ({'; '.join(shown)})" if shown else ""


# One resolver per ``dns_servers`` value, so every module of a configuration
# shares one cache. Bounded: a reload with a new value adds one entry.
_SHARED_LIMIT = 4
_shared: OrderedDict[tuple, Resolver] = OrderedDict()
_shared_lock = threading.Lock()


def resolver_for(servers: tuple[tuple[str, int], ...] = ()) -> Resolver:
    """The shared :class:`Resolver` for a value of the global ``dns_servers`` directive."""
    key = tuple(servers or ())
    with _shared_lock:
        resolver = _shared.get(key)
        if resolver is None:
            resolver = _shared[key] = Resolver(key)
            while len(_shared) > _SHARED_LIMIT:
                _shared.popitem(last=False)
        _shared.move_to_end(key)
        return resolver
