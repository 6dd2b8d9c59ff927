"""Shared helpers for the control-plane tests (metrics, admin, snapshot, config).

They start the real ``stackmapd`` console script with its HTTP server on a
free loopback port, talk memcached's text protocol over raw sockets, the
admin API over HTTP and run the real ``stackmapctl``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ports import free_port  # this worker's own ports (ports.py)

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent


def http(method: str, url: str, body: dict[str, Any] | None = None,
         token: str | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Proc:
    """A stackmapd process with its memcached port and HTTP (metrics/admin) port."""

    proc: subprocess.Popen[bytes]
    port: int
    http_port: int
    log_path: str

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def ctl(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [str(BIN / "stackmapctl"), "--url", self.url, *(["--token", token] if token else []), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                              env={k: v for k, v in os.environ.items() if not k.startswith("STACKMAP_")})

    def conn(self) -> socket.socket:
        return socket.create_connection((HOST, self.port), timeout=30)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        try:
            os.unlink(self.log_path)
        except OSError:
            pass


def start(args: list[str] | None = None, env: dict[str, str] | None = None, port: int | None = None,
          http_port: int | None = None, wait: bool = True, metrics_flag: bool = True) -> Proc:
    """Start stackmapd (-t 2 unless given) and wait until /readyz says ready.

    With metrics_flag False, --metrics-listen is left to the config (which must
    use http_port), so that a reload can change it."""
    args = list(args or [])
    port = port or free_port()
    http_port = http_port or free_port()
    fd, log_path = tempfile.mkstemp(prefix="stackmapd-ctl-", suffix=".log")
    # -l HOST unless args give their own (a second -l joins the first, as memcached's)
    cmd = [str(BIN / "stackmapd"), *([] if "-l" in args else ["-l", HOST]), "-p", str(port)]
    if metrics_flag:
        cmd += ["--metrics-listen", f"{HOST}:{http_port}"]
    if "-t" not in args:
        cmd += ["-t", "2"]
    cmd += args
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STACKMAP_")}
    full_env.update(env or {})
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, env=full_env,
                            start_new_session=True)
    os.close(fd)
    p = Proc(proc, port, http_port, log_path)
    if wait:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"stackmapd exited {proc.returncode}: {p.log()}")
            try:
                if http("GET", p.url + "/readyz")[0] == 200:
                    return p
            except OSError:
                pass
            time.sleep(0.05)
        p.cleanup()
        raise AssertionError(f"stackmapd not ready: {p.log()}")
    return p


def request(sock: socket.socket, data: bytes, until: bytes = b"END\r\n") -> bytes:
    sock.sendall(data)
    buf = b""
    while not buf.endswith(until):
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise AssertionError(f"connection closed after {buf[-200:]!r}")
        buf += chunk
    return buf


def pipeline_sets(sock: socket.socket, items: list[tuple[bytes, int, int, bytes]]) -> None:
    """Store (key, flags, exptime, value) items with one pipelined write per batch; checks STORED."""
    for i in range(0, len(items), 2000):
        batch = items[i:i + 2000]
        data = b"".join(b"set %s %d %d %d\r\n%s\r\n" % (k, f, e, len(v), v) for k, f, e, v in batch)
        sock.sendall(data)
        want = b"STORED\r\n" * len(batch)
        got = b""
        while len(got) < len(want):
            chunk = sock.recv(1 << 20)
            assert chunk, "connection closed"
            got += chunk
        assert got == want, got[:200]


def gets_many(sock: socket.socket, keys: list[bytes]) -> dict[bytes, tuple[int, int, bytes]]:
    """key -> (flags, cas, value) for the keys that exist (``gets``, 100 keys a line)."""
    out: dict[bytes, tuple[int, int, bytes]] = {}
    for i in range(0, len(keys), 100):
        raw = request(sock, b"gets " + b" ".join(keys[i:i + 100]) + b"\r\n")
        pos = 0
        while raw.startswith(b"VALUE ", pos):
            eol = raw.index(b"\r\n", pos)
            _, key, flags, size, cas = raw[pos:eol].split(b" ")
            start = eol + 2
            value = raw[start:start + int(size)]
            out[key] = (int(flags), int(cas), value)
            pos = start + int(size) + 2
        assert raw[pos:] == b"END\r\n", raw[pos:pos + 100]
    return out


def snapshot_round_trip(args: list[str], items: list[tuple[bytes, int, int, bytes]]) -> None:
    """Store ``items`` (key, flags, exptime, value) in a server started with ``args`` (which
    name a ``--snapshot``), stop it, start another from the snapshot: every item comes back
    with the same flags, CAS and bytes."""
    keys = [k for k, _, _, _ in items]
    first = start(args)
    try:
        with first.conn() as sock:
            pipeline_sets(sock, items)
            before = gets_many(sock, keys)
        assert first.stop() == 0, first.log()
    finally:
        first.stop()
    assert {k: v for k, (_, _, v) in before.items()} == {k: v for k, _, _, v in items}
    second = start(args)
    try:
        with second.conn() as sock:
            after = gets_many(sock, keys)
    finally:
        second.stop()
    assert after == before


@contextmanager
def running(args: list[str] | None = None) -> Iterator[Proc]:
    """start(args) for the length of a with block (a fixture's body), then stop it."""
    p = start(args)
    try:
        yield p
    finally:
        p.stop()
        p.cleanup()
