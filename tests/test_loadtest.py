"""The load-test harness (loadtest/): its parsers, and real smoke runs.

The memaslap parser tests use output captured from Debian's memaslap (memcaslap) 1.0
against memcached 1.6.18; the strace and mcblast parsers get captured text too.  The smoke
tests run ``python -m loadtest --quick`` against memcached for about two seconds (memaslap;
our mcblast, pipelined; the strace syscall pass) and check that the JSON report is complete
and self-consistent.  They assert no performance figure: the machine is shared and such
figures are noise.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # loadtest/ is run from the tree, not installed
    sys.path.append(str(REPO))

from loadtest import hitratio, host, mcblast, memaslap, syscalls  # noqa: E402
from loadtest.report import Spread  # noqa: E402

CLEAR = "\x1b[1;1H\x1b[2J"
TABLE_HEAD = (
    "Type     Time(s)  Ops          TPS(ops/s)   Net(M/s)   Get_miss   Min(us)  Max(us)"
    "    Avg(us)    Std_dev    Geo_dist  \n"
)
PERIODIC = (
    f"{CLEAR}\n"
    "Get Statistics\n" + TABLE_HEAD + "Period   1        95236        95236        11.6"
    "       0          38       6312       604        488.32     519.31\n"
    "Global   2        165239       82619        10.1       0          38       6362"
    "       693        548.28     593.39\n\n"
    "Total Statistics\n" + TABLE_HEAD + "Period   1        105819       105819       12.9"
    "       0          38       6312       604        487.46     519.41\n"
    "Global   2        183629       91814        11.2       0          38       7838"
    "       695        553.79     594.16\n\n"
)
CLOSING = """Get Statistics (165291 events)
   Min:        38
   Max:      6362
   Avg:       693
   Geo:    593.54
   Std:    548.64
   Log2 Dist:
       4:        0        0        3        0
       8:     2248    76384    64179    19603
      12:     1921      953

Total Statistics (183693 events)
   Min:        38
   Max:      7838
   Avg:       695
   Geo:    594.32
   Std:    554.17
   Log2 Dist:
       4:        0        0        3        0
       8:     2486    84786    71366    21857
      12:     2118     1077

cmd_get: 165348
cmd_set: 18409
get_misses: 0
written_bytes: 14201856
read_bytes: 24610284
object_bytes: 2356352

