"""What an idle connection costs in server memory.

A connection that has nothing in flight should hold only its small
bookkeeping struct: receive carry-over, the output queue's arrays and the
backend's send state are taken from the worker's pools while data moves and
given back when it stops.  memcached's cost is the yardstick (about 0.75 KB
of resident memory per idle connection on Debian's 1.6.18).

The measurement is the one the issue used: start a server with room for the
connections, read its resident set (VmRSS), open many connections that each
run one request and then sit idle, read it again, and divide.  Memory, not
time, so the bound is a fair thing to assert.

Run directly for figures (`python tests/test_conn_memory.py [N]`): it prints
the per-connection cost of memcached and of each stackmapd backend.
"""

from __future__ import annotations

import resource
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import HOST, MEMCACHED, Server, Target, launch

# Connections held open for the measurement, and the bound on each one's cost.
CONNS = 5000
BOUND_BYTES = 1024
# Connections opened before the baseline is read (64 leave a 4-thread server's
# workers without one with probability 4 * (3/4)**64, about 4e-8).
WARMUP = 64


def rss_bytes(pid: int) -> int:
    """Resident set of a process, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/PID/status")


def raise_nofile(need: int) -> None:
    """Let this (client) process hold `need` more sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need + 256
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def exchange(s: socket.socket, request: bytes, reply: bytes) -> None:
    """One request, its whole reply checked."""
    s.sendall(request)
    got = b""
    while len(got) < len(reply):
        chunk = s.recv(len(reply) - len(got))
        assert chunk, f"server closed after {got!r}"
        got += chunk
    assert got == reply


# One exchange on a connection: the request for connection i, and its whole reply.
Exchange = Callable[[int], tuple[bytes, bytes]]


def per_conn_cost(srv: Server, conns: int, warm: Exchange, hold: Exchange) -> float:
    """Bytes of resident memory each of `conns` connections adds once `hold`
    has run on it.  First, WARMUP connections run `warm`, so that every
    worker thread has run a request (SO_REUSEPORT spreads them) and its
    one-off memory -- its malloc arena, the first page of its receive
    buffers -- is in the baseline.
    """
    held: list[socket.socket] = []

    def connect(request: tuple[bytes, bytes]) -> None:
        held.append(socket.create_connection((HOST, srv.port), timeout=5))
        exchange(held[-1], *request)

    try:
        for i in range(WARMUP):
            connect(warm(i))
        before = rss_bytes(srv.pid)
        for i in range(conns):
            connect(hold(i))
        after = rss_bytes(srv.pid)
    finally:
        for s in held:
            s.close()
    return (after - before) / conns


def idle_cost(srv: Server, conns: int) -> float:
    """Each connection gets a small value (so receive, parse and send buffers
    have all been used once) and is then left idle, open."""
    return per_conn_cost(srv, conns, lambda i: (b"set idle 0 0 5\r\nhello\r\n", b"STORED\r\n"),
                         lambda i: (b"get idle\r\n", b"VALUE idle 0 5\r\nhello\r\nEND\r\n"))


def pending_store_cost(srv: Server, conns: int) -> float:
    """Each connection is left with an ms waiting for the rest of its value
    (its O, k and c flags kept for the response).  The "mn" ahead of it in
    the same segment is answered only after the ms line has been parsed, so
    its MN says the ms is pending."""
    return per_conn_cost(srv, conns, lambda i: (b"ms warm%d 5 O1 k\r\nhello\r\n" % i, b"HD O1 kwarm%d\r\n" % i),
                         lambda i: (b"mn\r\nms pend%d 5 O1 k c\r\nhel" % i, b"MN\r\n"))


def server_args(conns: int) -> list[str]:
    return ["-c", str(conns + 1000), "-t", "4"]


@pytest.mark.parametrize(("what", "cost_of"), [("idle", idle_cost), ("with an ms pending", pending_store_cost)],
                         ids=["idle", "ms_pending"])
def test_connection_cost(start_server, target: Target, what: str, cost_of: Callable[[Server, int], float]) -> None:  # type: ignore[no-untyped-def]
    """An idle connection, and one whose ms awaits its value (its flags kept
    in a few bytes, not a line-sized block), each cost less than the bound."""
    raise_nofile(CONNS + WARMUP)
    srv = start_server(target, server_args(CONNS))
    cost = cost_of(srv, CONNS)
    assert srv.alive()
    assert cost <= BOUND_BYTES, f"{target.id}: {cost:.0f} bytes per connection {what}"


def main() -> None:
    """Print each server's per-connection cost (the figures in the README)."""
    conns = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, conns + WARMUP + 256), hard))
    for target in (MEMCACHED, Target("stackmapd", "epoll"), Target("stackmapd", "uring")):
        srv = launch(target, server_args(conns))
        try:
            print(f"{target.id}: {idle_cost(srv, conns):.0f} bytes per idle connection ({conns} conns)")
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
