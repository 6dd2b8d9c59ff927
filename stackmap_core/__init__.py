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
from collections.abc import Mapping
from typing import Any

from stackmap_core._stackmap_core import ffi, lib

__all__ = [
    "BACKENDS",
    "Engine",
    "EngineError",
    "SettingsError",
    "default_settings",
    "version",
]

# The ring backends a user may ask for (--backend), by name.  This is the one
# list the command line, the config file and the docs read; the values are
# the C enum's, so the two cannot drift apart.
BACKENDS: dict[str, int] = {
    "auto": lib.SM_BACKEND_AUTO,
    "epoll": lib.SM_BACKEND_EPOLL,
    "uring": lib.SM_BACKEND_URING,
}

_ERR_LEN = 512
_STATS_BUF = 16384  # first buffer for a stats group; grown when the engine asks


class EngineError(RuntimeError):
    """A call into the data plane failed; the message is the engine's own."""


class SettingsError(EngineError):
    """``sm_settings_check`` rejected the settings (a usage error, not a failure)."""


def version() -> str:
    """The data plane's version string, e.g. ``1.6.18-stackmapd``."""
    return ffi.string(lib.sm_version()).decode()


def _settings_fields() -> list[str]:
    return [name for name, _ in ffi.typeof("struct sm_settings").fields]


def default_settings() -> dict[str, Any]:
    """``struct sm_settings`` as filled by ``sm_settings_init``, as a dict."""
    s = ffi.new("struct sm_settings *")
    lib.sm_settings_init(s)
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
        if name == "listen":
            raw = str(value).encode()
            size = ffi.sizeof(s.listen)
            if len(raw) >= size:
                raise SettingsError(f"listen address list longer than {size - 1} bytes")
            s.listen = raw
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
        return ffi.string(ffi.cast("enum sm_backend_kind", kind)).decode()

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

    def __del__(self) -> None:
        # Last resort only: the control plane destroys engines explicitly.
        try:
            self.destroy()
        except Exception:  # interpreter teardown: nothing left to report to
            pass
