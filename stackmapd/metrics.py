"""Prometheus metrics, named as memcached_exporter names them.

A custom prometheus-client collector reads the engine's ``stats`` groups
(general, settings, items, slabs) and its latency histograms at scrape time.
The engine's counters are per worker thread and summed when read, so a
scrape takes no lock that a worker waits for and costs the data path
nothing.

Names and labels follow memcached_exporter (``pkg/exporter/exporter.go``)
so that existing dashboards and alerts keep working:
``memcached_commands_total{command,status}`` is built as the exporter builds
it from the ``*_hits`` / ``*_misses`` stats (``set`` is ``cmd_set`` minus the
CAS commands, which memcached counts in both), and the per-class family is
``memcached_slab_*{slab}``.  What memcached does not have is under
``stackmap_``: per-command latency histograms and the ring backend's own
figures (syscalls, io_uring submissions and completions, buffer-ring
exhaustion).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

NS = "memcached"

# (exporter name, stats key, help, counter?) for the general group.
GENERAL: tuple[tuple[str, str, str, bool], ...] = (
    ("uptime_seconds", "uptime", "Number of seconds since the server started.", True),
    ("time_seconds", "time", "current UNIX time according to the server.", False),
    ("current_bytes", "bytes", "Current number of bytes used to store items.", False),
    ("limit_bytes", "limit_maxbytes", "Number of bytes this server is allowed to use for storage.", False),
    ("current_items", "curr_items", "Current number of items stored by this instance.", False),
    ("items_total", "total_items", "Total number of items stored during the life of this instance.", True),
    ("read_bytes_total", "bytes_read", "Total number of bytes read by this server from network.", True),
    ("written_bytes_total", "bytes_written", "Total number of bytes sent by this server to network.", True),
    ("current_connections", "curr_connections", "Current number of open connections.", False),
    ("connections_total", "total_connections",
     "Total number of connections opened since the server started running.", True),
    ("connections_rejected_total", "rejected_connections",
     "Total number of connections rejected due to hitting the memcached's -c limit in maxconns_fast mode.", True),
    ("connections_yielded_total", "conn_yields",
     "Total number of connections yielded running due to hitting the memcached's -R limit.", True),
    ("connections_listener_disabled_total", "listen_disabled_num",
     "Number of times that memcached has hit its connections limit and disabled its listener.", True),
    ("items_evicted_total", "evictions",
     "Total number of valid items removed from cache to free memory for new items.", True),
    ("items_reclaimed_total", "reclaimed",
     "Total number of times an entry was stored using memory from an expired entry.", True),
    ("item_too_large_total", "store_too_large",
     "The number of times an item exceeded the max-item-size when being stored.", True),
    ("item_no_memory_total", "store_no_memory",
     "The number of times an item could not be stored due to no more memory.", True),
    ("direct_reclaims_total", "direct_reclaims",
     "Times worker threads had to directly reclaim or evict items.", True),
    ("malloced_bytes", "total_malloced", "Number of bytes of memory allocated to slab pages.", False),
    ("accepting_connections", "accepting_conns",
     "The Memcached server is currently accepting new connections.", False),
)

# "stats items" per-class keys -> (exporter name, help, counter?).
ITEMS: Mapping[str, tuple[str, str, bool]] = {
    "number": ("current_items", "Number of items currently stored in this slab class.", False),
    "age": ("items_age_seconds", "Number of seconds the oldest item has been in the slab class.", False),
    "evicted": ("items_evicted_total",
                "Total number of times an item had to be evicted from the LRU before it expired.", True),
    "evicted_nonzero": ("items_evicted_nonzero_total",
                        "Total number of times an item which had an explicit expire time set had to be "
                        "evicted from the LRU before it expired.", True),
    "evicted_time": ("items_evicted_time_seconds",
                     "Seconds since the last access for the most recent item evicted from this class.", True),
    "evicted_unfetched": ("items_evicted_unfetched_total", "Total nmber of items evicted and never fetched.", True),
    "expired_unfetched": ("items_expired_unfetched_total",
                          "Total number of valid items evicted from the LRU which were never touched after "
                          "being set.", True),
    "outofmemory": ("items_outofmemory_total",
                    "Total number of items for this slab class that have triggered an out of memory error.", True),
    "reclaimed": ("items_reclaimed_total", "Total number of items reclaimed.", True),
    "crawler_reclaimed": ("items_crawler_reclaimed_total", "Number of items freed by the LRU Crawler.", True),
    "tailrepairs": ("items_tailrepairs_total",
                    "Total number of times the entries for a particular ID need repairing.", True),
    "moves_to_cold": ("items_moves_to_cold", "Number of items moved from HOT or WARM into COLD.", True),
    "moves_to_warm": ("items_moves_to_warm", "Number of items moves from COLD into WARM.", True),
    "moves_within_lru": ("items_moves_within_lru",
                         "Number of times active items were bumped within HOT or WARM.", True),
    "number_hot": ("hot_items", "Number of items presently stored in the HOT LRU.", False),
    "number_warm": ("warm_items", "Number of items presently stored in the WARM LRU.", False),
    "number_cold": ("cold_items", "Number of items presently stored in the COLD LRU.", False),
    "number_temp": ("temporary_items", "Number of items presently stored in the TEMPORARY LRU.", False),
    "age_hot": ("hot_age_seconds", "Age of the oldest item in HOT LRU.", False),
    "age_warm": ("warm_age_seconds", "Age of the oldest item in HOT LRU.", False),
}
LRU_HITS = {"hits_to_hot": "hot", "hits_to_warm": "warm", "hits_to_cold": "cold", "hits_to_temp": "temporary"}

# "stats slabs" per-class keys -> (exporter name, help).
SLABS: Mapping[str, tuple[str, str]] = {
    "chunk_size": ("chunk_size_bytes", "Number of bytes allocated to each chunk within this slab class."),
    "chunks_per_page": ("chunks_per_page", "Number of chunks within a single page for this slab class."),
    "total_pages": ("current_pages", "Number of pages allocated to this slab class."),
    "total_chunks": ("current_chunks", "Number of chunks allocated to this slab class."),
    "used_chunks": ("chunks_used", "Number of chunks allocated to an item."),
    "free_chunks": ("chunks_free", "Number of chunks not yet allocated items."),
    "free_chunks_end": ("chunks_free_end", "Number of free chunks at the end of the last allocated page."),
    "mem_requested": ("mem_requested_bytes", "Number of bytes of memory actual items take up within a slab."),
}

COMMAND_OPS = ("get", "delete", "incr", "decr", "cas", "touch")

# The ring backend's counters ("stats" keys) -> stackmap_ names.
RING: tuple[tuple[str, str, str], ...] = (
    ("syscalls_total", "syscalls", "System calls made by the worker loops (all backends)."),
    ("uring_submits_total", "uring_submits", "io_uring_enter calls that submitted work."),
    ("uring_completions_total", "uring_cqes", "io_uring completions reaped."),
    ("uring_buffer_ring_empty_total", "uring_buf_ring_empty",
     "Receives that found the provided-buffer ring exhausted."),
    ("uring_send_zc_total", "uring_send_zc", "Zero-copy sends issued."),
    ("uring_batch_waits_total", "uring_batch_waits",
     "io_uring waits that asked for a batch of arrivals (busy CPU, loaded worker)."),
    ("uring_batch_timeouts_total", "uring_batch_timeouts",
     "Batch waits that ran out of time before the batch was complete."),
    ("uring_batch_rests_total", "uring_batch_rests",
     "Times batch waits were stopped for 64 rounds (two ran out of time in a row: a shared CPU)."),
)

_SLAB_KEY = re.compile(r"(\d+):(\w+)")
_ITEMS_KEY = re.compile(r"items:(\d+):(\w+)")


def _family(name: str, counter: bool) -> type[CounterMetricFamily] | type[GaugeMetricFamily]:
    """Counter for ``*_total`` counters; prometheus-client would append ``_total`` to any
    other counter name, so the exporter's few counters without it are exposed as gauges."""
    return CounterMetricFamily if counter and name.endswith("_total") else GaugeMetricFamily