Run time: 2.0s Ops: 183757 TPS: 91870 Net_rate: 18.5M/s
"""
HEADER = """servers: 127.0.0.1:23411
threads count: 1
concurrency: 64
run time: 2s
windows size: 10k
set proportion: set_prop=0.10
get proportion: get_prop=0.90
"""


def test_parse_full_output() -> None:
    r = memaslap.parse_output(HEADER + PERIODIC + CLOSING)
    assert (r.run_time_s, r.ops, r.tps) == (2.0, 183757, 91870)
    assert r.mean_latency_us == 695  # the Total block, not the Get block
    assert r.get_misses == 0
    # Rows are labelled with their first bucket index, four buckets per row.
    assert r.histogram.buckets == {
        6: 3,
        8: 2486,
        9: 84786,
        10: 71366,
        11: 21857,
        12: 2118,
        13: 1077,
    }
    assert r.histogram.events == 183693
    # Cumulative counts: ... 180498 up to bucket 11, 182616 up to bucket 12; the 99th
    # percentile (rank 181856) is in bucket 12, i.e. 2048 < p99 <= 4096 us.
    assert r.latency_bounds(0.99) == (2048.0, 4096.0)
    assert r.latency_bounds(0.50) == (512.0, 1024.0)


def test_parse_without_closing_blocks_uses_table_average() -> None:
    final = "Run time: 2.0s Ops: 183757 TPS: 91870 Net_rate: 18.5M/s\n"
    r = memaslap.parse_output(HEADER + PERIODIC + final)
    assert r.mean_latency_us == 695
    assert r.histogram.events == 0
    assert r.latency_bounds(0.99) is None


def test_parse_rejects_output_without_final_line() -> None:
    with pytest.raises(memaslap.MemaslapParseError):
        memaslap.parse_output(HEADER + PERIODIC)


def test_config_file_mix() -> None:
    text = memaslap.config_text(64, 1024, 0.9)
    assert text == "key\n64 64 1\nvalue\n1024 1024 1\ncmd\n0 0.1\n1 0.9\n"


def test_spread() -> None:
    s = Spread.of([3.0, None, 1.0, 2.0])
    assert s is not None
    assert (s.median, s.lo, s.hi, s.n) == (2.0, 1.0, 3.0, 3)
    assert Spread.of([None]) is None


def test_quick_run_against_memcached(tmp_path: Path) -> None:
    for tool in ("memcached", "memcaslap", "taskset"):
        assert shutil.which(tool), f"{tool} is needed (memcached, libmemcached-tools, util-linux)"
    out = tmp_path / "runs.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "loadtest", "--quick", "--targets", "memcached"]
    cmd += ["--values", "64", "--json", str(out), "--markdown"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "python -m loadtest --quick --targets memcached" in proc.stdout
    assert "| memcached |" in proc.stdout

    data = json.loads(out.read_text())
    # Every output names the host it ran on (issue 18): the same line in the table and the JSON.
    assert data["meta"]["host"] == host.host_line() and host.host_line() in proc.stdout
    assert data["meta"]["workload"]["duration_s"] == 2
    runs = data["runs"]
    assert len(runs) == 1
    run = runs[0]
    assert run["error"] is None and run["kept"] is True
    assert run["server_argv"][:3] == ["taskset", "-c", "0"]
    assert run["client_argv"][:3] == ["taskset", "-c", "0"]
    assert run["ops"] > 0 and run["ops_per_s"] > 0
    assert run["server_cpu_s"] > 0 and run["server_cpu_us_per_op"] > 0
    assert run["client_cpu_s"] > 0 and run["client_cpu_us_per_op"] > 0
    assert run["mean_latency_us"] > 0 and run["p99_le_us"] >= run["p50_le_us"]
    assert run["foreign_cpu_s"] >= 0 and run["window_s"] >= run["run_time_s"]
    assert run["get_misses"] is not None
    # Accounting check, not a performance check: the server saw the operations memaslap
    # says it completed (memaslap's own count runs a few ahead of the server's).
    assert run["server_cmds"] == pytest.approx(run["ops"], rel=0.05)
    summary = data["summary"][0]["targets"][0]
    assert summary["target"] == "memcached" and summary["runs"] == 1
    assert summary["ops_per_s"]["median"] == run["ops_per_s"]


# ---- mcblast and the syscall pass ------------------------------------------------------

STRACE_SUMMARY = """% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 40.70    0.429199         525       817           epoll_wait
 13.82    0.145737           3     42828           sendmsg
  7.41    0.078142           1     42960           read
  0.00    0.000010           3         3         1 futex
