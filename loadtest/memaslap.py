"""memaslap (Debian's ``memcaslap``): its workload file, command line and output parser.

memaslap is the load generator every figure in ../shared/BENCHMARKING.md was taken with,
so the harness keeps its exact invocation (``-T 1 -c 64 -F cfg -t Ns -S Ns``) and reads
what it prints:

- the final ``Run time: 10.0s Ops: 1234567 TPS: 123456 Net_rate: 12.3M/s`` line
  (throughput over the timed run; memaslap's start-up is not part of ``-t``);
- with ``-S``, a closing ``Total Statistics (N events)`` block with ``Avg:`` (mean latency,
  whole microseconds) and a ``Log2 Dist:`` histogram.  Bucket ``i`` of that histogram
  counts responses whose latency ``t`` (microseconds) satisfies ``2^(i-1) < t <= 2^i``
  (bucket 0: ``t <= 1``); rows are printed four buckets at a time, labelled with the
  first bucket's index.  A percentile is therefore known only to within a factor of two:
  we report the bucket's upper bound (``p99 <= 2^i``) and keep its lower bound too;
- ``get_misses: N`` (a server that misses every get is fast for the wrong reason).

The screen-clearing escape sequences memaslap prints between periodic reports are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_FINAL = re.compile(r"Run time:\s*(?P<time>[0-9.]+)\s*s\s+Ops:\s*(?P<ops>\d+)\s+TPS:\s*(?P<tps>\d+)")
_BLOCK = re.compile(r"^\s*(?P<name>\w+) Statistics \((?P<events>\d+) events\)\s*$")
_AVG = re.compile(r"^\s*Avg:\s*(?P<avg>[0-9.]+)\s*$")
_DIST_HEAD = re.compile(r"^\s*Log2 Dist:\s*(?P<rest>.*)$")
_DIST_ROW = re.compile(r"^\s*(?P<first>\d+):(?P<counts>(?:\s+\d+)+)\s*$")
_GET_MISSES = re.compile(r"^\s*get_misses:\s*(?P<n>\d+)\s*$", re.MULTILINE)
_TABLE_ROW = re.compile(r"^\s*(?P<kind>Period|Global)\s+(?P<cols>\d.*)$")


class MemaslapParseError(ValueError):
    """memaslap's output lacks the final throughput line."""


def config_text(key_size: int, value_size: int, get_ratio: float) -> str:
    """A memaslap ``-F`` workload file: fixed key and value sizes, get/set mix.

    ``cmd`` lines are ``<command> <proportion>`` with 0 = set and 1 = get.
    """
    set_ratio = 1.0 - get_ratio
    return f"key\n{key_size} {key_size} 1\nvalue\n{value_size} {value_size} 1\ncmd\n0 {set_ratio:g}\n1 {get_ratio:g}\n"


def write_config(directory: Path, key_size: int, value_size: int, get_ratio: float) -> Path:
    """Write the workload file for one scenario into ``directory``; return its path."""
    path = directory / f"memaslap-k{key_size}-v{value_size}.cfg"
    path.write_text(config_text(key_size, value_size, get_ratio), encoding="ascii")
    return path


def command(
    memaslap: str,
    port: int,
    config: Path,
    duration_s: int,
    stat_interval_s: int,
    threads: int = 1,
    concurrency: int = 64,
) -> list[str]:
    """memaslap's argument vector against 127.0.0.1:port (loopback only, always)."""
    return [
        memaslap,
        "-s",
        f"127.0.0.1:{port}",
        "-T",
        str(threads),
        "-c",
        str(concurrency),
        "-F",
        str(config),
        "-t",
        f"{duration_s}s",
        "-S",
        f"{stat_interval_s}s",
    ]


