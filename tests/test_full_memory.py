"""A full cache: -M refuses stores instead of evicting; a flat LRU reuses dead tail items first.

-M (memcached's --disable-evictions): once no chunk is free and nothing
dead is at the LRU tail, a store gets memcached's
"SERVER_ERROR out of memory storing object", counted in store_no_memory,
and every item stored before stays readable (no eviction).

-o no_modern (a flat LRU, memcached's older allocator): an allocation
first frees the expired or flushed items at its class's LRU tail, counted
in "reclaimed", before it takes a free chunk (memcached's t/issue_183.t).
"""

from __future__ import annotations

import pytest
from conftest import Server, Target
from mcwire import stats


def fill_until_refused(server: Server, value: bytes) -> int:
    """Store value under key0, key1, ... until a store is refused; the count stored."""
    with server.wire(timeout=30) as w:
        n = 0
        while True:
            w.send(b"set key%d 0 0 %d\r\n%s\r\n" % (n, len(value), value))
            line = w.read_line()
            if line != b"STORED\r\n":
                assert line == b"SERVER_ERROR out of memory storing object\r\n", line
                return n
            n += 1
            assert n < 100_000, "-M never refused a store"


@pytest.mark.parametrize("policy", ["", "s3fifo"])
def test_dash_M_refuses_instead_of_evicting(start_server, target: Target, policy: str) -> None:  # type: ignore[no-untyped-def]
    if policy and target.name != "stackmapd":
        pytest.skip("-o eviction= is stackmapd's")
    server: Server = start_server(target, ["-M", "-m", "2", *(["-o", f"eviction={policy}"] if policy else [])])
    value = b"B" * 8192
    stored = fill_until_refused(server, value)
    assert stored > 0
    with server.wire(timeout=30) as w:
        w.expect(b"set more 0 0 %d\r\n%s\r\n" % (len(value), value),
                 b"SERVER_ERROR out of memory storing object\r\n")
        for i in range(stored):
            w.expect(b"get key%d\r\n" % i, b"VALUE key%d 0 %d\r\n%s\r\nEND\r\n" % (i, len(value), value))
        settings = w.request(b"stats settings\r\n", (b"END\r\n",))
    assert b"STAT evictions off\r\n" in settings
    st = stats(server.host, server.port)
    assert st["store_no_memory"] == "2", st
    assert st["evictions"] == "0", st
    assert int(st["curr_items"]) == stored, st


def test_without_dash_M_a_full_cache_evicts(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    server: Server = start_server(target, ["-m", "2"])
    value = b"B" * 8192
    with server.wire(timeout=30) as w:
        for i in range(1000):  # 8 MB into 2 MB
            w.send(b"set key%d 0 0 %d noreply\r\n%s\r\n" % (i, len(value), value))
        w.expect(b"mn\r\n", b"MN\r\n", timeout=30)
        settings = w.request(b"stats settings\r\n", (b"END\r\n",))
    assert b"STAT evictions on\r\n" in settings
    st = stats(server.host, server.port)
    assert int(st["evictions"]) > 0 and st["store_no_memory"] == "0", st


def test_flat_lru_reclaims_a_dead_tail_item_on_alloc(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    server: Server = start_server(target, ["-o", "no_modern"])
    with server.wire() as w:
        # a negative exptime stores an item that is already expired
        w.expect(b"set dead 0 -1 1\r\n1\r\n", b"STORED\r\n")
        assert stats(server.host, server.port)["reclaimed"] == "0"
        # same size class: the allocation takes the dead tail item's chunk
        w.expect(b"set other 0 0 1\r\n2\r\n", b"STORED\r\n")
        st = stats(server.host, server.port)
        assert st["reclaimed"] == "1", st
        assert st["curr_items"] == "1", st
        w.expect(b"get dead other\r\n", b"VALUE other 0 1\r\n2\r\nEND\r\n")


def test_flat_lru_stops_at_the_first_live_tail_item(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    server: Server = start_server(target, ["-o", "no_modern"])
    with server.wire() as w:
        w.expect(b"set live 0 0 1\r\n1\r\n", b"STORED\r\n")  # the tail: live
        w.expect(b"set dead 0 -1 1\r\n1\r\n", b"STORED\r\n")  # behind it: dead
        w.expect(b"set other 0 0 1\r\n2\r\n", b"STORED\r\n")
        st = stats(server.host, server.port)
        assert st["reclaimed"] == "0", st
        assert st["curr_items"] == "3", st
