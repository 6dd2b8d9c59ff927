"""Running one engine from start to a clean exit.

The data plane runs on its own threads; the Python main thread only waits.
It waits in short slices (``sm_engine_wait`` with 200 ms, the GIL released)
so that Python's signal handlers get to run: SIGTERM and SIGINT set a flag,
the loop sees it, the engine stops accepting and gets ``GRACE_MS`` to finish
in-flight requests, and the process exits 0.  With ``-A`` a client's
``shutdown`` command ends the wait the same way.  An engine that cannot
start (a backend that fails on a worker and no fallback, ``--backend`` given)
exits 71 with the engine's one-line reason; ``--backend auto``'s fallback is
logged once as a warning.

Around the engine the control plane runs its HTTP server (``/metrics``,
health, the admin API; stackmapd/http.py; readiness and ``memcached_up`` come
from stackmapd/health.py) and the warm-restart snapshot: with
``--restore FILE`` (or ``--snapshot FILE`` when that file exists) the
snapshot is checked and loaded before the listeners open, and with
``--snapshot FILE`` every live item is saved there after a SIGTERM/SIGINT,
once the workers have stopped (so the file is consistent).  A snapshot that
is refused (corrupt, or older than ``--snapshot-max-age``) is logged with
the reason and the server starts empty.  Temporary snapshot files a crash
left in the snapshot directories are removed first.

SIGHUP, or ``stackmapctl reload`` (POST /admin/reload), re-reads the config
file and environment on the main thread and applies what can change live
(settings.LIVE_KEYS); the answer lists what was applied and what needs a
restart.

memcached's process flags -d, -P, -u and -r (daemon.py) wrap all this: the
daemon's parent returns only once the child serves, so start-up errors
still reach the terminal; the pid file and the drop to -u's user come once
the listeners are bound.

Logging (log.py) goes to stderr, quiet by default as memcached is; ``-v`` adds the
startup line and lifecycle events.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry

import stackmap_core
from stackmap_core import Engine, EngineError, SettingsError
from stackmapd import config, daemon, snapshot
from stackmapd.admin import Access, Admin, AdminError, is_loopback_host
from stackmapd.config import Loaded
from stackmapd.health import Health
from stackmapd.http import ControlHTTPServer
from stackmapd.log import log, setup_logging
from stackmapd.metrics import StatsSource, make_registry
from stackmapd.settings import MIB, OptionError, Settings
from stackmapd.snapshot import SnapshotConflict, SnapshotError

EX_OK = 0
EX_USAGE = 64
EX_OSERR = 71

GRACE_MS = 1000  # how long in-flight requests may take after a stop
WAIT_SLICE_MS = 200  # longest time a signal waits to be noticed


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
    where = (f"unix socket {settings.unix_socket}" if settings.unix_socket
             else f"{settings.listen} port {settings.port}")
    return (
        f"stackmapd (engine {engine_version}) listening on {where}: {settings.num_threads} threads, "
        f"{settings.maxbytes // MIB} MB, max item {settings.item_size_max} bytes, "
        f"{settings.maxconns} connections, backend {backend}"
    )


class Control:
    """The control plane around one running engine: HTTP server, reloads, snapshots."""

    def __init__(self, engine: Engine, loaded: Loaded | None) -> None:
        self.engine = engine
        self.loaded = loaded
        self.values: dict[str, Any] = dict(loaded.values) if loaded else {}
        self.http: ControlHTTPServer | None = None
        self._reloads: queue.Queue[tuple[threading.Event, list[dict[str, Any]]]] = queue.Queue()

        # The memcached port is known once the engine has bound it (-p 0 picks one).
        self.health = Health(engine, engine.settings["listen"], 0, bool(engine.settings["ssl_enabled"]))
        self.registry: CollectorRegistry = make_registry(
            StatsSource(engine.stats, engine.latency, self.health.up))
        self.admin = Admin(engine, self.request_reload, self.save_snapshot)

    # ---- HTTP ----

    def start_http(self, listen: str | None) -> None:
        """Serve /metrics, health and admin on ``listen`` (HOST:PORT), or nothing for None."""
        if listen is None:
            return
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        access = Access(config.admin_token(self.values), is_loopback_host(host))
        self.http = ControlHTTPServer((host, int(port)), self.admin, self.registry, access,
                                      self.health.readiness)
        self.http.start()
        log.info("metrics and admin API on http://%s/ (admin %s)", listen,
                 "token required" if access.token else "open on loopback" if access.loopback else "disabled")

    def stop_http(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None

    # ---- snapshots ----

    def snapshot_dirs(self) -> list[str]:
        """The directories snapshots are written to: --snapshot-dir and --snapshot's."""
        dirs = [snapshot.snapshot_directory(self.values.get("snapshot_dir"), None),
                snapshot.snapshot_directory(None, self.values.get("snapshot"))]
        return sorted({os.path.abspath(d) for d in dirs if d})

    def restore_at_start(self) -> None:
        for directory in self.snapshot_dirs():
            for stale in snapshot.remove_stale_temporaries(directory):
                log.warning("removed %s, a temporary snapshot file left by a crash", stale)
        path = self.values.get("restore")
        auto = self.values.get("snapshot")
        if not path and auto:
            if not os.path.exists(auto):
                log.info("no snapshot at %s yet: starting empty", auto)
                return
            path = auto
        if not path:
            return
        try:
            result = snapshot.load(self.engine, path, self.values.get("snapshot_max_age"))
        except SnapshotError as exc:
            log.error("snapshot refused, starting empty: %s", exc)
            return
        log.warning("restored %d items from %s (%d expired, skipped) in %.2f s",
                    result.items, path, result.expired, result.seconds)

    def save_snapshot(self, name: str | None) -> dict[str, Any]:
        """The admin API's save: ``name`` inside the snapshot directory, or --snapshot for None."""
        try:
            if name is None:
                target = self.values.get("snapshot")
                if not target:
                    raise AdminError(400, "no name given and no --snapshot configured")
                result = snapshot.save(self.engine, target)
            else:
                directory = snapshot.snapshot_directory(self.values.get("snapshot_dir"), self.values.get("snapshot"))
                if directory is None:
                    raise AdminError(400, "the admin API writes snapshots only inside --snapshot-dir "
                                          "(default: the directory of --snapshot), and neither is configured")
                if not snapshot.valid_name(name):
                    raise AdminError(400, f"snapshot name {name[:80]!r} refused: a plain file name "
                                          "(letters, digits, '.', '_', '-'; not starting with '.'; "
                                          "no '/'), written inside the snapshot directory")
                result = snapshot.save_in(self.engine, directory, name)
        except SnapshotConflict as exc:
            raise AdminError(409, str(exc)) from None
        except SnapshotError as exc:
            raise AdminError(500, str(exc)) from None
        log.info("snapshot: %d items written to %s in %.2f s", result.items, result.path, result.seconds)
        return result.as_dict()

    def save_at_exit(self) -> None:
        target = self.values.get("snapshot")
        if not target:
            return
        try:
            result = snapshot.save(self.engine, target)
        except SnapshotError as exc:
            log.error("snapshot not saved: %s", exc)
            return
        log.warning("saved %d items to %s in %.2f s", result.items, target, result.seconds)

    # ---- reload (always on the main thread) ----

    def request_reload(self) -> dict[str, Any]:
        """From an HTTP thread: ask the main loop to reload and wait for its answer."""
        done = threading.Event()
        answer: list[dict[str, Any]] = []
        self._reloads.put((done, answer))
        if not done.wait(10):
            return {"error": "the server did not answer the reload in time"}
        return answer[0]

    def serve_reload_requests(self) -> None:
        while True:
            try:
                done, answer = self._reloads.get_nowait()
            except queue.Empty:
                return
            answer.append(self.reload())
            done.set()

    def reload(self) -> dict[str, Any]:
        """Re-read config file and environment; apply live keys, list the others."""
        if self.loaded is None:
            return {"error": "this server was started without a configuration to reload"}
        try:
            new = config.reread(self.loaded, os.environ)
        except OptionError as exc:
            log.error("reload refused: %s", exc)
            return {"error": str(exc)}
        live, restart = config.changes(self.values, new)
        applied: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for key in live:
            value = new.values[key]
            try:
                if key == "memory_limit":
                    evicted = self.engine.set_memlimit_evict(value * MIB)
                    applied[key] = {"value": value, "evicted": evicted}
                elif key == "verbose":
                    self.engine.set_verbosity(value)
                    setup_logging(value)
                    applied[key] = value
                elif key == "conn_limit":
                    self.engine.set_maxconns(value)
                    applied[key] = value
                elif key == "metrics_listen":
                    self.stop_http()
                    self.values[key] = value
                    self.start_http(value)
                    applied[key] = value or "off"
                elif key in ("admin_token", "admin_token_file"):
                    self.values[key] = value
                    if self.http is not None:
                        self.http.access.token = config.admin_token(new.values)
                    applied[key] = "changed"
                else:  # snapshot: used at the next save
                    applied[key] = value
                self.values[key] = value
            except Exception as exc:  # report, keep the old value, go on with the rest
                errors[key] = str(exc)
        result: dict[str, Any] = {"config": self.loaded.config_path, "applied": applied,
                                  "restart_required": restart}
        if errors:
            result["failed"] = errors
        log.warning("reload: applied %s; needs a restart: %s%s", sorted(applied) or "nothing",
                    restart or "nothing", f"; failed: {errors}" if errors else "")
        return result


