"""An in-process metrics registry and its text exposition (no third-party code).

Families of counters and gauges, each with fixed label names and a bounded
number of label sets, rendered in one of the two text formats Prometheus
scrapes:

- the Prometheus text format 0.0.4 (``text/plain; version=0.0.4``), the
  default: ``# TYPE`` names the full sample name (``x_total``);
- OpenMetrics 1.0 (``application/openmetrics-text; version=1.0.0``), when
  the scraper asks for it: ``# TYPE`` names the family (``x`` for the
  counter ``x_total``, ``x`` for the info ``x_info``), and the exposition
  ends with ``# EOF``.

Label values are escaped as both formats require (backslash, double quote,
line feed); help texts are escaped as each format requires.

Every update happens in gevent greenlets of the one hub thread, so plain
arithmetic is enough; nothing here blocks or yields, except the functions a
gauge is *tracked* with, which run at scrape time in the scraping greenlet.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Iterable

#: Label sets one family keeps at most; past it, updates for new label sets
#: are counted as dropped and go nowhere (so a bug or a hostile input that
#: makes label values up cannot grow memory without end).
DEFAULT_MAX_LABEL_SETS = 1000

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

#: Sample-name suffix of each type (what ``# TYPE`` leaves off in OpenMetrics).
_SUFFIX = {"counter": "_total", "gauge": "", "info": "_info"}


def escape_label_value(value: str) -> str:
    """Escape a label value: ``\\`` → ``\\\\``, ``"`` → ``\\"``, line feed → ``\\n``."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    # OpenMetrics escapes the quote in HELP too; the 0.0.4 format does not.
    return text.replace('"', '\\"') if openmetrics else text


