"""``target.smtp`` and ``target.lmtp``: transparent forwarding to one SMTP or LMTP server.

Spec: target-smtp-lmtp.md; maddy-behaviour §2.6 (seed 003 semantics, DESIGN §1.3).
The session is taken when the delivery starts and MAIL sent at once, each
RCPT is relayed when the recipient is added (so the downstream's answer for
that recipient reaches the upstream client), the content goes at ``body()``.
For a caller that takes every recipient's result from ``body()`` (the queue:
``MessageMeta.batch``) MAIL, the RCPTs and DATA wait for ``body()`` and go in
one write when the server offers PIPELINING (RFC 2920 §3.1), the content in
the next: two round trips per message instead of four.

Sessions are reused (a gmta addition: maddy opens one per message), through
the cache target.remote uses (gmta.target.conncache): after a message the
session waits idle for the next one with the same *key* — the identity it
authenticated as under ``auth forward`` and whether the message needs
REQUIRETLS — so a session authenticated as one user never carries another
user's mail. At most ``conn_reuse_limit`` transactions per session, never after
a failed content transfer, RSET after an unfinished transaction (RFC 5321
§4.1.1.5). A reused session that turns out to be dead at MAIL (closed, or a
421, RFC 5321 §3.8) is replaced once by a new one, so a server's idle timeout
never fails a message.

The addresses in ``targets`` are tried in order; the next one is tried only
when a connection cannot be set up (connect, greeting, EHLO, TLS), never on a
MAIL or RCPT refusal. Downstream replies pass through with their own code,
enhanced code and text, except that a 552 to RCPT becomes 452 (RFC 5321
§4.5.3.1.10: "too many recipients" was once sent as 552 and must be treated as
temporary). A 552 to the content stays permanent (maddy #800 is the bug of
rewriting it too). LMTP gives one result per recipient (RFC 2033 §4.2); when they
differ, ``body()`` raises ``PartialDeliveryError``.
"""

from __future__ import annotations

import ssl

import gmta.log
from gmta import metrics, randomid
from gmta.buffer import Buffer
from gmta.config.module import Module, register
from gmta.config.reader import Bool, Custom, Directive, Domain, Duration, Endpoints, ModuleRef
from gmta.config.tls import TLSClientConfig, parse_client_tls
from gmta.config.values import Endpoint, parse_endpoint
from gmta.delivery import MessageMeta, raise_for
from gmta.errors import SMTPError
from gmta.limits import UNLIMITED, Lease, domain_of
from gmta.net import client as smtp_client
from gmta.net.client import ConnectionFailed, SMTPClient
from gmta.net.tls import client_context
from gmta.proto.grammar import domain_to_ascii
from gmta.target.conncache import ConnectionCache, reuse_directives
from gmta.target.envelope import (check_content, content_pieces, mail_parameters, peer_ip,
                                  rcpt_parameters, server_address, temporary_552)

AUTH_REQUIRED = SMTPError(530, (5, 7, 0), "Authentication is required")
TLS_UNAVAILABLE = (4, 7, 10)   # RFC 5248: X.7.10 "Encryption needed"
#: A cached session idle for less than this is only peeked at before reuse
#: (SMTPClient.quiet_while_idle); an older one is asked with NOOP.
CHECK_AFTER = 2.0


class Session:
    """A downstream session as the connection cache keeps it."""

    __slots__ = ("client",)

    def __init__(self, client: SMTPClient):
        self.client = client


def parse_auth(node, ctx) -> tuple[str, str, str]:
    """``off``, ``plain USER PASS``, ``login USER PASS``, ``forward`` or ``external``."""
    if node.children is not None:
        raise ValueError("auth does not take a block")
    if not node.args:
        raise ValueError("expected off, plain USER PASS, forward or external")
    mode = node.args[0].lower()
    if mode in ("off", "forward", "external"):
        if len(node.args) != 1:
            raise ValueError(f"auth {mode} takes no further arguments")
        return mode, "", ""
    if mode in ("plain", "login"):
        if len(node.args) != 3:
            raise ValueError(f"auth {mode}: expected a username and a password")
        return mode, node.args[1], node.args[2]
    raise ValueError(f"unknown method {node.args[0]!r}: expected off, plain, forward or external")


