"""The servers under test: how to start each one, pinned, on a fresh loopback port.

A target is a name and a function that builds its command line for a port.  Adding one
(say a stackmapd backend) is one entry in TARGETS.  Every server listens on 127.0.0.1
only, runs one worker thread (``-t 1``) and gets the same item memory (``-m``), so that
memcached and stackmapd are compared like for like.  A server counts as started once it
answers ``version`` on its port.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STACKMAPD = REPO_ROOT / ".venv" / "bin" / "stackmapd"
DEFAULT_MEMCACHED = "/usr/bin/memcached"
HOST = "127.0.0.1"

# Server ports are drawn below Linux's default ephemeral range (32768-60999), so that a
# client connection's local port cannot take a port we are about to listen on.
PORT_RANGE = (20000, 32000)


def default_stackmapd() -> str:
    """The stackmapd console script: the repository's .venv, else next to this Python
    (an activated or other venv), else on PATH; the .venv path if none exists."""
    candidates = [DEFAULT_STACKMAPD, Path(sys.executable).parent / "stackmapd"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which("stackmapd") or str(DEFAULT_STACKMAPD)


def backend_flag_for(stackmapd: str) -> str:
    """The bare C driver build/smd takes ``-B epoll``; the console script ``--backend``."""
    return "-B" if Path(stackmapd).name.startswith("smd") else "--backend"


@dataclass(frozen=True)
class TargetOptions:
    """Settings shared by every target's command line."""

    memcached: str  # memcached binary
    stackmapd: str  # stackmapd console script (or build/smd, same flags)
    memory_mb: int  # -m, item memory in MiB
    threads: int  # -t, worker threads
    backend_flag: str = "--backend"  # how stackmapd is told its backend ("-B" for build/smd)


@dataclass(frozen=True)
class Target:
    """One server implementation to measure."""

    name: str  # label in tables and JSON
    description: str  # one line for --list-targets
    argv: Callable[[TargetOptions, int], list[str]]  # command line for a port
    binary: Callable[[TargetOptions], str]  # the executable that must exist


def _memcached_argv(opts: TargetOptions, port: int) -> list[str]:
    argv = [opts.memcached, "-U", "0", "-t", str(opts.threads), "-l", HOST]
    argv += ["-p", str(port), "-m", str(opts.memory_mb)]
    if os.geteuid() == 0:
        argv += ["-u", "root"]  # memcached refuses to run as root without -u
    return argv


def _stackmapd_argv(backend: str, extra: tuple[str, ...] = ()) -> Callable[[TargetOptions, int], list[str]]:
    def argv(opts: TargetOptions, port: int) -> list[str]:
        return [
            opts.stackmapd,
            opts.backend_flag,
            backend,
            "-t",
            str(opts.threads),
            "-l",
            HOST,
            "-p",
            str(port),
            "-m",
            str(opts.memory_mb),
            *extra,
        ]

    return argv


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "memcached",
            "Debian's memcached (-U 0), the reference",
            _memcached_argv,
            lambda o: o.memcached,
        ),
        Target(
            "stackmapd-epoll",
            "stackmapd --backend epoll",
            _stackmapd_argv("epoll"),
            lambda o: o.stackmapd,
        ),
        Target(
            "stackmapd-s3fifo",
            "stackmapd --backend epoll -o eviction=s3fifo (S3-FIFO instead of the segmented LRU)",
            _stackmapd_argv("epoll", ("-o", "eviction=s3fifo")),
            lambda o: o.stackmapd,
        ),
        Target(
            "stackmapd-uring",
            "stackmapd --backend uring",
            _stackmapd_argv("uring"),
            lambda o: o.stackmapd,
        ),
        Target(
            "stackmapd-uring-sqpoll",
            "stackmapd --backend uring -o uring_sqpoll=1 (a kernel thread polls the submission queue)",
            _stackmapd_argv("uring", ("-o", "uring_sqpoll=1")),
            lambda o: o.stackmapd,
        ),
        Target(
            "stackmapd-uring-zc",
            "stackmapd --backend uring -o uring_zc_threshold=16k (zero-copy sends of 16 KiB and more)",
            _stackmapd_argv("uring", ("-o", "uring_zc_threshold=16k")),
            lambda o: o.stackmapd,
        ),
        Target(
            "stackmapd-stackmap",
            "stackmapd --backend stackmap (needs /dev/stackmap: our kernel module, e.g. in the test VM)",
            _stackmapd_argv("stackmap"),
            lambda o: o.stackmapd,
        ),
    )
}


