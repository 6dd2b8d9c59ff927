"""Command line of ``python -m loadtest``: choose targets and scenarios, run, report.

Typical use (the README's tables; see loadtest/README.md for all of them):

    python -m loadtest --targets memcached,stackmapd-epoll,stackmapd-uring --values 64,1024 \\
        --pin same --duration 10 --reps 5 --redo-noisy 2 --json bench.json --markdown
    python -m loadtest --generator mcblast --concurrency 16 --depth 8 ...   # pipelined
    python -m loadtest --generator mcblast --rates 20k,50k ...              # open loop
    ... --syscalls (add a strace pass) / --syscalls-only, --plots DIR
    python -m loadtest --corun ... / --tslice ...   # target and baseline on one vCPU (A/B)
    python -m loadtest --hit-ratio [--scenarios scan,ttl]   # hit ratio per workload (hitratio.py)

Progress goes to stderr, the table (console or markdown) to stdout, every raw run to the
JSON file.  ``--quick`` is a 2-second, one-repetition smoke run (used by the tests); its
figures mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest import __version__, corun, hitratio, host, mcblast, plots, report, tslice, workloads
from loadtest.runner import (
    Pinning,
    RunRecord,
    Scenario,
    Schedule,
    Workload,
    check_environment,
    run_schedule,
)
from loadtest.targets import (
    DEFAULT_MEMCACHED,
    DEFAULT_STACKMAPD,
    REPO_ROOT,
    TARGETS,
    Target,
    TargetOptions,
    backend_flag_for,
    default_stackmapd,
)

QUICK_DURATION_S = 2
# --hit-ratio: item memory (-m, MiB) and pacing (requests/s) unless told otherwise.
HIT_RATIO_MEMORY_MB = 64
DEFAULT_PACE = 25000.0
# Seconds per slice of a time-sliced A/B (--tslice) when --slice is not given.
DEFAULT_SLICE_S = 0.5


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    try:
        out = [int(x) for x in _csv(text)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad list of integers: {text!r}") from exc
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"need positive integers: {text!r}")
    return out


def _rates(text: str) -> list[float]:
    out = []
    for item in _csv(text):
        low = item.lower()
        mult = 1000.0 if low.endswith("k") else 1e6 if low.endswith("m") else 1.0
        try:
            value = float(low.rstrip("km")) * mult
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad rate: {item!r}") from exc
        if value <= 0:
            raise argparse.ArgumentTypeError(f"rate must be positive: {item!r}")
        out.append(value)
    return out


# Client connections when --concurrency is not given.
DEFAULT_CONCURRENCY = {"memaslap": 64, "mcblast": 16}


def _sizes(text: str) -> list[int]:
    out = []
    for item in _csv(text):
        mult = 1
        low = item.lower()
        if low.endswith(("k", "kib", "kb")):
            mult, low = 1024, low.rstrip("bi").rstrip("k")
        try:
            value = int(low) * mult
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad size: {item!r}") from exc
        if value <= 0:
            raise argparse.ArgumentTypeError(f"size must be positive: {item!r}")
        out.append(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="memaslap (or our mcblast) side by side: stackmapd targets against memcached,"
        " pinned, alternated, with server CPU and syscalls per operation and foreign-load checks.",
    )
    p.add_argument(
        "--targets",
        type=_csv,
        default=["memcached", "stackmapd-epoll"],
        help="comma-separated targets, alternated in this order"
        " (default memcached,stackmapd-epoll; see --list-targets)",
    )
    p.add_argument("--list-targets", action="store_true", help="list targets and exit")
    p.add_argument("--baseline", default="memcached", help="target ratios are against")
    same_cpu = p.add_mutually_exclusive_group()
    same_cpu.add_argument(
        "--corun",
        action="store_true",
        help="co-run: each target and the baseline loaded at the same time on --server-cpu"
        " (memaslap, two clients), comparing CPU per request under the same host conditions",
    )
    same_cpu.add_argument(
        "--tslice",
        action="store_true",
        help="time-sliced A/B: each target and the baseline on --server-cpu, their two memaslaps"
        " taking turns every --slice seconds; CPU per request and throughput over each side's own"
        " slices (--duration seconds of slices per side)",
    )
    p.add_argument(
        "--cpus",
        default=None,
        metavar="LIST",
        help="--corun/--tslice: pin both servers and their clients to these CPUs (e.g. 0,1 with"
        " --server-threads 2 --client-threads 2: a worker per vCPU); default --server-cpu",
    )
    p.add_argument(
        "--slice",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"--tslice: seconds per slice ({DEFAULT_SLICE_S:g})",
    )
    p.add_argument(
        "--baseline-stackmapd",
        default=None,
        help="--corun, --tslice: start the baseline from this stackmapd (or build/smd) instead;"
        " with --targets T --baseline T this compares two builds of one backend",
    )
    p.add_argument("--values", type=_sizes, default=[64, 1024], help="value sizes, e.g. 64,1k")
    p.add_argument("--key-size", type=int, default=64, help="key size in bytes (64)")
    p.add_argument("--get-ratio", type=float, default=0.9, help="share of gets (0.9)")
    p.add_argument(
        "--pin",
        choices=("same", "split", "both"),
        default="same",
        help="same: server and client on --server-cpu; split: client on --client-cpu",
    )
    p.add_argument("--server-cpu", type=int, default=0, help="CPU for the server (0)")
    p.add_argument("--client-cpu", type=int, default=1, help="client CPU in split mode (1)")
    p.add_argument("--duration", type=int, default=None, help="seconds per run (10)")
    p.add_argument("--reps", type=int, default=None, help="repetitions per target (5; --hit-ratio: 3)")
    p.add_argument("--stat-interval", type=int, default=None, help="memaslap -S seconds (= duration)")
    p.add_argument(
        "--generator",
        choices=("memaslap", "mcblast"),
        default="memaslap",
        help="load generator: memaslap (the reference) or mcblast (ours: pipelined, open loop)",
    )
    p.add_argument(
        "--concurrency",
        type=_ints,
        default=None,
        help="client connections, a comma-separated list is a sweep (memaslap 64, mcblast 16)",
    )
    p.add_argument("--depth", type=int, default=8, help="mcblast: requests in flight per connection (8)")
    p.add_argument(
        "--rates",
        type=_rates,
        default=None,
        help="mcblast open loop: offered requests/s over all connections, e.g. 20k,50k"
        " (latency from each request's due time; without it, closed loop at --depth)",
    )
    p.add_argument("--warmup", type=float, default=None, help="mcblast: unmeasured seconds first (1)")
    p.add_argument("--keys", type=int, default=10000, help="mcblast: key space, stored before the run (10000)")
    p.add_argument(
        "--mcblast",
        type=Path,
        default=mcblast.DEFAULT_BINARY,
        help="mcblast binary (default build/mcblast, built from loadtest/mcblast.c if missing or older)",
    )
    p.add_argument(
        "--syscalls",
        action="store_true",
        help="after each scenario, a syscall pass: strace -c -f on the server, syscalls per operation",
    )
    p.add_argument("--syscalls-only", action="store_true", help="only the syscall pass (no throughput runs)")
    p.add_argument("--syscall-duration", type=int, default=None, help="seconds per syscall run (3)")
    p.add_argument("--syscall-reps", type=int, default=1, help="syscall runs per target and scenario (1)")
    p.add_argument("--strace", default="strace", help="strace executable")
    p.add_argument("--plots", type=Path, default=None, metavar="DIR", help="write PNG plots here (matplotlib)")
    p.add_argument("--client-threads", type=int, default=1, help="memaslap -T (1)")
    p.add_argument("--server-threads", type=int, default=1, help="server -t (1)")
    p.add_argument(
        "--memory-mb",
        type=int,
        default=None,
        help="server -m, MiB (1024, so that gets hit: with memcached's default of 64, items"
        f" are evicted within a 10 s run of 1 KiB values and many gets miss; --hit-ratio: {HIT_RATIO_MEMORY_MB})",
    )
    hit = p.add_argument_group("hit ratio (--hit-ratio; loadtest/hitratio.py, loadtest/workloads.py)")
    hit.add_argument(
        "--hit-ratio",
        action="store_true",
        help="replay seeded look-aside workloads against every target at the same -m: hit ratio,"
        " memory per item, CPU per request, per scenario",
    )
    hit.add_argument(
        "--scenarios",
        type=_csv,
        default=None,
        help="comma-separated scenarios (default: all; see --list-scenarios)",
    )
    hit.add_argument("--list-scenarios", action="store_true", help="describe the scenarios and exit")
    hit.add_argument("--seed", type=int, default=1, help="workload seed (1)")
    hit.add_argument(
        "--scale", type=float, default=1.0, help="multiply request counts (1.0; the scan's sweep stays 2x memory)"
    )
    hit.add_argument(
        "--pace",
        type=float,
        default=DEFAULT_PACE,
        metavar="REQ_PER_S",
        help=f"send requests at this rate, so time-dependent eviction and TTLs line up across servers"
        f" ({DEFAULT_PACE:g}; 0: as fast as possible)",
    )
    p.add_argument("--host-line", action="store_true", help="print the host line (CPU, clock, kernel, vulnerabilities)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_DURATION_S} s, 1 repetition (figures are meaningless)",
    )
    p.add_argument(
        "--noise-threshold",
        type=float,
        default=1.0,
        help="foreign CPU seconds per 10 s that flag a run as noisy (1.0)",
    )
    p.add_argument(
        "--redo-noisy",
        type=int,
        nargs="?",
        const=2,
        default=0,
        metavar="N",
        help="redo a noisy run up to N times (N=2 if given without a value)",
    )
    p.add_argument(
        "--stackmapd",
        default=None,
        help=f"stackmapd executable, or build/smd (default {DEFAULT_STACKMAPD}, else the one"
        " next to this Python, else on PATH)",
    )
    p.add_argument(
        "--backend-flag",
        default=None,
        help="option that selects stackmapd's backend (default: -B for an executable named"
        " smd*, the bare C driver; --backend otherwise)",
    )
    p.add_argument("--memcached", default=DEFAULT_MEMCACHED, help="memcached executable")
    p.add_argument("--memaslap", default="memcaslap", help="memaslap executable (memcaslap)")
    p.add_argument("--ready-timeout", type=float, default=15.0, help="server start-up limit, s")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write raw runs")
    p.add_argument("--markdown", action="store_true", help="print markdown tables")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep generator outputs, configs, strace summaries and server logs here (default: temporary)",
    )
    p.add_argument("--version", action="version", version=f"loadtest {__version__}")
    return p


def _tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _command_line(argv: list[str]) -> str:
    return shlex.join(["python", "-m", "loadtest", *argv])


class Progress:
    """One status line on stderr: rewritten in place on a terminal, appended otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int, rec: RunRecord | None, what: str, left_s: float) -> None:
        head = f"[{done}/{total}, ~{left_s / 60:.1f} min left] {what}"
        if rec is None:
            if self.tty:
                sys.stderr.write(f"\r\x1b[K{head}: running")
                sys.stderr.flush()
            return
        if rec.error:
            first = rec.error.splitlines()[0] if rec.error else ""
            line = f"{head}: FAILED: {first}"
        elif rec.kind == "syscalls":
            per_op = rec.strace_syscalls_per_op or 0.0
            top = ", ".join(f"{k} {v}" for k, v in list(rec.strace_top.items())[:3])
            line = f"{head}: {per_op:.3f} syscalls/op over {rec.server_cmds or 0} ops ({top})"
        else:
            flag = "  NOISY" if rec.noisy else ""
            cpu = rec.server_cpu_us_per_op or 0.0
            lat = f", p99 {rec.p99_us:.0f} us" if rec.p99_us is not None else ""
            line = (
                f"{head}: {rec.ops_per_s / 1000:.1f}k ops/s{lat}, {cpu:.2f} us/op server CPU,"
                f" foreign {rec.foreign_per_10s:.2f} s/10s{flag}"
            )
        sys.stderr.write(("\r\x1b[K" if self.tty else "") + line + "\n")
        sys.stderr.flush()


