"""A pool of cache nodes behind twemproxy, and a load that checks every value.

Shared by tests/test_scaleout.py (which asserts correctness) and
tests/scaleout_bench.py (which measures the figures in README "Scaling
out").  Everything runs on 127.0.0.1:

* ``Pool``: N nodes (memcached or stackmapd, started by conftest's
  ``launch``) named node1..N, and optionally a nutcracker in front of them
  with deploy/scaleout/nutcracker.yml (ports replaced).  Servers are
  named in the YAML, so ketama places keys by name, not port: two pools on
  different ports place every key on the same node index.
* ``VersionedLoad``: one client thread (pymemcache, through the proxy or a
  HashClient) doing cache-aside reads and writes over a key set.  Every
  value is ``key:version``; the load remembers which versions each key may
  hold (the last acknowledged write, plus any write that failed and so may
  or may not have landed) and records any other value as *wrong*.
* ``failover``: kill a node under that load, wait for the proxy to eject
  it, restart it on the same port, wait until it serves again, and report
  errors, times and the hit ratio afterwards.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import HOST, START_TIMEOUT, Server, Target, free_port, launch, terminate
from mcwire import stats

NUTCRACKER = "/usr/sbin/nutcracker"
DEPLOY_YAML = Path(__file__).resolve().parent.parent / "deploy" / "scaleout" / "nutcracker.yml"


def nutcracker_yaml(listen: int, nodes: list[tuple[str, int]], hash_name: str | None = None) -> str:
    """deploy/scaleout/nutcracker.yml with its listen port and server list
    replaced by `listen` and `nodes` ((name, port) on 127.0.0.1), and its
    key hash by `hash_name` if given."""
    out: list[str] = []
    servers_done = False
    for line in DEPLOY_YAML.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("listen:"):
            out.append(f"  listen: {HOST}:{listen}")
        elif stripped.startswith("hash:") and hash_name is not None:
            out.append(f"  hash: {hash_name}")
        elif stripped.startswith("- ") and re.match(r"- \S+:\d+:\d+ node\d+$", stripped):
            if not servers_done:
                out += [f"    - {HOST}:{port}:1 {name}" for name, port in nodes]
                servers_done = True
        else:
            out.append(line)
    if not servers_done:
        raise RuntimeError(f"{DEPLOY_YAML}: no server lines found")
    return "\n".join(out) + "\n"


def node_args(target: Target, extra: list[str] | None = None) -> list[str]:
    """Per-node flags: no metrics listener for stackmapd (ports would clash)."""
    base = ["--metrics-listen", "off"] if target.name == "stackmapd" else []
    return base + list(extra or [])


def start_on_port(target: Target, port: int, args: list[str], log_path: str) -> Server:
    """Start `target` on a given port (a restarted node keeps its address)."""
    cmd = target.command(port, args)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    srv = Server(target, HOST, port, proc, args, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            stats(HOST, port)
            return srv
        except OSError:
            time.sleep(0.02)
    srv.stop()
    raise RuntimeError(f"{' '.join(cmd)} did not start: exit={proc.poll()}\n{srv.log()}")


@dataclass
class Proxy:
    """A running nutcracker."""

    port: int
    stats_port: int
    proc: subprocess.Popen[bytes]
    workdir: str

    def stats(self) -> dict[str, Any]:
        """The stats JSON (aggregated every 100 ms); the pool is under 'stackmap'."""
        with socket.create_connection((HOST, self.stats_port), timeout=2) as s:
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return json.loads(data)

    def ejects(self) -> int:
        return int(self.stats()["stackmap"]["server_ejects"])

    def log(self) -> str:
        try:
            return Path(self.workdir, "nutcracker.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        terminate(self.proc)


def start_proxy(nodes: list[tuple[str, int]], workdir: str, hash_name: str | None = None) -> Proxy:
    """Start nutcracker in front of `nodes` and wait until it forwards."""
    if not os.access(NUTCRACKER, os.X_OK):
        raise RuntimeError(f"{NUTCRACKER} not found: install Debian's nutcracker (make test does)")
    for _attempt in range(3):
        port, stats_port = free_port(), free_port()
        conf = Path(workdir, "nutcracker.yml")
        conf.write_text(nutcracker_yaml(port, nodes, hash_name))
        proc = subprocess.Popen(
            [NUTCRACKER, "-c", str(conf), "-s", str(stats_port), "-a", HOST, "-i", "100",
             "-o", str(Path(workdir, "nutcracker.log")), "-p", str(Path(workdir, "nutcracker.pid"))],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        proxy = Proxy(port, stats_port, proc, workdir)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection((HOST, port), timeout=1) as s:
                    s.sendall(b"get __probe__\r\n")
                    if s.recv(64) == b"END\r\n":
                        proxy.stats()
                        return proxy
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        proxy.stop()
    raise RuntimeError(f"nutcracker did not start:\n{proxy.log()}")


@dataclass
class Pool:
    """Nodes named node1..N, optionally behind a nutcracker."""

    target: Target
    nodes: list[Server]
    workdir: str
    proxy: Proxy | None = None

    @property
    def names(self) -> list[tuple[str, int]]:
        return [(f"node{i + 1}", n.port) for i, n in enumerate(self.nodes)]

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for n in self.nodes:
            n.stop()


def start_pool(target: Target, count: int = 3, args: list[str] | None = None,
               per_node: Callable[[int], list[str]] | None = None, proxy: bool = True) -> Pool:
    """`count` nodes of `target` (node i gets args + per_node(i)), and a proxy."""
    workdir = tempfile.mkdtemp(prefix="scaleout-")
    nodes: list[Server] = []
    pool = Pool(target, nodes, workdir)
    try:
        for i in range(count):
            extra = list(args or []) + (per_node(i) if per_node else [])
            nodes.append(launch(target, node_args(target, extra)))
        if proxy:
            pool.proxy = start_proxy(pool.names, workdir)
    except BaseException:
        pool.stop()
        raise
    return pool


# ---------------------------------------------------------------------------
# Load with value checking
# ---------------------------------------------------------------------------


@dataclass
class OpRecord:
    """One failed operation of the load."""

    t: float  # time.monotonic() when it failed
    op: str  # "get" or "set"
    error: str  # exception class name and message


class VersionedLoad:
    """Cache-aside load over `keys` keys through `client`, checking values.

    Each step picks a key (seeded RNG): 80% a get (a miss is followed by a
    set of a new version, as an application refills its cache), 20% a set
    of a new version.  ``allowed[key]`` is the set of versions the key may
    hold: after an acknowledged set only that version; after a failed set
    the previous ones plus the failed one (it may have landed).  A get that
    returns anything else is a wrong value.
    """

    def __init__(self, make_client: Callable[[], Any], keys: int = 2000, seed: int = 1,
                 prefix: str = "k") -> None:
        self.make_client = make_client
        self.client = make_client()
        self.keys = [f"{prefix}{i}" for i in range(keys)]
        self.rng = random.Random(seed)
        self.version: dict[str, int] = {}
        self.allowed: dict[str, set[int]] = {}
        self.ops = 0
        self.hits = 0
        self.misses = 0
        self.errors: list[OpRecord] = []
        self.wrong: list[str] = []
        self.hit_log: list[tuple[float, bool]] = []  # (time, hit) of every get that answered
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def _set(self, key: str) -> None:
        v = self.version.get(key, 0) + 1
        self.version[key] = v
        try:
            ok = self.client.set(key, f"{key}:{v}".encode(), noreply=False)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded and classified
            self.allowed.setdefault(key, set()).add(v)
            self._error("set", exc)
            return
        if ok:
            self.allowed[key] = {v}
        else:  # HashClient with a dead node answers False: not stored anywhere we know
            self.allowed.setdefault(key, set()).add(v)
            self._error("set", RuntimeError("set returned False"))

    def _error(self, op: str, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(OpRecord(time.monotonic(), op, f"{type(exc).__name__}: {exc}"))

    def step(self) -> None:
        key = self.rng.choice(self.keys)
        if self.rng.random() < 0.2:
            self._set(key)
        else:
            try:
                value = self.client.get(key)
            except Exception as exc:  # noqa: BLE001
                self._error("get", exc)
                value = b"<error>"
            if value is None:
                with self.lock:
                    self.misses += 1
                    self.hit_log.append((time.monotonic(), False))
                self._set(key)
            elif value != b"<error>":
                name, _, ver = value.decode(errors="replace").rpartition(":")
                good = name == key and ver.isdigit() and int(ver) in self.allowed.get(key, set())
                with self.lock:
                    self.hits += 1
                    self.hit_log.append((time.monotonic(), True))
                    if not good:
                        self.wrong.append(f"{key} -> {value!r}, allowed {sorted(self.allowed.get(key, set()))}")
        with self.lock:
            self.ops += 1

    def run(self, ops: int) -> None:
        for _ in range(ops):
            self.step()

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.step()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wait_ops(self, more: int, timeout: float = 60.0) -> None:
        """Block until the thread has done `more` further operations."""
        with self.lock:
            goal = self.ops + more
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.ops >= goal:
                    return
            time.sleep(0.01)
        raise TimeoutError(f"load did only {self.ops} of {goal} operations")

    def hit_ratio_since(self, t: float) -> float:
        with self.lock:
            after = [h for ts, h in self.hit_log if ts >= t]
        return sum(after) / len(after) if after else 0.0


def proxy_client(proxy: Proxy) -> Any:
    """The client an application would use against the proxy."""
    from pymemcache.client.base import Client

    return Client((HOST, proxy.port), connect_timeout=5, timeout=5, no_delay=True)


# Errors a client may see while a node is down: twemproxy answers
# "SERVER_ERROR Connection refused/reset" and closes the client connection.
ALLOWED_ERRORS = ("MemcacheServerError", "MemcacheUnexpectedCloseError", "ConnectionResetError",
                  "BrokenPipeError", "ConnectionRefusedError", "RuntimeError: set returned False")


def disallowed(errors: list[OpRecord]) -> list[OpRecord]:
    return [e for e in errors if not e.error.startswith(ALLOWED_ERRORS)]


@dataclass
class FailoverResult:
    """What happened when one node was killed and restarted under load."""

    label: str
    ops_before: int  # operations before the kill (all must succeed)
    errors_before: list[OpRecord]
    errors_down: list[OpRecord]  # from the kill until the node served again
    errors_after: list[OpRecord]  # after it served again
    ejects: int  # the proxy's server_ejects counter at the end
    eject_seconds: float  # kill -> the proxy's first ejection seen (100 ms stats)
    down_seconds: float  # kill -> restart
    serve_seconds: float  # restart -> the restarted node's first command
    hit_ratio_after: float  # gets that hit, over the `after_ops` operations after
    wrong: list[str]
    ops: int
    restored_items: int  # items the restarted node held before any traffic
    extra: dict[str, Any] = field(default_factory=dict)


def served_commands(port: int) -> int:
    s = stats(HOST, port)
    return int(s["cmd_get"]) + int(s["cmd_set"]) + int(s.get("cmd_touch", "0"))


def failover(pool: Pool, victim: int, restart_args: list[str], label: str,
             make_client: Callable[[], Any] | None = None,
             ejected: Callable[[VersionedLoad], bool] | None = None,
             before_ops: int = 1500, after_ops: int = 3000, hold: float = 0.0,
             before_kill: Callable[[], None] | None = None, keys: int = 2000) -> FailoverResult:
    """Kill node `victim` with SIGKILL under load, wait until the pool has
    ejected it (and `hold` seconds more), restart it on its port with
    `restart_args`, wait until it serves again, run `after_ops` more
    operations.  The load goes through the proxy unless `make_client` gives
    another client (a HashClient); `ejected(load)` says when the pool has
    dropped the node (default: the proxy's server_ejects counter grew).
    Bounded: every wait has a timeout."""
    proxy = pool.proxy
    if make_client is None:
        assert proxy is not None
        make_client = lambda: proxy_client(proxy)  # noqa: E731
    load = VersionedLoad(make_client, keys=keys)
    load.run(before_ops)  # fill the cache; nothing fails yet
    ops_before = load.ops
    errors_before = list(load.errors)
    if before_kill is not None:
        before_kill()
    node = pool.nodes[victim]
    ejects0 = proxy.ejects() if proxy is not None else 0
    if ejected is None:
        assert proxy is not None
        ejected = lambda _load: proxy.ejects() > ejects0  # noqa: E731
    load.start()
    try:
        load.wait_ops(200)
        t_kill = time.monotonic()
        os.kill(node.pid, signal.SIGKILL)
        node.proc.wait(timeout=10)
        t_eject = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if ejected(load):
                t_eject = time.monotonic()
                break
            time.sleep(0.01)
        if t_eject is None:
            raise AssertionError("the pool never ejected the killed node")
        time.sleep(hold)
        t_restart = time.monotonic()
        new = start_on_port(node.target, node.port, restart_args, node.log_path)
        pool.nodes[victim] = new
        restored = int(stats(HOST, new.port)["curr_items"])
        base = served_commands(new.port)
        t_served = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if served_commands(new.port) > base:
                t_served = time.monotonic()
                break
            time.sleep(0.01)
        if t_served is None:
            raise AssertionError("the restarted node never got traffic")
        load.wait_ops(after_ops)
    finally:
        load.stop()
    with load.lock:
        errors = list(load.errors[len(errors_before):])
    return FailoverResult(
        label=label,
        ops_before=ops_before,
        errors_before=errors_before + [e for e in errors if e.t < t_kill],
        errors_down=[e for e in errors if t_kill <= e.t < t_served],
        errors_after=[e for e in errors if e.t >= t_served],
        ejects=proxy.ejects() - ejects0 if proxy is not None else 0,
        eject_seconds=t_eject - t_kill,
        down_seconds=t_restart - t_kill,
        serve_seconds=t_served - t_restart,
        hit_ratio_after=load.hit_ratio_since(t_served),
        wrong=list(load.wrong),
        ops=load.ops,
        restored_items=restored,
    )
