"""/metrics exposes every figure ``stats`` prints, and the stats table knows every name.

A real stackmapd is started; after a small workload (so that slab classes
and items exist) the test reads ``stats``, ``stats backend``, ``stats items`` and ``stats
slabs`` over the memcached port and ``/metrics`` over HTTP, and compares
them through the engine's stats table (stackmap_core.metric_table(), the
rows of stackmap_core/src/stats_table.h):

- every name a group prints has a row (a stat added without one fails);
- every numeric value is a counter or gauge row whose series, with its
  labels (and slab="N" per class), is in /metrics;
- every text value (version, libevent, backend) is an info row;
- ``stats settings`` prints its rows (configuration: not in /metrics), each
  naming the option of options.h it shows, if any.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from control_support import HOST, Proc, http, request, running
from prometheus_client.parser import text_string_to_metric_families

import stackmap_core

Series = tuple[str, tuple[tuple[str, str], ...]]

ITEMS_KEY = re.compile(r"items:(\d+):(\w+)")
SLABS_KEY = re.compile(r"(\d+):(\w+)")


@pytest.fixture(params=["lru", "s3fifo"])
def srv(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Proc]:
    # idle_timeout set: memcached prints idle_kicks only then; -Z with a
    # session cache: the ssl_* stats (the listener is notls:, plain); each
    # eviction policy, for the per-class stats only S3-FIFO prints
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True, timeout=60)
    with running(["-o", f"eviction={request.param},idle_timeout=600,ssl_chain_cert={cert},ssl_key={key},ssl_session_cache", "-Z",
                  "-l", f"notls:{HOST}"]) as p:
        yield p


def stats_over_wire(port: int, group: str) -> list[tuple[str, str]]:
    with socket.create_connection((HOST, port), timeout=10) as s:
        raw = request(s, f"stats {group}".strip().encode() + b"\r\n")
    out = []
    for line in raw.decode().split("\r\n"):
        if line.startswith("STAT "):
            _, name, value = line.split(" ", 2)
            out.append((name, value))
    return out


def scrape(url: str) -> set[Series]:
    status, body = http("GET", url + "/metrics")
    assert status == 200
    series = set()
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            name = s.name
            if fam.type == "counter" and name.endswith("_created"):
                continue
            series.add((name, tuple(sorted(s.labels.items()))))
    return series


def numeric(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def printed(port: int) -> list[tuple[str, bool, str, str, str]]:
    """(group, per_class, slab, name, value) of everything the five groups print."""
    out = []
    for group in ("", "backend", "settings"):
        for name, value in stats_over_wire(port, group):
            out.append((group, False, "", name, value))
    for name, value in stats_over_wire(port, "items"):
        m = ITEMS_KEY.fullmatch(name)
        assert m, f"stats items printed {name!r}, not items:<class>:<name>"
        out.append(("items", True, m.group(1), m.group(2), value))
    for name, value in stats_over_wire(port, "slabs"):
        m = SLABS_KEY.fullmatch(name)
        if m:
            out.append(("slabs", True, m.group(1), m.group(2), value))
        else:
            out.append(("slabs", False, "", name, value))
    return out


def test_metrics_expose_every_stat_that_stats_prints(srv: Proc) -> None:
    with srv.conn() as s:
        request(s, b"set a 0 0 1\r\nx\r\nset big 0 0 3000\r\n" + b"y" * 3000 + b"\r\nget a big nope\r\n")
    rows = {(r.group, r.per_class, r.name): r for r in stackmap_core.metric_table()}
    stats = printed(srv.port)
    exposed = scrape(srv.url)
    assert any(per_class for _, per_class, _, _, _ in stats), "the workload left no slab class to compare"

    unknown, missing, text_not_info = [], [], []
    for group, per_class, slab, name, value in stats:
        row = rows.get((group, per_class, name))
        shown = f"stats {group}".strip() + f": {name}"
        if row is None:
            unknown.append(shown)
            continue
        if group == "settings":
            assert row.kind == "setting", shown
            continue
        if not numeric(value):
            if row.kind != "info":
                text_not_info.append(f"{shown} = {value!r}")
            continue
        labels = dict(row.labels)
        if per_class:
            labels["slab"] = slab
        want = (row.metric, tuple(sorted(labels.items())))
        if row.kind == "info" or not row.metric or want not in exposed:
            missing.append(f"{shown} -> {row.metric or '(no metric)'}{labels or ''}")
    assert not unknown, f"printed by stats, no row in stats_table.h: {unknown}"
    assert not text_not_info, f"text values in rows that are not info: {text_not_info}"
    assert not missing, f"printed by stats, absent from /metrics: {missing}"


# Rows printed only under -o eviction=s3fifo (the srv fixture's other run prints them).
S3FIFO_ONLY = {"s3fifo_to_main", "s3fifo_ghost_hits", "s3fifo_reinserted"}


def test_every_row_is_printed_and_families_are_consistent(srv: Proc) -> None:
    """No dead rows (a row nobody prints), and one kind and label set per family."""
    with srv.conn() as s:
        # a TEMP LRU item too, so that number_temp is printed
        request(s, b"lru temp_ttl 600\r\nset a 0 0 1\r\nx\r\nset t 0 300 1\r\nx\r\n",
                until=b"OK\r\nSTORED\r\nSTORED\r\n")
    seen = {(group, per_class, name) for group, per_class, _, name, _ in printed(srv.port)}
    table = stackmap_core.metric_table()
    lru = dict(stats_over_wire(srv.port, "settings"))["eviction"] == "lru"
    dead = [f"{r.group}:{r.name}" for r in table
            if (r.group, r.per_class, r.name) not in seen and not (lru and r.name in S3FIFO_ONLY)]
    assert not dead, f"rows that stats never prints: {dead}"
    by_family: dict[str, tuple[str, tuple[str, ...], bool]] = {}
    options = {o.key for o in stackmap_core.option_table()}
    for r in table:
        assert r.help and "\n" not in r.help, r.name
        assert (r.group == "settings") == (r.kind == "setting"), r.name
        if r.option:
            assert r.group == "settings" and r.option in options, f"{r.name}: no option {r.option!r}"
        if not r.metric:
            assert r.kind in ("info", "setting"), f"{r.name}: only info and settings rows may have no series"
            continue
        shape = (r.kind, tuple(k for k, _ in r.labels), r.per_class)
        assert by_family.setdefault(r.metric, shape) == shape, f"{r.metric}: rows disagree"
