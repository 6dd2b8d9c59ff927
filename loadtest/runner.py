"""One measured run, and the interleaved schedule of runs that makes a comparison fair.

A run: start a fresh server on a fresh port, pinned; wait until it answers; read its
``stats`` and sample its CPU time and every CPU's busy time; run the load generator pinned
(memaslap or mcblast); sample again when the generator has exited (the server does no work
before or after the load, so this window is the measured interval) and read ``stats`` again.
Server CPU divided by operations is the server's CPU cost per operation; busy CPU time not
used by server or client is foreign load, and a run with more than a threshold of it
(default 1 s per 10 s) is flagged noisy and optionally redone.

A syscall run (a separate, shorter pass) is the same with ``strace -c -f`` attached to the
server for the generator's lifetime: system calls divided by the operations the server
counted (``cmd_get + cmd_set`` before and after).  Its throughput and CPU are not reported,
since tracing slows the server several times.

A schedule: for each scenario (generator and load shape x value size x pinning mode),
repetitions of every target in the same order (A B A B ...), so slow drifts of the host hit
all targets alike; then, if asked, the syscall pass of that scenario, also alternated.
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

from loadtest import mcblast, memaslap, procstat, syscalls
from loadtest.targets import (
    PortPicker,
    Server,
    ServerError,
    Target,
    TargetOptions,
    server_stats,
)

# Counters read from ``stats`` before and after every run (the ones a server has).
STAT_COUNTERS = ("cmd_get", "cmd_set", "syscalls", "uring_submits", "uring_cqes")
# Most frequent system calls kept per syscall run.
TOP_SYSCALLS = 6


@dataclass(frozen=True)
class Pinning:
    """Where server and client run: the same CPU ("same") or two CPUs ("split")."""

    mode: str  # "same" or "split"
    server_cpu: int | str  # CPU the server is pinned to (a list "0,1" in --tslice/--corun)
    client_cpu: int | str  # CPU the load generator is pinned to


@dataclass(frozen=True)
class Scenario:
    """One workload and placement that all targets are measured under."""

    value_size: int  # bytes per value
    pinning: Pinning  # CPU placement
    generator: str = "memaslap"  # "memaslap" or "mcblast"
    concurrency: int = 64  # client connections
    depth: int = 1  # mcblast closed loop: requests in flight per connection
    rate: float | None = None  # mcblast open loop: requests per second offered

    @property
    def mode(self) -> str:
        """"closed" (a connection waits for its answers) or "open" (fixed rate)."""
        return "open" if self.rate else "closed"

    @property
    def load(self) -> str:
        """The load shape, e.g. "memaslap c=64", "mcblast 16x8", "mcblast 50k/s over 16"."""
        if self.generator == "memaslap":
            return f"memaslap c={self.concurrency}"
        if self.rate:
            return f"mcblast open loop {_rate(self.rate)}/s over {self.concurrency} conns"
        return f"mcblast {self.concurrency}x{self.depth}"

    @property
    def label(self) -> str:
        size = f"{self.value_size // 1024} KiB" if self.value_size % 1024 == 0 else None
        return f"{self.load}, {size or f'{self.value_size} B'} values, {self.pinning.mode} CPU"


def _rate(rate: float) -> str:
    return f"{rate / 1000:g}k" if rate >= 1000 else f"{rate:g}"


@dataclass(frozen=True)
class Workload:
    """Load generator settings common to every run."""

    memaslap: str  # memaslap binary (memcaslap on Debian)
    key_size: int  # bytes per key
    get_ratio: float  # share of gets, the rest are sets
    duration_s: int  # timed run (memaslap -t, mcblast -t)
    stat_interval_s: int  # memaslap -S
    threads: int  # memaslap -T
    ready_timeout_s: float  # how long a server may take to answer 'version'
    mcblast: str = str(mcblast.DEFAULT_BINARY)  # mcblast binary
    warmup_s: float = 1.0  # mcblast -w: unmeasured load before the timed run
    keys: int = 10000  # mcblast -K: key space (stored once before the run, -P)
    strace: str = "strace"  # strace binary, for the syscall pass
    syscall_duration_s: int = 3  # timed run of a syscall pass


@dataclass
class RunRecord:
    """Everything measured in one run; serialised as is into the JSON file."""

    scenario: str  # Scenario.label
    value_size: int  # bytes per value
    pin_mode: str  # "same" or "split"
    server_cpu: int  # CPU the server ran on
    client_cpu: int  # CPU the load generator ran on
    target: str  # target name
    rep: int  # repetition index, from 0
    attempt: int  # 0, or the redo number for noisy runs
    port: int  # server port
    server_argv: list[str]  # full server command line (with taskset)
    client_argv: list[str]  # full load generator command line (with taskset)
    started_unix: float  # wall clock at the generator's start
    kind: str = "load"  # "load" (throughput, CPU, latency) or "syscalls" (strace pass)
    generator: str = "memaslap"  # which load generator produced the figures
    mode: str = "closed"  # "closed" loop or "open" loop (fixed rate)
    concurrency: int = 0  # client connections
    depth: int = 1  # requests in flight per connection (closed loop)
    offered_rate: float | None = None  # open loop: requests per second offered
    window_s: float = 0.0  # wall time between the CPU samples (the generator's life)
    run_time_s: float = 0.0  # the generator's timed run
    ops: int = 0  # operations the generator completed in the timed run
    ops_per_s: float = 0.0  # the generator's throughput figure
    mean_latency_us: float | None = None  # mean latency (memaslap: whole us)
    p50_le_us: float | None = None  # memaslap: median, upper bound of its log2 bucket
    p99_le_us: float | None = None  # memaslap: p99, upper bound of its log2 bucket
    p99_gt_us: float | None = None  # memaslap: p99, lower bound of its log2 bucket
    p50_us: float | None = None  # median latency (memaslap: log2 upper bound; mcblast: ~3%)
    p90_us: float | None = None  # 90th percentile, same resolution
    p99_us: float | None = None  # 99th percentile, same resolution
    p999_us: float | None = None  # 99.9th percentile, same resolution
    latency_log2_hist: dict[str, int] = field(default_factory=dict)  # memaslap: bucket upper us -> n
    get_misses: int | None = None  # the generator's count of gets that found nothing
    unanswered: int | None = None  # mcblast open loop: requests due in the window never answered
    client_errors: int | None = None  # mcblast: unexpected response lines
    server_cmds: int | None = None  # cmd_get + cmd_set the server counted during the run
    server_stats_delta: dict[str, int] = field(default_factory=dict)  # STAT_COUNTERS, after - before
    stat_syscalls_per_op: float | None = None  # the server's own `syscalls` stat / server_cmds
    uring_submits_per_op: float | None = None  # the server's `uring_submits` / server_cmds
    server_cpu_s: float = 0.0  # server utime+stime over the window
    client_cpu_s: float = 0.0  # load generator utime+stime (rusage)
    cpu_ops: int = 0  # operations CPU per op divides by (memaslap: its ops; mcblast: server_cmds)
    server_cpu_us_per_op: float | None = None  # server CPU per operation
    client_cpu_us_per_op: float | None = None  # client CPU per operation
    busy_cpu_s: float = 0.0  # busy time of all CPUs over the window
    foreign_cpu_s: float = 0.0  # busy time not used by server or client, all CPUs
    foreign_pinned_cpu_s: float = 0.0  # the same, on the server's and client's CPUs only
    foreign_per_10s: float = 0.0  # foreign_cpu_s scaled to a 10 s window
    steal_s: float = 0.0  # hypervisor steal over the window, all CPUs
    strace_argv: list[str] = field(default_factory=list)  # syscall pass: strace's command line
    strace_syscalls: int | None = None  # syscall pass: system calls of all server threads
    strace_syscalls_per_op: float | None = None  # strace_syscalls / server_cmds
    strace_top: dict[str, int] = field(default_factory=dict)  # most frequent calls -> count
    noisy: bool = False  # foreign_per_10s above the threshold
    kept: bool = True  # used in the summary (False: superseded by a redo)
    error: str | None = None  # why the run failed, if it did

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _run_client(argv: list[str], out_path: Path, timeout: float) -> tuple[int, float]:
    """Run the load generator to completion; return (exit code, its CPU seconds from rusage).

    The harness blocks in wait4() while the generator runs, so that it takes no CPU time
    during the measurement; a timer thread kills the generator if it overruns.  Its
    standard error goes to a separate file (mcblast's stdout is one JSON line).
    """
    with open(out_path, "wb") as out, open(out_path.with_suffix(".err"), "wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
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
        raise RuntimeError(f"{Path(argv[3]).name} still running after {timeout:g} s: killed")
    return proc.returncode, usage.ru_utime + usage.ru_stime


def client_command(
    workload: Workload, scenario: Scenario, port: int, config: Path | None, duration_s: int
) -> list[str]:
    """The pinned load generator command line for one run."""
    pin = scenario.pinning
    if scenario.generator == "memaslap":
        assert config is not None
        gen = memaslap.command(
            workload.memaslap,
            port,
            config,
            duration_s,
            min(workload.stat_interval_s, duration_s),
            threads=workload.threads,
            concurrency=scenario.concurrency,
        )
    else:
        gen = mcblast.command(
            workload.mcblast,
            port,
            conns=scenario.concurrency,
            depth=scenario.depth,
            rate=scenario.rate,
            duration_s=duration_s,
            warmup_s=workload.warmup_s,
            key_size=workload.key_size,
            value_size=scenario.value_size,
            get_ratio=workload.get_ratio,
            keys=workload.keys,
        )
    return ["taskset", "-c", str(pin.client_cpu), *gen]


def _delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int]:
    if before is None or after is None:
        return {}
    return {k: after[k] - before[k] for k in STAT_COUNTERS if k in before and k in after}


def measure(
    target: Target,
    topts: TargetOptions,
    workload: Workload,
    scenario: Scenario,
    config: Path | None,
    ports: PortPicker,
    workdir: Path,
    rep: int,
    attempt: int,
    noise_threshold: float,
    trace: bool = False,
) -> RunRecord:
    """One run of ``target`` under ``scenario``: fresh server, load, CPU accounting;
    with ``trace``, the syscall pass instead (strace attached, shorter)."""
    pin = scenario.pinning
    port = ports.next()
    duration = workload.syscall_duration_s if trace else workload.duration_s
    client = client_command(workload, scenario, port, config, duration)
    kind = "syscalls" if trace else "load"
    tag = f"{target.name}-{scenario.generator}-c{scenario.concurrency}-v{scenario.value_size}"
    tag += f"-{pin.mode}-{kind}-r{rep}-a{attempt}"
    if scenario.rate:
        tag += f"-rate{scenario.rate:g}"
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
        kind=kind,
        generator=scenario.generator,
        mode=scenario.mode,
        concurrency=scenario.concurrency,
        depth=scenario.depth,
        offered_rate=scenario.rate,
    )
    tracer: syscalls.Tracer | None = None
    try:
        server.wait_ready(workload.ready_timeout_s)
        if trace:
            tracer = syscalls.Tracer(workload.strace, server.pid, workdir / f"{tag}.strace", pin.server_cpu)
            rec.strace_argv = tracer.argv
            tracer.wait_attached()
        stats0 = server_stats(port)
        cpu0 = procstat.cpu_snapshot()
        srv0 = procstat.process_cpu_seconds(server.pid)
        t0 = time.monotonic()
        rec.started_unix = time.time()
        out_path = workdir / f"{tag}.out"
        timeout = duration + workload.warmup_s + 60.0
        code, client_cpu = _run_client(client, out_path, timeout)
        t1 = time.monotonic()
        srv1 = procstat.process_cpu_seconds(server.pid) if server.alive() else srv0
        cpu1 = procstat.cpu_snapshot()
        output = out_path.read_text(errors="replace")
        if not server.alive():
            raise ServerError(f"server died during the run:\n{server.log_tail()}")
        if code != 0:
            err = out_path.with_suffix(".err").read_text(errors="replace")
            tail = "\n".join((output + err).strip().splitlines()[-5:])
            raise RuntimeError(f"{scenario.generator} exited with {code}:\n{tail}")
        stats1 = server_stats(port)
        counts = syscalls.SyscallCounts(total=0)
        if tracer is not None:
            counts = tracer.stop()
            tracer = None
        rec.server_stats_delta = _delta(stats0, stats1)
        d = rec.server_stats_delta
        if "cmd_get" in d and "cmd_set" in d:
            rec.server_cmds = d["cmd_get"] + d["cmd_set"]
        if rec.server_cmds:
            if "syscalls" in d:
                rec.stat_syscalls_per_op = d["syscalls"] / rec.server_cmds
            if "uring_submits" in d:
                rec.uring_submits_per_op = d["uring_submits"] / rec.server_cmds
        if trace:
            rec.strace_syscalls = counts.total
            rec.strace_top = dict(counts.top(TOP_SYSCALLS))
            if rec.server_cmds:
                rec.strace_syscalls_per_op = counts.total / rec.server_cmds
            else:
                raise RuntimeError("the server's stats gave no operation count to divide syscalls by")
        if scenario.generator == "memaslap":
            _fill_memaslap(rec, memaslap.parse_output(output))
        else:
            _fill_mcblast(rec, mcblast.parse_output(output))
        _fill_cpu(rec, t1 - t0, srv1 - srv0, client_cpu, cpu0, cpu1, noise_threshold)
    except (
        ServerError,
        RuntimeError,
        memaslap.MemaslapParseError,
        syscalls.StraceError,
        OSError,
    ) as exc:
        rec.error = str(exc)
        rec.kept = False
    finally:
        if tracer is not None:
            tracer.kill()
        server.stop()
    return rec


def _fill_memaslap(rec: RunRecord, result: memaslap.MemaslapResult) -> None:
    rec.run_time_s = result.run_time_s
    rec.ops = result.ops
    rec.ops_per_s = float(result.tps)
    rec.mean_latency_us = result.mean_latency_us
    p50 = result.latency_bounds(0.50)
    p99 = result.latency_bounds(0.99)
    rec.p50_le_us = p50[1] if p50 else None
    if p99:
        rec.p99_gt_us, rec.p99_le_us = p99
    rec.p50_us = rec.p50_le_us
    rec.p99_us = rec.p99_le_us
    for q, name in ((0.90, "p90_us"), (0.999, "p999_us")):
        bounds = result.latency_bounds(q)
        setattr(rec, name, bounds[1] if bounds else None)
    rec.latency_log2_hist = {str(2**i): n for i, n in sorted(result.histogram.buckets.items())}
    rec.get_misses = result.get_misses
    # memaslap's timed run excludes its start-up, in which it stores nothing: its count.
    rec.cpu_ops = result.ops


def _fill_mcblast(rec: RunRecord, result: mcblast.McblastResult) -> None:
    rec.run_time_s = result.seconds
    rec.ops = result.ops
    rec.ops_per_s = result.ops_per_s
    rec.mean_latency_us = result.mean_us
    rec.p50_us = result.p50_us
    rec.p90_us = result.p90_us
    rec.p99_us = result.p99_us
    rec.p999_us = result.p999_us
    rec.get_misses = result.get_misses
    rec.unanswered = result.unanswered
    rec.client_errors = result.errors
    if result.errors:
        raise RuntimeError(f"mcblast saw {result.errors} unexpected responses")
    # The CPU window also holds mcblast's prefill and warm-up, which its own count leaves
    # out: divide by what the server counted over the same window.
    rec.cpu_ops = rec.server_cmds or 0


def _fill_cpu(
    rec: RunRecord,
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
    rec.server_cpu_s = server_cpu_s
    rec.client_cpu_s = client_cpu_s
    if rec.cpu_ops > 0 and rec.kind == "load":
        rec.server_cpu_us_per_op = server_cpu_s * 1e6 / rec.cpu_ops
        rec.client_cpu_us_per_op = client_cpu_s * 1e6 / rec.cpu_ops
    rec.busy_cpu_s = d.busy_total
    # Tick accounting makes small negative values possible on an idle machine.  (In a
    # syscall pass strace's own CPU counts as foreign: there the figure means little.)
    rec.foreign_cpu_s = max(0.0, d.busy_total - server_cpu_s - client_cpu_s)
    rec.foreign_pinned_cpu_s = max(0.0, d.busy_on - server_cpu_s - client_cpu_s)
    rec.foreign_per_10s = rec.foreign_cpu_s * 10.0 / window_s if window_s > 0 else 0.0
    rec.steal_s = d.steal_total
    rec.noisy = rec.kind == "load" and rec.foreign_per_10s > noise_threshold


@dataclass
class Schedule:
    """What to run: targets x scenarios x repetitions, and how to treat noisy runs."""

    targets: list[Target]  # in the order they alternate
    scenarios: list[Scenario]  # run one after the other
    reps: int  # repetitions per target and scenario (0: no load pass)
    redo_noisy: int  # extra attempts for a noisy run (0: keep it, flagged)
    noise_threshold: float  # foreign CPU seconds per 10 s that make a run noisy
    syscall_reps: int = 0  # syscall-pass repetitions per target and scenario (0: none)

    def planned(self, workload: Workload) -> list[tuple[Scenario, bool, int, Target]]:
        """Every run in order: (scenario, is a syscall run, repetition, target)."""
        out = []
        for scenario in self.scenarios:
            for trace, reps in ((False, self.reps), (True, self.syscall_reps)):
                for rep in range(reps):
                    for target in self.targets:
                        out.append((scenario, trace, rep, target))
        return out


def run_seconds(scenario: Scenario, trace: bool, workload: Workload) -> float:
    """Rough wall time of one run (for the progress line's estimate)."""
    duration = workload.syscall_duration_s if trace else workload.duration_s
    overhead = 2.5 if scenario.generator == "memaslap" else 1.0 + workload.warmup_s
    return duration + overhead + (1.0 if trace else 0.0)


ProgressFn = Callable[[int, int, RunRecord | None, str, float], None]


def run_schedule(
    schedule: Schedule,
    topts: TargetOptions,
    workload: Workload,
    progress: ProgressFn,
    records: list[RunRecord],
    workdir: Path | None = None,
) -> None:
    """Run everything, A B A B within each scenario and pass, appending every attempt to
    ``records`` as it completes (so an interrupted schedule leaves what it measured).

    ``progress(done, total, record or None, what, seconds left)`` is called before and
    after every run."""
    ports = PortPicker()
    plan = schedule.planned(workload)
    left = [run_seconds(s, trace, workload) for s, trace, _, _ in plan]
    total = len(plan)
    with tempfile.TemporaryDirectory(prefix="loadtest-") as tmp:
        work = workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        configs: dict[int, Path] = {}
        for done, (scenario, trace, rep, target) in enumerate(plan):
            config = None
            if scenario.generator == "memaslap":
                if scenario.value_size not in configs:
                    configs[scenario.value_size] = memaslap.write_config(
                        work, workload.key_size, scenario.value_size, workload.get_ratio
                    )
                config = configs[scenario.value_size]
            reps = schedule.syscall_reps if trace else schedule.reps
            what = f"{scenario.label}, {'strace pass' if trace else 'rep'} {rep + 1}/{reps}, {target.name}"
            remaining = sum(left[done:])
            progress(done, total, None, what, remaining)
            attempts: list[RunRecord] = []
            while True:
                rec = measure(
                    target,
                    topts,
                    workload,
                    scenario,
                    config,
                    ports,
                    work,
                    rep,
                    len(attempts),
                    schedule.noise_threshold,
                    trace=trace,
                )
                attempts.append(rec)
                if rec.error or not rec.noisy or len(attempts) > schedule.redo_noisy:
                    break
                progress(done, total, rec, f"{what}: noisy, redoing", remaining)
            _choose_kept(attempts)
            records.extend(attempts)
            kept = [r for r in attempts if r.kept]
            if kept and kept[0] is not rec:
                what += f" (all noisy: kept attempt {kept[0].attempt + 1}, the least)"
            progress(done + 1, total, kept[0] if kept else rec, what, sum(left[done + 1 :]))


def _choose_kept(attempts: list[RunRecord]) -> None:
    """Keep one attempt: the last clean one, else the one with the least foreign load."""
    ok = [r for r in attempts if r.error is None]
    for r in attempts:
        r.kept = False
    if ok:
        clean = [r for r in ok if not r.noisy]
        chosen = clean[-1] if clean else min(ok, key=lambda r: r.foreign_per_10s)
        chosen.kept = True


def check_environment(tools: list[str], binaries: list[str]) -> list[str]:
    """Problems that would make every run fail (missing tools), as messages."""
    problems = []
    for tool in ("taskset", *tools, *binaries):
        if shutil.which(tool) is None and not (os.path.isfile(tool) and os.access(tool, os.X_OK)):
            problems.append(f"not found or not executable: {tool}")
    if sys.platform != "linux":
        problems.append("needs Linux (/proc, taskset)")
    return problems
