"""The segmented LRU, memcached 1.6's (stackmap_core/src/cache/lru.c).

Each slab class keeps HOT, WARM, COLD (and TEMP) lists: new items go to HOT,
an item read twice is ACTIVE and is moved to WARM by the LRU maintainer,
inactive items flow down to COLD, and only COLD is evicted from.  So an item
that is read survives a flood of items that are not, which a plain LRU (one
list per class, `-o no_lru_segmented`) does not give.  The `lru` command
tunes it live with memcached's replies; `stats items` and `stats` count the
moves.

Every test here holds for memcached 1.6.18 too (run with --target
memcached,stackmapd); the flood tests follow memcached's own
t/lru-maintainer.t.  The maintainer works in the background, so the tests
wait for its moves with a generous deadline instead of assuming when they
happen.
"""

from __future__ import annotations

import time

import pytest
from conftest import HOST, Server, Target
from mcwire import Wire, parse_stats, stats

# Longest wait for the maintainer to move something it has to (not a timing assertion).
DEADLINE = 15.0
# memcached's t/lru-maintainer.t value: one item per 66 KiB chunk, so a few MB of -m
# hold a few dozen of them.
BIG = 66560


def class_of(srv: Server, value_len: int) -> str:
    """The "items:N:" prefix of the class an item of this size went to (one is stored)."""
    with srv.wire() as w:
        w.expect(b"set probe-size 0 0 %d\r\n%s\r\n" % (value_len, b"p" * value_len), b"STORED\r\n")
        w.expect(b"delete probe-size\r\n", b"DELETED\r\n")
        w.expect(b"set probe-size 0 0 %d\r\n%s\r\n" % (value_len, b"p" * value_len), b"STORED\r\n")
    items = stats(HOST, srv.port, "items")
    for key in items:
        if key.endswith(":number") and int(items[key]) > 0:
            return key[: -len("number")]
    raise AssertionError(f"no class holds the probe: {items}")


def wait_stat(srv: Server, group: str, name: str, pred: object = lambda v: int(v) > 0) -> dict[str, str]:
    """stats `group` once pred(stat) holds, or the last stats at the deadline."""
    deadline = time.monotonic() + DEADLINE
    while True:
        st = stats(HOST, srv.port, group)
        if name in st and pred(st[name]):  # type: ignore[operator]
            return st
        if time.monotonic() > deadline:
            return st
        time.sleep(0.1)


def set_big(w: Wire, key: str, ttl: int = 0) -> None:
    w.expect(b"set %s 0 %d %d\r\n%s\r\n" % (key.encode(), ttl, BIG, b"B" * BIG), b"STORED\r\n")


def get_big(w: Wire, key: str) -> bytes | None:
    w.send(b"get %s\r\n" % key.encode())
    resp = w.read_response((b"END\r\n",))
    if resp == b"END\r\n":
        return None
    return resp


# ---------------------------------------------------------------- the lru command

# memcached 1.6.18's replies, byte for byte (process_lru_command).
LRU_COMMANDS = [
    (b"lru\r\n", b"ERROR\r\n"),
    (b"lru tune\r\n", b"ERROR\r\n"),
    (b"lru tune 10 30 0.1 2\r\n", b"OK\r\n"),
    (b"lru tune 50 40 0.1 2\r\n", b"ERROR hot and warm pcts must not exceed 80\r\n"),
    (b"lru tune 10 30 0 2\r\n", b"ERROR hot/warm age factors must be greater than 0\r\n"),
    (b"lru tune 10 30 0.1 -1\r\n", b"ERROR hot/warm age factors must be greater than 0\r\n"),
    (b"lru tune a b c d\r\n", b"ERROR\r\n"),
    (b"lru tune 10 30 0.1\r\n", b"ERROR\r\n"),
    (b"lru tune 10 30 0.1 2 noreply\r\nmn\r\n", b"MN\r\n"),
    (b"lru mode x\r\n", b"ERROR\r\n"),
    (b"lru mode\r\n", b"ERROR\r\n"),
    (b"lru temp_ttl x\r\n", b"ERROR\r\n"),
    (b"lru foo bar\r\n", b"ERROR\r\n"),
    (b"lru tune 79 1 0.5 3\r\n", b"OK\r\n"),
    (b"lru temp_ttl 10\r\n", b"OK\r\n"),
    (b"lru temp_ttl -1\r\n", b"OK\r\n"),
    (b"lru mode flat\r\n", b"OK\r\n"),
]


