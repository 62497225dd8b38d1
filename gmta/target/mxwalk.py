"""One attempt to reach a recipient domain: RFC 5321 §5.1's walk over its MX hosts.

:func:`connect_domain` resolves the domain (``gmta.net.mx``), then tries every
MX host in order and every address of each host, within this one attempt, until
one gives a greeted session that the security policies accept. For each address:

1. TCP connect (``connect_timeout``), greeting, EHLO (``command_timeout`` each);
2. STARTTLS when offered, verifying the certificate for the MX name: verified
   is TLS level ``authenticated``. A certificate that does not verify is tried
   again on a new connection without verification (level ``encrypted``, as
   maddy does); any other TLS failure is tried again in plaintext (``none``).
   Neither retry happens when the message needs REQUIRETLS, which only an
   authenticated session can carry (RFC 8689 §4.2.1);
3. the policies' ``check_conn`` (gmta.target.security), then the REQUIRETLS rules.

Failures are kept per MX and address; when nothing worked the error says, for
each, whether it was DNS, a refused or timed-out connection, a server's reply,
TLS or a policy, and its code is temporary when any failure was (another
attempt may find that host up). A permanent reply from a server that answered
(a ``554`` greeting, RFC 5321 §3.1) ends the walk at once: the domain's own MX
said no.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, replace

import gmta.log
from gmta import randomid
from gmta.errors import SMTPError
from gmta.net import client as smtp_client
from gmta.net.client import ConnectionFailed, SMTPClient
from gmta.net.dns import Resolver
from gmta.net.mx import host_addresses, resolve_mx
from gmta.net.tls import peer_chain
from gmta.target.security import (ConnectionFacts, DeliveryPolicy, MXCandidate, MXLevel,
                                  TLSLevel)

#: Addresses tried in one walk at most, over all hosts: with 16 MX hosts of many
#: addresses each, one attempt could otherwise take hours of connect timeouts.
MAX_ADDRESSES_PER_WALK = 24
#: Failures named in the final error's text (all are logged).
MAX_FAILURES_IN_TEXT = 4

#: RFC 8689 §4.2.1 / RFC 3463 X.7.30 "REQUIRETLS support required".
REQUIRETLS_ENHANCED = (5, 7, 30)


@dataclass(frozen=True)
class DialSettings:
    """How the remote target connects: fixed for one configuration."""

    resolver: Resolver
    hostname: str
    port: int
    local_ip: str | None
    force_ipv4: bool
    connect_timeout: float
    command_timeout: float
    submission_timeout: float
    verify_context: ssl.SSLContext
    noverify_context: ssl.SSLContext
    debug: bool
    log: gmta.log.EventLogger


@dataclass
class MXConnection:
    """A greeted session with an MX of a domain, and the facts that admitted it."""

    client: SMTPClient
    candidate: MXCandidate
    facts: ConnectionFacts

    @property
    def mx(self) -> str:
        return self.facts.mx


@dataclass(frozen=True)
class Failure:
    """Why one MX host (or one of its addresses) could not be used."""

    mx: str
    address: str | None
    error: SMTPError
    #: ``dns``, ``refused``, ``timeout``, ``reply``, ``tls``, ``policy``, ``io``.
    kind: str

    def describe(self) -> str:
        where = f"{self.mx} [{self.address}]" if self.address and self.address != self.mx \
            else self.mx
        return f"{where}: {self.error.code} {self.error.enhanced_str} {self.error.text}"


def failure_kind(error: SMTPError) -> str:
    """The kind of a failure, for the log and the final error."""
    if "dns" in error.misc:
        return "dns"
    if isinstance(error, ConnectionFailed):
        if error.stage == "connect":
            return "timeout" if "timed out" in error.text else "refused"
        if error.stage in ("tls", "starttls"):
            return "tls"
        if error.stage == "io":
            return "timeout" if error.enhanced == (4, 4, 1) or "Timed out" in error.text \
                else "io"
        return "reply"
    return error.misc.get("failure", "policy")


def requiretls_error(text: str) -> SMTPError:
    return SMTPError(550, REQUIRETLS_ENHANCED, f"{text} (REQUIRETLS)", misc={"failure": "policy"})


class Walk:
    """One walk over the MX hosts of *domain* for one message."""

    def __init__(self, settings: DialSettings, domain: str, policy: DeliveryPolicy, *,
                 requiretls: bool, relaxed_requiretls: bool, msg_id: str):
        self.settings = settings
        self.domain = domain
        self.policy = policy
        self.requiretls = requiretls
        self.relaxed_requiretls = relaxed_requiretls
        self.msg_id = msg_id
        self.failures: list[Failure] = []
        self.addresses_tried = 0

    @property
    def log(self) -> gmta.log.EventLogger:
        return self.settings.log

    def connect(self) -> MXConnection:
        """A session with the first usable MX; raises the walk's error otherwise."""
        settings = self.settings
        mx_list = resolve_mx(settings.resolver, self.domain, force_ipv4=settings.force_ipv4,
                             local_names=frozenset({settings.hostname}))
        self.policy.prepare_domain(self.domain)
        for host in mx_list.hosts:
            candidate = MXCandidate(self.domain, host, mx_list)
            try:
                mx_level = self.admit_mx(candidate)
                addresses = host_addresses(settings.resolver, host,
                                           force_ipv4=settings.force_ipv4)
            except SMTPError as error:
                self._failed(host.name, None, error)
                continue
            for address in addresses:
                if self.addresses_tried >= MAX_ADDRESSES_PER_WALK:
                    break
                self.addresses_tried += 1
                try:
                    return self._connect_address(candidate, mx_level, address)
                except SMTPError as error:
                    self._failed(host.name, address, error)
                    if self._ends_walk(error):
                        raise self.final_error() from None
                    if failure_kind(error) == "policy":
                        break   # the policy judged the host, not this address
        raise self.final_error()

    def admit_mx(self, candidate: MXCandidate) -> MXLevel:
        """The MX level of *candidate* after the policies; SMTPError to skip it."""
        level = self.policy.check_mx(candidate, MXLevel.NONE)
        if self.requiretls and level < MXLevel.MTASTS:
            # RFC 8689 §4.2.1: the MX must be authenticated (MTA-STS or DNSSEC),
            # maddy's rule; without mx_auth no MX ever is.
            raise requiretls_error(f"Failed to establish the authenticity of MX {candidate.name}"
                                   f" (MX level {level}, at least mtasts needed)")
        return level

    def admit_connection(self, facts: ConnectionFacts) -> ConnectionFacts:
        """*facts* with the policies' TLS level; SMTPError to refuse the connection."""
        level = self.policy.check_conn(facts)
        facts = replace(facts, tls_level=level)
        if self.requiretls:
            if level < TLSLevel.AUTHENTICATED:
                why = f": {facts.tls_error}" if facts.tls_error else ""
                raise requiretls_error(f"TLS to {facts.mx} is {level}, authenticated TLS is "
                                       f"required{why}")
            # RFC 8689 §4.2.1 wants the MX to offer REQUIRETLS; relaxed_requiretls
            # (maddy's default) lets the message go to the MX, the likely final hop.
            if not facts.requiretls_offered and not self.relaxed_requiretls:
                raise requiretls_error(f"{facts.mx} does not offer REQUIRETLS")
        return facts

    def _connect_address(self, candidate: MXCandidate, mx_level: MXLevel,
                         address: str) -> MXConnection:
        # TLS fallbacks (module docstring, step 2); REQUIRETLS allows none.
        fallbacks = not self.requiretls
        client, tls_error = self._session(candidate.name, address, "verify", None, fallbacks)
        try:
            facts = self.admit_connection(self._facts(client, candidate, mx_level, address,
                                                      tls_error))
        except BaseException:
            client.quit()
            raise
        self.log.info("mx_connected", msg_id=self.msg_id, domain=self.domain, mx=candidate.name,
                      address=address, session=client.session_id, tls=str(facts.tls_level),
                      mx_level=str(facts.mx_level),
                      tls_version=client.tls.version if client.tls else "none")
        return MXConnection(client, candidate, facts)

    def _session(self, mx: str, address: str, tls_mode: str, tls_error: str | None,
                 fallbacks: bool) -> tuple[SMTPClient, str | None]:
        """A greeted session, with STARTTLS per *tls_mode* (``verify``, ``noverify``, ``off``)."""
        s = self.settings
        session_id = randomid.token_hex(6)
        client = smtp_client.connect(
            (address, s.port), connect_timeout=s.connect_timeout,
            command_timeout=s.command_timeout, submission_timeout=s.submission_timeout,
            local_address=s.local_ip, debug=s.debug, session_id=session_id, logger=s.log)
        try:
            client.hello(s.hostname)
            if tls_mode == "off" or not client.supports("STARTTLS"):
                return client, tls_error
            context = s.verify_context if tls_mode == "verify" else s.noverify_context
            try:
                # RFC 3207 §4.1 / RFC 7672 §3.2.2: the name to verify is the MX host name.
                client.starttls(context, mx, s.hostname)
                return client, tls_error
            except ConnectionFailed as error:
                if error.stage not in ("tls", "starttls") or error.code >= 500 or not fallbacks:
                    raise
                client.close()
                next_mode = "noverify" if error.tls_verify_failed and tls_mode == "verify" \
                    else "off"
                self.log.info("starttls_failed", msg_id=self.msg_id, domain=self.domain, mx=mx,
                              address=address, session=session_id, reply=str(error),
                              retry=next_mode)
                return self._session(mx, address, next_mode, error.text, fallbacks)
        except BaseException:
            client.quit()
            raise

    def _facts(self, client: SMTPClient, candidate: MXCandidate, mx_level: MXLevel,
               address: str, tls_error: str | None) -> ConnectionFacts:
        tls = client.tls
        if tls is None:
            level = TLSLevel.NONE
            chain: tuple[bytes, ...] = ()
        else:
            level = TLSLevel.AUTHENTICATED if tls.verified else TLSLevel.ENCRYPTED
            chain = peer_chain(client.sock)
        return ConnectionFacts(domain=self.domain, mx=candidate.name, address=address,
                               port=self.settings.port, mx_level=mx_level, tls_level=level,
                               tls=tls, peer_chain=chain, tls_error=tls_error,
                               requiretls_offered=client.supports("REQUIRETLS"))

    def _failed(self, mx: str, address: str | None, error: SMTPError) -> None:
        failure = Failure(mx, address, error, failure_kind(error))
        self.failures.append(failure)
        self.log.info("mx_failed", msg_id=self.msg_id, domain=self.domain, mx=mx,
                      address=address, kind=failure.kind, reply=str(error))

    @staticmethod
    def _ends_walk(error: SMTPError) -> bool:
        """A permanent reply from the server itself (greeting, EHLO): the MX said no."""
        return isinstance(error, ConnectionFailed) and not error.temporary \
            and error.stage in ("greeting", "hello")

    def final_error(self) -> SMTPError:
        return walk_error(self.domain, self.failures)


