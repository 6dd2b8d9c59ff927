"""Figures for README "Scaling out": pools of three nodes, memcached vs stackmapd.

    .venv/bin/python tests/scaleout_bench.py [--seconds 5] [--repeat 3] [--backend epoll]

prints a Markdown report: the host line, then

* throughput of memaslap (memcaslap, 64 B values, 90% get) straight to one
  node and through nutcracker in front of three nodes, with each node's
  share of the proxied operations;
* failover: a node SIGKILLed under load through the proxy (and with
  pymemcache's HashClient), restarted on its port; the errors clients saw,
  the time until it was ejected, until it served again after the restart,
  the hit ratio of the next 3000 operations, and values other than the last
  written (must be 0 except for the deliberately unsafe case).

Everything runs on 127.0.0.1 with the same helpers as tests/test_scaleout.py.
Times are wall-clock on this host and vary with its load (printed).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.append(str(Path(__file__).parents[1]))  # loadtest (after the installed packages)

from conftest import HOST, MEMCACHED, Server, Target, launch  # noqa: E402
from mcwire import stats  # noqa: E402
from scaleout_pool import (  # noqa: E402
    FailoverResult,
    Pool,
    disallowed,
    failover,
    node_args,
    start_on_port,
    start_pool,
)

from loadtest import host as loadtest_host  # noqa: E402


def host_line() -> str:
    """loadtest's host line (CPU, clock, kernel, mitigations) and the load average now."""
    load = Path("/proc/loadavg").read_text().split()[:3]
    return f"{loadtest_host.host_line()}; load average {' '.join(load)}"


