"""Running one engine from start to a clean exit.

The data plane runs on its own threads; the Python main thread only waits.
It waits in short slices (``sm_engine_wait`` with 200 ms, the GIL released)
so that Python's signal handlers get to run: SIGTERM and SIGINT set a flag,
the loop sees it, the engine stops accepting and gets ``GRACE_MS`` to finish
in-flight requests, and the process exits 0.  With ``-A`` a client's
``shutdown`` command ends the wait the same way.

Logging goes to stderr, quiet by default as memcached is; ``-v`` adds the
startup line and lifecycle events.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from server.settings import MIB, Settings

EX_OK = 0
EX_USAGE = 64
EX_OSERR = 71

GRACE_MS = 1000  # how long in-flight requests may take after a stop
WAIT_SLICE_MS = 200  # longest time a signal waits to be noticed

log = logging.getLogger("stackmapd")


def setup_logging(verbose: int) -> None:
    """stderr, one line per event, ``stackmapd: `` prefix; -v and up show info."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("stackmapd: %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1
                 else logging.DEBUG)


class _Signals:
    """Remembers the first SIGTERM/SIGINT; restores the old handlers on exit."""

    WATCHED = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    def __enter__(self) -> _Signals:
        for sig in self.WATCHED:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]


def describe(settings: Settings, backend: str, engine_version: str) -> str:
    """The startup line: where we listen and with what."""
    return (
        f"stackmapd (engine {engine_version}) listening on {settings.listen} "
        f"port {settings.port}: {settings.num_threads} threads, "
        f"{settings.maxbytes // MIB} MB, max item {settings.item_size_max} bytes, "
        f"{settings.maxconns} connections, backend {backend}"
    )


def serve(settings: Settings) -> int:
    """Start an engine with ``settings``, run until told to stop; exit status."""
    import stackmap_core
    from stackmap_core import Engine, EngineError, SettingsError

    setup_logging(settings.verbose)
    with _Signals() as signals:
        try:
            engine = Engine(settings)
        except SettingsError as exc:
            log.error("error: %s", exc)
            return EX_USAGE
        except EngineError as exc:
            log.error("cannot create the engine: %s", exc)
            return EX_OSERR
        try:
            try:
                engine.start()
            except EngineError as exc:
                log.error("cannot start: %s", exc)
                return EX_OSERR
            log.info("%s", describe(settings, engine.backend, stackmap_core.version()))
            if engine.backend_note:
                log.info("backend: %s", engine.backend_note)

            reason = ""
            while not reason:
                if engine.wait(WAIT_SLICE_MS):
                    reason = 'client sent "shutdown"'
                elif signals.received is not None:
                    reason = signal.Signals(signals.received).name
            log.info("exiting normally (%s)", reason)
            engine.stop(GRACE_MS)
        finally:
            engine.destroy()
    return EX_OK