def walk_error(domain: str, failures: list[Failure]) -> SMTPError:
    """The error of a walk in which every MX failed.

    The code and enhanced code are the last failure's (the MX tried last is the
    least preferred, and usually what an operator looks at), made temporary when
    any failure was temporary: a host that was down may be up at the next
    attempt. RFC 3463 §2: the class digit follows the basic code (maddy #843).
    """
    if not failures:
        return SMTPError(451, (4, 4, 4), f"No MX host of {domain} could be tried")
    last = failures[-1].error
    ended_by_server = isinstance(last, ConnectionFailed) and not last.temporary \
        and last.stage in ("greeting", "hello")
    temporary = any(f.error.temporary for f in failures) and not ended_by_server
    code, enhanced = last.code, last.enhanced
    if temporary and not last.temporary:
        code, enhanced = 451, (4, *enhanced[1:])
    shown = failures[-MAX_FAILURES_IN_TEXT:]
    more = len(failures) - len(shown)
    text = "; ".join(f.describe() for f in shown)
    if more:
        text = f"{more} earlier failure(s); " + text
    kinds = ",".join(sorted({f.kind for f in failures}))
    return SMTPError(code, enhanced, f"No usable MX for {domain}: {text}",
                     misc={"failure": failures[-1].kind, "kinds": kinds})


def reuse_check(walk: Walk, connection: MXConnection) -> MXConnection:
    """*connection* from the cache, judged again for this message's policies.

    The policies may have learnt something since (a new MTA-STS policy), and the
    REQUIRETLS rules depend on the message; raises SMTPError when it does not pass.
    """
    level = walk.admit_mx(connection.candidate)
    facts = replace(connection.facts, mx_level=level, tls_level=_measured(connection.client))
    connection.facts = walk.admit_connection(facts)
    return connection


def _measured(client: SMTPClient) -> TLSLevel:
    if client.tls is None:
        return TLSLevel.NONE
    return TLSLevel.AUTHENTICATED if client.tls.verified else TLSLevel.ENCRYPTED

