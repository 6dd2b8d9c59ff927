"""Time-sliced A/B: a target and the baseline take turns on one vCPU, a slice at a time.

Why: on these machines the host has speed phases (BENCHMARKING.md), so runs taken one
after the other differ by 10-30%.  A co-run (corun.py) shares the phases but puts four
busy tasks on one vCPU, which changes how a server that sleeps in batches behaves (the
uring backend's batch wait): its figures are not those of one client and one server.
A time-sliced A/B keeps the dynamics of an alternated run and still shares the phases:
both servers and one memaslap each are pinned to the same vCPU, but only one memaslap
runs at a time (the other is stopped with SIGSTOP), and they swap every slice (0.5 s by
default).  In each slice one server and its client own the vCPU, as in an alternated
run; host phases, which last seconds, fall on both sides' slices alike.

What it measures: each server's CPU (/proc utime+stime) and requests (``stats`` cmd_get +
cmd_set), read at the start and end of each of its own slices and summed over them, so a
server's CPU per request and throughput come from its own slices only.  Throughput is
compared too (unlike in a co-run): in a slice one pair has the CPU to itself.  At a swap
the next client is resumed before the current one is stopped, so the vCPU never idles
(stackmapd's uring backend stops batching when its CPU shows idle time).  Before the
slices are measured each side runs alone for a while (WARMUP_S) to start memaslap and
fill the cache; which side warms up first alternates by repetition.  An A/A run (one
binary against itself) gave ratios of 0.97-1.02 on the project's 2-vCPU machine.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loadtest import procstat, samecpu
from loadtest.runner import Pinning, Scenario, Workload
from loadtest.targets import PortPicker, Server, ServerError, Target, TargetOptions, server_command_counts

# Seconds each side runs alone before the measured slices (memaslap start-up, cache fill).
WARMUP_S = 2.0
# Seconds a client's timed run (-t) has beyond the warm-up and the measured slices.
CLIENT_SLACK_S = 30


@dataclass
class TsliceRecord(samecpu.PairRecord):
    """One time-sliced A/B of a target against the baseline (window_s: all measured slices).

    Ops and CPU are over each side's own slices only."""

    slice_s: float = 0.0  # seconds per slice
    slices: int = 0  # measured slices per side
    target_s: float = 0.0  # seconds of the target's slices (between its stats reads)
    baseline_s: float = 0.0  # seconds of the baseline's slices
    target_ops_per_s: float | None = None  # target_ops / target_s
    baseline_ops_per_s: float | None = None  # baseline_ops / baseline_s
    throughput_ratio: float | None = None  # target / baseline ops per second


@dataclass
class _Side:
    """One server and its client, with what the server did in its own slices."""

    server: Server  # the server, pinned
    client: subprocess.Popen[bytes]  # its memaslap, pinned to the same vCPU
    cpu_s: float = 0.0  # server CPU seconds over its slices
    ops: int = 0  # requests the server counted over its slices
    seconds: float = 0.0  # wall time of its slices


def _swap(running: _Side, waiting: _Side) -> None:
    """Resume the waiting client, then stop the running one: the vCPU never idles."""
    waiting.client.send_signal(signal.SIGCONT)
    running.client.send_signal(signal.SIGSTOP)


def _measure_slice(side: _Side, slice_s: float) -> None:
    """Let ``side``'s client run one slice; add its server's CPU, requests and time."""
    cpu0 = procstat.process_cpu_seconds(side.server.pid)
    n0 = server_command_counts(side.server.port)
    t0 = time.monotonic()
    time.sleep(slice_s)
    cpu1 = procstat.process_cpu_seconds(side.server.pid)
    n1 = server_command_counts(side.server.port)
    side.seconds += time.monotonic() - t0
    side.cpu_s += cpu1 - cpu0
    side.ops += samecpu.ops_between(n0, n1)


