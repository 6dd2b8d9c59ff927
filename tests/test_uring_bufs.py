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
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import HOST, Server, Target, assert_alive
from mcwire import Wire, stats

BURST_CONNS = 10
SETS_PER_CONN = 60  # 60 sets of 1000-byte values: ~61 KB, 16 buffers of 4 KiB per connection


def uring_only(target: Target) -> None:
    if target.backend != "uring":
        pytest.skip("receive buffer publishing is a property of the uring backend")


def published(srv: Server) -> int:
    return int(stats(HOST, srv.port, "backend")["uring_bufs_published"])


def connect_all(srv: Server, n: int) -> list[Wire]:
    """n connections, each known to the worker (one request answered)."""
    wires = [srv.wire(timeout=10) for _ in range(n)]
    for w in wires:
        assert w.request(b"version\r\n").startswith(b"VERSION ")
    return wires


def all_threads_stopped(pid: int) -> bool:
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue  # the thread ended
        if state not in ("T", "t"):
            return False
    return True


@contextmanager
def stopped(srv: Server) -> Iterator[None]:
    """The server stopped (SIGSTOP) meanwhile: what is sent now reaches it in one round.

    kill() returns before the signal has stopped the threads (one may be on
    the other CPU, still serving): wait until every thread is in state T,
    or a busy host lets the first bytes in before the stop."""
    os.kill(srv.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while not all_threads_stopped(srv.pid):
        assert time.monotonic() < deadline, "the server did not stop"
        time.sleep(0.01)
    try:
        yield
    finally:
        os.kill(srv.pid, signal.SIGCONT)


def close_all(wires: list[Wire]) -> None:
    for w in wires:
        w.close()


def burst(srv: Server, wires: list[Wire]) -> None:
    """Each connection sends ~61 KB of sets while the server is stopped, so its
    next round receives them all at once; every set is answered."""
    value = b"v" * 1000
    with stopped(srv):
        for i, w in enumerate(wires):
            w.send(b"".join(b"set b%d.%d 0 0 1000\r\n%s\r\n" % (i, j, value) for j in range(SETS_PER_CONN)))
    expected = b"STORED\r\n" * SETS_PER_CONN
    for w in wires:
        assert w.read_exact(len(expected)) == expected


def test_burst_beyond_the_published_buffers(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    """Ten connections' bursts land in one round and take more buffers than the 64
    published: the ring runs dry, every request is still answered, and the
    publish target grows."""
    uring_only(target)
    srv = start_server(target, ["-t", "1"])
    assert published(srv) == 64
    wires = connect_all(srv, BURST_CONNS)
    try:
        empty_before = int(stats(HOST, srv.port, "backend")["uring_buf_ring_empty"])
        burst(srv, wires)
    finally:
        close_all(wires)
    d = {k: v for k, v in stats(HOST, srv.port, "backend").items() if k.startswith("uring")}
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
    wires = connect_all(srv, BURST_CONNS)
    try:
        burst(srv, wires)
    finally:
        close_all(wires)
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
    wires = connect_all(srv, 100)
    try:
        with stopped(srv):
            for i, w in enumerate(wires):
                w.send(b"set s%d 0 0 1\r\nx\r\nget s%d\r\n" % (i, i))
        for i, w in enumerate(wires):
            expected = b"STORED\r\nVALUE s%d 0 1\r\nx\r\nEND\r\n" % i
            assert w.read_exact(len(expected)) == expected
    finally:
        close_all(wires)
    assert int(stats(HOST, srv.port, "backend")["uring_buf_ring_empty"]) > 0
    assert_alive(srv)
