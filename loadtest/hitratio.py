"""``python -m loadtest --hit-ratio``: hit ratio, memory per item and CPU per request of
each server under the seeded workloads of loadtest/workloads.py.

Why: stackmapd is measured against memcached on CPU elsewhere in loadtest/; what a cache
operator pays for is memory and misses.  This mode replays the same look-aside traffic
(loadtest/replay.py) against every target at the same ``-m`` and reports, per scenario
and server:

- hit ratio: overall, in the scenario's focus window (e.g. just after a scan), per phase,
  and over ``WINDOWS`` equal windows of requests (the plot);
- memory per stored item: ``stats`` ``bytes`` / ``curr_items``, and the RSS the run added
  (``VmRSS`` of /proc/PID/status at the end minus at the start) / ``curr_items``; the
  whole RSS is recorded too (stackmapd's includes its Python control plane).  The items
  counted are the live ones: after the replay every server is sent ``lru_crawler crawl
  all`` and its figures are read once that crawl is done, so that expired items a server
  has not met yet (memcached's crawler and ours run on different schedules) count for
  nobody; ``curr_items`` before that crawl is kept too (``items_before_crawl``);
- CPU per request: the server's utime+stime (/proc/PID/stat) over the replay divided by
  the requests it counted (``cmd_get + cmd_set``).

Each run is a fresh server on a fresh port, server and client on the same vCPU (the fair
mode of ../shared/BENCHMARKING.md), targets alternated A B A B per repetition.  The
sequence of gets is identical for every server; the hit ratio still varies a little from
run to run for servers whose eviction depends on background threads and the clock
(memcached's LRU maintainer, crawler and slab automover): the table gives the median and
the min-max over repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest import procstat, workloads
from loadtest.host import host_line
from loadtest.replay import ReplayError, replay
from loadtest.targets import (
    PortPicker,
    Server,
    ServerError,
    Target,
    TargetOptions,
    server_request,
    server_stats,
)

# Equal windows of requests over which the hit ratio is plotted.
WINDOWS = 20
# Counters kept from the server's stats after each run (those it has).
END_STATS = (
    "curr_items",
    "bytes",
    "limit_maxbytes",
    "total_items",
    "evictions",
    "reclaimed",
    "expired_unfetched",
    "evicted_unfetched",
    "crawler_reclaimed",
    "slabs_moved",
    "total_malloced",
)


@dataclass
class HitRun:
    """One replay of one scenario against one server; serialised as is into the JSON."""

    scenario: str
    target: str
    rep: int
    seed: int
    port: int
    server_argv: list[str]
    cpu: int  # the vCPU server and client ran on
    requests: int = 0  # gets replayed
    hits: int = 0  # gets that hit (client's count)
    hit_ratio: float = 0.0
    focus: str = ""  # label of the focus window
    focus_hit_ratio: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # phase -> hit ratio
    ranges: dict[str, float] = field(default_factory=dict)  # the trace's other named windows -> hit ratio
    phase_starts: list[int] = field(default_factory=list)  # request index where each phase starts
    windows: list[float] = field(default_factory=list)  # hit ratio per window
    window_edges: list[int] = field(default_factory=list)  # request index of each window's start, and the end
    sets: int = 0  # sets sent (one per miss)
    set_errors: int = 0  # sets not answered STORED
    first_set_error: str | None = None
    seconds: float = 0.0  # wall time of the replay
    rate: float | None = None  # pacing, requests per second (None: as fast as possible)
    max_lag_s: float = 0.0  # paced: the most a batch went out late
    server_cmds: int = 0  # the server's cmd_get + cmd_set over the replay
    server_get_hits: int | None = None  # the server's get_hits over the replay (cross-check)
    server_cpu_s: float = 0.0
    cpu_us_per_req: float | None = None
    client_cpu_s: float = 0.0
    foreign_cpu_s: float = 0.0  # busy time on the pinned vCPU used by neither
    rss_start_kib: int = 0  # VmRSS once the server answered
    rss_end_kib: int = 0  # VmRSS after the replay
    stats: dict[str, int] = field(default_factory=dict)  # END_STATS after the replay and a full crawl
    items_before_crawl: int = 0  # curr_items right after the replay, expired items not yet met included
    crawl_s: float = 0.0  # how long the final "lru_crawler crawl all" took
    bytes_per_item: float | None = None  # stats bytes / curr_items, both after the crawl
    rss_per_item: float | None = None  # (rss_end - rss_start) / curr_items after the crawl, bytes
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(hits: bytearray, start: int, end: int) -> float:
    return hits.count(1, start, end) / (end - start) if end > start else 0.0


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


CRAWL_TIMEOUT_S = 60.0


def crawl_all(port: int, timeout_s: float = CRAWL_TIMEOUT_S) -> tuple[dict[str, int], float]:
    """``lru_crawler crawl all``, then wait for the crawler to finish; the ``stats`` after it
    and the seconds it took.  Both servers reclaim every expired item they hold in that crawl,
    so what ``curr_items`` counts afterwards is what can still hit."""
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    while True:
        reply = server_request(port, b"lru_crawler crawl all\r\n", (b"\r\n",), timeout=5)
        if reply == b"OK\r\n":
            break
        # BUSY: the crawler is on a crawl of its own schedule; ask again when it is done.
        if not reply.startswith(b"BUSY") or time.monotonic() > deadline:
            raise ReplayError(f"lru_crawler crawl all answered {reply!r}")
        time.sleep(0.05)
    while True:
        stats = server_stats(port) or {}
        if stats.get("lru_crawler_running", 1) == 0:
            return stats, time.monotonic() - t0
        if time.monotonic() > deadline:
            raise ReplayError(f"the crawl did not end within {timeout_s:.0f} s")
        time.sleep(0.05)


def _pin_self(cpu: int) -> set[int]:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    return before


def run_one(
    target: Target,
    topts: TargetOptions,
    trace: workloads.Trace,
    rep: int,
    cpu: int,
    rate: float | None,
    ports: PortPicker,
    workdir: Path,
    ready_timeout_s: float,
) -> HitRun:
    """A fresh server, the replay, the figures."""
    port = ports.next()
    argv = target.argv(topts, port)
    log = workdir / f"{trace.scenario}-{target.name}-{rep}.log"
    server = Server(argv, cpu, port, log)
    rec = HitRun(trace.scenario, target.name, rep, trace.seed, port, server.argv, cpu, rate=rate)
    affinity = _pin_self(cpu)
    try:
        server.wait_ready(ready_timeout_s)
        rec.rss_start_kib = _rss_kib(server.pid)
        before = server_stats(port) or {}
        scpu0 = procstat.process_cpu_seconds(server.pid)
        snap0 = procstat.cpu_snapshot()
        res = replay(port, trace, rate)
        snap1 = procstat.cpu_snapshot()
        scpu1 = procstat.process_cpu_seconds(server.pid)
        after = server_stats(port) or {}
        rec.rss_end_kib = _rss_kib(server.pid)
        rec.items_before_crawl = after.get("curr_items", 0)
        live, rec.crawl_s = crawl_all(port)
        if not server.alive():
            raise ServerError(f"{target.name} exited during the replay:\n{server.log_tail()}")
    except (ServerError, ReplayError, OSError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
        return rec
    finally:
        os.sched_setaffinity(0, affinity)
        server.stop()
    _fill(rec, trace, res.hits)
    rec.sets, rec.set_errors, rec.first_set_error = res.sets, res.set_errors, res.first_set_error
    rec.seconds, rec.client_cpu_s, rec.max_lag_s = res.seconds, res.client_cpu_s, res.max_lag_s
    rec.server_cpu_s = scpu1 - scpu0
    cmds = [after.get(k, 0) - before.get(k, 0) for k in ("cmd_get", "cmd_set")]
    rec.server_cmds = sum(cmds)
    if "get_hits" in after:
        rec.server_get_hits = after["get_hits"] - before.get("get_hits", 0)
    if rec.server_cmds:
        rec.cpu_us_per_req = rec.server_cpu_s / rec.server_cmds * 1e6
    busy = procstat.delta(snap0, snap1, {cpu}).busy_on
    rec.foreign_cpu_s = max(0.0, busy - rec.server_cpu_s - rec.client_cpu_s)
    rec.stats = {k: live[k] for k in END_STATS if k in live}
    items = live.get("curr_items", 0)
    if items:
        rec.bytes_per_item = live.get("bytes", 0) / items
        rec.rss_per_item = (rec.rss_end_kib - rec.rss_start_kib) * 1024 / items
    return rec


def _fill(rec: HitRun, trace: workloads.Trace, hits: bytearray) -> None:
    n = len(hits)
    rec.requests, rec.hits = n, hits.count(1)
    rec.hit_ratio = rec.hits / n if n else 0.0
    label, start, end = trace.focus
    rec.focus, rec.focus_hit_ratio = label, _ratio(hits, start, end)
    if trace.focus_requests:
        rec.focus_hit_ratio = sum(hits[i] for i in trace.focus_requests) / len(trace.focus_requests)
    rec.phases = {p.name: _ratio(hits, p.start, p.end) for p in trace.phases}
    rec.ranges = {name: _ratio(hits, a, b) for name, (a, b) in trace.ranges.items()}
    rec.phase_starts = [p.start for p in trace.phases]
    edges = [n * i // WINDOWS for i in range(WINDOWS + 1)]
    rec.window_edges = edges
    rec.windows = [_ratio(hits, a, b) for a, b in zip(edges, edges[1:], strict=False)]


Progress = Callable[[int, int, HitRun], None]


def run_all(
    scenarios: list[str],
    targets: list[Target],
    topts: TargetOptions,
    seed: int,
    scale: float,
    reps: int,
    cpu: int,
    rate: float | None,
    workdir: Path,
    ready_timeout_s: float,
    progress: Progress,
) -> list[HitRun]:
    """Every scenario in turn; inside one, reps x targets alternated A B A B."""
    ports = PortPicker()
    runs: list[HitRun] = []
    total = len(scenarios) * reps * len(targets)
    for name in scenarios:
        trace = workloads.build(name, seed, topts.memory_mb << 20, scale)
        for rep in range(reps):
            for target in targets:
                rec = run_one(target, topts, trace, rep, cpu, rate, ports, workdir, ready_timeout_s)
                runs.append(rec)
                progress(len(runs), total, rec)
    return runs


# ---- report ---------------------------------------------------------------------------


def _spread(values: list[float | None], fmt: str) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    med = statistics.median(vals)
    lo, hi = format(min(vals), fmt), format(max(vals), fmt)
    if lo == hi:
        return format(med, fmt)
    return f"{format(med, fmt)} ({lo}-{hi})"


def _delta(rs: list[HitRun], base: list[HitRun]) -> str:
    """Median focus hit ratio minus the baseline's, or "-"."""
    if not rs or not base:
        return "-"
    d = statistics.median(r.focus_hit_ratio for r in rs) - statistics.median(r.focus_hit_ratio for r in base)
    return f"{d:+.3f}"


