"""Endpoint modules ``smtp`` and ``lmtp`` (spec: smtp-endpoint.md).

A top-level block ``smtp ADDRESS... { ... }`` listens on each address and runs
one session per connection. The session glues the protocol machine (through
the driver of ``gmta.net.session``) to the block's pipeline: MAIL starts a
delivery, each RCPT is added to it, the body is buffered (``buffer``), a
``Received:`` field is prepended, and the delivery is committed before the
``250`` (DESIGN §4.1: the targets fsync before ``commit()`` returns).
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import ipaddress
import re
import time
from dataclasses import dataclass

import gevent
from gevent.pool import Group

import gmta.log
from gmta import metrics, randomid
from gmta.buffer import BufferPolicy, BufferWriter
from gmta.config.module import Module, register
from gmta.config.parser import Node
from gmta.config.reader import (Bool, Custom, Directive, Domain, Duration, Int, ModuleRef, Size,
                                Strings, read_block)
from gmta.config.tls import TLSServerConfig, parse_server_tls
from gmta.config.values import parse_endpoint, parse_size
from gmta.delivery import ClientCredentials, MessageMeta, PartialDeliveryError
from gmta.endpoint.listeners import Listeners
from gmta.endpoint.submission_header import check_and_complete
from gmta.limits import UNLIMITED, Lease, domain_of
from gmta.errors import SMTPError
from gmta.net import listen
from gmta.net.dns import resolver_for
from gmta.net.rdns import ReverseLookup
from gmta.net.session import SessionDriver
from gmta.net.tls import server_context
from gmta.pipeline.pipeline import HANDLING_DIRECTIVES, Pipeline
from gmta.proto.grammar import domain_to_ascii, normalize_address
from gmta.proto.events import NEED_DATA
from gmta.proto.proxy import ProxyHeaderParser, ProxyProtocolError, trusted
from gmta.proto.server import ServerConnection

def default_buffer_policy(ctx) -> BufferPolicy:
    """maddy's default: ``buffer auto 1M StateDirectory/buffer``."""
    return BufferPolicy("auto", 1 << 20, ctx.state_path("buffer"))


def parse_buffer(node: Node, ctx) -> BufferPolicy:
    """``buffer ram`` | ``buffer fs [DIR]`` | ``buffer auto [MAX] [DIR]``."""
    if node.children is not None:
        raise node.error("buffer does not take a block")
    args = node.args
    default = default_buffer_policy(ctx)
    default_dir = default.directory
    if not args:
        raise node.error("buffer: expected ram, fs [DIR] or auto [MAX] [DIR]")
    mode = args[0].lower()
    if mode == "ram" and len(args) == 1:
        return BufferPolicy("ram")
    if mode == "fs" and len(args) <= 2:
        return BufferPolicy("fs", 0, ctx.state_path(args[1]) if len(args) == 2 else default_dir)
    if mode == "auto" and len(args) <= 3:
        limit = default.memory_limit
        directory = default_dir
        if len(args) >= 2:
            try:
                limit = parse_size([args[1]])
            except ValueError as e:
                raise node.error(f"buffer: {e}") from None
        if len(args) == 3:
            directory = ctx.state_path(args[2])
        return BufferPolicy("auto", limit, directory)
    raise node.error(f"buffer: invalid arguments {' '.join(args)!r}",
                     hint="use ram, fs [DIR] or auto [MAX] [DIR]")


@dataclass(frozen=True)
class ProxyPolicy:
    """``proxy_protocol``: which peers' PROXY headers are believed, and the proxy TLS."""

    networks: tuple
    tls: TLSServerConfig | None = None


def _networks(node: Node, words: list[str]) -> list:
    try:
        return [ipaddress.ip_network(word, strict=False) for word in words]
    except ValueError as e:
        raise node.error(f"{node.name}: {e}", hint="such as 127.0.0.1 or 192.168.0.0/24") from None


