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

With ``workers N`` the *shared* families (counters, and gauges not made with
``shared=False``) keep their values in this worker's file of
:mod:`gmta.metrics.shared` once :meth:`Registry.share` was called, and
:meth:`Registry.render` sums them over every worker's file. The other
families (gauge functions, infos, per-process gauges) are rendered from this
process alone.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Iterable

from gmta.metrics import shared

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
    """The value of one label set of a counter or gauge: in this process, or in a
    slot of this worker's shared file (:meth:`bind`)."""

    __slots__ = ("_value", "_file", "_offset")

    def __init__(self):
        self._value = 0.0
        self._file = None
        self._offset = 0

    @property
    def value(self) -> float:
        return self._value if self._file is None else self._file.get(self._offset)

    def _add(self, amount: float) -> None:
        if self._file is None:
            self._value += amount
        else:
            self._file.add(self._offset, amount)

    def bind(self, file, offset: int, *, carry: str) -> None:
        """Keep the value in *file* at *offset* from now on. What was counted here
        before is added to the slot (``carry="add"``: a counter, which counts on from
        a predecessor's value) or replaces it (``"set"``: a gauge)."""
        if carry == "add":
            file.add(offset, self._value)
        else:
            file.set(offset, self._value)
        self._file, self._offset, self._value = file, offset, 0.0


class CounterChild(_Value):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self._add(amount)


class GaugeChild(_Value):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        self._add(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._add(-amount)

    def set(self, value: float) -> None:
        if self._file is None:
            self._value = float(value)
        else:
            self._file.set(self._offset, float(value))


class Family:
    """A metric family: one name, one type, fixed label names, bounded label sets."""

    child_class: type = CounterChild

    def __init__(self, registry: "Registry", name: str, help: str, type_: str,
                 labelnames: tuple[str, ...], max_label_sets: int, shared: bool = False):
        self.registry = registry
        self.name = name
        self.help = help
        self.type = type_
        self.labelnames = labelnames
        self.max_label_sets = max_label_sets
        #: Summed over the workers of ``workers N`` (see Registry.share).
        self.shared = shared
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
            child = self.child_class()
            if not self.registry.bind_shared(self, key, child):
                self.registry.label_set_dropped(self.name)
                return child  # the shared file is full: counts into nothing
            self._children[key] = child
        return child

    @property
    def carry(self) -> str:
        """How a value counted before sharing joins the shared slot (``_Value.bind``)."""
        return "add" if self.type == "counter" else "set"

    def remove(self, *values: str) -> None:
        """Forget a label set (in this process; a shared slot stays in its file)."""
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
        #: This worker's shared file and every worker's path (Registry.share).
        self._shared_file = None
        self._worker_paths: list[str] = []
        self._dropped = self.counter(
            dropped_metric, "Updates of label sets beyond a family's bound, ignored",
            ("metric",)) if dropped_metric else None
        self._failed = self.counter(
            failed_metric, "Gauges whose value could not be read at a scrape",
            ("metric",)) if failed_metric else None

    def _add(self, cls, name: str, help: str, type_: str, labels: Iterable[str],
             max_label_sets: int, shared: bool = False) -> Family:
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
        family = cls(self, name, help, type_, labels, max_label_sets, shared)
        self._families[name] = family
        return family

    def counter(self, name: str, help: str, labels: Iterable[str] = (), *,
                max_label_sets: int = DEFAULT_MAX_LABEL_SETS) -> Counter:
        return self._add(Counter, name, help, "counter", labels, max_label_sets, True)

    def gauge(self, name: str, help: str, labels: Iterable[str] = (), *,
              max_label_sets: int = DEFAULT_MAX_LABEL_SETS, shared: bool = True) -> Gauge:
        """A gauge; *shared* False for a value of this process that is not summed over
        workers (such as its start time)."""
        return self._add(Gauge, name, help, "gauge", labels, max_label_sets, shared)

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

    # -- workers N ------------------------------------------------------------------------

    def share(self, file, worker_paths: list[str]) -> None:
        """Keep the shared families' values in *file* (this worker's, from
        :mod:`gmta.metrics.shared`) and render the sums over *worker_paths*.

        A predecessor's gauges in *file* are set to zero (what they counted ended
        with it); its counters are kept, and this process counts on from them."""
        if self._shared_file is not None:
            raise RuntimeError("the registry is shared already")
        file.zero({f.name for f in self._families.values() if f.shared and f.type != "counter"})
        self._shared_file = file
        self._worker_paths = list(worker_paths)
        for family in self.families():
            if not family.shared:
                continue
            for key, child in list(family._children.items()):
                if not self.bind_shared(family, key, child):
                    del family._children[key]
                    self.label_set_dropped(family.name)

    def bind_shared(self, family: Family, key: tuple[str, ...], child) -> bool:
        """Give a new *child* its slot in the shared file; False when the file is full."""
        if self._shared_file is None or not family.shared:
            return True
        offset = self._shared_file.slot((family.name, key),
                                        reserved=family in (self._dropped, self._failed))
        if offset is None:
            return False
        child.bind(self._shared_file, offset, carry=family.carry)
        return True

    def _shared_samples(self) -> dict[str, dict[tuple[str, ...], float]]:
        """Every worker's shared values summed per family and label set. The gauges
        of a worker that no longer runs are left out: they described that process."""
        gauges = {f.name for f in self._families.values() if f.shared and f.type != "counter"}
        totals: dict[str, dict[tuple[str, ...], float]] = {}
        own = self._shared_file.path
        # This worker's file last, so that a failure counted here shows at once.
        for path in [p for p in self._worker_paths if p != own] + [own]:
            try:
                running, values = shared.read(path)
            except FileNotFoundError:
                continue  # that worker has not started yet
            except (OSError, ValueError):
                self.collect_failed("worker_file")
                continue
            for (name, labels), number in values.items():
                if name in gauges and not running:
                    continue
                family = totals.setdefault(name, {})
                family[labels] = family.get(labels, 0.0) + number
        return totals

    def render(self, openmetrics: bool = False) -> str:
        """The whole exposition in the 0.0.4 text format, or OpenMetrics 1.0."""
        families = self.families()
        # The process's own families first: reading a gauge function may count a
        # failure, which then shows in this very scrape.
        samples_of = {f.name: f.samples() for f in families
                      if not f.shared or self._shared_file is None}
        if self._shared_file is not None:
            totals = self._shared_samples()
            for family in families:
                if family.shared:
                    by_labels = totals.get(family.name, {})
                    samples_of[family.name] = [
                        (key, by_labels[key]) for key in sorted(by_labels)
                        if len(key) == len(family.labelnames)]
        lines: list[str] = []
        for family in families:
            samples = samples_of[family.name]
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
