"""The key-store admin operations behind the HTTP admin API and stackmapctl.

Each operation is a short call into the engine's admin API (engine.h),
made from an HTTP handler thread with the GIL released inside the C call;
none of them runs on, or blocks, a worker thread for longer than one item's
inspection.  Keys travel as text: bytes are decoded as UTF-8 with
``surrogateescape`` (so any byte string round-trips through JSON), and keys
stored from a base64 meta key (``ms ... b``) are shown base64-encoded with
``"base64": true``.

Access (:class:`Access`, checked before every ``/admin/`` request, GET too):

- beyond loopback the bearer token is required, and the admin API is refused
  outright when none is configured;
- on a loopback address without a token, any local process may use it, but a
  web page must not: the ``Host`` header must name the listen address
  (``127.0.0.1:PORT``, ``localhost:PORT``, ``[::1]:PORT``), which defeats DNS
  rebinding;
- always: an ``Origin`` header, when present, must be this server's own
  (``http://<Host>``; ``null`` is refused) and ``Sec-Fetch-Site`` must not be
  cross-site, so a page elsewhere is refused even where its request arrives;
  and every POST must be ``Content-Type: application/json`` (stackmapd/http.py),
  which a cross-origin page cannot send without a CORS preflight, which we
  never grant.

``/metrics``, ``/healthz`` and ``/readyz`` are read-only and never checked.
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

from stackmap_core import Engine, EngineError, ItemInfo
from stackmapd.log import setup_logging
from stackmapd.settings import MIB

STATS_GROUPS = ("", "backend", "settings", "items", "slabs", "conns")
MAX_FLUSH_DELAY = 30 * 24 * 3600  # memcached's largest relative time; beyond it is a unix time
MAX_MEMORY_MB = 1 << 40  # -m's own upper bound (settings.OPTIONS)
MAX_CURSOR = (1 << 64) - 1  # the engine's walk cursor is a uint64_t


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
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise AdminError(400, f"key {text!r} has a character that is not valid UTF-8") from None


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


def host_forms(listen_host: str, port: int) -> frozenset[str]:
    """The ``Host`` header values that name a loopback listen address (lower case).

    ``127.0.0.1:9150`` gives ``127.0.0.1:9150`` and ``localhost:9150``;
    ``::1`` gives ``[::1]:9150`` and ``localhost:9150``; ``localhost`` gives
    all three.  A browser omits the port only for port 80.
    """
    host = listen_host.strip("[]").lower()
    names = {host, "localhost"}
    if host == "localhost":
        names |= {"127.0.0.1", "::1"}
    forms: set[str] = set()
    for name in names:
        shown = f"[{name}]" if ":" in name else name
        forms.add(f"{shown}:{port}")
        if port == 80:
            forms.add(shown)
    return frozenset(forms)


@dataclass
class Access:
    """Who may use the admin API (see the module's docstring).

    ``token``: the bearer token (None: none set); ``loopback``: we listen on
    loopback only; ``hosts``: the Host values naming the listen address
    (:func:`host_forms`), filled in once the socket is bound.
    """

    token: str | None
    loopback: bool
    hosts: frozenset[str] = frozenset()

    def check(self, authorization: str | None, host: list[str] | None = None,
              origin: list[str] | None = None, fetch_site: list[str] | None = None) -> None:
        """Raise AdminError unless this request may use the admin API.

        Each header is given as the list of its values (a header sent twice
        is refused: there is no safe way to pick one).
        """
        hosts = host or []
        origins = origin or []
        if len(hosts) > 1 or len(origins) > 1:
            raise AdminError(400, "more than one Host or Origin header")
        given_host = hosts[0].strip().lower() if hosts else ""
        if origins:
            if origins[0].strip().lower() != f"http://{given_host}" or not given_host:
                raise AdminError(403, f"cross-origin request refused (Origin {origins[0]!r}): the admin "
                                      "API answers only its own origin, never a web page elsewhere")
        if any(v.strip().lower() in ("cross-site", "same-site") for v in fetch_site or []):
            raise AdminError(403, "cross-site request refused (Sec-Fetch-Site): the admin API is "
                                  "not for web pages")
        if self.token is None:
            if not self.loopback:
                raise AdminError(403, "the admin API listens beyond loopback and no admin token is "
                                      "configured (set --admin-token or --admin-token-file)")
            if given_host not in self.hosts:
                allowed = ", ".join(sorted(self.hosts))
                given = f"Host {hosts[0]!r} is" if hosts else "a request without a Host header is"
                raise AdminError(403, f"{given} not for this server's address: without an admin token "
                                      f"only Host {allowed} is accepted (this refuses DNS rebinding)")
            return
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
        if name not in STATS_GROUPS:
            known = ", ".join(["general", *STATS_GROUPS[1:], "all"])
            raise AdminError(400, f"unknown stats group {group[:40]!r} (known: {known})")
        try:
            return {"stats": {group or "general": self.engine.stats(name)}}
        except EngineError as exc:
            raise AdminError(400, str(exc)) from None

    def keys(self, prefix: str, limit: int | None, cursor: int) -> Iterator[dict[str, Any]]:
        """Items, then a last line {"done": ..., "cursor": ..., "count": ...} (resume with cursor).

        The arguments are checked here, before the answer starts streaming.
        """
        if not 0 <= cursor <= MAX_CURSOR:
            raise AdminError(400, f"cursor must be between 0 and {MAX_CURSOR}, got {cursor}")
        if limit is not None and limit < 1:
            raise AdminError(400, f"limit must be at least 1, got {limit}")
        return self._keys(prefix, limit, cursor)

    def _keys(self, prefix: str, limit: int | None, cursor: int) -> Iterator[dict[str, Any]]:
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
        if not 0 <= delay <= MAX_FLUSH_DELAY:
            raise AdminError(400, f"delay must be between 0 and {MAX_FLUSH_DELAY} seconds (30 days), "
                                  f"got {delay}")
        self.engine.flush(delay)
        return {"flushed": True, "delay": delay}

    def set_memory_limit(self, mb: int) -> dict[str, Any]:
        if not 1 <= mb <= MAX_MEMORY_MB:
            raise AdminError(400, f"the memory limit must be between 1 and {MAX_MEMORY_MB} MB "
                                  f"(as -m), got {mb}")
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
        setup_logging(level)
        return {"verbosity": level}

    def snapshot(self, name: str | None) -> dict[str, Any]:
        """Save to ``name`` inside the snapshot directory, or to --snapshot for None."""
        if not self._snapshot_lock.acquire(blocking=False):
            raise AdminError(409, "a snapshot is already being written")
        try:
            return self._save_snapshot(name)
        finally:
            self._snapshot_lock.release()

    def reload(self) -> dict[str, Any]:
        return self._reload()
