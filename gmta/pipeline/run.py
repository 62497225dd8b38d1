"""One message through a pipeline: the sender stage, each recipient, the body, commit.

The order of work is maddy's (maddy-behaviour §2.2):

* sender stage (:class:`PipelineDelivery` creation, i.e. MAIL or the first RCPT
  with ``defer_sender_reject``): root checks on the connection and sender,
  root modifiers rewrite the sender, the source block is chosen on the
  rewritten sender, source checks, source modifiers;
* each RCPT (:meth:`PipelineDelivery.add_rcpt`): root and source checks, root
  and source modifiers expand it (1:N), each address chooses a destination
  block, which rejects it or checks it, expands it again and names its
  targets; ``reroute`` sends the results through another pipeline. Every
  address is routed before any target sees one, so a refused RCPT leaves no
  trace in the targets;
* DATA (:meth:`body`): body checks, the header fields they add, body
  modifiers (the destination block's only for its own targets), then the body
  to every target; :meth:`commit` commits them.

A target reached from several blocks gets one delivery with all its
recipients, each final recipient once; ``MessageMeta.original_rcpts`` maps a
final recipient to the RCPT it came from (for DSNs).

Results: over SMTP (``atomic``) a message is refused whole if a target
refuses the body and nothing was delivered yet; otherwise (LMTP, or a target
that already delivered some recipients) the other targets commit, and a
:class:`PartialDeliveryError` keyed by RCPT address reports the rest. An RCPT
counts as delivered if any of its final recipients was, so nothing delivered
is ever reported as failed (maddy issue #704).
"""

from __future__ import annotations

import contextvars
import weakref
from dataclasses import dataclass

import gmta.log
from gmta.delivery import Delivery, MessageMeta, PartialDeliveryError
from gmta.errors import SMTPError, temporary_error
from gmta.check.dmarc import Evaluation as DMARCEvaluation
from gmta.check.results import authentication_results, remove_forged
from gmta.pipeline.check import CheckStates
from gmta.pipeline.modify import MAX_EXPANSION, ModifierStates
from gmta.pipeline.pipeline import DestinationBlock, Pipeline, SourceBlock

log = gmta.log.get("pipeline")

#: Pipelines nested in one message (reroute, deliver_to &msgpipeline) at most;
#: a configuration loop (a msgpipeline delivering to itself) stops here.
MAX_DEPTH = 16
_depth: contextvars.ContextVar[int] = contextvars.ContextVar("pipeline_depth", default=0)

ROUTING_LOOP = SMTPError(554, (5, 4, 6), "Routing loop detected")
TOO_MANY = SMTPError(550, (5, 5, 3), "Too many recipients after address rewriting")


