"""``target.remote``: delivery to the MX hosts of each recipient's domain.

Spec: target-remote.md; maddy-behaviour §2.5 (and the defects of §4–§5 not copied).

Per message (one :class:`RemoteDelivery`):

- ``start_delivery`` takes the message's limits (``all``, ``ip``, ``source``)
  and starts the security policies (``mx_auth``; none for a message whose
  ``TLS-Required: No`` the operator honours, RFC 8689 §5);
- ``add_rcpt`` refuses quarantined messages and recipients without a domain,
  and for the first recipient of a domain takes the domain's ``destination``
  limit, gets a session (a cached one, or a walk over the MX hosts:
  gmta.target.mxwalk) and sends MAIL; then RCPT, whose refusal is that
  recipient's answer. A domain that could not be reached answers the same for
  each of its recipients without trying again;
- ``body`` sends the content to every domain's session in parallel (bounded)
  and gives one result per accepted recipient: its domain's. A domain whose
  session broke at a later RCPT gets no content; the recipients it had
  accepted fail temporarily (never "delivered", never a bounce);
- ``commit``/``abort`` give healthy sessions back to the cache
  (gmta.target.conncache), close the others, and release every limit.

Remote refusals keep the server's codes, with its name in the text
(``mx.example.org said: ...``), except that a 552 to RCPT becomes 452 (RFC 5321
§4.5.3.1.10). A 552 to the content stays permanent (maddy #800).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Callable

import gevent
import gevent.pool

import gmta.log
from gmta import metrics
from gmta.buffer import Buffer
from gmta.config.module import Module, register
from gmta.config.reader import Bool, Custom, Directive, Domain, Duration, Int, ModuleRef
from gmta.config.tls import TLSClientConfig, parse_client_tls
from gmta.delivery import MessageMeta, raise_for, tls_required_no
from gmta.errors import SMTPError
from gmta.limits import UNLIMITED, Lease, domain_of
from gmta.net import client as smtp_client
from gmta.net.dns import resolver_for
from gmta.net.tls import client_context
from gmta.proto.grammar import domain_to_ascii
from gmta.target.conncache import ConnectionCache, reuse_directives
from gmta.target.envelope import (check_content, content_pieces, mail_parameters, peer_ip,
                                  rcpt_parameters, server_address, temporary_552)
from gmta.target.mxwalk import DialSettings, MXConnection, Walk, reuse_check
from gmta.target.security import NO_POLICY, DeliveryPolicy, Policy

#: Domains whose content is sent at the same time for one message.
MAX_PARALLEL_DOMAINS = 16
#: Recipient domains of one message (each holds a session while the message is open).
MAX_DOMAINS_PER_MESSAGE = 256
#: Beyond the client's own timeouts (two commands and the content's reply): when a
#: domain's content transfer is given up although the client did not time out.
SEND_DEADLINE_MARGIN = 30.0

QUARANTINED = SMTPError(550, (5, 7, 0), "Refusing to deliver a quarantined message")

# RFC 8689 §5: "TLS-Required: No" asks to deliver even when the policies would not.
def remote_error(mx: str, error: SMTPError) -> SMTPError:
    """A server's refusal, with its name in the text so a DSN says who refused."""
    return SMTPError(error.code, error.enhanced, f"{mx} said: {error.text}", misc=error.misc)


def session_lost(group: "DomainDelivery") -> SMTPError:
    """The answer for recipients a session accepted before it broke at a later RCPT.

    Always temporary: the server took them, only the session was lost (a
    permanent code there would bounce mail another attempt can deliver).
    """
    error = group.error
    code, enhanced = (error.code, error.enhanced) if error.temporary else (451, (4, 4, 2))
    return SMTPError(code, enhanced, f"The session with {group.mx} broke before the content "
                                     f"was sent: {error.text}", misc=error.misc)


