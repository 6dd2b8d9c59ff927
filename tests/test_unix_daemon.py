"""memcached's deployment flags: -s/-a (unix socket), -d, -P, -u, -r.

Each test runs the real stackmapd console script as a process, on every
selected backend, and talks to it with real clients (pymemcache over the
unix socket, raw sockets); where memcached 1.6.18 has an answer (exit
statuses, the socket file's mode) the same command is run against it too.
The -u tests need root (they check the uid of the process after start); CI
and `make test` run as root.
"""

from __future__ import annotations

import os
import pwd
import resource
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Target, backend_flag, free_port, stackmapd_executable
from pymemcache.client.base import Client

START_TIMEOUT = 15.0


def smd_cmd(target: Target, *args: str) -> list[str]:
    cmd = [stackmapd_executable(), "--metrics-listen", "off"]
    if target.backend:
        cmd += [backend_flag(), target.backend]
    return cmd + list(args)


def connect_unix(path: str, timeout: float = 2.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def answers_version(path: str) -> bool:
    try:
        with connect_unix(path) as s:
            s.sendall(b"version\r\n")
            return s.recv(100).startswith(b"VERSION ")
    except OSError:
        return False


def wait_unix(path: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''!r}")
        if answers_version(path):
            return
        time.sleep(0.05)
    pytest.fail(f"nothing answers on {path}")


def request(path: str, data: bytes) -> bytes:
    with connect_unix(path) as s:
        s.sendall(data)
        out = b""
        while not out.endswith(b"END\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


@pytest.fixture
def sockdir(tmp_path: Path) -> Path:
    # sun_path holds 107 bytes: keep the path short
    d = Path(f"/tmp/smd-unix-{os.getpid()}-{time.monotonic_ns()}")
    d.mkdir(mode=0o755)
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run_unix(procs: list[subprocess.Popen[bytes]], target: Target, path: Path, *args: str,
             **kw: object) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(smd_cmd(target, "-s", str(path), *args), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]
    procs.append(proc)
    wait_unix(str(path), proc)
    return proc


def memcached_cmd(*args: str) -> list[str]:
    cmd = ["/usr/bin/memcached", "-U", "0"]
    if os.geteuid() == 0 and "-u" not in args:
        cmd += ["-u", "root"]
    return cmd + list(args)


# ---- -s and -a -----------------------------------------------------------


def test_pymemcache_over_unix_socket(target: Target, sockdir: Path, procs: list) -> None:
    path = sockdir / "mc.sock"
    port = free_port()
    run_unix(procs, target, path, "-p", str(port))
    clients = [Client(str(path), connect_timeout=5, timeout=5, default_noreply=False) for _ in range(8)]
    try:
        for i, c in enumerate(clients):
            assert c.set(f"k{i}", f"v{i}" * 100) is True
        for i, c in enumerate(clients):
            assert c.get(f"k{(i + 1) % 8}") == (f"v{(i + 1) % 8}" * 100).encode()
        assert clients[0].incr("n", 1) is None
        clients[0].set("n", "41")
        assert clients[1].incr("n", 1) == 42
        assert clients[2].delete("k0") is True
        assert clients[3].get("k0") is None
        settings = clients[0].stats("settings")
        assert settings[b"domain_socket"] == str(path).encode()
        assert settings[b"umask"] == 0o700  # pymemcache reads it as octal, as memcached prints it
    finally:
        for c in clients:
            c.close()
    # memcached's rule: with -s there is no TCP listener, -p notwithstanding
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_stats_conns_shows_unix_addresses(target: Target, sockdir: Path, procs: list) -> None:
    path = sockdir / "mc.sock"
    run_unix(procs, target, path)
    with connect_unix(str(path)) as busy:
        busy.sendall(b"set foo 0 0 6\r\n")  # left waiting for its value: conn_nread
        time.sleep(0.2)
        out = request(str(path), b"stats conns\r\n").decode()
    assert f"addr unix:{path}\r\nSTAT " in out
    assert f":listen_addr unix:{path}\r\n" in out
    assert ":state conn_listening\r\n" in out
    assert ":state conn_nread\r\n" in out
    assert ":state conn_parse_cmd\r\n" in out  # the asking connection, as memcached shows it


@pytest.mark.parametrize("mask", ["700", "0660", "777", "0"])
def test_unix_mask_sets_the_socket_mode(target: Target, sockdir: Path, procs: list, mask: str) -> None:
    path = sockdir / "mc.sock"
    run_unix(procs, target, path, "-a", mask)
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == int(mask, 8)
    if int(mask, 8) & 0o600 == 0o600:
        assert Client(str(path), default_noreply=False).set("a", "b") is True


def test_unix_mask_matches_memcached(sockdir: Path) -> None:
    """The same -a gives memcached's socket file the same mode (the reference for the test above)."""
    path = sockdir / "memcached.sock"
    proc = subprocess.Popen(memcached_cmd("-s", str(path), "-a", "0640"), stderr=subprocess.PIPE)
    try:
        wait_unix(str(path), proc)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_stale_socket_file_is_replaced(target: Target, sockdir: Path, procs: list) -> None:
    path = sockdir / "mc.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays: what a killed server leaves behind
    assert path.is_socket()
    run_unix(procs, target, path)
    assert Client(str(path), default_noreply=False).set("a", "b") is True


@pytest.mark.parametrize("kind", ["regular_file", "missing_dir"])
def test_unusable_socket_path_fails_clearly(target: Target, sockdir: Path, kind: str) -> None:
    if kind == "regular_file":
        path = sockdir / "data"
        path.write_text("keep me\n")
        why = "Address already in use"
    else:
        path = sockdir / "no" / "such" / "dir.sock"
        why = "No such file or directory"
    got = subprocess.run(smd_cmd(target, "-s", str(path)), capture_output=True, timeout=30)
    ref = subprocess.run(memcached_cmd("-s", str(path)), capture_output=True, timeout=30)
    assert got.returncode == ref.returncode == 71
    assert f"failed to listen on UNIX socket: {path}: {why}" in got.stderr.decode()
    if kind == "regular_file":
        assert path.read_text() == "keep me\n"  # never removed: only a socket file is


@pytest.mark.parametrize("mask", ["8", "1000", "rw", "-1"])
def test_bad_unix_mask_is_refused(target: Target, sockdir: Path, mask: str) -> None:
    got = subprocess.run(smd_cmd(target, "-s", str(sockdir / "x.sock"), "-a", mask), capture_output=True,
                         timeout=30)
    assert got.returncode == 64
    assert "-a/--unix-mask" in got.stderr.decode()
    assert not (sockdir / "x.sock").exists()


def test_too_long_socket_path_is_refused(target: Target) -> None:
    path = "/tmp/" + "x" * 120
    got = subprocess.run(smd_cmd(target, "-s", path), capture_output=True, timeout=30)
    assert got.returncode == 64
    assert "-s/--unix-socket path longer than 107 bytes" in got.stderr.decode()


def test_stackmap_backend_refuses_unix_socket(sockdir: Path) -> None:
    got = subprocess.run([stackmapd_executable(), "--metrics-listen", "off", "--backend", "stackmap",
                          "-s", str(sockdir / "x.sock")], capture_output=True, timeout=30)
    assert got.returncode == 64
    assert "the stackmap module carries TCP sockets only" in got.stderr.decode()


# ---- -d and -P -----------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid), f"pid {pid} still runs"


def stats_pid(path: Path) -> int:
    out = request(str(path), b"stats\r\n").decode()
    return int(next(line.split()[2] for line in out.splitlines() if line.startswith("STAT pid ")))


def test_daemon_writes_pidfile_and_serves(target: Target, sockdir: Path) -> None:
    path, pidfile = sockdir / "mc.sock", sockdir / "mc.pid"
    # the command returns once the daemon serves: nothing to wait for afterwards
    got = subprocess.run(smd_cmd(target, "-d", "-P", str(pidfile), "-s", str(path)), capture_output=True,
                         timeout=30)
    assert got.returncode == 0, got.stderr
    pid = int(pidfile.read_text())
    try:
        assert answers_version(str(path))
        assert stats_pid(path) == pid
        assert os.getsid(pid) == pid  # its own session: detached from ours
        assert Path(f"/proc/{pid}/fd/2").resolve() == Path(os.devnull)
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_gone(pid)
    assert not pidfile.exists()  # a clean exit removes it


def test_daemon_start_error_reaches_the_terminal(target: Target, sockdir: Path) -> None:
    path = sockdir / "no" / "dir.sock"
    got = subprocess.run(smd_cmd(target, "-d", "-P", str(sockdir / "mc.pid"), "-s", str(path)),
                         capture_output=True, timeout=30)
    assert got.returncode == 71
    assert f"failed to listen on UNIX socket: {path}" in got.stderr.decode()
    assert not (sockdir / "mc.pid").exists()


def test_pidfile_without_daemon(target: Target, sockdir: Path, procs: list) -> None:
    pidfile = sockdir / "mc.pid"
    proc = run_unix(procs, target, sockdir / "mc.sock", "-P", str(pidfile))
    deadline = time.monotonic() + 5
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert int(pidfile.read_text()) == proc.pid


def test_unwritable_pidfile_is_an_error(target: Target, sockdir: Path) -> None:
    pidfile = sockdir / "no" / "mc.pid"
    got = subprocess.run(smd_cmd(target, "-P", str(pidfile), "-s", str(sockdir / "mc.sock")),
                         capture_output=True, timeout=30)
    assert got.returncode == 73
    assert f"could not open the pid file {pidfile} for writing" in got.stderr.decode()


# ---- -u and -r -----------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


def proc_ids(pid: int, field: str) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@needs_root
def test_user_drops_privileges_after_binding(target: Target, sockdir: Path, procs: list) -> None:
    nobody = pwd.getpwnam("nobody")
    pidfile = sockdir / "mc.pid"
    # the pid file is written while still root: a root-only directory works
    os.chmod(sockdir, 0o700)
    proc = run_unix(procs, target, sockdir / "mc.sock", "-u", "nobody", "-a", "0777", "-P", str(pidfile))
    deadline = time.monotonic() + 5
    while proc_ids(proc.pid, "Uid")[0] != nobody.pw_uid and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc_ids(proc.pid, "Uid") == [nobody.pw_uid] * 4
    assert proc_ids(proc.pid, "Gid") == [nobody.pw_gid] * 4
    for task in Path(f"/proc/{proc.pid}/task").iterdir():  # every worker thread too
        assert proc_ids(int(task.name), "Uid")[0] == nobody.pw_uid
    assert int(pidfile.read_text()) == proc.pid
    assert Client(str(sockdir / "mc.sock"), default_noreply=False).set("a", "b") is True


@needs_root
def test_user_root_keeps_root(target: Target, sockdir: Path, procs: list) -> None:
    proc = run_unix(procs, target, sockdir / "mc.sock", "-u", "root")
    assert proc_ids(proc.pid, "Uid") == [0] * 4


@needs_root
def test_unknown_user_exits_like_memcached(target: Target, sockdir: Path) -> None:
    got = subprocess.run(smd_cmd(target, "-u", "no-such-user-x", "-s", str(sockdir / "a.sock")),
                         capture_output=True, timeout=30)
    ref = subprocess.run(memcached_cmd("-u", "no-such-user-x", "-s", str(sockdir / "b.sock")),
                         capture_output=True, timeout=30)
    assert got.returncode == ref.returncode == 67
    assert "can't find the user no-such-user-x to switch to" in got.stderr.decode()
    assert not (sockdir / "a.sock").exists()  # refused before anything was bound


def core_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return line.split()[4]
    raise AssertionError("no core limit line")


def test_enable_coredumps_raises_the_core_limit(target: Target, sockdir: Path, procs: list) -> None:
    def no_cores() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))

    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    if hard == 0:
        pytest.skip("the hard core limit here is 0: nothing to raise to")
    plain = run_unix(procs, target, sockdir / "a.sock", preexec_fn=no_cores)
    raised = run_unix(procs, target, sockdir / "b.sock", "-r", preexec_fn=no_cores)
    assert core_limit(plain.pid) == "0"
    want = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    assert core_limit(raised.pid) == want


