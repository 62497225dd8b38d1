"""``gmta route``: where would mail for an address go? (like ``exim -bt``).

For each recipient, the pipeline of an endpoint (or of a ``msgpipeline``) is
run as for a real message from ``--from``: the source and destination blocks
chosen (with file:line and why), every rewrite, and the targets, or the
rejection with its reply. Nothing is sent: no target starts a delivery, no
module is started (no socket is opened, nothing is written to a queue), and
checks are not run (they look at real connections and messages); the output
says which checks were skipped. Modifiers run, since they are table lookups.
A ``deliver_to`` that names a ``msgpipeline`` is followed into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gmta.delivery import MessageMeta
from gmta.errors import SMTPError
from gmta.pipeline.run import MAX_DEPTH, PipelineDelivery, Trace, target_name
from gmta.proto.grammar import normalize_address, parse_forward_path, parse_reverse_path


@dataclass
class RouteResult:
    rcpt: str
    lines: list[tuple[int, str]] = field(default_factory=list)
    #: (target name, final recipient) pairs; empty when rejected.
    deliveries: list[tuple[str, str]] = field(default_factory=list)
    error: SMTPError | None = None


def find_pipeline(config, name: str | None):
    """The pipeline to test and its description: an endpoint's, or a msgpipeline's.

    *name* is an endpoint's module name (``smtp``, ``submission``, ``lmtp``),
    its name with addresses (``smtp tcp://0.0.0.0:25``), one of its addresses,
    or the name of a ``msgpipeline`` block. Without it, the first ``smtp``
    endpoint, else the first endpoint. Raises LookupError with the choices.
    """
    # Only mail endpoints have a pipeline (not openmetrics).
    endpoints = [e for e in config.endpoints if getattr(e, "pipeline", None) is not None]
    if name is None and endpoints:
        chosen = next((e for e in endpoints if e.name == "smtp"), endpoints[0])
        return chosen.pipeline, _describe(chosen)
    for endpoint in endpoints:
        if name in (endpoint.name, endpoint.instance_name, *endpoint.inline_args):
            return endpoint.pipeline, _describe(endpoint)
    for instance in config.instances:
        if instance.name == "msgpipeline" and name == instance.instance_name:
            return instance.pipeline, _describe(instance)
    choices = [e.instance_name for e in endpoints] + \
        [i.instance_name for i in config.instances if i.name == "msgpipeline"]
    raise LookupError(f"no endpoint or msgpipeline named {name!r}; choose one of: " +
                      "; ".join(choices))


def _describe(module) -> str:
    return f"{module.instance_name} ({module.node.location})"


def parse_sender(text: str) -> str:
    """The sender as MAIL FROM would take it (``""`` or ``<>`` is the null sender)."""
    if text in ("", "<>"):
        return ""
    address, rest = parse_reverse_path(f"<{text.strip('<>')}>")
    if rest:
        raise SMTPError(501, (5, 5, 2), f"Invalid sender {text!r}")
    return normalize_address(address, sender=True) if address else ""


def route(pipeline, mail_from: str, rcpt_text: str) -> RouteResult:
    """Route one recipient through *pipeline* without delivering anything."""
    result = RouteResult(rcpt_text)
    trace = Trace()
    try:
        address, rest = parse_forward_path(f"<{rcpt_text.strip('<>')}>")
        if rest:
            raise SMTPError(501, (5, 5, 2), f"Invalid recipient {rcpt_text!r}")
        rcpt = normalize_address(address)
        result.rcpt = rcpt
        _route_into(pipeline, mail_from, rcpt, trace, 0, result)
    except SMTPError as error:
        result.error = error
        result.deliveries = []
    result.lines = trace.lines
    return result


def _route_into(pipeline, mail_from: str, rcpt: str, trace: Trace, depth: int,
                result: RouteResult) -> None:
    if depth >= MAX_DEPTH:
        raise SMTPError(554, (5, 4, 6), "Routing loop detected")
    trace.base = depth
    message = PipelineDelivery(pipeline, MessageMeta("route"), mail_from, trace=trace,
                               run_checks=False)
    for decision in message.route(rcpt):
        for target in decision.block.targets:
            inner = getattr(target, "pipeline", None)
            if getattr(target, "name", "") == "msgpipeline" and inner is not None:
                trace.note(0, f"into msgpipeline {target.instance_name} "
                              f"({target.node.location})")
                _route_into(inner, decision.sender, decision.rcpt, trace, depth + 1, result)
                trace.base = depth
            else:
                pair = (target_name(target), decision.rcpt)
                if pair not in result.deliveries:
                    result.deliveries.append(pair)


def format_result(result: RouteResult) -> str:
    out = [f"<{result.rcpt}>"]
    out += ["  " * (depth + 1) + text for depth, text in result.lines]
    if result.error is not None:
        out.append(f"  => rejected: {result.error}")
    else:
        for target, final in result.deliveries:
            out.append(f"  => deliver <{final}> to {target}")
    return "\n".join(out)
