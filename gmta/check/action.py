"""Check actions: ``fail_action reject|quarantine|ignore [code [enhanced [text]]]``.

Every check module maps each of its outcomes to one :class:`Action`
(maddy's FailAction, docs/reference/checks.md "Check actions"):

* ``ignore``: the outcome is logged and recorded in Authentication-Results only;
* ``quarantine``: the message is accepted and flagged (``MessageMeta.quarantine``);
* ``reject``: the command of that stage is refused with the check's own reply,
  or with the reply written after the action word.

A reply written after ``reject`` replaces the check's: ``reject 552`` gives
``552 5.7.0`` and the default text (maddy E4), like the pipeline's ``reject``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gmta.config.parser import Node
from gmta.config.reader import ValueType
from gmta.errors import SMTPError
from gmta.pipeline.check import CheckResult
from gmta.pipeline.pipeline import parse_reject

IGNORE, QUARANTINE, REJECT = "ignore", "quarantine", "reject"


@dataclass(frozen=True)
class Action:
    kind: str
    #: The reply written after ``reject``/``quarantine``, replacing the check's own.
    reply: SMTPError | None = None

    def apply(self, reason: SMTPError, auth: tuple = (), *,
              dmarc_deferrable: bool = False) -> CheckResult:
        """The CheckResult for an outcome whose own reply is *reason*."""
        if self.kind == REJECT:
            return CheckResult(reject=self.reply or reason, auth=auth,
                               dmarc_deferrable=dmarc_deferrable)
        if self.kind == QUARANTINE:
            return CheckResult(quarantine=True, auth=auth, dmarc_deferrable=dmarc_deferrable)
        return CheckResult(auth=auth)


def parse_action(args: list[str], node: Node) -> Action:
    if not args or args[0].lower() not in (IGNORE, QUARANTINE, REJECT):
        raise node.error(f"{node.name}: expected reject, quarantine or ignore",
                         hint=f"such as '{node.name} reject 550 5.7.1 \"Go away\"'")
    kind = args[0].lower()
    reply = None
    if len(args) > 1:
        if kind == IGNORE:
            raise node.error(f"{node.name}: ignore takes no reply")
        # The same grammar (and checks) as the pipeline's reject directive.
        reply = parse_reject(Node(node.name, args[1:], None, node.file, node.line), None)
        if len(args) == 2:
            # A bare code gets the policy subject (RFC 3463 §3.8, X.7.0), as maddy does.
            reply = SMTPError(reply.code, (reply.code // 100, 7, 0), reply.text)
    return Action(kind, reply)


class ActionType(ValueType):
    """A directive whose value is an :class:`Action`."""

    syntax = "reject|quarantine|ignore [code [enhanced [text]]]"

    def parse(self, node, ctx):
        return parse_action(list(node.args), node)
