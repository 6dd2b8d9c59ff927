"""A small typed facade over the compiled data plane.

``stackmap_core._stackmap_core`` is the cffi extension built from
``src/`` (see ``_build.py``).  This module is the only Python code that
touches it: it turns Python values into a ``struct sm_settings``, C error
buffers into :class:`EngineError`, and ``stats`` text into dicts.  Nothing
here runs on the data path; every call is a short control-plane call, and
cffi releases the GIL around each one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from stackmap_core._stackmap_core import ffi, lib

__all__ = [
    "BACKENDS",
    "Engine",
    "EngineError",
    "ItemInfo",
    "LatencyTable",
    "MetricInfo",
    "OptionInfo",
    "RestoreCounts",
    "SettingsError",
    "WorkerStatus",
    "built_backends",
    "check_settings",
    "default_settings",
    "derived_settings",
    "metric_table",
    "option_table",
    "version",
]

def _backends() -> dict[str, int]:
    out = {}
    kind = 0
    while (name := lib.sm_backend_name(kind)) != ffi.NULL:
        out[ffi.string(name).decode()] = kind
        kind += 1
    return out


# The ring backends a user may ask for (--backend), by name: enum
# sm_backend_kind's values and the engine's own names for them
# (sm_backend_name), so the two sides cannot drift apart.
BACKENDS: dict[str, int] = _backends()

_ERR_LEN = 512
_STATS_BUF = 16384  # first buffer for a stats group; grown when the engine asks


@dataclass(frozen=True)
class ItemInfo:
    """One live item's metadata (``struct sm_item_info``), as the admin API shows it."""

    key: bytes  # the key's bytes
    binary_key: bool  # stored from a base64 meta key (ms b)
    flags: int  # client flags
    value_len: int  # value length in bytes
    exptime: int  # unix time of expiry, 0 = never
    last_access: int  # unix time of the last access
    cas: int  # CAS unique
    slab_class: int  # slab class id
    fetched: bool  # read at least once since stored


@dataclass(frozen=True)
class LatencyTable:
    """Per-command latency histograms summed over the workers."""

    commands: tuple[str, ...]  # command names, in the engine's order
    bounds_ns: tuple[int, ...]  # upper bound of each bucket but the last (+Inf)
    counts: tuple[tuple[int, ...], ...]  # counts[command][bucket], not cumulative
    sums_ns: tuple[int, ...]  # total nanoseconds per command


@dataclass
class RestoreCounts:
    """Running totals of a snapshot restore (both passes use one each)."""

    items: int = 0  # records stored (or, in a dry run, that would be)
    expired: int = 0  # records skipped because their expiry passed


_KEYS_BATCH = 1024  # sm_item_info entries per sm_admin_keys call

# enum sm_worker_state, by value.
WORKER_STATES: dict[int, str] = {
    lib.SM_WORKER_STARTING: "starting",
    lib.SM_WORKER_SERVING: "serving",
    lib.SM_WORKER_FAILED: "failed",
    lib.SM_WORKER_STOPPED: "stopped",
}


@dataclass(frozen=True)
class WorkerStatus:
    """One worker thread's state (``sm_engine_worker_state``)."""

    worker: int  # 0..threads-1
    state: str  # starting, serving, failed or stopped
    error: str  # why it failed, "" otherwise


def _item_info(raw: Any) -> ItemInfo:
    return ItemInfo(
        key=ffi.unpack(raw.key, raw.nkey),
        binary_key=bool(raw.binary_key),
        flags=raw.flags,
        value_len=raw.value_len,
        exptime=raw.exptime,
        last_access=raw.last_access,
        cas=raw.cas,
        slab_class=raw.slab_class,
        fetched=bool(raw.fetched),
    )


# enum sm_metric_kind, by value.
METRIC_KINDS: dict[int, str] = {
    lib.SM_METRIC_COUNTER: "counter",
    lib.SM_METRIC_GAUGE: "gauge",
    lib.SM_METRIC_INFO: "info",
    lib.SM_METRIC_SETTING: "setting",
}


