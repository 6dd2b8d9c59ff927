"""One measured run, and the interleaved schedule of runs that makes a comparison fair.

A run: start a fresh server on a fresh port, pinned; wait until it answers; sample its CPU
time and every CPU's busy time; run memaslap pinned; sample again when memaslap has exited
(the server does no work before or after the load, so this window is the measured
interval).  Server CPU divided by operations is the server's CPU cost per operation; busy
CPU time not used by server or client is foreign load, and a run with more than a
threshold of it (default 1 s per 10 s) is flagged noisy and optionally redone.

A schedule: for each scenario (value size x pinning mode), repetitions of every target in
the same order (A B A B ...), so slow drifts of the host hit all targets alike.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest import memaslap, procstat
from loadtest.targets import (
    PortPicker,
    Server,
    ServerError,
    Target,
    TargetOptions,
    server_command_counts,
)


@dataclass(frozen=True)
class Pinning:
    """Where server and client run: the same CPU ("same") or two CPUs ("split")."""

    mode: str  # "same" or "split"
    server_cpu: int  # CPU the server is pinned to
    client_cpu: int  # CPU memaslap is pinned to


@dataclass(frozen=True)
class Scenario:
    """One workload and placement that all targets are measured under."""

    value_size: int  # bytes per value
    pinning: Pinning  # CPU placement

    @property
    def label(self) -> str:
        size = f"{self.value_size // 1024} KiB" if self.value_size % 1024 == 0 else None
        return f"{size or f'{self.value_size} B'} values, {self.pinning.mode} CPU"


@dataclass(frozen=True)
class Workload:
    """memaslap settings common to every run."""

    memaslap: str  # memaslap binary (memcaslap on Debian)
    key_size: int  # bytes per key
    get_ratio: float  # share of gets, the rest are sets
    duration_s: int  # memaslap -t
    stat_interval_s: int  # memaslap -S
    concurrency: int  # memaslap -c
    threads: int  # memaslap -T
    ready_timeout_s: float  # how long a server may take to answer 'version'


@dataclass
class RunRecord:
    """Everything measured in one run; serialised as is into the JSON file."""

    scenario: str  # Scenario.label
    value_size: int  # bytes per value
    pin_mode: str  # "same" or "split"
    server_cpu: int  # CPU the server ran on
    client_cpu: int  # CPU memaslap ran on
    target: str  # target name
    rep: int  # repetition index, from 0
    attempt: int  # 0, or the redo number for noisy runs
    port: int  # server port
    server_argv: list[str]  # full server command line (with taskset)
    client_argv: list[str]  # full memaslap command line (with taskset)
    started_unix: float  # wall clock at memaslap start
    window_s: float = 0.0  # wall time between the CPU samples (memaslap's life)
    run_time_s: float = 0.0  # memaslap's timed run
    ops: int = 0  # operations memaslap completed in the timed run
    ops_per_s: float = 0.0  # memaslap's TPS
    mean_latency_us: float | None = None  # memaslap's mean latency (whole us)
    p50_le_us: float | None = None  # median latency, upper bound of its log2 bucket
    p99_le_us: float | None = None  # p99 latency, upper bound of its log2 bucket
    p99_gt_us: float | None = None  # p99 latency, lower bound of its log2 bucket
    latency_log2_hist: dict[str, int] = field(default_factory=dict)  # bucket upper us -> n
    get_misses: int | None = None  # memaslap's get_misses
    server_cmds: int | None = None  # cmd_get + cmd_set from the server's stats
    server_cpu_s: float = 0.0  # server utime+stime over the window
    client_cpu_s: float = 0.0  # memaslap utime+stime (rusage)
    server_cpu_us_per_op: float | None = None  # server CPU per operation
    client_cpu_us_per_op: float | None = None  # client CPU per operation
    busy_cpu_s: float = 0.0  # busy time of all CPUs over the window
    foreign_cpu_s: float = 0.0  # busy time not used by server or client, all CPUs
    foreign_pinned_cpu_s: float = 0.0  # the same, on the server's and client's CPUs only
    foreign_per_10s: float = 0.0  # foreign_cpu_s scaled to a 10 s window
    steal_s: float = 0.0  # hypervisor steal over the window, all CPUs
    noisy: bool = False  # foreign_per_10s above the threshold
    kept: bool = True  # used in the summary (False: superseded by a redo)
    error: str | None = None  # why the run failed, if it did

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _run_memaslap(argv: list[str], out_path: Path, timeout: float) -> tuple[int, float]:
    """Run memaslap to completion; return (exit code, its CPU seconds from rusage).

    The harness blocks in wait4() while memaslap runs, so that it takes no CPU time
    during the measurement; a timer thread kills memaslap if it overruns.
    """
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        _, status, usage = os.wait4(proc.pid, 0)
        raise
    finally:
        watchdog.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode == -signal.SIGKILL:
        raise RuntimeError(f"memaslap still running after {timeout:g} s: killed")
    return proc.returncode, usage.ru_utime + usage.ru_stime


def measure(
    target: Target,
    topts: TargetOptions,
    workload: Workload,
    scenario: Scenario,
    config: Path,
    ports: PortPicker,
    workdir: Path,
    rep: int,
    attempt: int,
    noise_threshold: float,
) -> RunRecord:
    """One run of ``target`` under ``scenario``: fresh server, memaslap, CPU accounting."""
    pin = scenario.pinning
    port = ports.next()
    client = [
        "taskset",
        "-c",
        str(pin.client_cpu),
        *memaslap.command(
            workload.memaslap,
            port,
            config,
            workload.duration_s,
            workload.stat_interval_s,
            threads=workload.threads,
            concurrency=workload.concurrency,
        ),
    ]
    tag = f"{target.name}-v{scenario.value_size}-{pin.mode}-r{rep}-a{attempt}"
    server = Server(target.argv(topts, port), pin.server_cpu, port, workdir / f"{tag}.log")
    rec = RunRecord(
        scenario=scenario.label,
        value_size=scenario.value_size,
        pin_mode=pin.mode,
        server_cpu=pin.server_cpu,
        client_cpu=pin.client_cpu,
        target=target.name,
        rep=rep,
        attempt=attempt,
        port=port,
        server_argv=server.argv,
        client_argv=client,
        started_unix=time.time(),
    )
    try:
        server.wait_ready(workload.ready_timeout_s)
        cpu0 = procstat.cpu_snapshot()
        srv0 = procstat.process_cpu_seconds(server.pid)
        t0 = time.monotonic()
        rec.started_unix = time.time()
        out_path = workdir / f"{tag}.out"
        timeout = workload.duration_s + 60.0
        code, client_cpu = _run_memaslap(client, out_path, timeout)
        t1 = time.monotonic()
        srv1 = procstat.process_cpu_seconds(server.pid) if server.alive() else srv0
        cpu1 = procstat.cpu_snapshot()
        output = out_path.read_text(errors="replace")
        if not server.alive():
            raise ServerError(f"server died during the run:\n{server.log_tail()}")
        if code != 0:
            tail = "\n".join(output.strip().splitlines()[-5:])
            raise RuntimeError(f"memaslap exited with {code}:\n{tail}")
        result = memaslap.parse_output(output)
        counts = server_command_counts(port)
        if counts is not None:
            rec.server_cmds = counts["cmd_get"] + counts["cmd_set"]
        _fill(rec, result, t1 - t0, srv1 - srv0, client_cpu, cpu0, cpu1, noise_threshold)
    except (ServerError, RuntimeError, memaslap.MemaslapParseError, OSError) as exc:
        rec.error = str(exc)
        rec.kept = False
    finally:
        server.stop()
    return rec


def _fill(
    rec: RunRecord,
    result: memaslap.MemaslapResult,
    window_s: float,
    server_cpu_s: float,
    client_cpu_s: float,
    cpu0: procstat.CpuSnapshot,
    cpu1: procstat.CpuSnapshot,
    noise_threshold: float,
) -> None:
    cpus = {rec.server_cpu, rec.client_cpu}
    d = procstat.delta(cpu0, cpu1, cpus)
    rec.window_s = window_s
    rec.run_time_s = result.run_time_s
    rec.ops = result.ops
    rec.ops_per_s = float(result.tps)
    rec.mean_latency_us = result.mean_latency_us
    p50 = result.latency_bounds(0.50)
    p99 = result.latency_bounds(0.99)
    rec.p50_le_us = p50[1] if p50 else None
    if p99:
        rec.p99_gt_us, rec.p99_le_us = p99
    rec.latency_log2_hist = {str(2**i): n for i, n in sorted(result.histogram.buckets.items())}
    rec.get_misses = result.get_misses
    rec.server_cpu_s = server_cpu_s
    rec.client_cpu_s = client_cpu_s
    if result.ops > 0:
        rec.server_cpu_us_per_op = server_cpu_s * 1e6 / result.ops
        rec.client_cpu_us_per_op = client_cpu_s * 1e6 / result.ops
    rec.busy_cpu_s = d.busy_total
    # Tick accounting makes small negative values possible on an idle machine.
    rec.foreign_cpu_s = max(0.0, d.busy_total - server_cpu_s - client_cpu_s)
    rec.foreign_pinned_cpu_s = max(0.0, d.busy_on - server_cpu_s - client_cpu_s)
    rec.foreign_per_10s = rec.foreign_cpu_s * 10.0 / window_s if window_s > 0 else 0.0
    rec.steal_s = d.steal_total
    rec.noisy = rec.foreign_per_10s > noise_threshold


@dataclass
class Schedule:
    """What to run: targets x scenarios x repetitions, and how to treat noisy runs."""

    targets: list[Target]  # in the order they alternate
    scenarios: list[Scenario]  # run one after the other
    reps: int  # repetitions per target and scenario
    redo_noisy: int  # extra attempts for a noisy run (0: keep it, flagged)
    noise_threshold: float  # foreign CPU seconds per 10 s that make a run noisy


ProgressFn = Callable[[int, int, RunRecord | None, str], None]


def run_schedule(
    schedule: Schedule,
    topts: TargetOptions,
    workload: Workload,
    progress: ProgressFn,
    records: list[RunRecord],
    workdir: Path | None = None,
) -> None:
    """Run everything, A B A B within each scenario, appending every attempt to
    ``records`` as it completes (so an interrupted schedule leaves what it measured)."""
    ports = PortPicker()
    total = len(schedule.scenarios) * schedule.reps * len(schedule.targets)
    done = 0
    with tempfile.TemporaryDirectory(prefix="loadtest-") as tmp:
        work = workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        configs: dict[int, Path] = {}
        for scenario in schedule.scenarios:
            if scenario.value_size not in configs:
                configs[scenario.value_size] = memaslap.write_config(
                    work, workload.key_size, scenario.value_size, workload.get_ratio
                )
            for rep in range(schedule.reps):
                for target in schedule.targets:
                    what = f"{scenario.label}, rep {rep + 1}/{schedule.reps}, {target.name}"
                    progress(done, total, None, what)
                    attempts: list[RunRecord] = []
                    while True:
                        rec = measure(
                            target,
                            topts,
                            workload,
                            scenario,
                            configs[scenario.value_size],
                            ports,
                            work,
                            rep,
                            len(attempts),
                            schedule.noise_threshold,
                        )
                        attempts.append(rec)
                        if rec.error or not rec.noisy or len(attempts) > schedule.redo_noisy:
                            break
                        progress(done, total, rec, f"{what}: noisy, redoing")
                    _choose_kept(attempts)
                    records.extend(attempts)
                    done += 1
                    kept = [r for r in attempts if r.kept]
                    if kept and kept[0] is not rec:
                        what += f" (all noisy: kept attempt {kept[0].attempt + 1}, the least)"
                    progress(done, total, kept[0] if kept else rec, what)


def _choose_kept(attempts: list[RunRecord]) -> None:
    """Keep one attempt: the last clean one, else the one with the least foreign load."""
    ok = [r for r in attempts if r.error is None]
    for r in attempts:
        r.kept = False
    if ok:
        clean = [r for r in ok if not r.noisy]
        chosen = clean[-1] if clean else min(ok, key=lambda r: r.foreign_per_10s)
        chosen.kept = True


def check_environment(memaslap_bin: str, binaries: list[str]) -> list[str]:
    """Problems that would make every run fail (missing tools), as messages."""
    problems = []
    for tool in ("taskset", memaslap_bin, *binaries):
        if shutil.which(tool) is None and not (os.path.isfile(tool) and os.access(tool, os.X_OK)):
            problems.append(f"not found or not executable: {tool}")
    if sys.platform != "linux":
        problems.append("needs Linux (/proc, taskset)")
    return problems
