"""Prometheus metrics, made from the engine's stats table.

Every figure the ``stats`` command prints is a row of the engine's stats
table (``stackmap_core/src/stats_table.h``, read here through
``stackmap_core.metric_table()``): its name, kind, unit, Prometheus family,
labels and help.  The collector reads the ``stats`` groups (general, backend,
items, slabs) and the latency histograms at scrape time and turns every numeric
value into its row's series; there is no list of names here.  The engine's
counters are per worker thread and summed when read, so a scrape takes no
lock that a worker waits for and costs the data path nothing.

Names and labels follow memcached_exporter (``pkg/exporter/exporter.go``)
so that existing dashboards and alerts keep working: the hits and misses
make ``memcached_commands_total{command,status}``, and as the exporter does,
a ``set`` sample is added to it built from ``cmd_set`` minus the CAS
commands (which memcached counts in both).  What memcached does not have is
under ``stackmap_``.  The few series that are not a ``stats`` figure are
declared in ``DERIVED`` below.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

import stackmap_core


@dataclass(frozen=True)
class Derived:
    """A series that is not one ``stats`` figure: computed here from several."""

    metric: str  # Prometheus family
    kind: str  # counter, gauge or histogram
    labels: tuple[str, ...]  # label names
    help: str  # one line


UP = Derived("memcached_up", "gauge", (), "Could the memcached server be reached (every worker serving and "
             "a version request answered on its port).")
REQUESTS = Derived("stackmap_requests_total", "counter", (), "Commands served (all protocols).")
SYSCALLS_PER_REQUEST = Derived("stackmap_syscalls_per_request", "gauge", (),
                               "System calls per command since start (lower is better).")
DURATION = Derived("stackmap_command_duration_seconds", "histogram", ("command",),
                   "Time from a command line being parsed to its response being queued, per command.")
DERIVED: tuple[Derived, ...] = (UP, REQUESTS, SYSCALLS_PER_REQUEST, DURATION)

# HELP of the families several rows share (one row per label set); a
# family of one row takes that row's help.
FAMILY_HELP: Mapping[str, str] = {
    "memcached_commands_total":
        "Total number of all requests broken down by command (get, set, etc.) and status.",
    "memcached_slab_commands_total":
        "Total number of all requests broken down by command (get, set, etc.) and status per slab.",
    "memcached_slab_lru_hits_total": "Number of get_hits to the LRU.",
}

# The exporter's ``set`` hits: cmd_set minus the CAS commands, which memcached counts in both.
SET_PARTS = ("cmd_set", "cas_misses", "cas_hits", "cas_badval")
SLAB_SET_PARTS = ("cmd_set", "cas_hits", "cas_badval")

TABLE: tuple[stackmap_core.MetricInfo, ...] = stackmap_core.metric_table()

_SLAB_KEY = re.compile(r"(\d+):(\w+)")
_ITEMS_KEY = re.compile(r"items:(\d+):(\w+)")


@dataclass(frozen=True)
class Family:
    """One Prometheus family and the stats table rows it is made of."""

    metric: str  # family name
    kind: str  # counter, gauge or info
    label_names: tuple[str, ...]  # labels of every sample (slab first for per-class rows)
    help: str  # its HELP
    rows: tuple[stackmap_core.MetricInfo, ...]  # the rows, in table order


def families(table: Sequence[stackmap_core.MetricInfo] = TABLE) -> tuple[Family, ...]:
    """The table's rows grouped into families, in the table's order."""
    grouped: dict[str, list[stackmap_core.MetricInfo]] = {}
    for row in table:
        if row.metric:
            grouped.setdefault(row.metric, []).append(row)
    out = []
    for metric, rows in grouped.items():
        first = rows[0]
        names = tuple(k for k, _ in first.labels)
        if first.per_class:
            names = ("slab", *names)
        helptext = first.help if len(rows) == 1 else FAMILY_HELP.get(metric, first.help)
        out.append(Family(metric, first.kind, names, helptext, tuple(rows)))
    return tuple(out)


FAMILIES: tuple[Family, ...] = families()


def exposed_kind(name: str, kind: str) -> str:
    """The type a family is exposed with: counter for ``*_total`` counters.  prometheus-client
    would append ``_total`` to any other counter name, so the exporter's few counters without
    it (memcached_uptime_seconds, ...) are exposed as gauges."""
    return "counter" if kind == "counter" and name.endswith("_total") else "gauge"


def _family(name: str, kind: str) -> type[CounterMetricFamily] | type[GaugeMetricFamily]:
    return CounterMetricFamily if exposed_kind(name, kind) == "counter" else GaugeMetricFamily


def _num(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _by_class(stats: Mapping[str, str], pattern: re.Pattern[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for key, value in stats.items():
        m = pattern.fullmatch(key)
        if m:
            out.setdefault(m.group(1), {})[m.group(2)] = value
    return out


class StatsSource:
    """What the collector reads: the engine's stats groups and latency table, and
    ``up``: whether the data plane answers (stackmapd/health.py), or None to count
    readable stats as up."""

    def __init__(self, stats: Callable[[str], Mapping[str, str]], latency: Callable[[], Any],
                 up: Callable[[], bool] | None = None) -> None:
        self.stats = stats
        self.latency = latency
        self.up = up


class StackmapCollector(Collector):
    """memcached_exporter's metrics plus stackmap_ ones, read at scrape time."""

    def __init__(self, source: StatsSource) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: names depend on the slab classes in use

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(UP.metric, UP.help)
        try:
            groups = {group: self.source.stats(group) for group in ("", "backend", "items", "slabs")}
            latency = self.source.latency()
        except Exception:  # the engine is gone (stopping): report down, nothing else
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1 if self.source.up is None or self.source.up() else 0)
        yield up
        per_class = {"items": _by_class(groups["items"], _ITEMS_KEY),
                     "slabs": _by_class(groups["slabs"], _SLAB_KEY)}
        for fam in FAMILIES:
            metric = self._table_family(fam, groups, per_class)
            if metric.samples:
                yield metric
        yield from self._derived(groups["backend"], latency)
        yield from self._latency(latency)

    def _table_family(self, fam: Family, groups: Mapping[str, Mapping[str, str]],
                      per_class: Mapping[str, Mapping[str, Mapping[str, str]]]) -> Metric:
        """One family's samples, from its rows' values in the stats groups."""
        if fam.kind == "info":
            metric: Metric = GaugeMetricFamily(fam.metric, fam.help, labels=list(fam.label_names))
        else:
            metric = _family(fam.metric, fam.kind)(fam.metric, fam.help, labels=list(fam.label_names))
        for row in fam.rows:
            fixed = [] if row.kind == "info" else [v for _, v in row.labels]
            if row.per_class:
                sources = sorted(per_class[row.group].items(), key=lambda kv: int(kv[0]))
                for slab, values in sources:
                    self._sample(metric, row, values.get(row.name), [slab, *fixed])
            else:
                self._sample(metric, row, groups[row.group].get(row.name), fixed)
        if fam.metric == "memcached_commands_total":
            self._set_hits(metric, groups[""], SET_PARTS, [])
        elif fam.metric == "memcached_slab_commands_total":
            for slab, values in sorted(per_class["slabs"].items(), key=lambda kv: int(kv[0])):
                self._set_hits(metric, values, SLAB_SET_PARTS, [slab])
        return metric

    @staticmethod
    def _sample(metric: Metric, row: stackmap_core.MetricInfo, value: str | None, labels: list[str]) -> None:
        if value is None:
            return
        if row.kind == "info":  # the text is the label's value
            metric.add_metric([*labels, value], 1)  # type: ignore[attr-defined]
            return
        v = _num(value)
        if v is not None:
            metric.add_metric(labels, v)  # type: ignore[attr-defined]

    @staticmethod
    def _set_hits(metric: Metric, values: Mapping[str, str], parts: tuple[str, ...], labels: list[str]) -> None:
        """memcached_exporter's set hits: cmd_set minus the CAS commands (counted in both)."""
        nums = [_num(values.get(k, "")) for k in parts]
        if all(n is not None for n in nums):
            set_cmd, *cas = nums
            metric.add_metric([*labels, "set", "hit"], set_cmd - sum(cas))  # type: ignore[attr-defined, operator, arg-type]

    def _derived(self, s: Mapping[str, str], latency: Any) -> Iterable[Metric]:
        requests = float(sum(sum(row) for row in latency.counts))
        yield CounterMetricFamily(REQUESTS.metric, REQUESTS.help, value=requests)
        syscalls = _num(s.get("syscalls", "")) or 0.0
        yield GaugeMetricFamily(SYSCALLS_PER_REQUEST.metric, SYSCALLS_PER_REQUEST.help,
                                value=syscalls / requests if requests else 0.0)

    def _latency(self, latency: Any) -> Iterable[Metric]:
        hist = HistogramMetricFamily(DURATION.metric, DURATION.help, labels=list(DURATION.labels))
        for name, row, sum_ns in zip(latency.commands, latency.counts, latency.sums_ns, strict=True):
            total = sum(row)
            if not total:
                continue
            buckets: list[tuple[str, float]] = []
            running = 0
            for bound, count in zip(latency.bounds_ns, row, strict=False):
                running += count
                buckets.append((f"{bound / 1e9:.9g}", float(running)))
            buckets.append(("+Inf", float(total)))
            hist.add_metric([name], buckets, sum_value=sum_ns / 1e9)
        yield hist


def make_registry(source: StatsSource) -> CollectorRegistry:
    """A registry with our collector and the process collector (process_*)."""
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StackmapCollector(source))
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format of everything in ``registry``."""
    return generate_latest(registry)
