"""The ``mx_auth`` block, its policies in their fixed order, and the per-message state.

See the package docstring (``gmta/mxauth/__init__.py``) for how the remote
target uses this module. Here:

- :class:`Policy`, the base of ``mx_auth.mtasts``, ``mx_auth.sts_preload``,
  ``mx_auth.dane``, ``mx_auth.dnssec`` and ``mx_auth.local_policy``;
- :class:`MXAuth`, the ``mx_auth`` module: a block of policies written inside
  ``target.remote`` or at top level as ``mx_auth NAME { }`` shared by ``&NAME``;
- :class:`MessagePolicy`, the state of one message's delivery attempt, which
  runs the policies in the fixed order and adds REQUIRETLS (RFC 8689) on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import gevent

import gmta.log
from gmta.config.module import Module, register
from gmta.config.reader import Custom, Directive, ModuleRef
from gmta.errors import SMTPError
from gmta.mxauth.facts import ConnectionFacts
from gmta.mxauth.refusal import refusal
from gmta.target.security import MXLevel, TLSLevel

log = gmta.log.get("mx_auth")

#: maddy's fixed order (maddy-behaviour §2.5), whatever the order in the
#: block: the level-raising policies first, local_policy last so that it sees
#: the levels the others set.
ORDER = ("mtasts", "sts_preload", "dane", "dnssec", "local_policy")

#: How long a check waits for background work it started earlier (an MTA-STS
#: fetch, a TLSA lookup) beyond that work's own deadline.
JOIN_GRACE = 2.0


class Policy(Module):
    """One outbound security policy; subclasses override the hooks they need.

    Instances hold configuration and caches only; everything about one
    message lives in the :class:`DomainState` and :class:`MXState` objects
    the hooks receive, under ``state.data[self.word]``.
    """

    kinds = frozenset({"mx_auth_policy"})
    #: The word in the ``mx_auth`` block and in refusal texts.
    word: ClassVar[str] = ""

    def prepare_domain(self, domain: "DomainState") -> None:
        """Start background work for a recipient domain (before its MX lookup ends)."""

    def check_mx(self, domain: "DomainState", mx: "MXState", level: MXLevel) -> MXLevel:
        """The MX level this policy gives *mx*; raise a refusal to skip the MX."""
        return level

    def check_connection(self, domain: "DomainState", mx: "MXState", level: TLSLevel,
                         facts: ConnectionFacts) -> TLSLevel:
        """The TLS level this policy gives the connection; raise a refusal to reject it."""
        return level


@dataclass
class MXState:
    """One MX host of one domain during one message's attempt."""

    name: str
    #: The MX answer was DNSSEC-authenticated (AD from a loopback resolver).
    authenticated: bool
    level: MXLevel = MXLevel.NONE
    data: dict[str, Any] = field(default_factory=dict)


class DomainState:
    """One recipient domain during one message's attempt: background jobs and MX states."""

    def __init__(self, name: str):
        self.name = name
        self.data: dict[str, Any] = {}
        self.mxs: dict[str, MXState] = {}
        self._jobs: dict[str, gevent.Greenlet] = {}

    def spawn(self, key: str, fn: Callable[[], Any]) -> None:
        """Run *fn* in the background once per *key*; :meth:`result` waits for it."""
        if key not in self._jobs:
            self._jobs[key] = gevent.spawn(_capturing, fn)

    def result(self, key: str, timeout: float) -> Any:
        """The value of job *key*, re-raising its error; ``TimeoutError`` past *timeout*."""
        job = self._jobs[key]
        if not job.ready():
            job.join(timeout)
        if not job.ready():
            raise TimeoutError(f"{key} did not finish within {timeout:g} s")
        if not job.successful():  # killed, or a bug in _capturing itself
            raise job.exception or RuntimeError(f"{key} was stopped")
        value, error = job.value
        if error is not None:
            raise error
        return value

    def has_job(self, key: str) -> bool:
        return key in self._jobs

    def close(self) -> None:
        for job in self._jobs.values():
            if not job.ready():
                job.kill(block=False)