def test_unix_socket_and_mask_from_config_file(target: Target, sockdir: Path, procs: list, tmp_path: Path) -> None:
    path = sockdir / "mc.sock"
    cfg = tmp_path / "smd.toml"
    cfg.write_text(f'unix_socket = "{path}"\nunix_mask = "0640"\n')
    proc = subprocess.Popen(smd_cmd(target, "--config", str(cfg)), stderr=subprocess.PIPE)
    procs.append(proc)
    wait_unix(str(path), proc)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    # a bare TOML integer 700 is decimal: refused, saying how to write the mode
    cfg.write_text(f'unix_socket = "{path}"\nunix_mask = 700\n')
    got = subprocess.run(smd_cmd(target, "--config", str(cfg)), capture_output=True, timeout=30)
    assert got.returncode == 64
    assert 'write it "0700" or 0o700' in got.stderr.decode()


def test_memcached_up_probes_the_unix_socket(target: Target, sockdir: Path, procs: list) -> None:
    """/metrics' memcached_up asks the data plane over -s's socket (there is no TCP port to ask)."""
    import urllib.request

    port = free_port()
    proc = subprocess.Popen([stackmapd_executable(), "--metrics-listen", f"127.0.0.1:{port}",
                             backend_flag(), target.backend or "auto", "-s", str(sockdir / "mc.sock")],
                            stderr=subprocess.PIPE)
    procs.append(proc)
    wait_unix(str(sockdir / "mc.sock"), proc)
    deadline = time.monotonic() + 10
    body = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                body = resp.read().decode()
            break
        except OSError:
            time.sleep(0.1)
    assert "\nmemcached_up 1.0\n" in body


# ---- -l given twice ------------------------------------------------------


def answers_on(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"version\r\n")
            return s.recv(100).startswith(b"VERSION ")
    except OSError:
        return False


def test_repeated_listen_flags_join(target: Target, procs: list) -> None:
    """memcached joins repeated -l lists: -l A -l B listens on both (the
    second must not replace the first); memcached itself checked first."""
    for kind in ("memcached", "stackmapd"):
        p1, p2 = free_port(), free_port()
        listen = ["-l", f"127.0.0.1:{p1}", "-l", f"127.0.0.1:{p2}"]
        cmd = memcached_cmd(*listen) if kind == "memcached" else smd_cmd(target, *listen)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        deadline = time.monotonic() + START_TIMEOUT
        while not answers_on(p2) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            time.sleep(0.05)
        assert answers_on(p2), kind
        assert answers_on(p1), kind
        proc.terminate()
        proc.wait(timeout=10)