def _fill(rec: TsliceRecord, target: _Side, baseline: _Side) -> None:
    """Per-request CPU, throughput and their ratios from the two sides' sums."""
    if target.ops <= 0 or baseline.ops <= 0:
        raise RuntimeError("a server served no requests in its slices")
    if target.cpu_s <= 0 or baseline.cpu_s <= 0:
        raise RuntimeError("a server used no measurable CPU in its slices")
    rec.target_ops, rec.baseline_ops = target.ops, baseline.ops
    rec.target_s, rec.baseline_s = target.seconds, baseline.seconds
    rec.target_cpu_us_per_op = target.cpu_s * 1e6 / target.ops
    rec.baseline_cpu_us_per_op = baseline.cpu_s * 1e6 / baseline.ops
    rec.ratio = rec.target_cpu_us_per_op / rec.baseline_cpu_us_per_op
    rec.target_ops_per_s = target.ops / target.seconds
    rec.baseline_ops_per_s = baseline.ops / baseline.seconds
    rec.throughput_ratio = rec.target_ops_per_s / rec.baseline_ops_per_s


def tslice_once(
    target: Target,
    baseline: Target,
    topts: TargetOptions,
    base_topts: TargetOptions,
    workload: Workload,
    value_size: int,
    concurrency: int,
    cpu: str,
    slice_s: float,
    config: Path,
    ports: PortPicker,
    workdir: Path,
    rep: int,
) -> TsliceRecord:
    """Start both servers and clients on ``cpu``, warm each side, then measure
    ``workload.duration_s`` seconds of slices per side."""
    rec = TsliceRecord(target.name, baseline.name, value_size, concurrency, cpu, rep, slice_s=slice_s)
    rec.slices = max(1, round(workload.duration_s / slice_s))
    scenario = Scenario(value_size, Pinning("same", cpu, cpu), "memaslap", concurrency)
    tag = f"tslice-{target.name}-v{value_size}-r{rep}"
    st, sb = samecpu.start_servers(target, baseline, topts, base_topts, cpu, ports, workdir, tag)
    rec.target_argv, rec.baseline_argv = st.argv, sb.argv
    clients: list[subprocess.Popen[bytes]] = []
    # A stopped client's -t clock runs on: it must outlast the warm-up and every slice.
    client_s = 2 * workload.duration_s + CLIENT_SLACK_S
    try:
        st.wait_ready(workload.ready_timeout_s)
        sb.wait_ready(workload.ready_timeout_s)
        sides: dict[str, _Side] = {}
        order = [(st, "target"), (sb, "baseline")]
        if rep % 2:
            order.reverse()
        for server, who in order:
            out = workdir / f"{tag}-{who}.out"
            clients.append(samecpu.start_client(workload, scenario, server.port, config, out, client_s))
            sides[who] = _Side(server, clients[-1])
        first, second = sides[order[0][1]], sides[order[1][1]]
        second.client.send_signal(signal.SIGSTOP)
        time.sleep(WARMUP_S)
        _swap(first, second)
        time.sleep(WARMUP_S)

        running, waiting = second, first
        snap0 = procstat.cpu_snapshot()
        t0 = time.monotonic()
        for _ in range(2 * rec.slices):
            _measure_slice(running, slice_s)
            _swap(running, waiting)
            running, waiting = waiting, running
        rec.window_s = time.monotonic() - t0
        snap1 = procstat.cpu_snapshot()

        if not (st.alive() and sb.alive()):
            raise ServerError("a server died during the time-sliced run")
        codes = [c.poll() for c in clients]
        if any(code is not None for code in codes):
            raise RuntimeError(f"memaslap ended before the slices did (exit codes {codes})")
        _fill(rec, sides["target"], sides["baseline"])
        rec.foreign_cpu_s = samecpu.foreign_cpu_s(snap0, snap1, cpu)
    except (ServerError, RuntimeError, OSError) as exc:
        rec.error = str(exc)
    finally:
        samecpu.stop_clients(clients)
        st.stop()
        sb.stop()
    return rec