def parse_proxy_protocol(node: Node, ctx) -> ProxyPolicy:
    """``proxy_protocol [NET...] [{ trust NET...; tls ... }]`` (HAProxy PROXY v1 and v2)."""
    networks = _networks(node, node.args)
    tls = None
    if node.children is not None:
        values = read_block(node, node.children, (
            Directive("trust", Strings(minimum=0), doc="networks whose headers are believed"),
            Directive("tls", Custom(parse_server_tls), doc="TLS between the proxy and gmta"),
        ), ctx)
        if values.trust:
            networks += _networks(values.nodes["trust"], values.trust)
        tls = values.tls
        if tls is not None and not tls.enabled:
            tls = None
    return ProxyPolicy(tuple(networks), tls)


ENDPOINT_DIRECTIVES = (
    Directive("hostname", Domain(), required=True, inherit_global=True,
              doc="name in the banner and Received"),
    Directive("tls", Custom(parse_server_tls, "off | self_signed | [file] CERT KEY..."),
              inherit_global=True, doc="certificates for STARTTLS and tls:// listeners"),
    Directive("proxy_protocol", Custom(parse_proxy_protocol, "[NET...] [{ trust NET...; tls }]"),
              doc="expect a HAProxy PROXY v1/v2 header on every connection"),
    Directive("io_debug", Bool(), False, doc="log every command and reply"),
    Directive("debug", Bool(), False, inherit_global=True, doc="verbose logging"),
    Directive("read_timeout", Duration(), 600.0, doc="idle time before 421"),
    Directive("write_timeout", Duration(), 60.0, doc="time allowed for each write"),
    Directive("max_message_size", Size(), 32 << 20, doc="largest accepted message"),
    Directive("max_header_size", Size(), 1 << 20, doc="largest accepted header"),
    Directive("max_recipients", Int(minimum=1), 20000, doc="recipients per message"),
    Directive("max_received", Int(minimum=1), 50, doc="Received fields before 554 5.4.6"),
    Directive("smtp_max_line_length", Int(minimum=512), 4000, doc="longest command/data line"),
    Directive("buffer", Custom(parse_buffer, "ram | fs [DIR] | auto [MAX] [DIR]"),
              doc="where bodies wait until delivery"),
    Directive("shutdown_timeout", Duration(), 180.0, doc="grace period for open sessions"),
    Directive("auth", ModuleRef("auth"), doc="credentials for AUTH PLAIN/LOGIN"),
    Directive("insecure_auth", Bool(), doc="allow AUTH before TLS (default: only if TLS is off)"),
    Directive("sasl_login", Bool(), False, doc="offer the LOGIN mechanism besides PLAIN"),
    Directive("max_logged_rcpt_errors", Int(minimum=0), 5, doc="refused RCPTs logged per session"),
    Directive("limits", ModuleRef("limits", block_module="limits"),
              doc="rate and concurrency limits per transaction (scopes all, ip, source)"),
    Directive("defer_sender_reject", Bool(), True,
              doc="apply sender-based limits and checks at the first RCPT, not at MAIL"),
    Directive("dmarc", Bool(), True,
              doc="enforce the sender's DMARC policy (RFC 7489) on SPF and DKIM results"),
) + HANDLING_DIRECTIVES


