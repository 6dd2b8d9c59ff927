"""Summaries of the raw runs, as a console table, a markdown table and JSON.

Per scenario and target: the median and min-max over repetitions of throughput, server
CPU per operation, mean latency and p99 latency; and against the baseline (memcached),
the median and min-max of the per-repetition ratios (run k of a target divided by run k
of the baseline, which ran next to it), as ../shared/BENCHMARKING.md asks.  Only kept
runs count (failed runs and superseded noisy attempts are in the JSON, marked).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TargetSummary:
    """One target's figures in one scenario."""

    target: str  # target name
    runs: int  # kept runs
    noisy: int  # kept runs flagged for foreign load
    failed: int  # runs that failed
    ops_per_s: Spread | None  # throughput
    cpu_us_per_op: Spread | None  # server CPU per operation
    mean_latency_us: Spread | None  # memaslap's mean latency
    p99_le_us: Spread | None  # p99 upper bounds (log2 buckets)
    foreign_per_10s: Spread | None  # foreign load
    get_miss_share: Spread | None  # get misses / operations (memaslap's count)
    ops_ratio: Spread | None  # paired ops/s ratios to the baseline
    cpu_ratio: Spread | None  # paired CPU/op ratios to the baseline

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target,
            "runs": self.runs,
            "noisy": self.noisy,
            "failed": self.failed,
        }
        for name in (
            "ops_per_s",
            "cpu_us_per_op",
            "mean_latency_us",
            "p99_le_us",
            "foreign_per_10s",
            "get_miss_share",
            "ops_ratio",
            "cpu_ratio",
        ):
            spread = getattr(self, name)
            out[name] = spread.to_json() if spread else None
        return out


@dataclass(frozen=True)
class ScenarioSummary:
    """All targets' figures in one scenario."""

    scenario: str  # Scenario.label
    value_size: int  # bytes per value
    pin_mode: str  # "same" or "split"
    server_cpu: int  # server's CPU
    client_cpu: int  # client's CPU
    baseline: str | None  # target the ratios are against (None: not measured)
    targets: list[TargetSummary]  # in schedule order

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
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


