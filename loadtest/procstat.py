"""CPU accounting from /proc: a process's CPU time and every CPU's busy time.

Server efficiency is reported as server CPU per operation, and a run is only trusted when
little CPU went to anything but the server and the client ("foreign load", which on these
shared virtual machines does not show up as steal time).  Both figures come from the
kernel's tick-based accounting read here: /proc/PID/stat for one process (all its threads)
and /proc/stat for each CPU.  Resolution is one clock tick (1/SC_CLK_TCK s, 10 ms with
the usual USER_HZ of 100).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK: int = os.sysconf("SC_CLK_TCK")

# Columns of a "cpuN" line in /proc/stat, in order (see proc(5)).
_STAT_FIELDS = (
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "irq",
    "softirq",
    "steal",
    "guest",
    "guest_nice",
)
# Time a CPU spent running something.  guest and guest_nice are already included in user
# and nice; steal is time the hypervisor took away, which no process here used.
_BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq")


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        text = f.read()
    # The command name (field 2) is in parentheses and may contain spaces or ')':
    # everything after the last ')' is fields 3.. (state, ppid, ...).
    rest = text.rsplit(")", 1)[1].split()
    utime, stime = int(rest[11]), int(rest[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


@dataclass(frozen=True)
class CpuSnapshot:
    """Busy and steal time of every CPU at one instant, in seconds since boot."""

    busy: dict[int, float]  # CPU number -> user+nice+system+irq+softirq seconds
    steal: dict[int, float]  # CPU number -> steal seconds


def cpu_snapshot() -> CpuSnapshot:
    """Read /proc/stat's per-CPU lines."""
    busy: dict[int, float] = {}
    steal: dict[int, float] = {}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *cols = line.split()
            values = dict(zip(_STAT_FIELDS, (int(c) for c in cols), strict=False))
            cpu = int(name[3:])
            busy[cpu] = sum(values.get(k, 0) for k in _BUSY_FIELDS) / CLK_TCK
            steal[cpu] = values.get("steal", 0) / CLK_TCK
    return CpuSnapshot(busy=busy, steal=steal)


@dataclass(frozen=True)
class CpuDelta:
    """CPU time spent between two snapshots, in seconds."""

    busy_total: float  # all CPUs
    busy_on: float  # only the CPUs given to delta() (where server and client ran)
    steal_total: float  # all CPUs


def delta(before: CpuSnapshot, after: CpuSnapshot, cpus: set[int]) -> CpuDelta:
    """Busy time between ``before`` and ``after``, overall and on ``cpus``."""
    diffs = {c: after.busy[c] - before.busy.get(c, 0.0) for c in after.busy}
    steal = sum(after.steal[c] - before.steal.get(c, 0.0) for c in after.steal)
    return CpuDelta(
        busy_total=sum(diffs.values()),
        busy_on=sum(v for c, v in diffs.items() if c in cpus),
        steal_total=steal,
    )