def format_value(value: float) -> str:
    """A sample value: integers without a fraction, ``+Inf``, ``-Inf``, ``NaN``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Value:
    """The value of one label set of a counter or gauge."""

    __slots__ = ("value",)

    def __init__(self):
        self.value = 0.0


class CounterChild(_Value):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class GaugeChild(_Value):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class Family:
    """A metric family: one name, one type, fixed label names, bounded label sets."""

    child_class: type = CounterChild

    def __init__(self, registry: "Registry", name: str, help: str, type_: str,
                 labelnames: tuple[str, ...], max_label_sets: int):
        self.registry = registry
        self.name = name
        self.help = help
        self.type = type_
        self.labelnames = labelnames
        self.max_label_sets = max_label_sets
        self._children: dict[tuple[str, ...], object] = {}
        if not labelnames:
            self._children[()] = self.child_class()

    @property
    def family_name(self) -> str:
        """The name in OpenMetrics' ``# TYPE`` line (without the type's suffix)."""
        suffix = _SUFFIX[self.type]
        return self.name[:-len(suffix)] if suffix else self.name

    def labels(self, *values: str, **named: str):
        """The child of one label set (created on first use, within the bound)."""
        if named:
            if values:
                raise TypeError("give label values by position or by name, not both")
            try:
                values = tuple(named[n] for n in self.labelnames)
            except KeyError as e:
                raise TypeError(f"{self.name}: missing label {e}") from None
            if len(named) != len(self.labelnames):
                raise TypeError(f"{self.name}: unknown labels "
                                f"{sorted(set(named) - set(self.labelnames))}")
        if len(values) != len(self.labelnames):
            raise TypeError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= self.max_label_sets:
                self.registry.label_set_dropped(self.name)
                return self.child_class()  # counts into nothing
            child = self._children[key] = self.child_class()
        return child

    def remove(self, *values: str) -> None:
        self._children.pop(tuple(str(v) for v in values), None)

    # An unlabelled family is its own single child.
    def inc(self, amount: float = 1.0) -> None:
        self._children[()].inc(amount)

    def value(self, *values: str) -> float:
        """The current value of one label set (0 if never touched); for tests and tools."""
        child = self._children.get(tuple(str(v) for v in values))
        return child.value if child is not None else 0.0

    def samples(self) -> list[tuple[tuple[str, ...], float]]:
        return [(key, child.value) for key, child in sorted(self._children.items())]


class Counter(Family):
    child_class = CounterChild


class Gauge(Family):
    child_class = GaugeChild

    def set(self, value: float) -> None:
        self._children[()].set(value)

    def dec(self, amount: float = 1.0) -> None:
        self._children[()].dec(amount)


class GaugeFunction(Family):
    """A gauge whose label sets are read at scrape time from functions."""

    def track(self, values: tuple[str, ...], function: Callable[[], float]) -> None:
        key = tuple(str(v) for v in values)
        if len(key) != len(self.labelnames):
            raise TypeError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        if key not in self._children and len(self._children) >= self.max_label_sets:
            self.registry.label_set_dropped(self.name)
            return
        self._children[key] = function

    def untrack(self, values: tuple[str, ...], function: Callable[[], float]) -> None:
        """Stop reading *function*, unless another one took its label set since (on
        reload the new configuration's module tracks before the old one stops)."""
        key = tuple(str(v) for v in values)
        if self._children.get(key) == function:
            del self._children[key]

    def samples(self) -> list[tuple[tuple[str, ...], float]]:
        result = []
        for key, function in sorted(self._children.items()):
            try:
                value = float(function())
            except Exception:  # a broken source must not break the whole scrape
                self.registry.collect_failed(self.name)
                continue
            result.append((key, value))
        return result


class Registry:
    """The families of one process, rendered together."""

    def __init__(self, *, dropped_metric: str | None = None,
                 failed_metric: str | None = None):
        self._families: dict[str, Family] = {}
        self._dropped = self.counter(
            dropped_metric, "Updates of label sets beyond a family's bound, ignored",
            ("metric",)) if dropped_metric else None
        self._failed = self.counter(
            failed_metric, "Gauges whose value could not be read at a scrape",
            ("metric",)) if failed_metric else None

    def _add(self, cls, name: str, help: str, type_: str, labels: Iterable[str],
             max_label_sets: int) -> Family:
        labels = tuple(labels)
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        suffix = _SUFFIX[type_]
        if suffix and not name.endswith(suffix):
            raise ValueError(f"a {type_} name ends in {suffix}: {name!r}")
        for label in labels:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} in {name}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"repeated label name in {name}")
        if name in self._families:
            raise ValueError(f"metric {name} registered twice")
        family = cls(self, name, help, type_, labels, max_label_sets)
        self._families[name] = family
        return family

    def counter(self, name: str, help: str, labels: Iterable[str] = (), *,
                max_label_sets: int = DEFAULT_MAX_LABEL_SETS) -> Counter:
        return self._add(Counter, name, help, "counter", labels, max_label_sets)

    def gauge(self, name: str, help: str, labels: Iterable[str] = (), *,
              max_label_sets: int = DEFAULT_MAX_LABEL_SETS) -> Gauge:
        return self._add(Gauge, name, help, "gauge", labels, max_label_sets)

    def gauge_function(self, name: str, help: str, labels: Iterable[str] = (), *,
                       max_label_sets: int = DEFAULT_MAX_LABEL_SETS) -> GaugeFunction:
        return self._add(GaugeFunction, name, help, "gauge", labels, max_label_sets)

    def info(self, name: str, help: str, values: dict[str, str]) -> Gauge:
        """A constant ``NAME_info{...} 1`` (an OpenMetrics info; a gauge in 0.0.4)."""
        family = self._add(Gauge, name, help, "info", tuple(values), 1)
        family.labels(**values).set(1)
        return family

    def families(self) -> list[Family]:
        return [self._families[name] for name in sorted(self._families)]

    def label_set_dropped(self, metric: str) -> None:
        if self._dropped is not None and metric != self._dropped.name:
            self._dropped.labels(metric).inc()

    def collect_failed(self, metric: str) -> None:
        if self._failed is not None:
            self._failed.labels(metric).inc()

    def render(self, openmetrics: bool = False) -> str:
        """The whole exposition in the 0.0.4 text format, or OpenMetrics 1.0."""
        lines: list[str] = []
        for family in self.families():
            samples = family.samples()
            # OpenMetrics: an info is its own type; 0.0.4 knows only gauges for it.
            type_ = family.type if openmetrics or family.type != "info" else "gauge"
            meta_name = family.family_name if openmetrics else family.name
            lines.append(f"# HELP {meta_name} {_escape_help(family.help, openmetrics)}")
            lines.append(f"# TYPE {meta_name} {type_}")
            for key, value in samples:
                lines.append(family.name + _label_text(family.labelnames, key)
                             + " " + format_value(value))
        if openmetrics:
            lines.append("# EOF")
        return "\n".join(lines) + "\n"


def _label_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}"
