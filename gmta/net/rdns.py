"""The forward-confirmed reverse DNS name of a peer (for Received and rDNS checks).

A PTR record alone proves nothing: whoever controls the reverse zone of an
address can name it ``mail.bank.example``. The name is *confirmed* when it
also resolves forward to the same address ("forward-confirmed reverse DNS",
as RFC 8601 §3 calls the iprev method, RFC 5451 §3 / RFC 8601 §2.7.3).

:class:`ReverseLookup` starts the lookup in its own greenlet when a session
begins, so the greeting never waits for DNS; the endpoint takes the result
when it writes the Received field, waiting at most ``RDNS_TIMEOUT`` in all.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

import gevent

from gmta.net.dns import DNSError, Resolver

# The whole lookup (PTR and forward confirmation) must finish within this many
# seconds; after that the session goes on without a name. Short, because a
# message's end of data waits for it when DNS is slow.
RDNS_TIMEOUT = 5.0

# RFC 7208 §5.5 (the SPF "ptr" mechanism) checks at most 10 PTR names; a
# reverse zone listing more is not worth more queries.
MAX_PTR_NAMES = 10

CONFIRMED = "confirmed"      # a PTR name resolves back to the address
UNCONFIRMED = "unconfirmed"  # PTR names exist, none resolves back to the address
NO_PTR = "none"              # no PTR record (NXDOMAIN or NODATA)
TEMPERROR = "temperror"      # DNS failed or was too slow: try again later


@dataclass(frozen=True)
class ReverseName:
    """What reverse DNS says about one address."""

    ip: str
    #: The forward-confirmed name (A-label, lower case, no final dot), or None.
    name: str | None
    #: One of CONFIRMED, UNCONFIRMED, NO_PTR, TEMPERROR.
    status: str
    #: The PTR names seen (at most MAX_PTR_NAMES), confirmed or not.
    ptr_names: tuple[str, ...] = ()

    def facts(self) -> dict:
        """The connection facts kept with a message (``meta.conn``)."""
        return {"rdns": self.name, "rdns_status": self.status}


def reverse_name(resolver: Resolver, ip: str, timeout: float = RDNS_TIMEOUT) -> ReverseName:
    """Look up and forward-confirm the PTR names of *ip*, within *timeout* seconds."""
    deadline = time.monotonic() + timeout
    try:
        answer = resolver.ptr(ip, lifetime=timeout)
    except DNSError as error:
        return ReverseName(ip, None, TEMPERROR if error.temporary else NO_PTR)
    # Sorted, so the name chosen among several does not depend on answer order.
    names = sorted({r.target.to_text(omit_final_dot=True).lower() for r in answer.records})
    names = [n for n in names if n][:MAX_PTR_NAMES]
    if not names:
        return ReverseName(ip, None, NO_PTR)
    temporary = False
    for name in names:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            temporary = True
            break
        try:
            addresses = resolver.addresses(name, force_ipv4=":" not in ip,
                                           lifetime=remaining).addresses
        except DNSError as error:
            temporary = temporary or error.temporary
            continue
        if _same_address(ip, addresses):
            return ReverseName(ip, name, CONFIRMED, tuple(names))
    return ReverseName(ip, None, TEMPERROR if temporary else UNCONFIRMED, tuple(names))


def _same_address(ip: str, addresses: tuple[str, ...]) -> bool:
    wanted = ipaddress.ip_address(ip)
    return any(ipaddress.ip_address(a) == wanted for a in addresses)


class ReverseLookup:
    """A reverse lookup running in the background since the session started."""

    __slots__ = ("ip", "timeout", "_started", "_greenlet", "_result")

    def __init__(self, resolver: Resolver, ip: str, timeout: float = RDNS_TIMEOUT):
        self.ip = ip
        self.timeout = timeout
        self._started = time.monotonic()
        self._result: ReverseName | None = None
        self._greenlet: gevent.Greenlet | None = gevent.spawn(self._look_up, resolver)

    def _look_up(self, resolver: Resolver) -> None:
        self._result = reverse_name(resolver, self.ip, self.timeout)
        # Only the answer is kept: a finished Greenlet (its args, value, links)
        # would cost an idle session about 2 KiB for as long as it stays open.
        self._greenlet = None

    def result(self) -> ReverseName:
        """The result, waiting for what is left of the timeout; TEMPERROR if it is not done."""
        greenlet = self._greenlet
        if greenlet is not None:
            remaining = self.timeout - (time.monotonic() - self._started)
            # The lookup bounds itself; the extra second only guards against a bug there.
            greenlet.join(timeout=max(remaining, 0) + 1.0)
        if self._result is not None:
            return self._result
        self.cancel()
        return ReverseName(self.ip, None, TEMPERROR)

    def cancel(self) -> None:
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None and not greenlet.dead:
            greenlet.kill(block=False)
