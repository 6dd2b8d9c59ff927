"""Summaries of the raw runs, as a console table, a markdown table and JSON.

Per scenario, pass and target: the median and min-max over repetitions of throughput,
server CPU per operation, latency percentiles and syscalls per operation; and against the
baseline (memcached), the median and min-max of the per-repetition ratios (run k of a
target divided by run k of the baseline, which ran next to it), as
../shared/BENCHMARKING.md asks.  Only kept runs count (failed runs and superseded noisy
attempts are in the JSON, marked).  Which columns a table has depends on the generator:
memaslap's percentiles are log2 bucket bounds, mcblast's are within ~3%; an open-loop
table compares latencies at the same offered rate; a syscall-pass table gives strace's
count per operation next to the server's own counter.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtest.runner import RunRecord


@dataclass(frozen=True)
class Spread:
    """Median and range of a set of figures."""

    median: float  # median of the values
    lo: float  # smallest value
    hi: float  # largest value
    n: int  # how many values

    @staticmethod
    def of(values: Sequence[float | None], discrete: bool = False) -> Spread | None:
        """Spread of the non-None values; ``discrete``: the median is one of them.

        Percentiles from memaslap's histogram are bucket bounds (powers of two): the
        mean of two of them is no bound at all, so for them the higher middle value is
        taken (conservative for latency).
        """
        vals = [v for v in values if v is not None]
        if not vals:
            return None
        mid = statistics.median_high(vals) if discrete else statistics.median(vals)
        return Spread(mid, min(vals), max(vals), len(vals))

    def to_json(self) -> dict[str, float]:
        return {"median": self.median, "min": self.lo, "max": self.hi, "n": self.n}


# Figures summarised per target: name -> how to read it from a run.
METRICS: dict[str, Callable[[RunRecord], float | None]] = {
    "ops_per_s": lambda r: r.ops_per_s,
    "cpu_us_per_op": lambda r: r.server_cpu_us_per_op,
    "mean_latency_us": lambda r: r.mean_latency_us,
    "p50_us": lambda r: r.p50_us,
    "p99_us": lambda r: r.p99_us,
    "p999_us": lambda r: r.p999_us,
    "p99_le_us": lambda r: r.p99_le_us,
    "foreign_per_10s": lambda r: r.foreign_per_10s,
    "get_miss_share": lambda r: r.get_misses / r.ops if r.get_misses is not None and r.ops else None,
    "unanswered": lambda r: r.unanswered,
    "stat_syscalls_per_op": lambda r: r.stat_syscalls_per_op,
    "uring_submits_per_op": lambda r: r.uring_submits_per_op,
    "strace_syscalls_per_op": lambda r: r.strace_syscalls_per_op,
    "server_cmds": lambda r: r.server_cmds,
}
# Percentiles that are log2 bucket bounds for memaslap (median taken as one of them).
DISCRETE = {"p50_us", "p99_us", "p999_us", "p99_le_us"}
# Figures also given as paired ratios against the baseline.
RATIOS = {
    "ops_ratio": "ops_per_s",
    "cpu_ratio": "cpu_us_per_op",
    "p99_ratio": "p99_us",
    "syscall_ratio": "strace_syscalls_per_op",
}


@dataclass(frozen=True)
class TargetSummary:
    """One target's figures in one scenario and pass."""

    target: str  # target name
    runs: int  # kept runs
    noisy: int  # kept runs flagged for foreign load
    failed: int  # runs that failed
    metrics: dict[str, Spread | None]  # METRICS name -> spread over kept runs
    ratios: dict[str, Spread | None]  # RATIOS name -> paired ratios to the baseline
    top_syscalls: dict[str, float] = field(default_factory=dict)  # syscall pass: name -> median per op

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target,
            "runs": self.runs,
            "noisy": self.noisy,
            "failed": self.failed,
        }
        for name, spread in [*self.metrics.items(), *self.ratios.items()]:
            out[name] = spread.to_json() if spread else None
        if self.top_syscalls:
            out["top_syscalls_per_op"] = self.top_syscalls
        return out


