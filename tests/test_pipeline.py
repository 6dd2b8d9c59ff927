"""Pipelining and framing: many requests per send, requests split at every
byte, values up to the item size limit, a 1000-key multiget.

A server parses requests out of whatever the kernel hands it: several
requests in one read, or one request in many reads.  These tests make both
happen on purpose (TCP_NODELAY plus short pauses between sends) and require
the answers to be exactly memcached's, in order.
"""

from __future__ import annotations

import random
import re
import time

import pytest
from conftest import Server, assert_alive
from mcwire import Wire

MB = 1024 * 1024


@pytest.fixture
def k(request: pytest.FixtureRequest) -> bytes:
    return ("p" + re.sub(r"[^A-Za-z0-9]", "_", request.node.name)[-40:] + "_").encode()


def test_many_requests_in_one_send(wire: Wire, k: bytes) -> None:
    send = b""
    expect = b""
    for i in range(200):
        key = k + b"%d" % i
        val = b"v%d" % (i * 7)
        send += b"set %s %d 0 %d\r\n%s\r\n" % (key, i, len(val), val)
        expect += b"STORED\r\n"
        send += b"get %s %smissing\r\n" % (key, k)
        expect += b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (key, i, len(val), val)
        send += b"mg %s v f O%d\r\n" % (key, i)
        expect += b"VA %d f%d O%d\r\n%s\r\n" % (len(val), i, i, val)
        if i % 3 == 0:
            send += b"delete %s\r\nmg %s v\r\n" % (key, key)
            expect += b"DELETED\r\nEN\r\n"
        if i % 5 == 0:
            send += b"ma %sctr N0 J0 v\r\n" % k
            expect += b"VA %d\r\n%d\r\n" % (len(b"%d" % (i // 5)), i // 5)
    send += b"mn\r\n"
    expect += b"MN\r\n"
    wire.expect(send, expect, timeout=15)
    wire.expect_silence(0.1)


def _split_everywhere(server: Server, request: bytes, response: bytes, setup: bytes = b"") -> None:
    """Send `request` in two parts, for every split point, on one connection."""
    with server.wire() as w:
        if setup:
            w.send(setup)
            w.read_available(0.1)
        for cut in range(1, len(request)):
            w.send(request[:cut])
            time.sleep(0.005)
            w.send(request[cut:])
            got = w.read_exact(len(response))
            assert got == response, f"split at {cut}: {request[:cut]!r} | {request[cut:]!r}\n  got {got!r}"
        w.expect_silence(0.05)


def test_text_request_split_at_every_byte(server: Server, k: bytes) -> None:
    req = b"set %sv 3 0 10\r\n0123456789\r\nget %sv\r\n" % (k, k)
    resp = b"STORED\r\nVALUE %sv 3 10\r\n0123456789\r\nEND\r\n" % k
    _split_everywhere(server, req, resp)


def test_value_with_crlf_inside_split_at_every_byte(server: Server, k: bytes) -> None:
    req = b"set %sw 0 0 8\r\n\r\nab\r\n\r\n\r\n" % k
    _split_everywhere(server, req, b"STORED\r\n")
    with server.wire() as w:
        w.expect(b"get %sw\r\n" % k, b"VALUE %sw 0 8\r\n\r\nab\r\n\r\n\r\nEND\r\n" % k)


def test_meta_request_split_at_every_byte(server: Server, k: bytes) -> None:
    req = b"ms %sm 4 F9 T0\r\nwxyz\r\nmg %sm v f k\r\nmn\r\n" % (k, k)
    resp = b"HD\r\nVA 4 f9 k%sm\r\nwxyz\r\nMN\r\n" % k
    _split_everywhere(server, req, resp)


def test_one_byte_at_a_time(server: Server, k: bytes) -> None:
    req = b"set %s1 1 0 5\r\nhello\r\nget %s1\r\nincr %sn 1\r\n" % (k, k, k)
    resp = b"STORED\r\nVALUE %s1 1 5\r\nhello\r\nEND\r\nNOT_FOUND\r\n" % k
    with server.wire() as w:
        for b in req:
            w.send(bytes([b]))
            time.sleep(0.001)
        w.expect(b"", resp)


def test_large_value_random_chunks(server: Server, k: bytes) -> None:
    rnd = random.Random(1234)
    value = rnd.randbytes(200_000)
    req = b"set %sbig 0 0 %d\r\n" % (k, len(value)) + value + b"\r\n"
    with server.wire() as w:
        pos = 0
        while pos < len(req):
            n = rnd.choice((1, 2, 7, 100, 1460, 4096, 65536))
            w.send(req[pos : pos + n])
            pos += n
            if rnd.random() < 0.05:
                time.sleep(0.002)
        w.expect(b"", b"STORED\r\n")
        w.expect(b"get %sbig\r\n" % k, b"VALUE %sbig 0 %d\r\n" % (k, len(value)) + value + b"\r\nEND\r\n")


@pytest.mark.parametrize("limit_mb", [1, 2])
def test_item_size_limit(start_server, target, limit_mb: int) -> None:  # type: ignore[no-untyped-def]
    """-I sets the largest item.  memcached counts its item header (about 60
    bytes) against the limit, so a value of exactly -I bytes is refused by
    memcached too; a value 512 bytes under the limit must be accepted."""
    srv = start_server(target, ["-I", f"{limit_mb}m"])
    limit = limit_mb * MB
    with srv.wire(timeout=15) as w:
        w.expect(b"set keep 0 0 4\r\nkeep\r\n", b"STORED\r\n")
        ok = random.Random(limit).randbytes(limit - 512)
        w.expect(b"set ok 5 0 %d\r\n" % len(ok) + ok + b"\r\n", b"STORED\r\n")
        w.expect(b"get ok\r\n", b"VALUE ok 5 %d\r\n" % len(ok) + ok + b"\r\nEND\r\n")
        w.expect(b"mg ok s\r\n", b"HD s%d\r\n" % len(ok))
        # one byte over: refused, the data swallowed, the connection usable
        too_big = b"x" * (limit + 1)
        w.expect(
            b"set big 0 0 %d\r\n" % len(too_big) + too_big + b"\r\nget keep big\r\n",
            b"SERVER_ERROR object too large for cache\r\nVALUE keep 0 4\r\nkeep\r\nEND\r\n",
        )
        w.expect(
            b"ms big %d T0\r\n" % len(too_big) + too_big + b"\r\nmn\r\n",
            b"SERVER_ERROR object too large for cache\r\nMN\r\n",
        )
        # a refused set of an existing key removes the old value (memcached does)
        w.expect(
            b"set ok 0 0 %d\r\n" % len(too_big) + too_big + b"\r\nget ok keep\r\n",
            b"SERVER_ERROR object too large for cache\r\nVALUE keep 0 4\r\nkeep\r\nEND\r\n",
        )
    assert_alive(srv)


def test_multiget_1000_keys(server: Server, k: bytes) -> None:
    keys = [k + b"key%04d" % i for i in range(1000)]
    with server.wire(timeout=15) as w:
        w.send(b"".join(b"set %s %d 0 %d noreply\r\n%s\r\n" % (key, i, len(key), key) for i, key in enumerate(keys)))
        w.expect(b"mn\r\n", b"MN\r\n")
        line = b"get " + b" ".join(keys) + b"\r\n"
        assert len(line) > 2048  # longer than any non-get command line may be
        expect = b"".join(b"VALUE %s %d %d\r\n%s\r\n" % (key, i, len(key), key) for i, key in enumerate(keys))
        w.expect(line, expect + b"END\r\n", timeout=15)
        # gets: same values, each with a CAS number
        w.send(b"gets " + b" ".join(keys) + b"\r\n")
        resp = w.read_response((b"END\r\n",), timeout=15)
        assert resp.count(b"VALUE ") == 1000
        # half of them missing
        w.send(b"".join(b"delete %s noreply\r\n" % key for key in keys[::2]))
        expect = b"".join(
            b"VALUE %s %d %d\r\n%s\r\n" % (key, i, len(key), key) for i, key in enumerate(keys) if i % 2
        )
        w.expect(line, expect + b"END\r\n", timeout=15)
