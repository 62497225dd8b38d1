"""The one ``Authentication-Results`` field of a message (RFC 8601).

Every check of a message gives its results (``CheckResult.auth``); the
pipeline writes them into a single field named after the receiving host
(the ``authserv-id``, RFC 8601 §2.5) and removes fields that claim that name
but came with the message (RFC 8601 §5: a forged result must not be
believed by the reader's mail client).
"""

from __future__ import annotations

import re

import authres

_FIELD = re.compile(rb"^authentication-results\s*:\s*(?:\([^)]*\)\s*)?([^\s;]+)", re.IGNORECASE)


def authentication_results(authserv_id: str, results: list) -> bytes:
    """The complete header field, folded, ending in CRLF."""
    header = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results)
    text = str(header)
    # authres writes one line; fold before each result (RFC 5322 §2.2.3) so
    # lines stay under 998 octets however many signatures were checked.
    name, _, value = text.partition(": ")
    parts = value.split("; ")
    folded = name + ": " + parts[0] + "".join(";\r\n\t" + p for p in parts[1:])
    return folded.encode("utf-8") + b"\r\n"


def remove_forged(header: bytes, authserv_id: str) -> bytes:
    """*header* without Authentication-Results fields that claim *authserv_id*."""
    wanted = authserv_id.lower().encode("utf-8", "replace")
    lines = header.split(b"\r\n")
    kept: list[bytes] = []
    dropping = False
    for line in lines:
        if line[:1] in (b" ", b"\t") and line.strip():
            if not dropping:
                kept.append(line)
            continue
        match = _FIELD.match(line)
        dropping = bool(match and match.group(1).lower() == wanted)
        if not dropping:
            kept.append(line)
    return b"\r\n".join(kept)
