"""The key-store admin operations behind the HTTP admin API and stackmapctl.

Each operation is a short call into the engine's admin API (engine.h),
made from an HTTP handler thread with the GIL released inside the C call;
none of them runs on, or blocks, a worker thread for longer than one item's
inspection.  Keys travel as text: bytes are decoded as UTF-8 with
``surrogateescape`` (so any byte string round-trips through JSON), and keys
stored from a base64 meta key (``ms ... b``) are shown base64-encoded with
``"base64": true``.

Access: on a loopback address the admin API is open unless a token is
configured; beyond loopback it requires the bearer token and is refused
outright when none is configured.  ``/metrics``, ``/healthz`` and
``/readyz`` never need the token.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from server.settings import MIB
from stackmap_core import Engine, EngineError, ItemInfo

STATS_GROUPS = ("", "settings", "items", "slabs", "conns")


class AdminError(Exception):
    """A request the admin API refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def key_to_text(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def text_to_key(text: str, is_base64: bool = False) -> bytes:
    if is_base64:
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise AdminError(400, f"key {text!r} is not valid base64") from None
    return text.encode("utf-8", "surrogateescape")


def item_json(info: ItemInfo) -> dict[str, Any]:
    """One item as the API shows it (memcached metadump's fields, named)."""
    key = base64.b64encode(info.key).decode() if info.binary_key else key_to_text(info.key)
    out: dict[str, Any] = {"key": key}
    if info.binary_key:
        out["base64"] = True
    out.update(size=info.value_len, flags=info.flags, exptime=info.exptime, last_access=info.last_access,
               cas=info.cas, fetched=info.fetched, slab_class=info.slab_class)
    return out


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Access:
    """Who may use the admin API: the token (None: none set) and whether we listen on loopback only."""

    token: str | None
    loopback: bool

    def check(self, authorization: str | None) -> None:
        if self.token is None:
            if self.loopback:
                return
            raise AdminError(403, "the admin API listens beyond loopback and no admin token is configured "
                                  "(set --admin-token or --admin-token-file)")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise AdminError(401, "a valid 'Authorization: Bearer <token>' header is required")


class Admin:
    """The operations; ``reload`` and ``save_snapshot`` are supplied by the lifecycle."""

    def __init__(self, engine: Engine, reload: Callable[[], dict[str, Any]],
                 save_snapshot: Callable[[str | None], dict[str, Any]]) -> None:
        self.engine = engine
        self._reload = reload
        self._save_snapshot = save_snapshot
        self._snapshot_lock = threading.Lock()

    def stats(self, group: str) -> dict[str, Any]:
        if group == "all":
            return {"stats": {g or "general": self.engine.stats(g) for g in STATS_GROUPS}}
        name = "" if group in ("", "general") else group
        try:
            return {"stats": {group or "general": self.engine.stats(name)}}
        except EngineError as exc:
            raise AdminError(400, str(exc)) from None

    def keys(self, prefix: str, limit: int | None, cursor: int) -> Iterator[dict[str, Any]]:
        """Items, then a last line {"done": ..., "cursor": ..., "count": ...} (resume with cursor)."""
        count = 0
        next_cursor = 0
        for batch, after in self.engine.keys(text_to_key(prefix), cursor=cursor, limit=limit):
            next_cursor = after
            for info in batch:
                count += 1
                yield item_json(info)
        yield {"done": next_cursor == 0, "cursor": str(next_cursor), "count": count}

    def get_meta(self, key: str, is_base64: bool) -> dict[str, Any]:
        info = self.engine.get_meta(text_to_key(key, is_base64))
        if info is None:
            raise AdminError(404, f"key {key!r} not found")
        return item_json(info)

    def delete(self, key: str, is_base64: bool) -> dict[str, Any]:
        return {"deleted": 1 if self.engine.delete(text_to_key(key, is_base64)) else 0}

    def delete_prefix(self, prefix: str) -> dict[str, Any]:
        if not prefix:
            raise AdminError(400, "an empty prefix would delete everything: use flush")
        return {"deleted": self.engine.delete_prefix(text_to_key(prefix))}

    def flush(self, delay: int) -> dict[str, Any]:
        if delay < 0:
            raise AdminError(400, "delay must be >= 0")
        self.engine.flush(delay)
        return {"flushed": True, "delay": delay}

    def set_memory_limit(self, mb: int) -> dict[str, Any]:
        if mb < 1:
            raise AdminError(400, "the memory limit must be at least 1 MB")
        try:
            evicted = self.engine.set_memlimit_evict(mb * MIB)
        except EngineError as exc:
            raise AdminError(400, str(exc)) from None
        stats = self.engine.stats()
        return {"limit_bytes": mb * MIB, "evicted": evicted, "bytes": int(stats.get("bytes", 0))}

    def set_verbosity(self, level: int) -> dict[str, Any]:
        if not 0 <= level <= 3:
            raise AdminError(400, "verbosity must be between 0 and 3")
        self.engine.set_verbosity(level)
        from server.lifecycle import setup_logging

        setup_logging(level)
        return {"verbosity": level}

    def snapshot(self, path: str | None) -> dict[str, Any]:
        if not self._snapshot_lock.acquire(blocking=False):
            raise AdminError(409, "a snapshot is already being written")
        try:
            return self._save_snapshot(path)
        finally:
            self._snapshot_lock.release()

    def reload(self) -> dict[str, Any]:
        return self._reload()