class DomainDelivery:
    """The recipients of one domain in one message, and their session."""

    def __init__(self, domain: str):
        self.domain = domain
        self.connection: MXConnection | None = None
        self.lease: Lease | None = None
        #: Why the domain cannot take this message (given to each of its recipients).
        self.error: SMTPError | None = None
        #: Address as sent to the server -> address as the caller gave it.
        self.rcpts: dict[str, str] = {}
        self.smtputf8 = False
        self.declared_8bit = False
        #: The content was accepted: the session may serve another message.
        self.delivered = False
        #: Sending the content failed: the session is never reused (maddy's rule).
        self.content_failed = False

    @property
    def mx(self) -> str:
        return self.connection.mx if self.connection else self.domain


class RemoteDelivery:
    def __init__(self, target: "RemoteTarget", meta: MessageMeta, mail_from: str):
        self.target = target
        self.meta = meta
        self.mail_from = mail_from
        self.requiretls = bool(meta.mail_params.get("requiretls"))
        self.leases: list[Lease] = []
        self.domains: dict[str, DomainDelivery] = {}
        self.policy: DeliveryPolicy | None = None
        self.policies_on = True
        self.done = False

    @property
    def log(self) -> gmta.log.EventLogger:
        return self.target.log

    # --- The Delivery interface. ----------------------------------------------------

    def start(self) -> None:
        target = self.target
        self.leases.append(target.limits.take(ip=peer_ip(self.meta.conn.get("peer", "")),
                                              source=domain_of(self.mail_from)))
        # RFC 8689 §5: TLS-Required: No turns the policies off, unless the message
        # also asks for REQUIRETLS, which wins (§4.1 forbids both together).
        override = target.requiretls_override and self.meta.tls_required_no \
            and not self.requiretls
        self.policies_on = not override
        try:
            self.policy = (target.policy if self.policies_on else NO_POLICY).start(self.meta)
        except BaseException:
            self._finish()
            raise
        if override:
            self.log.info("policies_off", msg_id=self.meta.id, reason="TLS-Required: No")

    def add_rcpt(self, rcpt: str, params: dict | None = None) -> None:
        if self.meta.quarantine:
            raise QUARANTINED
        domain = self._domain(rcpt)
        group = self.domains.get(domain)
        if group is None:
            group = self._open_domain(domain)
        if group.error is not None:
            metrics.count_target(self.target.instance_name, [rcpt], group.error)
            raise group.error
        client = group.connection.client
        address = server_address(rcpt, group.smtputf8, server=group.mx)
        try:
            client.rcpt(address, rcpt_parameters(client, params))
        except SMTPError as error:
            error = temporary_552(remote_error(group.mx, error))
            self.log.info("rcpt_refused", msg_id=self.meta.id, domain=domain, mx=group.mx,
                          rcpt=rcpt, reply=str(error))
            if not client.usable:
                group.error = error
            metrics.count_target(self.target.instance_name, [rcpt], error)
            raise error from None
        group.rcpts[address] = rcpt

    def body(self, header: bytes, body: Buffer) -> None:
        rcpts = [r for g in self.domains.values() if g.error is None for r in g.rcpts.values()]
        try:
            self._send_body(header, body)
        except SMTPError as error:
            metrics.count_target(self.target.instance_name, rcpts, error)
            raise
        metrics.count_target(self.target.instance_name, rcpts)

    def _send_body(self, header: bytes, body: Buffer) -> None:
        if tls_required_no(header) and self.policies_on and not self.meta.tls_required_no:
            # Known only now: the sessions were set up under the policies already,
            # so the header cannot relax them for this attempt (as maddy documents).
            self.log.info("tls_required_no_too_late", msg_id=self.meta.id)
        # Every recipient add_rcpt accepted gets a result here (DESIGN §4: a
        # recipient without one could be taken for delivered). A domain whose
        # session broke at a later RCPT never gets the content: the recipients
        # it had accepted failed, temporarily.
        results: dict[str, SMTPError | None] = {}
        for group in self.domains.values():
            if group.error is not None and group.rcpts:
                lost = session_lost(group)
                self.log.info("rcpts_not_sent", msg_id=self.meta.id, domain=group.domain,
                              mx=group.mx, rcpts=len(group.rcpts), reply=str(lost))
                metrics.count_target(self.target.instance_name, group.rcpts.values(), lost)
                results.update(dict.fromkeys(group.rcpts.values(), lost))
        groups = [g for g in self.domains.values() if g.rcpts and g.error is None]
        if not groups and not results:
            raise SMTPError(554, (5, 5, 1), "No valid recipients")
        pool = gevent.pool.Pool(MAX_PARALLEL_DOMAINS)
        jobs = {group.domain: pool.spawn(self._send, group, header, body) for group in groups}
        deadline = (self.target.command_timeout * 2 + self.target.submission_timeout
                    + SEND_DEADLINE_MARGIN)
        try:
            gevent.joinall(list(jobs.values()), timeout=deadline)
        finally:
            for job in jobs.values():
                if not job.ready():
                    job.kill(block=True, timeout=5)
        for group in groups:
            job = jobs[group.domain]
            # A job killed at the deadline "succeeds" with a GreenletExit as its
            # value (gevent's rule): only None or an SMTPError is an answer.
            if job.successful() and (job.value is None or isinstance(job.value, SMTPError)):
                error = job.value
            else:
                error = SMTPError(451, (4, 4, 2), f"Delivery to {group.mx} did not finish")
                self._close(group)
            for rcpt in group.rcpts.values():
                results[rcpt] = error
        raise_for(results)

    def commit(self) -> None:
        self._finish()

    def abort(self) -> None:
        self._finish()

    # --- Domains. -------------------------------------------------------------------

    def _domain(self, rcpt: str) -> str:
        local, at, domain = rcpt.rpartition("@")
        if not at or not local or not domain:
            # RFC 5321 §4.1.1.3: a bare "postmaster" is local by definition.
            raise SMTPError(550, (5, 1, 1), f"<{rcpt}> has no domain: it cannot be delivered "
                                            "to a remote server")
        if domain.startswith("["):
            return domain   # an address literal (RFC 5321 §4.1.3), checked by the MX walk
        return domain_to_ascii(domain.rstrip(".")).lower()

    def _open_domain(self, domain: str) -> DomainDelivery:
        if len(self.domains) >= MAX_DOMAINS_PER_MESSAGE:
            raise SMTPError(452, (4, 5, 3), "Too many recipient domains in one message")
        group = self.domains[domain] = DomainDelivery(domain)
        try:
            if self.target.limits.has_scope("destination"):
                group.lease = self.target.limits.take_destination(domain)
            group.connection = self.target.connection_for(domain, self)
            self._mail(group)
        except SMTPError as error:
            group.error = error
            self._release_domain(group)
        except BaseException:
            group.error = SMTPError(451, (4, 4, 0), f"Delivery to {domain} was interrupted")
            self._release_domain(group)
            raise
        return group

    def _mail(self, group: DomainDelivery) -> None:
        client = group.connection.client
        chosen = mail_parameters(client, self.meta.mail_params, self.mail_from)
        group.smtputf8, group.declared_8bit = chosen.smtputf8, chosen.declared_8bit
        if self.requiretls and client.supports("REQUIRETLS"):
            # RFC 8689 §4.2.1: the requirement travels on; the MX walk made sure
            # the session is authenticated TLS (or refused the MX).
            chosen.params["REQUIRETLS"] = None
        sender = server_address(self.mail_from, group.smtputf8, sender=True, server=group.mx)
        try:
            client.mail(sender, chosen.params)
        except SMTPError as error:
            if not isinstance(error, smtp_client.ConnectionFailed):
                error = remote_error(group.mx, error)
            self.log.info("mail_refused", msg_id=self.meta.id, domain=group.domain,
                          mx=group.mx, reply=str(error))
            raise error from None

    def _send(self, group: DomainDelivery, header: bytes, body: Buffer) -> SMTPError | None:
        client = group.connection.client
        group.content_failed = True   # until the server's 250
        try:
            check_content(client, group.declared_8bit, header, body, server=group.mx)
            [response] = client.send_content(content_pieces(header, body))
        except SMTPError as error:
            error = error if isinstance(error, smtp_client.ConnectionFailed) \
                else remote_error(group.mx, error)
            self.log.info("message_refused", msg_id=self.meta.id, domain=group.domain,
                          mx=group.mx, reply=str(error))
            return error
        if not response.ok:
            error = remote_error(group.mx, smtp_client.reply_error(response.reply))
            self.log.info("message_refused", msg_id=self.meta.id, domain=group.domain,
                          mx=group.mx, reply=str(error))
            return error
        group.delivered = True
        group.content_failed = False
        self.log.info("delivered", msg_id=self.meta.id, domain=group.domain, mx=group.mx,
                      session=client.session_id, rcpts=len(group.rcpts),
                      tls=str(group.connection.facts.tls_level), reply=str(response.reply))
        return None

    # --- The end. -------------------------------------------------------------------

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            for group in self.domains.values():
                self._release_domain(group)
        finally:
            for lease in self.leases:
                lease.release()
            self.leases = []
            if self.policy is not None:
                self.policy.close()

    def _release_domain(self, group: DomainDelivery) -> None:
        """Give the session back (or close it) and release the domain's limit."""
        connection, group.connection = group.connection, None
        try:
            if connection is not None and group.content_failed:
                connection.client.quit()
            elif connection is not None:
                self.target.give_back(self, connection, clean=group.delivered)
        finally:
            if group.lease is not None:
                group.lease.release()
                group.lease = None

    def _close(self, group: DomainDelivery) -> None:
        if group.connection is not None:
            group.connection.client.close()