def test_lru_command_replies_as_memcached(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(target)
    with srv.wire() as w:
        for cmd, reply in LRU_COMMANDS:
            w.expect(cmd, reply)
    st = stats(HOST, srv.port, "settings")
    # what stuck: the last tune, flat mode, temp_lru off with its last TTL kept
    assert (st["hot_lru_pct"], st["warm_lru_pct"]) == ("79", "1")
    assert (st["hot_max_factor"], st["warm_max_factor"]) == ("0.50", "3.00")
    assert (st["lru_segmented"], st["lru_maintainer_thread"]) == ("no", "yes")
    assert (st["temp_lru"], st["temporary_ttl"]) == ("no", "10")


def test_settings_defaults_and_options(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    st = stats(HOST, start_server(target).port, "settings")
    assert (st["lru_maintainer_thread"], st["lru_segmented"], st["temp_lru"]) == ("yes", "yes", "no")
    assert (st["hot_lru_pct"], st["warm_lru_pct"]) == ("20", "40")
    assert (st["hot_max_factor"], st["warm_max_factor"], st["temporary_ttl"]) == ("0.20", "2.00", "61")
    srv = start_server(target, ["-o", "hot_lru_pct=10,warm_lru_pct=50,hot_max_factor=0.5,temporary_ttl=30"])
    st = stats(HOST, srv.port, "settings")
    assert (st["hot_lru_pct"], st["warm_lru_pct"], st["hot_max_factor"]) == ("10", "50", "0.50")
    assert (st["temp_lru"], st["temporary_ttl"]) == ("yes", "30")


@pytest.mark.parametrize("flag", ["no_lru_maintainer", "no_modern"])
def test_without_the_maintainer_the_lru_is_flat(start_server, target: Target, flag: str) -> None:  # type: ignore[no-untyped-def]
    """-o no_lru_maintainer (or memcached's older defaults, -o no_modern): one
    plain LRU; "lru mode" and "lru temp_ttl" are refused, "lru tune" is not;
    stats leave the segments out."""
    srv = start_server(target, ["-o", flag])
    with srv.wire() as w:
        w.expect(b"lru mode segmented\r\n", b"ERROR\r\n")
        w.expect(b"lru temp_ttl 5\r\n", b"ERROR\r\n")
        w.expect(b"lru tune 10 30 0.1 2\r\n", b"OK\r\n")
        w.expect(b"set k 0 0 1\r\nx\r\n", b"STORED\r\n")
    st = stats(HOST, srv.port, "settings")
    assert (st["lru_maintainer_thread"], st["lru_segmented"]) == ("no", "no")
    items = stats(HOST, srv.port, "items")
    assert not [k for k in items if "number_hot" in k or "moves_to" in k or "evicted_active" in k]
    general = stats(HOST, srv.port)
    assert "moves_to_cold" not in general and "lru_bumps_dropped" not in general


# ---------------------------------------------------------------- where items go

def test_new_items_go_to_hot_then_down_to_cold(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    """New items go to HOT; HOT holding more than hot_lru_pct of a class (two
    small items are all of it) sends them down (the one read twice by way of
    WARM); hits are counted in the segment the item is in."""
    srv = start_server(target)
    with srv.wire() as w:
        # One send, answered in one go: the LRU maintainer moves the items on
        # within milliseconds, so a later round trip could find "a" in WARM.
        w.expect(b"set a 0 0 1\r\nx\r\nset b 0 0 1\r\ny\r\nget a\r\nget a\r\nstats items\r\n",
                 b"STORED\r\nSTORED\r\n" + b"VALUE a 0 1\r\nx\r\nEND\r\n" * 2)
        items = dict(parse_stats(w.read_response((b"END\r\n",))))
    assert items["items:1:number"] == "2"
    assert int(items["items:1:number_hot"]) + int(items["items:1:number_cold"]) == 2
    assert int(items["items:1:hits_to_hot"]) + int(items["items:1:hits_to_cold"]) == 2
    items = wait_stat(srv, "items", "items:1:number_hot", lambda v: v == "0")
    assert items["items:1:number_hot"] == "0"
    # "b", never read, went down to COLD; "a", read twice, went to WARM on the
    # way, and memcached moves it on to COLD (WARM is over its share of the
    # class) where stackmapd leaves it in WARM until memory is full
    assert int(items["items:1:number_warm"]) + int(items["items:1:number_cold"]) == 2
    assert int(items["items:1:number_cold"]) >= 1
    assert int(items["items:1:moves_to_cold"]) >= 1


def test_flat_mode_puts_new_items_in_cold(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(target)
    with srv.wire() as w:
        w.expect(b"lru mode flat\r\nset a 0 0 1\r\nx\r\nget a\r\n", b"OK\r\nSTORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n")
    items = stats(HOST, srv.port, "items")
    assert (items["items:1:number_cold"], items["items:1:number_hot"], items["items:1:hits_to_cold"]) == ("1", "0", "1")


# ---------------------------------------------------------------- floods

def test_an_item_read_twice_survives_a_flood(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    """memcached's t/lru-maintainer.t canary: HOT flows to COLD, the canary is read
    twice while in COLD, the maintainer moves it to WARM, and a flood of unread
    items of its class evicts others, never it."""
    srv = start_server(target, ["-m", "6"])
    cls = class_of(srv, BIG)
    with srv.wire() as w:
        set_big(w, "canary")
        for n in range(100):
            if n == 30:
                st = wait_stat(srv, "items", cls + "moves_to_cold")
                assert int(st[cls + "moves_to_cold"]) > 0, "the maintainer moved nothing to COLD"
                assert get_big(w, "canary") is not None
                assert get_big(w, "canary") is not None
                st = wait_stat(srv, "items", cls + "moves_to_warm")
                assert int(st[cls + "moves_to_warm"]) > 0, "the canary was not moved to WARM"
            set_big(w, f"key{n}")
        assert int(stats(HOST, srv.port)["evictions"]) > 0
        assert get_big(w, "canary") is not None, "the canary read twice was evicted"


@pytest.mark.parametrize("flat", ["-o no_lru_segmented", "lru mode flat"])
def test_a_plain_lru_loses_it(start_server, target: Target, flat: str) -> None:  # type: ignore[no-untyped-def]
    """The same flood with one plain LRU per class evicts the canary: what
    segmentation is for (and what `-o no_lru_segmented` and "lru mode flat" give)."""
    if target.name == "memcached" and flat.startswith("-o"):
        pytest.skip("memcached 1.6.18 has no lru_segmented option (flat: no_lru_maintainer)")
    srv = start_server(target, ["-m", "6", *(flat.split() if flat.startswith("-o") else [])])
    with srv.wire() as w:
        if not flat.startswith("-o"):
            w.expect(b"lru mode flat\r\n", b"OK\r\n")
        set_big(w, "canary")
        for n in range(100):
            if n == 30:
                assert get_big(w, "canary") is not None
                assert get_big(w, "canary") is not None
            set_big(w, f"key{n}")
        assert get_big(w, "canary") is None


def test_temp_lru_items_are_never_evicted(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    """memcached's t/lru-maintainer.t TEMP test: with temporary_ttl=61 an item
    stored with a TTL of 30 s goes to TEMP, not HOT, and a flood of long-TTL items
    evicts others, never it, even unread."""
    srv = start_server(target, ["-m", "2", "-o", "temporary_ttl=61"])
    assert stats(HOST, srv.port, "settings")["temp_lru"] == "yes"
    cls = class_of(srv, BIG)
    with srv.wire() as w:
        w.expect(b"delete probe-size\r\n", b"DELETED\r\n")
        set_big(w, "canary", ttl=30)
        items = stats(HOST, srv.port, "items")
        assert items[cls + "number_hot"] == "0" and items[cls + "number_temp"] == "1"
        for n in range(100):
            set_big(w, f"key{n}", ttl=3600)
        items = stats(HOST, srv.port, "items")
        assert int(items[cls + "evicted"]) > 0
        assert int(items[cls + "number_hot"]) > 0
        assert items[cls + "number_temp"] == "1"
        assert get_big(w, "canary") is not None


def test_moves_are_counted_in_stats(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    """The general group sums the per-class moves; the maintainer's rounds count."""
    srv = start_server(target, ["-m", "6"])
    with srv.wire() as w:
        for n in range(60):
            set_big(w, f"key{n}")
    st = wait_stat(srv, "", "moves_to_cold")
    assert int(st["moves_to_cold"]) > 0
    assert int(st["lru_maintainer_juggles"]) > 0
    assert st["lru_bumps_dropped"] == "0"


@pytest.mark.parametrize("opts", ["no_lru_maintainer", "lru_maintainer"])
def test_juggles_are_printed_while_the_maintainer_runs(start_server, target: Target, opts: str) -> None:  # type: ignore[no-untyped-def]
    """memcached prints lru_maintainer_juggles only with the maintainer thread
    (t/stats.t counts plain stats' names with -o no_lru_maintainer)."""
    st = stats(HOST, start_server(target, ["-o", opts]).port)
    assert ("lru_maintainer_juggles" in st) == (opts == "lru_maintainer"), sorted(st)
