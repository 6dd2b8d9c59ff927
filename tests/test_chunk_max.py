"""Values on either side of slab_chunk_max and of the item size limit.

memcached stores an item bigger than slab_chunk_max as a chain of chunks of
its largest class; stackmapd gives it one whole chunk of a bigger class
instead (README, "Compatibility with memcached").  These sessions store,
read back, cas, gat, append and prepend values from 1 byte to the largest
that fits, at the lengths where memcached starts a chain or adds a chunk to
one and at the -I limit, under slab_chunk_max 4096, 16384 and the default,
and compare every reply with memcached 1.6.18's, byte for byte (same
sessions, fresh servers: both hand out the same CAS uniques in the same
order).  A warm restart brings such values back identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import MEMCACHED, Server
from control_support import snapshot_round_trip

# An item's size in both servers: 56 bytes of header with CAS, the key, a NUL
# and the value with its "\r\n" (flags 0: memcached adds no suffix).
OVERHEAD = 56 + 1 + 2
KEY = b"k"
MIB = 1024 * 1024


def pattern(n: int, salt: int) -> bytes:
    """n bytes that do not repeat within a chunk, so a misplaced piece shows."""
    out = b":".join(b"%d" % (i * 7 + salt) for i in range(n // 2 + 2))
    return out[:n]


def edge_lengths(chunk_max: int, nkey: int = len(KEY), item_max: int = MIB) -> list[int]:
    """Value lengths for a key of nkey bytes around memcached's chunk edges
    and the limit (the last one is one byte over it)."""
    base = chunk_max - OVERHEAD - nkey  # the largest value of an unchained item
    lengths = {1, 2}
    for k in (1, 2, 3):
        for d in (-2, -1, 0, 1, 2):
            lengths.add(k * base + (k - 1) * OVERHEAD + d)
    top = item_max - OVERHEAD - nkey
    lengths |= {top - 1, top, top + 1}
    return sorted(n for n in lengths if n > 0)


def session(srv: Server, lengths: list[int]) -> list[bytes]:
    """Every reply of set, get, gets + cas, gat, append, prepend and get again."""
    replies: list[bytes] = []
    end = (b"END\r\n",)
    with srv.wire(timeout=30) as w:
        for n in lengths:
            v1, v2 = pattern(n, 1), pattern(n, 2)
            replies.append(w.request(b"set k 0 0 %d\r\n%s\r\n" % (n, v1)))
            replies.append(w.request(b"get k\r\n", end))
            got = w.request(b"gets k\r\n", end)
            replies.append(got)
            cas = int(got.split(b"\r\n", 1)[0].split()[-1]) if got.startswith(b"VALUE") else 1
            replies.append(w.request(b"cas k 0 0 %d %d\r\n%s\r\n" % (n, cas, v2)))
            replies.append(w.request(b"gat 100 k\r\n", end))
            replies.append(w.request(b"append k 0 0 1\r\na\r\n"))
            replies.append(w.request(b"prepend k 0 0 2\r\npp\r\n"))
            replies.append(w.request(b"get k\r\n", end))
            replies.append(w.request(b"delete k\r\n"))
    return replies


@pytest.mark.parametrize("chunk_max", [4096, 16384, 512 * 1024])
def test_values_across_chunk_edges_answer_as_memcached(start_server, target, chunk_max: int) -> None:  # type: ignore[no-untyped-def]
    """Replies byte for byte memcached's for values around every length where
    memcached chains, up to and past -I (1m)."""
    opts = ["-o", f"slab_chunk_max={chunk_max}"]
    lengths = edge_lengths(chunk_max)
    want = session(start_server(MEMCACHED, opts), lengths)
    got = session(start_server(target, opts), lengths)
    for n, (a, b) in zip([n for n in lengths for _ in range(9)], zip(got, want, strict=True), strict=True):
        assert a == b, f"value of {n} bytes: {a[:120]!r} != memcached's {b[:120]!r}"
    # the largest value fits, one byte more does not, as in memcached
    assert b"SERVER_ERROR object too large for cache\r\n" in got


def test_warm_restart_keeps_values_across_chunk_edges(tmp_path: Path) -> None:
    """A snapshot of values on both sides of slab_chunk_max restores each
    identical (flags, CAS and bytes)."""
    path = tmp_path / "cache.snap"
    args = ["-o", "slab_chunk_max=4096", "--snapshot", str(path)]
    lengths = edge_lengths(4096, nkey=9)[:-1]  # not the one over -I
    items = [(b"e:%07d" % n, n, 0, pattern(n, n)) for n in lengths]
    snapshot_round_trip(args, items)
