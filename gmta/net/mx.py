"""Where mail for a domain goes: RFC 5321 §5.1 with RFC 7505 null MX and address literals.

:func:`resolve_mx` turns a recipient domain into an ordered list of
:class:`MXHost`; :func:`host_addresses` gives each host's addresses. The
remote target tries every host and every address within one attempt, in this
order. The ordering and the RFC rules are pure functions
(:func:`order_mx`, :func:`parse_address_literal`), tested without DNS.

Failures are ``SMTPError``s whose basic and enhanced codes agree and whose
text says which kind of DNS failure it was, so a DSN or a log line tells a
missing domain from a DNS outage (maddy issues #422, #843):

====================================  ==========  =========================
situation                              reply       ``error.misc["dns"]``
====================================  ==========  =========================
domain does not exist (NXDOMAIN)       550 5.1.2   ``nxdomain``
no MX and no A/AAAA                    550 5.1.2   ``no_address``
null MX (RFC 7505)                     556 5.1.10  ``null_mx``
bad address literal                    550 5.1.2   ``bad_literal``
MX list leads back to this host        550 5.4.6   ``loop``
MX host does not exist / no address    550 5.4.4   ``nxdomain``/``no_address``
DNS timeout                            451 4.4.3   ``timeout``
SERVFAIL, REFUSED, no server           451 4.4.3   ``servfail``
====================================  ==========  =========================
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from gmta.errors import SMTPError
from gmta.net.dns import DNSError, Resolver

# RFC 5321 §5.1 sets no bound; a domain with hundreds of MX records would make
# one attempt last for hours. Postfix tries at most 5 hosts per attempt
# (smtp_mx_address_limit); we keep more, as the remote target walks them all.
MAX_MX_HOSTS = 16


@dataclass(frozen=True)
class MXHost:
    """One place to deliver to, in the order it should be tried."""

    #: Host name (A-label, lower case, no final dot) or, for a literal, the address.
    name: str
    preference: int
    #: The addresses when already known: an ``[IP]`` literal, or the implicit
    #: MX whose addresses were looked up to tell it exists.
    addresses: tuple[str, ...] | None = None
    #: RFC 5321 §5.1 implicit MX: the domain itself, as it has no MX records.
    implicit: bool = False
    #: The recipient domain was an address literal (RFC 5321 §4.1.3).
    literal: bool = False


@dataclass(frozen=True)
class MXList:
    """The hosts for a domain, and whether the MX answer was DNSSEC-authenticated."""

    domain: str
    hosts: tuple[MXHost, ...]
    #: AD flag from a loopback resolver on the MX answer (mx_auth dnssec's MX level).
    authenticated: bool


def dns_failure(error: DNSError, what: str, *, permanent: tuple[int, tuple]) -> SMTPError:
    """The SMTPError for a DNS failure while looking up *what*.

    Temporary failures are ``451 4.4.3`` (RFC 3463 X.4.3: "directory server
    failure"); permanent ones take the code the caller gives.
    """
    if error.temporary:
        if error.kind == "timeout":
            text = f"DNS timeout looking up {what}: {error.detail}"
        else:
            text = f"DNS server failure looking up {what}: {error.detail}"
        return SMTPError(451, (4, 4, 3), text, misc={"dns": error.kind})
    code, enhanced = permanent
    return SMTPError(code, enhanced, f"{what}: {error.detail}", misc={"dns": error.kind})


def parse_address_literal(domain: str) -> str | None:
    """The address in ``[1.2.3.4]`` or ``[IPv6:...]`` (RFC 5321 §4.1.3); None if no literal.

    A literal that is not a valid address raises ``550 5.1.2``.
    """
    if not domain.startswith("["):
        return None
    if not domain.endswith("]"):
        raise _bad_literal(domain)
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            # ipaddress takes "%scope" suffixes the RFC grammar does not.
            if "%" in inner:
                raise ValueError(inner)
            return str(ipaddress.IPv6Address(inner[5:]))
        # RFC 5321 §4.1.3: an IPv4 literal has no tag; general literals
        # ("[tag:...]") name no address we could connect to.
        return str(ipaddress.IPv4Address(inner))
    except ValueError:
        raise _bad_literal(domain) from None


def _bad_literal(domain: str) -> SMTPError:
    return SMTPError(550, (5, 1, 2), f"Invalid address literal {domain[:80]!r}",
                     misc={"dns": "bad_literal"})


def order_mx(records: list[tuple[int, str]], rng: random.Random | None = None) -> list[MXHost]:
    """MX records in the order to try them (RFC 5321 §5.1).

    "Multiple MX records contain a preference indication that MUST be used in
    sorting"; records of equal preference are shuffled, as §5.1 asks, to
    spread the load ("the SMTP client SHOULD randomize them"). Duplicate host
    names keep their best preference only. Names are lower-cased without the
    final dot. Null MX is not handled here (see :func:`is_null_mx`).
    """
    rng = rng or random
    best: dict[str, int] = {}
    for preference, name in records:
        name = name.rstrip(".").lower()
        if name not in best or preference < best[name]:
            best[name] = preference
    hosts = [MXHost(name, preference) for name, preference in best.items()]
    rng.shuffle(hosts)
    # sort() is stable: the shuffle decides the order within one preference.
    hosts.sort(key=lambda host: host.preference)
    return hosts


def is_null_mx(records: list[tuple[int, str]]) -> bool:
    """RFC 7505 §3: a single MX of preference 0 whose host is the root ("").

    A root host anywhere in the set is treated as null MX too: §3 forbids
    mixing it with other records, and delivering to the others would ignore
    the domain's stated wish (maddy does the same).
    """
    return any(name.rstrip(".") == "" for _preference, name in records)


def without_local_hosts(hosts: list[MXHost], local_names: frozenset[str]) -> list[MXHost]:
    """RFC 5321 §5.1: if we are an MX of the domain, drop the hosts we must not relay to.

    "If it [the SMTP client] is identified as one of the MX hosts, it MUST
    discard MX records with the same or higher preference value": the mail
    goes only to better-preferred hosts, never back to us or our peers.
    """
    ours = [host.preference for host in hosts if host.name in local_names]
    if not ours:
        return hosts
    return [host for host in hosts if host.preference < min(ours)]


def resolve_mx(resolver: Resolver, domain: str, *, force_ipv4: bool = False,
               local_names: frozenset[str] = frozenset(), lifetime: float | None = None,
               rng: random.Random | None = None) -> MXList:
    """The hosts mail for *domain* (A-label form, or an ``[IP]`` literal) goes to, in order.

    Raises ``SMTPError`` as the module docstring's table says. *local_names*
    are this server's own host names (for the MX loop rule of §5.1).
    """
    address = parse_address_literal(domain)
    if address is not None:
        # RFC 5321 §5.1: "If the domain is an address literal, then the
        # address given is the one to use; no DNS lookup."
        return MXList(domain, (MXHost(address, 0, (address,), literal=True),), False)

    what = f"MX records of {domain}"
    try:
        answer = resolver.mx(domain, lifetime=lifetime)
    except DNSError as error:
        # NXDOMAIN: RFC 3463 X.1.2 "bad destination system address".
        raise dns_failure(error, what, permanent=(550, (5, 1, 2))) from None
    records = [(r.preference, r.exchange.to_text()) for r in answer.records]

    if is_null_mx(records):
        # RFC 7505 §4.1: the domain accepts no mail; 556 with X.1.10 (RFC 7505 §4.2).
        raise SMTPError(556, (5, 1, 10), f"Domain {domain} does not accept email (null MX)",
                        misc={"dns": "null_mx"})

    if not records:
        # RFC 5321 §5.1: "If an empty list of MXs is returned, the address is
        # treated as if it was associated with an implicit MX RR, with a
        # preference of 0, pointing to that host." Its addresses are looked up
        # now: without any, the domain cannot receive mail at all.
        host = MXHost(domain.rstrip(".").lower(), 0, implicit=True)
        try:
            addresses = host_addresses(resolver, host, force_ipv4=force_ipv4, lifetime=lifetime)
        except SMTPError as error:
            if error.temporary:
                raise
            ipv4_only = " usable with force_ipv4" if force_ipv4 else ""
            raise SMTPError(550, (5, 1, 2), f"Domain {domain} has no MX and no address "
                            f"records{ipv4_only}", misc={"dns": "no_address"}) from None
        return MXList(domain, (MXHost(host.name, 0, addresses, implicit=True),),
                      answer.authenticated)

    hosts = order_mx(records, rng)
    hosts = without_local_hosts(hosts, local_names)
    if not hosts:
        # RFC 5321 §5.1: all remaining MX are no better than us: a loop.
        raise SMTPError(550, (5, 4, 6), f"MX records of {domain} point back to this host "
                        "(mail loop)", misc={"dns": "loop"})
    return MXList(domain, tuple(hosts[:MAX_MX_HOSTS]), answer.authenticated)


def host_addresses(resolver: Resolver, host: MXHost, *, force_ipv4: bool = False,
                   lifetime: float | None = None) -> tuple[str, ...]:
    """The addresses to connect to for *host*: IPv6 first, only IPv4 with *force_ipv4*.

    Raises ``550 5.4.4`` (RFC 3463 X.4.4 "unable to route") for a host that
    does not exist or has no address, ``451 4.4.3`` for DNS failures.
    """
    if host.addresses is not None:
        addresses = host.addresses
        if force_ipv4:
            addresses = tuple(a for a in addresses if ":" not in a)
    else:
        what = f"address of {'' if host.implicit else 'MX host '}{host.name}"
        try:
            addresses = resolver.addresses(host.name, force_ipv4=force_ipv4,
                                           lifetime=lifetime).addresses
        except DNSError as error:
            raise dns_failure(error, what, permanent=(550, (5, 4, 4))) from None
    if not addresses:
        families = "A records (force_ipv4)" if force_ipv4 else "A or AAAA records"
        raise SMTPError(550, (5, 4, 4), f"{host.name} has no {families}",
                        misc={"dns": "no_address"})
    return addresses
