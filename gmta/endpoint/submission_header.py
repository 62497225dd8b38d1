"""Header checks and fix-ups of the ``submission`` endpoint (maddy-behaviour §2.1).

Mail from a user agent is the first hop, so the header is its author's work
and gmta may insist on it being right before it goes out: a ``From:`` field,
parseable address fields, a ``Sender:`` when there are several authors, a
valid ``Date:``. A missing ``Message-ID:`` or ``Date:`` is added, as RFC 6409
§8.3 allows a submission server to do.
"""

from __future__ import annotations

import email.utils
import re
import uuid

from gmta.errors import SMTPError

# RFC 5322 §3.6: the fields whose values are address lists or mailboxes.
ADDRESS_FIELDS = ("from", "sender", "to", "cc", "bcc", "reply-to")
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
# A group with no members: "undisclosed-recipients:;" (RFC 5322 §3.4).
_EMPTY_GROUP = re.compile(r"^\s*[^:<>@,;\"]*:\s*;\s*$")


def _invalid(text: str) -> SMTPError:
    return SMTPError(554, (5, 6, 0), text)


def parse_fields(header: bytes) -> list[tuple[str, str]]:
    """(lower-case name, unfolded value) of each field, in order (RFC 5322 §2.2.3)."""
    fields: list[tuple[str, str]] = []
    for line in header.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + " " + line.strip().decode("utf-8", "replace"))
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _FIELD_NAME.fullmatch(name.rstrip()):
            raise _invalid("Malformed header field")
        fields.append((name.rstrip().decode("ascii").lower(),
                       value.strip().decode("utf-8", "replace")))
    return fields


def _valid_address_list(value: str, *, allow_groups: bool) -> bool:
    if allow_groups and _EMPTY_GROUP.match(value):
        return True
    # getaddresses splits on commas and keeps what it could not parse as an
    # empty or '@'-less address, which is how a bad list shows itself.
    addresses = email.utils.getaddresses([value])
    if not addresses:
        return False
    return all(addr and "@" in addr and not addr.startswith("@") and not addr.endswith("@")
               for _, addr in addresses)


def check_and_complete(header: bytes, hostname: str) -> bytes:
    """The header with Message-ID and Date added if missing; SMTPError if it is unfit."""
    fields = parse_fields(header)
    names = [name for name, _ in fields]
    if "from" not in names:
        raise _invalid("Message does not contain a From header field")
    for name, value in fields:
        if name in ADDRESS_FIELDS and not _valid_address_list(
                value, allow_groups=name in ("to", "cc", "bcc")):
            raise _invalid(f"Invalid address in {name.title()}")
    from_value = next(value for name, value in fields if name == "from")
    # RFC 5322 §3.6.2: several authors need a Sender field naming the one who sent it.
    if len(email.utils.getaddresses([from_value])) > 1 and "sender" not in names:
        raise _invalid("Missing Sender header field")
    for name, value in fields:
        if name == "date":
            try:
                if email.utils.parsedate_to_datetime(value) is None:
                    raise ValueError
            except (TypeError, ValueError, IndexError):
                raise _invalid("Malformed Date header") from None
    added = b""
    if "message-id" not in names:
        added += f"Message-ID: <{uuid.uuid4()}@{hostname}>\r\n".encode()
    if "date" not in names:
        added += f"Date: {email.utils.format_datetime(email.utils.localtime())}\r\n".encode()
    if not added:
        return header
    # New fields go before the empty line that ends the header.
    if header.endswith(b"\r\n\r\n"):
        return header[:-2] + added + b"\r\n"
    return header + added
