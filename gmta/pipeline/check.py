"""The check interface: modules that judge a message at each stage (``check { }``).

In the spirit of maddy's CheckState: a check module (``kinds = {"check"}``)
makes one :class:`CheckState` per message, which is asked about the
connection and the sender (at MAIL, or at the first RCPT with
``defer_sender_reject``), about each recipient, and about the body. Each
answer is a :class:`CheckResult`:

* ``reject``: an ``SMTPError`` that refuses the command of that stage;
* ``quarantine``: the message is accepted but marked (targets that deliver to
  the outside refuse it, DESIGN §3);
* ``header``: header fields to add at the top of the message, complete
  lines ending in CRLF;
* ``auth``: RFC 8601 results (``authres`` objects); the pipeline merges the
  results of every check of a message into one ``Authentication-Results``
  field with the receiving host's name;
* ``dmarc_deferrable``: the reject or quarantine applies only when DMARC
  does not decide instead (SPF with ``enforce_early no``, RFC 7489 §10.1).

A check that can answer before any transaction (at EHLO, maddy's "early"
checks) overrides :meth:`Check.check_helo`; the endpoint asks its root checks.

A state is used for one message only and ``close()`` is called once when the
message is done, whatever happened. The check modules themselves live in
``gmta.check``; this file also provides ``check { }`` blocks and the
``checks`` module that shares one list of checks between blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gmta.config.module import Module, register
from gmta.config.parser import Node
from gmta.delivery import MessageMeta
from gmta.errors import SMTPError


@dataclass
class CheckResult:
    reject: SMTPError | None = None
    quarantine: bool = False
    header: bytes = b""
    auth: tuple = ()
    dmarc_deferrable: bool = False


PASS = CheckResult()


class CheckState:
    """One message as a check sees it; every stage passes unless overridden."""

    def check_connection(self) -> CheckResult:
        return PASS

    def check_sender(self, mail_from: str) -> CheckResult:
        return PASS

    def check_rcpt(self, rcpt: str) -> CheckResult:
        return PASS

    def check_body(self, header: bytes, body) -> CheckResult:
        return PASS

    def close(self) -> None:
        pass


class Check(Module):
    """Base class of check modules (registered as ``check.NAME``)."""

    kinds = frozenset({"check"})

    def check_helo(self, conn: dict) -> CheckResult:
        """The verdict on a connection at EHLO/HELO (*conn* as in ``MessageMeta.conn``)."""
        return PASS

    def check_state(self, meta: MessageMeta, mail_from: str) -> CheckState:  # pragma: no cover
        raise NotImplementedError


def module_from_directive(node: Node, kind: str, ctx):
    """The module a directive inside ``check { }`` / ``modify { }`` names.

    There the directive's name is the module (``spf``, ``replace_rcpt``) and its
    arguments and block are the module's; ``&name`` refers to a top-level block.
    """
    if node.name.startswith("&"):
        if node.args or node.children is not None:
            raise node.error("exactly one argument is required to use existing config block")
        return ctx.reference(node.name[1:], node, kind)
    as_use = Node(node.name, [node.name, *node.args], node.children, node.file, node.line)
    return ctx.instance_from_node(as_use, kind)


def parse_check_list(node: Node, ctx) -> list[Check]:
    """``check { NAME args...; &ref }`` or ``check &checks_block``."""
    if node.children is None:
        if len(node.args) == 1 and node.args[0].startswith("&"):
            group = ctx.reference(node.args[0][1:], node, "checks")
            return list(group.checks)
        raise node.error("check: expected a block of checks or a &reference to a checks block",
                         hint="such as 'check { require_mx_record }'")
    if node.args:
        raise node.error("check takes no arguments before its block")
    return [module_from_directive(child, "check", ctx) for child in node.children]


@register
class ChecksGroup(Module):
    """``checks NAME { ... }``: a list of checks that blocks share with ``check &NAME``."""

    name = "checks"
    kinds = frozenset({"checks"})
    allow_unknown = True

    def configure(self, cfg, ctx) -> None:
        self.checks = [module_from_directive(child, "check", ctx) for child in cfg.rest]


@dataclass
class CheckStates:
    """The states of one list of checks for one message, and what they said."""

    states: list[CheckState] = field(default_factory=list)
    #: The RFC 8601 results the states gave, for the one Authentication-Results field.
    auth: list = field(default_factory=list)

    @classmethod
    def start(cls, checks: list[Check], meta: MessageMeta, mail_from: str) -> "CheckStates":
        return cls([check.check_state(meta, mail_from) for check in checks])

    def run(self, stage: str, *args, meta: MessageMeta, headers: list[bytes],
            dmarc_decides=False) -> None:
        """Ask every state about *stage*; raise the first rejection, keep the rest.

        When *dmarc_decides* is true, or a function that returns true (the
        sender's domain has a DMARC policy that DMARC enforcement will apply;
        asked only when needed, it costs a DNS query), deferrable verdicts are
        recorded, not acted on.
        """
        for state in self.states:
            result = getattr(state, stage)(*args)
            self.auth.extend(result.auth)
            if result.dmarc_deferrable and dmarc_decides and \
                    (not callable(dmarc_decides) or dmarc_decides()):
                if result.header:
                    headers.append(result.header)
                continue
            if result.reject is not None:
                raise result.reject
            if result.quarantine:
                meta.quarantine = True
            if result.header:
                headers.append(result.header)

    def close(self) -> None:
        for state in self.states:
            state.close()
