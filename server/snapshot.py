"""Warm-restart snapshots: every live item with its flags, CAS and expiry.

The engine writes and reads the records (``sm_admin_dump`` /
``sm_admin_restore``, format in ``stackmap_core/src/admin.c``); this module
owns the file around them::

    header   40 bytes: magic "\\x89SMSNAP\\n", u32 format version, u32 zero,
             i64 creation time (unix), u64 item count, u64 record bytes
    records  the engine's records, back to back
    trailer  32 bytes: SHA-256 over the header followed by SHA-256(records)

(all integers little-endian).  A file is written to a temporary name in
the same directory, fsync'd and renamed, so a crash never leaves half a
snapshot under the real name.

Loading is all-or-nothing: the whole file is read once to check the magic,
version, sizes, every record's framing and the checksum before a single item
is stored; only then is it read again and loaded.  A foreign, truncated or
corrupt file raises :class:`SnapshotError` with the reason, and the cache
stays empty.  Items whose expiry has passed by load time are skipped.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from stackmap_core import Engine, EngineError, RestoreCounts

MAGIC = b"\x89SMSNAP\n"
VERSION = 1
HEADER = struct.Struct("<8sIIqQQ")
TRAILER_LEN = 32
READ_CHUNK = 4 << 20


class SnapshotError(Exception):
    """A snapshot cannot be written or must not be loaded; the message says why."""


@dataclass(frozen=True)
class SnapshotResult:
    """What a save or load did."""

    path: str  # the snapshot file
    items: int  # items written / loaded
    expired: int  # items skipped on load because they had expired
    bytes: int  # file size
    seconds: float  # wall time taken

    def as_dict(self) -> dict[str, object]:
        return {"path": self.path, "items": self.items, "expired": self.expired,
                "bytes": self.bytes, "seconds": round(self.seconds, 3)}


def _trailer(header: bytes, records_digest: bytes) -> bytes:
    return hashlib.sha256(header + records_digest).digest()


def save(engine: Engine, path: str | os.PathLike[str]) -> SnapshotResult:
    """Write every live item to ``path`` (atomically replaced)."""
    started = time.monotonic()
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    digest = hashlib.sha256()
    count = 0
    length = 0
    try:
        with open(tmp, "wb") as fh:
            fh.write(b"\0" * HEADER.size)
            for chunk, n in engine.dump():
                fh.write(chunk)
                digest.update(chunk)
                count += n
                length += len(chunk)
            header = HEADER.pack(MAGIC, VERSION, 0, int(time.time()), count, length)
            fh.write(_trailer(header, digest.digest()))
            fh.seek(0)
            fh.write(header)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        dirfd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SnapshotError(f"{target}: cannot write snapshot: {exc.strerror or exc}") from None
    size = HEADER.size + length + TRAILER_LEN
    return SnapshotResult(str(target), count, 0, size, time.monotonic() - started)


def _read_header(fh: object, name: str, size: int) -> tuple[bytes, int, int]:
    raw = fh.read(HEADER.size)  # type: ignore[attr-defined]
    if len(raw) < len(MAGIC) or raw[: len(MAGIC)] != MAGIC:
        raise SnapshotError(f"{name}: not a stackmapd snapshot (bad magic)")
    if len(raw) < HEADER.size:
        raise SnapshotError(f"{name}: truncated ({size} bytes, shorter than the header)")
    _, version, zero, _created, count, length = HEADER.unpack(raw)
    if version != VERSION:
        raise SnapshotError(f"{name}: snapshot format version {version} is not supported "
                            f"(this stackmapd reads version {VERSION})")
    if zero != 0:
        raise SnapshotError(f"{name}: corrupt header (reserved field is {zero})")
    expected = HEADER.size + length + TRAILER_LEN
    if size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise SnapshotError(f"{name}: {what}: the header announces {expected} bytes, the file has {size}")
    return raw, count, length


def _scan(engine: Engine, fh: object, length: int, dry_run: bool, counts: RestoreCounts) -> tuple[bytes, str]:
    """Feed ``length`` record bytes to the engine; (SHA-256 of them, first record error or "")."""
    digest = hashlib.sha256()
    pending = b""
    left = length
    error = ""
    while left > 0:
        chunk = fh.read(min(READ_CHUNK, left))  # type: ignore[attr-defined]
        if not chunk:
            break
        left -= len(chunk)
        digest.update(chunk)
        if error:
            continue  # keep hashing: a checksum mismatch is the better explanation
        data = pending + chunk
        try:
            used = engine.restore(data, counts, dry_run)
        except EngineError as exc:
            error = str(exc)
            continue
        pending = data[used:]
    if not error and pending:
        error = f"the last record is cut short ({len(pending)} bytes left over)"
    return digest.digest(), error


def load(engine: Engine, path: str | os.PathLike[str]) -> SnapshotResult:
    """Check ``path`` completely, then store its items into a not yet started engine."""
    started = time.monotonic()
    name = str(path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise SnapshotError(f"{name}: no such file") from None
    except OSError as exc:
        raise SnapshotError(f"{name}: cannot read: {exc.strerror}") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        header, count, length = _read_header(fh, name, size)
        check = RestoreCounts()
        digest, error = _scan(engine, fh, length, True, check)
        trailer = fh.read(TRAILER_LEN)
        if trailer != _trailer(header, digest):
            raise SnapshotError(f"{name}: checksum mismatch: the file is corrupt")
        if error:
            raise SnapshotError(f"{name}: {error}")
        if check.items + check.expired != count:
            raise SnapshotError(f"{name}: the header announces {count} items, the file holds "
                                f"{check.items + check.expired}")
        fh.seek(HEADER.size)
        loaded = RestoreCounts()
        _, error = _scan(engine, fh, length, False, loaded)
        if error:
            engine.flush()  # never half-loaded: drop what made it in
            raise SnapshotError(f"{name}: loading stopped, cache emptied: {error}")
    return SnapshotResult(name, loaded.items, loaded.expired, size, time.monotonic() - started)