def _same_cpu_ab(
    args: argparse.Namespace,
    targets: list[Target],
    topts: TargetOptions,
    workload: Workload,
    meta: dict[str, Any],
    concurrency: int,
    reps: int,
    duration: int,
) -> int:
    """--corun or --tslice: every target against the baseline on one vCPU (corun.py,
    tslice.py), then the table."""
    baseline = TARGETS[args.baseline]
    base_topts = topts
    if args.baseline_stackmapd:
        path = args.baseline_stackmapd
        base_topts = dataclasses.replace(topts, stackmapd=path, backend_flag=backend_flag_for(path))
    # Two builds: the baseline's own target name is compared too.
    others = [t for t in targets if t.name != baseline.name or args.baseline_stackmapd]
    mode = "tslice" if args.tslice else "corun"

    def progress(done: int, total: int, what: str) -> None:
        print(f"[{done}/{total}] {what}", file=sys.stderr, flush=True)

    records: list[corun.CorunRecord] | list[tslice.TsliceRecord]
    with tempfile.TemporaryDirectory(prefix=f"loadtest-{mode}-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cpus = args.cpus or str(args.server_cpu)
        common = (others, baseline, topts, base_topts, workload, args.values, concurrency, cpus)
        if args.tslice:
            meta["slice_s"] = args.slice
            records = tslice.run(*common, args.slice, reps, work, progress)
            table = tslice.markdown(records, meta["command"], duration, meta["host"])
        else:
            records = corun.run(*common, reps, work, progress)
            table = corun.markdown(records, meta["command"], duration, meta["host"])
    meta["ended"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    if args.json:
        payload = {"meta": meta, mode: [r.to_json() for r in records]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(table)
    return 1 if any(r.error for r in records) else 0


def _hit_ratio(parser: argparse.ArgumentParser, args: argparse.Namespace, args_list: list[str]) -> int:
    """--hit-ratio: check its options, then loadtest/hitratio.py."""
    if args.corun or args.tslice:
        parser.error("--hit-ratio excludes --corun and --tslice")
    unknown = [s for s in args.scenarios or [] if s not in workloads.SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(workloads.SCENARIOS)}")
    if args.scale <= 0 or args.pace < 0 or (args.reps is not None and args.reps < 1):
        parser.error("--scale must be positive, --pace at least 0, --reps at least 1")
    bad = [t for t in args.targets if t not in TARGETS]
    if bad or not args.targets or len(set(args.targets)) != len(args.targets):
        parser.error(f"targets must be distinct and among {', '.join(TARGETS)}: {args.targets}")
    if args.server_cpu not in os.sched_getaffinity(0):
        parser.error(f"CPU {args.server_cpu} is not available")
    memory_mb = args.memory_mb or HIT_RATIO_MEMORY_MB
    if memory_mb < 1:
        parser.error("--memory-mb must be at least 1")
    targets = [TARGETS[t] for t in args.targets]
    stackmapd = args.stackmapd or default_stackmapd()
    topts = TargetOptions(
        memcached=args.memcached,
        stackmapd=stackmapd,
        memory_mb=memory_mb,
        threads=args.server_threads,
        backend_flag=args.backend_flag or backend_flag_for(stackmapd),
    )
    problems = check_environment([], sorted({t.binary(topts) for t in targets}))
    if problems:
        for line in problems:
            print(f"loadtest: {line}", file=sys.stderr)
        return 2
    why = plots.available() if args.plots else None
    return hitratio.main(args, targets, topts, _command_line(args_list), why)


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(args_list)

    if args.list_targets:
        for t in TARGETS.values():
            print(f"{t.name:18} {t.description}")
        return 0
    if args.list_scenarios:
        sys.stdout.write(hitratio.describe())
        return 0
    if args.host_line:
        print(host.host_line())
        return 0
    if args.hit_ratio:
        return _hit_ratio(parser, args, args_list)
    if args.memory_mb is None:
        args.memory_mb = 1024

    if args.quick:
        duration = args.duration or QUICK_DURATION_S
        reps = args.reps or 1
    else:
        duration = args.duration or 10
        reps = args.reps or 5
    stat_interval = args.stat_interval or duration
    syscall_duration = args.syscall_duration or (QUICK_DURATION_S if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    if duration < 1 or reps < 1 or stat_interval < 1 or syscall_duration < 1 or args.syscall_reps < 1:
        parser.error("--duration, --reps, --stat-interval and the --syscall-* options must be at least 1")
    same_cpu = "--corun" if args.corun else "--tslice" if args.tslice else None
    if args.baseline_stackmapd and not same_cpu:
        parser.error("--baseline-stackmapd needs --corun or --tslice")
    if same_cpu and (args.generator != "memaslap" or args.pin != "same" or args.baseline not in args.targets):
        parser.error(f"{same_cpu} needs --generator memaslap, --pin same and the baseline among --targets")
    if args.slice is not None and not args.tslice:
        parser.error("--slice needs --tslice")
    if args.cpus is not None and not same_cpu:
        parser.error("--cpus needs --corun or --tslice")
    if args.cpus is not None:
        try:
            wanted = [int(x) for x in args.cpus.split(",")]
        except ValueError:
            parser.error(f"--cpus takes a comma list of CPU numbers: {args.cpus!r}")
        bad = sorted(set(wanted) - os.sched_getaffinity(0))
        if bad or len(set(wanted)) != len(wanted):
            parser.error(f"--cpus {args.cpus}: CPUs {bad} are not available, or one is listed twice")
        args.cpus = ",".join(str(x) for x in wanted)
    args.slice = DEFAULT_SLICE_S if args.slice is None else args.slice
    if not 0 < args.slice <= duration:
        parser.error("--slice must be more than 0 seconds and at most --duration")
    if args.generator == "memaslap" and args.rates:
        parser.error("--rates (open loop) needs --generator mcblast")
    if warmup < 0 or args.depth < 1 or args.depth > 128 or args.keys < 1:
        parser.error("--warmup must be >= 0, --depth 1..128, --keys >= 1")
    concurrency = args.concurrency or [DEFAULT_CONCURRENCY[args.generator]]
    depth = args.depth if args.generator == "mcblast" else 1
    if not 0.0 <= args.get_ratio <= 1.0:
        parser.error("--get-ratio must be between 0 and 1")

    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown or not args.targets:
        parser.error(f"unknown targets {unknown}; known: {', '.join(TARGETS)}")
    if len(set(args.targets)) != len(args.targets):
        parser.error("a target is listed twice")
    targets = [TARGETS[t] for t in args.targets]

    allowed = os.sched_getaffinity(0)
    modes = ["same", "split"] if args.pin == "both" else [args.pin]
    pinnings = []
    for mode in modes:
        client_cpu = args.server_cpu if mode == "same" else args.client_cpu
        for cpu in {args.server_cpu, client_cpu}:
            if cpu not in allowed:
                parser.error(f"CPU {cpu} is not available (allowed: {sorted(allowed)})")
        if mode == "split" and client_cpu == args.server_cpu:
            parser.error("split mode needs --client-cpu different from --server-cpu")
        pinnings.append(Pinning(mode, args.server_cpu, client_cpu))
    scenarios = [
        Scenario(v, pin, args.generator, conns, depth, rate)
        for pin in pinnings
        for v in args.values
        for conns in concurrency
        for rate in (args.rates or [None])
    ]

    stackmapd = args.stackmapd or default_stackmapd()
    topts = TargetOptions(
        memcached=args.memcached,
        stackmapd=stackmapd,
        memory_mb=args.memory_mb,
        threads=args.server_threads,
        backend_flag=args.backend_flag or backend_flag_for(stackmapd),
    )
    tools = [args.memaslap] if args.generator == "memaslap" else []
    if args.syscalls or args.syscalls_only:
        tools.append(args.strace)
    problems = check_environment(tools, sorted({t.binary(topts) for t in targets}))
    mcblast_bin = str(args.mcblast)
    if args.generator == "mcblast" and not problems:
        try:
            mcblast_bin = str(mcblast.ensure_built(args.mcblast))
        except (mcblast.McblastError, OSError) as exc:
            problems.append(str(exc))
    if args.plots:
        why = plots.available()
        if why:
            print(f"loadtest: no plots: {why}", file=sys.stderr)
            args.plots = None
    if problems:
        for line in problems:
            print(f"loadtest: {line}", file=sys.stderr)
        return 2

    workload = Workload(
        memaslap=args.memaslap,
        key_size=args.key_size,
        get_ratio=args.get_ratio,
        duration_s=duration,
        stat_interval_s=stat_interval,
        threads=args.client_threads,
        ready_timeout_s=args.ready_timeout,
        mcblast=mcblast_bin,
        warmup_s=warmup,
        keys=args.keys,
        strace=args.strace,
        syscall_duration_s=syscall_duration,
    )
    schedule = Schedule(
        targets=targets,
        scenarios=scenarios,
        reps=0 if args.syscalls_only else reps,
        redo_noisy=args.redo_noisy,
        noise_threshold=args.noise_threshold,
        syscall_reps=args.syscall_reps if (args.syscalls or args.syscalls_only) else 0,
    )
    meta: dict[str, Any] = {
        "command": _command_line(args_list),
        "loadtest_version": __version__,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "kernel": platform.release(),
        "nproc": os.cpu_count(),
        "cpu_model": host.cpu_model(),
        "host": host.host_line(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "memcached_version": _tool_version([args.memcached, "-V"]),
        "generator": args.generator,
        "memaslap_version": _tool_version([args.memaslap, "-V"]) if args.generator == "memaslap" else None,
        "mcblast": mcblast_bin if args.generator == "mcblast" else None,
        "strace_version": _tool_version([args.strace, "-V"]) if schedule.syscall_reps else None,
        "git": _tool_version(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"]),
        "stackmapd": topts.stackmapd,
        "targets": [t.name for t in targets],
        "baseline": args.baseline,
        "reps": reps,
        "memory_mb": args.memory_mb,
        "server_threads": args.server_threads,
        "noise_threshold": args.noise_threshold,
        "redo_noisy": args.redo_noisy,
        "quick": args.quick,
        "workload": {
            "key_size": workload.key_size,
            "value_sizes": args.values,
            "get_ratio": workload.get_ratio,
            "duration_s": workload.duration_s,
            "stat_interval_s": workload.stat_interval_s,
            "concurrency": concurrency,
            "threads": workload.threads,
            "depth": depth,
            "rates": args.rates,
            "warmup_s": workload.warmup_s,
            "keys": workload.keys,
            "syscall_duration_s": syscall_duration,
            "syscall_reps": schedule.syscall_reps,
        },
        "latency_resolution": (
            "memaslap log2 histogram: bucket i holds 2^(i-1) < t <= 2^i us; p*_us and p99_le_us are"
            " upper bounds, p99_gt_us the lower bound"
            if args.generator == "memaslap"
            else "mcblast log-linear histogram, 32 sub-buckets per power of two (~3%)"
        ),
    }

    if same_cpu:
        return _same_cpu_ab(args, targets, topts, workload, meta, concurrency[0], reps, duration)

    progress = Progress()
    records: list[RunRecord] = []
    interrupted = False
    try:
        run_schedule(schedule, topts, workload, progress, records, args.workdir)
    except KeyboardInterrupt:
        interrupted = True
        print(f"\nloadtest: interrupted; reporting the {len(records)} runs done", file=sys.stderr)
    meta["ended"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    meta["interrupted"] = interrupted

    summaries = report.summarise(records, [t.name for t in targets], args.baseline)
    if args.json:
        payload = {
            "meta": meta,
            "summary": [s.to_json() for s in summaries],
            "runs": [r.to_json() for r in records],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if args.plots and records:
        try:
            for path in plots.write(summaries, args.plots):
                print(f"loadtest: wrote {path}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 -- a plot must never lose the measurements
            print(f"loadtest: plotting failed: {exc}", file=sys.stderr)
    if args.markdown:
        sys.stdout.write(report.markdown(summaries, meta, duration))
    else:
        sys.stdout.write(report.text_table(summaries, duration, syscall_duration))
        sys.stdout.write(f"\n{meta['host']}\ncommand: {meta['command']}\n")
    failed = [r for r in records if r.error]
    for r in failed:
        print(f"loadtest: {r.target} rep {r.rep + 1} failed: {r.error}", file=sys.stderr)
    if interrupted:
        return 130
    return 1 if failed else 0
