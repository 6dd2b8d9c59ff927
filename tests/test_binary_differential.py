"""Binary protocol differential tests: the same binary sessions against memcached and the target.

Like test_differential.py for the text protocols: each session is a list of
steps sent one at a time on one connection to a fresh memcached 1.6.18 and
to a fresh target, and the responses are compared packet by packet, byte
for byte (header fields, extras, key and value).

How steps are run, read back and masked: tests/difftools.py (BinaryFrames).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import difftools
import pytest
from conftest import MEMCACHED, Server, Target, launch
from difftools import IGNORED_PREFIXES, BinaryFrames, Raw, Step, server_pair
from mcbinary import (
    ADD,
    ADDQ,
    APPEND,
    APPENDQ,
    DECR,
    DECRQ,
    DELETE,
    DELETEQ,
    FLUSH,
    FLUSHQ,
    GAT,
    GATK,
    GATKQ,
    GATQ,
    GET,
    GETK,
    GETKQ,
    GETQ,
    INCR,
    INCRQ,
    NOOP,
    PREPEND,
    PREPENDQ,
    QUIT,
    QUITQ,
    REPLACE,
    REPLACEQ,
    SASL_AUTH,
    SASL_LIST_MECHS,
    SASL_STEP,
    SET,
    SETQ,
    STAT,
    TOUCH,
    VERBOSITY,
    VERSION,
    Packet,
    arith,
    call,
    req,
    split_packets,
    store,
    touch,
)
from mcwire import parse_stats
from test_text import GENERAL_NAMES, GENERAL_NOT_OURS, SETTINGS_NAMES, SETTINGS_NOT_OURS

MB = 1024 * 1024


def run_pair(ref: Server, tgt: Server, steps: list[Step]) -> None:
    difftools.run_pair(ref, tgt, steps, BinaryFrames, together=True)


@pytest.fixture
def pair(target: Target) -> Iterator[tuple[Server, Server]]:
    """A fresh memcached and a fresh target per session: CAS uniques start alike."""
    with server_pair(target, []) as p:
        yield p


def flags_exp(flags: int = 0, exptime: int = 0) -> bytes:
    return struct.pack(">II", flags, exptime)


SESSIONS: dict[str, list[Step]] = {
    "get_set": [
        store(SET, b"a", b"hello", flags=0xDEADBEEF, opaque=1),
        req(GET, b"a", opaque=2) + req(GETK, b"a", opaque=3) + req(GETQ, b"a") + req(GETKQ, b"a"),
        req(GET, b"missing") + req(GETK, b"missing") + req(GETQ, b"missing") + req(GETKQ, b"missing"),
        store(ADD, b"a", b"x") + store(ADD, b"b", b"bee") + store(REPLACE, b"nope", b"x"),
        store(REPLACE, b"b", b"bee2", flags=7) + req(GET, b"b"),
        store(SET, b"empty", b"") + req(GETK, b"empty"),
        store(SET, b"bin", bytes(range(256))) + req(GET, b"bin"),
    ],
    "cas": [
        store(SET, b"c", b"v1"),
        store(SET, b"c", b"v2", cas=1) + store(SET, b"c", b"v3", cas=999),
        store(SET, b"c", b"v4", cas=2) + req(GETK, b"c"),
        store(ADD, b"c", b"v5", cas=3) + store(REPLACE, b"c", b"v6", cas=3),
        store(SET, b"nocas", b"x", cas=5) + store(ADD, b"nocas", b"x", cas=5),
        req(DELETE, b"c", cas=1) + req(DELETE, b"c", cas=4) + req(GET, b"c"),
        store(SET, b"ap", b"mid") + req(APPEND, b"ap", b"end", cas=1) + req(APPEND, b"ap", b"end", cas=6),
        req(PREPEND, b"ap", b"pre", cas=7) + req(GET, b"ap"),
    ],
    "append_prepend": [
        req(APPEND, b"none", b"x") + req(PREPEND, b"none", b"x"),
        store(SET, b"s", b"mid", flags=3) + req(APPEND, b"s", b">") + req(PREPEND, b"s", b"<") + req(GET, b"s"),
        req(APPENDQ, b"s", b"q") + req(PREPENDQ, b"s", b"q") + req(APPENDQ, b"none", b"q") + req(GETK, b"s"),
    ],
    "delete": [
        store(SET, b"d", b"1") + req(DELETE, b"d") + req(DELETE, b"d") + req(GET, b"d"),
        store(SET, b"d", b"1") + req(DELETEQ, b"d") + req(DELETEQ, b"d"),
    ],
    "incr_decr": [
        arith(INCR, b"n", 5, 100, 0) + arith(INCR, b"n", 5, 100, 0) + arith(DECR, b"n", 1000, 0, 0),
        arith(INCR, b"m", 1, 7, 0xFFFFFFFF) + arith(DECR, b"m", 1, 7, 0xFFFFFFFF),
        store(SET, b"t", b"text") + arith(INCR, b"t", 1),
        store(SET, b"big", b"18446744073709551615") + arith(INCR, b"big", 2) + req(GET, b"big"),
        store(SET, b"p", b"10") + arith(INCRQ, b"p", 1) + arith(DECRQ, b"p", 3) + arith(INCRQ, b"zz", 1, 0, 0xFFFFFFFF),
        req(GET, b"p") + arith(INCR, b"p", 1, cas=1) + arith(INCR, b"p", 1, cas=10),
        store(SET, b"sp", b"100") + arith(DECR, b"sp", 1) + req(GET, b"sp"),
        arith(INCR, b"exp", 1, 5, 1) + req(GET, b"exp"),
    ],
    "touch_gat": [
        store(SET, b"g", b"gv", flags=9),
        touch(TOUCH, b"g", 100) + touch(GAT, b"g", 100) + touch(GATK, b"g", 0),
        touch(GATQ, b"g", 0) + touch(GATKQ, b"g", 0) + touch(GATQ, b"gx") + touch(GATKQ, b"gx"),
        touch(TOUCH, b"gx") + touch(GAT, b"gx") + touch(GATK, b"gx"),
        touch(TOUCH, b"g", 0xFFFFFFFF - 5) + req(GET, b"g"),
    ],
    "flush_version_noop": [
        store(SET, b"f", b"1") + req(FLUSH) + req(GET, b"f"),
        store(SET, b"f", b"1") + req(FLUSHQ) + req(GET, b"f"),
        store(SET, b"f", b"1") + req(FLUSH, extras=struct.pack(">I", 1000)) + req(GET, b"f"),
        req(VERSION) + req(NOOP, opaque=77),
    ],
    "quiet_pipeline": [
        b"".join(store(SETQ, b"q%d" % i, b"v%d" % i, opaque=i) for i in range(50))
        + b"".join(req(GETKQ, b"q%d" % i, opaque=100 + i) for i in range(0, 60, 3))
        + store(ADDQ, b"q1", b"x", opaque=500) + store(REPLACEQ, b"qq", b"x", opaque=501)
        + req(DELETEQ, b"missing", opaque=502) + arith(INCRQ, b"q2", 1, opaque=503)
        + store(SETQ, b"q5", b"x", cas=12345, opaque=504),
    ],
    "stat_groups": [
        req(STAT, b"reset"),
        req(STAT, b"resetXYZ"),
        req(STAT, b"bogus") + req(STAT, b"conns") + req(STAT, b"item"),
        store(SET, b"st", b"x" * 100) + req(STAT, b"items") + req(STAT, b"slabs"),
    ],
    # memcached discards body-length bytes after the key of an unknown opcode:
    # here 4 of "body" and 3 of the GET after it; what is left waits for more
    # bytes, and then it is bad magic: memcached closes, and drops the
    # "Unknown command" it had not yet written
    "unknown_opcode_misaligns": [Raw(req(0x55, b"key", b"body") + req(GET, b"x")), Raw(req(NOOP))],
    "unknown_opcode_misaligns_at_once": [Raw(req(0x55, b"key", b"body") + req(GET, b"x") + req(NOOP))],
    "unknown_and_unsupported": [
        req(0x55, b"key", b"body", bodylen=7) + b"xxx" + req(GET, b"x"),
        req(0x55, b"", b"", extras=b"abcd", bodylen=4) + b"wxyz" + store(SET, b"u", b"vv") + req(GET, b"u"),
        req(VERBOSITY, b"", b"", extras=struct.pack(">I", 1)),
        req(SASL_LIST_MECHS),
        req(SASL_AUTH, b"PLAIN", b"\0user\0pass") + req(SASL_STEP, b"PLAIN", b"xx") + req(GET, b"u"),
    ],
    "large_values": [
        store(SET, b"big", b"B" * (512 * 1024)) + req(GET, b"big"),
        store(SET, b"big", b"x"),
        store(SET, b"big", b"T" * (2 * MB)) + req(GET, b"big"),
        store(ADD, b"big2", b"T" * (2 * MB)) + req(GET, b"big2"),
        req(APPEND, b"big", b"T" * (2 * MB)),
    ],
    "truncated_body": [
        store(SET, b"k", b"v"),
        Raw(store(SET, b"tr", b"0123456789")[:-5]),
        Raw(b"56789"),
        req(GET, b"tr"),
        Raw(req(GET, b"tr")[:10]),
        Raw(req(GET, b"tr")[10:]),
        Raw(req(GET, b"somewhatlongkey")[:30]),
        Raw(req(GET, b"somewhatlongkey")[30:]),
    ],
    "bad_magic": [store(SET, b"k", b"v"), Raw(req(GET, b"k", magic=0x81))],
    "bad_magic_later": [req(NOOP), Raw(req(GET, b"k", magic=0x00) + req(NOOP))],
    "key_longer_than_body": [Raw(req(GET, b"abc", bodylen=2))],
    "extras_beyond_body": [Raw(req(SET, b"abc", b"", flags_exp(), bodylen=5))],
    "key_over_250": [Raw(req(GET, b"k" * 251))],
    "key_over_250_quiet_set": [Raw(store(SETQ, b"k" * 300, b"v"))],
    "huge_keylen": [Raw(req(GET, b"k" * 4000))],
    "oversized_extras": [Raw(req(GET, b"key", extras=b"e" * 255))],
    "get_with_extras": [Raw(req(GET, b"key", extras=b"eeee"))],
    "set_without_extras": [Raw(req(SET, b"key", b"value"))],
    "set_without_key": [Raw(store(SET, b"", b"value"))],
    "get_body_mismatch": [Raw(req(GET, b"key", bodylen=5) + b"xx")],
    "incr_bad_extras": [Raw(req(INCR, b"key", extras=b"x" * 8))],
    "delete_with_value": [Raw(req(DELETE, b"key", b"value"))],
    "flush_bad_extras": [Raw(req(FLUSH, extras=b"xx"))],
    "version_with_body": [Raw(req(VERSION, b"", b"x"))],
    "noop_with_key": [Raw(req(NOOP, b"k"))],
    "touch_without_extras": [Raw(req(TOUCH, b"key"))],
    "append_with_extras": [Raw(req(APPEND, b"key", b"v", extras=b"xxxx"))],
    "stat_with_extras": [Raw(req(STAT, b"", b"", extras=b"xxxx"))],
    "quit": [store(SET, b"k", b"v"), Raw(req(QUIT, opaque=9) + req(GET, b"k"))],
    "quitq": [Raw(req(QUITQ, opaque=9) + req(GET, b"k"))],
    "quit_with_body": [Raw(req(QUIT, b"k"))],
    "list_mechs_with_body": [Raw(req(SASL_LIST_MECHS, b"k"))],
    "sasl_auth_no_key": [Raw(req(SASL_AUTH, b"", b"data"))],
    "text_after_binary": [req(NOOP), Raw(b"get foo\r\n")],
}


@pytest.mark.parametrize("name", list(SESSIONS))
def test_session(pair: tuple[Server, Server], name: str) -> None:
    ref, tgt = pair
    run_pair(ref, tgt, SESSIONS[name])


def stat_names(srv: Server, group: bytes) -> list[str]:
    with srv.wire() as w:
        w.send(req(STAT, group, opaque=3))
        names: list[str] = []
        got = b""
        while True:
            more = w.read_exact(1)
            assert more, f"no end of STAT {group!r}: {names}"
            got += more + w.buf
            w.buf = b""
            packets, got = split_packets(got)
            for p in packets:
                assert (p.opcode, p.status, p.opaque) == (STAT, 0, 3), p
                if not p.key:
                    return names
                names.append(p.key.decode())


@pytest.mark.parametrize(
    "group,names,not_ours",
    [(b"", GENERAL_NAMES, GENERAL_NOT_OURS), (b"settings", SETTINGS_NAMES, SETTINGS_NOT_OURS)],
)
def test_stat_names(target: Target, group: bytes, names: list[str], not_ours: list[str]) -> None:
    """STAT with no key and with "settings": every name memcached sends that
    the text protocol claims (test_text) comes in a packet of its own."""
    ref = launch(MEMCACHED, [])
    tgt = launch(target, [])
    try:
        ref_names = stat_names(ref, group)
        tgt_names = set(stat_names(tgt, group))
    finally:
        ref.stop()
        tgt.stop()
    claimed = [n for n in ref_names if n in set(names)]
    missing = [n for n in claimed if n not in tgt_names]
    assert not missing, f"STAT {group!r} lacks memcached's {missing}"
    unexplained = [n for n in ref_names if n not in names and n not in not_ours and not n.startswith(IGNORED_PREFIXES)]
    assert not unexplained, unexplained


COUNTERS = [
    "cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "get_hits", "get_misses", "get_expired", "get_flushed",
    "delete_misses", "delete_hits", "incr_misses", "incr_hits", "decr_misses", "decr_hits", "cas_misses",
    "cas_hits", "cas_badval", "touch_hits", "touch_misses", "total_items",
]  # (not curr_items: memcached's LRU crawler reclaims expired items when it happens to run)


def counters(srv: Server) -> dict[str, str]:
    with srv.wire() as w:
        st = dict(parse_stats(w.request(b"stats\r\n", (b"END\r\n",))))
    return {k: st[k] for k in COUNTERS}


def test_counters(pair: tuple[Server, Server]) -> None:
    """Binary commands move the same `stats` counters as in memcached (every
    session above run on one connection, then the text stats compared)."""
    ref, tgt = pair
    # (not stat_groups: whether memcached's LRU crawler has already reclaimed
    # the expired item of "incr_decr" changes its per-class "items" stats)
    steps = [s for name, ss in SESSIONS.items() if name != "stat_groups" and not any(isinstance(x, Raw) for x in ss)
             for s in ss]
    run_pair(ref, tgt, steps)
    assert counters(tgt) == counters(ref)


@pytest.mark.parametrize(
    "proto,steps",
    [
        ("ascii", [Raw(req(NOOP) + b"\r\n"), Raw(b"get foo\r\n")]),
        ("binary", [req(NOOP, opaque=5), store(SET, b"k", b"v"), Raw(b"get k\r\n")]),
        ("auto", [req(NOOP, opaque=5)]),
    ],
)
def test_binding_protocol(start_server, target: Target, proto: str, steps: list[Step]) -> None:  # type: ignore[no-untyped-def]
    """-B ascii: a 0x80 first byte is just text (here an ERROR line);
    -B binary: text is bad magic, closed without an answer; both as memcached."""
    ref = start_server(MEMCACHED, ["-B", proto])
    tgt = start_server(target, ["-B", proto])
    run_pair(ref, tgt, steps)
    if proto != "binary":
        want = b"STAT binding_protocol " + (b"auto-negotiate" if proto == "auto" else proto.encode()) + b"\r\n"
        for srv in (ref, tgt):
            with srv.wire() as w:
                assert want in w.request(b"stats settings\r\n", (b"END\r\n",)), srv.target.id


def detail_dump(srv: Server) -> bytes:
    with srv.wire() as w:
        return w.request(b"stats detail dump\r\n", (b"END\r\n",))


def test_binary_commands_count_in_stats_detail(pair: tuple[Server, Server]) -> None:
    """`stats detail on` (text) counts binary gets, sets and deletes per key
    prefix as memcached's proto_bin does: the dumps are byte-identical."""
    ref, tgt = pair
    for srv in (ref, tgt):
        with srv.wire() as w:
            assert w.request(b"stats detail on\r\n", (b"\r\n",)) == b"OK\r\n"
    run_pair(ref, tgt, [
        store(SET, b"user:1", b"a") + store(SET, b"user:2", b"b") + store(SET, b"page:1", b"c"),
        req(GET, b"user:1") + req(GETK, b"user:9") + req(GETQ, b"page:1") + req(GAT, b"page:1", extras=flags_exp()[4:]),
        req(DELETE, b"user:2") + req(DELETE, b"page:7") + req(NOOP),
    ])
    assert detail_dump(tgt) == detail_dump(ref)
    assert b"PREFIX user " in detail_dump(tgt)


