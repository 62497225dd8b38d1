"""gmta's resolver behind the DNS hooks of dkimpy and pyspf.

Both libraries would otherwise ask the machine's resolver (dnspython's
default, ``/etc/resolv.conf``) and ignore ``dns_servers``; every query gmta
makes goes through ``gmta.net.dns.Resolver`` (bounded, cached, cooperative).
"""

from __future__ import annotations

import spf

from gmta.net.dns import DNSError, NXDomain, Resolver


class DKIMKeyLookup:
    """dkimpy's ``dnsfunc(name, timeout=)``: the TXT record of a key, or None.

    dkimpy turns a DNS timeout into a plain verification failure, so this
    remembers whether a lookup failed temporarily: RFC 6376 §6.1.2 makes that
    a TEMPFAIL (``temperror``, RFC 8601 §2.7.1), not a broken signature.
    """

    def __init__(self, resolver: Resolver, lifetime: float):
        self.resolver = resolver
        self.lifetime = lifetime
        self.temporary_error: DNSError | None = None
        self.missing_key = False

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        self.temporary_error = None
        self.missing_key = False
        try:
            answer = self.resolver.txt(name.decode("ascii").rstrip("."),
                                       lifetime=min(timeout, self.lifetime))
        except UnicodeDecodeError:
            self.missing_key = True
            return None
        except NXDomain:
            self.missing_key = True
            return None
        except DNSError as error:
            if error.temporary:
                self.temporary_error = error
            else:
                self.missing_key = True
            return None
        if not answer.texts:
            self.missing_key = True
            return None
        # RFC 6376 §3.6.2.2: the strings of one TXT record are concatenated;
        # with several records the result is undefined, the first is used.
        return answer.texts[0]


class SPFQuery(spf.query):
    """pyspf's evaluation (RFC 7208, macros included) with gmta's resolver.

    pyspf sends every query through ``query.dns``; this override keeps its
    contract (a list per type, TXT as lists of byte strings, ``[]`` for no
    data, TempError for DNS failures, void-lookup counting of RFC 7208 §4.6.4)
    and lets gmta's resolver follow CNAMEs.
    """

    def __init__(self, resolver: Resolver, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gmta_resolver = resolver
        self.lifetime = kwargs.get("timeout", 20)

    def dns(self, name, qtype, cnames=None, ignore_void=False):
        name = str(name).rstrip(".").lower()
        if not name or not all(0 < len(label) < 64 for label in name.split(".")):
            return []  # not a valid DNS name: nothing can be there (as pyspf does)
        key = (name, qtype)
        if key in self.cache:
            return self.cache[key]
        result = self._lookup(name, qtype)
        self.cache[key] = result
        if not result and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return result

    def _lookup(self, name: str, qtype: str) -> list:
        if qtype == "SPF":
            return []  # RFC 7208 §3.1: the SPF RR type is obsolete
        try:
            answer = self.gmta_resolver.resolve(name, qtype, lifetime=self.lifetime)
        except DNSError as error:
            if error.temporary:
                raise spf.TempError(f"DNS {error}") from None
            return []  # NXDOMAIN: no data (a void lookup)
        records = answer.records
        if qtype in ("A", "AAAA"):
            return [r.address for r in records]
        if qtype == "MX":
            return [(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in records]
        if qtype == "PTR":
            return [r.target.to_text(omit_final_dot=True) for r in records]
        if qtype == "TXT":
            return [list(r.strings) for r in records]
        return []
