"""``dummy``: maddy's accept-everything target, for tests and benchmarks.

It accepts every recipient and every message and keeps nothing: mail given
to it is gone. Use it only where that is the point (measuring the receiving
side, or a test that only looks at the SMTP dialogue).
"""

from __future__ import annotations

from gmta.buffer import Buffer
from gmta.config.module import Module, register
from gmta.delivery import MessageMeta


class DummyDelivery:
    def __init__(self) -> None:
        self.rcpts: list[str] = []

    def add_rcpt(self, rcpt: str, params: dict | None = None) -> None:
        self.rcpts.append(rcpt)

    def body(self, header: bytes, body: Buffer) -> None:
        pass

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        pass


@register
class DummyTarget(Module):
    name = "dummy"
    kinds = frozenset({"target"})

    def start_delivery(self, meta: MessageMeta, mail_from: str) -> DummyDelivery:
        return DummyDelivery()