def table(runs: list[HitRun], scenarios: list[str], targets: list[str], baseline: str) -> str:
    """The markdown table: one row per scenario and server, median (min-max) over reps."""
    head = (
        f"| scenario | server | hit ratio | focus window | focus hit ratio | focus vs {baseline}"
        " | items at the end | live items | stats bytes/item | RSS added/item | RSS end MiB | CPU µs/req"
        " | set errors |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for sc in scenarios:
        base = [r for r in runs if r.scenario == sc and r.target == baseline and r.error is None]
        for t in targets:
            rs = [r for r in runs if r.scenario == sc and r.target == t and r.error is None]
            if not rs:
                rows.append(f"| {sc} | {t} | failed | | | | | | | | | | |")
                continue
            rows.append(
                f"| {sc} | {t} | {_spread([r.hit_ratio for r in rs], '.3f')} | {rs[0].focus}"
                f" | {_spread([r.focus_hit_ratio for r in rs], '.3f')}"
                f" | {'-' if t == baseline else _delta(rs, base)}"
                f" | {_spread([float(r.items_before_crawl) for r in rs], '.0f')}"
                f" | {_spread([float(r.stats.get('curr_items', 0)) for r in rs], '.0f')}"
                f" | {_spread([r.bytes_per_item for r in rs], '.0f')}"
                f" | {_spread([r.rss_per_item for r in rs], '.0f')}"
                f" | {_spread([r.rss_end_kib / 1024 for r in rs], '.0f')}"
                f" | {_spread([r.cpu_us_per_req for r in rs], '.2f')}"
                f" | {_spread([float(r.set_errors) for r in rs], '.0f')} |"
            )
    return head + "\n".join(rows) + "\n"


def plot(runs: list[HitRun], scenarios: list[str], targets: list[str], path: Path) -> Path:
    """Hit ratio over windows of requests, one panel per scenario, median and min-max per
    target (matplotlib; the caller checks it is there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(scenarios)
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.4 * rows), squeeze=False)
    for ax, sc in zip(axes.flat, scenarios, strict=False):
        for t in targets:
            rs = [r for r in runs if r.scenario == sc and r.target == t and r.error is None]
            if not rs:
                continue
            edges = rs[0].window_edges
            xs = [(a + b) / 2 / 1000 for a, b in zip(edges, edges[1:], strict=False)]
            cols_ = list(zip(*(r.windows for r in rs), strict=True))
            ax.plot(xs, [statistics.median(c) for c in cols_], marker=".", label=t)
            ax.fill_between(xs, [min(c) for c in cols_], [max(c) for c in cols_], alpha=0.2)
        done = [r for r in runs if r.scenario == sc and r.error is None]
        for start in done[0].phase_starts[1:] if done else []:
            ax.axvline(start / 1000, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{sc} (dotted: phase changes)" if done and len(done[0].phase_starts) > 1 else sc, fontsize=9)
        ax.set_xlabel("requests (thousands)")
        ax.set_ylabel("hit ratio")
        ax.set_ylim(0, 1)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle("Hit ratio over time (median and min-max over repetitions)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def describe() -> str:
    """The scenarios, one paragraph each (--list-scenarios)."""
    out = [f"{s.name:14} {s.description}" for s in workloads.SCENARIOS.values()]
    out.append(f"{'(sizes)':14} REALISTIC: {workloads.REALISTIC.name}")
    return "\n".join(out) + "\n"


def main(
    args: argparse.Namespace,
    targets: list[Target],
    topts: TargetOptions,
    command: str,
    plots_why_not: str | None,
) -> int:
    """Run the hit-ratio benchmark as the CLI asked; print the table; 0, or 1 on a failed run."""
    scenarios = args.scenarios or list(workloads.SCENARIOS)
    reps = args.reps or 3
    rate = args.pace or None

    def progress(done: int, total: int, rec: HitRun) -> None:
        if rec.error:
            what = f"FAILED: {rec.error.splitlines()[0]}"
        else:
            what = (
                f"hit ratio {rec.hit_ratio:.3f}, focus {rec.focus_hit_ratio:.3f}, {rec.seconds:.1f} s"
                f" (lag {rec.max_lag_s:.2f} s),"
                f" {rec.cpu_us_per_req or 0:.2f} us/req, foreign {rec.foreign_cpu_s:.1f} s"
            )
        print(f"[{done}/{total}] {rec.scenario} {rec.target} rep {rec.rep + 1}: {what}", file=sys.stderr, flush=True)

    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    with tempfile.TemporaryDirectory(prefix="loadtest-hitratio-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        runs = run_all(
            scenarios,
            targets,
            topts,
            args.seed,
            args.scale,
            reps,
            args.server_cpu,
            rate,
            work,
            args.ready_timeout,
            progress,
        )
    names = [t.name for t in targets]
    host = host_line()
    meta = {
        "command": command,
        "started": started,
        "ended": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": host,
        "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
        "seed": args.seed,
        "scale": args.scale,
        "rate": rate,
        "reps": reps,
        "memory_mb": topts.memory_mb,
        "server_threads": topts.threads,
        "targets": names,
        "scenarios": {s: workloads.SCENARIOS[s].description for s in scenarios},
    }
    if args.json:
        payload = {"meta": meta, "hit_ratio": [r.to_json() for r in runs]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if args.plots:
        if plots_why_not:
            print(f"loadtest: no plot: {plots_why_not}", file=sys.stderr)
        else:
            try:
                path = plot(runs, scenarios, names, args.plots / "hit_ratio_over_time.png")
                print(f"loadtest: wrote {path}", file=sys.stderr)
            except Exception as exc:  # noqa: BLE001 -- a plot must never lose the measurements
                print(f"loadtest: plotting failed: {exc}", file=sys.stderr)
    pace = f"paced at {rate:g} requests/s (calcification's second phase: its own pace)" if rate else "unpaced"
    sys.stdout.write(
        f"Hit ratio, -m {topts.memory_mb} -t {topts.threads}, seed {args.seed}, scale {args.scale:g},"
        f" {reps} repetitions, {pace}; server and client on vCPU {args.server_cpu}."
        " Cells: median (min-max).\n\n"
    )
    sys.stdout.write(table(runs, scenarios, names, args.baseline))
    sys.stdout.write(f"\n{host}\n\ncommand: `{command}`\n")
    failed = [r for r in runs if r.error]
    for r in failed:
        print(f"loadtest: {r.scenario} {r.target} rep {r.rep + 1} failed: {r.error}", file=sys.stderr)
    return 1 if failed else 0