def process_flags(loaded: Loaded | None) -> daemon.ProcessFlags:
    """-d, -P, -u and -r from the resolved options."""
    values = loaded.values if loaded else {}
    return daemon.ProcessFlags(daemon=bool(values.get("daemon")), pidfile=values.get("pidfile"),
                               user=values.get("user"),
                               enable_coredumps=bool(values.get("enable_coredumps")))


def serve(settings: Settings, loaded: Loaded | None = None) -> int:
    """Start an engine with ``settings``, run until told to stop; exit status.

    The process flags (daemon.py) wrap the engine's life: -r and -u's lookup
    first, -d's fork before the engine exists, -P and -u's drop once it
    serves, -d's detach last.
    """
    setup_logging(settings.verbose)
    flags = process_flags(loaded)
    try:
        if flags.enable_coredumps:
            daemon.raise_core_limit()
        user = daemon.lookup_user(flags.user) if flags.user and daemon.running_as_root() else None
    except daemon.ProcessError as exc:
        log.error("%s", exc)
        return exc.status
    detacher = daemon.Detacher() if flags.daemon else None
    if detacher is not None:
        status = detacher.start()
        if status is not None:  # the parent: the child serves (0) or failed (its status)
            return status
    try:
        return _serve(settings, loaded, flags, user, detacher)
    finally:
        if flags.pidfile:
            why = daemon.remove_pidfile(flags.pidfile)
            if why:
                log.info("pid file %s not removed: %s", flags.pidfile, why)


