"""Prometheus metrics: scraped by a real Prometheus, compared with memcached.

A real Prometheus (Debian's ``prometheus`` package) is started on loopback
with a scrape config for stackmapd's /metrics, a 1 s scrape interval and a
temporary data directory; the test sends a known number of operations and
asks Prometheus's HTTP API for memcached_up and for counters that must have
moved by exactly that number.  A second test runs one workload against
Debian's memcached and against stackmapd and checks that the exporter's
figures built from either server's stats agree.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from control_support import HOST, Proc, free_port, http, request, running
from prom_support import PROMETHEUS, SKIP_REASON, Prometheus, query, wait_value
from prometheus_client.parser import text_string_to_metric_families

from stackmapd.metrics import StackmapCollector, StatsSource

MEMCACHED = shutil.which("memcached")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def srv() -> Iterator[Proc]:
    with running() as p:
        yield p


def test_metrics_endpoint_has_the_exporters_names(srv: Proc) -> None:
    with srv.conn() as s:
        request(s, b"set a 0 0 1\r\nx\r\nget a\r\nget b\r\n")
    status, body = http("GET", srv.url + "/metrics")
    assert status == 200
    got = samples(body.decode())
    names = {name for name, _ in got}
    for name in ("memcached_up", "memcached_uptime_seconds", "memcached_version", "memcached_current_connections",
                 "memcached_connections_total", "memcached_connections_rejected_total",
                 "memcached_max_connections", "memcached_read_bytes_total", "memcached_written_bytes_total",
                 "memcached_commands_total", "memcached_current_items", "memcached_items_total",
                 "memcached_items_evicted_total", "memcached_items_reclaimed_total", "memcached_current_bytes",
                 "memcached_limit_bytes", "memcached_item_too_large_total", "memcached_item_no_memory_total",
                 "memcached_process_user_cpu_seconds_total", "memcached_slab_current_items",
                 "memcached_slab_chunk_size_bytes", "memcached_slab_commands_total",
                 "memcached_slab_items_moves_to_cold", "memcached_slab_lru_hits_total",
                 "stackmap_command_duration_seconds_bucket", "stackmap_syscalls_total",
                 "stackmap_uring_buffer_ring_empty_total", "stackmap_syscalls_per_request",
                 "stackmap_uring_buffers_published"):
        assert name in names, name
    assert got[("memcached_commands_total", (("command", "get"), ("status", "hit")))] == 1
    assert got[("memcached_commands_total", (("command", "get"), ("status", "miss")))] == 1
    assert got[("memcached_commands_total", (("command", "set"), ("status", "hit")))] == 1
    assert got[("memcached_slab_current_items", (("slab", "1"),))] == 1
    assert got[("stackmap_command_duration_seconds_count", (("command", "get"),))] == 2
    assert got[("stackmap_command_duration_seconds_bucket", (("command", "get"), ("le", "+Inf")))] == 2


@pytest.mark.skipif(PROMETHEUS is None, reason=SKIP_REASON)
def test_real_prometheus_scrapes_exact_counts(srv: Proc, tmp_path: Path) -> None:
    prom = Prometheus(srv.http_port, tmp_path)
    prom_port = prom.port
    try:
        wait_value(prom_port, 'memcached_up{job="stackmapd"}', 1)
        sets, hits, misses = 137, 59, 11
        with srv.conn() as s:
            for i in range(sets):
                request(s, b"set p%d 0 0 2\r\nok\r\n" % i, b"STORED\r\n")
            for i in range(hits):
                request(s, b"get p%d\r\n" % i)
            for i in range(misses):
                request(s, b"get nope%d\r\n" % i)
        wait_value(prom_port, 'memcached_commands_total{command="set",status="hit"}', sets)
        wait_value(prom_port, 'memcached_commands_total{command="get",status="hit"}', hits)
        wait_value(prom_port, 'memcached_commands_total{command="get",status="miss"}', misses)
        wait_value(prom_port, 'stackmap_command_duration_seconds_count{command="set"}', sets)
        wait_value(prom_port, "memcached_current_items", sets)
        assert float(query(prom_port, 'memcached_up{job="stackmapd"}')[0]["value"][1]) == 1  # type: ignore[index]
    finally:
        prom.stop()


# ---- the same workload on Debian's memcached and on stackmapd ----

WORKLOAD = (
    [b"set w%d %d 0 1\r\n%d\r\n" % (i, i, i % 10) for i in range(50)]
    + [b"get w%d\r\n" % i for i in range(30)] + [b"get x%d\r\n" % i for i in range(10)]
    + [b"delete w%d\r\n" % i for i in range(45, 50)] + [b"delete x%d\r\n" % i for i in range(3)]
    + [b"incr w%d 5\r\n" % i for i in range(4)] + [b"incr x1 1\r\n", b"incr x2 1\r\n"]
    + [b"decr w9 1\r\n", b"decr x9 1\r\n"]
    + [b"touch w%d 100\r\n" % i for i in range(2)] + [b"touch x1 100\r\n"]
    + [b"cas w20 0 0 1 999999\r\nz\r\n", b"cas x20 0 0 1 1\r\nz\r\n"]
)


def _stats_over_wire(port: int, group: str) -> dict[str, str]:
    """A group's stats; none for one the server does not have (memcached answers
    "stats backend", stackmapd's own group, with ERROR)."""
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(f"stats {group}".strip().encode() + b"\r\n")
        raw = b""
        while not raw.endswith((b"END\r\n", b"ERROR\r\n")):
            chunk = s.recv(1 << 20)
            assert chunk, f"connection closed after {raw[-200:]!r}"
            raw += chunk
    return {ln.split(" ")[1]: ln.split(" ")[2] for ln in raw.decode().split("\r\n") if ln.startswith("STAT ")}


def _exporter_view(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    class NoLatency:
        commands: tuple[str, ...] = ()
        counts: tuple[tuple[int, ...], ...] = ()
        sums_ns: tuple[int, ...] = ()
        bounds_ns: tuple[int, ...] = ()

    collector = StackmapCollector(StatsSource(lambda g: _stats_over_wire(port, g), NoLatency))
    out = {}
    for fam in collector.collect():
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _run_workload(port: int) -> None:
    with socket.create_connection((HOST, port), timeout=10) as s:
        for cmd in WORKLOAD:
            s.sendall(cmd)
            buf = b""
            while not buf.endswith(b"\r\n") or (cmd.startswith(b"get") and not buf.endswith(b"END\r\n")):
                buf += s.recv(65536)


@pytest.mark.skipif(MEMCACHED is None, reason="Debian's memcached is not installed")
def test_memcached_and_stackmapd_stats_line_up(srv: Proc) -> None:
    port = free_port()
    cmd = [MEMCACHED, "-U", "0", "-l", HOST, "-p", str(port), "-t", "2"]
    if os.geteuid() == 0:
        cmd += ["-u", "root"]
    mc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "memcached did not start"
                time.sleep(0.05)
        _run_workload(port)
        _run_workload(srv.port)
        theirs, ours = _exporter_view(port), _exporter_view(srv.port)
    finally:
        mc.terminate()
        mc.wait(timeout=10)
    compared = [k for k in theirs if k[0] in (
        "memcached_commands_total", "memcached_current_items", "memcached_items_total",
        "memcached_items_evicted_total", "memcached_limit_bytes", "memcached_max_connections",
        "memcached_slab_current_items", "memcached_slab_commands_total", "memcached_up")]
    assert len(compared) > 20
    diffs = {k: (theirs[k], ours.get(k)) for k in compared if theirs[k] != ours.get(k)}
    assert not diffs, diffs
