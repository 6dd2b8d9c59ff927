"""The container image (Dockerfile), built with buildah and run as a container.

deploy/container/build.sh builds the Dockerfile here without Docker: a
debootstrap base image and `buildah build --isolation chroot` on vfs storage
(see deploy/README.md).  The first build takes minutes; later runs find the
image tagged with the hash of its inputs and skip the build.

Each container runs the image's own entry point (`stackmapd -l 0.0.0.0`,
plus the arguments a user would give `docker run IMAGE ...`) under
`buildah run`, in a fresh network namespace of its own (`unshare --net`, with
only `lo` up), as `docker run` without `-p` would.  The clients (memccapable,
pymemcache) join that namespace with nsenter, as `docker exec` would, and
talk to 127.0.0.1:11211 there: nothing listens on the host's interfaces.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "deploy" / "container" / "build.sh"
BUILDAH = shutil.which("buildah")
MEMCCAPABLE = shutil.which("memccapable") or shutil.which("memcapable")
PORT = 11211  # inside the container's network namespace
UID = 11211  # the image's USER
BUILD_TIMEOUT = 3600  # a first build on a fresh machine debootstraps and compiles
START_TIMEOUT = 60.0

pytestmark = pytest.mark.skipif(BUILDAH is None, reason="buildah not installed (make apt-test installs it)")


def buildah(*args: str, timeout: float = 300) -> str:
    assert BUILDAH
    proc = subprocess.run([BUILDAH, "--storage-driver", "vfs", *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"buildah {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


@dataclass(frozen=True)
class Image:
    tag: str
    config: dict[str, object]  # the OCI image config: Entrypoint, Cmd, User, Env, ...


@pytest.fixture(scope="module")
def image() -> Image:
    proc = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert proc.returncode == 0, f"{BUILD} failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    tag = proc.stdout.strip().splitlines()[-1]
    config = json.loads(buildah("inspect", "--type", "image", tag))["OCIv1"]["config"]
    return Image(tag, config)


def children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            pass
    return out


def descendants(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        for c in children(todo.pop()):
            seen.append(c)
            todo.append(c)
    return seen


def proc_status(pid: int, field: str) -> list[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split()[1:]
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class Container:
    """`buildah run` of the image's entry point in a network namespace of its own."""

    def __init__(self, image: Image, args: list[str], nofile: int | None, log: Path,
                 security_opts: list[str] | None = None) -> None:
        self.name = f"stackmapd-test-{os.getpid()}-{time.monotonic_ns()}"
        # The open-file limit as `docker run --ulimit nofile=N:N` gives it
        # (buildah run otherwise sets 1024:1024, whatever the caller's is).
        limit = ["--ulimit", f"nofile={nofile}:{nofile}"] if nofile is not None else []
        limit += [a for opt in security_opts or [] for a in ("--security-opt", opt)]
        buildah("from", "--pull=never", *limit, "--name", self.name, image.tag)
        entry = list(image.config.get("Entrypoint") or [])  # type: ignore[call-overload]
        argv = entry + (args or list(image.config.get("Cmd") or []))  # type: ignore[call-overload]
        # buildah run takes the container's user, environment and working
        # directory from the image, as docker run does; only the entry point
        # has to be spelled out (buildah run runs the command it is given).
        script = 'ip link set lo up && exec "$@"'
        cmd = ["unshare", "--net", "--", "sh", "-c", script, "sh",
               BUILDAH or "buildah", "--storage-driver", "vfs", "run", "--isolation", "chroot",
               self.name, "--", *argv]
        self.log_path = log
        self.log_file = log.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def netns(self) -> str:
        return f"/proc/{self.proc.pid}/ns/net"

    def in_netns(self, argv: list[str], timeout: float = 120, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net={self.netns()}", "--", *argv], capture_output=True, text=True,
                              timeout=timeout, input=stdin)

    def answers_version(self) -> bool:
        probe = (f"import socket; s = socket.create_connection(('127.0.0.1', {PORT}), 1); s.settimeout(2); "
                 "s.sendall(b'version\\r\\n'); print(s.recv(100).decode())")
        r = self.in_netns([sys.executable, "-c", probe], timeout=10)
        return r.returncode == 0 and r.stdout.startswith("VERSION ")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the container exited ({self.proc.returncode}):\n{self.log()}"
            if self.answers_version():
                return
            time.sleep(0.5)
        raise AssertionError(f"the container did not answer version within {START_TIMEOUT} s:\n{self.log()}")

    def server_pid(self) -> int:
        """The stackmapd process: the descendant of buildah run whose root is the container's.

        buildah's chroot isolation runs it under a helper whose command line
        names stackmapd too (`buildah-chroot-exec /opt/stackmapd/bin/stackmapd
        ...`); the server is the interpreter running the console script.
        """
        for pid in descendants(self.proc.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                root = os.readlink(f"/proc/{pid}/root")
            except OSError:
                continue
            if root != "/" and b"buildah" not in cmdline[0] and any(b"stackmapd" in p for p in cmdline):
                return pid
        raise AssertionError(f"no stackmapd process under {self.proc.pid}:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self.log_file.close()
        subprocess.run([BUILDAH or "buildah", "--storage-driver", "vfs", "rm", self.name], capture_output=True,
                       timeout=300)


@pytest.fixture
def run_container(image: Image, tmp_path: Path) -> Iterator:
    started: list[Container] = []

    def run(args: list[str] | None = None, nofile: int | None = None,
            security_opts: list[str] | None = None) -> Container:
        c = Container(image, list(args or []), nofile, tmp_path / f"container-{len(started)}.log", security_opts)
        started.append(c)
        return c

    yield run
    for c in started:
        c.stop()


def test_image_config(image: Image) -> None:
    """What `docker run` uses: the entry point, the unprivileged user, the port."""
    cfg = image.config
    assert cfg.get("Entrypoint") == ["stackmapd", "-l", "0.0.0.0"], cfg
    assert cfg.get("User") == f"{UID}:{UID}", cfg
    assert "11211/tcp" in (cfg.get("ExposedPorts") or {}), cfg  # type: ignore[operator]


def test_image_has_no_compiler(image: Image) -> None:
    """The runtime stage carries python3, liburing2 and the venv, not the build tools."""
    name = f"stackmapd-test-{os.getpid()}-files"
    buildah("from", "--pull=never", "--name", name, image.tag)
    try:
        mnt = Path(buildah("mount", name).strip())
        present = [p for p in ("usr/bin/gcc", "usr/bin/cc", "usr/include/liburing.h", "opt/stackmapd/bin/pip")
                   if (mnt / p).exists()]
        assert not present, f"the image carries build-time files: {present}"
        assert list(mnt.glob("usr/lib/x86_64-linux-gnu/liburing.so.2*")), "liburing2 is missing"
        assert list(mnt.glob("opt/stackmapd/lib/python3*/site-packages/stackmap_core/_stackmap_core*.so"))
    finally:
        buildah("umount", name)
        buildah("rm", name)


@pytest.mark.skipif(MEMCCAPABLE is None, reason="memccapable (libmemcached-tools) not installed")
def test_container_serves_memcapable_and_pymemcache(run_container) -> None:  # type: ignore[no-untyped-def]
    c = run_container()
    c.wait_ready()

    pid = c.server_pid()
    uids, gids = proc_status(pid, "Uid"), proc_status(pid, "Gid")
    assert uids == [str(UID)] * 4 and gids == [str(UID)] * 4, f"stackmapd runs as uid {uids} gid {gids}"
    assert proc_status(pid, "CapEff") == ["0000000000000000"], "stackmapd holds capabilities"

    r = c.in_netns([MEMCCAPABLE or "memccapable", "-a", "-t", "5", "-h", "127.0.0.1", "-p", str(PORT)])
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "[pass]" in out and "[FAIL]" not in out, f"memccapable:\n{out}"

    script = f"""
from pymemcache.client.base import Client
c = Client(("127.0.0.1", {PORT}), timeout=5)
assert c.set("container-key", b"v" * 5000, expire=0, noreply=False)
assert c.get("container-key") == b"v" * 5000
assert c.add("container-key", b"x", noreply=False) is False
assert c.incr("container-n", 1) is None
c.set("container-n", b"41", noreply=False)
assert c.incr("container-n", 1) == 42
assert c.delete("container-key", noreply=False)
assert c.get("container-key") is None
print(c.version().decode())
"""
    r = c.in_netns([sys.executable, "-c", script])
    assert r.returncode == 0, f"pymemcache round trip failed:\n{r.stdout}{r.stderr}\n{c.log()}"
    assert r.stdout.strip(), r


def test_container_passes_arguments(run_container) -> None:  # type: ignore[no-untyped-def]
    """Arguments after the image name reach stackmapd, after the entry point's."""
    c = run_container(["-m", "17", "-t", "2"])
    c.wait_ready()
    r = c.in_netns([sys.executable, "-c", f"""
import socket
s = socket.create_connection(("127.0.0.1", {PORT}), 5)
s.sendall(b"stats settings\\r\\n")
buf = b""
while not buf.endswith(b"END\\r\\n"):
    buf += s.recv(65536)
print(buf.decode())
"""])
    assert r.returncode == 0, r.stderr
    settings = dict(line.split()[1:3] for line in r.stdout.splitlines() if line.startswith("STAT "))
    assert settings.get("maxbytes") == str(17 << 20), settings
    assert settings.get("num_threads") == "2", settings
    assert settings.get("inter") == "0.0.0.0", settings  # the entry point's -l
    assert settings.get("tcpport") == str(PORT), settings


def test_container_low_fd_limit_still_serves(run_container) -> None:  # type: ignore[no-untyped-def]
    """A container's open-file limit is often 1024: stackmapd starts and says how many clients fit."""
    c = run_container(nofile=1024)
    c.wait_ready()
    limits = Path(f"/proc/{c.server_pid()}/limits").read_text()
    line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
    assert line.split()[3:5] == ["1024", "1024"], f"the limit did not reach the container: {line}"
    assert "leaves room for about" in c.log(), c.log()
    assert c.answers_version()


def test_container_fd_limit_below_conn_limit_is_refused(run_container) -> None:  # type: ignore[no-untyped-def]
    """A hard limit below -c cannot be raised by the unprivileged user: a clear error, memcached's exit status."""
    c = run_container(nofile=256)
    rc = c.proc.wait(timeout=START_TIMEOUT)
    assert rc == 71, f"exit status {rc}:\n{c.log()}"  # EX_OSERR, as memcached
    assert "open-file limit (hard 256) is below -c 1024" in c.log(), c.log()


def test_container_has_uring_backend(run_container) -> None:  # type: ignore[no-untyped-def]
    """The build stage compiled the uring backend in, and liburing2 is there to load it."""
    c = run_container(["--version"])
    rc = c.proc.wait(timeout=START_TIMEOUT)
    assert rc == 0, f"exit status {rc}:\n{c.log()}"
    m = re.search(r"backends built in: ([a-z, ]+)", c.log())
    assert m and "uring" in m.group(1).split(", "), c.log()


def test_container_stops_cleanly_on_sigterm(run_container) -> None:  # type: ignore[no-untyped-def]
    """`docker stop` sends SIGTERM to the entry point: stackmapd exits 0 (the container's status)."""
    c = run_container()
    c.wait_ready()
    os.kill(c.server_pid(), signal.SIGTERM)
    rc = c.proc.wait(timeout=30)
    assert rc == 0, f"exit status {rc} after SIGTERM:\n{c.log()}"


def test_container_uring_backend_serves_without_seccomp_filter(run_container) -> None:  # type: ignore[no-untyped-def]
    """Container engines' default seccomp profiles refuse io_uring (buildah's does: `auto` falls back
    to epoll).  Where the operator allows it (`--security-opt seccomp=unconfined` or a profile
    that permits io_uring_setup/enter/register), the image's uring backend serves."""
    c = run_container(["--backend", "uring"], security_opts=["seccomp=unconfined"])
    c.wait_ready()
    r = c.in_netns([sys.executable, "-c", f"""
import socket
s = socket.create_connection(("127.0.0.1", {PORT}), 5)
s.sendall(b"set k 0 0 5\\r\\nhello\\r\\nget k\\r\\nstats settings\\r\\n")
buf = b""
while not buf.endswith(b"END\\r\\n") or buf.count(b"END\\r\\n") < 2:
    buf += s.recv(65536)
print(buf.decode())
"""])
    assert r.returncode == 0, r.stderr
    assert "VALUE k 0 5\nhello\nEND" in r.stdout, r.stdout  # text mode: \r\n reads as \n
    assert "STAT backend uring" in r.stdout, r.stdout
