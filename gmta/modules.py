"""Imports every module package so their classes are in the registry.

The config layer does not import the modules (they sit above it, DESIGN §3);
the program does, once, through this file. A new module is added here.
"""

import gmta.auth.pass_table  # noqa: F401
import gmta.endpoint.smtp  # noqa: F401
import gmta.limits  # noqa: F401
import gmta.mxauth  # noqa: F401  (mx_auth and its policies)
import gmta.table.file  # noqa: F401
import gmta.table.static  # noqa: F401
import gmta.target.dummy  # noqa: F401
import gmta.target.maildir  # noqa: F401
