"""-o idle_timeout=N: connections idle longer than N seconds are closed.

memcached 1.6's rule, which these tests hold stackmapd to (run them with
--target memcached,stackmapd to see memcached do the same):

- a connection waiting for a command that has received nothing for more than
  N seconds is closed, without a word, and counted in `idle_kicks`; a partial
  command line does not protect it;
- a connection inside a value (a store whose data is still coming) or with
  replies its client has not read yet is not idle, and neither is one whose
  client keeps sending commands;
- `stats settings` shows the timeout.

The server checks about once a second, so each test waits for the close
with a generous deadline rather than asserting when it comes.
"""

from __future__ import annotations

import socket
import time

from conftest import HOST, Server, Target
from mcwire import Wire, stats

TIMEOUT = 1
# Longest wait for a kick that is due (a check runs about once a second): not a timing assertion.
KICK_DEADLINE = 15.0
BIG = 512 * 1024


def kicks(srv: Server) -> int:
    return int(stats(HOST, srv.port).get("idle_kicks", "0"))


def wait_kicks(srv: Server, n: int) -> int:
    """idle_kicks once it reaches n, or its value at the deadline."""
    deadline = time.monotonic() + KICK_DEADLINE
    got = kicks(srv)
    while got < n and time.monotonic() < deadline:
        time.sleep(0.2)
        got = kicks(srv)
    return got


def test_idle_connections_are_closed_silently(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(target, ["-o", f"idle_timeout={TIMEOUT}"])
    with Wire(HOST, srv.port) as never, Wire(HOST, srv.port) as once, Wire(HOST, srv.port) as partial:
        once.expect(b"set k 0 0 1\r\nv\r\n", b"STORED\r\n")
        partial.send(b"get parti")  # a command line that never ends
        for w in (never, once, partial):
            assert w.closed_by_peer(KICK_DEADLINE), "an idle connection was not closed"
            assert w.buf == b"", f"the server said {w.buf!r} before closing an idle connection"
    assert kicks(srv) == 3
    with srv.wire() as w:  # the server serves on
        w.expect(b"get k\r\n", b"VALUE k 0 1\r\nv\r\nEND\r\n")


def test_busy_connections_are_not_kicked(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    """Inside a value, with unread replies queued, or sending commands: not idle."""
    srv = start_server(target, ["-m", "64", "-o", "idle_timeout=2"])
    with srv.wire() as w:
        w.expect(b"set big 0 0 %d\r\n" % BIG + b"b" * BIG + b"\r\n", b"STORED\r\n")
    with Wire(HOST, srv.port) as value, Wire(HOST, srv.port) as chatty, Wire(HOST, srv.port) as idle:
        value.send(b"set k 0 0 10\r\nabc")  # 7 value bytes still to come
        reader = socket.create_connection((HOST, srv.port), timeout=10)
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        try:
            requests = 40
            reader.sendall(b"get big\r\n" * requests)  # 20 MiB of replies it does not read yet
            # Until the idle one is kicked, and for a few checks after it.
            kicked_at = None
            give_up = time.monotonic() + KICK_DEADLINE
            while (kicked_at is None and time.monotonic() < give_up) or (
                    kicked_at is not None and time.monotonic() < kicked_at + 4):
                chatty.expect(b"version\r\n", b"VERSION ", timeout=5)
                chatty.read_line()
                if kicked_at is None and idle.closed_by_peer(0.25):
                    kicked_at = time.monotonic()
                else:
                    time.sleep(0.25)
            assert kicked_at is not None, "the idle connection was not closed"
            assert kicks(srv) == 1, "only the idle connection may be kicked"
            value.expect(b"defghij\r\n", b"STORED\r\n")
            reply = b"VALUE big 0 %d\r\n" % BIG + b"b" * BIG + b"\r\nEND\r\n"
            got = bytearray()
            while len(got) < requests * len(reply):
                chunk = reader.recv(1 << 20)
                assert chunk, f"connection closed after {len(got)} of {requests * len(reply)} reply bytes"
                got += chunk
            assert bytes(got) == reply * requests
        finally:
            reader.close()
    assert kicks(srv) == 1


def test_stats_settings_shows_idle_timeout(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(target, ["-o", "idle_timeout=7"])
    assert stats(HOST, srv.port, "settings")["idle_timeout"] == "7"
    assert stats(HOST, srv.port)["idle_kicks"] == "0"
