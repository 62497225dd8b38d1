"""The message pipeline of an endpoint block (maddy-behaviour §2.2).

This is the handling part of a block: either one or more ``deliver_to``
targets, or ``reject``. A :class:`Pipeline` is itself a delivery target: it
starts a delivery on each of its targets when the first recipient arrives,
adds every recipient to each, and commits them together.

Source and destination rules, checks and modifiers build on this (see
``docs/FEATURES.md`` for what is built).
"""

from __future__ import annotations

from dataclasses import dataclass

import gmta.log
from gmta.config.parser import Node
from gmta.config.reader import Custom, Directive, ModuleRef, Values
from gmta.delivery import Delivery, MessageMeta, Target
from gmta.errors import SMTPError

log = gmta.log.get("pipeline")

DEFAULT_REJECT = SMTPError(554, (5, 7, 0), "Message rejected due to a local policy")


def _ascii_digits(text: str) -> bool:
    # str.isdigit() alone accepts "²", which int() then refuses with a ValueError.
    return text.isascii() and text.isdigit()


def parse_reject(node: Node, ctx) -> SMTPError:
    """``reject [code [enhanced-code [text]]]``; the text may be several words."""
    if node.children is not None:
        raise node.error("reject does not take a block")
    args = node.args
    if not args:
        return DEFAULT_REJECT
    code_text = args[0]
    if not (len(code_text) == 3 and _ascii_digits(code_text) and code_text[0] in "45"):
        raise node.error(f"reject: invalid reply code {code_text!r}",
                         hint="use a 4xx (temporary) or 5xx (permanent) code")
    code = int(code_text)
    enhanced = (code // 100, 0, 0)
    if len(args) > 1:
        parts = args[1].split(".")
        if len(parts) != 3 or not all(_ascii_digits(p) for p in parts):
            raise node.error(f"reject: invalid enhanced code {args[1]!r}",
                             hint="such as 5.7.1 (RFC 3463)")
        enhanced = tuple(int(p) for p in parts)
        if enhanced[0] != code // 100:
            raise node.error(f"reject: enhanced code {args[1]} does not match reply code {code}",
                             hint=f"the first digit must be {code // 100}")
    text = " ".join(args[2:]) if len(args) > 2 else DEFAULT_REJECT.text
    return SMTPError(code, enhanced, text)


#: The handling directives every pipeline block accepts.
HANDLING_DIRECTIVES = (
    Directive("deliver_to", ModuleRef("target"), repeat=True,
              doc="deliver to this target (&name or an inline module)"),
    Directive("reject", Custom(parse_reject, "[code [enhanced [text]]]"),
              doc="refuse every recipient with this reply"),
)


@dataclass
class Pipeline:
    """Deliver to ``targets``, or refuse with ``reject``."""

    targets: list[Target]
    reject: SMTPError | None = None

    @classmethod
    def from_values(cls, cfg: Values, where: Node) -> "Pipeline":
        targets = cfg.deliver_to
        if cfg.reject is not None and targets:
            raise cfg.error("reject", "a block cannot both reject and deliver_to",
                            hint="remove one of them")
        if cfg.reject is None and not targets:
            raise where.error("empty pipeline configuration, use 'reject' to reject messages",
                              hint="add 'deliver_to TARGET' or 'reject'")
        return cls(targets, cfg.reject)

    def start_delivery(self, meta: MessageMeta, mail_from: str) -> "PipelineDelivery":
        return PipelineDelivery(self, meta, mail_from)


class PipelineDelivery:
    def __init__(self, pipeline: Pipeline, meta: MessageMeta, mail_from: str):
        self.pipeline = pipeline
        self.meta = meta
        self.mail_from = mail_from
        self.deliveries: list[Delivery] = []
        self.rcpts: list[str] = []

    def add_rcpt(self, rcpt: str, params: dict | None = None) -> None:
        if self.pipeline.reject is not None:
            raise self.pipeline.reject
        if rcpt in self.rcpts:
            # The same recipient twice in one message is delivered once
            # (maddy delivered duplicates, maddy issue #94).
            return
        if not self.deliveries:
            # Targets start on the first recipient: a transaction whose
            # recipients are all refused costs the targets nothing.
            self.deliveries = self._start_all()
        for delivery in self.deliveries:
            delivery.add_rcpt(rcpt, params)
        self.rcpts.append(rcpt)

    def _start_all(self) -> list[Delivery]:
        """A delivery on every target, or none: a target that cannot start must not
        leave the others to deliver the message alone."""
        started: list[Delivery] = []
        try:
            for target in self.pipeline.targets:
                started.append(target.start_delivery(self.meta, self.mail_from))
        except BaseException:
            self._abort_all(started)
            raise
        return started

    def body(self, header: bytes, body) -> None:
        for delivery in self.deliveries:
            delivery.body(header, body)

    def commit(self) -> None:
        for delivery in self.deliveries:
            delivery.commit()

    def abort(self) -> None:
        self._abort_all(self.deliveries)

    def _abort_all(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            try:
                delivery.abort()
            except Exception as e:  # abort is best effort and must reach every target
                log.error("abort_failed", msg_id=self.meta.id, error=repr(e))
