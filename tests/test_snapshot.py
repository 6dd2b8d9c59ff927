"""Warm restart: snapshot on SIGTERM, restore on start, refuse bad files.

The big case fills a real stackmapd with 100k items of mixed sizes and
expiries, stops it with SIGTERM (which writes --snapshot), starts a new
process on the file and checks every unexpired item comes back identical
(value, flags, CAS) while the expired ones do not.  Truncated, bit-flipped
and foreign files must be refused with the reason logged and the server
must start empty.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import struct
import time
from pathlib import Path

import pytest
from control_support import gets_many, http, pipeline_sets, request, start

import stackmap_core
from stackmapd import snapshot

N_ITEMS = 100_000


def stats(sock: object) -> dict[str, str]:
    raw = request(sock, b"stats\r\n")  # type: ignore[arg-type]
    return {line.split(" ")[1]: line.split(" ")[2] for line in raw.decode().split("\r\n") if line.startswith("STAT ")}


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Fill, SIGTERM (saves), restart on the snapshot; what the tests compare."""
    tmp = tmp_path_factory.mktemp("snap")
    path = tmp / "cache.snap"
    rng = random.Random(5)
    items: list[tuple[bytes, int, int, bytes]] = []
    for i in range(N_ITEMS):
        size = rng.choice((1, 10, 100, 700)) if i % 500 else rng.choice((20_000, 200_000))
        kind = i % 5  # 0,1: no expiry, 2,3: an hour, 4: two seconds
        exptime = (0, 0, 3600, 3600, 2)[kind]
        items.append((b"k:%d:%d" % (kind, i), rng.randrange(1 << 32), exptime,
                      rng.randbytes(size).replace(b"\r\n", b"xx")))
    live = [k for k, _, e, _ in items if e != 2]
    short = [k for k, _, e, _ in items if e == 2]

    first = start(["-m", "256", "--snapshot", str(path)])
    try:
        with first.conn() as sock:
            stored_at = time.monotonic()
            pipeline_sets(sock, items)
            before = gets_many(sock, live)
            assert len(before) == len(live)
            before_stats = stats(sock)
        assert first.stop() == 0, first.log()
        log1 = first.log()
    finally:
        first.cleanup()
    # Let the two-second items expire whether or not they made it into the file.
    time.sleep(max(0.0, stored_at + 3.0 - time.monotonic()))
    second = start(["-m", "256", "--snapshot", str(path)])
    try:
        with second.conn() as sock:
            after = gets_many(sock, live)
            gone = gets_many(sock, short)
            after_stats = stats(sock)
            new_cas = int(request(sock, b"set fresh 0 0 1\r\nx\r\ngets fresh\r\n").split(b"\r\n")[1].split()[4])
        log2 = second.log()
    finally:
        second.stop()
        second.cleanup()
    return {"path": path, "before": before, "after": after, "gone": gone, "log1": log1, "log2": log2,
            "before_stats": before_stats, "after_stats": after_stats, "new_cas": new_cas, "tmp": tmp,
            "n_live": len(live)}


def test_warm_restart_brings_back_every_unexpired_item_identical(warm: dict[str, object]) -> None:
    before, after = warm["before"], warm["after"]
    assert isinstance(before, dict) and isinstance(after, dict)
    assert len(after) == warm["n_live"]
    mismatched = [k for k in before if after.get(k) != before[k]]
    assert not mismatched, f"{len(mismatched)} items differ, e.g. {mismatched[:3]}"
    assert warm["gone"] == {}, "expired items came back"
    assert int(warm["after_stats"]["curr_items"]) == warm["n_live"]  # type: ignore[index]
    assert "saved" in warm["log1"] and "restored" in warm["log2"]  # type: ignore[operator]


def test_new_cas_is_above_every_restored_cas(warm: dict[str, object]) -> None:
    before = warm["before"]
    assert isinstance(before, dict)
    assert warm["new_cas"] > max(cas for _, cas, _ in before.values())  # type: ignore[operator]