class EndpointSession:
    """The handler of one connection (see ``gmta.net.session.SessionHandler``)."""

    # One per open connection, idle ones included: no per-instance __dict__.
    __slots__ = (
        "endpoint", "log", "peer", "session_id", "tls", "helo_name", "esmtp",
        "delivery", "mail_from", "smtputf8", "rcpts", "meta", "writer", "header",
        "header_done", "committed", "auth_user", "auth_credentials",
        "logged_rcpt_errors", "lease", "sender_stage_done", "sender_error",
        "body_error", "reverse_lookup")

    def __init__(self, endpoint: "SMTPEndpoint", peer: tuple, session_id: str, implicit_tls: bool):
        self.endpoint = endpoint
        self.log = endpoint.log
        self.peer = peer
        self.session_id = session_id
        self.tls = implicit_tls
        self.helo_name = ""
        self.esmtp = False
        self.delivery = None
        self.mail_from = ""
        self.smtputf8 = False
        self.rcpts: list[str] = []
        self.meta: MessageMeta | None = None
        self.writer: BufferWriter | None = None
        self.header = bytearray()
        self.header_done = False
        self.committed = False
        self.auth_user: str | None = None
        self.auth_credentials: ClientCredentials | None = None
        self.logged_rcpt_errors = 0
        self.lease: Lease | None = None
        self.sender_stage_done = False
        self.sender_error: SMTPError | None = None
        self.body_error: SMTPError | None = None
        self.reverse_lookup: ReverseLookup | None = None

    # -- handler methods -------------------------------------------------------------

    def connected(self) -> None:
        self.log.info("connected", session=self.session_id, peer=_peer_text(self.peer),
                      endpoint=self.endpoint.instance_name)
        ip = self._peer_ip()
        if ip is not None and not self.endpoint.submission:
            # Started before the greeting and taken at the Received field, so
            # the client never waits for DNS to be greeted (maddy-behaviour §2.1).
            self.reverse_lookup = ReverseLookup(self.endpoint.resolver, ip)

    def helo(self, name: str, esmtp: bool) -> None:
        # Early checks (check_helo, such as dnsbl check_early) answer EHLO itself,
        # so a refused client cannot start a transaction (maddy E13).
        for check in self.endpoint.pipeline.checks:
            result = check.check_helo({"ip": self._peer_ip(), "helo": name})
            if result.reject is not None:
                self.log.info("helo_refused", session=self.session_id, helo=name,
                              reply=str(result.reject))
                raise result.reject
        self.helo_name = name
        self.esmtp = esmtp

    def tls_started(self, sock) -> None:
        self.tls = True
        self.log.debug("tls", session=self.session_id, version=sock.version(),
                       cipher=sock.cipher()[0])

    def auth(self, event) -> None:
        """Check AUTH PLAIN/LOGIN credentials (RFC 4954) against the ``auth`` module."""
        username = event.username
        # RFC 4616 §2: acting as another identity needs authorisation we do
        # not have a policy for, so only "as myself" is accepted.
        if event.authorization_id and event.authorization_id != username:
            self.log.info("auth_failed", session=self.session_id, username=username,
                          reason="authorization identity differs")
            raise AUTH_INVALID
        # The auth module logs a failure (with its reason, never the password).
        if not self.endpoint.auth.authenticate(username, event.password,
                                               session=self.session_id):
            raise AUTH_INVALID
        self.auth_user = username
        self.auth_credentials = ClientCredentials(username, event.password)
        self.log.info("authenticated", session=self.session_id, username=username,
                      mechanism=event.mechanism)

    def mail(self, event) -> None:
        self.transaction_ended()
        self.meta = MessageMeta(
            id=randomid.token_hex(8),
            mail_params={"size": event.size, "body": event.body and str(event.body),
                         "smtputf8": event.smtputf8, "requiretls": event.requiretls,
                         "ret": event.ret and str(event.ret), "envid": event.envid},
            conn={"peer": _peer_text(self.peer), "helo": self.helo_name, "tls": self.tls,
                  "proto": self._protocol_name(event.smtputf8),
                  # For the checks: SPF, DNSBL, authorize_sender, command placeholders.
                  "ip": self._peer_ip(), "auth_user": self.auth_user},
            credentials=self.auth_credentials)
        # Routing and delivery see one spelling of each address: U-label
        # domains, lower case, NFC (maddy-behaviour §2.1).
        self.mail_from = normalize_address(event.address, sender=True) if event.address else ""
        self.smtputf8 = event.smtputf8
        self.committed = False
        if not self.endpoint.defer_sender_reject:
            try:
                self._sender_stage()
            except BaseException:
                # MAIL is refused, so the driver sees no transaction to end.
                self.transaction_ended()
                raise
        self.log.debug("mail", session=self.session_id, msg_id=self.meta.id, sender=event.address)

    def _sender_stage(self) -> None:
        """Work that depends on the sender only: the endpoint's limits, then the
        pipeline's sender stage (source block, sender checks and modifiers).

        With ``defer_sender_reject`` (the default) it runs at the first RCPT,
        and its refusal answers every RCPT of the transaction (maddy E14), so
        the log shows whom a refused message was for.
        """
        self.sender_stage_done = True
        try:
            self.lease = self.endpoint.limits.take(ip=self._peer_ip(),
                                                   source=domain_of(self.mail_from))
            # LMTP answers per recipient, so its pipeline need not be all-or-nothing.
            self.delivery = self.endpoint.pipeline.start_delivery(
                self.meta, self.mail_from, atomic=not self.endpoint.lmtp)
        except Exception as e:
            error = e if isinstance(e, SMTPError) else self._internal_error("sender_stage", e)
            self.sender_error = error
            self.log.info("sender_refused", session=self.session_id, msg_id=self.meta.id,
                          sender=self.mail_from, reply=str(error),
                          scope=error.misc.get("limit_scope"))
            raise error from None

    def _internal_error(self, stage: str, e: Exception) -> SMTPError:
        self.log.error("handler_failed", session=self.session_id, msg_id=self.meta.id,
                       stage=stage, error=repr(e))
        return SMTPError(451, (4, 0, 0), f"Internal server error (msg ID = {self.meta.id})")

    def _peer_ip(self) -> str | None:
        return self.peer[0] if isinstance(self.peer, tuple) and self.peer else None

    def rcpt(self, event) -> None:
        params = {"notify": event.notify and sorted(str(n) for n in event.notify),
                  "orcpt": event.orcpt}
        try:
            if self.sender_error is not None:
                raise self.sender_error
            if not self.sender_stage_done:
                self._sender_stage()
            rcpt = normalize_address(event.address)
            self.delivery.add_rcpt(rcpt, params)
        except SMTPError as error:
            # A dictionary attack would otherwise write a line per guess.
            if self.logged_rcpt_errors < self.endpoint.max_logged_rcpt_errors:
                self.logged_rcpt_errors += 1
                self.log.info("rcpt_refused", session=self.session_id, msg_id=self.meta.id,
                              rcpt=event.address, reply=str(error))
            raise
        self.rcpts.append(rcpt)

    def data_start(self) -> None:
        self.body_error = None
        self.writer = self.endpoint.buffer_policy.writer()
        self.header = bytearray()
        self.header_done = False

    def body_chunk(self, data: bytes) -> None:
        if self.body_error is not None:
            return  # the rest of a body that can no longer be stored
        try:
            self._store_chunk(data)
        except OSError as e:
            # A full disk or an unwritable buffer directory: keep reading to
            # the end of data (the machine does), then answer 451.
            self.log.error("buffer_failed", session=self.session_id, msg_id=self.meta.id,
                           error=e.strerror or str(e))
            self.body_error = SMTPError(451, (4, 3, 0), "Cannot store the message now, "
                                                        "try again later")
            self.writer.discard()

    def _store_chunk(self, data: bytes) -> None:
        if self.header_done:
            self.writer.write(data)
            return
        # The header ends at the first empty line (RFC 5322 §2.1); the machine
        # bounds its size (max_header_size), so collecting it here is bounded.
        self.header += data
        end = _header_end(self.header)
        if end is not None:
            self.header_done = True
            self.writer.write(bytes(self.header[end:]))
            del self.header[end:]

    def message_end(self) -> list[SMTPError | None] | None:
        if self.body_error is not None:
            raise self.body_error
        header = bytes(self.header)
        if not self.header_done and header and not header.endswith(b"\r\n"):
            # A message without an empty line is all header (RFC 5322 §2.1);
            # a final line without CRLF gets one so the header stays parseable.
            header += b"\r\n"
        received = _count_received(header)
        if received > self.endpoint.max_received:
            raise SMTPError(554, (5, 4, 6), f"Too many Received header fields ({received}), "
                                            "possible forwarding loop")
        if self.endpoint.submission:
            header = check_and_complete(header, self.endpoint.hostname_ascii)
        header = self._received_field() + header
        body = self.writer.finish()
        self.writer = None
        partial = None
        try:
            self.delivery.body(header, body)
            self.delivery.commit()
        except PartialDeliveryError as error:
            # Some recipients were delivered: they must not be reported as
            # failed (maddy #704). LMTP says it per recipient; SMTP accepts
            # the message and the pipeline has logged each failed recipient.
            if not error.delivered and not self.endpoint.lmtp:
                failures = list(error.failed.values())
                first = next((e for e in failures if e.temporary), failures[0])
                self.log.info("message_failed", session=self.session_id, msg_id=self.meta.id,
                              reply=str(first))
                raise first from None
            partial = error
        except SMTPError as error:
            self.log.info("message_failed", session=self.session_id, msg_id=self.meta.id,
                     reply=str(error))
            raise
        except Exception as e:
            self.log.error("message_failed", session=self.session_id, msg_id=self.meta.id,
                      error=repr(e))
            raise SMTPError(451, (4, 0, 0), f"Internal server error (msg ID = {self.meta.id})")
        finally:
            body.remove()
        self.committed = True
        self.log.info("accepted", session=self.session_id, msg_id=self.meta.id,
                 sender=self.mail_from, rcpts=len(self.rcpts), size=len(header) + body.size)
        if partial is not None:
            self.log.warning("partly_delivered", session=self.session_id, msg_id=self.meta.id,
                             failed=",".join(partial.failed))
        if self.endpoint.lmtp:
            # One result per accepted recipient, in RCPT order (RFC 2033 §4.2).
            return [partial.results.get(rcpt) if partial else None for rcpt in self.rcpts]
        return None

    def transaction_ended(self) -> None:
        if self.writer is not None:
            self.writer.discard()
            self.writer = None
        if self.delivery is not None and not self.committed:
            self.delivery.abort()
        self.delivery = None
        self.rcpts = []
        self.header = bytearray()
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        self.sender_stage_done = False
        self.sender_error = None

    # -- helpers -----------------------------------------------------------------------

    def _protocol_name(self, smtputf8: bool) -> str:
        """The "with" protocol type (RFC 3848, RFC 6531 §3.7.3)."""
        if not self.esmtp:
            return "SMTP"  # HELO: no registered name says TLS or UTF-8 for it
        name = "LMTP" if self.endpoint.lmtp else "SMTP"
        name = ("UTF8" if smtputf8 else "E" if not self.endpoint.lmtp else "") + name
        return name + ("S" if self.tls else "") + ("A" if self.auth_user else "")

    def _received_field(self) -> bytes:
        """RFC 5321 §4.4 trace field, in maddy's shape (maddy-behaviour §2.1)."""
        ip = self._peer_ip() or "unix"
        if ":" in ip:
            ip = "IPv6:" + ip  # RFC 5321 §4.1.3 address literal
        helo = _trace_name(self.helo_name, self.smtputf8)
        first = [f"by {self.endpoint.hostname_ascii}"]
        # Submission does not trace the sender's host (maddy's "don't trace
        # sender"): it would publish a user's home IP address in every message.
        if not self.endpoint.submission:
            rdns = self._reverse_name()
            first.insert(0, f"from {helo} ({rdns + ' ' if rdns else ''}[{ip}])")
        rest = [f"(envelope-sender <{self.mail_from}>)",
                f"with {self.meta.conn['proto']}", f"id {self.meta.id}"]
        if len(self.rcpts) == 1:
            rest.append(f"for <{self.rcpts[0]}>")
        date = _trace_date()
        line = "Received: " + " ".join(first) + "\r\n\t" + " ".join(rest) + \
            f";\r\n\t{date}\r\n"
        return line.encode("utf-8")

    def _reverse_name(self) -> str | None:
        """The peer's forward-confirmed rDNS name; kept in the connection facts too."""
        if self.reverse_lookup is None:
            return None
        result = self.reverse_lookup.result()
        # For checks and DSNs later (require_matching_rdns, Received-From-MTA).
        self.meta.conn.update(result.facts())
        return _trace_name(result.name, False) if result.name else None