@dataclass(frozen=True)
class ScenarioSummary:
    """All targets' figures in one scenario and pass."""

    scenario: str  # Scenario.label
    kind: str  # "load" or "syscalls"
    generator: str  # "memaslap" or "mcblast"
    mode: str  # "closed" or "open"
    concurrency: int  # client connections
    depth: int  # requests in flight per connection
    offered_rate: float | None  # open loop: requests per second offered
    value_size: int  # bytes per value
    pin_mode: str  # "same" or "split"
    server_cpu: int  # server's CPU
    client_cpu: int  # client's CPU
    baseline: str | None  # target the ratios are against (None: not measured)
    targets: list[TargetSummary]  # in schedule order

    @property
    def family(self) -> str:
        """The scenario without its concurrency (or rate): what a sweep plots as one line."""
        shape = f"{self.generator} {self.mode}" + (f", depth {self.depth}" if self.generator == "mcblast" else "")
        return f"{shape}, {self.value_size} B values, {self.pin_mode} CPU"

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "kind": self.kind,
            "generator": self.generator,
            "mode": self.mode,
            "concurrency": self.concurrency,
            "depth": self.depth,
            "offered_rate": self.offered_rate,
            "value_size": self.value_size,
            "pin_mode": self.pin_mode,
            "server_cpu": self.server_cpu,
            "client_cpu": self.client_cpu,
            "baseline": self.baseline,
            "targets": [t.to_json() for t in self.targets],
        }


def _paired(mine: list[RunRecord], base: list[RunRecord], value: Callable[[RunRecord], float | None]) -> Spread | None:
    by_rep = {r.rep: r for r in base}
    ratios: list[float | None] = []
    for r in mine:
        b = by_rep.get(r.rep)
        if b is None:
            continue
        x, y = value(r), value(b)
        if x is not None and y:
            ratios.append(x / y)
    return Spread.of(ratios)


def _top_syscalls(mine: list[RunRecord]) -> dict[str, float]:
    """Median calls per operation of the most frequent system calls over the runs."""
    names: dict[str, list[float]] = {}
    for r in mine:
        if not r.server_cmds:
            continue
        for name, n in r.strace_top.items():
            names.setdefault(name, []).append(n / r.server_cmds)
    med = {name: statistics.median(v) for name, v in names.items()}
    return dict(sorted(med.items(), key=lambda kv: -kv[1])[:4])


