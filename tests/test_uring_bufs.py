"""The io_uring backend's receive buffers (-o uring_bufs).

A worker keeps only about twice the buffers its busiest recent round took
published in its provided-buffer ring (at least 64), so the few in use stay
in the cache; the rest wait on a stack.  A round with more arrivals than
published buffers runs the ring dry: those receives fail with ENOBUFS
(uring_buf_ring_empty), are re-armed, and the target grows at once to twice
what the round wanted; it does not fall for 5 s after that.  The gauge
uring_bufs_published shows the target now.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
from conftest import HOST, Server, Target, assert_alive
from mcwire import stats

BURST_CONNS = 10
SETS_PER_CONN = 60  # 60 sets of 1000-byte values: ~61 KB, 16 buffers of 4 KiB per connection


def uring_only(target: Target) -> None:
    if target.backend != "uring":
        pytest.skip("receive buffer publishing is a property of the uring backend")


def published(srv: Server) -> int:
    return int(stats(HOST, srv.port)["uring_bufs_published"])


def read_until(sock: socket.socket, end: bytes, count: int = 1) -> bytes:
    data = b""
    while data.count(end) < count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data[-200:]!r}"
        data += chunk
    return data


def connect_all(srv: Server, n: int) -> list[socket.socket]:
    """n connections, each known to the worker (one request answered)."""
    socks = [socket.create_connection((HOST, srv.port), timeout=10) for _ in range(n)]
    for s in socks:
        s.sendall(b"version\r\n")
        assert read_until(s, b"\r\n").startswith(b"VERSION ")
    return socks


def burst(srv: Server, socks: list[socket.socket]) -> None:
    """Each connection sends ~61 KB of sets while the server is stopped, so its
    next round receives them all at once; every set is answered."""
    value = b"v" * 1000
    os.kill(srv.pid, signal.SIGSTOP)
    try:
        for i, s in enumerate(socks):
            s.sendall(b"".join(b"set b%d.%d 0 0 1000\r\n%s\r\n" % (i, j, value) for j in range(SETS_PER_CONN)))
    finally:
        os.kill(srv.pid, signal.SIGCONT)
    for s in socks:
        assert read_until(s, b"STORED\r\n", SETS_PER_CONN) == b"STORED\r\n" * SETS_PER_CONN


def test_burst_beyond_the_published_buffers(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    """Ten connections' bursts land in one round and take more buffers than the 64
    published: the ring runs dry, every request is still answered, and the
    publish target grows."""
    uring_only(target)
    srv = start_server(target, ["-t", "1"])
    assert published(srv) == 64
    socks = connect_all(srv, BURST_CONNS)
    try:
        empty_before = int(stats(HOST, srv.port)["uring_buf_ring_empty"])
        burst(srv, socks)
    finally:
        for s in socks:
            s.close()
    d = {k: v for k, v in stats(HOST, srv.port).items() if k.startswith("uring")}
    assert int(d["uring_buf_ring_empty"]) > empty_before, d
    assert int(d["uring_bufs_published"]) >= 128, d
    with srv.wire() as w:
        for i in range(BURST_CONNS):
            w.expect(b"get b%d.%d\r\n" % (i, SETS_PER_CONN - 1),
                     b"VALUE b%d.%d 0 1000\r\n%s\r\nEND\r\n" % (i, SETS_PER_CONN - 1, b"v" * 1000))
    assert_alive(srv)


def test_publish_target_falls_back_when_the_burst_is_over(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    """Once 5 s have passed since the ring ran dry, two windows of light rounds
    bring the target back to 64."""
    uring_only(target)
    srv = start_server(target, ["-t", "1"])
    socks = connect_all(srv, BURST_CONNS)
    try:
        burst(srv, socks)
    finally:
        for s in socks:
            s.close()
    grown = published(srv)
    assert grown > 64
    with srv.wire() as w:
        for _ in range(300):  # more than two windows of light rounds, well within 5 s
            w.expect(b"get nothing\r\n", b"END\r\n")
    assert published(srv) == grown, "the target fell right after the ring ran dry"
    deadline = time.monotonic() + 20
    with srv.wire() as w:
        while published(srv) > 64 and time.monotonic() < deadline:
            for _ in range(100):  # one request per round
                w.expect(b"get nothing\r\n", b"END\r\n")
            time.sleep(0.2)
    assert published(srv) == 64


def test_small_ring_serves_many_connections(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    """-o uring_bufs=16: more arrivals in a round than buffers still answers all."""
    uring_only(target)
    srv = start_server(target, ["-t", "1", "-o", "uring_bufs=16"])
    assert published(srv) == 16
    socks = connect_all(srv, 100)
    try:
        os.kill(srv.pid, signal.SIGSTOP)
        try:
            for i, s in enumerate(socks):
                s.sendall(b"set s%d 0 0 1\r\nx\r\nget s%d\r\n" % (i, i))
        finally:
            os.kill(srv.pid, signal.SIGCONT)
        for i, s in enumerate(socks):
            assert read_until(s, b"END\r\n") == b"STORED\r\nVALUE s%d 0 1\r\nx\r\nEND\r\n" % i
    finally:
        for s in socks:
            s.close()
    assert int(stats(HOST, srv.port)["uring_buf_ring_empty"]) > 0
    assert_alive(srv)
