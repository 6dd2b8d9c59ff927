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
snapshot under the real name.  The temporary name has a random suffix and is
created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` relative to an open descriptor of
the directory, so a file or symlink planted under a guessed name is never
written through; the writer holds an ``flock`` on it, and
:func:`remove_stale_temporaries` (run at start) deletes the ones nobody holds,
i.e. those a crash left behind.  An existing file under the target name is
replaced only if it is itself a snapshot (regular file, our magic).

The admin API may only name a file inside one directory (``--snapshot-dir``,
default: the directory of ``--snapshot``): :func:`valid_name` is the rule.

Loading is all-or-nothing: the whole file is read once to check the magic,
version, sizes, every record's framing and the checksum before a single item
is stored; only then is it read again and loaded.  A foreign, truncated or
corrupt file raises :class:`SnapshotError` with the reason, and the cache
stays empty.  Items whose expiry has passed by load time are skipped.  With
``max_age``, a file whose header says it was created longer ago than that is
refused the same way (it is left in place).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import secrets
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from stackmap_core import Engine, EngineError, RestoreCounts

MAGIC = b"\x89SMSNAP\n"
VERSION = 1
HEADER = struct.Struct("<8sIIqQQ")
TRAILER_LEN = 32
READ_CHUNK = 4 << 20


# A name the admin API may give: no "/", no NUL, no leading "." (so never
# ".", "..", a hidden file or one of our temporary names), at most 255 bytes.
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")
# Our temporary files: ".<name>.tmp-<suffix>" (hex now, a pid in older versions).
TEMP_RE = re.compile(r"\.(.+)\.tmp-[0-9a-f]+")
OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
CREATE_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class SnapshotError(Exception):
    """A snapshot cannot be written or must not be loaded; the message says why."""


class SnapshotConflict(SnapshotError):
    """The target name holds something that is not a snapshot: it is not replaced."""


def valid_name(name: str) -> bool:
    """A file name the admin API may write inside the snapshot directory."""
    return NAME_RE.fullmatch(name) is not None


def snapshot_directory(snapshot_dir: str | None, snapshot: str | None) -> str | None:
    """Where the admin API may write: --snapshot-dir, else --snapshot's directory, else nowhere."""
    if snapshot_dir:
        return snapshot_dir
    if snapshot:
        return os.path.dirname(os.path.abspath(snapshot))
    return None


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
    """Write every live item to ``path`` (an operator's path: --snapshot), atomically replaced."""
    target = Path(os.path.abspath(path))
    return save_in(engine, target.parent, target.name)


def save_in(engine: Engine, directory: str | os.PathLike[str], name: str) -> SnapshotResult:
    """Write every live item to ``directory/name``; ``name`` is one path component.

    Everything happens relative to one open descriptor of ``directory``: the
    temporary file is created there (never following a symlink, never
    reusing an existing file), fsync'd, renamed over ``name`` and the
    directory fsync'd.  An existing ``name`` that is not a snapshot raises
    :class:`SnapshotConflict` and is left alone.
    """
    started = time.monotonic()
    shown = os.path.join(directory, name)
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise SnapshotError(f"{shown!r}: not a file name")
    try:
        dfd = os.open(directory, OPEN_DIR)
    except OSError as exc:
        raise SnapshotError(f"{directory}: cannot open the snapshot directory: {exc.strerror}") from None
    try:
        _check_replaceable(dfd, name, shown)
        tmp = f".{name}.tmp-{secrets.token_hex(8)}"
        try:
            fd = os.open(tmp, CREATE_TEMP, 0o600, dir_fd=dfd)
        except OSError as exc:
            raise SnapshotError(f"{shown}: cannot create a temporary file: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # remove_stale_temporaries skips a locked file
            with os.fdopen(fd, "wb") as fh:
                count, length = _write(engine, fh)
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)  # still locked: never "stale"
            os.fsync(dfd)
        except OSError as exc:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise SnapshotError(f"{shown}: cannot write snapshot: {exc.strerror or exc}") from None
    finally:
        os.close(dfd)
    size = HEADER.size + length + TRAILER_LEN
    return SnapshotResult(shown, count, 0, size, time.monotonic() - started)


def _write(engine: Engine, fh: BinaryIO) -> tuple[int, int]:
    """Header placeholder, records, trailer, then the real header; fsync. (items, record bytes)."""
    digest = hashlib.sha256()
    count = 0
    length = 0
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
    return count, length


def _check_replaceable(dfd: int, name: str, shown: str) -> None:
    """Nothing under ``name``, or a regular file that starts with our magic."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SnapshotError(f"{shown}: cannot inspect: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SnapshotConflict(f"{shown} exists and is not a regular file: not replacing it")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as exc:
        raise SnapshotError(f"{shown}: cannot read: {exc.strerror}") from None
    try:
        head = os.read(fd, len(MAGIC))
    finally:
        os.close(fd)
    if head != MAGIC:
        raise SnapshotConflict(f"{shown} exists and is not a stackmapd snapshot: not replacing it")


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[str]:
    """Delete the temporary files a crashed save left in ``directory``; their names.

    Only regular files named like ours, owned by this user and not locked by
    a running save (another process sharing the directory) are removed.
    """
    removed: list[str] = []
    try:
        dfd = os.open(directory, OPEN_DIR)
    except OSError:
        return removed
    try:
        for entry in os.listdir(dfd):
            if not TEMP_RE.fullmatch(entry):
                continue
            try:
                fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
            except OSError:
                continue  # a symlink (ELOOP), gone, or unreadable: not ours to touch
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a save in progress
                os.unlink(entry, dir_fd=dfd)
                removed.append(os.path.join(directory, entry))
            except OSError:
                continue
            finally:
                os.close(fd)
    finally:
        os.close(dfd)
    return removed


def _read_header(fh: object, name: str, size: int) -> tuple[bytes, int, int, int]:
    """(raw header, item count, record bytes, creation time) after checking them."""
    raw = fh.read(HEADER.size)  # type: ignore[attr-defined]
    if len(raw) < len(MAGIC) or raw[: len(MAGIC)] != MAGIC:
        raise SnapshotError(f"{name}: not a stackmapd snapshot (bad magic)")
    if len(raw) < HEADER.size:
        raise SnapshotError(f"{name}: truncated ({size} bytes, shorter than the header)")
    _, version, zero, created, count, length = HEADER.unpack(raw)
    if version != VERSION:
        raise SnapshotError(f"{name}: snapshot format version {version} is not supported "
                            f"(this stackmapd reads version {VERSION})")
    if zero != 0:
        raise SnapshotError(f"{name}: corrupt header (reserved field is {zero})")
    expected = HEADER.size + length + TRAILER_LEN
    if size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise SnapshotError(f"{name}: {what}: the header announces {expected} bytes, the file has {size}")
    return raw, count, length, created


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


def load(engine: Engine, path: str | os.PathLike[str], max_age: int | None = None) -> SnapshotResult:
    """Check ``path`` completely, then store its items into a not yet started engine.

    With ``max_age`` (seconds), a snapshot created longer ago than that (the
    creation time in its header) is refused before anything is read further.
    """
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
        header, count, length, created = _read_header(fh, name, size)
        if max_age is not None:
            age = int(time.time()) - created
            if age > max_age:
                when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(created))
                raise SnapshotError(f"{name}: created {when}, {age} s ago, older than "
                                    f"--snapshot-max-age {max_age} s (the file is left in place)")
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
