"""Imports every module package so their classes are in the registry.

The config layer does not import the modules (they sit above it, DESIGN §3);
the program does, once, through this file. A new module is added here.
"""

import gmta.auth.pass_table  # noqa: F401
import gmta.endpoint.openmetrics  # noqa: F401
import gmta.endpoint.smtp  # noqa: F401
import gmta.limits  # noqa: F401
import gmta.mxauth  # noqa: F401  (mx_auth and its policies)
import gmta.queue.target  # noqa: F401
import gmta.table.file  # noqa: F401
import gmta.table.static  # noqa: F401
import gmta.target.dummy  # noqa: F401
import gmta.target.maildir  # noqa: F401
import gmta.target.remote  # noqa: F401
import gmta.target.smtp  # noqa: F401
import gmta.pipeline.check  # noqa: F401
import gmta.pipeline.modify  # noqa: F401
import gmta.pipeline.msgpipeline  # noqa: F401
import gmta.pipeline.replace  # noqa: F401
import gmta.table.chain  # noqa: F401
import gmta.table.identity  # noqa: F401
import gmta.table.regexp  # noqa: F401
import gmta.check.authorize_sender  # noqa: F401
import gmta.check.command  # noqa: F401
import gmta.check.dkim  # noqa: F401
import gmta.check.dnsbl  # noqa: F401
import gmta.check.misc  # noqa: F401
import gmta.check.spf  # noqa: F401
import gmta.pipeline.dkim_sign  # noqa: F401