class ForwardDelivery:
    def __init__(self, target: "SMTPTarget", meta: MessageMeta, mail_from: str):
        self.target = target
        self.meta = meta
        self.mail_from = mail_from
        #: The session's id (named once the session is taken: start()).
        self.session_id = ""
        self.client: SMTPClient | None = None
        #: The session came from the cache (it may have died while idle).
        self.reused = False
        self.leases: list[Lease] = []
        self.destinations: set[str] = set()
        #: The address as the downstream knows it -> as our caller gave it.
        self.rcpts: dict[str, str] = {}
        #: Batch mode (meta.batch): the RCPTs to send at body(), as
        #: (downstream address, its parameters, the address as given).
        self.batch_rcpts: list[tuple[str, dict, str]] = []
        #: Batch mode: recipient -> log fields of its delivery, for the caller's line.
        self.receipts: dict[str, dict[str, str]] = {}
        self.smtputf8 = False
        self.declared_8bit = False
        #: Sending the content failed: the session is never reused (maddy's rule).
        self.content_failed = False
        self.done = False

    @property
    def log(self) -> gmta.log.EventLogger:
        return self.target.log

    # --- The Delivery interface. ----------------------------------------------------

    def start(self) -> None:
        target = self.target
        client_ip = peer_ip(self.meta.conn.get("peer", ""))
        self.leases.append(target.limits.take(ip=client_ip, source=domain_of(self.mail_from)))
        try:
            self.client, self.reused = target.session_for(self.meta)
            # The log lines of this message name the session that carries it.
            self.session_id = self.client.session_id
            if self.meta.batch:
                # MAIL goes with the RCPTs and DATA at body(); its parameters
                # decide now how the recipients' addresses are sent.
                self._mail_parameters()
                return
            try:
                self._mail()
            except ConnectionFailed:
                if not self.reused:
                    raise
                self._replace_lost_session()
                self._mail()
        except BaseException:
            self.abort()
            raise

    def _replace_lost_session(self) -> None:
        """The server dropped the idle session as we used it: one new one."""
        self.log.info("cached_session_lost", msg_id=self.meta.id,
                      session=self.session_id, target=self.client.peer)
        self.client.close()
        self.client = None
        self.reused = False
        self.session_id = randomid.token_hex(6)
        self.client = self.target.open_session(self.meta, self.session_id)

    def _mail_parameters(self) -> tuple[str, dict]:
        """MAIL's sender and parameters for this session (and what they decide:
        SMTPUTF8, 8BITMIME); raises when REQUIRETLS cannot be met."""
        chosen = mail_parameters(self.client, self.meta.mail_params, self.mail_from)
        self.smtputf8 = chosen.smtputf8
        self.declared_8bit = chosen.declared_8bit
        if self.meta.mail_params.get("requiretls"):
            self._requiretls(chosen.params)
        return self._address(self.mail_from, sender=True), chosen.params

    def _mail(self) -> None:
        client = self.client
        sender, params = self._mail_parameters()
        try:
            client.mail(sender, params)
        except SMTPError as error:
            raise self._mail_refused(error) from None

    def _mail_refused(self, error: SMTPError) -> SMTPError:
        self.log.info("mail_refused", msg_id=self.meta.id, session=self.session_id,
                      target=self.client.peer, reply=str(error))
        if not self.client.usable and not isinstance(error, ConnectionFailed):
            # A 421 (RFC 5321 §3.8): the session is over, not the message refused.
            return ConnectionFailed("mail", error.code, error.enhanced, error.text)
        return error

    def _requiretls(self, params: dict) -> None:
        """RFC 8689 §4.2.1: relay a REQUIRETLS message only over TLS to a server that
        offers REQUIRETLS. LMTP is final delivery (§4.2.2 covers the MDA), so there
        the flag is only passed on where it is understood."""
        client = self.client
        if client.tls is not None and client.supports("REQUIRETLS"):
            params["REQUIRETLS"] = None
        elif not self.target.lmtp:
            raise SMTPError(550, (5, 7, 30), "REQUIRETLS needed but the downstream server "
                                             "does not offer it over TLS")

    def _address(self, address: str, *, sender: bool = False) -> str:
        return server_address(address, self.smtputf8, sender=sender)

    def add_rcpt(self, rcpt: str, params: dict | None = None) -> None:
        if self.client is None or not self.client.usable:
            raise SMTPError(451, (4, 4, 2), "Connection to the downstream server was lost")
        params = params or {}
        downstream = self._address(rcpt)
        rcpt_params = rcpt_parameters(self.client, params)
        domain = domain_of(rcpt)
        if domain not in self.destinations and self.target.limits.has_scope("destination"):
            self.leases.append(self.target.limits.take_destination(domain))
            self.destinations.add(domain)
        if self.meta.batch:
            self.batch_rcpts.append((downstream, rcpt_params, rcpt))
            return
        try:
            self.client.rcpt(downstream, rcpt_params)
        except SMTPError as error:
            error = temporary_552(error)
            self.log.info("rcpt_refused", msg_id=self.meta.id, session=self.session_id,
                          target=self.client.peer, rcpt=rcpt, reply=str(error))
            metrics.count_target(self.target.instance_name, [rcpt], error)
            raise error from None
        self.rcpts[downstream] = rcpt

    def body(self, header: bytes, body: Buffer) -> None:
        if self.meta.batch:
            self._batch_body(header, body)
            return
        try:
            self._send_body(header, body)
        except SMTPError as error:
            self.content_failed = True
            metrics.count_target(self.target.instance_name, self.rcpts.values(), error)
            raise
        except BaseException:
            self.content_failed = True
            raise
        metrics.count_target(self.target.instance_name, self.rcpts.values())

    def _send_body(self, header: bytes, body: Buffer) -> None:
        client = self.client
        if client is None or not client.usable:
            raise SMTPError(451, (4, 4, 2), "Connection to the downstream server was lost")
        if not self.rcpts:
            raise SMTPError(554, (5, 5, 1), "No valid recipients")
        check_content(client, self.declared_8bit, header, body)
        results = self._content_results(header, body)
        for rcpt, error in results.items():
            if error is None and self.target.lmtp:
                self.log.info("delivered", msg_id=self.meta.id, session=self.session_id,
                              target=client.peer, rcpt=rcpt)
            elif error is None:
                self.log.info("delivered", msg_id=self.meta.id, session=self.session_id,
                              target=client.peer, rcpts=len(self.rcpts),
                              reply=self.receipts[rcpt]["reply"])
                break   # SMTP: one line for the whole message
        raise_for(results)

    def _content_results(self, header: bytes, body: Buffer) -> dict[str, SMTPError | None]:
        """Send the content; the result of each accepted recipient (self.rcpts), and
        for the delivered ones what the server said (self.receipts).
        ``content_failed`` is left set unless every recipient got its 250."""
        client = self.client
        rcpts = list(self.rcpts.values())
        self.content_failed = True
        try:
            responses = client.send_content(content_pieces(header, body))
        except SMTPError as error:
            self.log.info("message_refused", msg_id=self.meta.id, session=self.session_id,
                          target=client.peer, reply=str(error))
            return dict.fromkeys(rcpts, error)
        if not self.target.lmtp:
            [response] = responses
            if not response.ok:
                error = smtp_client.reply_error(response.reply)
                self.log.info("message_refused", msg_id=self.meta.id, session=self.session_id,
                              target=client.peer, reply=str(error))
                return dict.fromkeys(rcpts, error)
            self.content_failed = False
            receipt = {"target": client.peer, "session": self.session_id,
                       "reply": str(response.reply)}
            self.receipts = dict.fromkeys(rcpts, receipt)
            return dict.fromkeys(rcpts)
        results = self._lmtp_results(responses)
        self.content_failed = any(error is not None for error in results.values())
        return results

    def _lmtp_results(self, responses) -> dict[str, SMTPError | None]:
        """RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.

        A recipient without a reply (the connection broke) failed temporarily.
        """
        lost = SMTPError(451, (4, 4, 2), "Connection lost before the server answered")
        results: dict[str, SMTPError | None] = {rcpt: lost for rcpt in self.rcpts.values()}
        peer = self.client.peer
        for response in responses:
            rcpt = self.rcpts.get(response.command.recipient, response.command.recipient)
            if response.ok:
                results[rcpt] = None
                self.receipts[rcpt] = {"target": peer, "session": self.session_id,
                                       "reply": str(response.reply)}
            else:
                results[rcpt] = smtp_client.reply_error(response.reply)
        for rcpt, error in results.items():
            if error is not None:
                self.log.info("rcpt_failed", msg_id=self.meta.id, session=self.session_id,
                              rcpt=rcpt, reply=str(error))
        return results

    # --- Batch mode (meta.batch): the envelope goes with the content. --------------------

    def _batch_body(self, header: bytes, body: Buffer) -> None:
        name = self.target.instance_name
        try:
            results = self._batch_results(header, body)
        except SMTPError as error:
            # One answer for every recipient: the message never reached the server.
            metrics.count_target(name, [rcpt for _, _, rcpt in self.batch_rcpts], error)
            raise
        except BaseException:
            self.content_failed = True   # where it stopped is unknown: no reuse
            raise
        for error in set(results.values()):   # equal errors count together
            metrics.count_target(name, [r for r, e in results.items() if e == error], error)
        raise_for(results)

    def _batch_results(self, header: bytes, body: Buffer) -> dict[str, SMTPError | None]:
        """MAIL, RCPTs and DATA in one write (RFC 2920 §3.1), then the content."""
        if self.client is None or not self.client.usable:
            raise SMTPError(451, (4, 4, 2), "Connection to the downstream server was lost")
        if not self.batch_rcpts:
            raise SMTPError(554, (5, 5, 1), "No valid recipients")
        check_content(self.client, self.declared_8bit, header, body)
        envelope = self._batch_envelope()
        results: dict[str, SMTPError | None] = {}
        for (downstream, _, rcpt), error in zip(self.batch_rcpts, envelope.rcpt_errors,
                                                strict=True):
            if error is None:
                self.rcpts[downstream] = rcpt
                continue
            error = temporary_552(error)
            self.log.info("rcpt_refused", msg_id=self.meta.id, session=self.session_id,
                          target=self.client.peer, rcpt=rcpt, reply=str(error))
            results[rcpt] = error
        if not self.rcpts:
            return results
        if envelope.data_error is None and self.client.usable:
            # After the 354 (ready), or BDAT when the server offers CHUNKING.
            results.update(self._content_results(header, body))
            return results
        error = envelope.data_error or SMTPError(451, (4, 4, 2), "Connection to the "
                                                 "downstream server was lost")
        self.log.info("message_refused", msg_id=self.meta.id, session=self.session_id,
                      target=self.client.peer, reply=str(error))
        results.update(dict.fromkeys(self.rcpts.values(), error))
        return results

    def _batch_envelope(self) -> smtp_client.Envelope:
        """The envelope's replies; a cached session found dead (closed, or a 421
        to MAIL) is replaced once, as in start(): nothing was delivered on it."""
        rcpts = [(downstream, params) for downstream, params, _ in self.batch_rcpts]
        for _ in range(2):
            sender, params = self._mail_parameters()
            try:
                envelope = self.client.envelope(sender, params, rcpts, data=True)
                if envelope.mail_error is None:
                    return envelope
                error = self._mail_refused(envelope.mail_error)
            except ConnectionFailed as lost:
                error = lost
            if not (self.reused and isinstance(error, ConnectionFailed)):
                raise error
            self._replace_lost_session()
        raise AssertionError("unreachable: a new session is not reused")

    def commit(self) -> None:
        self._finish(clean=True)

    def abort(self) -> None:
        self._finish(clean=False)

    def _finish(self, clean: bool) -> None:
        if self.done:
            return
        self.done = True
        client, self.client = self.client, None
        try:
            if client is not None and self.content_failed:
                client.quit()
            elif client is not None:
                self.target.give_back(self.meta, client, clean=clean)
        finally:
            for lease in self.leases:
                lease.release()
            self.leases = []


