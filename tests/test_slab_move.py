"""Slab page moves: "slabs reassign", "slabs automove", the automover, and
giving memory back when the limit is lowered (stackmap_core/src/cache/slab_mover.c).

Real processes throughout: the replies are held byte for byte against
Debian's memcached 1.6.18 in the same state; the data tests read every
value back while pages move under concurrent clients; the calcification
test runs the automover against a workload whose value sizes shift; the
shrink test watches total_malloced and the process's resident memory.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from conftest import MEMCACHED, Server, Target, assert_alive
from mcwire import Wire, stats

MB = 1024 * 1024
BIG = 70000  # memcached's class 31 with -f 1.25 -n 48 (t/slabs_reassign.t)
SMALL = 20000  # class 25


def fill(w: Wire, prefix: bytes, count: int, size: int, start: int = 0) -> None:
    """Store count values of size bytes (each starts with its key), pipelined."""
    batch: list[bytes] = []
    for i in range(start, start + count):
        key = prefix + b"%d" % i
        val = value_for(key, size)
        batch.append(b"set %s 0 0 %d noreply\r\n%s\r\n" % (key, len(val), val))
        if len(batch) == 100:
            w.send(b"".join(batch))
            batch = []
    w.send(b"".join(batch))
    w.expect(b"mn\r\n", b"MN\r\n", timeout=60)


def value_for(key: bytes, size: int) -> bytes:
    """A value that names its key, so a value moved under the wrong key shows."""
    return (key + b"=").ljust(size, key[-1:])


def wait_idle(srv: Server, moved: int) -> dict[str, str]:
    """Poll until at least `moved` pages were moved and no move runs."""
    deadline = time.monotonic() + 60
    while True:
        st = stats(srv.host, srv.port)
        if int(st["slabs_moved"]) >= moved and st["slab_reassign_running"] == "0":
            return st
        assert time.monotonic() < deadline, f"page moves did not finish: {st}"
        time.sleep(0.05)


def slab_pages(srv: Server) -> dict[int, int]:
    out: dict[int, int] = {}
    for k, v in stats(srv.host, srv.port, "slabs").items():
        if k.endswith(":total_pages"):
            out[int(k.split(":")[0])] = int(v)
    return out


# ---- replies, byte for byte against memcached ----

# Commands whose replies are compared; noreply ones must stay silent.
REPLY_SCRIPT: list[bytes] = [
    b"slabs reassign invalid1 invalid2\r\n",
    b"slabs reassign 31 31\r\n",
    b"slabs reassign 99 1\r\n",
    b"slabs reassign -2 1\r\n",
    b"slabs reassign 1 -1\r\n",
    b"slabs reassign 25 31\r\n",  # 25 has one page: no spare
    b"slabs reassign 3 31\r\n",  # no pages at all
    b"slabs reassign 0 31\r\n",  # the global pool is empty
    b"slabs reassign 1\r\n",
    b"slabs reassign 1 2 3\r\n",
    b"slabs reassign 1 2x\r\n",
    b"slabs\r\n",
    b"slabs foo bar\r\n",
    b"slabs automove\r\n",
    b"slabs automove invalid\r\n",
    b"slabs automove -1\r\n",
    b"slabs automove 3\r\n",
    b"slabs automove ratio\r\n",
    b"slabs automove ratio abc\r\n",
    b"slabs automove ratio 0.5\r\n",
    b"slabs automove 2\r\n",
    b"slabs automove 1 noreply\r\n",
    b"slabs automove 0\r\n",
]


def reply_transcript(srv: Server) -> list[bytes]:
    out: list[bytes] = []
    with srv.wire(timeout=30) as w:
        fill(w, b"bfoo", 60, BIG)
        fill(w, b"sfoo", 60, SMALL)
        for cmd in REPLY_SCRIPT:
            w.send(cmd)
            if b"noreply" in cmd:
                w.expect_silence(0.3)
                out.append(b"(silent)")
            else:
                out.append(cmd + w.read_line())
        # Moves that run: class 31 gives its oldest page to 25, one to the
        # pool, then "any class" (-1: the first with a spare page, 31) one to 25.
        moves = [b"slabs reassign 31 25\r\n", b"slabs reassign 31 0\r\n", b"slabs reassign -1 25\r\n"]
        for n, cmd in enumerate(moves, 1):
            out.append(cmd + w.request(cmd))
            wait_idle(srv, n)
        # The pool page was above the limit (25's first page came past it):
        # it went back, so the pool is empty again.
        out.append(w.request(b"slabs reassign 0 25\r\n"))
        settings = dict(kv.split(b" ", 2)[1:] for kv in w.request(b"stats settings\r\n", (b"END\r\n",))
                        .split(b"\r\n") if kv.startswith(b"STAT slab_"))
        ours = (b"slab_reassign", b"slab_automove", b"slab_automove_ratio", b"slab_automove_window")
        out += [b"%s=%s" % (k, settings[k]) for k in ours]
    pages = slab_pages(srv)
    out.append(b"pages 31=%d 25=%d" % (pages[31], pages[25]))
    st = stats(srv.host, srv.port)
    out.append(b"moved=%s pool=%s" % (st["slabs_moved"].encode(), st["slab_global_page_pool"].encode()))
    out.append(b"total_malloced=%s" % stats(srv.host, srv.port, "slabs")["total_malloced"].encode())
    return out


def test_slabs_replies_match_memcached(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    args = ["-m", "4", "-o", "slab_reassign,slab_automove=0"]
    ours = reply_transcript(start_server(target, args))
    ref = reply_transcript(start_server(MEMCACHED, args))
    assert ours == ref


def test_reassign_disabled_and_busy_match_memcached(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    def transcript(srv: Server, disabled: Server) -> list[bytes]:
        out = []
        with disabled.wire() as w:
            out.append(w.request(b"slabs reassign 1 2\r\n"))
            out.append(w.request(b"slabs automove 1\r\n"))  # a setting: allowed either way
        with srv.wire(timeout=30) as w:
            fill(w, b"bfoo", 60, BIG)
            # A reader holds every big item: a multi-get whose reply it never reads.
            hang = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            hang.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            hang.connect((srv.host, srv.port))
            hang.sendall(b"get " + b" ".join(b"bfoo%d" % i for i in range(60)) + b"\r\n")
            time.sleep(0.5)
            out.append(w.request(b"slabs reassign 31 1\r\n"))
            time.sleep(0.5)
            out.append(w.request(b"slabs reassign 31 1\r\n"))  # still waiting for the reader
            out.append(w.request(b"slabs reassign 1 31\r\n"))
            hang.close()
            wait_idle(srv, 1)
            out.append(w.request(b"slabs reassign 31 1\r\n"))
        return out

    args = ["-m", "4", "-o", "slab_automove=0"]
    off = ["-m", "4", "-o", "no_slab_reassign"]
    ours = transcript(start_server(target, args), start_server(target, off))
    ref = transcript(start_server(MEMCACHED, args), start_server(MEMCACHED, off))
    assert ours == ref
    busy = b"BUSY currently processing reassign request\r\n"
    assert ours == [b"CLIENT_ERROR slab reassignment disabled\r\n", b"OK\r\n", b"OK\r\n", busy, busy, b"OK\r\n"]


# ---- data integrity while pages move ----

def test_values_survive_page_moves_under_load(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    """Keys that fit keep their exact values while their pages move away
    under concurrent readers and writers; nothing is lost or mixed up."""
    srv = start_server(target, ["-m", "32", "-t", "2", "-o", "slab_automove=0"])
    size = 3000  # ~1 MB / 3.8 KB: a few hundred items a page
    n = 6000
    with srv.wire(timeout=60) as w:
        fill(w, b"keep:", n, size)
        # Half the keys go: the class has free chunks to rescue the rest into.
        w.send(b"".join(b"delete keep:%d noreply\r\n" % i for i in range(1, n, 2)))
        w.expect(b"mn\r\n", b"MN\r\n", timeout=60)
    kept = [b"keep:%d" % i for i in range(0, n, 2)]
    classes = {int(k.split(":")[1]) for k, v in stats(srv.host, srv.port, "items").items()
               if k.endswith(":number") and int(v) > 0}
    (src,) = classes
    pages_before = slab_pages(srv)[src]
    assert pages_before >= 8

    errors: list[str] = []
    stop = threading.Event()

    def reader(offset: int) -> None:
        with srv.wire(timeout=30) as r:
            i = offset
            while not stop.is_set():
                keys = [kept[(i + j * 7) % len(kept)] for j in range(20)]
                i += 131
                r.send(b"get " + b" ".join(keys) + b"\r\n")
                got: dict[bytes, bytes] = {}
                while True:
                    line = r.read_line()
                    if line == b"END\r\n":
                        break
                    if not line.startswith(b"VALUE "):
                        errors.append(f"bad line {line[:80]!r}")
                        return
                    _, key, _, nbytes = line.split()
                    got[key] = r.read_exact(int(nbytes) + 2)[:-2]
                for key in keys:
                    if got.get(key) != value_for(key, size):
                        errors.append(f"{key!r}: {got.get(key, b'(missing)')[:40]!r}")

    def writer() -> None:
        # Stores into another class while the pages move (no key of ours).
        with srv.wire(timeout=30) as x:
            i = 0
            while not stop.is_set():
                fill(x, b"other:", 50, 200, start=i)
                i += 50

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    try:
        with srv.wire() as w:
            moves = pages_before // 2 - 2
            for m in range(1, moves + 1):
                dst = 1 if m % 2 else 0  # to a class and to the global pool
                assert w.request(b"slabs reassign %d %d\r\n" % (src, dst)) == b"OK\r\n"
                wait_idle(srv, m)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:10]
    st = stats(srv.host, srv.port)
    assert int(st["slab_reassign_rescues"]) > 0, st
    assert st["slab_reassign_evictions_nomem"] == "0", st
    assert slab_pages(srv)[src] == pages_before - moves
    # Every kept key is still there, exactly.
    with srv.wire(timeout=30) as w:
        for key in kept:
            val = value_for(key, size)
            w.expect(b"get %s\r\n" % key, b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(val), val))
    assert_alive(srv)


# ---- calcification: the automover gives pages to the sizes now in use ----

def big_class_evictions(srv: Server, cls: int) -> int:
    return int(stats(srv.host, srv.port, "items").get(f"items:{cls}:evicted", "0"))


def calcify(srv: Server, rounds: int) -> tuple[int, list[int], list[int]]:
    """Fill memory with small values, then cycle over a set of large keys
    that fits in memory.  Returns the large class, its pages after each round
    and its evictions in each round."""
    with srv.wire(timeout=60) as w:
        fill(w, b"small:", 120_000, 100)  # ~20 MB of 100 B values: every page is theirs
        w.expect(b"set probe 0 0 4000\r\n" + b"p" * 4000 + b"\r\n", b"STORED\r\n")
        items = stats(srv.host, srv.port, "items")
        big = max(int(k.split(":")[1]) for k in items if k.endswith(":number"))
        pages: list[int] = []
        evictions: list[int] = []
        for _ in range(rounds):
            before = big_class_evictions(srv, big)
            fill(w, b"large:", 1500, 4000)  # 6 MB: fits in the 16 MB, not in one class page
            evictions.append(big_class_evictions(srv, big) - before)
            pages.append(slab_pages(srv).get(big, 0))
            time.sleep(1)  # the automover samples once a second
    return big, pages, evictions


def test_automove_2_moves_a_page_on_evictions(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    """slabs automove 2: every eviction asks for a page from any class."""
    srv = start_server(target, ["-m", "8", "-o", "slab_automove=0"])
    with srv.wire(timeout=60) as w:
        fill(w, b"small:", 60_000, 100)  # every page goes to the small class
        before = slab_pages(srv)
        assert w.request(b"slabs automove 2\r\n") == b"OK\r\n"
        for _ in range(5):
            fill(w, b"large:", 1200, 4000)  # 4.8 MB: more than two pages' worth keeps evicting
        after = slab_pages(srv)
    big = max(after)
    assert after[big] > 3, (before, after)
    assert int(stats(srv.host, srv.port)["slabs_moved"]) > 0


@pytest.mark.parametrize("automove", [1, 0])
def test_automover_moves_pages_to_the_new_sizes(start_server, target: Target, automove: int) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(target, ["-m", "16", "-o", f"slab_automove={automove},slab_automove_window=3"])
    _, pages, evictions = calcify(srv, 14)
    if automove == 0:  # the control: without the automover the large class starves
        assert pages[-1] <= 2, pages
        assert evictions[-1] > 0, evictions
        return
    assert pages[-1] > pages[0] + 3, pages
    assert evictions[-1] < evictions[0], evictions
    assert int(stats(srv.host, srv.port)["slabs_moved"]) > 0


# ---- lowering the memory limit gives memory back ----

def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_lowering_the_limit_returns_pages_to_the_os(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    if target.name != "stackmapd":
        pytest.skip("memcached only frees pages its automover found mostly free")
    srv = start_server(target, ["-m", "96", "-o", "slab_automove=0"])
    with srv.wire(timeout=60) as w:
        fill(w, b"k:", 80_000, 1000)  # ~90 MB of items: every page carved and touched
        malloced = int(stats(srv.host, srv.port, "slabs")["total_malloced"])
        rss = rss_bytes(srv.pid)
        assert malloced > 80 * MB
        assert w.request(b"cache_memlimit 16\r\n") == b"OK\r\n"
        deadline = time.monotonic() + 60
        while int(stats(srv.host, srv.port, "slabs")["total_malloced"]) > 16 * MB:
            assert time.monotonic() < deadline, stats(srv.host, srv.port, "slabs")
            time.sleep(0.1)
        wait_idle(srv, 1)
        # What is left still works, and stores keep within the new limit.
        fill(w, b"again:", 20_000, 1000)
    after = int(stats(srv.host, srv.port, "slabs")["total_malloced"])
    assert after <= 16 * MB
    assert rss - rss_bytes(srv.pid) > 48 * MB  # the pages' memory went back to the OS
    st = stats(srv.host, srv.port)
    assert int(st["curr_items"]) > 0 and int(st["bytes"]) <= 16 * MB
    assert_alive(srv)


def test_stats_settings_show_the_options(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    def slab_settings(srv: Server) -> dict[str, str]:
        return {k: v for k, v in stats(srv.host, srv.port, "settings").items()
                if k in ("slab_reassign", "slab_automove", "slab_automove_ratio", "slab_automove_window")}

    for args in (["-o", "slab_reassign,slab_automove"], ["-o", "slab_automove=2,slab_automove_ratio=0.5"],
                 ["-o", "no_slab_reassign,slab_automove_window=7"], []):
        assert slab_settings(start_server(target, args)) == slab_settings(start_server(MEMCACHED, args)), args