------ ----------- ----------- --------- --------- ----------------
100.00    1.054652          11     86608         1 total
"""


def test_parse_strace_summary() -> None:
    counts = syscalls.parse_summary(STRACE_SUMMARY)
    assert counts.total == 86608 and counts.errors == 1
    assert counts.calls == {"epoll_wait": 817, "sendmsg": 42828, "read": 42960, "futex": 3}
    assert counts.top(2) == [("read", 42960), ("sendmsg", 42828)]
    with pytest.raises(syscalls.StraceError):
        syscalls.parse_summary("strace: attach: ptrace(PTRACE_SEIZE, 1): Operation not permitted\n")


def test_parse_mcblast_output() -> None:
    line = (
        '{"generator": "mcblast", "mode": "open", "conns": 16, "depth": 8, "rate": 20000, "ops": 39998,'
        ' "seconds": 2.000, "ops_per_sec": 19999.0, "lat_mean_us": 56.90, "lat_p50_us": 52.22,'
        ' "lat_p90_us": 88.06, "lat_p99_us": 102.40, "lat_p999_us": 360.45, "get_hits": 35990,'
        ' "get_misses": 3, "unanswered": 0, "key_len": 64, "value_len": 64, "get_ratio": 0.900,'
        ' "warmup": 1.000, "prefill": true, "errors": 0}'
    )
    r = mcblast.parse_output("some warning\n" + line + "\n")
    assert (r.mode, r.ops, r.ops_per_s, r.p99_us, r.p999_us) == ("open", 39998, 19999.0, 102.40, 360.45)
    assert (r.get_hits, r.get_misses, r.unanswered, r.errors) == (35990, 3, 0, 0)
    with pytest.raises(mcblast.McblastError):
        mcblast.parse_output("mcblast: connect failed: Connection refused\n")


def _run_loadtest(args: list[str], out: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "loadtest", "--quick", "--targets", "memcached", "--values", "64"]
    cmd += [*args, "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_quick_mcblast_run_against_memcached(tmp_path: Path) -> None:
    """mcblast, pipelined 4 x 4: built if needed, run, parsed, accounted (no figures judged)."""
    for tool in ("memcached", "taskset", "gcc"):
        assert shutil.which(tool), f"{tool} is needed"
    data = _run_loadtest(
        ["--generator", "mcblast", "--concurrency", "4", "--depth", "4", "--keys", "500"], tmp_path / "runs.json"
    )
    assert data["meta"]["generator"] == "mcblast"
    (run,) = data["runs"]
    assert run["error"] is None and run["kept"] is True
    assert run["generator"] == "mcblast" and run["kind"] == "load" and run["mode"] == "closed"
    assert run["client_argv"][:4] == ["taskset", "-c", "0", str(mcblast.DEFAULT_BINARY)]
    assert ["-c", "4", "-d", "4"] == run["client_argv"][6:10]
    assert run["ops"] > 0 and run["ops_per_s"] == pytest.approx(run["ops"] / run["run_time_s"])
    assert 0 < run["p50_us"] <= run["p99_us"] <= run["p999_us"]
    # Every key was stored before the run, so gets hit; no unexpected responses.
    assert run["get_misses"] == 0 and run["client_errors"] == 0
    # The server counted at least the measured operations (plus prefill and warm-up).
    assert run["server_cmds"] >= run["ops"] + 500
    assert run["server_cpu_us_per_op"] > 0 and run["cpu_ops"] == run["server_cmds"]
    (summary,) = data["summary"]
    assert summary["generator"] == "mcblast" and summary["targets"][0]["p99_us"]["median"] == run["p99_us"]


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(["strace", "-c", "-f", "-o", os.devnull, "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _strace_works(), reason="strace missing or ptrace not permitted")
def test_quick_syscall_pass_against_memcached(tmp_path: Path) -> None:
    data = _run_loadtest(["--syscalls-only", "--concurrency", "8"], tmp_path / "runs.json")
    (run,) = data["runs"]
    assert run["error"] is None and run["kind"] == "syscalls"
    assert run["strace_argv"][3:5] == ["strace", "-c"]
    assert run["server_cmds"] > 0 and run["strace_syscalls"] > 0
    assert run["strace_syscalls_per_op"] == pytest.approx(run["strace_syscalls"] / run["server_cmds"])
    # memcached answers each request with its own read and sendmsg: at least one call per op.
    assert run["strace_syscalls_per_op"] >= 1.0
    assert {"read", "sendmsg"} <= set(run["strace_top"])


def test_quick_corun_beside_memcached(tmp_path: Path) -> None:
    """--corun: the target and memcached loaded at once on one CPU, each server's requests and
    CPU accounted from its own stats and /proc (no figure judged)."""
    # No PYTHONPATH: stackmapd must import the installed stackmap_core, not the source
    # tree's (python -m loadtest finds loadtest/ from the working directory).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = tmp_path / "corun.json"
    cmd = [sys.executable, "-m", "loadtest", "--corun", "--targets", "memcached,stackmapd-epoll", "--values", "64"]
    cmd += ["--duration", "2", "--reps", "2", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    records = json.loads(out.read_text())["corun"]
    assert [(r["target"], r["baseline"], r["rep"]) for r in records] == [
        ("stackmapd-epoll", "memcached", 0),
        ("stackmapd-epoll", "memcached", 1),
    ]
    for r in records:
        assert r["error"] is None
        # memaslap's own stats say it ran ~2 s; both servers served requests in that window.
        assert r["target_ops"] > 1000 and r["baseline_ops"] > 1000 and r["window_s"] >= 2
        assert r["target_cpu_us_per_op"] > 0 and r["baseline_cpu_us_per_op"] > 0
        assert r["ratio"] == pytest.approx(r["target_cpu_us_per_op"] / r["baseline_cpu_us_per_op"])
    assert "| 64 B | stackmapd-epoll |" in proc.stdout and "CPU/op vs memcached" in proc.stdout
    assert host.host_line() in proc.stdout
    bad = subprocess.run([*cmd[:3], "--corun", "--pin", "split"], cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--corun needs" in bad.stderr


def test_quick_corun_two_builds(tmp_path: Path) -> None:
    """--baseline-stackmapd: one backend against itself from another binary (here the same
    console script by another path), so two builds can be compared under one host phase."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    stackmapd = shutil.which("stackmapd", path=str(Path(sys.executable).parent))
    assert stackmapd, "the stackmapd console script is installed next to this Python"
    other = tmp_path / "stackmapd-b"
    other.symlink_to(stackmapd)
    out = tmp_path / "corun.json"
    cmd = [sys.executable, "-m", "loadtest", "--corun", "--targets", "stackmapd-epoll"]
    cmd += ["--baseline", "stackmapd-epoll", "--baseline-stackmapd", str(other), "--values", "64"]
    cmd += ["--duration", "2", "--reps", "1", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (rec,) = json.loads(out.read_text())["corun"]
    assert rec["error"] is None and rec["target"] == rec["baseline"] == "stackmapd-epoll"
    assert str(other) in rec["baseline_argv"] and str(other) not in rec["target_argv"]
    assert rec["target_ops"] > 1000 and rec["baseline_ops"] > 1000
    assert f"baseline: `taskset -c 0 {other}" in proc.stdout


def test_quick_tslice_beside_memcached(tmp_path: Path) -> None:
    """--tslice: the target and memcached on one CPU, their two memaslaps taking turns every
    slice; each server's requests, CPU and time summed over its own slices (no figure judged)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = tmp_path / "tslice.json"
    cmd = [sys.executable, "-m", "loadtest", "--tslice", "--targets", "memcached,stackmapd-epoll", "--values", "64"]
    cmd += ["--duration", "2", "--reps", "1", "--slice", "0.5", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["meta"]["slice_s"] == 0.5
    (r,) = data["tslice"]
    assert (r["target"], r["baseline"], r["rep"], r["value_size"]) == ("stackmapd-epoll", "memcached", 0, 64)
    assert r["error"] is None
    # 2 s of 0.5 s slices per side.
    assert r["slice_s"] == 0.5 and r["slices"] == 4
    assert r["target_argv"][:3] == r["baseline_argv"][:3] == ["taskset", "-c", "0"]
    assert r["target_ops"] > 1000 and r["baseline_ops"] > 1000
    assert r["target_cpu_us_per_op"] > 0 and r["baseline_cpu_us_per_op"] > 0
    assert r["ratio"] == pytest.approx(r["target_cpu_us_per_op"] / r["baseline_cpu_us_per_op"])
    # Each side's throughput: its requests over the time of its own slices.
    assert r["target_s"] > 0 and r["baseline_s"] > 0
    assert r["target_ops_per_s"] == pytest.approx(r["target_ops"] / r["target_s"])
    assert r["baseline_ops_per_s"] == pytest.approx(r["baseline_ops"] / r["baseline_s"])
    assert r["throughput_ratio"] == pytest.approx(r["target_ops_per_s"] / r["baseline_ops_per_s"])
    assert r["foreign_cpu_s"] >= 0
    assert "| 64 B | stackmapd-epoll |" in proc.stdout
    assert "CPU/op vs memcached" in proc.stdout and "ops/s vs memcached" in proc.stdout
    assert data["meta"]["host"] in proc.stdout and data["meta"]["host"].startswith("Host: ")


def test_host_line_names_cpu_kernel_and_mitigations(tmp_path: Path) -> None:
    """The host line: CPU model, clock, vCPUs, kernel release, and every CPU vulnerability
    entry except "Not affected" (what makes a kernel entry dearer on one host than another)."""
    vulns = tmp_path / "vulnerabilities"
    vulns.mkdir()
    (vulns / "spec_rstack_overflow").write_text("Vulnerable: Safe RET, no microcode\n")
    (vulns / "meltdown").write_text("Not affected\n")
    (vulns / "spectre_v2").write_text("Mitigation: Retpolines\n")
    line = host.host_line(str(vulns))
    assert line.startswith(f"Host: {host.cpu_model()} at ")
    assert f", {os.cpu_count()} vCPU, Linux {platform.release()};" in line
    assert line.endswith("; spec_rstack_overflow: Vulnerable: Safe RET, no microcode; spectre_v2: Mitigation: Retpolines")
    assert "meltdown" not in line
    (vulns / "spec_rstack_overflow").write_text("Not affected\n")
    (vulns / "spectre_v2").write_text("Not affected\n")
    assert host.host_line(str(vulns)).endswith("; no CPU vulnerabilities reported")


def test_perfcat_groups_a_report() -> None:
    """loadtest.perfcat: kernel samples grouped by the work they do, user samples by object."""
    from loadtest import perfcat

    report = """
    20.00%  [kernel.kallsyms]  [k] tcp_sendmsg_locked
    10.50%  [kernel.kallsyms]  [k] io_submit_sqes
     5.00%  [kernel.kallsyms]  [k] finish_task_switch.isra.0
     4.00%  [kernel.kallsyms]  [k] do_syscall_64
     3.00%  [kernel.kallsyms]  [k] _copy_to_iter
     2.00%  [kernel.kallsyms]  [k] some_other_function
     1.50%  memcached          [.] process_command
     1.00%  libc.so.6          [.] __libc_sendmsg
     0.50%  libc.so.6          [.] read
"""
    assert perfcat.groups(report) == {
        "kernel: TCP/IP and loopback": 20.0,
        "kernel: io_uring": 10.5,
        "kernel: scheduler and wake-ups": 5.0,
        "kernel: syscall entry/exit, fd lookup, VFS, epoll": 4.0,
        "kernel: copies to and from user": 3.0,
        "kernel: other": 2.0,
        "user: memcached": 1.5,
        "user: libc.so.6": 1.5,
    }


def test_quick_tslice_on_two_cpus(tmp_path: Path) -> None:
    """--cpus 0,1: both servers with two workers and both memaslaps with two threads pinned
    to the two vCPUs, still taking turns a slice at a time (no figure judged)."""
    if not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("needs CPUs 0 and 1")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = tmp_path / "tslice2.json"
    cmd = [sys.executable, "-m", "loadtest", "--tslice", "--targets", "memcached,stackmapd-epoll", "--values", "64"]
    cmd += ["--cpus", "0,1", "--server-threads", "2", "--client-threads", "2"]
    cmd += ["--duration", "2", "--reps", "1", "--slice", "0.5", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (r,) = json.loads(out.read_text())["tslice"]
    assert r["error"] is None and r["cpu"] == "0,1"
    assert r["target_argv"][:3] == r["baseline_argv"][:3] == ["taskset", "-c", "0,1"]
    assert "-t" in r["target_argv"] and r["target_argv"][r["target_argv"].index("-t") + 1] == "2"
    assert r["target_ops"] > 1000 and r["baseline_ops"] > 1000
    assert "the same vCPUs (0,1)" in proc.stdout
    bad = subprocess.run([*cmd[:3], "--cpus", "0,1"], cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--cpus needs --corun or --tslice" in bad.stderr
    bad = subprocess.run([*cmd[:4], "--cpus", "0,x"], cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "comma list of CPU numbers" in bad.stderr


def test_tslice_argument_checks() -> None:
    """--tslice excludes --corun and needs what a co-run needs; --slice must be positive."""
    base = [sys.executable, "-m", "loadtest", "--tslice"]
    for extra, message in (
        (["--corun"], "not allowed with argument --tslice"),
        (["--pin", "split"], "--tslice needs --generator memaslap, --pin same"),
        (["--slice", "0"], "--slice must be more than 0"),
    ):
        bad = subprocess.run([*base, *extra], cwd=REPO, capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and message in bad.stderr, (extra, bad.stderr)


# ---- --hit-ratio -----------------------------------------------------------------------


def test_hit_ratio_tiny_run_against_both_servers(tmp_path: Path) -> None:
    """--hit-ratio on small scenarios against memcached and stackmapd: the report's shape,
    the client's and the servers' hit counts agree, and hit ratios move the way the
    scenarios say they must (more skew hits more; a plain LRU loses its hot set to a scan).
    Unpaced, so no figure depends on time."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = tmp_path / "hit.json"
    scenarios = ["zipf-0.8", "zipf-1.2", "scan"]
    cmd = [sys.executable, "-m", "loadtest", "--hit-ratio", "--targets", "memcached,stackmapd-epoll"]
    cmd += ["--scenarios", ",".join(scenarios), "--memory-mb", "32", "--scale", "0.3", "--reps", "1"]
    cmd += ["--pace", "0", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["meta"]["memory_mb"] == 32 and data["meta"]["seed"] == 1
    runs = {(r["scenario"], r["target"]): r for r in data["hit_ratio"]}
    assert set(runs) == {(s, t) for s in scenarios for t in ("memcached", "stackmapd-epoll")}
    for (scenario, target), r in runs.items():
        assert r["error"] is None, (scenario, target, r["error"])
        assert r["server_argv"][:3] == ["taskset", "-c", "0"] and "-m" in r["server_argv"]
        assert 0 < r["hit_ratio"] < 1 and 0 <= r["focus_hit_ratio"] <= 1
        assert len(r["windows"]) == 20 and len(r["window_edges"]) == 21
        assert r["window_edges"][-1] == r["requests"]
        # One set per miss; the server counted exactly what the client sent and saw.
        assert r["sets"] == r["requests"] - r["hits"]
        assert r["server_get_hits"] == r["hits"]
        assert r["server_cmds"] == r["requests"] + r["sets"]
        assert r["stats"]["curr_items"] > 0 and r["stats"]["limit_maxbytes"] == 32 << 20
        assert r["bytes_per_item"] > 0 and r["rss_end_kib"] > r["rss_start_kib"] > 0
        assert r["items_before_crawl"] >= r["stats"]["curr_items"] and r["crawl_s"] >= 0
        assert r["cpu_us_per_req"] > 0
    for target in ("memcached", "stackmapd-epoll"):
        # A steeper Zipf concentrates requests on fewer keys: a cache of any policy hits more.
        assert runs[("zipf-1.2", target)]["hit_ratio"] > runs[("zipf-0.8", target)]["hit_ratio"]
        scan = runs[("scan", target)]
        assert scan["phases"]["scan"] == 0.0  # every swept key is new
        assert list(scan["phases"]) == ["hot", "scan", "hot again"]
    # stackmapd has one plain LRU per class: the sweep (2x memory) evicts the hot set, so
    # fewer hot keys are found after the scan than gets hit before it, and the hot set hits
    # less right after the scan than before it.
    scan = runs[("scan", "stackmapd-epoll")]
    assert scan["focus"] == "hot keys surviving the scan"
    before = scan["ranges"]["last 10% before scan"]
    assert scan["focus_hit_ratio"] < before and scan["ranges"]["first 10% after scan"] < before
    assert "| scan | stackmapd-epoll |" in proc.stdout and "Host: " in proc.stdout


@pytest.mark.parametrize("name,backend", [("memcached", None), ("stackmapd", "epoll")])
def test_crawl_all_leaves_only_live_items(start_server: Any, name: str, backend: str | None) -> None:
    """The hit-ratio report counts live items: after ``lru_crawler crawl all`` and its end,
    neither server counts an expired item it had not met yet."""
    from conftest import Target

    srv = start_server(Target(name, backend))
    with socket.create_connection((srv.host, srv.port), timeout=5) as s:
        for i in range(100):
            ttl = 1 if i % 2 else 0
            s.sendall(b"set k%d 0 %d 5 noreply\r\nhello\r\n" % (i, ttl))
        s.sendall(b"mn\r\n")
        reply = b""
        while not reply.endswith(b"MN\r\n"):
            reply += s.recv(4096)
    time.sleep(2.2)  # the 50 keys of TTL 1 have expired; nothing has read them since
    stats, seconds = hitratio.crawl_all(srv.port)
    assert stats["curr_items"] == 50 and stats["lru_crawler_running"] == 0
    assert seconds >= 0


def test_hit_ratio_argument_checks() -> None:
    base = [sys.executable, "-m", "loadtest", "--hit-ratio"]
    for extra, message in (
        (["--scenarios", "zipf-9"], "unknown scenarios"),
        (["--scale", "0"], "--scale must be positive"),
        (["--corun"], "--hit-ratio excludes --corun"),
    ):
        bad = subprocess.run([*base, *extra], cwd=REPO, capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and message in bad.stderr, (extra, bad.stderr)


def test_hit_ratio_traces_are_reproducible_from_the_seed() -> None:
    """Same seed, same trace (keys, sizes, TTLs, requests, batches); another seed, another."""
    from loadtest import workloads

    a = workloads.build("ttl", 7, 4 << 20, 0.2)
    b = workloads.build("ttl", 7, 4 << 20, 0.2)
    c = workloads.build("ttl", 8, 4 << 20, 0.2)
    assert (a.keys, a.sizes, a.ttls, a.requests, a.batches) == (b.keys, b.sizes, b.ttls, b.requests, b.batches)
    assert a.requests != c.requests
    # No batch holds a key twice (so pipelining gives the answers of a serial replay).
    edges = [*a.batches, len(a.requests)]
    for lo, hi in zip(edges, edges[1:], strict=False):
        assert len(set(a.requests[lo:hi])) == hi - lo
    assert {t for t, _ in workloads.TTL_MIX} == set(a.ttls)


def test_server_stats_reads_the_backend_group(start_server) -> None:  # type: ignore[no-untyped-def]
    """The harness's stats reader: stackmapd's syscalls and uring_* are in ``stats
    backend``, which memcached answers ERROR (its plain stats still read)."""
    from conftest import MEMCACHED, Target

    from loadtest.targets import server_stats

    ours = server_stats(start_server(Target("stackmapd", "epoll"), []).port)
    assert ours is not None and "cmd_get" in ours and ours["syscalls"] > 0 and "uring_submits" in ours
    ref = server_stats(start_server(MEMCACHED, []).port)
    assert ref is not None and "cmd_get" in ref and "syscalls" not in ref


@pytest.mark.parametrize(
    ("name", "setting"),
    [("stackmapd-uring-sqpoll", b"STAT uring_sqpoll yes\r\n"),
     ("stackmapd-uring-zc", b"STAT uring_zc_threshold 16384\r\n")],
)
def test_option_targets_start_servers_with_their_option(tmp_path: Path, name: str, setting: bytes) -> None:
    """The targets that A/B one uring option against stackmapd-uring start a uring server
    with that option in effect (its ``stats settings`` says so); stackmapd-uring has not."""
    from ports import free_port

    from loadtest.targets import TARGETS, Server, TargetOptions, default_stackmapd, server_request

    opts = TargetOptions(memcached="/usr/bin/memcached", stackmapd=default_stackmapd(), memory_mb=64, threads=1)
    for target, present in ((name, True), ("stackmapd-uring", False)):
        port = free_port()
        server = Server(TARGETS[target].argv(opts, port), 0, port, tmp_path / f"{target}.log")
        try:
            server.wait_ready(20)
            settings = server_request(port, b"stats settings\r\n", (b"END\r\n",))
        finally:
            server.stop()
        assert (setting in settings) is present, (target, settings.decode(errors="replace"))
