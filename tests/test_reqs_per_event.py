"""-R / max_reqs_per_event: one connection's deep pipeline takes turns.

memcached answers at most -R requests of one connection per event; a
connection with more requests buffered yields -- counted in conn_yields --
and the worker serves its other connections before it goes on.  stackmapd
does the same in its run-to-completion worker (worker.c).  These tests
pipeline far more than -R requests in one send and require every reply, in
order, and memcached's yield count: one yield for each -R requests after
the first -R of a read, i.e. ceil(N / R) - 1 for N requests in one read.
They run against memcached too (``--target memcached,stackmapd``).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from conftest import Server, Target, assert_alive
from mcwire import Wire, stats

R = 5
N = 200  # requests in one send: small enough (~2 KB) for one read on loopback


def yields(srv: Server) -> int:
    return int(stats(srv.host, srv.port)["conn_yields"])


def expected_yields(n: int, r: int) -> int:
    """memcached 1.6's count for n requests that arrive in one read."""
    return (n + r - 1) // r - 1


def start(start_server: Callable[..., Server], target: Target, r: int = R) -> Server:
    # One worker thread: every connection shares one loop, as in memcached -t 1.
    return start_server(target, ["-R", str(r), "-t", "1"])


def test_setting_is_reported(start_server: Callable[..., Server], target: Target) -> None:
    srv = start(start_server, target)
    assert stats(srv.host, srv.port, "settings")["reqs_per_event"] == str(R)
    assert yields(srv) == 0


def test_deep_pipeline_of_gets_answered_in_order_and_yields(
        start_server: Callable[..., Server], target: Target) -> None:
    srv = start(start_server, target)
    with srv.wire() as w:
        w.expect(b"".join(b"set k%d 0 0 %d\r\nv%d\r\n" % (i, len(b"v%d" % i), i) for i in range(0, N, 2)),
                 b"STORED\r\n" * (N // 2))
        before = yields(srv)
        send = b"".join(b"get k%d\r\n" % i for i in range(N))
        expect = b"".join(b"VALUE k%d 0 %d\r\nv%d\r\nEND\r\n" % (i, len(b"v%d" % i), i) if i % 2 == 0
                          else b"END\r\n" for i in range(N))
        w.expect(send, expect, timeout=15)
        w.expect_silence(0.1)
    assert yields(srv) - before == expected_yields(N, R)


def test_yield_with_nothing_to_send(start_server: Callable[..., Server], target: Target) -> None:
    """noreply stores queue no reply: the turns must go on all the same."""
    srv = start(start_server, target)
    with srv.wire() as w:
        before = yields(srv)
        w.expect(b"set q 0 0 1 noreply\r\nb\r\n" * N + b"mn\r\n", b"MN\r\n", timeout=15)
        assert yields(srv) - before == expected_yields(N + 1, R)
        w.expect(b"get q\r\n", b"VALUE q 0 1\r\nb\r\nEND\r\n")


def test_pipeline_then_end_of_stream(start_server: Callable[..., Server], target: Target) -> None:
    """A client that sends its pipeline and shuts down its side gets every reply, then EOF."""
    srv = start(start_server, target)
    with socket.create_connection((srv.host, srv.port), timeout=10) as s:
        s.sendall(b"set e 0 0 1 noreply\r\nx\r\n" * N + b"".join(b"mn\r\n" for _ in range(N)))
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got == b"MN\r\n" * N
    assert_alive(srv)


def test_other_connections_get_turns(start_server: Callable[..., Server], target: Target) -> None:
    """Two deep pipelines at once on one worker: both answered completely, in order."""
    srv = start(start_server, target, r=1)
    with srv.wire() as a, srv.wire() as b:
        before = yields(srv)
        a.send(b"".join(b"mn\r\n" for _ in range(N)))
        b.send(b"".join(b"mg nokey%d v\r\n" % i for i in range(N)))
        assert a.read_exact(4 * N, timeout=15) == b"MN\r\n" * N
        assert b.read_exact(4 * N, timeout=15) == b"EN\r\n" * N
        a.expect_silence(0.05)
        b.expect_silence(0.05)
    assert yields(srv) - before >= expected_yields(N, 1)


def test_yields_and_back_pressure_together(start_server: Callable[..., Server], target: Target) -> None:
    """Replies far above the 4 MiB output mark: yields and back-pressure both hold input."""
    srv = start(start_server, target)
    value = bytes(range(256)) * 400  # 100 KiB
    with srv.wire() as w:
        w.expect(b"set big 0 0 %d\r\n%s\r\n" % (len(value), value), b"STORED\r\n")
        count = 100  # 10 MiB of replies
        w.send(b"get big\r\n" * count + b"mn\r\n")
        one = b"VALUE big 0 %d\r\n%s\r\nEND\r\n" % (len(value), value)
        for _ in range(count):
            assert w.read_exact(len(one), timeout=15) == one
        assert w.read_exact(4, timeout=15) == b"MN\r\n"
    assert_alive(srv)


def test_every_request_kind_with_r_1(start_server: Callable[..., Server], target: Target) -> None:
    """-R 1: a turn per request, through stores, multigets, meta and arithmetic."""
    srv = start(start_server, target, r=1)
    send = expect = b""
    for i in range(60):
        val = b"v%d" % (i * 7)
        send += b"set r%d %d 0 %d\r\n%s\r\n" % (i, i, len(val), val)
        expect += b"STORED\r\n"
        send += b"get r%d missing\r\n" % i
        expect += b"VALUE r%d %d %d\r\n%s\r\nEND\r\n" % (i, i, len(val), val)
        send += b"mg r%d v f O%d\r\n" % (i, i)
        expect += b"VA %d f%d O%d\r\n%s\r\n" % (len(val), i, i, val)
        send += b"ma ctr N0 J0 v\r\n"
        expect += b"VA %d\r\n%d\r\n" % (len(b"%d" % i), i)
    with Wire(srv.host, srv.port, 10) as w:
        w.expect(send + b"mn\r\n", expect + b"MN\r\n", timeout=15)
        w.expect_silence(0.1)
    assert_alive(srv)


def test_big_receives_never_hold_too_much(start_server: Callable[..., Server], target: Target) -> None:
    """A yield must not hold more input than a connection may carry over
    (-I + 1 MiB): with 16 MiB uring receive buffers one receive brings
    megabytes of tiny requests, and every one is answered, the connection kept."""
    args = ["-R", "1", "-t", "1"]
    if target.backend == "uring":
        args += ["-o", "uring_buf_size=16m,uring_bufs=4"]
    srv = start_server(target, args)
    # 4 MB of "mn\r\n": the replies stay under the 4 MiB back-pressure mark,
    # and a reader thread drains them while the requests go out.
    count = 1_000_000
    got = []
    with socket.create_connection((srv.host, srv.port), timeout=30) as s:
        def read_all() -> None:
            while chunk := s.recv(1 << 20):
                got.append(len(chunk))

        reader = threading.Thread(target=read_all)
        reader.start()
        s.sendall(b"mn\r\n" * count)
        s.shutdown(socket.SHUT_WR)
        reader.join(30)
    assert sum(got) == 4 * count
    assert_alive(srv)
