"""Seeded synthetic cache workloads for the hit-ratio benchmark (``--hit-ratio``).

Why: a cache is judged by how often it hits for the memory it is given, and that depends
on the traffic: how skewed key popularity is, how big values are, whether scans or
one-time keys pollute it, whether value sizes drift, how long items live.  Each scenario
here is a named, documented stand-in for one such kind of traffic, generated from a seed
by a pure-Python generator (``random.Random``, a Zipf CDF searched with ``bisect``), so
that every server replays exactly the same sequence of gets.

The traffic is look-aside caching: the client gets a key; on a miss it "reads the
database" and sets the key (its value size and TTL are fixed per key).  So the gets are
identical for every server, and the sets follow each server's own misses.

Sizes are relative to the server's item memory (``-m``): key spaces, sweeps and request
counts scale with the number of items of mean size that fit (``Trace.fit_items``), so a
scenario means the same thing at any ``-m``.  ``scale`` multiplies request counts only.

Requests are grouped into batches that the replayer pipelines (loadtest/hitratio.py): a
batch never holds the same key twice, so that replaying batch by batch (the sets of one
batch are sent before the gets of the next) gives every get the answer it would get in a
one-request-at-a-time replay.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from array import array
from dataclasses import dataclass, field

# Bytes a stored item costs beyond its value, roughly (header, key, suffix), used only to
# size key spaces against memory: memcached's item header is 48-56 bytes.
ITEM_OVERHEAD = 64
# Largest value any scenario draws (the tail of the realistic distribution).
MAX_VALUE = 100 * 1024
# Seconds the second phase of "calcification" lasts (times --scale), when paced.
CALCIFY_SECONDS = 45.0
# Requests per pipelined batch, at most.
MAX_BATCH = 32


@dataclass(frozen=True)
class SizeDist:
    """A value size distribution: a log-uniform body and an optional Pareto tail."""

    name: str  # shown in the scenario description
    lo: int  # body: log-uniform between lo and hi bytes
    hi: int
    tail_p: float = 0.0  # share of values from the tail
    tail_alpha: float = 1.2  # Pareto shape of the tail, from hi up to tail_max
    tail_max: int = MAX_VALUE

    def draw(self, rng: random.Random) -> int:
        if self.tail_p and rng.random() < self.tail_p:
            # Truncated Pareto by inversion: x = hi * (1 - u (1 - (hi/max)^a))^(-1/a).
            a = self.tail_alpha
            floor = (self.hi / self.tail_max) ** a
            u = rng.random()
            return min(self.tail_max, int(self.hi * (1.0 - u * (1.0 - floor)) ** (-1.0 / a)))
        return int(math.exp(rng.uniform(math.log(self.lo), math.log(self.hi))))

    def mean(self) -> float:
        """Mean value size: the log-uniform body's and the truncated Pareto tail's, exactly."""
        body = (self.hi - self.lo) / math.log(self.hi / self.lo)
        if not self.tail_p:
            return body
        a, lo, hi = self.tail_alpha, self.hi, self.tail_max
        tail = a * lo**a / (1 - (lo / hi) ** a) * (lo ** (1 - a) - hi ** (1 - a)) / (a - 1)
        return (1 - self.tail_p) * body + self.tail_p * tail


# Mostly 100 B - 2 KiB (log-uniform), 10% from a Pareto tail 2 KiB - 100 KiB: mean ~1.2 KiB.
REALISTIC = SizeDist("100 B-2 KiB, 10% Pareto(1.2) tail to 100 KiB", 100, 2048, tail_p=0.10)
SMALL = SizeDist("300 B-1 KiB", 300, 1024)
LARGE = SizeDist("2-8 KiB", 2048, 8192)

# TTL mix of the "ttl" scenario: (seconds, share of keys).
TTL_MIX: tuple[tuple[int, float], ...] = ((2, 0.25), (5, 0.15), (30, 0.10), (600, 0.20), (3600, 0.15), (14400, 0.15))


class Zipf:
    """Ranks 0..n-1 with P(rank k) proportional to 1/(k+1)^alpha."""

    def __init__(self, n: int, alpha: float) -> None:
        self.n = n
        self.cdf = list(itertools.accumulate((k + 1) ** -alpha for k in range(n)))
        self.total = self.cdf[-1]

    def draw(self, rng: random.Random) -> int:
        return min(self.n - 1, bisect.bisect_left(self.cdf, rng.random() * self.total))


@dataclass
class Phase:
    """A named stretch of a trace, for per-phase hit ratios."""

    name: str  # e.g. "hot", "scan"
    start: int  # first request index
    end: int  # one past the last
    pace: float | None = None  # requests/s for this phase instead of the run's pace


@dataclass
class Trace:
    """One scenario's request sequence and the keys it uses."""

    scenario: str  # scenario name
    seed: int  # the seed it was generated from
    fit_items: int  # items of mean size that fit the memory it was sized for
    keys: list[bytes] = field(default_factory=list)  # key id -> key
    sizes: array = field(default_factory=lambda: array("i"))  # key id -> value bytes
    ttls: array = field(default_factory=lambda: array("i"))  # key id -> TTL, s (0: none)
    requests: array = field(default_factory=lambda: array("i"))  # key id per get
    batches: array = field(default_factory=lambda: array("i"))  # start index of each batch
    phases: list[Phase] = field(default_factory=list)
    focus: tuple[str, int, int] = ("", 0, 0)  # (label, start, end): the window the table shows
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)  # other named windows (start, end)
    # If not empty, the focus is these requests (indices) rather than the focus range.
    focus_requests: array = field(default_factory=lambda: array("i"))

    def new_key(self, prefix: str, size: int, ttl: int = 0) -> int:
        self.keys.append(f"{prefix}:{len(self.keys):09d}".encode())
        self.sizes.append(size)
        self.ttls.append(ttl)
        return len(self.keys) - 1

    def key_space(self, prefix: str, n: int, dist: SizeDist, rng: random.Random, ttl: bool = False) -> int:
        """Create n keys with sizes from dist (and TTLs from TTL_MIX); return the first id."""
        first = len(self.keys)
        for _ in range(n):
            self.new_key(prefix, dist.draw(rng), _draw_ttl(rng) if ttl else 0)
        return first

    def phase(self, name: str, ids: list[int], pace: float | None = None) -> None:
        start = len(self.requests)
        self.requests.extend(ids)
        self.phases.append(Phase(name, start, len(self.requests), pace))

    def due_times(self, pace: float) -> list[float]:
        """Seconds after the start at which each batch is due, at ``pace`` requests/s
        except in phases with a pace of their own."""
        out: list[float] = []
        phase_t, p = 0.0, 0
        for start in self.batches:
            while p + 1 < len(self.phases) and start >= self.phases[p].end:
                phase_t += (self.phases[p].end - self.phases[p].start) / (self.phases[p].pace or pace)
                p += 1
            ph = self.phases[p]
            out.append(phase_t + (start - ph.start) / (ph.pace or pace))
        return out

    def finish(self) -> None:
        """Cut the requests into batches of distinct keys (at most MAX_BATCH)."""
        self.batches = array("i")
        seen: set[int] = set()
        for i, k in enumerate(self.requests):
            if not seen or k in seen or len(seen) >= MAX_BATCH:
                self.batches.append(i)
                seen.clear()
            seen.add(k)