def _serve(settings: Settings, loaded: Loaded | None, flags: daemon.ProcessFlags,
           user: Any, detacher: daemon.Detacher | None) -> int:
    hup = threading.Event()
    old_hup = signal.signal(signal.SIGHUP, lambda _s, _f: hup.set())
    with _Signals() as signals:
        try:
            engine = Engine(settings)
        except SettingsError as exc:
            log.error("error: %s", exc)
            return EX_USAGE
        except EngineError as exc:
            log.error("cannot create the engine: %s", exc)
            return EX_OSERR
        control = Control(engine, loaded)
        try:
            control.restore_at_start()
            try:
                engine.start()
            except EngineError as exc:
                log.error("cannot start: %s", exc)
                return EX_OSERR
            control.health.port = int(engine.stats("settings").get("tcpport", settings.port))
            control.health.unix_path = settings.unix_socket or ""
            try:
                if flags.pidfile:
                    daemon.write_pidfile(flags.pidfile)
                if user is not None:
                    daemon.drop_privileges(user)
                elif flags.user is None and daemon.running_as_root():
                    log.info("running as root: -u USER drops privileges once the listeners are open")
            except daemon.ProcessError as exc:
                log.error("%s", exc)
                engine.stop(0)
                return exc.status
            listen = control.values.get("metrics_listen")
            try:
                control.start_http(listen)
            except OSError as exc:
                if loaded is not None and "metrics_listen" in loaded.explicit:
                    log.error("cannot serve metrics on %s: %s", listen, exc.strerror or exc)
                    engine.stop(0)
                    return EX_OSERR
                log.info("metrics and admin API off: cannot listen on default %s: %s",
                            listen, exc.strerror or exc)
            log.info("%s", describe(settings, engine.backend, stackmap_core.version()))
            if engine.backend_note:
                log.warning("backend: %s", engine.backend_note)  # a fallback is always worth a line
            if detacher is not None:
                detacher.ready(settings.verbose or 0)

            reason = ""
            while not reason:
                if engine.wait(WAIT_SLICE_MS):
                    reason = 'client sent "shutdown"'
                elif signals.received is not None:
                    reason = signal.Signals(signals.received).name
                if hup.is_set():
                    hup.clear()
                    control.reload()
                control.serve_reload_requests()
            log.info("exiting normally (%s)", reason)
            control.stop_http()
            engine.stop(GRACE_MS)
            control.save_at_exit()
        finally:
            control.stop_http()
            engine.destroy()
            signal.signal(signal.SIGHUP, old_hup)
    return EX_OK