class ServerError(RuntimeError):
    """A server did not start, or died."""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


class PortPicker:
    """Hands out a different, currently free loopback port for every run."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        self._used: set[int] = set()

    def next(self) -> int:
        for _ in range(1000):
            port = self._rng.randrange(*PORT_RANGE)
            if port not in self._used and _port_free(port):
                self._used.add(port)
                return port
        raise ServerError("no free loopback port found")


def _answers_version(port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"version\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(256)
                if not chunk:
                    return False
                data += chunk
            return data.startswith(b"VERSION ")
    except OSError:
        return False


def _reply(s: socket.socket, ends: tuple[bytes, ...]) -> bytes:
    """Read one reply: until it ends with one of ``ends`` or the server closes."""
    got = b""
    while not got.endswith(ends):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def server_request(port: int, line: bytes, ends: tuple[bytes, ...], timeout: float = 2.0) -> bytes:
    """One command on a fresh connection, and its reply (OSError on failure)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(line)
        return _reply(s, ends)


def server_stats(port: int, timeout: float = 2.0) -> dict[str, int] | None:
    """Every integer ``STAT name value`` of the server's ``stats`` and, from
    stackmapd, ``stats backend`` (syscalls, uring_*; memcached answers it
    ERROR), or None on failure."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            data = b""
            for cmd in (b"stats\r\n", b"stats backend\r\n"):
                s.sendall(cmd)
                data += _reply(s, (b"END\r\n", b"ERROR\r\n"))
    except OSError:
        return None
    stats: dict[str, int] = {}
    for line in data.decode("ascii", "replace").split("\r\n"):
        parts = line.split()
        if len(parts) == 3 and parts[0] == "STAT" and parts[2].isdigit():
            stats[parts[1]] = int(parts[2])
    return stats or None


def server_command_counts(port: int, timeout: float = 2.0) -> dict[str, int] | None:
    """cmd_get and cmd_set from the server's ``stats``, or None if it does not say."""
    stats = server_stats(port, timeout)
    if stats is None or "cmd_get" not in stats or "cmd_set" not in stats:
        return None
    return {"cmd_get": stats["cmd_get"], "cmd_set": stats["cmd_set"]}


class Server:
    """A running, CPU-pinned server process (``taskset`` execs it: same PID)."""

    def __init__(self, argv: list[str], cpu: int | str, port: int, log_path: Path) -> None:
        self.argv = ["taskset", "-c", str(cpu), *argv]
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 10) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float) -> None:
        """Block until the server answers ``version``; raise ServerError otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"{self.argv[3]} exited with {self.proc.returncode} before answering"
                    f" on port {self.port}:\n{self.log_tail()}"
                )
            if _answers_version(self.port, timeout=1.0):
                return
            time.sleep(0.02)
        raise ServerError(
            f"{self.argv[3]} did not answer 'version' on port {self.port} within {timeout:g} s:\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s, to the server's own process group.

        The server was started in a new session, so its group holds exactly what it
        started (a wrapper script's children too).  Always reaps the server.
        """
        try:
            if self.proc.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self.proc.wait()
            # Children left behind by a server that exited on its own.
            self._signal_group(signal.SIGKILL)
        finally:
            self._log.close()

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
