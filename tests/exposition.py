"""A strict parser of the Prometheus text format 0.0.4 and OpenMetrics 1.0, for tests.

Written here because prometheus_client is not a dependency. It rejects what
a scraper would reject (unknown line shapes, samples before their TYPE, bad
names, bad escapes, repeated series) and returns the samples as
``{(name, ((label, value), ...)): float}``.
"""

from __future__ import annotations

import math
import re

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
# A label value: any character but backslash, quote and newline, or an escape.
_VALUE = r'(?:[^"\\\n]|\\[\\"n])*'
_SAMPLE = re.compile(rf"({_NAME})(?:\{{((?:{_LABEL}=\"{_VALUE}\")(?:,{_LABEL}=\"{_VALUE}\")*)?\}})?"
                     r" (\S+)\Z")
_PAIR = re.compile(rf"({_LABEL})=\"({_VALUE})\"")
_TYPES_0_0_4 = {"counter", "gauge", "histogram", "summary", "untyped"}
_TYPES_OM = {"counter", "gauge", "histogram", "gaugehistogram", "stateset", "info", "summary",
             "unknown"}
_OM_SUFFIXES = {"counter": ("_total", "_created"), "info": ("_info",)}


class ParseError(ValueError):
    pass


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), text)


def _number(text: str) -> float:
    if text in ("+Inf", "-Inf", "NaN"):
        return {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}[text]
    if not re.fullmatch(r"-?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?", text):
        raise ParseError(f"bad sample value {text!r}")
    return float(text)


def parse(text: str, openmetrics: bool = False) -> dict[tuple, float]:
    if not text.endswith("\n"):
        raise ParseError("the exposition must end with a line feed")
    lines = text[:-1].split("\n")
    if openmetrics:
        if lines[-1] != "# EOF":
            raise ParseError("OpenMetrics must end with # EOF")
        lines = lines[:-1]
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[tuple, float] = {}
    for number, line in enumerate(lines, 1):
        where = f"line {number}: {line!r}"
        if line.startswith("#"):
            m = re.fullmatch(rf"# (HELP|TYPE) ({_NAME}) ?(.*)", line)
            if not m:
                raise ParseError(f"bad comment, {where}")
            kind, name, rest = m.groups()
            if kind == "TYPE":
                if rest not in (_TYPES_OM if openmetrics else _TYPES_0_0_4):
                    raise ParseError(f"unknown type, {where}")
                if name in types:
                    raise ParseError(f"second TYPE, {where}")
                types[name] = rest
            else:
                if name in helps:
                    raise ParseError(f"second HELP, {where}")
                escapes = r'\\[\\n"]' if openmetrics else r"\\[\\n]"
                if not re.fullmatch(rf"(?:[^\\]|{escapes})*", rest):
                    raise ParseError(f"bad escape in HELP, {where}")
                helps.add(name)
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise ParseError(f"bad sample, {where}")
        name, labels, value = m.groups()
        family = _family(name, types, openmetrics)
        if family is None:
            raise ParseError(f"sample without TYPE, {where}")
        pairs = tuple((k, _unescape(v)) for k, v in _PAIR.findall(labels or ""))
        if len({k for k, _ in pairs}) != len(pairs):
            raise ParseError(f"repeated label, {where}")
        key = (name, pairs)
        if key in samples:
            raise ParseError(f"repeated series, {where}")
        samples[key] = _number(value)
    return samples


def _family(name: str, types: dict[str, str], openmetrics: bool) -> str | None:
    if not openmetrics:
        return name if name in types else None
    if name in types and types[name] not in _OM_SUFFIXES:
        return name
    for family, type_ in types.items():
        if any(name == family + suffix for suffix in _OM_SUFFIXES.get(type_, ())):
            return family
    return None


def value(samples: dict[tuple, float], name: str, **labels: str) -> float:
    """The value of one series, or 0 when it is absent (a counter never touched)."""
    for (sample_name, pairs), number in samples.items():
        if sample_name == name and dict(pairs) == labels:
            return number
    return 0.0
