"""Back-pressure and batching: what the ring backends promise under load.

- A client that sends many requests and never reads its responses must not
  stall the other connections, and must not make the server's memory grow
  without bound: its responses pile up only to the output high-water mark,
  then the server stops reading from it until it drains.
- A client that disconnects with megabytes of responses queued costs nothing
  afterwards: the items it held are released and the server carries on.
- The io_uring backend batches: under load from many connections, one
  io_uring_enter carries many completions, so it submits far fewer times
  than it serves requests (the StackMap point: one syscall for a batch).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from conftest import HOST, Server, Target, assert_alive, memaslap_same_cpu
from mcwire import Wire, stats

BIG = 512 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def stalled_reader(srv: Server, requests: int) -> socket.socket:
    """A client that asks for `requests` big values and reads nothing."""
    s = socket.create_connection((HOST, srv.port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.setblocking(False)
    batch = b"get big\r\n" * requests
    sent = 0
    deadline = time.monotonic() + 5
    while sent < len(batch) and time.monotonic() < deadline:
        try:
            sent += s.send(batch[sent:])
        except BlockingIOError:
            time.sleep(0.01)  # the server stopped reading us: that is the point
    return s


def test_stalled_reader_does_not_stall_others(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(target, ["-m", "64", "-t", "1"])
    with srv.wire() as w:
        w.expect(b"set big 0 0 %d\r\n" % BIG + b"b" * BIG + b"\r\n", b"STORED\r\n")
        w.expect(b"set small 0 0 2\r\nok\r\n", b"STORED\r\n")
    rss_before = rss_kib(srv.pid)
    # 400 x 512 KiB = 200 MiB of responses that nobody reads.
    hog = stalled_reader(srv, 400)
    try:
        time.sleep(0.5)
        with srv.wire(timeout=5) as other:
            for i in range(50):
                other.expect(b"get small\r\n", b"VALUE small 0 2\r\nok\r\nEND\r\n")
                other.expect(b"set k%d 0 0 1\r\nx\r\n" % i, b"STORED\r\n")
        grown_mib = (rss_kib(srv.pid) - rss_before) / 1024
        # Bounded by the output high-water mark (4 MiB), nowhere near 200 MiB.
        assert grown_mib < 64, f"server grew {grown_mib:.0f} MiB for a client that does not read"
    finally:
        hog.close()
    time.sleep(0.3)
    assert_alive(srv)
    with srv.wire() as w:
        w.expect(b"get small\r\n", b"VALUE small 0 2\r\nok\r\nEND\r\n")


def test_stalled_reader_drains_in_order(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    """Once the slow client reads, every response arrives, complete and in order."""
    srv = start_server(target, ["-m", "64", "-t", "1"])
    value = bytes(range(256)) * (64 * 1024 // 256)
    with srv.wire() as w:
        w.expect(b"set v 7 0 %d\r\n" % len(value) + value + b"\r\n", b"STORED\r\n")
    n = 200  # 12.5 MiB of responses: past the high-water mark
    with Wire(HOST, srv.port, timeout=10) as w:
        w.send(b"get v\r\n" * n + b"version\r\n")
        time.sleep(0.5)  # let the queue fill and back-pressure engage
        one = b"VALUE v 7 %d\r\n" % len(value) + value + b"\r\nEND\r\n"
        for _ in range(n):
            assert w.read_exact(len(one)) == one
        assert w.read_line().startswith(b"VERSION ")


def test_disconnect_with_queued_output(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(target, ["-m", "64", "-t", "1"])
    with srv.wire() as w:
        w.expect(b"set big 0 0 %d\r\n" % BIG + b"b" * BIG + b"\r\n", b"STORED\r\n")
    for _ in range(5):
        stalled_reader(srv, 100).close()
    time.sleep(0.3)
    assert_alive(srv)
    # The items those responses referenced were released: a delete and a new
    # set of the same key work, and the old value is gone.
    with srv.wire() as w:
        w.expect(b"delete big\r\n", b"DELETED\r\n")
        w.expect(b"set big 0 0 1\r\nn\r\n", b"STORED\r\n")
        w.expect(b"get big\r\n", b"VALUE big 0 1\r\nn\r\nEND\r\n")
    st = stats(HOST, srv.port)
    assert int(st["curr_connections"]) <= 2


@pytest.mark.serial  # how many requests one submit carries depends on who else uses the CPU
def test_uring_batches_syscalls(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    """io_uring: under 64 concurrent connections, far fewer submits than requests."""
    if target.backend != "uring":
        pytest.skip("io_uring batching is a property of the uring backend")
    srv = start_server(target, ["-t", "1"])
    d = memaslap_same_cpu(srv, 2)
    requests = d["cmd_get"] + d["cmd_set"]
    submits = d["uring_submits"]
    assert requests > 1000, f"memaslap served only {requests} requests"
    assert submits < 0.5 * requests, f"{submits} io_uring submits for {requests} requests: no batching"
    assert d["uring_cqes"] > 2 * submits, "completions per submit should be well above 1"
