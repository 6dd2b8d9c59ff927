"""mcblast, our own load generator (mcblast.c): build it, run it, read its JSON line.

memaslap cannot pipeline requests, drive many connections from one thread at a fixed depth,
or send at a fixed rate; mcblast does (see the comment at the top of mcblast.c):

- closed loop, ``-c CONNS -d DEPTH``: every connection keeps DEPTH requests in flight
  (16 x 8 is the "pipelined" load of ../shared/BENCHMARKING.md);
- open loop, ``-r RATE``: requests are due at evenly spaced times whatever the server does,
  and a latency is measured from the time the request was due, so a stalled server cannot
  hide its tail (no coordinated omission).  Answers to requests due within the window are
  waited for up to 1 s after it; what is still missing is reported as ``unanswered``.

Latencies come from a log-linear histogram (32 sub-buckets per power of two, so a
percentile is within about 3% of the truth), unlike memaslap's log2 one.  The binary is
built from the source next to this file into ``build/mcblast`` whenever it is missing or
older than the source (``make build/mcblast`` does the same).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "mcblast.c"
DEFAULT_BINARY = SOURCE.parent.parent / "build" / "mcblast"
# The same flags as the Makefile's build/mcblast target.
CFLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror"]


class McblastError(RuntimeError):
    """mcblast could not be built, or its output has no result line."""


def ensure_built(binary: Path = DEFAULT_BINARY, source: Path = SOURCE, cc: str = "gcc") -> Path:
    """Compile ``source`` into ``binary`` if it is missing or older than the source.

    Without the source (a copy of the harness in the test VM, next to a static
    mcblast), an existing binary is used as it is.
    """
    if binary.is_file() and (not source.is_file() or binary.stat().st_mtime >= source.stat().st_mtime):
        return binary
    if shutil.which(cc) is None:
        raise McblastError(f"{binary} is missing or outdated and there is no {cc} to build it")
    binary.parent.mkdir(parents=True, exist_ok=True)
    argv = [cc, *CFLAGS, "-o", str(binary), str(source), "-lm"]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise McblastError(f"building mcblast failed: {' '.join(argv)}\n{out.stderr.strip()}")
    return binary


def command(
    binary: str,
    port: int,
    *,
    conns: int,
    depth: int,
    rate: float | None,
    duration_s: float,
    warmup_s: float,
    key_size: int,
    value_size: int,
    get_ratio: float,
    keys: int,
    prefill: bool = True,
) -> list[str]:
    """mcblast's argument vector against 127.0.0.1:port (loopback only, always)."""
    argv = [binary, "-s", f"127.0.0.1:{port}", "-c", str(conns), "-d", str(depth)]
    argv += ["-t", f"{duration_s:g}", "-w", f"{warmup_s:g}", "-k", str(key_size)]
    argv += ["-v", str(value_size), "-g", f"{get_ratio:g}", "-K", str(keys)]
    if rate:
        argv += ["-r", f"{rate:g}"]
    if prefill:
        argv.append("-P")
    return argv


@dataclass
class McblastResult:
    """What one mcblast run printed (its JSON line)."""

    mode: str  # "closed" or "open"
    ops: int  # measured responses
    seconds: float  # measured window
    ops_per_s: float  # ops / seconds
    mean_us: float  # mean latency
    p50_us: float  # latency percentiles (log-linear histogram, ~3% resolution)
    p90_us: float
    p99_us: float
    p999_us: float
    get_hits: int | None  # measured gets that returned a value
    get_misses: int | None  # measured gets answered END alone
    unanswered: int | None  # open loop: measured requests never answered
    errors: int  # unexpected response lines
    raw: dict[str, object]  # the whole JSON object


def parse_output(text: str) -> McblastResult:
    """The last JSON line whose "generator" is "mcblast"; raise McblastError without one."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if obj.get("generator") != "mcblast":
            continue
        return McblastResult(
            mode=str(obj["mode"]),
            ops=int(obj["ops"]),
            seconds=float(obj["seconds"]),
            ops_per_s=float(obj["ops_per_sec"]),
            mean_us=float(obj["lat_mean_us"]),
            p50_us=float(obj["lat_p50_us"]),
            p90_us=float(obj["lat_p90_us"]),
            p99_us=float(obj["lat_p99_us"]),
            p999_us=float(obj["lat_p999_us"]),
            get_hits=_opt_int(obj.get("get_hits")),
            get_misses=_opt_int(obj.get("get_misses")),
            unanswered=_opt_int(obj.get("unanswered")),
            errors=int(obj.get("errors", 0)),
            raw=obj,
        )
    tail = "\n".join(text.strip().splitlines()[-5:])
    raise McblastError(f"no mcblast JSON line in its output:\n{tail}")


def _opt_int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) else None
