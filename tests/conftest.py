"""Fixtures that run real server processes for the integration tests.

Every integration test talks to a real process over loopback TCP: Debian's
memcached 1.6 (the reference) or stackmapd (the product).  Which ones run is
chosen on the command line or in the environment, so the same tests can be
validated against memcached first and then held against stackmapd:

  --target NAME[,NAME]   or  STACKMAP_TARGETS="stackmapd"   (default: stackmapd)
      "memcached" -> memcached -U 0 -l 127.0.0.1 -p PORT ARGS
      "stackmapd" -> stackmapd -l 127.0.0.1 -p PORT --backend B ARGS, where
                     stackmapd is the console script next to sys.executable
                     (the venv's bin/), or $STACKMAPD_BIN when set (e.g. the
                     bare C driver build/smd, which takes memcached's flags)
  STACKMAP_BACKENDS="epoll,uring" (default)   one stackmapd target per backend
      (passed as --backend B, or -B B when $STACKMAPD_BIN is set, since the
      C driver uses getopt; $STACKMAPD_BACKEND_FLAG overrides)

The `target` fixture is parametrised (module scope) over the selected targets;
`server` is one fresh process per module and target; `start_server` starts
extra processes with other flags inside a test.  Every process gets a port
that was free when probed, must answer "version" before the test starts, and
is killed at teardown.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mcwire import Wire, stats  # noqa: E402
from ports import free_port  # noqa: E402  (this worker's own ports, see ports.py)

HOST = "127.0.0.1"
START_TIMEOUT = 15.0


@dataclass(frozen=True)
class Target:
    """One kind of server process the tests can run."""

    name: str  # "memcached" or "stackmapd"
    backend: str | None = None  # stackmapd ring backend, None for memcached

    @property
    def id(self) -> str:
        return self.name if self.backend is None else f"{self.name}-{self.backend}"

    def command(self, port: int, args: list[str]) -> list[str]:
        # -l HOST unless args give their own (a second -l joins the first, as memcached's)
        listen = [] if "-l" in args else ["-l", HOST]
        if self.name == "memcached":
            exe = shutil.which("memcached") or "/usr/bin/memcached"
            cmd = [exe, "-U", "0", *listen, "-p", str(port)]
            if os.geteuid() == 0:
                cmd += ["-u", "root"]  # memcached refuses to run as root otherwise
            return cmd + args
        cmd = [stackmapd_executable(), *listen, "-p", str(port)]
        if self.backend:
            cmd += [backend_flag(), self.backend]
        return cmd + args


MEMCACHED = Target("memcached")


def backend_flag() -> str:
    """The console script takes --backend; the bare C driver (build/smd) -B."""
    default = "-B" if os.environ.get("STACKMAPD_BIN") else "--backend"
    return os.environ.get("STACKMAPD_BACKEND_FLAG", default)


def stackmapd_executable() -> str:
    env = os.environ.get("STACKMAPD_BIN")
    if env:
        return env
    beside = Path(sys.executable).parent / "stackmapd"
    if beside.exists():
        return str(beside)
    found = shutil.which("stackmapd")
    if found:
        return found
    pytest.fail("stackmapd not found next to the interpreter nor on PATH (run `pip install .`)")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--target",
        action="append",
        default=None,
        help="server(s) to test: memcached, stackmapd (comma-separated or repeated); "
        "default $STACKMAP_TARGETS or stackmapd",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line(
        "markers",
        "serial: measures how the server shares a CPU, so nothing else may run meanwhile; "
        "`make test` runs the rest on several workers (-m 'not serial') and these afterwards, alone",
    )


# Files that take minutes (an image build, memcached's t/ suite on a pool of
# its own, package builds), in the order they should start.  Under
# `pytest -n` (--dist loadfile) a worker takes one file at a time in
# collection order, so a long file collected late would run alone at the
# end while the other workers idle: these are collected first.
LONG_FILES = ("test_container.py", "test_mc_suite.py", "test_build.py", "test_crawler.py",
              "test_binary_differential.py", "test_slab_move.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)

    items.sort(key=rank)  # stable: every file keeps its own order


def selected_targets(config: pytest.Config) -> list[Target]:
    raw = config.getoption("--target") or [os.environ.get("STACKMAP_TARGETS", "stackmapd")]
    names = [n.strip() for item in raw for n in item.split(",") if n.strip()]
    backends = [
        b.strip() for b in os.environ.get("STACKMAP_BACKENDS", "epoll,uring").split(",") if b.strip()
    ]
    out: list[Target] = []
    for name in names:
        if name == "memcached":
            out.append(MEMCACHED)
        elif name == "stackmapd":
            out.extend(Target("stackmapd", b) for b in backends)
        else:
            raise pytest.UsageError(f"unknown target {name!r} (memcached, stackmapd)")
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target" in metafunc.fixturenames:
        targets = selected_targets(metafunc.config)
        metafunc.parametrize("target", targets, ids=[t.id for t in targets], scope="module")


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass
class Server:
    """A running server process under test."""

    target: Target
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    args: list[str]
    log_path: str
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __iter__(self) -> Iterator[object]:
        # so that `host, port, proc = server` works
        return iter((self.host, self.port, self.proc))

    def wire(self, timeout: float = 5.0) -> Wire:
        return Wire(self.host, self.port, timeout)

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.target.name == "memcached" and self.proc.poll() is None:
            # The reference: how it exits is not under test, and on SIGTERM it
            # waits for its next clock tick, up to a second per process (the
            # differential tests start a pair per session).
            self.proc.kill()
            self.proc.wait(timeout=5)
        terminate(self.proc)
        try:
            os.unlink(self.log_path)
        except OSError:
            pass


def _answers_version(port: int, binary: bool = False) -> bool:
    try:
        with Wire(HOST, port, timeout=1.0) as w:
            if binary:  # -B binary: a binary VERSION (magic 0x80, opcode 0x0b)
                return w.request(b"\x80\x0b" + bytes(22), (b"\x81\x0b",)) == b"\x81\x0b"
            # (with -Y the first command must authenticate: an answer is enough)
            return w.request(b"version\r\n").startswith((b"VERSION ", b"CLIENT_ERROR unauthenticated"))
    except OSError:
        return False


def launch(target: Target, args: list[str] | None = None) -> Server:
    """Start a fresh process of `target` on a free loopback port and wait for it."""
    args = list(args or [])
    last_error = ""
    for _attempt in range(3):
        port = free_port()
        fd, log_path = tempfile.mkstemp(prefix=f"{target.id}-", suffix=".log")
        cmd = target.command(port, args)
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True
        )
        os.close(fd)
        server = Server(target, HOST, port, proc, args, log_path)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            binary = any(a == "-B" and b == "binary" for a, b in zip(args, args[1:], strict=False))
            if _answers_version(port, binary):
                return server
            time.sleep(0.05)
        last_error = f"{' '.join(cmd)}: exit={proc.poll()} log:\n{server.log()}"
        server.stop()
        # The port may have been taken between the probe and the bind: retry.
    pytest.fail(f"server did not start: {last_error}")


@pytest.fixture(scope="module")
def server(target: Target, request: pytest.FixtureRequest) -> Iterator[Server]:
    """One fresh server per test module and target, started with the module's
    SERVER_ARGS (a list of flags, default none)."""
    args = list(getattr(request.module, "SERVER_ARGS", []))
    srv = launch(target, args)
    yield srv
    srv.stop()


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    """Factory: start_server(target, args) -> Server, killed at the test's end."""
    started: list[Server] = []

    def _start(target: Target, args: list[str] | None = None) -> Server:
        srv = launch(target, args)
        started.append(srv)
        return srv

    yield _start
    for srv in started:
        srv.stop()