@dataclass
class Histogram:
    """memaslap's log2 latency histogram: bucket index -> count (see module doc)."""

    buckets: dict[int, int] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return sum(self.buckets.values())

    def percentile_bucket(self, q: float) -> int | None:
        """Index of the bucket holding quantile ``q`` (0 < q <= 1), or None if empty."""
        total = self.events
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return index
        return max(self.buckets)

    def percentile_bounds(self, q: float) -> tuple[float, float] | None:
        """(lower, upper] latency bounds in microseconds of quantile ``q``."""
        index = self.percentile_bucket(q)
        if index is None:
            return None
        upper = float(2**index)
        lower = 0.0 if index == 0 else float(2 ** (index - 1))
        return lower, upper


@dataclass
class MemaslapResult:
    """What one memaslap run reported."""

    run_time_s: float  # timed run length memaslap measured
    ops: int  # operations completed in the timed run
    tps: int  # memaslap's throughput figure, ops/s
    mean_latency_us: float | None  # mean over all operations, whole microseconds
    histogram: Histogram  # "Total" latency histogram, empty without -S
    get_misses: int | None  # gets that found nothing

    def latency_bounds(self, q: float) -> tuple[float, float] | None:
        return self.histogram.percentile_bounds(q)


def _parse_blocks(lines: list[str]) -> dict[str, tuple[float | None, Histogram]]:
    """The closing "<Name> Statistics (N events)" blocks: name -> (Avg, histogram)."""
    blocks: dict[str, tuple[float | None, Histogram]] = {}
    name: str | None = None
    avg: float | None = None
    hist = Histogram()
    in_dist = False
    for line in lines:
        head = _BLOCK.match(line)
        if head:
            if name is not None:
                blocks[name] = (avg, hist)
            name, avg, hist, in_dist = head.group("name"), None, Histogram(), False
            continue
        if name is None:
            continue
        if (m := _AVG.match(line)) and not in_dist:
            avg = float(m.group("avg"))
        elif m := _DIST_HEAD.match(line):
            in_dist = True
            # Not printed by memaslap 1.0, but tolerate counts on the header line.
            if m.group("rest").strip():
                line = m.group("rest")
            else:
                continue
        if in_dist:
            row = _DIST_ROW.match(line)
            if row:
                first = int(row.group("first"))
                for offset, count in enumerate(row.group("counts").split()):
                    if int(count):
                        hist.buckets[first + offset] = int(count)
            elif line.strip():
                in_dist = False
            else:
                # A blank line ends the histogram and the block.
                blocks[name] = (avg, hist)
                name, in_dist = None, False
    if name is not None:
        blocks[name] = (avg, hist)
    return blocks


def _table_global_avg(lines: list[str]) -> float | None:
    """Fallback mean latency: Avg(us) of the last "Global" row under "Total Statistics"."""
    section: str | None = None
    value: float | None = None
    for line in lines:
        stripped = line.strip()
        if stripped.endswith("Statistics") and " " in stripped:
            section = stripped.split()[0]
        elif section == "Total" and (m := _TABLE_ROW.match(line)):
            cols = m.group("cols").split()
            # Time(s) Ops TPS Net Get_miss Min Max Avg Std Geo
            if m.group("kind") == "Global" and len(cols) >= 8:
                value = float(cols[7])
    return value


def parse_output(text: str) -> MemaslapResult:
    """Parse memaslap's standard output; raise MemaslapParseError without a final line."""
    clean = _ANSI.sub("", text).replace("\r", "")
    finals = list(_FINAL.finditer(clean))
    if not finals:
        tail = "\n".join(clean.strip().splitlines()[-8:])
        raise MemaslapParseError(f"no 'Run time: ... TPS:' line in memaslap output:\n{tail}")
    final = finals[-1]
    lines = clean.splitlines()
    blocks = _parse_blocks(lines)
    avg, hist = blocks.get("Total", (None, Histogram()))
    if avg is None:
        avg = _table_global_avg(lines)
    misses = _GET_MISSES.findall(clean)
    return MemaslapResult(
        run_time_s=float(final.group("time")),
        ops=int(final.group("ops")),
        tps=int(final.group("tps")),
        mean_latency_us=avg,
        histogram=hist,
        get_misses=int(misses[-1]) if misses else None,
    )