class Trace:
    """What routing did, line by line, for ``gmta route`` (None in normal delivery)."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []
        #: Added to every depth: how deep in followed msgpipelines the notes are.
        self.base = 0

    def note(self, depth: int, text: str) -> None:
        self.lines.append((self.base + depth, text))


@dataclass
class Decision:
    """One final recipient and the destination block that took it."""

    rcpt: str
    block: DestinationBlock
    sender: str
    modifiers: tuple[ModifierStates, ...]


class PipelineRun:
    """A pipeline's sender-stage results for one message: source block, sender, states."""

    def __init__(self, message: "PipelineDelivery", pipeline: Pipeline, mail_from: str,
                 depth: int):
        # A proxy: the message holds its runs, and a strong reference back
        # would make every message a reference cycle, which only the garbage
        # collector frees (with all it holds: about 35 objects per message).
        self.message = weakref.proxy(message)
        self.pipeline = pipeline
        self.depth = depth
        meta = message.meta
        note = message.note
        self.checks = message.start_checks(pipeline.checks, mail_from)
        self.checks.run("check_connection", meta=meta, headers=message.headers)
        self.checks.run("check_sender", mail_from, meta=meta, headers=message.headers)
        self.modifiers = message.start_modifiers(pipeline.modifiers, mail_from)
        sender = self._rewrite_sender(self.modifiers, mail_from, "root modifiers")
        match = pipeline.sources.select(sender)
        self.source: SourceBlock = match.block
        if message.trace is not None:   # the note costs a format per message
            note(depth, f"source: {self.source.label} [{match.how}] for <{sender}>")
        self.source_checks = message.start_checks(self.source.checks, sender)
        self.source_checks.run("check_connection", meta=meta, headers=message.headers)
        self.source_checks.run("check_sender", sender, meta=meta, headers=message.headers)
        self.source_modifiers = message.start_modifiers(self.source.modifiers, sender)
        self.sender = self._rewrite_sender(self.source_modifiers, sender, "source modifiers")
        self.block_states: dict[int, tuple[CheckStates, ModifierStates]] = {}

    def _rewrite_sender(self, modifiers: ModifierStates, sender: str, what: str) -> str:
        new = modifiers.rewrite_sender(sender)
        if new != sender:
            self.message.note(self.depth, f"sender rewritten by {what}: <{sender}> -> <{new}>")
        return new

    def route(self, rcpt: str) -> list[Decision]:
        """Every final recipient *rcpt* becomes, or the SMTPError that refuses it."""
        message, meta, headers, depth = self.message, self.message.meta, self.message.headers, \
            self.depth
        self.checks.run("check_rcpt", rcpt, meta=meta, headers=headers)
        self.source_checks.run("check_rcpt", rcpt, meta=meta, headers=headers)
        addresses = self._expand(self.modifiers, [rcpt], "root modifiers")
        addresses = self._expand(self.source_modifiers, addresses, "source modifiers")
        decisions: list[Decision] = []
        for address in addresses:
            match = self.source.destinations.select(address)
            block: DestinationBlock = match.block
            tracing = message.trace is not None
            if tracing:
                message.note(depth, f"destination: {block.label} [{match.how}] for <{address}>")
            if block.reject is not None:
                raise block.reject
            checks, modifiers = self._block_states(block)
            checks.run("check_rcpt", address, meta=meta, headers=headers)
            for final in self._expand(modifiers, [address], "destination modifiers"):
                chain = (self.modifiers, self.source_modifiers, modifiers)
                if block.targets:
                    decisions.append(Decision(final, block, self.sender, chain))
                    if tracing:
                        message.note(depth, f"deliver <{final}> to " +
                                     ", ".join(target_name(t) for t in block.targets))
                for reroute in block.reroutes:
                    message.note(depth, f"reroute <{final}> through {reroute.label}")
                    inner = message.run_for(reroute, self.sender, depth + 1)
                    for d in inner.route(final):
                        decisions.append(Decision(d.rcpt, d.block, d.sender, chain + d.modifiers))
                if len(decisions) > MAX_EXPANSION:
                    raise TOO_MANY
        return decisions

    def _expand(self, modifiers: ModifierStates, addresses: list[str], what: str) -> list[str]:
        result: list[str] = []
        for address in addresses:
            for new in modifiers.rewrite_rcpt(address):
                if new not in result:
                    result.append(new)
            if len(result) > MAX_EXPANSION:
                raise TOO_MANY
        if result != addresses:
            self.message.note(self.depth, f"rewritten by {what}: " +
                              ", ".join(f"<{a}>" for a in addresses) + " -> " +
                              ", ".join(f"<{a}>" for a in result))
        return result

    def _block_states(self, block: DestinationBlock) -> tuple[CheckStates, ModifierStates]:
        states = self.block_states.get(id(block))
        if states is None:
            states = (self.message.start_checks(block.checks, self.sender),
                      self.message.start_modifiers(block.modifiers, self.sender))
            self.block_states[id(block)] = states
            if states[1].rewrite_sender(self.sender) != self.sender:
                # One message has one sender: a destination block cannot change it
                # for its recipients alone (maddy ignores it too).
                log.warning("sender_rewrite_ignored", msg_id=self.message.meta.id,
                            block=block.label)
        return states


def target_name(target) -> str:
    name = getattr(target, "instance_name", None) or type(target).__name__
    return name if getattr(target, "is_inline", True) else "&" + name


class _TargetDelivery:
    """One target's delivery within the message, with the recipients routed to it."""

    def __init__(self, target, sender: str):
        self.target = target
        self.sender = sender
        self.delivery: Delivery | None = None
        self.rcpts: list[str] = []
        self.modifiers: list[ModifierStates] = []

    @property
    def name(self) -> str:
        return target_name(self.target)