@pytest.fixture
def wire(server: Server) -> Iterator[Wire]:
    """A raw connection to the module's server, closed after the test."""
    w = server.wire()
    yield w
    w.close()


@pytest.fixture
def client(server: Server) -> Iterator[object]:
    """A pymemcache client for the module's server."""
    from pymemcache.client.base import Client

    c = Client((server.host, server.port), connect_timeout=5, timeout=5)
    yield c
    c.close()


def assert_alive(srv: Server) -> None:
    """The process still runs and answers 'version' on a new connection."""
    assert srv.alive(), f"server exited with {srv.proc.returncode}; log:\n{srv.log()}"
    assert _answers_version(srv.port), f"server does not answer 'version'; log:\n{srv.log()}"


def memaslap_cpu0_argv(srv: Server, seconds: int) -> list[str]:
    """Pin every thread of the server to CPU 0 and return the command line of a
    memaslap -c 64 (64 B values, 90% get) for `seconds`, pinned there too."""
    memaslap = shutil.which("memcaslap")
    if memaslap is None:
        pytest.fail("memcaslap (libmemcached-tools) is required; make test installs it")
    if shutil.which("taskset") is None:
        pytest.skip("taskset (util-linux) is needed to share one CPU")
    cfg = Path(srv.log_path).with_suffix(".memaslap.cfg")
    cfg.write_text("key\n64 64 1\nvalue\n64 64 1\ncmd\n0 0.1\n1 0.9\n")
    for task in Path(f"/proc/{srv.pid}/task").iterdir():
        subprocess.run(["taskset", "-p", "-c", "0", task.name], check=False, capture_output=True)
    return ["taskset", "-c", "0", memaslap, "-s", f"{HOST}:{srv.port}", "-T", "1", "-c", "64",
            "-F", str(cfg), "-t", f"{seconds}s"]


def memaslap_same_cpu(srv: Server, seconds: int) -> dict[str, int]:
    """memaslap -c 64 (64 B values, 90% get) with it and the server on CPU 0 for
    `seconds`, as on the reference setup (BENCHMARKING.md): the server runs only
    when the client yields.  Returns the deltas of the server's numeric stats
    (stackmapd's: "stats" and "stats backend")."""
    argv = memaslap_cpu0_argv(srv, seconds)
    groups = ("", "backend") if srv.target.name == "stackmapd" else ("",)
    before = {k: v for g in groups for k, v in stats(HOST, srv.port, g).items()}
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    after = {k: v for g in groups for k, v in stats(HOST, srv.port, g).items()}
    return {k: int(after[k]) - int(before[k]) for k in after
            if k in before and after[k].isdigit() and before[k].isdigit()}
