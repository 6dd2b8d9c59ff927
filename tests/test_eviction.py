"""Eviction under a small memory limit.

With -m 2 the server is asked to keep far more data than fits.  It must
evict (LRU) instead of failing the stores, keep "bytes" within
"limit_maxbytes", keep its resident memory bounded, and still serve the most
recently written keys.
"""

from __future__ import annotations

import pytest
from conftest import Server, assert_alive
from mcwire import stats

MB = 1024 * 1024
LIMIT_MB = 2
SERVER_ARGS = ["-m", str(LIMIT_MB), "-t", "2"]
# One fresh server per value size: memcached gives every slab class in use
# at least one 1 MB page whatever the limit, so mixing sizes on a 2 MB server
# would put "bytes" over the limit by design.


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/PID/status")


@pytest.mark.parametrize("value_size", [100, 1000, 20000])
def test_eviction_keeps_memory_bounded(start_server, target, value_size: int) -> None:  # type: ignore[no-untyped-def]
    server: Server = start_server(target, SERVER_ARGS)
    total = 24 * MB  # twelve times the limit
    count = total // value_size
    rss_before = rss_bytes(server.pid)
    with server.wire(timeout=30) as w:
        batch = []
        for i in range(count):
            key = b"ev%d_%d" % (value_size, i)
            val = (b"%d:" % i).ljust(value_size, b"v")
            batch.append(b"set %s 0 0 %d noreply\r\n%s\r\n" % (key, len(val), val))
            if len(batch) == 200:
                w.send(b"".join(batch))
                batch = []
        w.send(b"".join(batch))
        w.expect(b"mn\r\n", b"MN\r\n", timeout=30)
        # The last keys written are there, with their exact values.
        for i in range(count - 20, count):
            key = b"ev%d_%d" % (value_size, i)
            val = (b"%d:" % i).ljust(value_size, b"v")
            w.expect(b"get %s\r\n" % key, b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(val), val))
        # The first ones are gone.
        w.expect(b"get ev%d_0 ev%d_1\r\n" % (value_size, value_size), b"END\r\n")
    st = stats(server.host, server.port)
    assert int(st["evictions"]) > 0, st
    assert int(st["bytes"]) <= int(st["limit_maxbytes"]) == LIMIT_MB * MB, st
    assert int(st["curr_items"]) < count
    assert int(st["total_items"]) >= count
    rss = rss_bytes(server.pid)
    assert rss < LIMIT_MB * MB + 64 * MB, f"RSS {rss} bytes with -m {LIMIT_MB}"
    assert rss - rss_before < 32 * MB, f"RSS grew by {rss - rss_before} bytes"
    assert_alive(server)
