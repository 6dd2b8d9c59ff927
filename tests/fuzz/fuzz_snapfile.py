"""Coverage-guided fuzzer (atheris) for the snapshot file loader, stackmapd/snapshot.py.

Why: a warm restart reads a file from disk; a truncated, foreign or
tampered file must be refused with ``SnapshotError`` (the server then
starts empty, as it logs) and must leave the cache empty -- never a
traceback, never half a snapshot.  The record parser inside it
(``sm_admin_restore``, C) has its own libFuzzer harness, fuzz_snapshot.c;
this one covers the Python side: header, sizes, the two passes, the
checksum, the item count.

The input's first byte is a mode: bit 0 set -> the harness rewrites the
header's record length and the SHA-256 trailer to match the bytes, so
mutated records get past the checksum and into the engine (a crafted file
would have a valid checksum too); bit 1 set -> it also rewrites the item
count from a dry parse of the record framing.  The rest is the file.

Invariants (any other outcome is a finding): ``snapshot.load`` returns or
raises ``SnapshotError``; after a refusal the engine holds no item; after
a load the engine holds ``items`` items (keys may repeat: at most that).

Run: ``python tests/fuzz/fuzz_snapfile.py [libFuzzer flags] CORPUS_DIR...``
"""

from __future__ import annotations

import hashlib
import struct

import atheris
from atheris_main import fuzz_main, scratch_file

with atheris.instrument_imports():
    from stackmapd import snapshot

from stackmap_core import Engine  # C: not instrumented (fuzz_snapshot.c covers it)

_PATH = scratch_file("fuzz-snapfile-", "cache.snap")
REC = struct.Struct("<HBBIIqQ")


def _count(records: bytes) -> int:
    n = off = 0
    while len(records) - off >= REC.size:
        nkey, _, _, vlen, _, _, _ = REC.unpack_from(records, off)
        off += REC.size + nkey + vlen
        n += 1
    return n


def _fix(data: bytes, mode: int) -> bytes:
    hs, ts = snapshot.HEADER.size, snapshot.TRAILER_LEN
    if len(data) < hs + ts:
        return data
    magic, version, zero, created, count, _ = snapshot.HEADER.unpack_from(data)
    records = data[hs:len(data) - ts]
    if mode & 2:
        count = _count(records)
    header = snapshot.HEADER.pack(magic, version, zero, created, count, len(records))
    return header + records + snapshot._trailer(header, hashlib.sha256(records).digest())


def test_one(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    if mode & 3:
        body = _fix(body, mode)
    _PATH.write_bytes(body)
    with Engine({"port": 0, "num_threads": 1, "hashpower_init": 12, "maxbytes": 32 << 20}) as engine:
        try:
            result = snapshot.load(engine, _PATH)
        except snapshot.SnapshotError as exc:
            if not str(exc).startswith(str(_PATH)):
                raise AssertionError(f"refusal does not name the file: {exc}") from None
            left = int(engine.stats()["curr_items"])
            if left:
                raise AssertionError(f"refused ({exc}) but {left} items were stored") from None
            return
        held = int(engine.stats()["curr_items"])
        if held > result.items:
            raise AssertionError(f"loaded {result.items} items but the cache holds {held}")


def main() -> None:
    fuzz_main(test_one)


if __name__ == "__main__":
    main()