@register
class SMTPTarget(Module):
    """``target.smtp``: forwarding to a smarthost over SMTP."""

    name = "target.smtp"
    legacy_names = ("smtp_downstream",)
    kinds = frozenset({"target"})
    max_inline_args = 64
    lmtp = False
    #: The queue may start deliveries with MessageMeta.batch (gmta.queue.attempt).
    takes_batch = True
    directives = (
        Directive("targets", Endpoints(), doc="downstream servers, tried in order"),
        Directive("target", Endpoints(), doc="the old name of targets (maddy seed 000)"),
        Directive("attempt_starttls", Bool(), doc="use STARTTLS when offered"),
        Directive("starttls", Bool(), doc="maddy HEAD: STARTTLS required (yes) or never (no)"),
        Directive("require_tls", Bool(), False, doc="never send over plaintext"),
        Directive("auth", Custom(parse_auth, "off | plain USER PASS | forward | external"),
                  ("off", "", ""), doc="how to authenticate to the downstream"),
        Directive("tls_client", Custom(parse_client_tls, "{ ... }"), inherit_global=True,
                  doc="client TLS settings"),
        Directive("hostname", Domain(), required=True, inherit_global=True,
                  doc="name to give in EHLO/LHLO"),
        Directive("connect_timeout", Duration(), 300.0, doc="TCP connect timeout"),
        Directive("command_timeout", Duration(), 300.0, doc="timeout of each command"),
        Directive("submission_timeout", Duration(), 720.0,
                  doc="timeout of the reply after the message content"),
        Directive("debug", Bool(), False, inherit_global=True, doc="log the SMTP dialogue"),
        Directive("limits", ModuleRef("limits", block_module="limits"),
                  doc="rate and concurrency limits (all, ip, source, destination)"),
        *reuse_directives("idle connections kept per identity (0: no reuse)"),
    )

    def configure(self, cfg, ctx) -> None:
        if cfg.given("targets") and cfg.given("target"):
            raise cfg.error("target", "give either targets or target, not both")
        targets = list(cfg.targets or cfg.target or [])
        try:
            targets += [parse_endpoint(a, ctx.runtime_dir) for a in self.inline_args]
        except ValueError as e:
            raise self.node.error(f"{self.name}: {e}") from None
        if not targets:
            raise self.node.error("missing required directive: targets",
                                  hint="such as 'targets tcp://127.0.0.1:2525'")
        self.targets: list[Endpoint] = targets
        if cfg.given("starttls") and cfg.given("attempt_starttls"):
            raise cfg.error("starttls", "give either starttls or attempt_starttls, not both")
        self.require_tls = cfg.require_tls
        if cfg.given("starttls"):
            # maddy HEAD's starttls: yes means STARTTLS is mandatory, no fallback.
            self.attempt_starttls = cfg.starttls
            self.require_tls = self.require_tls or cfg.starttls
        elif cfg.attempt_starttls is not None:
            self.attempt_starttls = cfg.attempt_starttls
        else:
            self.attempt_starttls = not self.lmtp
        if self.require_tls and any(t.is_unix for t in targets):
            raise self.node.error("require_tls cannot be met by unix:// targets",
                                  hint="a unix socket is local: drop require_tls, or use tcp://")
        self.auth_mode, self.auth_username, self.auth_password = cfg.auth
        self.tls_config: TLSClientConfig | None = cfg.tls_client
        if self.auth_mode == "external" and (self.tls_config is None or not self.tls_config.cert):
            raise cfg.error("auth", "auth external needs a client certificate",
                            hint="tls_client { cert PATH; key PATH }")
        try:
            self.hostname = domain_to_ascii(cfg.hostname.rstrip("."))
        except SMTPError:
            raise cfg.error("hostname", f"hostname {cfg.hostname} has no ASCII form") from None
        self.connect_timeout = cfg.connect_timeout
        self.command_timeout = cfg.command_timeout
        self.submission_timeout = cfg.submission_timeout
        self.debug = cfg.debug
        self.log = gmta.log.get(self.name, debug=cfg.debug)
        self.limits = cfg.limits or UNLIMITED
        self._tls_context: ssl.SSLContext | None = None
        self.conn_reuse_limit = cfg.conn_reuse_limit
        self.cache = ConnectionCache(max_idle_per_key=cfg.conn_max_idle_count,
                                     max_idle_time=cfg.conn_max_idle_time,
                                     check_after=CHECK_AFTER, log=self.log)
        #: Called with each new SMTPClient (tests count sessions; None normally).
        self.on_connect = None

    @property
    def tls_context(self) -> ssl.SSLContext:
        # Built on first use, so check-config does not need the certificate files
        # to be loadable by OpenSSL (they were checked to be PEM at load time).
        if self._tls_context is None:
            self._tls_context = client_context(self.tls_config)
        return self._tls_context

    def start(self) -> None:
        self.cache.reopen()

    def stop(self) -> None:
        self.cache.close_all()

    def start_delivery(self, meta: MessageMeta, mail_from: str) -> ForwardDelivery:
        delivery = ForwardDelivery(self, meta, mail_from)
        delivery.start()
        return delivery

    # --- Sessions. ------------------------------------------------------------------

    def cache_key(self, meta: MessageMeta) -> tuple[str, str]:
        """What a session must share with a message to carry it: the identity it
        authenticated as (``auth forward``: the client's username; otherwise one
        identity for the whole target) and the REQUIRETLS requirement."""
        identity = ""
        if self.auth_mode == "forward":
            if meta.credentials is None:
                raise AUTH_REQUIRED
            identity = "user:" + meta.credentials.username
        return identity, "requiretls" if meta.mail_params.get("requiretls") else ""

    def session_for(self, meta: MessageMeta) -> tuple[SMTPClient, bool]:
        """A cached session for *meta* when one is idle and healthy, else a new one;
        and whether it was cached."""
        cached = self.cache.take(self.cache_key(meta))
        if cached is not None:
            client = cached.client
            self.log.debug("session_reused", msg_id=meta.id, session=client.session_id,
                           target=client.peer, transactions=client.transactions)
            return client, True
        return self.open_session(meta, randomid.token_hex(6)), False

    def give_back(self, meta: MessageMeta, client: SMTPClient, *, clean: bool) -> None:
        """After a message: keep the session for the next one, or close it
        (ConnectionCache.give_back)."""
        if self.cache.max_idle_per_key <= 0:
            client.quit()   # no reuse (conn_max_idle_count 0): no RSET first
            return
        self.cache.give_back(self.cache_key(meta), Session(client), clean=clean,
                             reuse_limit=self.conn_reuse_limit)

    def open_session(self, meta: MessageMeta, session_id: str) -> SMTPClient:
        """A greeted, TLS-protected (as configured) and authenticated session with the
        first target that works; raises the last target's error otherwise."""
        last_error: SMTPError | None = None
        for address in self.targets:
            try:
                client = self._connect(address, session_id, starttls=self.attempt_starttls)
            except ConnectionFailed as error:
                self.log.info("target_failed", msg_id=meta.id, session=session_id,
                              target=str(address), stage=error.stage, reply=str(error))
                last_error = error
                continue
            try:
                self._authenticate(client, meta)
            except BaseException:
                client.quit()
                raise
            self.log.debug("connected", msg_id=meta.id, session=session_id, target=str(address),
                           tls=client.tls.version if client.tls else "none",
                           tls_verified=bool(client.tls and client.tls.verified))
            if self.on_connect is not None:
                self.on_connect(client)
            return client
        raise last_error

    def _connect(self, address: Endpoint, session_id: str, *, starttls: bool) -> SMTPClient:
        server_hostname = None if address.is_unix else address.host
        client = smtp_client.connect(
            address, lmtp=self.lmtp, connect_timeout=self.connect_timeout,
            command_timeout=self.command_timeout, submission_timeout=self.submission_timeout,
            implicit_tls=self.tls_context if address.tls else None,
            server_hostname=server_hostname, debug=self.debug, session_id=session_id,
            logger=self.log)
        try:
            client.hello(self.hostname)
            if client.tls is None and starttls and not address.is_unix \
                    and client.supports("STARTTLS"):
                try:
                    client.starttls(self.tls_context, server_hostname, self.hostname)
                except ConnectionFailed as error:
                    if self.require_tls or error.stage not in ("tls", "starttls"):
                        raise
                    # Seed 003: a failed handshake is retried in plaintext unless
                    # require_tls; the old connection is unusable after a failed
                    # handshake, so this is a new one.
                    self.log.info("starttls_failed", session=session_id, target=str(address),
                                  reply=str(error), fallback="plaintext")
                    client.close()
                    return self._connect(address, session_id, starttls=False)
            if self.require_tls and client.tls is None:
                raise ConnectionFailed("tls", 451, TLS_UNAVAILABLE,
                                       f"TLS is required but unsupported by {client.peer}")
        except BaseException:
            client.quit()
            raise
        return client

    def _authenticate(self, client: SMTPClient, meta: MessageMeta) -> None:
        mode = self.auth_mode
        if mode == "off":
            return
        if mode == "external":
            client.auth("EXTERNAL")
        elif mode == "forward":
            credentials = meta.credentials
            if credentials is None:
                raise AUTH_REQUIRED
            client.auth("PLAIN", credentials.username, credentials.password)
        else:
            client.auth(mode.upper(), self.auth_username, self.auth_password)


@register
class LMTPTarget(SMTPTarget):
    """``target.lmtp``: delivery to a mailbox server (Dovecot) over LMTP."""

    name = "target.lmtp"
    legacy_names = ()
    lmtp = True