def parse_local_ip(node, ctx) -> str:
    if node.children is not None or len(node.args) != 1:
        raise ValueError("expected one IP address")
    try:
        return str(ipaddress.ip_address(node.args[0]))
    except ValueError:
        raise ValueError(f"{node.args[0]!r} is not an IP address") from None


def parse_mx_auth(node, ctx):
    """``mx_auth { ... }`` or ``mx_auth &name``: the policies (gmta/mxauth)."""
    return ModuleRef("mx_auth", block_module="mx_auth").parse(node, ctx)


@register
class RemoteTarget(Module):
    """``target.remote``: MX delivery (module docstring)."""

    name = "target.remote"
    legacy_names = ("remote",)
    kinds = frozenset({"target"})
    directives = (
        Directive("hostname", Domain(), required=True, inherit_global=True,
                  doc="name to give in EHLO"),
        Directive("limits", ModuleRef("limits", block_module="limits"),
                  doc="rate and concurrency limits (all, ip, source, destination)"),
        Directive("local_ip", Custom(parse_local_ip, "IP"), doc="source address of connections"),
        Directive("force_ipv4", Bool(), False, doc="connect to IPv4 addresses only"),
        Directive("connect_timeout", Duration(), 300.0, doc="TCP connect timeout"),
        Directive("command_timeout", Duration(), 300.0,
                  doc="timeout of each command, the greeting and the TLS handshake"),
        Directive("submission_timeout", Duration(), 720.0,
                  doc="timeout of the reply after the message content"),
        Directive("debug", Bool(), False, inherit_global=True, doc="log the SMTP dialogue"),
        Directive("tls_client", Custom(parse_client_tls, "{ ... }"), inherit_global=True,
                  doc="client TLS settings (trusted roots, client certificate)"),
        Directive("mx_auth", Custom(parse_mx_auth, "{ policies } | &name"),
                  doc="outbound security policies"),
        Directive("requiretls_override", Bool(), True,
                  doc="honour 'TLS-Required: No' (RFC 8689 §5)"),
        Directive("relaxed_requiretls", Bool(), True,
                  doc="REQUIRETLS mail may go to an MX that does not offer REQUIRETLS"),
        *reuse_directives("idle connections kept per recipient domain"),
        Directive("smtp_port", Int(minimum=1, maximum=65535), 25,
                  doc="port of the MX hosts (tests use a high port)"),
    )

    def configure(self, cfg, ctx) -> None:
        try:
            self.hostname = domain_to_ascii(cfg.hostname.rstrip(".")).lower()
        except SMTPError:
            raise cfg.error("hostname", f"hostname {cfg.hostname} has no ASCII form") from None
        self.limits = cfg.limits or UNLIMITED
        self.local_ip: str | None = cfg.local_ip
        self.force_ipv4 = cfg.force_ipv4
        self.connect_timeout = cfg.connect_timeout
        self.command_timeout = cfg.command_timeout
        self.submission_timeout = cfg.submission_timeout
        self.debug = cfg.debug
        self.tls_config: TLSClientConfig | None = cfg.tls_client
        self.policy: Policy = cfg.mx_auth or NO_POLICY
        self.requiretls_override = cfg.requiretls_override
        self.relaxed_requiretls = cfg.relaxed_requiretls
        self.conn_reuse_limit = cfg.conn_reuse_limit
        self.conn_max_idle_count = cfg.conn_max_idle_count
        self.conn_max_idle_time = cfg.conn_max_idle_time
        self.smtp_port = cfg.smtp_port
        self.dns_servers = ctx.globals.dns_servers if ctx.globals is not None else ()
        self.log = gmta.log.get(self.name, debug=cfg.debug)
        self.cache = ConnectionCache(max_idle_per_key=self.conn_max_idle_count,
                                     max_idle_time=self.conn_max_idle_time, log=self.log)
        self._settings: DialSettings | None = None
        #: Called with each new MXConnection (tests count sessions; None normally).
        self.on_connect: Callable[[MXConnection], None] | None = None

    @property
    def settings(self) -> DialSettings:
        # Built on first use, so check-config does not need the certificate files
        # to be loadable by OpenSSL (they were checked to be PEM at load time).
        if self._settings is None:
            self._settings = DialSettings(
                resolver=resolver_for(self.dns_servers), hostname=self.hostname,
                port=self.smtp_port, local_ip=self.local_ip, force_ipv4=self.force_ipv4,
                connect_timeout=self.connect_timeout, command_timeout=self.command_timeout,
                submission_timeout=self.submission_timeout,
                verify_context=client_context(self.tls_config),
                noverify_context=_noverify(self.tls_config), debug=self.debug, log=self.log)
        return self._settings

    def start(self) -> None:
        self.cache.reopen()

    def stop(self) -> None:
        self.cache.close_all()

    def start_delivery(self, meta: MessageMeta, mail_from: str) -> RemoteDelivery:
        delivery = RemoteDelivery(self, meta, mail_from)
        delivery.start()
        return delivery

    # --- Sessions. ------------------------------------------------------------------

    def cache_key(self, domain: str, delivery: RemoteDelivery) -> tuple:
        """Sessions are shared only between messages with the same security requirement."""
        return (domain, self.local_ip or "", "policies" if delivery.policies_on else "none",
                "requiretls" if delivery.requiretls else "")

    def connection_for(self, domain: str, delivery: RemoteDelivery) -> MXConnection:
        """A session with an MX of *domain* admitted for *delivery*: cached or new."""
        walk = Walk(self.settings, domain, delivery.policy, requiretls=delivery.requiretls,
                    relaxed_requiretls=self.relaxed_requiretls, msg_id=delivery.meta.id)
        key = self.cache_key(domain, delivery)
        while (cached := self.cache.take(key)) is not None:
            try:
                connection = reuse_check(walk, cached)
            except SMTPError as error:
                self.log.info("cached_session_refused", msg_id=delivery.meta.id, domain=domain,
                              mx=cached.mx, reply=str(error))
                cached.client.quit()
                continue
            self.log.debug("session_reused", msg_id=delivery.meta.id, domain=domain,
                           mx=connection.mx, session=connection.client.session_id,
                           transactions=connection.client.transactions)
            return connection
        connection = walk.connect()
        if self.on_connect is not None:
            self.on_connect(connection)
        return connection

    def give_back(self, delivery: RemoteDelivery, connection: MXConnection, *,
                  clean: bool) -> None:
        """After a message: keep the session for the next one, or close it
        (ConnectionCache.give_back; a failed content transfer never gets here)."""
        self.cache.give_back(self.cache_key(connection.facts.domain, delivery), connection,
                             clean=clean, reuse_limit=self.conn_reuse_limit)


def _noverify(config: TLSClientConfig | None) -> ssl.SSLContext:
    return client_context(config, verify=False)