def run(
    targets: list[Target],
    baseline: Target,
    topts: TargetOptions,
    base_topts: TargetOptions,
    workload: Workload,
    values: list[int],
    concurrency: int,
    cpu: str,
    slice_s: float,
    reps: int,
    workdir: Path,
    progress: Callable[[int, int, str], None],
) -> list[TsliceRecord]:
    """Every target against the baseline, each value size, ``reps`` times, interleaved.

    ``base_topts`` is how the baseline is started: the same options as the targets', or
    another stackmapd build (A/B of two builds: the same target name on both sides)."""
    ports = PortPicker()

    def once(t: Target, v: int, rep: int, config: Path) -> TsliceRecord:
        return tslice_once(
            t, baseline, topts, base_topts, workload, v, concurrency, cpu, slice_s, config, ports, workdir, rep
        )

    def summary(rec: TsliceRecord) -> str:
        return (
            f"{rec.target_cpu_us_per_op:.2f} vs {rec.baseline_cpu_us_per_op:.2f} us/op, ratio {rec.ratio:.3f};"
            f" {(rec.target_ops_per_s or 0) / 1000:.1f}k vs {(rec.baseline_ops_per_s or 0) / 1000:.1f}k ops/s,"
            f" ratio {rec.throughput_ratio:.3f}; foreign {rec.foreign_cpu_s:.2f} s"
        )

    return samecpu.run_plan(
        targets,
        values,
        reps,
        workload,
        workdir,
        once,
        lambda t: f"time-sliced {t.name} against {baseline.name}",
        summary,
        progress,
    )


def markdown(records: list[TsliceRecord], command: str, duration_s: int, host: str) -> str:
    """The time-sliced table: per value size and target, CPU per request, throughput, ratios."""
    ok = [r for r in records if r.error is None and r.ratio is not None and r.throughput_ratio is not None]
    if not ok:
        return "No time-sliced run succeeded.\n"
    base, first = ok[0].baseline, ok[0]
    lines = [
        f"#### Time-sliced A/B against {base}: memaslap c={first.concurrency}, servers and clients on CPU"
        f" {first.cpu}, {first.slice_s:g} s slices, {duration_s} s per side per run",
        "",
        f"| values | target | target CPU µs/op | {base} CPU µs/op | CPU/op vs {base}"
        f" | target kops/s | {base} kops/s | ops/s vs {base} | runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v, t, rs in samecpu.groups(ok):
        lines.append(
            f"| {v} B | {t} | {samecpu.spread([r.target_cpu_us_per_op or 0.0 for r in rs], '.2f')}"
            f" | {samecpu.spread([r.baseline_cpu_us_per_op or 0.0 for r in rs], '.2f')}"
            f" | {samecpu.ratio_cell([r.ratio or 0.0 for r in rs])}"
            f" | {samecpu.spread([(r.target_ops_per_s or 0.0) / 1000 for r in rs], '.1f')}"
            f" | {samecpu.spread([(r.baseline_ops_per_s or 0.0) / 1000 for r in rs], '.1f')}"
            f" | {samecpu.ratio_cell([r.throughput_ratio or 0.0 for r in rs])} | {len(rs)} |"
        )
    where = "one vCPU" if "," not in first.cpu else f"the same vCPUs ({first.cpu})"
    method = (
        f"Each run starts the target and the baseline afresh, both pinned to {where} with one memaslap"
        " each; only one memaslap runs at a time (the other is stopped with SIGSTOP) and they swap"
        f" every {first.slice_s:g} s, the next resumed before the current is stopped, so in each slice"
        f" one server and its client own {where}, as in an alternated run, while host phases fall on"
        f" both sides alike. After {WARMUP_S:g} s of warm-up per side, each server's CPU (/proc) and"
        " requests (its stats) are summed over its own slices only. Cells are median (min–max) over"
        " the runs, ratios the median of the per-run ratios (throughput included: in a slice one pair"
        " has the CPU to itself)."
    )
    lines += samecpu.table_footer(ok, method, len(records) - len(ok), command, host)
    return "\n".join(lines)