@dataclass(frozen=True)
class MetricInfo:
    """One row of the engine's stats table (``struct sm_metric_info``, stats_table.h)."""

    group: str  # "stats" group: "" general, "settings", "items", "slabs"
    per_class: bool  # printed once per slab class ("items:N:name", "N:name")
    name: str  # the name "stats" prints (per class: the part after the class)
    kind: str  # counter, gauge, info or setting
    unit: str  # "" or the value's unit
    metric: str  # Prometheus family, "" for none
    labels: tuple[tuple[str, str], ...]  # fixed labels within the family; info: ((label, ""),)
    help: str  # one line
    option: str  # settings: the option (option_table key) it shows, "" for none


def _labels(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        pairs.append((key, value))
    return tuple(pairs)


def metric_table() -> tuple[MetricInfo, ...]:
    """Every row of the stats table, in the engine's order."""
    rows = []
    raw = ffi.new("struct sm_metric_info *")
    for i in range(lib.sm_metric_count()):
        lib.sm_metric_info(i, raw)
        rows.append(MetricInfo(
            group=ffi.string(raw.group).decode(),
            per_class=bool(raw.per_class),
            name=ffi.string(raw.name).decode(),
            kind=METRIC_KINDS[raw.kind],
            unit=ffi.string(raw.unit).decode(),
            metric=ffi.string(raw.metric).decode(),
            labels=_labels(ffi.string(raw.labels).decode()),
            help=ffi.string(raw.help).decode(),
            option=ffi.string(raw.option).decode(),
        ))
    return tuple(rows)


# enum sm_option_type and enum sm_option_scope, by value.
OPTION_TYPES: dict[int, str] = {
    lib.SM_OPT_INT: "int", lib.SM_OPT_MB: "mb", lib.SM_OPT_SIZE: "size", lib.SM_OPT_FLOAT: "float",
    lib.SM_OPT_BOOL: "bool", lib.SM_OPT_NOT: "not", lib.SM_OPT_COUNT: "count", lib.SM_OPT_STR: "str",
    lib.SM_OPT_LISTEN: "listen", lib.SM_OPT_BACKEND: "backend", lib.SM_OPT_HOSTPORT: "hostport",
    lib.SM_OPT_LIST: "list", lib.SM_OPT_OCTAL: "octal",
}
OPTION_SCOPES: dict[int, str] = {
    lib.SM_OPT_ENGINE: "engine", lib.SM_OPT_EXTENDED: "extended", lib.SM_OPT_CONTROL: "control",
    lib.SM_OPT_REFUSED: "refused",
}


@dataclass(frozen=True)
class OptionInfo:
    """One row of the engine's option table (``struct sm_option_info``, options.h)."""

    key: str  # --key with '-' for '_', TOML key, STACKMAP_<KEY>; the -o key for scope extended
    field: str  # struct sm_settings field it sets, "" for none
    type: str  # int, mb, size, float, bool, not, count, str, listen, backend, hostport, list, octal
    default: str  # as a user writes it, "" for none
    lo: float  # smallest value (float: the value must exceed it)
    hi: float  # largest value, math.inf for no limit
    flag: str  # memcached's one-letter flag ("p"), "" for none
    metavar: str  # placeholder in --help, "" for a switch
    scope: str  # engine, extended, control or refused
    live: bool  # a reload applies it to a running server
    help: str  # one line


def option_table() -> tuple[OptionInfo, ...]:
    """Every row of the option table, in the engine's order."""
    rows = []
    raw = ffi.new("struct sm_option_info *")
    for i in range(lib.sm_option_count()):
        lib.sm_option_info(i, raw)
        rows.append(OptionInfo(
            key=ffi.string(raw.key).decode(),
            field=ffi.string(raw.field).decode(),
            type=OPTION_TYPES[raw.type],
            default=ffi.string(getattr(raw, "def")).decode(),  # "def" is a Python keyword
            lo=raw.lo,
            hi=raw.hi,
            flag=chr(raw.flag) if raw.flag else "",
            metavar=ffi.string(raw.metavar).decode(),
            scope=OPTION_SCOPES[raw.scope],
            live=bool(raw.live),
            help=ffi.string(raw.help).decode(),
        ))
    return tuple(rows)


class EngineError(RuntimeError):
    """A call into the data plane failed; the message is the engine's own."""


class SettingsError(EngineError):
    """``sm_settings_check`` rejected the settings (a usage error, not a failure)."""


def version() -> str:
    """The data plane's version string, e.g. ``1.6.18-stackmapd``."""
    return ffi.string(lib.sm_version()).decode()


def built_backends() -> tuple[str, ...]:
    """The BACKENDS names compiled into this build (uring only when liburing was found)."""
    return tuple(name for name, kind in BACKENDS.items() if lib.sm_backend_built(kind))


def _settings_fields() -> list[str]:
    return [name for name, _ in ffi.typeof("struct sm_settings").fields]


def default_settings() -> dict[str, Any]:
    """``struct sm_settings`` as filled by ``sm_settings_init``, as a dict."""
    s = ffi.new("struct sm_settings *")
    lib.sm_settings_init(s)
    return _struct_to_dict(s)


def derived_settings(settings: Any = None) -> dict[str, Any]:
    """``struct sm_settings`` as the engine will run it: defaults, then ``settings``,
    then what follows from them (``sm_settings_derive``: slab_page_size)."""
    s = _fill(settings)
    lib.sm_settings_derive(s)
    return _struct_to_dict(s)


def _struct_to_dict(s: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _settings_fields():
        value = getattr(s, name)
        if isinstance(value, ffi.CData):  # char arrays
            value = ffi.string(value).decode()
        out[name] = value
    return out


def _to_mapping(settings: Any) -> Mapping[str, Any]:
    if settings is None:
        return {}
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        return dataclasses.asdict(settings)
    if isinstance(settings, Mapping):
        return settings
    raise TypeError(f"settings must be a dataclass or a mapping, not {type(settings).__name__}")


# What a message calls some char-array fields of struct sm_settings (others: their name).
_TEXT_FIELDS: dict[str, str] = {"listen": "listen address list", "unix_socket": "-s/--unix-socket path"}


def _fill(settings: Any) -> Any:
    """A new ``struct sm_settings *``: C defaults, then every non-None value given."""
    s = ffi.new("struct sm_settings *")
    lib.sm_settings_init(s)
    fields = set(_settings_fields())
    for name, value in _to_mapping(settings).items():
        if value is None:
            continue
        if name not in fields:
            raise SettingsError(f"unknown engine setting {name!r}")
        if not isinstance(getattr(s, name), (int, float)):  # char[] fields: listen, -s, the ssl_* files
            raw = str(value).encode()
            size = ffi.sizeof(getattr(s, name))
            if len(raw) >= size:
                what = _TEXT_FIELDS.get(name, name)
                raise SettingsError(f"{what} longer than {size - 1} bytes")
            setattr(s, name, raw)
        elif isinstance(value, bool):
            setattr(s, name, int(value))
        else:
            try:
                setattr(s, name, value)
            except (OverflowError, TypeError) as exc:
                raise SettingsError(f"engine setting {name}={value!r}: {exc}") from None
    return s


def _err(buf: Any) -> str:
    return ffi.string(buf).decode(errors="replace") or "unknown error"


def check_settings(settings: Any = None) -> None:
    """Raise SettingsError with the engine's reason when ``sm_settings_check`` refuses ``settings``."""
    s = _fill(settings)
    err = ffi.new("char[]", _ERR_LEN)
    if lib.sm_settings_check(s, err, _ERR_LEN) != 0:
        raise SettingsError(_err(err))


class Engine:
    """One data-plane engine: created, started, waited on, stopped, destroyed.

    ``settings`` is a dataclass or mapping whose keys are
    ``struct sm_settings`` field names; missing keys and ``None`` values keep
    the engine's defaults.  The settings are checked (``sm_settings_check``)
    and the cache is allocated here; nothing is bound until :meth:`start`.
    """

    def __init__(self, settings: Any = None) -> None:
        self._handle: Any = ffi.NULL
        s = _fill(settings)
        err = ffi.new("char[]", _ERR_LEN)
        if lib.sm_settings_check(s, err, _ERR_LEN) != 0:
            raise SettingsError(_err(err))
        handle = lib.sm_engine_create(s, err, _ERR_LEN)
        if handle == ffi.NULL:
            raise EngineError(_err(err))
        self._handle = handle
        self._started = False
        self.settings: dict[str, Any] = _struct_to_dict(s)

    def _live(self) -> Any:
        if self._handle == ffi.NULL:
            raise EngineError("engine already destroyed")
        return self._handle

    def start(self) -> None:
        """Bind the listeners and start the worker threads."""
        err = ffi.new("char[]", _ERR_LEN)
        if lib.sm_engine_start(self._live(), err, _ERR_LEN) != 0:
            raise EngineError(_err(err))
        self._started = True

    def wait(self, timeout_ms: int) -> bool:
        """Block up to ``timeout_ms``; True when a client sent ``shutdown``."""
        return bool(lib.sm_engine_wait(self._live(), timeout_ms))

    def stop(self, grace_ms: int = 1000) -> None:
        """Stop accepting, let in-flight requests finish, join the threads."""
        if self._started:
            lib.sm_engine_stop(self._live(), grace_ms)
            self._started = False

    def destroy(self) -> None:
        """Stop if needed and free the engine.  Safe to call twice."""
        if self._handle != ffi.NULL:
            self.stop()
            lib.sm_engine_destroy(self._handle)
            self._handle = ffi.NULL

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    @property
    def backend(self) -> str:
        """Name of the backend in use (``auto`` resolved once started)."""
        kind = lib.sm_engine_backend(self._live())
        for name, value in BACKENDS.items():
            if value == kind:
                return name
        return f"backend {kind}"  # a C enum value this facade does not name

    @property
    def backend_note(self) -> str:
        """Why ``auto`` fell back to a lesser backend, or ``""``."""
        note = lib.sm_engine_backend_note(self._live())
        return "" if note == ffi.NULL else ffi.string(note).decode(errors="replace")

    def stats_text(self, group: str = "") -> str:
        """A ``stats`` group exactly as the server sends it (``STAT ...`` lines, ``END``)."""
        handle = self._live()
        size = _STATS_BUF
        raw_group = group.encode()
        while True:
            buf = ffi.new("char[]", size)
            n = lib.sm_engine_stats_text(handle, raw_group, buf, size)
            if n == -1:
                raise EngineError(f"unknown stats group {group!r}")
            if n >= 0:
                return ffi.unpack(buf, n).decode(errors="replace")
            # -(needed + 1): make room for `needed` bytes plus a NUL.
            size = max(-n, size * 2)

    def stats(self, group: str = "") -> dict[str, str]:
        """A ``stats`` group as ``{name: value}``."""
        out: dict[str, str] = {}
        for line in self.stats_text(group).split("\r\n"):
            if line.startswith("STAT "):
                name, _, value = line[5:].partition(" ")
                out[name] = value
        return out

    def set_memlimit(self, maxbytes: int) -> None:
        """Change the item memory limit while running (``cache_memlimit``)."""
        err = ffi.new("char[]", _ERR_LEN)
        if lib.sm_engine_set_memlimit(self._live(), maxbytes, err, _ERR_LEN) != 0:
            raise EngineError(_err(err))

    def set_verbosity(self, level: int) -> None:
        """Change the log level while running (``verbosity``)."""
        lib.sm_engine_set_verbosity(self._live(), level)

    # ---- admin API (engine.h, admin.c) ----

    @property
    def ready(self) -> bool:
        """Started, accepting connections, and every worker serving."""
        return bool(lib.sm_engine_ready(self._live()))

    def workers(self) -> list[WorkerStatus]:
        """Every worker's state, and why a failed one failed."""
        handle = self._live()
        err = ffi.new("char[]", _ERR_LEN)
        out: list[WorkerStatus] = []
        for i in range(lib.sm_engine_num_workers(handle)):
            err[0] = b"\0"
            state = lib.sm_engine_worker_state(handle, i, err, _ERR_LEN)
            out.append(WorkerStatus(i, WORKER_STATES.get(state, f"state {state}"),
                                    ffi.string(err).decode(errors="replace")))
        return out

    def set_maxconns(self, maxconns: int) -> None:
        """Change the connection limit (-c) while running."""
        err = ffi.new("char[]", _ERR_LEN)
        if lib.sm_engine_set_maxconns(self._live(), maxconns, err, _ERR_LEN) != 0:
            raise EngineError(_err(err))

    def set_memlimit_evict(self, maxbytes: int) -> int:
        """Set the memory limit and evict down to it; returns the items evicted."""
        err = ffi.new("char[]", _ERR_LEN)
        n = lib.sm_admin_set_memlimit(self._live(), maxbytes, err, _ERR_LEN)
        if n < 0:
            raise EngineError(_err(err))
        return int(n)

    def keys(self, prefix: bytes = b"", cursor: int = 0,
             limit: int | None = None) -> Iterator[tuple[list[ItemInfo], int]]:
        """Live items whose key starts with ``prefix``, in batches as the walk finds them.

        Yields (items, cursor after them); the walk resumes from ``cursor``
        (0: the beginning) and stops after ``limit`` items; a yielded cursor
        of 0 means the walk is complete.  Every call into the engine is short
        (a bounded number of slab chunks, one item lock at a time), so
        listing a big cache never stalls workers.
        """
        handle = self._live()
        cur = ffi.new("uint64_t *", cursor)
        out = ffi.new("struct sm_item_info[]", _KEYS_BATCH)
        left = limit
        while left is None or left > 0:
            want = _KEYS_BATCH if left is None else min(left, _KEYS_BATCH)
            n = lib.sm_admin_keys(handle, prefix, len(prefix), cur, out, want)
            if left is not None:
                left -= n
            if n or cur[0] == 0:
                yield [_item_info(out[i]) for i in range(n)], int(cur[0])
            if cur[0] == 0:
                return

    def get_meta(self, key: bytes) -> ItemInfo | None:
        """One key's metadata without bumping it, or None."""
        out = ffi.new("struct sm_item_info *")
        if lib.sm_admin_get_meta(self._live(), key, len(key), out):
            return _item_info(out)
        return None

    def delete(self, key: bytes) -> bool:
        """Delete one key; True when it existed."""
        return bool(lib.sm_admin_delete(self._live(), key, len(key)))

    def delete_prefix(self, prefix: bytes) -> int:
        """Delete every key starting with ``prefix`` (bounded steps); the number deleted."""
        handle = self._live()
        cursor = ffi.new("uint64_t *", 0)
        total = 0
        while True:
            total += lib.sm_admin_delete_prefix(handle, prefix, len(prefix), cursor)
            if cursor[0] == 0:
                return total

    def flush(self, delay: int = 0) -> None:
        """``flush_all [delay]``."""
        lib.sm_admin_flush(self._live(), delay)

    def dump(self, bufsize: int = 4 << 20) -> Iterator[tuple[bytes, int]]:
        """Snapshot records of every live item: yields (record bytes, records in them)."""
        handle = self._live()
        size = max(bufsize, lib.sm_admin_dump_min_buffer(handle))
        buf = ffi.new("char[]", size)
        cursor = ffi.new("uint64_t *", 0)
        count = ffi.new("uint64_t *", 0)
        while True:
            count[0] = 0
            n = lib.sm_admin_dump(handle, cursor, buf, size, count)
            if n < 0:
                raise EngineError("snapshot buffer too small")
            if n:
                yield ffi.unpack(buf, n), int(count[0])
            if cursor[0] == 0:
                return

    def restore(self, data: bytes, counts: RestoreCounts, dry_run: bool) -> int:
        """Check (dry_run) or store the whole records at the start of ``data``.

        Returns the bytes consumed; a trailing partial record is left for the
        next call.  Raises EngineError naming the bad record.
        """
        err = ffi.new("char[]", _ERR_LEN)
        items = ffi.new("uint64_t *", counts.items)
        expired = ffi.new("uint64_t *", counts.expired)
        n = lib.sm_admin_restore(self._live(), data, len(data), int(dry_run), items, expired, err, _ERR_LEN)
        counts.items, counts.expired = int(items[0]), int(expired[0])
        if n < 0:
            raise EngineError(_err(err))
        return int(n)

    def latency(self) -> LatencyTable:
        """Per-command latency histograms, summed over the workers."""
        dims = ffi.new("int[3]")
        lib.sm_latency_dims(dims, dims + 1, dims + 2)
        ncmds, nbuckets, shift = dims[0], dims[1], dims[2]
        counts = ffi.new("uint64_t[]", ncmds * nbuckets)
        sums = ffi.new("uint64_t[]", ncmds)
        lib.sm_engine_latency(self._live(), counts, sums)
        names = tuple(ffi.string(lib.sm_latency_name(i)).decode() for i in range(ncmds))
        flat = list(counts)
        return LatencyTable(
            commands=names,
            bounds_ns=tuple(1 << (shift + b) for b in range(nbuckets - 1)),
            counts=tuple(tuple(flat[i * nbuckets:(i + 1) * nbuckets]) for i in range(ncmds)),
            sums_ns=tuple(sums),
        )

    def __del__(self) -> None:
        # Last resort only: the control plane destroys engines explicitly.
        try:
            self.destroy()
        except Exception:  # interpreter teardown: nothing left to report to
            pass