def summarise(records: list[RunRecord], target_order: list[str], baseline: str) -> list[ScenarioSummary]:
    """Group kept runs by scenario and target and reduce them to spreads and ratios."""
    scenarios: dict[str, list[RunRecord]] = {}
    for r in records:
        scenarios.setdefault(r.scenario, []).append(r)
    out = []
    for label, recs in scenarios.items():
        kept = [r for r in recs if r.kept and r.error is None]
        base = [r for r in kept if r.target == baseline]
        have_base = baseline in target_order and bool(base)
        rows = []
        for name in target_order:
            mine = [r for r in kept if r.target == name]
            rows.append(
                TargetSummary(
                    target=name,
                    runs=len(mine),
                    noisy=sum(r.noisy for r in mine),
                    failed=sum(1 for r in recs if r.target == name and r.error),
                    ops_per_s=Spread.of([r.ops_per_s for r in mine]),
                    cpu_us_per_op=Spread.of([r.server_cpu_us_per_op for r in mine]),
                    mean_latency_us=Spread.of([r.mean_latency_us for r in mine]),
                    p99_le_us=Spread.of([r.p99_le_us for r in mine], discrete=True),
                    foreign_per_10s=Spread.of([r.foreign_per_10s for r in mine]),
                    get_miss_share=Spread.of(
                        [r.get_misses / r.ops if r.get_misses is not None and r.ops else None for r in mine]
                    ),
                    ops_ratio=_paired(mine, base, lambda r: r.ops_per_s) if have_base else None,
                    cpu_ratio=(_paired(mine, base, lambda r: r.server_cpu_us_per_op) if have_base else None),
                )
            )
        first = recs[0]
        out.append(
            ScenarioSummary(
                scenario=label,
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


def _ratio(v: float) -> str:
    return f"{v:.2f}"


def _rows(summary: ScenarioSummary, dash: str, micro: str) -> tuple[list[str], list[list[str]]]:
    base = summary.baseline or "baseline"
    headers = [
        "target",
        "ops/s",
        f"server CPU {micro}s/op",
        f"mean lat {micro}s",
        f"p99 lat {micro}s (log2 bound)",
        f"ops/s / {base}",
        f"CPU/op / {base}",
        "runs (noisy, failed)",
    ]
    rows = []
    for t in summary.targets:
        is_base = t.target == summary.baseline
        rows.append(
            [
                t.target,
                _fmt(t.ops_per_s, _kilo, dash),
                _fmt(t.cpu_us_per_op, _us2, dash),
                _fmt(t.mean_latency_us, _us0, dash),
                _fmt(t.p99_le_us, _us0, dash),
                "1" if is_base and t.runs else _fmt(t.ops_ratio, _ratio, dash),
                "1" if is_base and t.runs else _fmt(t.cpu_ratio, _ratio, dash),
                f"{t.runs} ({t.noisy}, {t.failed})",
            ]
        )
    return headers, rows


MISS_NOTE_SHARE = 0.005  # get-miss share above which the tables say so


def _miss_notes(summaries: list[ScenarioSummary]) -> list[str]:
    """Warnings for targets whose gets often missed (a miss is cheaper than a hit)."""
    notes = []
    for s in summaries:
        for t in s.targets:
            share = t.get_miss_share
            if share is not None and share.hi > MISS_NOTE_SHARE:
                notes.append(
                    f"{s.scenario}, {t.target}: get misses {share.median:.1%} of operations (up to {share.hi:.1%})"
                )
    return notes


def _heading(s: ScenarioSummary, duration_s: int) -> str:
    where = (
        f"server and client on CPU {s.server_cpu}"
        if s.pin_mode == "same"
        else f"server on CPU {s.server_cpu}, client on CPU {s.client_cpu}"
    )
    return f"{s.scenario} ({where}), {duration_s} s per run"


def text_table(summaries: list[ScenarioSummary], duration_s: int) -> str:
    """Console tables, one per scenario; cells are "median (min-max)"."""
    blocks = []
    for s in summaries:
        headers, rows = _rows(s, "-", "u")
        widths = [max(len(x) for x in col) for col in zip(headers, *rows, strict=True)]
        lines = [f"== {_heading(s, duration_s)} =="]
        lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
        for row in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        blocks.append("\n".join(lines))
    notes = (
        "Cells: median (min-max) over repetitions; ratios: median (min-max) of paired\n"
        "per-repetition ratios. p99 is the upper bound B of memaslap's power-of-two latency\n"
        "bucket: B/2 < p99 <= B. noisy: foreign CPU load above the threshold during the run."
    )
    misses = "".join(f"\nWARNING: {n}" for n in _miss_notes(summaries))
    return "\n\n".join(blocks) + "\n\n" + notes + misses + "\n"


def markdown(summaries: list[ScenarioSummary], meta: dict[str, Any], duration_s: int) -> str:
    """Markdown for the README: tables, the exact command, the conditions."""
    parts = []
    for s in summaries:
        headers, rows = _rows(s, EN_DASH, "µ")
        lines = [f"#### {_heading(s, duration_s)}", ""]
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "|".join("---" for _ in headers) + "|")
        for row in rows:
            lines.append("| " + " | ".join(row) + " |")
        parts.append("\n".join(lines))
    total = sum(t.runs for s in summaries for t in s.targets)
    noisy = sum(t.noisy for s in summaries for t in s.targets)
    w = meta["workload"]
    conditions = (
        f"Load: `memcaslap -T {w['threads']} -c {w['concurrency']} -F cfg"
        f" -t {w['duration_s']}s -S {w['stat_interval_s']}s` ({meta['memaslap_version']}),"
        f" {w['key_size']} B keys,"
        f" {round(w['get_ratio'] * 100)}% get / {round((1 - w['get_ratio']) * 100)}% set;"
        f" servers with `-t {meta['server_threads']} -m {meta['memory_mb']}`, a fresh server"
        f" on a fresh port per run, targets alternated run by run, processes pinned with"
        f" `taskset`. Cells are median (min\u2013max) of {meta['reps']} runs; ratios are the"
        f" median (min\u2013max) of per-repetition ratios against {meta['baseline']}. p99 is the"
        f" upper bound B of memaslap's power-of-two latency bucket: B/2 < p99 \u2264 B."
        f" Server CPU per op = server utime+stime (/proc) ÷ operations."
        f" Runs with foreign CPU load above {meta['noise_threshold']:g} s per 10 s:"
        f" {noisy} of {total}."
    )
    machine = (
        f"Machine: {meta['nproc']} vCPU, {meta['cpu_model']}, Linux {meta['kernel']},"
        f" {meta['memcached_version']}; stackmapd at commit {meta['git']}; {meta['started']}."
    )
    parts.append(conditions + "\n\n" + machine)
    parts.extend(f"Note: {n}." for n in _miss_notes(summaries))
    parts.append("Command:\n\n```\n" + meta["command"] + "\n```")
    return "\n\n".join(parts) + "\n"