def binary_detail_dump(srv: Server) -> list[Packet]:
    """Binary STAT "detail dump": its packets before the terminator."""
    with srv.wire() as w:
        return call(w, req(STAT, b"detail dump", opaque=9))


def test_binary_stat_detail(pair: tuple[Server, Server]) -> None:
    """Binary STAT "detail on|off|dump", as memcached's proto_bin (binary.t
    turns detail on this way): on and off answer with the terminator alone,
    another word is Not found, and the dump is one packet keyed "detailed"
    whose value is the text dump, END included -- byte for byte memcached's."""
    ref, tgt = pair
    run_pair(ref, tgt, [
        req(STAT, b"detail on") + req(STAT, b"detail bogus") + req(STAT, b"detail"),
        store(SET, b"user:1", b"a") + req(GET, b"user:1") + req(GET, b"user:2") + req(DELETE, b"page:1"),
        req(STAT, b"detail off") + req(GET, b"user:1"),
    ])
    dumps = [binary_detail_dump(srv) for srv in (ref, tgt)]
    assert [p.raw for p in dumps[1]] == [p.raw for p in dumps[0]]
    assert len(dumps[1]) == 2 and dumps[1][0].key == b"detailed" and dumps[1][1].key == b""
    assert dumps[1][0].value.startswith(b"PREFIX ") and dumps[1][0].value.endswith(b"END\r\n")