def _num(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _by_class(stats: Mapping[str, str], pattern: re.Pattern[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key, value in stats.items():
        m = pattern.fullmatch(key)
        v = _num(value)
        if m and v is not None:
            out.setdefault(m.group(1), {})[m.group(2)] = v
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
        up = GaugeMetricFamily(f"{NS}_up", "Could the memcached server be reached (every worker "
                               "serving and a version request answered on its port).")
        try:
            general = self.source.stats("")
            settings = self.source.stats("settings")
            items = self.source.stats("items")
            slabs = self.source.stats("slabs")
            latency = self.source.latency()
        except Exception:  # the engine is gone (stopping): report down, nothing else
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1 if self.source.up is None or self.source.up() else 0)
        yield up
        yield from self._general(general, settings)
        yield from self._commands(general)
        yield from self._items(items)
        yield from self._slabs(slabs)
        yield from self._ring(general, latency)
        yield from self._latency(latency)

    def _general(self, s: Mapping[str, str], settings: Mapping[str, str]) -> Iterable[Metric]:
        version = GaugeMetricFamily(f"{NS}_version", "The version of this memcached server.", labels=["version"])
        version.add_metric([s.get("version", "")], 1)
        yield version
        for name, key, doc, counter in GENERAL:
            v = _num(s.get(key, ""))
            if v is None:
                continue
            yield _family(name, counter)(f"{NS}_{name}", doc, value=v)
        cpu = (("process_user_cpu_seconds_total", "rusage_user", "Accumulated user time for this process."),
               ("process_system_cpu_seconds_total", "rusage_system", "Accumulated system time for this process."))
        for name, key, doc in cpu:
            v = _num(s.get(key, ""))
            if v is not None:
                yield CounterMetricFamily(f"{NS}_{name}", doc, value=v)
        v = _num(settings.get("maxconns", ""))
        if v is not None:
            yield GaugeMetricFamily(f"{NS}_max_connections", "Maximum number of clients allowed.", value=v)

    def _commands(self, s: Mapping[str, str]) -> Iterable[Metric]:
        cmds = CounterMetricFamily(
            f"{NS}_commands_total",
            "Total number of all requests broken down by command (get, set, etc.) and status.",
            labels=["command", "status"])
        for op in COMMAND_OPS:
            for suffix, status in (("_hits", "hit"), ("_misses", "miss")):
                v = _num(s.get(op + suffix, ""))
                if v is not None:
                    cmds.add_metric([op, status], v)
        for key, op, status in (("cas_badval", "cas", "badval"), ("cmd_flush", "flush", "hit")):
            v = _num(s.get(key, ""))
            if v is not None:
                cmds.add_metric([op, status], v)
        parts = [_num(s.get(k, "")) for k in ("cmd_set", "cas_misses", "cas_hits", "cas_badval")]
        if all(p is not None for p in parts):
            set_cmd, *cas = parts
            cmds.add_metric(["set", "hit"], set_cmd - sum(cas))  # type: ignore[operator, arg-type]
        yield cmds

    def _items(self, items: Mapping[str, str]) -> Iterable[Metric]:
        per_class = _by_class(items, _ITEMS_KEY)
        families: dict[str, Metric] = {}
        hits = CounterMetricFamily(f"{NS}_slab_lru_hits_total", "Number of get_hits to the LRU.",
                                   labels=["slab", "lru"])
        for slab, values in sorted(per_class.items(), key=lambda kv: int(kv[0])):
            for key, v in values.items():
                if key in LRU_HITS:
                    hits.add_metric([slab, LRU_HITS[key]], v)
                    continue
                spec = ITEMS.get(key)
                if spec is None:
                    continue
                name, doc, counter = spec
                fam = families.get(name)
                if fam is None:
                    fam = families[name] = _family(name, counter)(f"{NS}_slab_{name}", doc, labels=["slab"])
                fam.add_metric([slab], v)
        yield from families.values()
        yield hits

    def _slabs(self, slabs: Mapping[str, str]) -> Iterable[Metric]:
        per_class = _by_class(slabs, _SLAB_KEY)
        families = {key: GaugeMetricFamily(f"{NS}_slab_{name}", doc, labels=["slab"])
                    for key, (name, doc) in SLABS.items()}
        cmds = CounterMetricFamily(
            f"{NS}_slab_commands_total",
            "Total number of all requests broken down by command (get, set, etc.) and status per slab.",
            labels=["slab", "command", "status"])
        for slab, values in sorted(per_class.items(), key=lambda kv: int(kv[0])):
            for key, fam in families.items():
                if key in values:
                    fam.add_metric([slab], values[key])
            for op in COMMAND_OPS:
                if op + "_hits" in values:
                    cmds.add_metric([slab, op, "hit"], values[op + "_hits"])
            if "cas_badval" in values:
                cmds.add_metric([slab, "cas", "badval"], values["cas_badval"])
            if all(k in values for k in ("cmd_set", "cas_hits", "cas_badval")):
                cmds.add_metric([slab, "set", "hit"], values["cmd_set"] - values["cas_hits"] - values["cas_badval"])
        yield from families.values()
        yield cmds

    def _ring(self, s: Mapping[str, str], latency: Any) -> Iterable[Metric]:
        info = GaugeMetricFamily("stackmap_backend_info", "The ring backend serving the data path.",
                                 labels=["backend"])
        info.add_metric([s.get("backend", "unknown")], 1)
        yield info
        values: dict[str, float] = {}
        for name, key, doc in RING:
            v = _num(s.get(key, ""))
            if v is not None:
                values[key] = v
                yield CounterMetricFamily(f"stackmap_{name}", doc, value=v)
        requests = float(sum(sum(row) for row in latency.counts))
        yield CounterMetricFamily("stackmap_requests_total", "Commands served (all protocols).", value=requests)
        yield GaugeMetricFamily(
            "stackmap_syscalls_per_request", "System calls per command since start (lower is better).",
            value=values.get("syscalls", 0.0) / requests if requests else 0.0)
        published = _num(s.get("uring_bufs_published", ""))
        if published is not None:
            yield GaugeMetricFamily(
                "stackmap_uring_buffers_published",
                "Receive buffers the io_uring workers keep in their provided-buffer rings now.",
                value=published)
        submits = values.get("uring_submits", 0.0)
        yield GaugeMetricFamily(
            "stackmap_uring_completions_per_submit",
            "Average io_uring batch: completions reaped per submitting io_uring_enter since start.",
            value=values.get("uring_cqes", 0.0) / submits if submits else 0.0)

    def _latency(self, latency: Any) -> Iterable[Metric]:
        hist = HistogramMetricFamily(
            "stackmap_command_duration_seconds",
            "Time from a command line being parsed to its response being queued, per command.",
            labels=["command"])
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
