"""Bad input: the server answers exactly as memcached 1.6.18 and survives.

After every case the test checks that the process is still running, that a
connection opened before the bad input still works, and that data stored
before it is intact.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest
from conftest import Server, assert_alive
from mcwire import Wire

MB = 1024 * 1024


class Guard:
    """Data and a connection set up before the bad input, checked after it."""

    def __init__(self, server: Server, tag: str) -> None:
        self.server = server
        self.key = f"guard_{tag}".encode()
        self.value = b"precious\r\nvalue " + self.key
        self.other = server.wire()
        self.other.expect(
            b"set %s 17 0 %d\r\n%s\r\n" % (self.key, len(self.value), self.value), b"STORED\r\n"
        )

    def check(self) -> None:
        assert_alive(self.server)
        expect = b"VALUE %s 17 %d\r\n%s\r\nEND\r\n" % (self.key, len(self.value), self.value)
        self.other.expect(b"get %s\r\n" % self.key, expect)
        with self.server.wire() as w:
            w.expect(b"get %s\r\n" % self.key, expect)

    def close(self) -> None:
        self.other.close()


@pytest.fixture
def guard(server: Server, request: pytest.FixtureRequest) -> Iterator[Guard]:
    g = Guard(server, re.sub(r"[^A-Za-z0-9]", "_", request.node.name)[-60:])
    yield g
    g.close()


def session(server: Server, steps: list[tuple[bytes, bytes]]) -> None:
    with server.wire() as w:
        for send, expect in steps:
            w.expect(send, expect)
            if expect == b"VERSION ":
                w.read_line()
        w.expect_silence(0.1)


def test_key_too_long(server: Server, guard: Guard) -> None:
    k250 = b"k" * 250
    k251 = b"k" * 251
    err = b"CLIENT_ERROR bad command line format\r\n"
    session(server, [
        # the data line is then read as a command of its own
        (b"set %s 0 0 1\r\nx\r\n" % k251, err + b"ERROR\r\n"),
        (b"get %s\r\n" % k251, err),
        (b"get a %s\r\n" % k251, err),
        (b"delete %s\r\n" % k251, err),
        (b"incr %s 1\r\n" % k251, err),
        (b"touch %s 1\r\n" % k251, err),
        (b"mg %s v\r\n" % k251, err),
        (b"ms %s 1\r\nx\r\n" % k251, err + b"ERROR\r\n"),
        (b"md %s\r\n" % k251, err),
        (b"ma %s\r\n" % k251, err),
        (b"me %s\r\n" % k251, err),
        (b"set %s 0 0 1\r\nx\r\n" % k250, b"STORED\r\n"),
        (b"get %s\r\n" % k250, b"VALUE %s 0 1\r\nx\r\nEND\r\n" % k250),
    ])
    guard.check()


def test_control_characters_in_keys(server: Server, guard: Guard) -> None:
    # memcached's text protocol splits on spaces only: other control bytes
    # are part of the key; a NUL ends the line's parse.
    session(server, [
        (b"set a\x01b 0 0 1\r\nx\r\n", b"STORED\r\n"),
        (b"get a\x01b\r\n", b"VALUE a\x01b 0 1\r\nx\r\nEND\r\n"),
        (b"set c\x7fd\x1b 0 0 1\r\ny\r\n", b"STORED\r\n"),
        (b"get c\x7fd\x1b\r\n", b"VALUE c\x7fd\x1b 0 1\r\ny\r\nEND\r\n"),
        (b"ms e\x02f 1\r\nz\r\n", b"HD\r\n"),
        (b"mg e\x02f v\r\n", b"VA 1\r\nz\r\n"),
        (b"set a\x00b 0 0 1\r\nx\r\n", b"ERROR\r\nERROR\r\n"),
        (b"get a\x00b\r\n", b"END\r\n"),
        (b"set k\t0 0 1\r\nx\r\n", b"ERROR\r\nERROR\r\n"),
    ])
    guard.check()


def test_bad_data_chunk(server: Server, guard: Guard) -> None:
    session(server, [
        (b"set chunk 0 0 3\r\nold\r\n", b"STORED\r\n"),
        # 3 bytes announced, 5 sent: the value is refused, the old one stays
        (b"set chunk 0 0 3\r\nabcde\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"),
        (b"get chunk\r\n", b"VALUE chunk 0 3\r\nold\r\nEND\r\n"),
        # 5 bytes taken as data ("ab\r\n\r"), the lone "\n" left is an empty command
        (b"set chunk 0 0 3\r\nab\r\n\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"),
        (b"set chunk 0 0 1\r\nx\n\n", b"CLIENT_ERROR bad data chunk\r\n"),
        (b"ms chunk 1\r\nxyz\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"),
        (b"get chunk\r\n", b"VALUE chunk 0 3\r\nold\r\nEND\r\n"),
    ])
    guard.check()


def test_bad_lengths(server: Server, guard: Guard) -> None:
    err = b"CLIENT_ERROR bad command line format\r\n"
    session(server, [
        (b"set len 0 0 -1\r\n", err),
        (b"set len 0 0 abc\r\n", err),
        (b"set len 0 0 99999999999999999999\r\n", err),
        (b"set len 0 0 2147483648\r\n", err),
        (b"set len 0 0 2147483647\r\n", err),
        (b"set len abc 0 1\r\nx\r\n", err + b"ERROR\r\n"),
        (b"set len 0 abc 1\r\nx\r\n", err + b"ERROR\r\n"),
        (b"set len -1 0 1\r\nx\r\n", err + b"ERROR\r\n"),
        (b"ms len -1\r\n", err),
        (b"ms len abc\r\nq\r\n", err + b"ERROR\r\n"),
        (b"get len\r\n", b"END\r\n"),
    ])
    guard.check()


def test_value_over_item_size_max(server: Server, guard: Guard) -> None:
    big = b"b" * (MB + 1)
    session(server, [
        (b"set big 0 0 %d\r\n%s\r\nget big\r\n" % (len(big), big), b"SERVER_ERROR object too large for cache\r\nEND\r\n"),
        # the error comes after the announced data has been read and dropped
        (b"set big 0 0 %d\r\n" % (len(big) * 4), b""),
        (big * 4 + b"\r\n", b"SERVER_ERROR object too large for cache\r\n"),
        (b"get big\r\n", b"END\r\n"),
    ])
    guard.check()


def test_unknown_commands_and_garbage(server: Server, guard: Guard) -> None:
    session(server, [
        (b"foo\r\n", b"ERROR\r\n"),
        (b"GET guard\r\n", b"ERROR\r\n"),
        (b"\r\n", b"ERROR\r\n"),
        (b"\n", b"ERROR\r\n"),
        (b"   \r\n", b"ERROR\r\n"),
        (b"\x00\x01\x02\xff\xfe garbage\r\n", b"ERROR\r\n"),
        (bytes(range(1, 10)) + bytes(range(14, 128)) + b"\r\n", b"ERROR\r\n"),
        (b"set\r\n", b"ERROR\r\n"),
        (b"set k 0 0 1 noreply extra\r\nB\r\n", b"ERROR\r\nERROR\r\n"),
        (b"version\n", b"VERSION "),
    ])
    guard.check()


def test_overlong_line_closes_connection(server: Server, guard: Guard) -> None:
    # a non-get line of more than 2048 bytes without a newline: memcached
    # gives up on the client and closes the connection without a word
    with server.wire() as w:
        w.send(b"set " + b"x" * 4000)
        assert w.closed_by_peer(3.0), "connection still open after 4 KB without a newline"
        assert w.buf == b"", f"unexpected answer {w.buf!r}"
    with server.wire() as w:
        w.send(b"x" * 2049)
        assert w.closed_by_peer(3.0), "connection still open after 2049 bytes without a newline"
    # up to 2048 bytes are waited for
    with server.wire() as w:
        w.send(b"x" * 2048)
        time.sleep(0.2)
        w.expect(b"\r\n", b"ERROR\r\n")
    # a complete long line is just a bad command
    with server.wire() as w:
        w.expect(b"set " + b"x" * 3000 + b" 0 0 1\r\n", b"CLIENT_ERROR bad command line format\r\n")
        w.expect(b"y" * 3000 + b"\r\n", b"ERROR\r\n")
    # get and gets lines may be long (many keys)
    with server.wire() as w:
        w.send(b"get " + b"x " * 3000)
        time.sleep(0.2)
        w.expect(b"\r\n", b"END\r\n")
    guard.check()


def test_disconnect_in_the_middle_of_a_value(server: Server, guard: Guard) -> None:
    with server.wire() as w:
        w.expect(b"set half 0 0 3\r\nold\r\n", b"STORED\r\n")
    for cut in (b"set half 0 0 100\r\n", b"set half 0 0 100\r\n" + b"z" * 50, b"set half 0 0 1", b"ms half 100\r\n" + b"q" * 99):
        w = server.wire()
        w.send(cut)
        time.sleep(0.05)
        w.close()
    with server.wire() as w:
        w.expect(b"get half\r\n", b"VALUE half 0 3\r\nold\r\nEND\r\n")
    # the same with a reset instead of a FIN
    s = socket.create_connection((server.host, server.port), timeout=5)
    s.sendall(b"set half 0 0 100000\r\n" + b"r" * 50000)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    time.sleep(0.1)
    with server.wire() as w:
        w.expect(b"get half\r\n", b"VALUE half 0 3\r\nold\r\nEND\r\n")
    guard.check()


def test_too_many_connections(start_server, target) -> None:  # type: ignore[no-untyped-def]
    # memcached lowers its fd limit to -c and needs ~20 fds itself, so it
    # cannot start with -c 10; 30 leaves it a handful of client slots.
    limit = 30
    srv = start_server(target, ["-c", str(limit)])
    with srv.wire() as w:
        w.expect(b"set c 0 0 2\r\nok\r\n", b"STORED\r\n")
    conns = [srv.wire() for _ in range(limit + 5)]
    ok: list[Wire] = []
    try:
        # The server writes the refusal on accept: read it without sending
        # anything, so that its close is a FIN and not a reset.
        time.sleep(0.5)
        rejected: list[tuple[Wire, bytes]] = []
        for w in conns:
            first = w.read_available(0.02)
            if first:
                rejected.append((w, first))
            else:
                ok.append(w)
        assert rejected, f"{len(ok)} connections accepted with -c {limit}"
        assert 1 <= len(ok) <= limit, f"{len(ok)} connections accepted with -c {limit}"
        for rw, first in rejected:
            first += rw.read_available(0.1)
            assert first == b"ERROR Too many open connections\r\n", first
            assert rw.closed_by_peer(3.0), "a refused connection was not closed"
            rw.close()
        # the connections that got in still work
        for w in ok:
            w.expect(b"get c\r\n", b"VALUE c 0 2\r\nok\r\nEND\r\n")
        # and when one goes away, a new client gets its place
        ok.pop().close()
        time.sleep(0.3)
        w = srv.wire()
        ok.append(w)
        assert w.read_available(0.3) == b""
        w.expect(b"get c\r\n", b"VALUE c 0 2\r\nok\r\nEND\r\n")
        assert srv.alive()
    finally:
        for w in conns + ok:
            w.close()
