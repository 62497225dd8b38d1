"""MTA-STS records and policies as data: parsing and MX matching (RFC 8461 §3, §4.1).

Pure functions, no I/O: ``mtasts.py`` fetches and caches, this module decides
what the bytes mean. Parsing is strict where the RFC is (version, mode,
max_age, mx syntax, duplicate fields) and tolerant where it says so
(unknown extension fields are ignored, RFC 8461 §3.2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: RFC 8461 §3.2: "maximum value of 31557600" (one year).
MAX_MAX_AGE = 31557600
#: A policy with more MX patterns than this is not a policy anyone writes.
MAX_MX_PATTERNS = 256
MODES = ("enforce", "testing", "none")

# RFC 8461 §3.1: sts-id = 1*32(ALPHA / DIGIT)
_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")
# RFC 8461 §3.1 sts-ext-name / §3.2 sts-policy-ext-name
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")
# RFC 8461 §3.1 sts-ext-value: VCHAR except ";" and "="
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+\Z")
# A host name label (LDH; RFC 5321 Domain as used by §3.2's sts-policy-mx-value).
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


class PolicyError(ValueError):
    """The record or policy is not valid; the text says where."""


def parse_txt(records: list[bytes] | tuple[bytes, ...]) -> str | None:
    """The policy id from the ``_mta-sts`` TXT records, or None when there is no valid one.

    RFC 8461 §3.1: records not beginning with ``v=STSv1;`` are discarded; if
    not exactly one remains, or it is invalid, the domain has no policy.
    Raises :class:`PolicyError` for the invalid cases, so logs can say why.
    """
    candidates = [r for r in records if r.startswith(b"v=STSv1;") or r == b"v=STSv1"]
    if not candidates:
        return None
    if len(candidates) > 1:
        raise PolicyError(f"{len(candidates)} v=STSv1 TXT records (exactly one is allowed)")
    try:
        text = candidates[0].decode("ascii")
    except UnicodeDecodeError:
        raise PolicyError("the TXT record is not ASCII") from None
    fields = [f.strip(" \t") for f in text.split(";")]
    if fields and fields[-1] == "":
        fields.pop()  # the optional final field-delim
    policy_id = None
    for item in fields[1:]:
        name, eq, value = item.partition("=")
        if not eq or not _EXT_NAME.match(name) or not _EXT_VALUE.match(value):
            raise PolicyError(f"invalid field {item!r} in the TXT record")
        if name == "id":
            if policy_id is not None:
                raise PolicyError("two id fields in the TXT record")
            if not _ID.match(value):
                raise PolicyError(f"invalid id {value!r} (1 to 32 letters and digits)")
            policy_id = value
    if policy_id is None:
        raise PolicyError("the TXT record has no id field")
    return policy_id


@dataclass(frozen=True)
class STSPolicy:
    """A parsed policy: mode, max_age (seconds) and MX patterns (lower case)."""

    mode: str
    max_age: int
    mx: tuple[str, ...]

    def matches(self, host: str) -> bool:
        return any(mx_matches(pattern, host) for pattern in self.mx)

    def describe(self) -> str:
        return f"mode {self.mode}, mx " + (", ".join(self.mx) or "none")

    def to_text(self) -> str:
        lines = ["version: STSv1", f"mode: {self.mode}", f"max_age: {self.max_age}"]
        lines += [f"mx: {pattern}" for pattern in self.mx]
        return "\r\n".join(lines) + "\r\n"


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: exact names, or ``*.`` standing for exactly one leftmost label."""
    host = host.lower().rstrip(".")
    pattern = pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


def _check_mx_pattern(value: str) -> str:
    name = value.lower().rstrip(".")
    body = name[2:] if name.startswith("*.") else name
    labels = body.split(".")
    if len(body) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise PolicyError(f"invalid mx pattern {value!r}")
    return name


def parse_policy(body: bytes) -> STSPolicy:
    """The policy in a ``.well-known/mta-sts.txt`` body (RFC 8461 §3.2)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("the policy is not UTF-8 text") from None
    fields: dict[str, str] = {}
    mx: list[str] = []
    # sts-policy-term is LF or CRLF; blank lines (a trailing one is common) carry nothing.
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r").strip(" \t")
        if not line:
            continue
        name, colon, value = line.partition(":")
        name, value = name.strip(" \t"), value.strip(" \t")
        if not colon or not _EXT_NAME.match(name) or not value:
            raise PolicyError(f"line {number}: expected 'name: value', got {line[:60]!r}")
        if name == "mx":
            if len(mx) >= MAX_MX_PATTERNS:
                raise PolicyError(f"more than {MAX_MX_PATTERNS} mx lines")
            mx.append(_check_mx_pattern(value))
        elif name in ("version", "mode", "max_age"):
            if name in fields:
                raise PolicyError(f"line {number}: a second {name} field")
            fields[name] = value
        # Any other well-formed field is an extension: ignored (RFC 8461 §3.2).
    if fields.get("version") != "STSv1":
        raise PolicyError("version: expected STSv1, got " + repr(fields.get("version")))
    mode = fields.get("mode")
    if mode not in MODES:
        raise PolicyError(f"mode: expected enforce, testing or none, got {mode!r}")
    age_text = fields.get("max_age", "")
    # sts-policy-max-age-value = 1*10DIGIT
    if not (age_text.isascii() and age_text.isdigit() and len(age_text) <= 10):
        raise PolicyError(f"max_age: expected a number of seconds, got {age_text!r}")
    max_age = int(age_text)
    if max_age > MAX_MAX_AGE:
        raise PolicyError(f"max_age {max_age} is above the maximum of {MAX_MAX_AGE}")
    if mode != "none" and not mx:
        raise PolicyError(f"mode {mode} without any mx line")
    return STSPolicy(mode, max_age, tuple(mx))
