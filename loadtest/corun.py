"""Co-run: a target and the baseline loaded at the same moment on the same vCPU.

Why: on these machines the host has phases (BENCHMARKING.md) that change everything's
speed by 10-60%, sometimes within seconds, so two runs taken one after the other differ
by more than the effects worth measuring (a few percent of CPU per request).  In a
co-run both servers and both memaslap clients are pinned to one vCPU and run at once,
so every host phase hits both alike; the ratio of the two servers' CPU per request is
then stable to about 1% (an A/A co-run of one binary against itself gives 0.99-1.00).

What it measures: each server's CPU seconds (/proc) over the window in which both
clients ran, divided by the requests that server counted (``stats`` cmd_get + cmd_set
before and after).  Only CPU per request is compared.  Throughput is not: the scheduler
shares the vCPU between four tasks, so the two clients' rates say more about fair
sharing than about the servers (use the alternated runs for throughput).  Four tasks on
one vCPU also batch differently from one client and one server, so the absolute figures
differ from an alternated run's; the ratio is what a co-run is for.  Which client starts
first alternates by repetition.  (tslice.py keeps one client and one server on the vCPU
at a time and compares throughput too.)
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loadtest import procstat, samecpu
from loadtest.runner import Pinning, Scenario, Workload
from loadtest.targets import PortPicker, ServerError, Target, TargetOptions, server_command_counts


@dataclass
class CorunRecord(samecpu.PairRecord):
    """One co-run of a target beside the baseline (window_s: the seconds both clients ran)."""


def corun_once(
    target: Target,
    baseline: Target,
    topts: TargetOptions,
    base_topts: TargetOptions,
    workload: Workload,
    value_size: int,
    concurrency: int,
    cpu: str,
    config: Path,
    ports: PortPicker,
    workdir: Path,
    rep: int,
) -> CorunRecord:
    """Start both servers, run both clients at once, and account each server's CPU."""
    rec = CorunRecord(target.name, baseline.name, value_size, concurrency, cpu, rep)
    scenario = Scenario(value_size, Pinning("same", cpu, cpu), "memaslap", concurrency)
    tag = f"corun-{target.name}-v{value_size}-r{rep}"
    st, sb = samecpu.start_servers(target, baseline, topts, base_topts, cpu, ports, workdir, tag)
    pt, pb = st.port, sb.port
    rec.target_argv, rec.baseline_argv = st.argv, sb.argv
    clients: list[subprocess.Popen[bytes]] = []
    try:
        st.wait_ready(workload.ready_timeout_s)
        sb.wait_ready(workload.ready_timeout_s)
        n_t0, n_b0 = server_command_counts(pt), server_command_counts(pb)
        snap0 = procstat.cpu_snapshot()
        c_t0, c_b0 = procstat.process_cpu_seconds(st.pid), procstat.process_cpu_seconds(sb.pid)
        t0 = time.monotonic()
        order = [(pt, "target"), (pb, "baseline")]
        if rep % 2:
            order.reverse()
        for port, who in order:
            out = workdir / f"{tag}-{who}.out"
            clients.append(samecpu.start_client(workload, scenario, port, config, out, workload.duration_s))
        deadline = workload.duration_s + 60.0
        codes = [c.wait(timeout=deadline) for c in clients]
        rec.window_s = time.monotonic() - t0
        c_t1, c_b1 = procstat.process_cpu_seconds(st.pid), procstat.process_cpu_seconds(sb.pid)
        snap1 = procstat.cpu_snapshot()
        if not (st.alive() and sb.alive()):
            raise ServerError("a server died during the co-run")
        if any(codes):
            raise RuntimeError(f"memaslap exited with {codes}")
        rec.target_ops = samecpu.ops_between(n_t0, server_command_counts(pt))
        rec.baseline_ops = samecpu.ops_between(n_b0, server_command_counts(pb))
        if rec.target_ops <= 0 or rec.baseline_ops <= 0:
            raise RuntimeError("a server served no requests")
        rec.target_cpu_us_per_op = (c_t1 - c_t0) * 1e6 / rec.target_ops
        rec.baseline_cpu_us_per_op = (c_b1 - c_b0) * 1e6 / rec.baseline_ops
        rec.ratio = rec.target_cpu_us_per_op / rec.baseline_cpu_us_per_op
        # Clients' CPU is not read per process here: the clients' share is the busy time
        # of the pinned CPU.
        rec.foreign_cpu_s = samecpu.foreign_cpu_s(snap0, snap1, cpu)
    except (ServerError, RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
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
    reps: int,
    workdir: Path,
    progress: Callable[[int, int, str], None],
) -> list[CorunRecord]:
    """Every target beside the baseline, each value size, ``reps`` times, interleaved.

    ``base_topts`` is how the baseline is started: the same options as the targets', or
    another stackmapd build (A/B of two builds: the same target name on both sides)."""
    ports = PortPicker()

    def once(t: Target, v: int, rep: int, config: Path) -> CorunRecord:
        return corun_once(t, baseline, topts, base_topts, workload, v, concurrency, cpu, config, ports, workdir, rep)

    def summary(rec: CorunRecord) -> str:
        return (
            f"{rec.target_cpu_us_per_op:.2f} vs {rec.baseline_cpu_us_per_op:.2f} us/op,"
            f" ratio {rec.ratio:.3f}, foreign {rec.foreign_cpu_s:.2f} s"
        )

    return samecpu.run_plan(
        targets,
        values,
        reps,
        workload,
        workdir,
        once,
        lambda t: f"co-run {t.name} beside {baseline.name}",
        summary,
        progress,
    )


def markdown(records: list[CorunRecord], command: str, duration_s: int, host: str) -> str:
    """The co-run table: per value size and target, CPU per request and the ratio."""
    ok = [r for r in records if r.error is None and r.ratio is not None]
    if not ok:
        return "No co-run succeeded.\n"
    base = ok[0].baseline
    lines = [
        f"#### Co-run beside {base}: memaslap c={ok[0].concurrency}, all four processes on CPU {ok[0].cpu},"
        f" {duration_s} s per run",
        "",
        f"| values | target | target CPU µs/op | {base} CPU µs/op | CPU/op vs {base} | runs |",
        "|---|---|---|---|---|---|",
    ]
    for v, t, rs in samecpu.groups(ok):
        lines.append(
            f"| {v} B | {t} | {samecpu.spread([r.target_cpu_us_per_op or 0.0 for r in rs], '.2f')}"
            f" | {samecpu.spread([r.baseline_cpu_us_per_op or 0.0 for r in rs], '.2f')}"
            f" | {samecpu.ratio_cell([r.ratio or 0.0 for r in rs])} | {len(rs)} |"
        )
    where = "one vCPU" if "," not in ok[0].cpu else f"the same vCPUs ({ok[0].cpu})"
    method = (
        "Each run starts the target and the baseline afresh and runs one memaslap against each at the"
        f" same time, all four pinned to {where}, so host phases hit both servers alike; cells are"
        " median (min–max) over the runs, the ratio is the median of the per-run ratios. Only CPU per"
        " request is compared (throughput there reflects the scheduler's fair share)."
    )
    lines += samecpu.table_footer(ok, method, len(records) - len(ok), command, host)
    return "\n".join(lines)