AUTH_INVALID = SMTPError(535, (5, 7, 8), "Invalid credentials")


# The PROXY header comes first and is small (at most a few hundred bytes): a
# proxy that does not send it promptly is broken.
PROXY_HEADER_TIMEOUT = 10.0
#: Retiring on reload: how long sessions still open after shutdown_timeout
#: get to finish their transaction once asked to stop.
RETIRE_GRACE = 10.0


def _ascii_or_literal(name: str) -> str:
    try:
        return domain_to_ascii(name)
    except (SMTPError, UnicodeError, ValueError):
        return name.encode("ascii", "replace").decode()


# What may stand for the client's name in a trace field: a domain, an address
# literal, or (RFC 6531) UTF-8 letters. Anything else the client sent could
# forge the rest of the Received line, so it is replaced.
_UNSAFE_TRACE_CHARS = re.compile(r"[^\w.\-:\[\]]")


def _trace_name(name: str, utf8: bool) -> str:
    """The EHLO name as it may appear in ``Received: from NAME``."""
    if not utf8:
        name = _ascii_or_literal(name)
    return _UNSAFE_TRACE_CHARS.sub("?", name) or "?"


_formatted_date: list = [None, ""]   # (second, its RFC 5322 text)


def _trace_date() -> str:
    """Now as an RFC 5322 §3.3 date in local time, for the Received field.

    Formatted once per second: the field shows whole seconds, and formatting
    (time zone lookup included) cost more than the rest of the field.
    """
    second = int(time.time())
    if _formatted_date[0] != second:
        moment = datetime.datetime.fromtimestamp(second).astimezone()
        _formatted_date[:] = [second, email.utils.format_datetime(moment)]
    return _formatted_date[1]


