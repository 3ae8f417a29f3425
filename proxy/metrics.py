"""Prometheus metrics, written by hand in the text exposition format (version 0.0.4).

A hand-written registry instead of `prometheus-client`: we need three metric kinds,
one process, no multiprocess mode, and an exposition we can serve from our own asyncio
HTTP server. Each proxy process owns one `Metrics` (no module-level registry), so tests
and several servers in one process never share counters.

Labels only ever hold analyst names, dataset names, routes, stages, SQLSTATEs and
outcomes: never query text, literals or results.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]

# Latency buckets in seconds: 100 µs to 30 s (a DP query is a few ms; timeouts are seconds).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # fmt: skip

STAGES = ("parse_rewrite", "cache_lookup", "ledger_charge", "backend", "noise", "encode")


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = (*labels, *extra)
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(float(x))


def _simple_series(name: str, help_: str, kind: str, values: dict[Labels, float]) -> Iterable[str]:
    """HELP, TYPE and one line per label set: the exposition of counters and gauges."""
    yield f"# HELP {name} {help_}"
    yield f"# TYPE {name} {kind}"
    for k, v in sorted(values.items()):
        yield f"{name}{_labels(k)} {_num(v)}"


def series_key(**labels: str) -> Labels:
    """The key of one series: its labels in name order (what `inc` and `observe` compute)."""
    return _key(labels)


def _key(labels: dict[str, str]) -> Labels:
    items = tuple(labels.items())
    return items if len(items) < 2 else tuple(sorted(items))


@dataclass
class Counter:
    """A monotonically increasing value per label set."""

    name: str
    help: str
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` (>= 0) to the series of these labels."""
        k = _key(labels)
        self.values[k] = self.values.get(k, 0.0) + amount

    def inc_series(self, key: Labels, amount: float = 1.0) -> None:
        """`inc` for a label set already in `series_key` form (callers remember it)."""
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        """The current value of one series (0 if never incremented)."""
        return self.values.get(_key(labels), 0.0)

    def expose(self) -> Iterable[str]:
        """Exposition lines."""
        return _simple_series(self.name, self.help, "counter", self.values)


@dataclass
class Gauge:
    """A value that is set (or computed at scrape time by `collect`)."""

    name: str
    help: str
    values: dict[Labels, float] = field(default_factory=dict)

    def set(self, value: float, **labels: str) -> None:
        """Set the series of these labels."""
        self.values[_key(labels)] = value

    def expose(self) -> Iterable[str]:
        """Exposition lines."""
        return _simple_series(self.name, self.help, "gauge", self.values)


@dataclass
class Histogram:
    """Cumulative buckets, sum and count per label set."""

    name: str
    help: str
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    series: dict[Labels, list[float]] = field(default_factory=dict)  # counts..., sum, count

    def observe(self, value: float, **labels: str) -> None:
        """Record one observation."""
        self.observe_series(value, _key(labels))

    def observe_series(self, value: float, k: Labels) -> None:
        """`observe` for a label set already in `series_key` form (callers remember it)."""
        s = self.series.get(k)
        if s is None:
            s = self.series[k] = [0.0] * (len(self.buckets) + 2)
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.buckets):
            s[i] += 1  # per-bucket counts; made cumulative when exposed
        s[-2] += value
        s[-1] += 1

    def count(self, **labels: str) -> int:
        """How many observations a series has."""
        s = self.series.get(_key(labels))
        return int(s[-1]) if s else 0

    def expose(self) -> Iterable[str]:
        """Exposition lines."""
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for k, s in sorted(self.series.items()):
            acc = 0.0
            for b, c in zip(self.buckets, s, strict=False):
                acc += c
                yield f"{self.name}_bucket{_labels(k, (('le', _num(b)),))} {_num(acc)}"
            yield f"{self.name}_bucket{_labels(k, (('le', '+Inf'),))} {_num(s[-1])}"
            yield f"{self.name}_sum{_labels(k)} {_num(s[-2])}"
            yield f"{self.name}_count{_labels(k)} {_num(s[-1])}"


class Metrics:
    """Every metric of one proxy process."""

    def __init__(self) -> None:
        self.statements = Counter(
            "dpproxy_statements_total", "Statements received, by route and outcome "
            "(answered, refused, failed, cancelled).")  # fmt: skip
        self.refusals = Counter(
            "dpproxy_refusals_total", "Statements refused or failed, by SQLSTATE.")
        self.statement_seconds = Histogram(
            "dpproxy_statement_duration_seconds", "Wall time of a statement in dpproxy, by route.")
        self.stage_seconds = Histogram(
            "dpproxy_stage_duration_seconds", "Wall time of each stage of a DP query "
            "(parse_rewrite, cache_lookup, ledger_charge, backend, noise, encode).")  # fmt: skip
        self.epsilon_charged = Counter(
            "dpproxy_epsilon_charged_total", "Epsilon charged by this process, by analyst and dataset.")
        self.cache_lookups = Counter(
            "dpproxy_cache_lookups_total", "Answer-cache lookups, by result (hit or miss).")
        self.connections_total = Counter(
            "dpproxy_client_connections_total", "Client connections accepted.")
        self.audit_written = Counter(
            "dpproxy_audit_entries_written_total", "Audit entries committed to the ledger database.")
        self.audit_errors = Counter(
            "dpproxy_audit_write_errors_total", "Failed audit batch writes (retried).")
        self.reloads = Counter("dpproxy_config_reloads_total", "SIGHUP reloads, by result.")
        # Gauges filled at scrape time by the collectors below.
        self.gauges: dict[str, Gauge] = {}
        self._collectors: list[Callable[[Metrics], None]] = []

    def gauge(self, name: str, help: str) -> Gauge:
        """The gauge of that name (created on first use), for collectors."""
        g = self.gauges.get(name)
        if g is None:
            g = self.gauges[name] = Gauge(name, help)
        return g

    def add_collector(self, fn: Callable[[Metrics], None]) -> None:
        """Call `fn(self)` before each exposition (to refresh gauges)."""
        self._collectors.append(fn)

    def cache_hit_ratio(self) -> float:
        """Hits over lookups since start (0 when there were none)."""
        hits = self.cache_lookups.get(result="hit")
        total = hits + self.cache_lookups.get(result="miss")
        return hits / total if total else 0.0

    def expose(self) -> str:
        """The whole exposition, as served on /metrics."""
        for fn in self._collectors:
            fn(self)
        self.gauge("dpproxy_cache_hit_ratio", "Answer-cache hits over lookups since start."
                   ).set(self.cache_hit_ratio())  # fmt: skip
        metrics: list[Counter | Gauge | Histogram] = [
            self.statements, self.refusals, self.statement_seconds, self.stage_seconds,
            self.epsilon_charged, self.cache_lookups, self.connections_total,
            self.audit_written, self.audit_errors, self.reloads,
            *(self.gauges[k] for k in sorted(self.gauges)),
        ]  # fmt: skip
        lines: list[str] = []
        for metric in metrics:
            lines.extend(metric.expose())
        return "\n".join(lines) + "\n"


def parse_exposition(text: str) -> dict[str, float]:
    """Sample lines of an exposition as {'name{labels}': value} (for `dpproxy status`, tests)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out
