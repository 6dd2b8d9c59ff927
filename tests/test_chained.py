"""Chained items: values bigger than slab_chunk_max, stored as chains of chunks.

memcached 1.6 stores an item bigger than its largest slab class
(slab_chunk_max) as a chain of chunks, and so does stackmapd (README,
"Compatibility with memcached").  These tests read chained values back
through every protocol (text get/gets/gat, meta mg, binary GET/GETK), grow
and shrink them with append/prepend, try incr on one, and compare each
reply and the item and chunk counts with memcached 1.6.18's; then they
evict chained items under memory pressure, move pages of the chunk class
while clients read, and bring chained values back from a snapshot.
"""

from __future__ import annotations

import threading
from pathlib import Path

from conftest import MEMCACHED, Server
from control_support import snapshot_round_trip
from mcbinary import GET, GETK, call, req
from mcwire import Wire, stats

CHUNK_MAX = ["-o", "slab_chunk_max=4096"]
# Values around where memcached's chains start (4096 - 56 - 1 - 2 - len("k")),
# two chunks, the 11000 bytes of memcached's slabs-reassign-chunked.t, many chunks.
LENGTHS = [4035, 4036, 4037, 8200, 11000, 65000, 300000]


def pattern(n: int, salt: int) -> bytes:
    """n bytes that do not repeat within a chunk, so a misplaced piece shows."""
    out = b":".join(b"%d" % (i * 7 + salt) for i in range(n // 2 + 2))
    return out[:n]


def intact_hits(w: Wire, prefix: bytes, sizes: list[int]) -> int:
    """get prefix0, prefix1, ...: how many are still there, each checked byte for byte
    against pattern(size, i)."""
    hits = 0
    for i, size in enumerate(sizes):
        r = w.request(b"get %s%d\r\n" % (prefix, i), (b"END\r\n",))
        if r != b"END\r\n":
            assert r == b"VALUE %s%d 0 %d\r\n%s\r\nEND\r\n" % (prefix, i, size, pattern(size, i))
            hits += 1
    return hits


def text_session(srv: Server) -> list[bytes]:
    """Replies of text and meta commands on chained values."""
    replies: list[bytes] = []
    end = (b"END\r\n",)
    with srv.wire(timeout=30) as w:
        for i, n in enumerate(LENGTHS):
            v = pattern(n, i)
            replies.append(w.request(b"set k 5 0 %d\r\n%s\r\n" % (n, v)))
            replies.append(w.request(b"get k\r\n", end))
            replies.append(w.request(b"gets k\r\n", end))
            replies.append(w.request(b"gat 100 k\r\n", end))
            replies.append(w.request(b"mg k v f s\r\n", (b"\r\n" + v + b"\r\n", b"EN\r\n")))
            replies.append(w.request(b"incr k 1\r\n"))
            replies.append(w.request(b"append k 0 0 3\r\nabc\r\n"))
            replies.append(w.request(b"prepend k 0 0 2\r\nzz\r\n"))
            replies.append(w.request(b"get k\r\n", end))
        # a small value grown into a chain by appends, then read
        replies.append(w.request(b"set g 0 0 10\r\n0123456789\r\n"))
        for j in range(3):
            part = pattern(3000, j)
            replies.append(w.request(b"append g 0 0 3000\r\n%s\r\n" % part))
        replies.append(w.request(b"get g\r\n", end))
        replies.append(w.request(b"delete g\r\n"))
    return replies


def binary_session(srv: Server) -> list[bytes]:
    """Raw binary GET/GETK responses on chained values."""
    out: list[bytes] = []
    with srv.wire(timeout=30) as w:
        for i, n in enumerate(LENGTHS):
            assert w.request(b"set b%d 7 0 %d\r\n%s\r\n" % (i, n, pattern(n, i))) == b"STORED\r\n"
    with srv.wire(timeout=30) as w:  # a connection speaks one protocol
        for i in range(len(LENGTHS)):
            for op in (GET, GETK):
                for p in call(w, req(op, b"b%d" % i)):
                    out.append(p.raw)
    assert len(out) == 2 * len(LENGTHS)
    return out


def test_chained_replies_match_memcached(start_server, target) -> None:  # type: ignore[no-untyped-def]
    """get/gets/gat/mg/incr/append/prepend on chained values, byte for byte memcached's."""
    want = text_session(start_server(MEMCACHED, CHUNK_MAX))
    got = text_session(start_server(target, CHUNK_MAX))
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a == b, f"reply {k}: {a[:120]!r} != memcached's {b[:120]!r}"
    assert any(b"CLIENT_ERROR cannot increment or decrement non-numeric value" in r for r in got)


def test_chained_binary_get_matches_memcached(start_server, target) -> None:  # type: ignore[no-untyped-def]
    """Binary GET and GETK of chained values, packet for packet memcached's."""
    want = binary_session(start_server(MEMCACHED, CHUNK_MAX))
    got = binary_session(start_server(target, CHUNK_MAX))
    assert got == want


def test_chained_counts_match_memcached(start_server, target) -> None:  # type: ignore[no-untyped-def]
    """curr_items, bytes, items:17 and the chunks of class 17 as memcached counts
    them for 11000-byte values (3 chunks each; memcached's header chunk lives in
    a small class, ours is the first of the 3, so only class 17 is compared)."""

    def counts(srv: Server) -> dict[str, str]:
        with srv.wire(timeout=30) as w:
            for i in range(60):
                w.request(b"set c%d 0 0 11000\r\n%s\r\n" % (i, pattern(11000, i)))
        g = stats(srv.host, srv.port)
        it = stats(srv.host, srv.port, "items")
        sl = stats(srv.host, srv.port, "slabs")
        return {
            "curr_items": g["curr_items"],
            "bytes": g["bytes"],
            "items:17:number": it["items:17:number"],
            "items:17:mem_requested": it["items:17:mem_requested"],
            "17:chunk_size": sl["17:chunk_size"],
            "17:used_chunks": sl["17:used_chunks"],
        }

    want = counts(start_server(MEMCACHED, ["-m", "64", *CHUNK_MAX]))
    got = counts(start_server(target, ["-m", "64", *CHUNK_MAX]))
    assert got == want
    assert got["17:used_chunks"] == "180"


def test_chained_eviction_under_pressure(start_server, target) -> None:  # type: ignore[no-untyped-def]
    """Far more chained values than -m holds: every store succeeds by evicting,
    and every value still there reads back intact."""
    srv = start_server(target, ["-m", "8", *CHUNK_MAX])
    n = 3000
    with srv.wire(timeout=60) as w:
        for i in range(n):
            size = 500 if i % 3 == 0 else 5000 + (i * 37) % 15000
            assert w.request(b"set e%d 0 0 %d\r\n%s\r\n" % (i, size, pattern(size, i))) == b"STORED\r\n"
        hits = intact_hits(w, b"e", [500 if i % 3 == 0 else 5000 + (i * 37) % 15000 for i in range(n)])
    g = stats(srv.host, srv.port)
    assert int(g["evictions"]) > 0
    assert hits > 300


def test_chunk_class_moves_while_clients_read(start_server, target) -> None:  # type: ignore[no-untyped-def]
    """slabs reassign of the chunk class while clients read chained values:
    chunks are rescued (or their items evicted), no reply is ever wrong."""
    srv = start_server(target, ["-m", "24", "-o", "slab_reassign,slab_chunk_max=4096"])
    n = 1500
    with srv.wire(timeout=60) as w:
        for i in range(n):
            assert w.request(b"set r%d 0 0 11000\r\n%s\r\n" % (i, pattern(11000, i))) == b"STORED\r\n"
        for i in range(0, n, 3):
            w.request(b"delete r%d\r\n" % i)
    stop = threading.Event()
    bad: list[bytes] = []
    reads = [0]

    def reader(seed: int) -> None:
        with srv.wire(timeout=30) as rw:
            i = seed
            while not stop.is_set():
                i = (i * 1103515245 + 12345) % n
                keys = [b"r%d" % ((i + j) % n) for j in range(8)]  # a multi-get: several values in flight
                r = rw.request(b"get " + b" ".join(keys) + b"\r\n", (b"END\r\n",))
                for chunk in r.split(b"VALUE ")[1:]:
                    head, _, rest = chunk.partition(b"\r\n")
                    k = int(head.split()[0][1:])
                    if rest[:11000] != pattern(11000, k) or rest[11000:11002] != b"\r\n":
                        bad.append(head)
                    reads[0] += 1

    threads = [threading.Thread(target=reader, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    try:
        with srv.wire(timeout=30) as w:
            for _ in range(4):
                for _attempt in range(200):
                    r = w.request(b"slabs reassign 17 0\r\n")
                    if r == b"OK\r\n":
                        break
                    assert r.startswith(b"BUSY "), r  # the previous move is still going
                    threading.Event().wait(0.05)
            for _ in range(400):  # until the last move is done
                if stats(srv.host, srv.port)["slab_reassign_running"] == "0":
                    break
                threading.Event().wait(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not bad, bad[:3]
    assert reads[0] > 0
    g = stats(srv.host, srv.port)
    assert int(g["slab_reassign_chunk_rescues"]) > 0
    assert int(g["slabs_moved"]) >= 4


def test_snapshot_keeps_chained_values(tmp_path: Path) -> None:
    """A warm restart brings chained values back identical (flags, CAS, bytes)."""
    path = tmp_path / "cache.snap"
    args = ["-o", "slab_chunk_max=4096", "--snapshot", str(path)]
    items = [(b"s:%07d" % n, n, 0, pattern(n, n)) for n in (100, 4040, 11000, 65000, 500000)]
    snapshot_round_trip(args, items)


def test_metadump_lists_chained_items_as_memcached(start_server, target) -> None:  # type: ignore[no-untyped-def]
    """lru_crawler metadump shows each chained item once, with memcached's
    class and size (its chunks are not items)."""

    def dump(srv: Server) -> dict[str, tuple[str, str]]:
        with srv.wire(timeout=30) as w:
            for i, n in enumerate(LENGTHS):
                w.request(b"set d%d 0 0 %d\r\n%s\r\n" % (i, n, pattern(n, i)))
            raw = w.request(b"lru_crawler metadump all\r\n", (b"END\r\n",))
        out: dict[str, tuple[str, str]] = {}
        for line in raw.decode().splitlines():  # metadump lines end in a bare LF
            if not line.startswith("key="):
                continue
            f = dict(kv.split("=", 1) for kv in line.split())
            assert f["key"] not in out, line
            out[f["key"]] = (f["cls"], f["size"])
        return out

    want = dump(start_server(MEMCACHED, CHUNK_MAX))
    got = dump(start_server(target, CHUNK_MAX))
    assert got == want
    assert len(got) == len(LENGTHS)


def test_chained_no_evictions_runs_out_and_recovers(start_server, target) -> None:  # type: ignore[no-untyped-def]
    """-M: a chained store that finds no chunk is SERVER_ERROR out of memory
    (no partial chain is left behind), and deleting the stored ones gives
    every chunk back for as many stores again."""
    srv = start_server(target, ["-m", "4", "-M", *CHUNK_MAX])
    with srv.wire(timeout=30) as w:
        stored = 0
        for i in range(600):
            r = w.request(b"set m%d 0 0 11000\r\n%s\r\n" % (i, pattern(11000, i)))
            assert r in (b"STORED\r\n", b"SERVER_ERROR out of memory storing object\r\n"), r
            stored += r == b"STORED\r\n"
        assert 0 < stored < 600
        for i in range(600):
            w.request(b"delete m%d\r\n" % i)
        assert stats(srv.host, srv.port, "slabs").get("17:used_chunks", "0") == "0"
        for i in range(stored):
            assert w.request(b"set n%d 0 0 11000\r\n%s\r\n" % (i, pattern(11000, i))) == b"STORED\r\n"


def test_chained_eviction_s3fifo(start_server, target) -> None:  # type: ignore[no-untyped-def]
    """-o eviction=s3fifo evicts chained items whole, too."""
    srv = start_server(target, ["-m", "8", "-o", "slab_chunk_max=4096,eviction=s3fifo"])
    with srv.wire(timeout=60) as w:
        for i in range(2000):
            assert w.request(b"set e%d 0 0 11000\r\n%s\r\n" % (i, pattern(11000, i))) == b"STORED\r\n"
        hits = intact_hits(w, b"e", [11000] * 2000)
    assert hits > 300
    assert int(stats(srv.host, srv.port)["evictions"]) > 0


def test_crawler_reclaims_expired_chains(start_server, target) -> None:  # type: ignore[no-untyped-def]
    """The LRU crawler frees expired chained items with all their chunks."""
    srv = start_server(target, ["-o", "slab_chunk_max=4096,lru_crawler"])
    with srv.wire(timeout=30) as w:
        for i in range(100):
            w.request(b"set x%d 0 3 11000\r\n%s\r\n" % (i, pattern(11000, i)))
        assert stats(srv.host, srv.port, "slabs")["17:used_chunks"] == "300"
        threading.Event().wait(4.5)  # rel_time ticks once a second: let them expire
        for _ in range(200):  # a crawl (ours, or a background pass: BUSY) until they are gone
            r = w.request(b"lru_crawler crawl all\r\n")
            assert r == b"OK\r\n" or r.startswith(b"BUSY "), r
            if stats(srv.host, srv.port, "slabs").get("17:used_chunks", "0") == "0":
                break
            threading.Event().wait(0.1)
    assert stats(srv.host, srv.port, "slabs").get("17:used_chunks", "0") == "0"
    assert stats(srv.host, srv.port)["curr_items"] == "0"


def test_memlimit_shrink_moves_chains(start_server, target) -> None:  # type: ignore[no-untyped-def]
    """cache_memlimit below what chained items fill: the mover empties pages
    of the chunk class into the OS (rescuing or evicting chains) and what
    stays reads back intact."""
    srv = start_server(target, ["-m", "64", "-o", "slab_chunk_max=4096,slab_reassign"])
    with srv.wire(timeout=60) as w:
        for i in range(4000):
            w.send(b"set y%d 0 0 11000 noreply\r\n%s\r\n" % (i, pattern(11000, i)))
        assert w.request(b"cache_memlimit 16\r\n") == b"OK\r\n"
        for _ in range(200):
            if int(stats(srv.host, srv.port, "slabs")["total_malloced"]) <= 16 * 1024 * 1024:
                break
            threading.Event().wait(0.05)
        assert int(stats(srv.host, srv.port, "slabs")["total_malloced"]) <= 16 * 1024 * 1024
        hits = intact_hits(w, b"y", [11000] * 4000)
    assert 0 < hits < 4000
