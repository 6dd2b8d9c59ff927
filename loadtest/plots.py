"""PNG plots of a run's summaries (matplotlib, the optional ``[bench]`` extra).

- ``throughput_vs_concurrency.png`` and ``p99_vs_concurrency.png``: one panel per load
  family (generator, depth, value size, pinning), median and min-max per target against
  the number of client connections (``--concurrency 8,32,64,128``);
- ``p99_vs_rate.png``: open-loop runs, p50/p99 against offered rate (``--rates``);
- ``cpu_per_op.png``: server CPU per operation per target in every load scenario.

matplotlib is imported only here and only when plots are asked for; without it the
harness prints a note and writes everything else.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtest.report import ScenarioSummary, Spread


def available() -> str | None:
    """None if matplotlib can be imported, else why not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        return f"matplotlib is not installed ({exc}); pip install '.[bench]' for plots"
    return None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _families(
    summaries: list[ScenarioSummary], keep: Callable[[ScenarioSummary], bool]
) -> dict[str, list[ScenarioSummary]]:
    out: dict[str, list[ScenarioSummary]] = {}
    for s in summaries:
        if s.kind == "load" and keep(s):
            out.setdefault(s.family, []).append(s)
    return out


def _series(
    family: list[ScenarioSummary], x: Callable[[ScenarioSummary], float], metric: str
) -> dict[str, tuple[list[float], list[Spread]]]:
    """target -> (x values, spreads), sorted by x."""
    out: dict[str, tuple[list[float], list[Spread]]] = {}
    for s in sorted(family, key=x):
        for t in s.targets:
            spread = t.metrics.get(metric)
            if spread is None:
                continue
            xs, ys = out.setdefault(t.target, ([], []))
            xs.append(x(s))
            ys.append(spread)
    return out


def _sweep_plot(
    plt: Any,
    families: dict[str, list[ScenarioSummary]],
    x: Callable[[ScenarioSummary], float],
    xlabel: str,
    metrics: list[tuple[str, str]],
    ylabel: str,
    scale: float,
    path: Path,
    title: str,
) -> Path | None:
    if not families:
        return None
    n = len(families)
    fig, axes = plt.subplots(n, 1, figsize=(7, 3.6 * n), squeeze=False)
    for ax, (name, family) in zip(axes[:, 0], families.items(), strict=True):
        for metric, suffix in metrics:
            for target, (xs, spreads) in _series(family, x, metric).items():
                med = [sp.median * scale for sp in spreads]
                err = [
                    [(sp.median - sp.lo) * scale for sp in spreads],
                    [(sp.hi - sp.median) * scale for sp in spreads],
                ]
                ax.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=f"{target}{suffix}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ticks = sorted({x(s) for s in family})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cpu_plot(plt: Any, summaries: list[ScenarioSummary], path: Path) -> Path | None:
    load = [s for s in summaries if s.kind == "load"]
    if not load:
        return None
    targets = [t.target for t in load[0].targets]
    width = 0.8 / max(1, len(targets))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(load) + 2), 4.2))
    for i, target in enumerate(targets):
        xs, med, lo, hi = [], [], [], []
        for j, s in enumerate(load):
            row = next((t for t in s.targets if t.target == target), None)
            spread = row.metrics.get("cpu_us_per_op") if row else None
            if spread is None:
                continue
            xs.append(j + (i - (len(targets) - 1) / 2) * width)
            med.append(spread.median)
            lo.append(spread.median - spread.lo)
            hi.append(spread.hi - spread.median)
        ax.bar(xs, med, width, yerr=[lo, hi], capsize=3, label=target)
    ax.set_xticks(range(len(load)))
    ax.set_xticklabels([s.scenario.replace(", ", "\n") for s in load], fontsize=7)
    ax.set_ylabel("server CPU µs per operation")
    ax.set_title("Server CPU per operation (median, min-max)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(summaries: list[ScenarioSummary], outdir: Path) -> list[Path]:
    """Write every plot the summaries allow into ``outdir``; return the files written."""
    plt = _pyplot()
    outdir.mkdir(parents=True, exist_ok=True)

    def conc(s: ScenarioSummary) -> float:
        return float(s.concurrency)

    def rate(s: ScenarioSummary) -> float:
        return float(s.offered_rate or 0)

    closed = _families(summaries, lambda s: s.mode == "closed")
    opened = _families(summaries, lambda s: s.mode == "open")
    written = [
        _sweep_plot(
            plt,
            closed,
            conc,
            "client connections",
            [("ops_per_s", "")],
            "k ops/s",
            1e-3,
            outdir / "throughput_vs_concurrency.png",
            "Throughput against concurrency (median, min-max)",
        ),
        _sweep_plot(
            plt,
            closed,
            conc,
            "client connections",
            [("p99_us", "")],
            "p99 latency, µs",
            1.0,
            outdir / "p99_vs_concurrency.png",
            "p99 latency against concurrency (memaslap: log2 bucket bound)",
        ),
        _sweep_plot(
            plt,
            opened,
            rate,
            "offered requests per second",
            [("p99_us", " p99"), ("p50_us", " p50")],
            "latency, µs (from intended send time)",
            1.0,
            outdir / "p99_vs_rate.png",
            "Open loop: latency against offered rate",
        ),
        _cpu_plot(plt, summaries, outdir / "cpu_per_op.png"),
    ]
    return [p for p in written if p is not None]
