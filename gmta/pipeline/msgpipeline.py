"""``msgpipeline``: a named pipeline that endpoints and other blocks share (``&local_routing``).

::

    msgpipeline local_routing {
        destination postmaster $(local_domains) {
            modify { replace_rcpt &local_rewrites }
            deliver_to &local_mailboxes
        }
        default_destination { reject 550 5.1.1 "User doesn't exist" }
    }

It is a delivery target: ``deliver_to &local_routing`` hands the recipients
of a block to it, and it routes them again with its own rules.
"""

from __future__ import annotations

from gmta.config.module import Module, register
from gmta.config.reader import Bool, Directive
from gmta.delivery import MessageMeta
from gmta.net.dns import resolver_for
from gmta.pipeline.pipeline import HANDLING_DIRECTIVES, Pipeline


@register
class MsgPipeline(Module):
    name = "msgpipeline"
    kinds = frozenset({"target", "pipeline"})
    directives = HANDLING_DIRECTIVES + (
        Directive("dmarc", Bool(), False,
                  doc="enforce the sender's DMARC policy (RFC 7489) on SPF and DKIM results"),
    )

    def configure(self, cfg, ctx) -> None:
        self.pipeline = Pipeline.from_values(cfg, self.node,
                                             f"msgpipeline {self.instance_name} "
                                             f"({self.node.location})")
        self.pipeline.authserv_id = ctx.globals.hostname or "localhost"
        if cfg.dmarc:
            self.pipeline.dmarc_resolver = resolver_for(ctx.globals.dns_servers)

    def start_delivery(self, meta: MessageMeta, mail_from: str):
        return self.pipeline.start_delivery(meta, mail_from)
