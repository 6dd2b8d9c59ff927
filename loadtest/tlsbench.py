"""TLS benchmark: server CPU per request, stackmapd -Z against memcached -Z.

No load generator here speaks TLS (memaslap and mcblast are plaintext), so
this one is small and in Python: C client threads would not change what is
measured, which is the *server's* CPU time (utime + stime of its process,
procstat.py) divided by the requests it answered.  Each client connection
does TLS 1.3 with the server, then keeps DEPTH ``get`` requests for a
1 KiB value in flight for DURATION seconds.  Targets alternate
(A B A B ...), each run on a fresh server with one worker thread
(``-t 1``), server pinned to CPU 0 and the clients to CPU 1.

    python -m loadtest.tlsbench --reps 3 --duration 5 --depth 1,8

prints a markdown table: per target and depth, the median (min-max) of
server CPU per request and of requests per second, and the ratio of each
stackmapd target to memcached.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest.host import host_line
from loadtest.procstat import process_cpu_seconds

HOST = "127.0.0.1"
VALUE = b"v" * 1024
KEYS = [f"tlsbench:{i}" for i in range(64)]


@dataclass(frozen=True)
class Target:
    """A server to start: its name and its command line for a port and the PKI."""

    name: str
    argv: tuple[str, ...]  # without -p/-l and the TLS flags

    def command(self, port: int, cert: Path, key: Path) -> list[str]:
        tls = ["-Z", "-o", f"ssl_chain_cert={cert},ssl_key={key}"]
        if self.name == "memcached":
            return ["taskset", "-c", "0", *self.argv, "-U", "0", "-l", HOST, "-p", str(port), "-t", "1", *tls]
        tls[-1] += ",ssl_kernel_tls"  # the ring path where the kernel has kTLS (off by default, as memcached)
        return ["taskset", "-c", "0", *self.argv, "-l", HOST, "-p", str(port), "-t", "1", "--metrics-listen",
                "off", *tls]


def make_pki(d: Path) -> tuple[Path, Path]:
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def client_context(cert: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(cert))
    return ctx


def connect(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    s = ctx.wrap_socket(socket.create_connection((HOST, port), timeout=30), server_hostname="127.0.0.1")
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def wait_ready(port: int, ctx: ssl.SSLContext, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}")
        try:
            with connect(port, ctx) as s:
                s.sendall(b"version\r\n")
                if s.recv(100).startswith(b"VERSION"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not answer over TLS")


def preload(port: int, ctx: ssl.SSLContext) -> None:
    with connect(port, ctx) as s:
        for k in KEYS:
            s.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (k.encode(), len(VALUE), VALUE))
            assert s.recv(100) == b"STORED\r\n"


def reply_size(key: str) -> int:
    return len(b"VALUE %s 0 %d\r\n" % (key.encode(), len(VALUE))) + len(VALUE) + len(b"\r\nEND\r\n")


def client(port: int, ctx: ssl.SSLContext, depth: int, stop: threading.Event, counts: list[int], i: int) -> None:
    """Keep depth gets in flight on one connection until stop; count answered ones."""
    key = KEYS[i % len(KEYS)]
    req, size = b"get %s\r\n" % key.encode(), reply_size(key)
    with connect(port, ctx) as s:
        s.sendall(req * depth)
        pending, buf = depth, 0
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                raise RuntimeError("server closed")
            buf += len(chunk)
            done, buf = divmod(buf, size)
            counts[i] += done
            pending -= done
            if stop.is_set():
                if pending == 0 and buf == 0:
                    return
                continue
            s.sendall(req * done)
            pending += done


def run_once(target: Target, depth: int, conns: int, duration: float, cert: Path, key: Path) -> tuple[float, float]:
    """(server CPU microseconds per request, requests per second) of one run."""
    port = free_port()
    ctx = client_context(cert)
    proc = subprocess.Popen(target.command(port, cert, key), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, ctx, proc)
        preload(port, ctx)
        os.sched_setaffinity(0, {1 % os.cpu_count()})  # type: ignore[operator]
        stop = threading.Event()
        counts = [0] * conns
        threads = [threading.Thread(target=client, args=(port, ctx, depth, stop, counts, i), daemon=True)
                   for i in range(conns)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # handshakes done, steady state
        c0, n0, t0 = process_cpu_seconds(proc.pid), sum(counts), time.monotonic()
        time.sleep(duration)
        c1, n1, t1 = process_cpu_seconds(proc.pid), sum(counts), time.monotonic()
        stop.set()
        for t in threads:
            t.join(timeout=30)
        requests = n1 - n0
        return (c1 - c0) / requests * 1e6, requests / (t1 - t0)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--depth", default="1,8", help="requests in flight per connection, comma-separated")
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--stackmapd", default=shutil.which("stackmapd") or "stackmapd")
    ap.add_argument("--backends", default="epoll,uring")
    opts = ap.parse_args()
    targets = [Target("memcached", ("/usr/bin/memcached", *(["-u", "root"] if os.geteuid() == 0 else [])))]
    targets += [Target(f"stackmapd-{b}", (opts.stackmapd, "--backend", b)) for b in opts.backends.split(",")]
    depths = [int(d) for d in opts.depth.split(",")]
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = make_pki(Path(tmp))
        for depth in depths:
            for _ in range(opts.reps):
                for t in targets:
                    results.setdefault((t.name, depth), []).append(
                        run_once(t, depth, opts.conns, opts.duration, cert, key))
    print(host_line() + "\n")
    print(f"TLS 1.3, 1 KiB values, {opts.conns} connections, {opts.reps} runs each, server -t 1 on CPU 0, "
          f"clients on CPU 1; median (min-max)\n")
    print("| server | depth | server CPU per request (µs) | requests/s | CPU per request vs memcached |")
    print("| --- | --- | --- | --- | --- |")
    for depth in depths:
        base = statistics.median(c for c, _ in results[("memcached", depth)])
        for t in targets:
            cpu = [c for c, _ in results[(t.name, depth)]]
            rps = [r for _, r in results[(t.name, depth)]]
            print(f"| {t.name} | {depth} | {statistics.median(cpu):.1f} ({min(cpu):.1f}-{max(cpu):.1f}) | "
                  f"{statistics.median(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) | "
                  f"{statistics.median(cpu) / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