def summarise(records: list[RunRecord], target_order: list[str], baseline: str) -> list[ScenarioSummary]:
    """Group kept runs by scenario and pass, then target, and reduce them to spreads and ratios."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.scenario, r.kind), []).append(r)
    out = []
    for (label, kind), recs in groups.items():
        kept = [r for r in recs if r.kept and r.error is None]
        base = [r for r in kept if r.target == baseline]
        have_base = baseline in target_order and bool(base)
        first = recs[0]
        rows = []
        for name in target_order:
            mine = [r for r in kept if r.target == name]
            discrete = first.generator == "memaslap"
            metrics = {
                m: Spread.of([get(r) for r in mine], discrete=discrete and m in DISCRETE) for m, get in METRICS.items()
            }
            ratios = {
                ratio: (_paired(mine, base, METRICS[m]) if have_base else None) for ratio, m in RATIOS.items()
            }
            rows.append(
                TargetSummary(
                    target=name,
                    runs=len(mine),
                    noisy=sum(r.noisy for r in mine),
                    failed=sum(1 for r in recs if r.target == name and r.error),
                    metrics=metrics,
                    ratios=ratios,
                    top_syscalls=_top_syscalls(mine) if kind == "syscalls" else {},
                )
            )
        out.append(
            ScenarioSummary(
                scenario=label,
                kind=kind,
                generator=first.generator,
                mode=first.mode,
                concurrency=first.concurrency,
                depth=first.depth,
                offered_rate=first.offered_rate,
                value_size=first.value_size,
                pin_mode=first.pin_mode,
                server_cpu=first.server_cpu,
                client_cpu=first.client_cpu,
                baseline=baseline if have_base else None,
                targets=rows,
            )
        )
    return out


EN_DASH = "\u2013"  # ranges in markdown: "min\u2013max"


# ---- formatting ------------------------------------------------------------------------


def _kilo(v: float) -> str:
    return f"{v / 1000:.1f}k"


def _fmt(spread: Spread | None, fmt: Callable[[float], str], dash: str = "-") -> str:
    if spread is None:
        return "n/a"
    if spread.n == 1 or spread.lo == spread.hi:
        return fmt(spread.median)
    return f"{fmt(spread.median)} ({fmt(spread.lo)}{dash}{fmt(spread.hi)})"


def _us2(v: float) -> str:
    return f"{v:.2f}"


def _us0(v: float) -> str:
    return f"{v:.0f}"


def _us1(v: float) -> str:
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _ratio(v: float) -> str:
    return f"{v:.2f}"


def _per_op(v: float) -> str:
    return f"{v:.3f}" if v < 1 else f"{v:.2f}"


# A column: header (with {mu} for the micro sign, {base} for the baseline) and how to
# render one target's cell; "ratio" columns show 1 for the baseline itself.
Column = tuple[str, Callable[[TargetSummary, str], str], bool]


def _col(metric: str, fmt: Callable[[float], str]) -> Callable[[TargetSummary, str], str]:
    return lambda t, dash: _fmt(t.metrics.get(metric) or t.ratios.get(metric), fmt, dash)


def _columns(s: ScenarioSummary) -> list[Column]:
    runs: Column = ("runs (noisy, failed)", lambda t, _d: f"{t.runs} ({t.noisy}, {t.failed})", False)
    if s.kind == "syscalls":
        return [
            ("syscalls/op (strace)", _col("strace_syscalls_per_op", _per_op), False),
            ("server `syscalls` stat/op", _col("stat_syscalls_per_op", _per_op), False),
            ("uring_submits/op", _col("uring_submits_per_op", _per_op), False),
            ("most frequent, per op", lambda t, _d: _top_text(t), False),
            ("ops traced", _col("server_cmds", _kilo), False),
            ("syscalls/op / {base}", _col("syscall_ratio", _ratio), True),
            runs,
        ]
    if s.generator == "memaslap":
        return [
            ("ops/s", _col("ops_per_s", _kilo), False),
            ("server CPU {mu}s/op", _col("cpu_us_per_op", _us2), False),
            ("mean lat {mu}s", _col("mean_latency_us", _us0), False),
            ("p99 lat {mu}s (log2 bound)", _col("p99_le_us", _us0), False),
            ("server syscalls/op", _col("stat_syscalls_per_op", _per_op), False),
            ("ops/s / {base}", _col("ops_ratio", _ratio), True),
            ("CPU/op / {base}", _col("cpu_ratio", _ratio), True),
            runs,
        ]
    lat = [
        ("p50 {mu}s", _col("p50_us", _us1), False),
        ("p99 {mu}s", _col("p99_us", _us1), False),
        ("p99.9 {mu}s", _col("p999_us", _us1), False),
    ]
    if s.mode == "open":
        return [
            ("achieved ops/s", _col("ops_per_s", _kilo), False),
            *lat,
            ("server CPU {mu}s/op", _col("cpu_us_per_op", _us2), False),
            ("server syscalls/op", _col("stat_syscalls_per_op", _per_op), False),
            ("unanswered", _col("unanswered", _us0), False),
            ("p99 / {base}", _col("p99_ratio", _ratio), True),
            ("CPU/op / {base}", _col("cpu_ratio", _ratio), True),
            runs,
        ]
    return [
        ("ops/s", _col("ops_per_s", _kilo), False),
        ("server CPU {mu}s/op", _col("cpu_us_per_op", _us2), False),
        *lat,
        ("server syscalls/op", _col("stat_syscalls_per_op", _per_op), False),
        ("ops/s / {base}", _col("ops_ratio", _ratio), True),
        ("CPU/op / {base}", _col("cpu_ratio", _ratio), True),
        runs,
    ]


def _top_text(t: TargetSummary) -> str:
    return ", ".join(f"{name} {v:.2f}" for name, v in t.top_syscalls.items()) or "n/a"


def _rows(summary: ScenarioSummary, dash: str, micro: str) -> tuple[list[str], list[list[str]]]:
    base = summary.baseline or "baseline"
    cols = _columns(summary)
    headers = ["target"] + [h.format(mu=micro, base=base) for h, _, _ in cols]
    rows = []
    for t in summary.targets:
        is_base = t.target == summary.baseline and t.runs > 0
        rows.append([t.target] + ["1" if is_ratio and is_base else cell(t, dash) for _, cell, is_ratio in cols])
    return headers, rows


MISS_NOTE_SHARE = 0.005  # get-miss share above which the tables say so


def _miss_notes(summaries: list[ScenarioSummary]) -> list[str]:
    """Warnings for targets whose gets often missed (a miss is cheaper than a hit), and
    open-loop runs that left requests unanswered."""
    notes = []
    for s in summaries:
        for t in s.targets:
            share = t.metrics.get("get_miss_share")
            if s.kind == "load" and share is not None and share.hi > MISS_NOTE_SHARE:
                notes.append(
                    f"{s.scenario}, {t.target}: get misses {share.median:.1%} of operations (up to {share.hi:.1%})"
                )
            lost = t.metrics.get("unanswered")
            if lost is not None and lost.hi > 0:
                notes.append(
                    f"{s.scenario}, {t.target}: up to {lost.hi:.0f} requests unanswered 1 s after the"
                    " window (the server could not keep up: the latencies shown leave them out)"
                )
    return notes


def _heading(s: ScenarioSummary, duration_s: int, syscall_duration_s: int) -> str:
    where = (
        f"server and client on CPU {s.server_cpu}"
        if s.pin_mode == "same"
        else f"server on CPU {s.server_cpu}, client on CPU {s.client_cpu}"
    )
    if s.kind == "syscalls":
        return f"{s.scenario} ({where}): syscall pass, strace -c -f attached, {syscall_duration_s} s per run"
    return f"{s.scenario} ({where}), {duration_s} s per run"


NOTES = {
    "memaslap": "memaslap: p99 is the upper bound B of its power-of-two latency bucket: B/2 < p99 <= B.",
    "mcblast": "mcblast: percentiles from a log-linear histogram (within ~3%).",
    "open": "Open loop: latency from the time each request was due, at the same offered rate for every"
    " target; 'achieved' below the offered rate means the server fell behind.",
    "syscalls": "syscall pass: strace's count over all server threads / the server's cmd_get+cmd_set;"
    " tracing slows the server, so it reports no throughput.",
    "load": "server syscalls/op: stackmapd's own `syscalls` stat / cmd_get+cmd_set, untraced"
    " (memcached has no such counter; see the syscall pass).",
}


def _notes(summaries: list[ScenarioSummary]) -> list[str]:
    kinds = {s.generator for s in summaries} | {s.kind for s in summaries} | {s.mode for s in summaries}
    return [text for key, text in NOTES.items() if key in kinds]


def text_table(summaries: list[ScenarioSummary], duration_s: int, syscall_duration_s: int = 3) -> str:
    """Console tables, one per scenario and pass; cells are "median (min-max)"."""
    blocks = []
    for s in summaries:
        headers, rows = _rows(s, "-", "u")
        widths = [max(len(x) for x in col) for col in zip(headers, *rows, strict=True)]
        lines = [f"== {_heading(s, duration_s, syscall_duration_s)} =="]
        lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
        for row in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        blocks.append("\n".join(lines))
    notes = [
        "Cells: median (min-max) over repetitions; ratios: median (min-max) of paired",
        "per-repetition ratios. noisy: foreign CPU load above the threshold during the run.",
        *_notes(summaries),
    ]
    misses = "".join(f"\nWARNING: {n}" for n in _miss_notes(summaries))
    return "\n\n".join(blocks) + "\n\n" + "\n".join(notes) + misses + "\n"


def _load_text(meta: dict[str, Any]) -> str:
    w = meta["workload"]
    if meta["generator"] == "memaslap":
        return (
            f"`memcaslap -T {w['threads']} -c C -F cfg -t {w['duration_s']}s -S {w['stat_interval_s']}s`"
            f" ({meta['memaslap_version']})"
        )
    shape = "-r RATE -c C" if w.get("rates") else f"-c C -d {w['depth']}"
    return f"our `mcblast {shape} -t {w['duration_s']} -w {w['warmup_s']:g} -K {w['keys']} -P`"


def markdown(summaries: list[ScenarioSummary], meta: dict[str, Any], duration_s: int) -> str:
    """Markdown for the README: tables, the exact command, the conditions."""
    w = meta["workload"]
    parts = []
    for s in summaries:
        headers, rows = _rows(s, EN_DASH, "µ")
        lines = [f"#### {_heading(s, duration_s, w.get('syscall_duration_s', 3))}", ""]
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "|".join("---" for _ in headers) + "|")
        for row in rows:
            lines.append("| " + " | ".join(row) + " |")
        parts.append("\n".join(lines))
    total = sum(t.runs for s in summaries if s.kind == "load" for t in s.targets)
    noisy = sum(t.noisy for s in summaries for t in s.targets)
    conditions = (
        f"Load: {_load_text(meta)}, C = {', '.join(str(c) for c in w['concurrency'])},"
        f" {w['key_size']} B keys,"
        f" {round(w['get_ratio'] * 100)}% get / {round((1 - w['get_ratio']) * 100)}% set;"
        f" servers with `-t {meta['server_threads']} -m {meta['memory_mb']}`, a fresh server"
        f" on a fresh port per run, targets alternated run by run, processes pinned with"
        f" `taskset`. Cells are median (min\u2013max) of {meta['reps']} runs; ratios are the"
        f" median (min\u2013max) of per-repetition ratios against {meta['baseline']}."
        f" Server CPU per op = server utime+stime (/proc) ÷ operations"
        f" ({'memaslap' if meta['generator'] == 'memaslap' else 'the server'}'s count)."
        f" Runs with foreign CPU load above {meta['noise_threshold']:g} s per 10 s:"
        f" {noisy} of {total}. " + " ".join(_notes(summaries))
    )
    machine = (
        f"{meta['host']}. {meta['memcached_version']}; stackmapd at commit {meta['git']};"
        f" {meta['started']}."
    )
    parts.append(conditions + "\n\n" + machine)
    parts.extend(f"Note: {n}." for n in _miss_notes(summaries))
    parts.append("Command:\n\n```\n" + meta["command"] + "\n```")
    return "\n\n".join(parts) + "\n"