def _header_end(header: bytearray) -> int | None:
    """Offset just past the empty line that ends the header, if it has arrived."""
    if header.startswith(b"\r\n"):
        return 2
    index = header.find(b"\r\n\r\n")
    return None if index < 0 else index + 4


def _count_received(header: bytes) -> int:
    return sum(1 for line in header.split(b"\r\n") if line[:9].lower() == b"received:")


def _peer_text(peer) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
        return f"{host}:{peer[1]}"
    return "unix"


@register
class SMTPEndpoint(Listeners, Module):
    name = "smtp"
    kinds = frozenset({"endpoint"})
    endpoint = True
    max_inline_args = 64
    directives = ENDPOINT_DIRECTIVES
    lmtp = False
    submission = False

    def configure(self, cfg, ctx) -> None:
        if not self.inline_args:
            raise self.node.error(f"{self.name}: expected at least one listen address",
                                  hint=f"such as '{self.name} tcp://127.0.0.1:2525 {{ ... }}'")
        try:
            self.addresses = [parse_endpoint(a, ctx.runtime_dir) for a in self.inline_args]
        except ValueError as e:
            raise self.node.error(f"{self.name}: {e}") from None
        tls = cfg.tls
        if tls is None:
            if not self.lmtp:
                raise cfg.error("tls", "missing required directive: tls",
                                hint="set it in this block or globally; 'tls off' disables TLS")
            tls = TLSServerConfig("off")
        if not tls.enabled and any(a.tls for a in self.addresses):
            raise self.node.error("tls:// listeners need a certificate, but tls is off",
                                  hint="configure tls, or listen on tcp://")
        self.tls_config = tls
        self.log = gmta.log.get("endpoint", debug=cfg.debug)
        self.hostname = cfg.hostname
        self.hostname_ascii = _ascii_or_literal(cfg.hostname)
        self.io_debug = cfg.io_debug
        self.read_timeout = cfg.read_timeout
        self.write_timeout = cfg.write_timeout
        self.max_message_size = cfg.max_message_size
        self.max_header_size = cfg.max_header_size
        self.max_recipients = cfg.max_recipients
        self.max_received = cfg.max_received
        self.max_line_length = cfg.smtp_max_line_length
        self.buffer_policy = cfg.buffer or default_buffer_policy(ctx)
        self.shutdown_timeout = cfg.shutdown_timeout
        self.pipeline = Pipeline.from_values(cfg, self.node)
        self.resolver = resolver_for(ctx.globals.dns_servers)
        self.pipeline.authserv_id = self.hostname_ascii
        self.pipeline.dmarc_resolver = self.resolver if cfg.dmarc else None
        self.auth = cfg.auth
        if self.submission and self.auth is None:
            raise self.node.error("missing required directive: auth",
                                  hint="submission needs an auth provider, such as "
                                       "'auth &local_authdb'")
        self.auth_mechanisms = ()
        if self.auth is not None:
            self.auth_mechanisms = ("PLAIN", "LOGIN") if cfg.sasl_login else ("PLAIN",)
        # maddy's defaults: plaintext AUTH only when TLS is off (nothing better is
        # possible) or on LMTP (a local socket).
        self.insecure_auth = cfg.insecure_auth if cfg.given("insecure_auth") \
            else (not tls.enabled or self.lmtp)
        self.max_logged_rcpt_errors = cfg.max_logged_rcpt_errors
        self.limits = cfg.limits or UNLIMITED
        self.proxy_policy = cfg.proxy_protocol
        self.proxy_tls_context = None
        self.defer_sender_reject = cfg.defer_sender_reject
        self.init_listeners()
        self.sessions = Group()
        self.tls_context = None

    def bind(self) -> None:
        # The certificates are loaded here too: a bad one fails a reload
        # before any new listener accepts (and a key only root may read
        # works when started as root).
        self._load_tls()
        Listeners.bind(self)

    def _load_tls(self) -> None:
        self.tls_context = server_context(self.tls_config, self.hostname_ascii)
        if self.proxy_policy is not None and self.proxy_policy.tls is not None:
            self.proxy_tls_context = server_context(self.proxy_policy.tls, self.hostname_ascii)

    def start(self) -> None:
        self.start_listeners(lambda address, sock: listen.serve(
            address, functools.partial(self._handle, address), sock))

    def stop(self) -> None:
        self.stop_accepting()
        # Idle sessions get 421 now; those in a transaction finish it first
        # (SessionDriver.request_stop), within shutdown_timeout.
        self.hurry()
        self.sessions.join(timeout=self.shutdown_timeout)
        self._end_sessions()

    # -- reload (gmta.daemon.reload; the listeners: gmta.endpoint.listeners) --------------

    def retire(self) -> None:
        """Reload: the new configuration accepts now; open sessions go on under this
        one until they end, up to ``shutdown_timeout``, then stop as on SIGTERM."""
        self.stop_accepting()
        self.sessions.join(timeout=self.shutdown_timeout)
        self.hurry()
        self.sessions.join(timeout=RETIRE_GRACE)
        self._end_sessions()

    def hurry(self) -> None:
        """Ask open sessions to end: idle ones now (421), the others after their transaction."""
        for greenlet in list(self.sessions):
            driver = getattr(greenlet, "driver", None)
            if driver is not None:
                driver.request_stop(greenlet)

    def _end_sessions(self) -> None:
        self.sessions.kill(block=True, timeout=5)
        for server in self.servers:
            server.stop(timeout=1)

    def _read_proxy_header(self, sock, peer, session_id):
        """Read the PROXY header; returns (socket, peer to believe, bytes after the header).

        The header is read from every connection, but its addresses replace the
        real peer only when the peer is trusted (maddy-behaviour §2.1).
        """
        if self.proxy_tls_context is not None:
            with gevent.Timeout(PROXY_HEADER_TIMEOUT):
                sock = self.proxy_tls_context.wrap_socket(sock, server_side=True)
        parser = ProxyHeaderParser()
        with gevent.Timeout(PROXY_HEADER_TIMEOUT):
            while (header := parser.next_result()) is NEED_DATA:
                data = sock.recv(4096)
                if not data:
                    raise ProxyProtocolError("connection closed before the PROXY header")
                parser.receive_data(data)
        real_ip = peer[0] if isinstance(peer, tuple) else ""
        if header.is_local or not isinstance(header.source, tuple):
            return sock, peer, header.remaining
        if not trusted(real_ip, self.proxy_policy.networks):
            self.log.info("proxy_untrusted", session=session_id, peer=_peer_text(peer),
                          claimed=header.source[0])
            return sock, peer, header.remaining
        host = header.source[0]
        mapped = ipaddress.ip_address(host)
        if getattr(mapped, "ipv4_mapped", None) is not None:
            host = str(mapped.ipv4_mapped)
        self.log.debug("proxied", session=session_id, proxy=_peer_text(peer),
                       client=f"{host}:{header.source[1]}")
        return sock, (host, header.source[1]), header.remaining

    def _handle(self, address, sock, peer) -> None:
        session_id = randomid.token_hex(6)
        greenlet = gevent.getcurrent()
        self.sessions.add(greenlet)
        implicit_tls = address.tls
        metrics.SESSIONS_OPENED.labels(self.instance_name).inc()
        metrics.SESSIONS_ACTIVE.labels(self.instance_name).inc()
        try:
            early_data = b""
            if self.proxy_policy is not None:
                try:
                    sock, peer, early_data = self._read_proxy_header(sock, peer, session_id)
                except (ProxyProtocolError, OSError, gevent.Timeout) as e:
                    self.log.info("proxy_header_refused", session=session_id,
                                  peer=_peer_text(peer), reason=str(e))
                    return
            if implicit_tls:
                try:
                    with gevent.Timeout(self.write_timeout):
                        sock = self.tls_context.wrap_socket(sock, server_side=True)
                except (gevent.Timeout, OSError) as e:
                    self.log.debug("tls_failed", session=session_id, error=str(e))
                    return
            handler = EndpointSession(self, peer, session_id, implicit_tls)
            conn = ServerConnection(
                self.hostname_ascii, lmtp=self.lmtp, max_line_length=self.max_line_length,
                max_message_size=self.max_message_size, max_header_size=self.max_header_size,
                max_recipients=self.max_recipients,
                tls_available=self.tls_context is not None, tls_active=implicit_tls,
                auth_mechanisms=self.auth_mechanisms, auth_requires_tls=not self.insecure_auth,
                submission=self.submission,
                # RFC 3461: NOTIFY/RET/ENVID/ORCPT reach the queue through
                # meta.mail_params and the RCPT params (gmta.queue.notify).
                dsn=True)
            driver = SessionDriver(sock, conn, handler, read_timeout=self.read_timeout,
                                   write_timeout=self.write_timeout,
                                   tls_context=self.tls_context, io_debug=self.io_debug,
                                   session_id=session_id, log=self.log,
                                   endpoint=self.instance_name)
            greenlet.driver = driver
            conn.receive_data(early_data)
            driver.run()
        finally:
            metrics.SESSIONS_ACTIVE.labels(self.instance_name).dec()
            try:
                sock.close()
            except OSError:
                pass
            self.log.debug("closed", session=session_id)


@register
class SubmissionEndpoint(SMTPEndpoint):
    """``submission``: smtp with AUTH required and the header checked (RFC 6409)."""

    name = "submission"
    submission = True


@register
class LMTPEndpoint(SMTPEndpoint):
    name = "lmtp"
    lmtp = True