def _capturing(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    # The error travels back as a value: gevent prints a traceback for every
    # greenlet that dies of one, and a refused MX is not worth one.
    try:
        return fn(), None
    except Exception as e:
        return None, e


@dataclass(frozen=True)
class ConnectionVerdict:
    """What ``check_connection`` decided for a connection that may be used."""

    mx_level: MXLevel
    tls_level: TLSLevel
    #: Send ``REQUIRETLS`` with MAIL FROM (RFC 8689 §4.2.1): the message asks
    #: for it and the server offers it. False when relaxed_requiretls let the
    #: message go to a server that does not offer it.
    send_requiretls: bool


class PolicySet:
    """The policies of one ``mx_auth`` block in the fixed order (or none at all)."""

    def __init__(self, policies: list[Policy] | tuple[Policy, ...] = ()):
        self.policies = tuple(sorted(policies, key=lambda p: ORDER.index(p.word)))

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(p.word for p in self.policies)

    def for_message(self, *, requiretls: bool = False, tls_required_no: bool = False,
                    relaxed_requiretls: bool = True, msg_id: str | None = None) -> "MessagePolicy":
        """The state for one delivery attempt of one message.

        *tls_required_no*: the message has ``TLS-Required: No`` and the target
        allows it (``requiretls_override``): no policy applies (RFC 8689 §4.1).
        A REQUIRETLS message ignores that field (RFC 8689 §4.1 again).
        """
        skip = tls_required_no and not requiretls
        return MessagePolicy(() if skip else self.policies, requiretls=requiretls,
                             relaxed_requiretls=relaxed_requiretls, msg_id=msg_id,
                             overridden=skip and bool(self.policies))


NO_POLICIES = PolicySet()


class MessagePolicy:
    """Runs the policies for one message; see the package docstring for the calls."""

    def __init__(self, policies: tuple[Policy, ...], *, requiretls: bool = False,
                 relaxed_requiretls: bool = True, msg_id: str | None = None,
                 overridden: bool = False):
        self.policies = policies
        self.requiretls = requiretls
        self.relaxed_requiretls = relaxed_requiretls
        self.msg_id = msg_id
        # Bounded by the number of recipient domains of one message (the
        # endpoint's recipient limit) and the MX hosts of each (MAX_MX_HOSTS).
        self._domains: dict[str, DomainState] = {}
        if overridden:
            log.info("policies_skipped", msg_id=msg_id, reason="TLS-Required: No")

    def _domain(self, domain: str) -> DomainState:
        key = domain.lower().rstrip(".")
        state = self._domains.get(key)
        if state is None:
            state = self._domains[key] = DomainState(key)
        return state

    def prepare_domain(self, domain: str) -> None:
        """Start each policy's background work for *domain* (MTA-STS fetch), in parallel."""
        state = self._domain(domain)
        for policy in self.policies:
            policy.prepare_domain(state)

    def check_mx(self, domain: str, mx: str, *, mx_authenticated: bool) -> MXLevel:
        """The MX level of *mx*, or a refusal (SMTPError): do not connect to it."""
        state = self._domain(domain)
        if not state.data and self.policies:
            self.prepare_domain(domain)
        mx_state = MXState(mx.lower().rstrip("."), mx_authenticated)
        state.mxs[mx_state.name] = mx_state
        level = MXLevel.NONE
        for policy in self.policies:
            try:
                level = max(level, policy.check_mx(state, mx_state, level))
            except SMTPError as e:
                self._refused(e, state, mx_state, "mx")
                raise
        mx_state.level = level
        return level

    def check_connection(self, domain: str, mx: str, mx_level: MXLevel,
                         facts: ConnectionFacts) -> ConnectionVerdict:
        """The levels of a connection to *mx*, or a refusal (SMTPError): use another MX."""
        state = self._domain(domain)
        name = mx.lower().rstrip(".")
        mx_state = state.mxs.get(name)
        if mx_state is None:
            raise RuntimeError(f"check_connection for {mx} without check_mx first")
        level = facts.tls_level
        try:
            for policy in self.policies:
                level = max(level, policy.check_connection(state, mx_state, level, facts))
            send_requiretls = self._check_requiretls(state, mx_state, mx_level, level, facts)
        except SMTPError as e:
            self._refused(e, state, mx_state, "connection", facts)
            raise
        # maddy issue #717: the effective levels and the policies that made them.
        log.info("mx_auth", msg_id=self.msg_id, domain=state.name, mx=name,
                 mx_level=mx_level.word, tls_level=level.word, tls=facts.describe_tls(),
                 policies=",".join(p.word for p in self.policies) or "none",
                 requiretls="yes" if self.requiretls else None)
        return ConnectionVerdict(mx_level, level, send_requiretls)

    def _check_requiretls(self, state: DomainState, mx: MXState, mx_level: MXLevel,
                          tls_level: TLSLevel, facts: ConnectionFacts) -> bool:
        """RFC 8689 §4.2.1 for a message sent with MAIL ... REQUIRETLS; True = forward it."""
        if not self.requiretls:
            return False
        # §4.2.1 item 1: the MX must be found securely, by DNSSEC or MTA-STS.
        # The MX answer's own authentication counts even without the dnssec policy.
        effective_mx = max(mx_level, MXLevel.DNSSEC if mx.authenticated else MXLevel.NONE)
        if effective_mx < MXLevel.MTASTS:
            raise refusal("REQUIRETLS", 550, (5, 7, 30),
                          "Failed to establish the MX record authenticity",
                          f"{mx.name} is neither in an MTA-STS policy of {state.name} nor "
                          "found with DNSSEC, and the message requires TLS (RFC 8689)",
                          mx=mx.name)
        # §4.2.1 items 2-3: TLS with a certificate verified by PKIX or DANE.
        if tls_level < TLSLevel.AUTHENTICATED:
            raise refusal("REQUIRETLS", 550, (5, 7, 30),
                          "TLS is not available or unauthenticated but required",
                          f"{mx.name}: {facts.describe_tls()}", mx=mx.name)
        # §4.2.1 item 4: the server must offer REQUIRETLS, unless relaxed.
        if not facts.requiretls_offered:
            if not self.relaxed_requiretls:
                raise refusal("REQUIRETLS", 550, (5, 7, 30),
                              "REQUIRETLS support required",
                              f"{mx.name} does not advertise REQUIRETLS "
                              "(relaxed_requiretls is off)", mx=mx.name)
            return False
        return True

    def _refused(self, error: SMTPError, state: DomainState, mx: MXState, stage: str,
                 facts: ConnectionFacts | None = None) -> None:
        log.info("mx_refused", msg_id=self.msg_id, domain=state.name, mx=mx.name, stage=stage,
                 policy=error.misc.get("policy"), code=error.code, enhanced=error.enhanced_str,
                 reason=error.text, tls=facts.describe_tls() if facts else None)

    def close(self) -> None:
        """Stop background work still running (the delivery ended early)."""
        for state in self._domains.values():
            state.close()
        self._domains.clear()


# -- the mx_auth module ----------------------------------------------------------------------


def _policy_reader(word: str) -> Custom:
    """A directive of the mx_auth block: ``dane``, ``mtasts { ... }``, ``local_policy off``."""
    def read(node, ctx) -> Policy:
        cls = _POLICY_CLASSES.get(word)
        if cls is None:  # pragma: no cover - every word is registered at import
            raise node.error(f"{word}: policy not available")
        return ctx.new_instance(cls, None, list(node.args), node)
    return Custom(read, f"{word} [{{ ... }}]")


_POLICY_CLASSES: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Class decorator: a policy module, usable in mx_auth blocks as ``cls.word``."""
    register(cls)
    _POLICY_CLASSES[cls.word] = cls
    return cls


@register
class MXAuth(Module):
    """``mx_auth { policies }`` inline in target.remote, or ``mx_auth NAME { }`` for ``&NAME``."""

    name = "mx_auth"
    kinds = frozenset({"mx_auth"})
    directives = tuple(
        Directive(word, _policy_reader(word), doc=f"enable the {word} policy") for word in ORDER)

    def configure(self, cfg, ctx) -> None:
        self.policy_set = PolicySet([cfg[word] for word in ORDER if cfg[word] is not None])
        log.debug("configured", block=self.instance_name, policies=",".join(self.policy_set.words))

    def for_message(self, **kw) -> MessagePolicy:
        return self.policy_set.for_message(**kw)

    def start(self, meta=None):
        """Module life cycle without *meta*; with it, target.remote's hook (remote_hook.py).

        The hook's caller has already applied ``TLS-Required: No`` and checks
        REQUIRETLS itself, so neither is repeated here.
        """
        if meta is None:
            return None
        from gmta.mxauth.remote_hook import RemoteHook
        return RemoteHook(self.policy_set.for_message(msg_id=getattr(meta, "id", None)))


#: The directive target.remote declares: ``mx_auth { ... }`` or ``mx_auth &NAME``.
MX_AUTH_DIRECTIVE = Directive("mx_auth", ModuleRef("mx_auth", block_module="mx_auth"),
                              doc="outbound security policies (default: none)")


def policies_of(value: MXAuth | None) -> PolicySet:
    """The :class:`PolicySet` of target.remote's ``mx_auth`` value (None: no policies)."""
    return NO_POLICIES if value is None else value.policy_set