class PipelineDelivery:
    """A message in a pipeline; a :class:`gmta.delivery.Delivery` itself."""

    def __init__(self, pipeline: Pipeline, meta: MessageMeta, mail_from: str, *,
                 atomic: bool = True, trace: Trace | None = None, run_checks: bool = True):
        self.pipeline = pipeline
        self.meta = meta
        self.mail_from = mail_from
        self.atomic = atomic
        self.trace = trace
        self.run_checks = run_checks
        self.headers: list[bytes] = []
        self.rcpts: list[str] = []
        self.finals: dict[str, list[tuple[_TargetDelivery, str]]] = {}
        self.targets: dict[tuple[int, str], _TargetDelivery] = {}
        self.runs: dict[tuple[int, str], PipelineRun] = {}
        self.check_states: list[CheckStates] = []
        self.modifier_states: list[ModifierStates] = []
        self.body_results: dict[_TargetDelivery, SMTPError | None] = {}
        self.closed = False
        depth = _depth.get()
        if depth >= MAX_DEPTH:
            log.error("routing_loop", msg_id=meta.id, pipeline=pipeline.label)
            raise ROUTING_LOOP
        try:
            self.root = self.run_for(pipeline, mail_from, depth)
        except BaseException:
            self._close_states()
            raise

    # -- helpers for PipelineRun ---------------------------------------------------------

    def note(self, depth: int, text: str) -> None:
        if self.trace is not None:
            self.trace.note(depth, text)

    def start_checks(self, checks, sender: str) -> CheckStates:
        if checks and not self.run_checks:
            self.note(0, f"{len(checks)} check(s) not run: " +
                      ", ".join(c.instance_name for c in checks))
            checks = []
        states = CheckStates.start(checks, self.meta, sender)
        self.check_states.append(states)
        return states

    def start_modifiers(self, modifiers, sender: str) -> ModifierStates:
        states = ModifierStates.start(modifiers, self.meta, sender)
        self.modifier_states.append(states)
        return states

    def run_for(self, pipeline: Pipeline, sender: str, depth: int) -> PipelineRun:
        if depth >= MAX_DEPTH:
            log.error("routing_loop", msg_id=self.meta.id, pipeline=pipeline.label)
            raise ROUTING_LOOP
        key = (id(pipeline), sender)
        run = self.runs.get(key)
        if run is None:
            run = PipelineRun(self, pipeline, sender, depth)
            self.runs[key] = run
        return run

    # -- Delivery ------------------------------------------------------------------------

    def route(self, rcpt: str) -> list[Decision]:
        """Where *rcpt* goes, without giving it to any target (``gmta route`` uses this)."""
        return self.root.route(rcpt)

    def add_rcpt(self, rcpt: str, params: dict | None = None) -> None:
        if rcpt in self.finals:
            # The same RCPT twice is delivered once (maddy delivered duplicates, issue #94).
            return
        token = _depth.set(self.root.depth + 1)
        try:
            decisions = self.route(rcpt)
            new = self._start_targets(decisions)
            try:
                placed = []
                for decision in decisions:
                    for target in decision.block.targets:
                        td = self.targets[(id(target), decision.sender)]
                        if decision.rcpt not in td.rcpts:
                            td.delivery.add_rcpt(decision.rcpt, params)
                            td.rcpts.append(decision.rcpt)
                        for states in decision.modifiers:
                            if states not in td.modifiers:
                                td.modifiers.append(states)
                        placed.append((td, decision.rcpt))
            except BaseException:
                # Targets started for this RCPT alone must not deliver anything.
                self._drop_unused(new)
                raise
        finally:
            _depth.reset(token)
        for _, final in placed:
            self.meta.original_rcpts.setdefault(final, rcpt)
        self.finals[rcpt] = placed
        self.rcpts.append(rcpt)
        log.debug("routed", msg_id=self.meta.id, rcpt=rcpt,
                  to=" ".join(f"{td.name}:{final}" for td, final in placed))

    def _start_targets(self, decisions: list[Decision]) -> list[_TargetDelivery]:
        """A delivery on every target these decisions need, or none (all-or-none start)."""
        new: list[_TargetDelivery] = []
        try:
            for decision in decisions:
                for target in decision.block.targets:
                    key = (id(target), decision.sender)
                    if key in self.targets:
                        continue
                    td = _TargetDelivery(target, decision.sender)
                    td.delivery = target.start_delivery(self.meta, decision.sender)
                    self.targets[key] = td
                    new.append(td)
        except BaseException:
            self._drop_unused(new)
            raise
        return new

    def _drop_unused(self, started: list[_TargetDelivery]) -> None:
        for td in started:
            if not td.rcpts:
                self._abort_one(td)
                self.targets.pop((id(td.target), td.sender), None)

    def body(self, header: bytes, body) -> None:
        meta = self.meta
        if self._check_body(header, body):
            header = remove_forged(header, self.pipeline.authserv_id)
        header = b"".join(self.headers) + header
        self.body_results = {}
        for td in self.targets.values():
            target_header = header
            try:
                for states in td.modifiers:
                    target_header = states.rewrite_body(target_header, body)
                td.delivery.body(target_header, body)
                self.body_results[td] = None
            except SMTPError as error:
                self.body_results[td] = error
            except Exception as e:
                log.error("target_failed", msg_id=meta.id, target=td.name, stage="body",
                          error=repr(e))
                self.body_results[td] = temporary_error(
                    f"Internal server error (msg ID = {meta.id})")
        failures = [e for e in self.body_results.values() if e is not None]
        delivered = any(isinstance(e, PartialDeliveryError) and e.delivered for e in failures)
        if self.atomic and failures and not delivered:
            # Nothing is delivered yet: refusing the whole message loses nothing,
            # and the client's retry cannot duplicate anything.
            self.abort()
            raise next((e for e in failures if e.temporary), failures[0])

    def _check_body(self, header: bytes, body) -> bool:
        """Body checks, DMARC, and the one Authentication-Results field (RFC 8601).

        True when the field was added: fields of the same name that came with
        the message are then removed (RFC 8601 §5).
        """
        meta = self.meta
        dmarc = None
        if self.pipeline.dmarc_resolver is not None:
            dmarc = DMARCEvaluation(self.pipeline.dmarc_resolver, header, meta.id)
        for states in self.check_states:
            states.run("check_body", header, body, meta=meta, headers=self.headers,
                       dmarc_decides=dmarc is not None and (lambda: dmarc.policy_applies))
        auth = [result for states in self.check_states for result in states.auth]
        if dmarc is not None:
            verdict = dmarc.verdict(auth)
            auth.extend(verdict.auth)
            if verdict.reject is not None:
                raise verdict.reject
            meta.quarantine = meta.quarantine or verdict.quarantine
        if auth:
            self.headers.insert(0, authentication_results(self.pipeline.authserv_id, auth))
        return bool(auth)

    def commit(self) -> None:
        results: dict[tuple[_TargetDelivery, str], SMTPError | None] = {}
        for td in self.targets.values():
            before = self.body_results.get(td)
            if before is not None and not isinstance(before, PartialDeliveryError):
                self._abort_one(td)
                for rcpt in td.rcpts:
                    results[(td, rcpt)] = before
                continue
            outcome: dict[str, SMTPError | None] = dict.fromkeys(td.rcpts)
            if isinstance(before, PartialDeliveryError):
                outcome.update(before.results)
            try:
                td.delivery.commit()
            except PartialDeliveryError as e:
                for rcpt, error in e.results.items():
                    if outcome.get(rcpt) is None and rcpt in outcome:
                        outcome[rcpt] = error
            except SMTPError as e:
                outcome = {r: (e if outcome.get(r) is None else outcome[r]) for r in outcome}
            except Exception as e:
                log.error("target_failed", msg_id=self.meta.id, target=td.name, stage="commit",
                          error=repr(e))
                error = temporary_error(f"Internal server error (msg ID = {self.meta.id})")
                outcome = {r: error for r in outcome}
            for rcpt, error in outcome.items():
                results[(td, rcpt)] = error
        self._close_states()
        self._report(results)

    def _report(self, results: dict[tuple[_TargetDelivery, str], SMTPError | None]) -> None:
        """Per RCPT: delivered if any of its final recipients was, else its first error."""
        per_rcpt: dict[str, SMTPError | None] = {}
        for rcpt in self.rcpts:
            outcomes = [results.get((td, final)) for td, final in self.finals[rcpt]]
            errors = [e for e in outcomes if e is not None]
            for (td, final), error in zip(self.finals[rcpt], outcomes, strict=True):
                if error is not None:
                    log.error("rcpt_failed", msg_id=self.meta.id, rcpt=rcpt, final=final,
                              target=td.name, reply=str(error))
            if len(errors) < len(outcomes) or not errors:
                per_rcpt[rcpt] = None
            else:
                per_rcpt[rcpt] = next((e for e in errors if e.temporary), errors[0])
        if any(error is not None for error in per_rcpt.values()):
            raise PartialDeliveryError(per_rcpt)

    def abort(self) -> None:
        for td in self.targets.values():
            self._abort_one(td)
        self._close_states()

    def _abort_one(self, td: _TargetDelivery) -> None:
        try:
            td.delivery.abort()
        except Exception as e:  # abort is best effort and must reach every target
            log.error("abort_failed", msg_id=self.meta.id, target=td.name, error=repr(e))

    def _close_states(self) -> None:
        if self.closed:
            return
        self.closed = True
        for states in [*self.check_states, *self.modifier_states]:
            try:
                states.close()
            except Exception as e:
                log.error("close_failed", msg_id=self.meta.id, error=repr(e))
