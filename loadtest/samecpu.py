"""What the two same-CPU A/B modes share: co-run (corun.py) and time-sliced (tslice.py).

Both start a target and a baseline server afresh on one vCPU, load each with its own
pinned memaslap (the command line of an alternated run), and compare the two servers' CPU
per request, each from its own /proc CPU time and its own ``stats`` (cmd_get + cmd_set).
Here: the record fields they have in common, starting the servers and clients, the
interleaved plan of runs, and the pieces of their markdown tables.
"""

from __future__ import annotations

import signal
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from loadtest import memaslap, procstat
from loadtest.runner import Scenario, Workload, client_command
from loadtest.targets import PortPicker, Server, Target, TargetOptions


@dataclass
class PairRecord:
    """One measurement of a target against the baseline on one vCPU (or one set of them:
    ``--server-cpu 0,1`` with ``-t 2`` servers and ``--client-threads 2``)."""

    target: str  # the target measured
    baseline: str  # the target it was compared with
    value_size: int  # bytes per value
    concurrency: int  # memaslap connections per client
    cpu: str  # the vCPUs everything ran on, as taskset -c takes them ("0", "0,1")
    rep: int  # repetition, from 0
    target_ops: int = 0  # requests the target counted (while measured)
    baseline_ops: int = 0  # requests the baseline counted (while measured)
    target_cpu_us_per_op: float | None = None  # target's CPU per request
    baseline_cpu_us_per_op: float | None = None  # baseline's CPU per request
    ratio: float | None = None  # target / baseline CPU per request
    target_argv: list[str] = field(default_factory=list)  # the target's command line
    baseline_argv: list[str] = field(default_factory=list)  # the baseline's command line
    window_s: float = 0.0  # seconds of the measured window
    foreign_cpu_s: float = 0.0  # busy CPU time not used by the four processes
    error: str | None = None  # why the run failed, if it did

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


R = TypeVar("R", bound=PairRecord)


def start_servers(
    target: Target,
    baseline: Target,
    topts: TargetOptions,
    base_topts: TargetOptions,
    cpu: str,
    ports: PortPicker,
    workdir: Path,
    tag: str,
) -> tuple[Server, Server]:
    """Target and baseline, both pinned to ``cpu`` (a taskset CPU list), each on a fresh
    port (not yet ready)."""
    pt, pb = ports.next(), ports.next()
    st = Server(target.argv(topts, pt), cpu, pt, workdir / f"{tag}-target.log")
    try:
        sb = Server(baseline.argv(base_topts, pb), cpu, pb, workdir / f"{tag}-baseline.log")
    except OSError:
        st.stop()
        raise
    return st, sb


def start_client(
    workload: Workload, scenario: Scenario, port: int, config: Path, out: Path, duration_s: int
) -> subprocess.Popen[bytes]:
    """One pinned memaslap, started (the same command line as an alternated run's)."""
    argv = client_command(workload, scenario, port, config, duration_s)
    with open(out, "wb") as fh:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)


def stop_clients(clients: list[subprocess.Popen[bytes]]) -> None:
    """Kill and reap every client still running (resumed first, in case it was stopped)."""
    for c in clients:
        if c.poll() is None:
            c.send_signal(signal.SIGCONT)
            c.kill()
        c.wait()


def ops_between(before: dict[str, int] | None, after: dict[str, int] | None) -> int:
    """cmd_get + cmd_set counted between two ``server_command_counts``."""
    if before is None or after is None:
        raise RuntimeError("a server's stats gave no cmd_get/cmd_set")
    return sum(after[k] - before[k] for k in ("cmd_get", "cmd_set"))


def cpu_list(cpu: str) -> set[int]:
    """The CPUs of a taskset-style list of numbers ("0", "0,1")."""
    return {int(x) for x in cpu.split(",")}


def foreign_cpu_s(before: procstat.CpuSnapshot, after: procstat.CpuSnapshot, cpu: str) -> float:
    """Busy CPU time between two snapshots on the CPUs other than ``cpu``, where the
    servers and clients were pinned: whatever they did not use is foreign."""
    d = procstat.delta(before, after, cpu_list(cpu))
    return max(0.0, d.busy_total - d.busy_on)


def run_plan(
    targets: list[Target],
    values: list[int],
    reps: int,
    workload: Workload,
    workdir: Path,
    once: Callable[[Target, int, int, Path], R],
    title: Callable[[Target], str],
    summary: Callable[[R], str],
    progress: Callable[[int, int, str], None],
) -> list[R]:
    """Every run, values x reps x targets so that repetitions of the targets interleave:
    ``once(target, value size, rep, memaslap config)`` measures one, and a progress line
    says ``title(target)``, the value size, the repetition and ``summary(record)``."""
    configs = {v: memaslap.write_config(workdir, workload.key_size, v, workload.get_ratio) for v in values}
    runs = [(v, rep, t) for v in values for rep in range(reps) for t in targets]
    records: list[R] = []
    for i, (v, rep, t) in enumerate(runs):
        rec = once(t, v, rep, configs[v])
        records.append(rec)
        what = f"failed: {rec.error}" if rec.error else summary(rec)
        progress(i + 1, len(runs), f"{title(t)}, {v} B, rep {rep + 1}/{reps}: {what}")
    return records


def spread(xs: list[float], fmt: str) -> str:
    """A table cell: median (min–max)."""
    return f"{statistics.median(xs):{fmt}} ({min(xs):{fmt}}–{max(xs):{fmt}})"


def ratio_cell(xs: list[float]) -> str:
    """A ratio's table cell: **median** (min–max) of the per-run ratios."""
    return f"**{statistics.median(xs):.3f}** ({min(xs):.3f}–{max(xs):.3f})"


def groups(ok: Sequence[R]) -> list[tuple[int, str, list[R]]]:
    """(value size, target, its records): by value size, then targets in the order they ran."""
    order = list(dict.fromkeys(r.target for r in ok))
    keys = sorted({(r.value_size, r.target) for r in ok}, key=lambda k: (k[0], order.index(k[1])))
    return [(v, t, [r for r in ok if r.value_size == v and r.target == t]) for v, t in keys]


def table_footer(ok: Sequence[PairRecord], method: str, failed: int, command: str, host: str) -> list[str]:
    """Lines under a table: which build is which (two builds of one target), the method, the
    host it ran on (loadtest/host.py), the command line."""
    lines = []
    if any(r.target == r.baseline for r in ok):
        lines += ["", f"Target: `{' '.join(ok[0].target_argv)}`; baseline: `{' '.join(ok[0].baseline_argv)}`."]
    return [*lines, "", method + (f" {failed} runs failed." if failed else ""), "", host, "", "```", command, "```", ""]
