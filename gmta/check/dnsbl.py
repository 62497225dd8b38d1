"""``check.dnsbl``: the client's address (and names) in DNS block lists.

A list is asked about the client's IPv4 address in reversed octets under its
zone, an IPv6 address in reversed nibbles (RFC 5782 §2.1, §2.4), and, where
configured, the EHLO name and the sender's domain (RFC 5782 §2.3). An answer
inside ``responses`` (127.0.0.0/8 by default, RFC 5782 §2.1) lists the
client; every list that lists it adds its ``score``, and the sum is compared
with ``quarantine_threshold`` and ``reject_threshold``. A negative score
makes a list an allow list that offsets the others.

With ``check_early`` the address lists are asked at EHLO and only the reject
threshold applies (maddy's behaviour), so a listed client never starts a
transaction.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import gevent

import gmta.log
from gmta.config.module import register
from gmta.config.parser import Node
from gmta.config.reader import Bool, Custom, Directive, Int, read_block
from gmta.errors import SMTPError
from gmta.net.dns import DNSError, resolver_for
from gmta.pipeline.check import PASS, Check, CheckResult, CheckState
from gmta.proto.grammar import split_address

log = gmta.log.get("check")

LOOKUP_TIMEOUT = 5.0
MAX_LISTS = 64

LISTED = "Client identity is listed in the used DNSBL"


@dataclass(frozen=True)
class BlockList:
    zone: str
    client_ipv4: bool = True
    client_ipv6: bool = True
    ehlo: bool = False
    mailfrom: bool = False
    responses: tuple = (ipaddress.ip_network("127.0.0.0/8"),)
    score: int = 1


def _responses(node: Node, ctx) -> tuple:
    try:
        return tuple(ipaddress.ip_network(a, strict=False) for a in node.args)
    except ValueError as e:
        raise node.error(f"responses: {e}", hint="such as 127.0.0.1/24") from None


LIST_DIRECTIVES = (
    Directive("client_ipv4", Bool(), True, doc="ask about IPv4 clients"),
    Directive("client_ipv6", Bool(), True, doc="ask about IPv6 clients"),
    Directive("ehlo", Bool(), False, doc="ask about the EHLO name"),
    Directive("mailfrom", Bool(), False, doc="ask about the sender's domain"),
    Directive("responses", Custom(_responses, "CIDR..."), BlockList.responses,
              doc="answers that mean listed"),
    Directive("score", Int(), 1, doc="added to the score when listed"),
)


def _read_list(node: Node, ctx) -> list[BlockList]:
    values = read_block(node, node.children or [], LIST_DIRECTIVES, ctx)
    zones = [node.name, *node.args]
    return [BlockList(z.rstrip(".").lower(), values.client_ipv4, values.client_ipv6,
                      values.ehlo, values.mailfrom, values.responses, values.score)
            for z in zones]


def query_name(ip: str) -> str:
    """The reversed form of *ip* that a list is asked about (RFC 5782 §2.1, §2.4)."""
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        return ".".join(reversed(str(address).split(".")))
    return ".".join(reversed(address.exploded.replace(":", "")))


@register
class DNSBLCheck(Check):
    name = "check.dnsbl"
    max_inline_args = MAX_LISTS
    allow_unknown = True  # list blocks are named after their zones
    directives = (
        Directive("debug", Bool(), False, inherit_global=True, doc="log every lookup"),
        Directive("check_early", Bool(), False, doc="ask at EHLO and refuse listed clients"),
        Directive("quarantine_threshold", Int(), 1, doc="score that quarantines"),
        Directive("reject_threshold", Int(), 9999, doc="score that rejects"),
    )

    def configure(self, cfg, ctx) -> None:
        self.debug = cfg.debug
        self.check_early = cfg.check_early
        self.quarantine_threshold = cfg.quarantine_threshold
        self.reject_threshold = cfg.reject_threshold
        self.lists = [BlockList(zone.rstrip(".").lower()) for zone in self.inline_args]
        for node in cfg.rest:
            self.lists.extend(_read_list(node, ctx))
        if not self.lists:
            raise self.node.error("dnsbl: no lists given",
                                  hint="such as 'dnsbl zen.example.org' or a list block")
        if len(self.lists) > MAX_LISTS:
            raise self.node.error(f"dnsbl: more than {MAX_LISTS} lists")
        self.resolver = resolver_for(ctx.globals.dns_servers)

    # -- lookups ------------------------------------------------------------------------

    def _listed(self, blocklist: BlockList, name: str) -> bool:
        try:
            answer = self.resolver.resolve(f"{name}.{blocklist.zone}", "A",
                                           lifetime=LOOKUP_TIMEOUT)
        except DNSError as error:
            if error.temporary:
                # A list that does not answer lists nobody (RFC 5782 §5: lists
                # go away; blocking all mail then would be worse).
                log.info("dnsbl_unavailable", zone=blocklist.zone, error=str(error))
            return False
        return any(ipaddress.ip_address(r.address) in net
                   for r in answer.records for net in blocklist.responses)

    def score(self, ip: str | None, ehlo: str | None, sender_domain: str | None) -> tuple:
        """(total score, zones that listed) for the identities the lists are asked about."""
        jobs = []
        for blocklist in self.lists:
            names = []
            if ip:
                version = ipaddress.ip_address(ip).version
                if (version == 4 and blocklist.client_ipv4) or \
                        (version == 6 and blocklist.client_ipv6):
                    names.append(query_name(ip))
            if ehlo and blocklist.ehlo:
                names.append(ehlo.rstrip("."))
            if sender_domain and blocklist.mailfrom:
                names.append(sender_domain)
            for name in names:
                jobs.append((blocklist, gevent.spawn(self._listed, blocklist, name)))
        gevent.joinall([job for _, job in jobs], timeout=LOOKUP_TIMEOUT + 2)
        total, hits = 0, []
        listed_zones = set()
        for blocklist, job in jobs:
            if not job.ready():
                job.kill(block=False)
            elif job.successful() and job.value and blocklist.zone not in listed_zones:
                listed_zones.add(blocklist.zone)
                total += blocklist.score
                hits.append(blocklist.zone)
        return total, hits

    def _reply(self, hits: list[str]) -> SMTPError:
        return SMTPError(554, (5, 7, 0), f"{LISTED} ({', '.join(hits)})")

    def check_helo(self, conn: dict) -> CheckResult:
        if not self.check_early or not conn.get("ip"):
            return PASS
        total, hits = self.score(conn["ip"], None, None)
        if total >= self.reject_threshold:
            log.info("dnsbl", ip=conn["ip"], score=total, listed=",".join(hits), early=True)
            return CheckResult(reject=self._reply(hits))
        return PASS

    def check_state(self, meta, mail_from) -> CheckState:
        return _DNSBLState(self, meta)


class _DNSBLState(CheckState):
    def __init__(self, check: DNSBLCheck, meta):
        self.check = check
        self.meta = meta

    def check_sender(self, mail_from: str) -> CheckResult:
        check = self.check
        conn = self.meta.conn
        if check.check_early or not conn.get("ip"):
            return PASS
        domain = split_address(mail_from)[1] if mail_from else ""
        total, hits = check.score(conn["ip"], conn.get("helo"), domain or None)
        if check.debug or hits:
            log.info("dnsbl", msg_id=self.meta.id, ip=conn["ip"], score=total,
                     listed=",".join(hits))
        if total >= check.reject_threshold:
            return CheckResult(reject=check._reply(hits))
        if total >= check.quarantine_threshold:
            return CheckResult(quarantine=True)
        return PASS
