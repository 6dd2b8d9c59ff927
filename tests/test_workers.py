"""Workers that cannot serve: the server falls back, stops clearly, or says so.

stackmapd runs as users run it (the console script, real sockets) under the
limits containers impose: a hard open-file limit of 1024 (``ulimit -n``), a
virtual-memory limit.  Whatever the backend, it either serves every
connection (64 connections with -t 4, so SO_REUSEPORT hands every worker
some) with /readyz ready and memcached_up 1, or exits with status 71 and a
one-line error naming the remedy: never listeners that accept and a worker
that never answers.  A worker that dies while running (its listener
destroyed with ``ss -K``, as an operator or a network teardown can) turns
/readyz to 503 with the reason and memcached_up to 0, while the other
workers keep serving.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from control_support import BIN, HOST, Proc, free_port, http
from mcwire import stats
from prometheus_client.parser import text_string_to_metric_families

EX_OSERR = 71
DEADLINE = 60.0  # longest wait for a start or a state change (polled, never asserted)


class Run(Proc):
    """A stackmapd process started under resource limits (Proc, plus its start's outcome)."""

    def outcome(self) -> str:
        """'ready' once /readyz says 200, 'exited' once the process is gone."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return "exited"
            try:
                if http("GET", self.url + "/readyz")[0] == 200:
                    return "ready"
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"neither ready nor exited: {self.log()}")

    def readyz(self) -> tuple[int, dict[str, object]]:
        status, body = http("GET", self.url + "/readyz")
        return status, json.loads(body)

    def memcached_up(self) -> float:
        status, body = http("GET", self.url + "/metrics")
        assert status == 200
        for fam in text_string_to_metric_families(body.decode()):
            if fam.name == "memcached_up":
                return fam.samples[0].value
        raise AssertionError("no memcached_up")



@pytest.fixture
def run() -> Iterator[Callable[..., Run]]:
    """run(args, nofile=N or (SOFT, HARD), address_space=BYTES) -> Run; killed at the test's end."""
    started: list[Run] = []

    def _run(args: list[str], nofile: int | tuple[int, int] | None = None,
             address_space: int | None = None) -> Run:
        def limits() -> None:
            if nofile is not None:
                soft, hard = nofile if isinstance(nofile, tuple) else (nofile, nofile)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            if address_space is not None:
                resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

        port, http_port = free_port(), free_port()
        fd, log_path = tempfile.mkstemp(prefix="stackmapd-workers-", suffix=".log")
        cmd = [str(BIN / "stackmapd"), "-l", HOST, "-p", str(port),
               "--metrics-listen", f"{HOST}:{http_port}", *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STACKMAP_")}
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, env=env,
                                preexec_fn=limits, start_new_session=True)
        os.close(fd)
        r = Run(proc, port, http_port, log_path)
        started.append(r)
        return r

    yield _run
    for r in started:
        r.cleanup()


def every_connection_answers(port: int, n: int = 64) -> None:
    """n connections open at once, each answers `version` (a hang is a timeout)."""
    socks = [socket.create_connection((HOST, port), timeout=5) for _ in range(n)]
    try:
        for s in socks:
            s.sendall(b"version\r\n")
        for i, s in enumerate(socks):
            buf = b""
            while not buf.endswith(b"\r\n"):
                try:
                    chunk = s.recv(256)
                except TimeoutError:
                    raise AssertionError(f"connection {i} of {n}: no answer to version") from None
                assert chunk, f"connection {i} of {n} closed without an answer"
                buf += chunk
            assert buf.startswith(b"VERSION "), buf
    finally:
        for s in socks:
            s.close()


def error_lines(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if "cannot start" in ln]


@pytest.mark.parametrize("backend", ["epoll", "uring", "auto"])
def test_hard_fd_limit_1024_serves_every_worker_or_exits_clearly(run: Callable[..., Run],
                                                                 backend: str) -> None:
    r = run(["-t", "4", "--backend", backend], nofile=1024)
    if r.outcome() == "exited":
        assert r.proc.returncode == EX_OSERR, r.log()
        lines = error_lines(r.log())
        assert len(lines) == 1 and "ulimit -n" in lines[0], r.log()
        return
    every_connection_answers(r.port)
    status, body = r.readyz()
    assert status == 200 and body["ready"] is True, body
    assert [w["state"] for w in body["workers"]] == ["serving"] * 4, body  # type: ignore[union-attr]
    assert r.memcached_up() == 1
    assert r.stop() == 0, r.log()


def test_uring_entries_past_the_completion_queue_limit_serve(run: Callable[..., Run]) -> None:
    # 32768 entries ask for a completion queue of 8 per entry, past the
    # kernel's 65536: every worker's ring failed with EINVAL and hung clients.
    r = run(["-t", "4", "--backend", "uring", "-o", "uring_entries=32768,uring_bufs=64"])
    assert r.outcome() == "ready", r.log()
    every_connection_answers(r.port)
    assert r.stop() == 0, r.log()


MEMCACHED = shutil.which("memcached")


def test_hard_fd_limit_below_conn_limit_is_refused_as_memcached_refuses_it(run: Callable[..., Run]) -> None:
    r = run(["-t", "2", "-c", "2000"], nofile=1024)
    assert r.outcome() == "exited"
    assert r.proc.returncode == EX_OSERR, r.log()
    lines = error_lines(r.log())
    assert len(lines) == 1, r.log()
    assert "open-file limit" in lines[0] and "ulimit -n" in lines[0] and "-c" in lines[0], lines
    if MEMCACHED is not None:  # memcached 1.6 refuses the same -c under the same limit, with 71
        cmd = [MEMCACHED, "-U", "0", "-l", HOST, "-p", str(free_port()), "-c", "2000"]
        if os.geteuid() == 0:
            cmd += ["-u", "root"]
        mc = subprocess.run(cmd, capture_output=True, timeout=30, preexec_fn=lambda: resource.setrlimit(
            resource.RLIMIT_NOFILE, (1024, 1024)))
        assert mc.returncode == EX_OSERR, mc.stderr


def test_uring_that_cannot_set_up_on_its_threads_stops_the_start(run: Callable[..., Run]) -> None:
    # 64 workers, room for their listeners but not for their rings: the rings,
    # created on the worker threads, run out of descriptors (EMFILE).
    r = run(["-t", "64", "-c", "1", "--backend", "uring", "-o", "uring_bufs=64"], nofile=100)
    assert r.outcome() == "exited"
    assert r.proc.returncode == EX_OSERR, r.log()
    lines = error_lines(r.log())
    assert len(lines) == 1, r.log()
    assert "backend uring failed on worker" in lines[0], lines
    assert "Too many open files" in lines[0] and "ulimit -n" in lines[0], lines


def test_auto_under_the_same_limit_tries_every_backend_then_stops(run: Callable[..., Run]) -> None:
    r = run(["-t", "64", "-c", "1", "--backend", "auto", "-o", "uring_bufs=64"], nofile=100)
    if r.outcome() == "ready":  # epoll fitted where uring did not: it serves
        every_connection_answers(r.port)
        assert "backend: auto: uring failed" in r.log()
        return
    assert r.proc.returncode == EX_OSERR, r.log()
    lines = error_lines(r.log())
    assert len(lines) == 1 and "no backend could start" in lines[0], r.log()
    assert "uring failed" in lines[0] and "epoll failed" in lines[0], lines


# Receive buffers of 32768 x 16 MiB per worker: no address space holds them.
HUGE_BUFS = ["-o", "uring_bufs=32768,uring_buf_size=16m"]
ADDRESS_SPACE = 16 << 30


def test_auto_falls_back_to_epoll_and_says_why_once(run: Callable[..., Run]) -> None:
    r = run(["-t", "4", "--backend", "auto", *HUGE_BUFS], address_space=ADDRESS_SPACE)
    assert r.outcome() == "ready", r.log()
    every_connection_answers(r.port)
    log = r.log()
    notes = [ln for ln in log.splitlines() if "backend: auto:" in ln]
    assert len(notes) == 1, log
    assert "uring failed" in notes[0] and "using epoll" in notes[0], notes
    assert stats(HOST, r.port, "backend")["backend"] == "epoll"
    assert r.stop() == 0, r.log()


def test_explicit_uring_that_cannot_start_exits_with_one_clear_line(run: Callable[..., Run]) -> None:
    r = run(["-t", "4", "--backend", "uring", *HUGE_BUFS], address_space=ADDRESS_SPACE)
    assert r.outcome() == "exited"
    assert r.proc.returncode == EX_OSERR, r.log()
    lines = error_lines(r.log())
    assert len(lines) == 1, r.log()
    assert "backend uring failed on worker 0: out of memory for io_uring buffers" in lines[0], lines
    assert "uring_bufs" in lines[0], lines


SS = shutil.which("ss")


@pytest.mark.skipif(SS is None, reason="ss (iproute2) is needed to destroy a listener")
@pytest.mark.parametrize("backend", ["epoll", "uring"])
def test_worker_whose_listener_dies_is_not_ready_and_not_up(run: Callable[..., Run], backend: str) -> None:
    r = run(["-t", "4", "--backend", backend])
    assert r.outcome() == "ready", r.log()
    assert r.memcached_up() == 1
    # Destroy the listening sockets of the port (sock_destroy: needs
    # CONFIG_INET_DIAG_DESTROY); each one's worker can never accept again.
    kill = subprocess.run([SS, "-K", "state", "listening", "sport", "=", f":{r.port}"],
                          capture_output=True, text=True, timeout=30)
    if f":{r.port}" not in kill.stdout:
        pytest.skip(f"ss -K cannot destroy sockets here: {kill.stderr.strip()}")
    deadline = time.monotonic() + DEADLINE
    status, body = r.readyz()
    while status == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
        status, body = r.readyz()
    assert status == 503 and body["ready"] is False, body
    failed = [w for w in body["workers"] if w["state"] == "failed"]  # type: ignore[union-attr,index]
    assert failed, body
    assert all("accept on listener" in w["error"] for w in failed), body
    assert r.memcached_up() == 0
    assert "failed: accept on listener" in r.log()
    # The workers still serving take every new connection: nobody hangs.
    serving = [w for w in body["workers"] if w["state"] == "serving"]  # type: ignore[union-attr,index]
    if serving:
        every_connection_answers(r.port, 32)
    assert r.stop() == 0, r.log()


def _stats(sock: socket.socket) -> dict[str, int]:
    """The numeric figures of "stats" and "stats backend" (syscalls)."""
    out: dict[str, int] = {}
    for cmd in (b"stats\r\n", b"stats backend\r\n"):
        sock.sendall(cmd)
        raw = b""
        while not raw.endswith(b"END\r\n"):
            chunk = sock.recv(65536)
            assert chunk, "connection closed"
            raw += chunk
        for line in raw.decode().split("\r\n"):
            parts = line.split(" ")
            if len(parts) == 3 and parts[2].isdigit():
                out[parts[1]] = int(parts[2])
    return out


@pytest.mark.parametrize("backend", ["epoll", "uring"])
def test_out_of_descriptors_pauses_accepting_instead_of_spinning(run: Callable[..., Run], backend: str) -> None:
    # More clients than 1024 descriptors hold: the rest wait in the listen
    # queue.  Each worker's accept then fails with EMFILE; retried at once it
    # spun a CPU (listen_disabled_num stayed 0).  It must pause accepting
    # (memcached's listen_disabled_num) and take the waiting client once
    # descriptors are free.
    r = run(["-t", "2", "--backend", backend], nofile=1024)
    assert r.outcome() == "ready", r.log()
    socks = [socket.create_connection((HOST, r.port), timeout=10) for _ in range(1100)]
    try:
        first = socks[0]
        deadline = time.monotonic() + DEADLINE
        # Until every connection that fits is taken: accepting pauses and
        # the connection count stays put.
        prev, before = _stats(first), _stats(first)
        while not (before["listen_disabled_num"] > prev["listen_disabled_num"]
                   and before["curr_connections"] == prev["curr_connections"]):
            assert time.monotonic() < deadline, (
                f"accepting never paused: listen_disabled_num {before['listen_disabled_num']}, "
                f"syscalls {before['syscalls']}")
            time.sleep(0.1)
            prev, before = before, _stats(first)
        now = before
        while now["listen_disabled_num"] - before["listen_disabled_num"] < 20:
            assert time.monotonic() < deadline, f"accepting never paused: {now}"
            time.sleep(0.1)
            now = _stats(first)
        pauses = now["listen_disabled_num"] - before["listen_disabled_num"]
        calls = now["syscalls"] - before["syscalls"]
        # A handful of system calls per pause (the failed accept, re-arming,
        # the wait), not thousands of retries between them.
        assert calls / pauses < 20, (calls, pauses)
        assert now["time_in_listen_disabled_us"] > before["time_in_listen_disabled_us"]
        last = socks[-1]
        last.sendall(b"version\r\n")
        for s in socks[1:201]:
            s.close()
        assert last.recv(64).startswith(b"VERSION "), "the waiting client was never taken"
    finally:
        for s in socks:
            s.close()
    assert r.stop() == 0, r.log()


def test_the_up_probe_needs_a_real_answer(run: Callable[..., Run]) -> None:
    from stackmapd.health import answers_version, probe_host

    r = run(["-t", "2"])
    assert r.outcome() == "ready", r.log()
    assert answers_version(HOST, r.port)
    # What a worker that never set up its ring looked like from outside:
    # a listener the kernel completes connections on, and nobody answering.
    with socket.socket() as mute:
        mute.bind((HOST, 0))
        mute.listen(16)
        assert not answers_version(HOST, mute.getsockname()[1])
    assert not answers_version(HOST, free_port())  # nothing listening
    assert probe_host("0.0.0.0") == "127.0.0.1"
    assert probe_host("::,127.0.0.1") == "::1"
    assert probe_host("[::1]") == "::1"
    assert probe_host("127.0.0.2, ::1") == "127.0.0.2"


def _soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc")


def test_conn_limit_raised_live_raises_the_open_file_limit(run: Callable[..., Run], tmp_path: Path) -> None:
    # A soft limit of 256 (a hard one of 4096) fits -c 100; -c 1000 set by a
    # reload needs more descriptors, as -c 1000 at start would.
    cfg = tmp_path / "stackmapd.toml"
    cfg.write_text("conn_limit = 100\n")
    r = run(["-t", "2", "--config", str(cfg)], nofile=(256, 4096))
    assert r.outcome() == "ready", r.log()
    assert _soft_nofile(r.proc.pid) == 256
    cfg.write_text("conn_limit = 1000\n")
    status, body = http("POST", r.url + "/admin/reload", {})
    assert status == 200 and json.loads(body)["applied"] == {"conn_limit": 1000}, body
    assert _soft_nofile(r.proc.pid) >= 1000
    every_connection_answers(r.port, 600)
    # Past the hard limit it is refused, and -c stays.
    cfg.write_text("conn_limit = 5000\n")
    status, body = http("POST", r.url + "/admin/reload", {})
    result = json.loads(body)
    assert "conn_limit" in result["failed"] and "ulimit -n" in result["failed"]["conn_limit"], result
    assert stats(HOST, r.port, "settings")["maxconns"] == "1000"
    assert r.stop() == 0, r.log()
