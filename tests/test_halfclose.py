"""Half-closed connections get every reply to what they sent.

A client that writes its requests, shuts down its sending side
(`shutdown(SHUT_WR)`, what `printf 'stats\\r\\n' | nc host port` does) and
reads to end of stream must receive the reply to every request it sent before
the end of stream, and then the end of stream.  memcached does: it parses
everything received, sends every reply, and closes only when the client's
end of stream is read with nothing left to answer.

Each test runs many connections at once, all opened before any of them
writes, so end of stream arrives in the same batch as the requests; the big
multi-get makes the reply span many sends and, at the end, several output
high-water marks, so the end of stream also comes while back-pressure holds
unparsed input.
"""

from __future__ import annotations

import selectors
import socket
import time

import pytest
from conftest import HOST, Server, assert_alive

CONNS = 300
# Bytes of each big value and how many of them a multi-get asks for.
BIG = 256 * 1024
BIG_KEYS = 12
# Seconds a whole exchange may take before the test gives up (not a timing assertion).
DEADLINE = 60.0


def run_half_closed(srv: Server, requests: list[bytes], read_delay: float = 0.0) -> list[bytes]:
    """Open one connection per request (all before any writes), send each its
    request, shut down the sending side, and read each to end of stream.
    `read_delay` seconds pass between the shutdowns and the first read, so the
    server's output piles up first.  Returns what each connection received."""
    socks: list[socket.socket] = []
    try:
        for _ in requests:
            socks.append(socket.create_connection((HOST, srv.port), timeout=10))
        for s, req in zip(socks, requests, strict=True):
            s.sendall(req)
            s.shutdown(socket.SHUT_WR)
        if read_delay:
            time.sleep(read_delay)
        got = [bytearray() for _ in socks]
        sel = selectors.DefaultSelector()
        for i, s in enumerate(socks):
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
        open_count = len(socks)
        deadline = time.monotonic() + DEADLINE
        while open_count and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                i = key.data
                try:
                    data = socks[i].recv(1 << 20)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    data = b""
                    got[i] += b"<RESET>"
                if data:
                    got[i] += data
                else:
                    sel.unregister(socks[i])
                    open_count -= 1
        sel.close()
        assert open_count == 0, f"{open_count} connections never reached end of stream"
        return [bytes(g) for g in got]
    finally:
        for s in socks:
            s.close()


def summary(got: bytes, want: bytes) -> str:
    return f"got {len(got)} bytes (tail {got[-40:]!r}), want {len(want)} (tail {want[-40:]!r})"


def test_set_get_then_half_close(server: Server) -> None:
    requests, wants = [], []
    for i in range(CONNS):
        key, val = b"hc%d" % i, b"v%d" % i * 3
        requests.append(b"set %s 0 0 %d\r\n%s\r\nget %s\r\n" % (key, len(val), val, key))
        wants.append(b"STORED\r\nVALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(val), val))
    got = run_half_closed(server, requests)
    bad = [i for i in range(CONNS) if got[i] != wants[i]]
    assert not bad, f"{len(bad)}/{CONNS} incomplete; first: {summary(got[bad[0]], wants[bad[0]])}"
    assert_alive(server)


def test_meta_and_noreply_then_half_close(server: Server) -> None:
    """The last reply is a meta one; a quiet store before it answers nothing."""
    requests, wants = [], []
    for i in range(CONNS):
        key = b"hm%d" % i
        requests.append(b"set %s 0 0 1 noreply\r\nx\r\nms %s 2 T0\r\nab\r\nmg %s v\r\nmn\r\n" % (key, key, key))
        wants.append(b"HD\r\nVA 2\r\nab\r\nMN\r\n")
    got = run_half_closed(server, requests)
    bad = [i for i in range(CONNS) if got[i] != wants[i]]
    assert not bad, f"{len(bad)}/{CONNS} incomplete; first: {summary(got[bad[0]], wants[bad[0]])}"


def test_stats_then_half_close(server: Server) -> None:
    got = run_half_closed(server, [b"stats\r\n"] * CONNS)
    bad = [g for g in got if not (g.startswith(b"STAT pid ") and g.endswith(b"\r\nEND\r\n"))]
    assert not bad, f"{len(bad)}/{CONNS} incomplete; first tail: {bad[0][-60:]!r}"


def test_partial_request_then_half_close(server: Server) -> None:
    """Complete requests before a cut-off one are answered; the rest is dropped."""
    got = run_half_closed(server, [b"get nosuch\r\nset cut 0 0 10\r\nabc"] * 20 + [b"version\r\nget a b"] * 20)
    for g in got[:20]:
        assert g == b"END\r\n"
    for g in got[20:]:
        assert g.startswith(b"VERSION ") and g.endswith(b"\r\n") and g.count(b"\r\n") == 1


@pytest.fixture(scope="module")
def big_keys(server: Server) -> list[bytes]:
    keys = [b"big%d" % i for i in range(BIG_KEYS)]
    with server.wire() as w:
        for i, k in enumerate(keys):
            w.expect(b"set %s %d 0 %d\r\n" % (k, i, BIG) + bytes([65 + i]) * BIG + b"\r\n", b"STORED\r\n")
    return keys


def big_reply(keys: list[bytes]) -> bytes:
    out = bytearray()
    for i, k in enumerate(keys):
        out += b"VALUE %s %d %d\r\n" % (k, i, BIG) + bytes([65 + i]) * BIG + b"\r\n"
    return bytes(out + b"END\r\n")


def test_big_multiget_then_half_close(server: Server, big_keys: list[bytes]) -> None:
    """A 3 MB reply per connection leaves over many sends before the close."""
    want = big_reply(big_keys)
    got = run_half_closed(server, [b"get " + b" ".join(big_keys) + b"\r\n"] * 8)
    for g in got:
        assert g == want, summary(g, want)
    assert_alive(server)


def test_half_close_while_input_is_held(server: Server, big_keys: list[bytes]) -> None:
    """Many multi-gets, then end of stream, with the client not reading at
    first: the output queue passes the high-water mark, the server stops
    parsing, and the held requests must still be answered after the close."""
    want = big_reply(big_keys)
    rounds = 6  # 6 x 3 MB of replies per connection: past the 4 MiB high-water mark
    request = (b"get " + b" ".join(big_keys) + b"\r\n") * rounds + b"version\r\n"
    got = run_half_closed(server, [request] * 4, read_delay=0.5)
    for g in got:
        assert g.startswith(want * rounds), summary(g, want * rounds)
        tail = g[len(want) * rounds :]
        assert tail.startswith(b"VERSION ") and tail.endswith(b"\r\n") and tail.count(b"\r\n") == 1, tail



def test_late_reader_gets_the_whole_reply(server: Server, big_keys: list[bytes]) -> None:
    """Without a half-close too: a client that reads only after its socket
    buffers have filled still gets every byte (a send that finds the buffer
    full waits for room; it does not end the connection)."""
    want = big_reply(big_keys) * 6
    with socket.create_connection((HOST, server.port), timeout=10) as s:
        s.sendall((b"get " + b" ".join(big_keys) + b"\r\n") * 6)
        time.sleep(0.5)
        got = bytearray()
        while len(got) < len(want):
            chunk = s.recv(1 << 20)
            assert chunk, summary(bytes(got), want)
            got += chunk
    assert bytes(got) == want