def memaslap(port: int, seconds: int, cfg: Path) -> float:
    """memcaslap -T 2 -c 32 for `seconds` against HOST:port -> ops/s."""
    exe = shutil.which("memcaslap")
    if exe is None:
        raise SystemExit("memcaslap (libmemcached-tools) is required")
    proc = subprocess.run([exe, "-s", f"{HOST}:{port}", "-T", "2", "-c", "32", "-F", str(cfg),
                           "-t", f"{seconds}s"], capture_output=True, text=True, timeout=seconds + 60)
    m = re.findall(r"TPS: (\d+)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise SystemExit(f"memcaslap failed:\n{proc.stdout}\n{proc.stderr}")
    return float(m[-1])


def ops_of(port: int) -> int:
    s = stats(HOST, port)
    return int(s["cmd_get"]) + int(s["cmd_set"])


NODE_FLAGS = ["-t", "1", "-m", "1024"]  # per node, as in README "Benchmarks"


def throughput(targets: list[Target], seconds: int, repeat: int, cfg: Path) -> dict[str, Any]:
    """memaslap straight to one node, then through nutcracker to three;
    the targets alternate within each repetition so that a slow phase of
    the host hits both."""
    direct: dict[str, list[float]] = {t.id: [] for t in targets}
    proxied: dict[str, list[float]] = {t.id: [] for t in targets}
    shares: dict[str, list[list[float]]] = {t.id: [] for t in targets}
    for _ in range(repeat):
        for target in targets:
            single: Server = launch(target, node_args(target, NODE_FLAGS))
            try:
                direct[target.id].append(memaslap(single.port, seconds, cfg))
            finally:
                single.stop()
            pool = start_pool(target, args=NODE_FLAGS)
            try:
                assert pool.proxy is not None
                before = [ops_of(n.port) for n in pool.nodes]
                proxied[target.id].append(memaslap(pool.proxy.port, seconds, cfg))
                done = [ops_of(n.port) - b for n, b in zip(pool.nodes, before, strict=True)]
                shares[target.id].append([d / sum(done) for d in done])
            finally:
                pool.stop()
    return {t.id: {"direct": direct[t.id], "proxied": proxied[t.id],
                   "shares": [statistics.median(s[i] for s in shares[t.id]) for i in range(3)]}
            for t in targets}


def hashclient_factory(pool: Pool) -> Callable[[], Any]:
    from test_scaleout import HASHCLIENT_SETTINGS, ketama_client

    return lambda: ketama_client(pool, **HASHCLIENT_SETTINGS)


def run_failover(kind: str, target: Target) -> FailoverResult:
    """One failover of node2 of three; `kind` picks the layout and restart."""
    if kind == "proxy":
        pool = start_pool(target)
        try:
            return failover(pool, 1, pool.nodes[1].args, f"{target.id} proxy")
        finally:
            pool.stop()
    if kind == "hashclient":
        pool = start_pool(target, proxy=False)
        victim = pool.nodes[1]
        try:
            return failover(pool, 1, victim.args, f"{target.id} HashClient",
                            make_client=hashclient_factory(pool),
                            ejected=lambda load: (HOST, victim.port) in load.client._dead_clients)
        finally:
            pool.stop()
    # kind == "snapshot" or "snapshot-no-max-age": a planned restart first
    # leaves a snapshot; SIGKILL then writes none; the restart loads it or not
    snap = Path(tempfile.mkdtemp(prefix="scaleout-bench-")) / "node2.snap"
    pool = start_pool(target, per_node=lambda i: ["--snapshot", str(snap)] if i == 1 else [])

    def clean_restart() -> None:
        srv = pool.nodes[1]
        srv.proc.terminate()
        srv.proc.wait(timeout=10)
        pool.nodes[1] = start_on_port(srv.target, srv.port, srv.args, srv.log_path)

    extra = ["--snapshot-max-age", "1"] if kind == "snapshot" else []
    try:
        return failover(pool, 1, pool.nodes[1].args + extra, f"{target.id} {kind}",
                        before_kill=clean_restart, hold=2.0)
    finally:
        pool.stop()
        snap.unlink(missing_ok=True)


def fmt_range(values: list[float], unit: str = "s", digits: int = 2) -> str:
    def f(v: float) -> str:
        return f"{v:,.{digits}f}"

    if len(values) == 1:
        return f"{f(values[0])} {unit}"
    return f"{f(statistics.median(values))} {unit} ({f(min(values))}–{f(max(values))})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5, help="memaslap run length")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median shown)")
    ap.add_argument("--backend", default="epoll", help="stackmapd --backend for its nodes")
    args = ap.parse_args()
    stackmapd = Target("stackmapd", args.backend)
    print(f"{host_line()}\n")

    cfg = Path(tempfile.mkdtemp(prefix="scaleout-bench-")) / "memaslap.cfg"
    cfg.write_text("key\n64 64 1\nvalue\n64 64 1\ncmd\n0 0.1\n1 0.9\n")
    print(f"Throughput, memcaslap -T 2 -c 32 -t {args.seconds}s (64 B values, 90% get), "
          f"nodes `{' '.join(NODE_FLAGS)}`, median (min–max) of {args.repeat}:\n")
    print("| nodes | one node, direct | 3 nodes via nutcracker | share per node |")
    print("| --- | ---: | ---: | --- |")
    figures = throughput([MEMCACHED, stackmapd], args.seconds, args.repeat, cfg)
    for tid, t in figures.items():
        shares = " / ".join(f"{s:.0%}" for s in t["shares"])
        print(f"| {tid} | {fmt_range(t['direct'], 'ops/s', 0)} | "
              f"{fmt_range(t['proxied'], 'ops/s', 0)} | {shares} |")

    print(f"\nFailover: node2 of 3 SIGKILLed under load (one pymemcache client, 80% get / "
          f"20% set over 2000 keys), restarted on its port; {args.repeat} runs, "
          "median (min–max):\n")
    print("| pool | errors seen | kill → ejected | restart → serving | hit ratio after | "
          "wrong values |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    cases = [("proxy", MEMCACHED), ("proxy", stackmapd), ("snapshot", stackmapd),
             ("snapshot-no-max-age", stackmapd), ("hashclient", MEMCACHED),
             ("hashclient", stackmapd)]
    for kind, target in cases:
        results = [run_failover(kind, target) for _ in range(args.repeat)]
        errors = [len(r.errors_down) + len(r.errors_after) + len(r.errors_before) for r in results]
        bad = sum(len(disallowed(r.errors_down + r.errors_after)) for r in results)
        label = {"proxy": "nutcracker", "hashclient": "HashClient (ketama)",
                 "snapshot": "nutcracker, --snapshot --snapshot-max-age 1",
                 "snapshot-no-max-age": "nutcracker, --snapshot (no max age)"}[kind]
        wrong = [len(r.wrong) for r in results]
        print(f"| {target.id}, {label} | {statistics.median(errors):.0f} ({min(errors)}–{max(errors)})"
              f"{' !' + str(bad) + ' unexpected' if bad else ''} | "
              f"{fmt_range([r.eject_seconds for r in results])} | "
              f"{fmt_range([r.serve_seconds for r in results])} | "
              f"{statistics.median(r.hit_ratio_after for r in results):.0%} | "
              f"{statistics.median(wrong):.0f} |")
    print(f"\nAfter the runs: {host_line()}")


if __name__ == "__main__":
    main()
