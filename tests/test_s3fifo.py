"""S3-FIFO eviction, ``-o eviction=s3fifo`` (stackmap_core/src/cache/s3fifo.c).

Per slab class a small FIFO (shown as HOT) takes new items, a main FIFO (shown as
COLD) the items read twice while in the small one, and a ghost remembers the keys the
small queue evicted; a hit only raises a counter on the item.  These tests run a real
server with the option: a sweep of keys read once leaves the keys read before it in
memory, the settings and counters show the policy, the LRU commands that have nothing
to change answer ERROR, and what walks or moves items (metadump, the crawler, the slab
page mover, flush_all) sees every item as with the LRU.  memcached has no such option:
the tests are about stackmapd alone.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HOST, Server, Target
from mcwire import Wire, stats
from test_crawler import metadump, parse_dump, wait_for
from test_lru import BIG, class_of, get_big, set_big
from test_slab_move import SMALL, fill, slab_pages, value_for, wait_idle

S3FIFO = ["-o", "eviction=s3fifo"]


def only_stackmapd(target: Target) -> None:
    if target.name != "stackmapd":
        pytest.skip("-o eviction=s3fifo is stackmapd's own")


def flood(w: Wire, prefix: str, count: int) -> None:
    for n in range(count):
        set_big(w, f"{prefix}{n}")


@pytest.mark.parametrize("more", ["", "no_modern,"])
def test_a_sweep_leaves_the_hot_keys(start_server, target: Target, more: str) -> None:  # type: ignore[no-untyped-def]
    """Keys read twice after they were stored survive a sweep of three times the
    memory in keys read once, while keys stored with them and read once do not;
    the counters show the hot keys' move to the main queue and the sweep leaving
    by the small one.  Without the LRU maintainer (no_modern) the same: S3-FIFO
    moves items only when it evicts."""
    only_stackmapd(target)
    srv = start_server(target, ["-m", "6", "-o", more + "eviction=s3fifo"])
    cls = class_of(srv, BIG)
    with srv.wire() as w:
        flood(w, "fill", 100)  # the class is full and has evicted: new items go to the small queue
        for n in range(4):
            set_big(w, f"hot{n}")
            set_big(w, f"once{n}")
        for n in range(4):
            assert get_big(w, f"hot{n}") is not None
            assert get_big(w, f"hot{n}") is not None
            assert get_big(w, f"once{n}") is not None
        before = stats(HOST, srv.port, "items")
        flood(w, "sweep", 300)
        assert [n for n in range(4) if get_big(w, f"hot{n}") is None] == []
        assert [n for n in range(4) if get_big(w, f"once{n}") is not None] == []
    items = stats(HOST, srv.port, "items")
    assert int(items[cls + "s3fifo_to_main"]) - int(before[cls + "s3fifo_to_main"]) == 4
    assert int(items[cls + "evicted"]) >= 300
    if not more:  # the segment counts are shown while the maintainer runs, as memcached's
        assert int(items[cls + "number_hot"]) > 0 and int(items[cls + "number_cold"]) > 0
        assert items[cls + "number_warm"] == "0"


def test_the_default_lru_loses_them_in_flat_mode(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    """The same sweep under one plain LRU per class evicts the hot keys: what the
    test above measures is the policy, not the memory size."""
    only_stackmapd(target)
    srv = start_server(target, ["-m", "6", "-o", "no_lru_segmented"])
    with srv.wire() as w:
        flood(w, "fill", 100)
        for n in range(4):
            set_big(w, f"hot{n}")
        for n in range(4):
            assert get_big(w, f"hot{n}") is not None
            assert get_big(w, f"hot{n}") is not None
        flood(w, "sweep", 300)
        assert [n for n in range(4) if get_big(w, f"hot{n}") is not None] == []


def test_settings_stats_and_the_lru_command(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    only_stackmapd(target)
    assert stats(HOST, start_server(target).port, "settings")["eviction"] == "lru"
    srv = start_server(target, S3FIFO)
    st = stats(HOST, srv.port, "settings")
    assert (st["eviction"], st["lru_segmented"], st["lru_maintainer_thread"]) == ("s3fifo", "no", "yes")
    with srv.wire() as w:
        w.expect(b"lru tune 10 30 0.1 2\r\n", b"ERROR eviction=s3fifo has no LRU segments to tune\r\n")
        w.expect(b"lru mode flat\r\n", b"ERROR eviction=s3fifo has no LRU mode\r\n")
        w.expect(b"lru mode segmented\r\n", b"ERROR eviction=s3fifo has no LRU mode\r\n")
        w.expect(b"lru tune 50 40 0.1 2\r\n", b"ERROR hot and warm pcts must not exceed 80\r\n")
        w.expect(b"lru temp_ttl 10\r\n", b"OK\r\n")  # TEMP works as with the LRU
        w.expect(b"set a 0 0 1\r\nx\r\nget a\r\n", b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n")
        w.expect(b"flush_all\r\nget a\r\n", b"OK\r\nEND\r\n")
        w.expect(b"set a 0 0 1\r\ny\r\nget a\r\n", b"STORED\r\nVALUE a 0 1\r\ny\r\nEND\r\n")
    items = stats(HOST, srv.port, "items")
    for name in ("s3fifo_to_main", "s3fifo_ghost_hits", "s3fifo_reinserted"):
        assert items["items:1:" + name] == "0"
    assert items["items:1:hits_to_hot"] == "2"  # both hits were in the small queue
    st = stats(HOST, start_server(target, ["-o", "eviction=lru"]).port, "settings")
    assert (st["eviction"], st["lru_segmented"]) == ("lru", "yes")


def test_an_unknown_policy_is_refused() -> None:
    script = Path(sys.executable).parent / "stackmapd"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "stackmapd"]
    proc = subprocess.run([*cmd, "-o", "eviction=fifo", "-p", "0"], capture_output=True, text=True,
                          timeout=20, stdin=subprocess.DEVNULL)
    assert proc.returncode == 64, proc.stderr
    assert "-o eviction: must be lru or s3fifo, got 'fifo'" in proc.stderr


def test_metadump_and_the_crawler_see_every_item(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    """Items in both queues are listed once each, and expired ones in either are
    freed by the crawler without a lookup."""
    only_stackmapd(target)
    srv = start_server(target, ["-m", "6", *S3FIFO])
    with srv.wire() as w:
        flood(w, "fill", 100)
        for n in range(3):
            set_big(w, f"hot{n}")
            assert get_big(w, f"hot{n}") is not None
            assert get_big(w, f"hot{n}") is not None
        flood(w, "more", 20)  # the hot keys move to the main queue
        cls = class_of(srv, BIG)
        w.expect(b"delete probe-size\r\n", b"DELETED\r\n")
        items = stats(HOST, srv.port, "items")
        assert int(items[cls + "number_hot"]) > 0 and int(items[cls + "number_cold"]) > 0
        dump = parse_dump(metadump(w))
        assert len(dump) == int(stats(HOST, srv.port)["curr_items"])
        assert {b"hot0", b"hot1", b"hot2"} <= dump.keys()
        w.expect(b"set short 0 1 1\r\nx\r\n", b"STORED\r\n")
        for n in range(3):  # expiring items in the main queue too (a set keeps a key's queue)
            w.expect(b"set hot%d 0 1 1\r\nx\r\n" % n, b"STORED\r\n")
    time.sleep(2.2)  # the TTL of 1 s is over (then the crawler's own pace)
    wait_for(lambda: int(stats(HOST, srv.port)["curr_items"]) == len(dump) - 3,
             "the crawler freeing the 4 expired items")


def test_slabs_reassign_empties_a_page(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    """The page mover takes a page from a class kept by S3-FIFO, rescuing or
    evicting its items; the items left keep their exact values."""
    only_stackmapd(target)
    srv: Server = start_server(target, ["-m", "4", "-o", "slab_automove=0", *S3FIFO])
    with srv.wire(timeout=30) as w:
        fill(w, b"bfoo", 60, 70000)
        fill(w, b"sfoo", 60, SMALL)
        for i in range(0, 60, 3):  # some read twice: their counters move with them
            w.request(b"get bfoo%d\r\n" % i, (b"END\r\n",))
            w.request(b"get bfoo%d\r\n" % i, (b"END\r\n",))
        before = slab_pages(srv)
        assert before[31] >= 2
        w.expect(b"slabs reassign 31 25\r\n", b"OK\r\n")
        wait_idle(srv, 1)
        after = slab_pages(srv)
        assert (after[31], after[25]) == (before[31] - 1, before[25] + 1)
        kept = 0
        for i in range(60):
            key = b"bfoo%d" % i
            resp = w.request(b"get %s\r\n" % key, (b"END\r\n",))
            if resp != b"END\r\n":
                val = value_for(key, 70000)
                assert resp == b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(val), val)
                kept += 1
        assert kept > 0
        st = stats(HOST, srv.port)
        assert int(st["curr_items"]) == int(stats(HOST, srv.port, "items")["items:31:number"]) + int(
            stats(HOST, srv.port, "items")["items:25:number"])
        fill(w, b"after", 30, 70000)  # and the class still evicts normally
        assert int(stats(HOST, srv.port, "items")["items:31:evicted"]) > 0
