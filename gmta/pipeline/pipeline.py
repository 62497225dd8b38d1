"""The message pipeline of an endpoint, ``msgpipeline`` or ``bounce`` block (maddy-behaviour §2.2).

A pipeline has three levels, each with its own ``check { }`` and ``modify { }``:

* the root chooses a **source block** by the (rewritten) sender:
  ``source RULE... { }``, ``source_in TABLE { }``, ``default_source { }``;
* a source block chooses a **destination block** for each (rewritten)
  recipient: ``destination RULE... { }``, ``destination_in TABLE { }``,
  ``default_destination { }``;
* a destination block handles its recipients: ``deliver_to TARGET``
  (several allowed), ``reroute { pipeline }`` (route the rewritten addresses
  again), or ``reject [code [enhanced [text]]]``.

A level without rules is its own default block: ``deliver_to`` at the root
means "every sender, every recipient". This file reads the configuration
into :class:`Pipeline`, :class:`SourceBlock` and :class:`DestinationBlock`;
``gmta.pipeline.run`` routes messages through them.

``HANDLING_DIRECTIVES`` (every directive a pipeline block accepts) and
:meth:`Pipeline.from_values` are the entry point for any module with a
pipeline block: endpoints, ``msgpipeline``, the queue's ``bounce { }``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gmta.config.parser import Node
from gmta.config.reader import Custom, Directive, ModuleRef, Values, read_block
from gmta.delivery import MessageMeta
from gmta.errors import SMTPError
from gmta.pipeline.check import Check, parse_check_list
from gmta.pipeline.modify import Modifier, parse_modifier_list
from gmta.pipeline.rules import Rules, parse_rule

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


# -- the blocks ---------------------------------------------------------------------------

@dataclass
class DestinationBlock:
    """What happens to the recipients a destination rule (or the default) selected."""

    label: str
    checks: list[Check] = field(default_factory=list)
    modifiers: list[Modifier] = field(default_factory=list)
    targets: list = field(default_factory=list)
    reroutes: list["Pipeline"] = field(default_factory=list)
    reject: SMTPError | None = None

    @classmethod
    def from_values(cls, cfg: Values, where: Node, label: str,
                    implied: bool = False) -> "DestinationBlock":
        _forbid(cfg, ("source", "source_in", "default_source"),
                "source rules are only allowed at the top level of a pipeline")
        _forbid(cfg, ("destination", "destination_in", "default_destination"),
                "destination rules cannot be nested inside a destination block")
        if cfg.reject is not None and (cfg.deliver_to or cfg.reroute):
            raise cfg.error("reject", "a block cannot both reject and deliver_to or reroute",
                            hint="remove one of them")
        if cfg.reject is None and not cfg.deliver_to and not cfg.reroute:
            raise where.error("empty pipeline configuration, use 'reject' to reject messages",
                              hint="add 'deliver_to TARGET', 'reroute { ... }' or 'reject'")
        block = cls(label, targets=list(cfg.deliver_to), reroutes=list(cfg.reroute),
                    reject=cfg.reject)
        if not implied:
            block.checks, block.modifiers = _flat(cfg.check), _flat(cfg.modify)
        return block


@dataclass
class SourceBlock:
    """The destination rules for the senders a source rule (or the default) selected."""

    label: str
    checks: list[Check] = field(default_factory=list)
    modifiers: list[Modifier] = field(default_factory=list)
    destinations: Rules[DestinationBlock] = field(default_factory=Rules)

    @classmethod
    def from_values(cls, cfg: Values, where: Node, label: str,
                    implied: bool = False) -> "SourceBlock":
        _forbid(cfg, ("source", "source_in", "default_source"),
                "source rules are only allowed at the top level of a pipeline")
        block = cls(label)
        if not implied:
            block.checks, block.modifiers = _flat(cfg.check), _flat(cfg.modify)
        if cfg.destination or cfg.destination_in or cfg.default_destination is not None:
            _forbid(cfg, ("deliver_to", "reroute", "reject"),
                    "can't put handling directives together with destination rules",
                    hint="put them inside default_destination { } or a destination block")
            first = "destination" if cfg.destination else "destination_in"
            if cfg.default_destination is None:
                raise cfg.error(first, "missing or empty default destination block",
                                hint="add 'default_destination { reject }' to refuse "
                                     "other recipients")
            _fill_rules(block.destinations, cfg.destination, cfg.destination_in)
            block.destinations.default = cfg.default_destination
        else:
            block.destinations.default = DestinationBlock.from_values(
                cfg, where, f"{label} (no destination rules)", implied=True)
        return block


@dataclass
class Pipeline:
    """A whole pipeline: root checks and modifiers, then the source rules."""

    label: str = "pipeline"
    checks: list[Check] = field(default_factory=list)
    modifiers: list[Modifier] = field(default_factory=list)
    sources: Rules[SourceBlock] = field(default_factory=Rules)
    #: The name in Authentication-Results (RFC 8601 §2.5): the endpoint's hostname.
    authserv_id: str = "localhost"
    #: The resolver DMARC asks for policies, or None when DMARC is not enforced.
    dmarc_resolver: object = None

    @classmethod
    def from_values(cls, cfg: Values, where: Node, label: str | None = None) -> "Pipeline":
        """The pipeline of a block read with ``HANDLING_DIRECTIVES`` (other directives ignored)."""
        label = label or f"{' '.join([where.name, *where.args])} ({where.location})"
        pipeline = cls(label, _flat(cfg.check), _flat(cfg.modify))
        if cfg.source or cfg.source_in or cfg.default_source is not None:
            _forbid(cfg, ("destination", "destination_in", "default_destination", "deliver_to",
                          "reroute", "reject"),
                    "can't put handling directives together with source rules",
                    hint="put them inside default_source { } or a source block")
            first = "source" if cfg.source else "source_in"
            if cfg.default_source is None:
                raise cfg.error(first, "missing or empty default source block",
                                hint="add 'default_source { reject }' to refuse other senders")
            _fill_rules(pipeline.sources, cfg.source, cfg.source_in)
            pipeline.sources.default = cfg.default_source
        else:
            pipeline.sources.default = SourceBlock.from_values(
                cfg, where, f"{label} (no source rules)", implied=True)
        return pipeline

    @classmethod
    def simple(cls, targets: list, reject: SMTPError | None = None) -> "Pipeline":
        """A pipeline that sends everything to *targets*, or refuses it with *reject*."""
        dest = DestinationBlock("deliver_to", targets=list(targets), reject=reject)
        source = SourceBlock("default_source")
        source.destinations.default = dest
        pipeline = cls("pipeline")
        pipeline.sources.default = source
        return pipeline

    @property
    def targets(self) -> list:
        """Every target named in this pipeline (reroutes included), each once."""
        found: list = []
        sources = [*self.sources.by_key.values(), *(b for _, b, _ in self.sources.tables),
                   self.sources.default]
        for source in sources:
            d = source.destinations
            for block in [*d.by_key.values(), *(b for _, b, _ in d.tables), d.default]:
                nested = [t for r in block.reroutes for t in r.targets]
                found += [t for t in [*block.targets, *nested] if t not in found]
        return found

    def start_delivery(self, meta: MessageMeta, mail_from: str, *, atomic: bool = True):
        from gmta.pipeline.run import PipelineDelivery
        return PipelineDelivery(self, meta, mail_from, atomic=atomic)


def _flat(lists: list[list]) -> list:
    return [item for sub in lists for item in sub]


def _forbid(cfg: Values, names: tuple[str, ...], message: str, hint: str | None = None) -> None:
    for name in names:
        if cfg.given(name):
            raise cfg.error(name, f"{message}: {name}", hint=hint)


def _fill_rules(rules: Rules, by_rule: list, by_table: list) -> None:
    for keys, block, node in by_rule:
        for key in keys:
            if not rules.add(key, block):
                # maddy silently keeps the first (maddy-behaviour §5): say so instead.
                raise node.error(f"duplicate rule {key}: an earlier {node.name} block has it",
                                 hint="each address or domain may select one block")
    rules.tables.extend(by_table)


# -- the directives -----------------------------------------------------------------------

def _rule_block(node: Node, ctx, level: str):
    """``source RULE... { }`` / ``destination RULE... { }`` → (keys, block, node)."""
    if not node.args:
        raise node.error(f"{node.name}: expected at least one rule",
                         hint=f"such as '{node.name} example.org user@example.net {{ ... }}'")
    if node.children is None:
        raise node.error(f"{node.name} needs a block", hint=f"{node.name} RULE... {{ ... }}")
    keys = [parse_rule(word, node) for word in node.args]
    label = f"{node.name} {' '.join(node.args)} ({node.location})"
    return keys, _read_level(node, ctx, level, label), node


def _table_block(node: Node, ctx, level: str):
    """``source_in TABLE { }`` / ``destination_in TABLE { }`` → (table, block, node)."""
    if not node.args:
        raise node.error(f"{node.name}: expected a table",
                         hint=f"such as '{node.name} &local_users {{ ... }}' or "
                              f"'{node.name} file /etc/gmta/users {{ ... }}'")
    if node.children is None:
        raise node.error(f"{node.name} needs a block", hint=f"{node.name} TABLE {{ ... }}")
    # The block is the routing block, so the table cannot have one of its own.
    table = ctx.instance_from_node(Node("table", list(node.args), None, node.file, node.line),
                                   "table")
    label = f"{node.name} {' '.join(node.args)} ({node.location})"
    return table, _read_level(node, ctx, level, label), node


def _default_block(node: Node, ctx, level: str):
    if node.args:
        raise node.error(f"{node.name} takes no arguments")
    if node.children is None:
        raise node.error(f"{node.name} needs a block", hint=f"{node.name} {{ ... }}")
    return _read_level(node, ctx, level, f"{node.name} ({node.location})")


def _read_level(node: Node, ctx, level: str, label: str):
    values = read_block(node, node.block, HANDLING_DIRECTIVES, ctx)
    cls = SourceBlock if level == "source" else DestinationBlock
    return cls.from_values(values, node, label)


def _reroute(node: Node, ctx) -> Pipeline:
    if node.args or node.children is None:
        raise node.error("reroute takes no arguments and needs a block",
                         hint="reroute { destination ... { } default_destination { } }")
    values = read_block(node, node.block, HANDLING_DIRECTIVES, ctx)
    return Pipeline.from_values(values, node, f"reroute ({node.location})")


#: Every directive a pipeline block accepts (levels are checked by from_values).
HANDLING_DIRECTIVES = (
    Directive("check", Custom(parse_check_list, "{ CHECK... } | &checks"), repeat=True,
              doc="checks of this level"),
    Directive("modify", Custom(parse_modifier_list, "{ MODIFIER... } | &modifiers"),
              repeat=True, doc="modifiers of this level"),
    Directive("source", Custom(lambda n, c: _rule_block(n, c, "source"), "RULE... { }"),
              repeat=True, doc="the block for senders matching these rules"),
    Directive("source_in", Custom(lambda n, c: _table_block(n, c, "source"), "TABLE { }"),
              repeat=True, doc="the block for senders found in this table"),
    Directive("default_source", Custom(lambda n, c: _default_block(n, c, "source"), "{ }"),
              doc="the block for other senders"),
    Directive("destination", Custom(lambda n, c: _rule_block(n, c, "destination"),
                                    "RULE... { }"),
              repeat=True, doc="the block for recipients matching these rules"),
    Directive("destination_in", Custom(lambda n, c: _table_block(n, c, "destination"),
                                       "TABLE { }"),
              repeat=True, doc="the block for recipients found in this table"),
    Directive("default_destination",
              Custom(lambda n, c: _default_block(n, c, "destination"), "{ }"),
              doc="the block for other recipients"),
    Directive("deliver_to", ModuleRef("target"), repeat=True,
              doc="deliver to this target (&name or an inline module)"),
    Directive("reroute", Custom(_reroute, "{ pipeline }"), repeat=True,
              doc="route the rewritten recipients again through this pipeline"),
    Directive("reject", Custom(parse_reject, "[code [enhanced [text]]]"),
              doc="refuse every recipient with this reply"),
)
#: The same directives, by the name that says what they are.
PIPELINE_DIRECTIVES = HANDLING_DIRECTIVES