def _draw_ttl(rng: random.Random) -> int:
    u = rng.random()
    for ttl, share in TTL_MIX:
        u -= share
        if u < 0:
            return ttl
    return TTL_MIX[-1][0]


@dataclass(frozen=True)
class ScenarioSpec:
    """A named scenario: what it stands for, and how to generate it."""

    name: str
    description: str  # one paragraph for the README and --list-scenarios


def _fit(memory_bytes: int, dist: SizeDist) -> int:
    return max(1, int(memory_bytes / (dist.mean() + ITEM_OVERHEAD)))


def _zipf(trace: Trace, rng: random.Random, alpha: float, space: float, reqs: float, ohw: float) -> None:
    n = max(2, int(space * trace.fit_items))
    first = trace.key_space("z", n, REALISTIC, rng)
    z = Zipf(n, alpha)
    ids: list[int] = []
    for _ in range(int(reqs * trace.fit_items)):
        if ohw and rng.random() < ohw:
            ids.append(trace.new_key("o", REALISTIC.draw(rng)))
        else:
            ids.append(first + z.draw(rng))
    trace.phase("zipf", ids)
    half = len(trace.requests) // 2
    trace.focus = ("second half", half, len(trace.requests))


def _scan(trace: Trace, rng: random.Random, scale: float) -> None:
    hot_n = max(2, trace.fit_items // 2)
    hot = trace.key_space("h", hot_n, REALISTIC, rng)
    z = Zipf(hot_n, 1.0)
    cold_n = 2 * trace.fit_items
    cold = trace.key_space("c", cold_n, REALISTIC, rng)
    n1 = int(4 * hot_n * scale)
    trace.phase("hot", [hot + z.draw(rng) for _ in range(n1)])
    trace.phase("scan", list(range(cold, cold + cold_n)))
    trace.phase("hot again", [hot + z.draw(rng) for _ in range(int(2 * hot_n * scale))])
    hot1, again = trace.phases[0], trace.phases[2]
    tenth = max(1, (again.end - again.start) // 10)
    trace.ranges["last 10% before scan"] = (hot1.end - tenth, hot1.end)
    trace.ranges["first 10% after scan"] = (again.start, again.start + tenth)
    # Survival: the first get after the scan of every key the hot phase had stored.
    stored = set(trace.requests[hot1.start : hot1.end])
    for i in range(again.start, again.end):
        k = trace.requests[i]
        if k in stored:
            trace.focus_requests.append(i)
            stored.discard(k)
    trace.focus = ("hot keys surviving the scan", again.start, again.end)


def _calcification(trace: Trace, rng: random.Random, scale: float, memory_bytes: int) -> None:
    # Phase 1 fills memory with small values (Zipf 0.8 over 3x memory, so most gets miss
    # and are stored); phase 2 asks for new keys with large values, for CALCIFY_SECONDS
    # (paced), long enough for memcached's slab automover to act on its 30 s window.
    for prefix, dist, alpha, space, reqs in (("s", SMALL, 0.8, 3, 2.5), ("l", LARGE, 1.0, 5, 12.0)):
        fit = _fit(memory_bytes, dist)
        first = trace.key_space(prefix, space * fit, dist, rng)
        z = Zipf(space * fit, alpha)
        count = int(reqs * fit * scale)
        pace = count / (CALCIFY_SECONDS * scale) if prefix == "l" else None
        trace.phase(f"{dist.name} values", [first + z.draw(rng) for _ in range(count)], pace)
    p2 = trace.phases[1]
    mid = (p2.start + p2.end) // 2
    trace.focus = ("second half after shift", mid, p2.end)


def _ttl(trace: Trace, rng: random.Random, scale: float) -> None:
    n = 8 * trace.fit_items
    first = trace.key_space("t", n, REALISTIC, rng, ttl=True)
    z = Zipf(n, 1.0)
    trace.phase("zipf", [first + z.draw(rng) for _ in range(int(6 * trace.fit_items * scale))])
    half = len(trace.requests) // 2
    trace.focus = ("second half", half, len(trace.requests))


SCENARIOS: dict[str, ScenarioSpec] = {
    s.name: s
    for s in (
        ScenarioSpec(
            "zipf-0.8",
            "Zipf popularity, alpha 0.8, over a key space holding 8x the memory (REALISTIC sizes);"
            " 6 x fit requests, look-aside (get, set on miss). Focus: second half.",
        ),
        ScenarioSpec("zipf-1.0", "As zipf-0.8 with alpha 1.0."),
        ScenarioSpec(
            "zipf-1.2",
            "As zipf-0.8 with alpha 1.2, and 20 x fit requests: so few distinct keys are asked for"
            " that memory fills only about halfway through.",
        ),
        ScenarioSpec(
            "one-hit-40",
            "As zipf-1.0, but 40% of requests are for one-hit wonders: keys requested exactly once"
            " (each misses and is stored, and never read again).",
        ),
        ScenarioSpec(
            "scan",
            "A hot set of fit/2 keys under Zipf 1.0 (4 x hot-set requests), then one sweep over"
            " 2 x fit cold keys (each get misses and is stored once), then the hot set again"
            " (2 x hot-set requests). Focus: hot keys surviving the scan, i.e. the hit ratio of the"
            " first get after the scan of each key the hot phase stored (a plain LRU loses them all).",
        ),
        ScenarioSpec(
            "calcification",
            "Value sizes shift: 300 B-1 KiB values (Zipf 0.8 over 3x memory, 2.5 x fit requests), then"
            " new keys with 2-8 KiB values (Zipf 1.0 over 5x memory, 12 x fit requests, paced over 45 s"
            " so that memcached's slab automover, which decides on a 30 s window, can act). Without"
            " slab page rebalancing the large classes are starved. Focus: second half after the shift.",
        ),
        ScenarioSpec(
            "ttl",
            "Zipf 1.0 over 8x memory; each key has a TTL from a mix: 2 s 25%, 5 s 15%, 30 s 10%,"
            " 10 min 20%, 1 h 15%, 4 h 15%. Expired items should give their memory up. Paced replay"
            " makes expiry fall at the same request for every server. Focus: second half.",
        ),
    )
}


def build(name: str, seed: int, memory_bytes: int, scale: float = 1.0) -> Trace:
    """The trace of scenario ``name`` for a server with ``memory_bytes`` of item memory."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    # One stream per (seed, scenario), so adding a scenario changes no other.
    rng = random.Random(f"{seed}:{name}")
    trace = Trace(name, seed, _fit(memory_bytes, REALISTIC))
    if name.startswith("zipf-"):
        alpha = float(name[5:])
        # At alpha 1.2 few distinct keys are asked for: 6 x fit requests would never fill
        # memory, so that scenario runs longer.
        _zipf(trace, rng, alpha, 8.0, (20.0 if alpha > 1.1 else 6.0) * scale, 0.0)
    elif name == "one-hit-40":
        _zipf(trace, rng, 1.0, 8.0, 6.0 * scale, 0.4)
    elif name == "scan":
        _scan(trace, rng, scale)
    elif name == "calcification":
        _calcification(trace, rng, scale, memory_bytes)
    else:
        _ttl(trace, rng, scale)
    trace.finish()
    return trace