def _refused(warm: dict[str, object], name: str, data: bytes, reason: str) -> None:
    bad = Path(warm["tmp"]) / name  # type: ignore[arg-type]
    bad.write_bytes(data)
    srv = start(["--restore", str(bad)])
    try:
        with srv.conn() as sock:
            assert stats(sock)["curr_items"] == "0"
        assert http("GET", srv.url + "/readyz")[0] == 200
    finally:
        srv.stop()
        log = srv.log()
        srv.cleanup()
    assert "snapshot refused, starting empty" in log and reason in log, log


def test_truncated_snapshot_is_refused(warm: dict[str, object]) -> None:
    data = Path(warm["path"]).read_bytes()  # type: ignore[arg-type]
    _refused(warm, "trunc.snap", data[: len(data) // 2], "truncated")


def test_bit_flipped_snapshot_is_refused(warm: dict[str, object]) -> None:
    data = bytearray(Path(warm["path"]).read_bytes())  # type: ignore[arg-type]
    data[len(data) // 3] ^= 0x10
    _refused(warm, "flip.snap", bytes(data), "checksum mismatch")


def test_foreign_file_is_refused(warm: dict[str, object]) -> None:
    _refused(warm, "foreign.snap", b"SQLite format 3\0" + bytes(4000), "not a stackmapd snapshot")


def test_other_version_is_refused(warm: dict[str, object]) -> None:
    data = bytearray(Path(warm["path"]).read_bytes())  # type: ignore[arg-type]
    struct.pack_into("<I", data, 8, 99)
    _refused(warm, "v99.snap", bytes(data), "version 99 is not supported")


# ---- in-process: the file format as documented, expiry at load time ----


def _record(key: bytes, value: bytes, flags: int, exptime: int, cas: int) -> bytes:
    return struct.pack("<HBBIIqQ", len(key), 0, 0, len(value), flags, exptime, cas) + key + value


def _write(path: Path, records: list[bytes]) -> None:
    body = b"".join(records)
    header = struct.pack("<8sIIqQQ", b"\x89SMSNAP\n", 1, 0, int(time.time()), len(records), len(body))
    trailer = hashlib.sha256(header + hashlib.sha256(body).digest()).digest()
    path.write_bytes(header + body + trailer)


def test_documented_format_loads_and_skips_expired(tmp_path: Path) -> None:
    now = int(time.time())
    path = tmp_path / "hand.snap"
    _write(path, [_record(b"a", b"1", 7, 0, 100), _record(b"b", b"22", 8, now + 600, 5000),
                  _record(b"old", b"x", 0, now - 10, 7)])
    with stackmap_core.Engine({"port": 0, "num_threads": 1}) as engine:
        result = snapshot.load(engine, path)
        assert (result.items, result.expired) == (2, 1)
        a, b = engine.get_meta(b"a"), engine.get_meta(b"b")
        assert a is not None and (a.flags, a.cas, a.exptime, a.value_len) == (7, 100, 0, 1)
        assert b is not None and (b.cas, b.exptime) == (5000, now + 600)
        assert engine.get_meta(b"old") is None
        # and a save of it reads back byte-identical records
        out = tmp_path / "again.snap"
        saved = snapshot.save(engine, out)
        assert saved.items == 2


def test_malformed_record_with_good_checksum_loads_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bad.snap"
    _write(path, [_record(b"fine", b"1", 0, 0, 1), _record(b"bad key", b"1", 0, 0, 2)])
    with stackmap_core.Engine({"port": 0, "num_threads": 1}) as engine:
        with pytest.raises(snapshot.SnapshotError, match="record 2: key contains whitespace"):
            snapshot.load(engine, path)
        assert engine.get_meta(b"fine") is None  # never half-loaded
        assert engine.stats()["curr_items"] == "0"


def test_value_larger_than_this_servers_item_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.snap"
    _write(path, [_record(b"big", bytes(600_000), 0, 0, 1)])
    with stackmap_core.Engine({"port": 0, "num_threads": 1, "item_size_max": 512 * 1024}) as engine:
        with pytest.raises(snapshot.SnapshotError, match="does not fit this server's item size limit"):
            snapshot.load(engine, path)
    shutil.rmtree(tmp_path, ignore_errors=True)


# ---- --snapshot-max-age: a real restart on a file that is too old ----


def _age(path: Path, seconds: int) -> None:
    """Make the snapshot at ``path`` look ``seconds`` older (header time; checksum redone)."""
    data = bytearray(path.read_bytes())
    magic, version, zero, created, count, length = struct.unpack_from("<8sIIqQQ", data, 0)
    struct.pack_into("<8sIIqQQ", data, 0, magic, version, zero, created - seconds, count, length)
    header = bytes(data[:40])
    records = bytes(data[40:40 + length])
    data[40 + length:] = hashlib.sha256(header + hashlib.sha256(records).digest()).digest()
    path.write_bytes(bytes(data))


def _items_after_start(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    srv = start(args, env=env)
    try:
        with srv.conn() as sock:
            n = int(stats(sock)["curr_items"])
    finally:
        srv.stop()
        log = srv.log()
        srv.cleanup()
    return n, log


def test_snapshot_older_than_max_age_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "node.snap"
    first = start(["--snapshot", str(path)])
    try:
        with first.conn() as sock:
            pipeline_sets(sock, [(b"k%d" % i, 0, 0, b"v") for i in range(50)])
        assert first.stop() == 0
    finally:
        first.cleanup()
    _age(path, 3600)
    saved = path.read_bytes()

    n, log = _items_after_start(["--restore", str(path), "--snapshot-max-age", "600"])
    assert n == 0
    assert "snapshot refused, starting empty" in log and "older than --snapshot-max-age 600 s" in log, log
    assert path.read_bytes() == saved  # left in place

    config = tmp_path / "stackmapd.toml"
    config.write_text("snapshot_max_age = 600\n")
    assert _items_after_start(["--restore", str(path), "--config", str(config)])[0] == 0
    assert _items_after_start(["--restore", str(path)], env={"STACKMAP_SNAPSHOT_MAX_AGE": "600"})[0] == 0

    # Young enough: loaded, from the flag, the environment and a --snapshot restart.
    assert _items_after_start(["--restore", str(path), "--snapshot-max-age", "7200"])[0] == 50
    assert _items_after_start(["--restore", str(path)], env={"STACKMAP_SNAPSHOT_MAX_AGE": "7200"})[0] == 50
    n, log = _items_after_start(["--snapshot", str(path), "--snapshot-max-age", "7200"])
    assert n == 50 and "restored 50 items" in log, log


def test_snapshot_max_age_must_be_a_positive_number_of_seconds() -> None:
    import subprocess

    from control_support import BIN

    for bad in ("0", "-5", "ten"):
        r = subprocess.run([str(BIN / "stackmapd"), "--snapshot-max-age", bad], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 64 and "--snapshot-max-age" in r.stderr, r


# ---- CAS across a warm restart: new uniques never repeat a restored one ----

MAX_EXPLICIT_CAS = (1 << 63) - 1  # largest E (explicit CAS) stackmapd takes: see README


def _fresh_cas_session(sock: object, n: int) -> dict[bytes, int]:
    """Store n new items; check each one's own gets-CAS works for `cas`; key -> new CAS."""
    keys = [b"fresh%d" % i for i in range(n)]
    for k in keys:
        assert request(sock, b"set %s 0 0 1\r\nx\r\n" % k, b"\r\n") == b"STORED\r\n"  # type: ignore[arg-type]
    cas = {k: c for k, (_, c, _) in gets_many(sock, keys).items()}  # type: ignore[arg-type]
    for k in keys:
        got = request(sock, b"cas %s 0 0 1 %d\r\ny\r\n" % (k, cas[k]), b"\r\n")  # type: ignore[arg-type]
        assert got == b"STORED\r\n", (k, cas[k], got)
    return cas


def test_explicit_cas_near_2_64_cannot_make_cas_wrap_after_restart(tmp_path: Path) -> None:
    """The issue's scenario: `ms evil 1 E18446744073709551615`, SIGTERM, restart on
    the same --snapshot, then a fresh item's own gets-CAS must work for `cas`.
    The absurd E is refused (memcached 1.6.18 refuses every E); the largest E
    stackmapd takes raises the counter, and the CAS values handed out above it
    survive the restart as they are."""
    path = tmp_path / "cas.snap"
    first = start(["--snapshot", str(path)])
    restored_keys = [b"evil", b"top"] + [b"old%d" % i for i in range(50)]
    try:
        with first.conn() as sock:
            evil = request(sock, b"ms evil 1 E18446744073709551615\r\nx\r\n", b"\r\n")
            top = request(sock, b"ms top 1 E%d\r\nt\r\n" % MAX_EXPLICIT_CAS, b"\r\n")
            pipeline_sets(sock, [(b"old%d" % i, 0, 0, b"v") for i in range(50)])
            before = {k: c for k, (_, c, _) in gets_many(sock, restored_keys).items()}
        assert first.stop() == 0, first.log()
    finally:
        first.cleanup()

    second = start(["--snapshot", str(path)])
    try:
        with second.conn() as sock:
            after = {k: c for k, (_, c, _) in gets_many(sock, restored_keys).items()}
            fresh = _fresh_cas_session(sock, 50)
    finally:
        second.stop()
        log = second.log()
        second.cleanup()
    assert after == before, log
    assert len(set(fresh.values())) == len(fresh)
    assert min(fresh.values()) > max(after.values()), (sorted(fresh.values())[:3], max(after.values()))
    assert evil == b"CLIENT_ERROR invalid flag\r\n" and b"evil" not in before, evil
    assert top == b"HD\r\n" and before[b"top"] == MAX_EXPLICIT_CAS
    # the counter went past the explicit CAS: items stored after it are above it
    assert min(before[b"old%d" % i] for i in range(50)) > MAX_EXPLICIT_CAS
    assert "is above" not in log, log  # nothing renumbered: those CAS values are the counter's own


def test_restored_cas_above_the_limit_is_renumbered_above_all_others(tmp_path: Path) -> None:
    """A snapshot holding CAS values at the top of the range (an older stackmapd
    took any E): those items get new CAS values, above every restored one --
    including records further on in the file -- and the server keeps counting
    up from there.  CAS values up to 2^64 - 2^62 - 1 come back as they were."""
    limit = (1 << 64) - (1 << 62) - 1
    path = tmp_path / "old.snap"
    _write(path, [_record(b"low", b"1", 0, 0, 5), _record(b"evil", b"e", 3, 0, (1 << 64) - 1),
                  _record(b"over", b"o", 0, 0, limit + 1), _record(b"later", b"2", 0, 0, 1000),
                  _record(b"top", b"t", 0, 0, limit - 100), _record(b"half", b"h", 0, 0, 1 << 63)])
    srv = start(["--restore", str(path)])
    try:
        with srv.conn() as sock:
            got = gets_many(sock, [b"low", b"evil", b"over", b"later", b"top", b"half"])
            fresh = _fresh_cas_session(sock, 20)
    finally:
        srv.stop()
        log = srv.log()
        srv.cleanup()
    cas = {k: c for k, (_, c, _) in got.items()}
    assert len(cas) == 6 and got[b"evil"][0] == 3 and got[b"evil"][2] == b"e"
    assert (cas[b"low"], cas[b"later"], cas[b"top"], cas[b"half"]) == (5, 1000, limit - 100, 1 << 63)
    assert cas[b"top"] < cas[b"evil"] <= limit and cas[b"top"] < cas[b"over"] <= limit, cas
    assert cas[b"evil"] != cas[b"over"]
    assert len(set(fresh.values()) | set(cas.values())) == len(fresh) + len(cas)
    assert min(fresh.values()) > max(cas.values())
    assert "record 2: CAS 18446744073709551615 is above" in log, log
