"""Text protocol: every command, through pymemcache and through raw sockets.

Expected bytes are memcached 1.6.18's (checked against Debian's binary with
`pytest --target memcached`).  One server per module and target; each test
uses its own keys, so tests do not depend on each other.
"""

from __future__ import annotations

import re
import time

import pytest
from conftest import MEMCACHED, Server, assert_alive
from mcwire import Wire, parse_stats, stats
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError

MB = 1024 * 1024


@pytest.fixture
def k(request: pytest.FixtureRequest) -> str:
    """A key prefix unique to the test (and to its parameters)."""
    return "t" + re.sub(r"[^A-Za-z0-9]", "_", request.node.name)[-60:] + "_"


# --------------------------------------------------------------- pymemcache


def test_pymemcache_storage_and_retrieval(server: Server, k: str) -> None:
    c = Client((server.host, server.port), connect_timeout=5, timeout=5, default_noreply=False)
    try:
        assert c.set(k + "a", b"hello", expire=0) is True
        assert c.get(k + "a") == b"hello"
        assert c.add(k + "a", b"other") is False
        assert c.add(k + "b", b"bee") is True
        assert c.replace(k + "a", b"world") is True
        assert c.replace(k + "nothere", b"x") is False
        assert c.append(k + "a", b"!!") is True
        assert c.prepend(k + "a", b">>") is True
        assert c.get(k + "a") == b">>world!!"
        assert c.append(k + "nothere", b"x") is False
        assert c.get_many([k + "a", k + "b", k + "nothere"]) == {
            k + "a": b">>world!!",
            k + "b": b"bee",
        }
        value, cas = c.gets(k + "a")
        assert value == b">>world!!" and int(cas) > 0
        assert c.cas(k + "a", b"swapped", cas) is True
        assert c.cas(k + "a", b"again", cas) is False  # cas is stale now
        assert c.cas(k + "nothere", b"x", cas) is None  # NOT_FOUND
        assert c.get(k + "a") == b"swapped"
        many = c.gets_many([k + "a", k + "b"])
        assert set(many) == {k + "a", k + "b"}
        assert many[k + "a"][0] == b"swapped"
        assert c.delete(k + "a") is True
        assert c.delete(k + "a") is False
        assert c.get(k + "a") is None
        assert c.set(k + "n", b"10") is True
        assert c.incr(k + "n", 5) == 15
        assert c.decr(k + "n", 20) == 0
        assert c.incr(k + "missing", 1) is None
        assert c.touch(k + "b", 100) is True
        assert c.touch(k + "missing", 100) is False
        # (pymemcache has no gat/gats: see test_raw_gat_gats_touch)
        assert c.version()
        with pytest.raises(MemcacheClientError):
            c.incr(k + "b", 1)  # non-numeric value
    finally:
        c.close()


def test_pymemcache_noreply(server: Server, k: str) -> None:
    c = Client((server.host, server.port), connect_timeout=5, timeout=5, default_noreply=True)
    try:
        c.set(k + "x", b"1")
        c.add(k + "y", b"2")
        c.append(k + "x", b"3")
        c.prepend(k + "x", b"0")
        c.replace(k + "y", b"4")
        assert c.get_many([k + "x", k + "y"]) == {k + "x": b"013", k + "y": b"4"}
        c.delete(k + "y")
        c.incr(k + "x", 1, noreply=True)
        # memcached rewrites a shorter result in place, padded with spaces
        assert c.get(k + "x").rstrip(b" ") == b"14"
        assert c.get(k + "y") is None
    finally:
        c.close()


def test_pymemcache_flags_and_binary_values(server: Server, k: str) -> None:
    c = Client((server.host, server.port), connect_timeout=5, timeout=5, default_noreply=False)
    try:
        blob = bytes(range(256)) * 4 + b"\r\nEND\r\n"
        assert c.set(k + "bin", blob, flags=4294967295) is True
        assert c.get(k + "bin") == blob
        with Wire(server.host, server.port) as w:
            w.expect(
                f"get {k}bin\r\n".encode(),
                f"VALUE {k}bin 4294967295 {len(blob)}\r\n".encode() + blob + b"\r\nEND\r\n",
            )
    finally:
        c.close()


# ---------------------------------------------------------------- raw bytes


def test_raw_storage_commands(wire: Wire, k: str) -> None:
    key = k.encode()
    cases = [
        (b"set %sa 5 0 3\r\nabc\r\n", b"STORED\r\n"),
        (b"get %sa\r\n", b"VALUE %sa 5 3\r\nabc\r\nEND\r\n"),
        (b"add %sa 0 0 1\r\nz\r\n", b"NOT_STORED\r\n"),
        (b"add %sb 7 0 2\r\nbb\r\n", b"STORED\r\n"),
        (b"replace %sc 0 0 1\r\nc\r\n", b"NOT_STORED\r\n"),
        (b"replace %sb 8 0 3\r\nBBB\r\n", b"STORED\r\n"),
        (b"append %sa 99 0 2\r\nde\r\n", b"STORED\r\n"),
        (b"prepend %sa 99 0 2\r\n12\r\n", b"STORED\r\n"),
        (b"append %sc 0 0 1\r\nc\r\n", b"NOT_STORED\r\n"),
        (b"prepend %sc 0 0 1\r\nc\r\n", b"NOT_STORED\r\n"),
        # append/prepend keep the original flags
        (b"get %sa %sb %sc\r\n", b"VALUE %sa 5 7\r\n12abcde\r\nVALUE %sb 8 3\r\nBBB\r\nEND\r\n"),
        (b"set %se 0 0 0\r\n\r\n", b"STORED\r\n"),
        (b"get %se\r\n", b"VALUE %se 0 0\r\n\r\nEND\r\n"),
        (b"delete %sa\r\n", b"DELETED\r\n"),
        (b"delete %sa\r\n", b"NOT_FOUND\r\n"),
        (b"delete %sa 0\r\n", b"NOT_FOUND\r\n"),
        (b"delete %sb 5\r\n", b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"),
        (b"get %sa\r\n", b"END\r\n"),
    ]
    for send, expect in cases:
        n = send.count(b"%s")
        m = expect.count(b"%s")
        wire.expect(send % ((key,) * n), expect % ((key,) * m))


def test_raw_noreply_storage(wire: Wire, k: str) -> None:
    key = k.encode()
    batch = (
        b"set %sa 1 0 1 noreply\r\na\r\n"
        b"add %sa 1 0 1 noreply\r\nX\r\n"
        b"add %sb 2 0 1 noreply\r\nb\r\n"
        b"replace %sb 3 0 1 noreply\r\nB\r\n"
        b"append %sa 0 0 1 noreply\r\nz\r\n"
        b"prepend %sa 0 0 1 noreply\r\ny\r\n"
        b"delete %sc noreply\r\n"
        b"incr %sa 1 noreply\r\n"
        b"touch %sb 100 noreply\r\n"
        b"get %sa %sb\r\n"
    ) % ((key,) * 11)
    wire.expect(batch, b"VALUE %sa 1 3\r\nyaz\r\nVALUE %sb 3 1\r\nB\r\nEND\r\n" % (key, key))
    # cas noreply: neither the success nor the EXISTS answer is sent
    wire.send(b"gets %sb\r\n" % key)
    line = wire.read_line()
    cas = int(line.split()[4])
    wire.read_response((b"END\r\n",))
    wire.expect(
        b"cas %sb 0 0 1 %d noreply\r\nC\r\ncas %sb 0 0 1 %d noreply\r\nD\r\nget %sb\r\n"
        % (key, cas, key, cas, key),
        b"VALUE %sb 0 1\r\nC\r\nEND\r\n" % key,
    )
    wire.expect_silence(0.1)


def test_raw_multiget(wire: Wire, k: str) -> None:
    key = k.encode()
    wire.expect(b"set %s1 1 0 1\r\n1\r\nset %s2 2 0 2\r\n22\r\n" % (key, key), b"STORED\r\nSTORED\r\n")
    wire.expect(
        b"get %s1 %smiss %s2 %s1\r\n" % (key, key, key, key),
        b"VALUE %s1 1 1\r\n1\r\nVALUE %s2 2 2\r\n22\r\nVALUE %s1 1 1\r\n1\r\nEND\r\n" % (key, key, key),
    )
    wire.send(b"gets %s1 %s2 %smiss\r\n" % (key, key, key))
    resp = wire.read_response((b"END\r\n",))
    m = re.fullmatch(
        rb"VALUE %s1 1 1 (\d+)\r\n1\r\nVALUE %s2 2 2 (\d+)\r\n22\r\nEND\r\n" % (key, key), resp
    )
    assert m, resp
    assert m.group(1) != m.group(2), "two items share a CAS value"
    wire.expect(b"get %smiss\r\n" % key, b"END\r\n")
    wire.expect(b"get\r\n", b"ERROR\r\n")
    wire.expect(b"gets\r\n", b"ERROR\r\n")


def test_long_get_line_arriving_in_pieces(wire: Wire, k: str) -> None:
    """A get line far longer than the 2048-byte line limit, sent in 1000-byte
    pieces, whose hits add up to more than the 4 MiB output queue limit: every
    VALUE comes back in order (stackmapd answers such a line key by key as it
    arrives, pausing while the client has not read its output)."""
    key = k.encode()
    val = b"v" * 50_000
    wire.expect(b"set %sbig 3 0 %d\r\n%s\r\n" % (key, len(val), val), b"STORED\r\n")
    n = 200
    line = b"get " + b" ".join(b"%sbig %smiss%d" % (key, key, i) for i in range(n)) + b"\r\nget %sbig\r\n" % key
    for i in range(0, len(line), 1000):
        wire.send(line[i:i + 1000])
    one = b"VALUE %sbig 3 %d\r\n%s\r\n" % (key, len(val), val)
    want = one * n + b"END\r\n" + one + b"END\r\n"
    assert wire.read_exact(len(want), timeout=30) == want
    wire.expect_silence(0.1)


def test_long_get_line_key_too_long_after_hits(server: Server, k: str) -> None:
    """A get line over 2048 bytes with a key over 250 bytes after a hit: the
    line ends in CLIENT_ERROR and the connection stays usable.  memcached buffers
    the whole line and sends only the error; stackmapd, answering the keys as
    they arrive, may already have sent the hit's VALUE (README, Compatibility)."""
    key = k.encode()
    with server.wire() as w:
        w.expect(b"set %sh 0 0 2\r\nhi\r\n" % key, b"STORED\r\n")
        hit = b"VALUE %sh 0 2\r\nhi\r\n" % key
        w.send(b"get %sh " % key + b"k" * 3000)
        if server.target.backend is None:
            w.expect_silence(0.2)  # memcached waits for the whole line
        else:
            w.expect(b"", hit)  # stackmapd answers the keys so far
        w.send(b"k" * 3000 + b" %sh\r\nget %sh\r\n" % (key, key))
        w.expect(b"", b"CLIENT_ERROR bad command line format\r\n" + hit + b"END\r\n")
        w.expect_silence(0.1)


def test_raw_gat_gats_touch(wire: Wire, k: str) -> None:
    key = k.encode()
    wire.expect(b"set %st 5 100 2\r\nhi\r\n" % key, b"STORED\r\n")
    wire.expect(b"touch %st 10\r\n" % key, b"TOUCHED\r\n")
    wire.expect(b"touch %snokey 10\r\n" % key, b"NOT_FOUND\r\n")
    wire.expect(b"gat 0 %st %snokey\r\n" % (key, key), b"VALUE %st 5 2\r\nhi\r\nEND\r\n" % key)
    wire.send(b"gats 100 %st\r\n" % key)
    assert re.fullmatch(
        rb"VALUE %st 5 2 \d+\r\nhi\r\nEND\r\n" % key, wire.read_response((b"END\r\n",))
    )
    wire.expect(b"gat %st\r\n" % key, b"CLIENT_ERROR invalid exptime argument\r\n")
    wire.expect(b"gat abc %st\r\n" % key, b"CLIENT_ERROR invalid exptime argument\r\n")
    wire.expect(b"touch %st\r\n" % key, b"ERROR\r\n")
    wire.expect(b"touch %st abc\r\n" % key, b"CLIENT_ERROR invalid exptime argument\r\n")
    # gat with a negative TTL expires the item immediately (after returning it)
    wire.expect(b"gat -1 %st\r\n" % key, b"VALUE %st 5 2\r\nhi\r\nEND\r\n" % key)
    wire.expect(b"get %st\r\n" % key, b"END\r\n")


def test_raw_cas(server: Server, k: str) -> None:
    key = k.encode()
    with server.wire() as a, server.wire() as b:
        a.expect(b"set %sc 0 0 1\r\n1\r\n" % key, b"STORED\r\n")
        a.send(b"gets %sc\r\n" % key)
        cas_a = int(a.read_line().split()[4])
        a.read_response((b"END\r\n",))
        b.send(b"gets %sc\r\n" % key)
        cas_b = int(b.read_line().split()[4])
        b.read_response((b"END\r\n",))
        assert cas_a == cas_b
        a.expect(b"cas %sc 0 0 1 %d\r\nA\r\n" % (key, cas_a), b"STORED\r\n")
        b.expect(b"cas %sc 0 0 1 %d\r\nB\r\n" % (key, cas_b), b"EXISTS\r\n")
        b.expect(b"cas %snone 0 0 1 %d\r\nB\r\n" % (key, cas_b), b"NOT_FOUND\r\n")
        b.expect(b"get %sc\r\n" % key, b"VALUE %sc 0 1\r\nA\r\nEND\r\n" % key)
        b.send(b"gets %sc\r\n" % key)
        new_cas = int(b.read_line().split()[4])
        b.read_response((b"END\r\n",))
        assert new_cas != cas_a, "a successful cas must change the CAS value"
        # any modification (append, incr, touch does not) changes the CAS value
        b.expect(b"append %sc 0 0 1\r\nx\r\n" % key, b"STORED\r\n")
        b.expect(b"cas %sc 0 0 1 %d\r\nB\r\n" % (key, new_cas), b"EXISTS\r\n")
        # too few tokens: ERROR, and the data line is then a command of its own
        b.expect(b"cas %sc 0 0 1\r\nB\r\n" % key, b"ERROR\r\nERROR\r\n")
        b.expect(b"cas %sc 0 0 1 abc\r\nB\r\n" % key, b"CLIENT_ERROR bad command line format\r\nERROR\r\n")


def test_raw_incr_decr(wire: Wire, k: str) -> None:
    key = k.encode()
    cases = [
        (b"set %sn 0 0 20\r\n18446744073709551615\r\n", b"STORED\r\n"),
        (b"incr %sn 1\r\n", b"0\r\n"),  # wraps at 2^64
        (b"set %sn 0 0 20\r\n18446744073709551610\r\n", b"STORED\r\n"),
        (b"incr %sn 10\r\n", b"4\r\n"),
        (b"decr %sn 5\r\n", b"0\r\n"),  # floors at 0
        (b"decr %sn 18446744073709551615\r\n", b"0\r\n"),
        (b"incr %sn 18446744073709551615\r\n", b"18446744073709551615\r\n"),
        (b"set %sn 0 0 2\r\n10\r\n", b"STORED\r\n"),
        (b"incr %sn 5\r\n", b"15\r\n"),
        (b"get %sn\r\n", b"VALUE %sn 0 2\r\n15\r\nEND\r\n"),
        (b"incr %sn 0\r\n", b"15\r\n"),
        (b"incr %sn 1000\r\n", b"1015\r\n"),
        (b"get %sn\r\n", b"VALUE %sn 0 4\r\n1015\r\nEND\r\n"),
        (b"decr %sn 1\r\n", b"1014\r\n"),
        (b"set %ss 0 0 3\r\nabc\r\n", b"STORED\r\n"),
        (b"incr %ss 1\r\n", b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"),
        (b"decr %ss 1\r\n", b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"),
        (b"set %ss 0 0 3\r\n12a\r\n", b"STORED\r\n"),
        (b"incr %ss 1\r\n", b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"),
        (b"set %ss 0 0 2\r\n-1\r\n", b"STORED\r\n"),
        (b"incr %ss 1\r\n", b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"),
        (b"incr %sn -1\r\n", b"CLIENT_ERROR invalid numeric delta argument\r\n"),
        (b"incr %sn abc\r\n", b"CLIENT_ERROR invalid numeric delta argument\r\n"),
        (b"decr %sn 18446744073709551616\r\n", b"CLIENT_ERROR invalid numeric delta argument\r\n"),
        (b"incr %snokey 1\r\n", b"NOT_FOUND\r\n"),
        (b"decr %snokey 1\r\n", b"NOT_FOUND\r\n"),
        (b"incr %sn\r\n", b"ERROR\r\n"),
    ]
    for send, expect in cases:
        wire.expect(send % ((key,) * send.count(b"%s")), expect % ((key,) * expect.count(b"%s")))


def test_flush_all(wire: Wire, k: str) -> None:
    key = k.encode()
    wire.expect(b"set %sa 0 0 1\r\na\r\nset %sb 0 0 1\r\nb\r\n" % (key, key), b"STORED\r\nSTORED\r\n")
    wire.expect(b"flush_all\r\n", b"OK\r\n")
    wire.expect(b"get %sa %sb\r\n" % (key, key), b"END\r\n")
    wire.expect(b"set %sa 0 0 1\r\na\r\n" % key, b"STORED\r\n")
    wire.expect(b"flush_all noreply\r\nget %sa\r\n" % key, b"END\r\n")
    wire.expect(b"flush_all 0\r\n", b"OK\r\n")
    wire.expect(b"flush_all abc\r\n", b"CLIENT_ERROR invalid exptime argument\r\n")
    # items stored after a flush are visible
    wire.expect(b"set %sa 0 0 1\r\nA\r\nget %sa\r\n" % (key, key), b"STORED\r\nVALUE %sa 0 1\r\nA\r\nEND\r\n" % key)


def test_flush_all_delayed(start_server, target) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(target)
    with srv.wire() as w:
        w.expect(b"set fa 0 0 1\r\na\r\n", b"STORED\r\n")
        w.expect(b"flush_all 2\r\n", b"OK\r\n")
        w.expect(b"get fa\r\n", b"VALUE fa 0 1\r\na\r\nEND\r\n")  # not yet
        time.sleep(3.2)
        w.expect(b"get fa\r\n", b"END\r\n")  # flushed when the delay passed
        w.expect(b"set fb 0 0 1\r\nb\r\nget fb\r\n", b"STORED\r\nVALUE fb 0 1\r\nb\r\nEND\r\n")


def test_version_verbosity_quit(server: Server) -> None:
    with server.wire() as w:
        w.send(b"version\r\n")
        assert re.fullmatch(rb"VERSION [0-9][^\s]*\r\n", w.read_line())
        w.expect(b"verbosity 1\r\n", b"OK\r\n")
        w.expect(b"verbosity 0 noreply\r\nversion\r\n", b"VERSION")
        w.read_line()
        w.expect(b"verbosity\r\n", b"ERROR\r\n")
        w.expect(b"verbosity abc\r\n", b"CLIENT_ERROR bad command line format\r\n")
        w.expect(b"verbosity 0\r\n", b"OK\r\n")
        w.send(b"quit\r\n")
        assert w.closed_by_peer(3.0), "quit did not close the connection"
        assert w.buf == b"", f"quit answered {w.buf!r}"
    assert_alive(server)


def test_shutdown_disabled(server: Server) -> None:
    with server.wire() as w:
        w.expect(b"shutdown\r\n", b"ERROR: shutdown not enabled\r\n")
        w.expect(b"version\r\n", b"VERSION")
    assert_alive(server)


def test_shutdown_enabled(start_server, target) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(target, ["-A"])
    with srv.wire() as w:
        w.send(b"shutdown\r\n")
        w.closed_by_peer(5.0)
    try:
        srv.proc.wait(timeout=10)
    except Exception:
        pytest.fail("process still running 10 s after 'shutdown' with -A")
    assert srv.proc.returncode is not None


@pytest.mark.parametrize("which", ["memcached", "target"])
def test_flush_all_disabled(start_server, target, which: str) -> None:  # type: ignore[no-untyped-def]
    """-F: flush_all is refused (and still counted), the items stay; memcached's answers."""
    srv = start_server(MEMCACHED if which == "memcached" else target, ["-F"])
    with srv.wire() as w:
        w.expect(b"set f 0 0 1\r\nx\r\n", b"STORED\r\n")
        w.expect(b"flush_all\r\n", b"CLIENT_ERROR flush_all not allowed\r\n")
        w.expect(b"flush_all 0\r\n", b"CLIENT_ERROR flush_all not allowed\r\n")
        w.expect(b"flush_all noreply\r\nget f\r\n", b"VALUE f 0 1\r\nx\r\nEND\r\n")
    assert stats(srv.host, srv.port)["cmd_flush"] == "3"
    assert stats(srv.host, srv.port, "settings")["flush_enabled"] == "no"


@pytest.mark.parametrize("which", ["memcached", "target"])
def test_stats_conns_shows_the_asker_parsing(start_server, target, which: str) -> None:  # type: ignore[no-untyped-def]
    """The connection that sends "stats conns" is listed as conn_parse_cmd, one mid-value as conn_nread."""
    srv = start_server(MEMCACHED if which == "memcached" else target, [])
    with srv.wire() as busy, srv.wire() as asker:
        busy.send(b"set foo 0 0 6\r\n")
        time.sleep(0.2)
        asker.send(b"stats conns\r\n")
        lines = asker.read_response((b"END\r\n",), timeout=5).decode().splitlines()
    states = [line.split()[2] for line in lines if line.startswith("STAT ") and line.split()[1].endswith(":state")]
    assert sorted(states) == ["conn_listening", "conn_nread", "conn_parse_cmd"]


def test_cache_memlimit(start_server, target) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(target, ["-m", "64"])
    with srv.wire() as w:
        w.expect(b"cache_memlimit 100\r\n", b"OK\r\n")
        assert stats(srv.host, srv.port)["limit_maxbytes"] == str(100 * MB)
        assert stats(srv.host, srv.port, "settings")["maxbytes"] == str(100 * MB)
        w.expect(b"cache_memlimit 0\r\n", b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n")
        w.expect(b"cache_memlimit abc\r\n", b"ERROR\r\n")
        w.expect(b"cache_memlimit\r\n", b"ERROR\r\n")
        w.expect(b"cache_memlimit 80 noreply\r\nversion\r\n", b"VERSION")
        w.read_line()
        assert stats(srv.host, srv.port)["limit_maxbytes"] == str(80 * MB)
        w.expect(b"set m 0 0 1\r\nm\r\nget m\r\n", b"STORED\r\nVALUE m 0 1\r\nm\r\nEND\r\n")


def test_expiry(wire: Wire, k: str) -> None:
    key = k.encode()
    now = int(time.time())
    month = 30 * 24 * 3600
    # The clock counts whole seconds, so a TTL of N lives N-1 to N seconds:
    # rel and abs must outlive the round trips up to the first get below
    # even on a loaded machine (a TTL of 1 may end at once), and be gone
    # after the 3.5 s sleep.
    wire.expect(b"set %srel 0 2 1\r\nr\r\n" % key, b"STORED\r\n")
    wire.expect(b"set %sabs 0 %d 1\r\na\r\n" % (key, now + 3), b"STORED\r\n")
    wire.expect(b"set %sfar 0 %d 1\r\nf\r\n" % (key, now + 3600), b"STORED\r\n")
    wire.expect(b"set %smonth 0 %d 1\r\nm\r\n" % (key, month), b"STORED\r\n")  # relative
    wire.expect(b"set %sneg 0 -1 1\r\nn\r\n" % key, b"STORED\r\n")
    wire.expect(b"set %spast 0 %d 1\r\np\r\n" % (key, now - 10), b"STORED\r\n")
    wire.expect(b"set %sover 0 %d 1\r\no\r\n" % (key, month + 1), b"STORED\r\n")  # 1970: absolute
    # immediately expired: negative, absolute in the past, > 30 days (absolute 1970)
    wire.expect(b"get %sneg %spast %sover\r\n" % (key, key, key), b"END\r\n")
    wire.expect(
        b"get %srel %sabs %sfar %smonth\r\n" % (key, key, key, key),
        b"VALUE %srel 0 1\r\nr\r\nVALUE %sabs 0 1\r\na\r\nVALUE %sfar 0 1\r\nf\r\n"
        b"VALUE %smonth 0 1\r\nm\r\nEND\r\n" % (key, key, key, key),
    )
    wire.expect(b"touch %sfar 1\r\n" % key, b"TOUCHED\r\n")
    time.sleep(3.5)
    wire.expect(
        b"get %srel %sabs %sfar %smonth\r\n" % (key, key, key, key),
        b"VALUE %smonth 0 1\r\nm\r\nEND\r\n" % key,
    )
    # an expired key is free for add
    wire.expect(b"add %srel 0 0 1\r\nR\r\n" % key, b"STORED\r\n")


# -------------------------------------------------------------------- stats

# The names memcached 1.6.18 prints, which stackmapd claims to print too
# (values may differ).  Left out on purpose, because stackmapd has no such
# feature: libevent (our backend's name), TLS (ssl_*, only with -Z),
# extstore (ext_*), memory-file restart (memory_file).
GENERAL_NAMES = """pid uptime time version pointer_size rusage_user rusage_system
max_connections curr_connections total_connections rejected_connections connection_structures
response_obj_oom response_obj_count response_obj_bytes read_buf_count read_buf_bytes
read_buf_bytes_free read_buf_oom reserved_fds cmd_get cmd_set cmd_flush cmd_touch cmd_meta
get_hits get_misses get_expired get_flushed delete_misses delete_hits incr_misses incr_hits
decr_misses decr_hits cas_misses cas_hits cas_badval touch_hits touch_misses store_too_large
store_no_memory auth_cmds auth_errors bytes_read bytes_written limit_maxbytes accepting_conns
listen_disabled_num time_in_listen_disabled_us threads conn_yields hash_power_level hash_bytes
hash_is_expanding slab_reassign_rescues slab_reassign_chunk_rescues
slab_reassign_evictions_nomem slab_reassign_inline_reclaim slab_reassign_busy_items
slab_reassign_busy_deletes slab_reassign_running slabs_moved lru_crawler_running
lru_crawler_starts lru_maintainer_juggles malloc_fails log_worker_dropped log_worker_written
log_watcher_skipped log_watcher_sent log_watchers unexpected_napi_ids round_robin_fallback
bytes curr_items total_items
slab_global_page_pool expired_unfetched evicted_unfetched evicted_active evictions reclaimed
crawler_reclaimed crawler_items_checked lrutail_reflocked moves_to_cold moves_to_warm
moves_within_lru direct_reclaims lru_bumps_dropped""".split()

# memcached 1.6.18 names stackmapd leaves out of "stats": none (the values of
# the response-object and read-buffer names are ours: README).
GENERAL_NOT_OURS: list[str] = []

SETTINGS_NAMES = """maxbytes maxconns tcpport udpport inter verbosity evictions
domain_socket shutdown_command growth_factor chunk_size num_threads
detail_enabled reqs_per_event cas_enabled tcp_backlog binding_protocol
auth_enabled_sasl auth_enabled_ascii item_size_max maxconns_fast hashpower_init slab_reassign
slab_automove slab_chunk_max lru_crawler tail_repair_time flush_enabled dump_enabled
hash_algorithm lru_maintainer_thread lru_segmented hot_lru_pct warm_lru_pct hot_max_factor
warm_max_factor temp_lru temporary_ttl idle_timeout watcher_logbuf_size worker_logbuf_size track_sizes
inline_ascii_response""".split()

# "stats settings" names left out: they configure machinery stackmapd does not
# have (UDP, unix-socket umask, stats detail prefixes, slab automover tuning,
# LRU crawler tuning, the read-buffer pool).  README lists them.
SETTINGS_NOT_OURS = """oldest umask num_threads_per_udp stat_key_prefix slab_automove_ratio
slab_automove_window lru_crawler_sleep lru_crawler_tocrawl read_buf_mem_limit
slab_automove_freeratio""".split()

ITEMS_FIELDS = """number number_hot number_warm number_cold age_hot age_warm age mem_requested
evicted evicted_nonzero evicted_time outofmemory tailrepairs reclaimed expired_unfetched
evicted_unfetched evicted_active crawler_reclaimed crawler_items_checked lrutail_reflocked
moves_to_cold moves_to_warm moves_within_lru direct_reclaims hits_to_hot hits_to_warm
hits_to_cold hits_to_temp""".split()

SLABS_FIELDS = """chunk_size chunks_per_page total_pages total_chunks used_chunks free_chunks
free_chunks_end get_hits cmd_set delete_hits incr_hits decr_hits cas_hits cas_badval
touch_hits""".split()


def test_stats_general(start_server, target) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(target, ["-m", "32", "-t", "2", "-c", "500"])
    with srv.wire() as w:
        w.expect(b"set s1 0 0 5\r\nhello\r\nget s1 nope\r\n", b"STORED\r\nVALUE s1 0 5\r\nhello\r\nEND\r\n")
        w.expect(b"incr nope 1\r\ntouch s1 0\r\nflush_all 100\r\n", b"NOT_FOUND\r\nTOUCHED\r\nOK\r\n")
        w.send(b"stats\r\n")
        pairs = parse_stats(w.read_response((b"END\r\n",)))
    names = [n for n, _ in pairs]
    assert len(names) == len(set(names)), "duplicate stats names"
    missing = [n for n in GENERAL_NAMES if n not in names]
    assert not missing, f"stats lacks {missing}"
    st = dict(pairs)
    assert int(st["pid"]) > 0
    assert 0 <= int(st["uptime"]) < 600
    assert abs(int(st["time"]) - time.time()) < 5
    assert re.fullmatch(r"[0-9][^\s]*", st["version"])
    assert st["pointer_size"] in ("32", "64")
    float(st["rusage_user"]), float(st["rusage_system"])
    assert st["max_connections"] == "500"
    assert int(st["curr_connections"]) >= 1
    assert int(st["total_connections"]) >= int(st["curr_connections"])
    assert st["limit_maxbytes"] == str(32 * MB)
    assert st["threads"] == "2"
    assert st["cmd_get"] == "2" and st["get_hits"] == "1" and st["get_misses"] == "1"
    assert st["cmd_set"] == "1"
    assert st["incr_misses"] == "1" and st["incr_hits"] == "0"
    assert st["cmd_touch"] == "1" and st["touch_hits"] == "1"
    assert st["cmd_flush"] == "1"
    assert st["curr_items"] == "1" and st["total_items"] == "1"
    assert 0 < int(st["bytes"]) < 1024
    assert int(st["bytes_read"]) > 40 and int(st["bytes_written"]) > 20
    assert st["evictions"] == "0"
    assert st["accepting_conns"] == "1"
    for n in GENERAL_NAMES:
        if n not in ("version", "rusage_user", "rusage_system"):
            assert re.fullmatch(r"\d+", st[n]), f"stats {n} = {st[n]!r}"


def test_stats_settings(start_server, target) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(target, ["-m", "48", "-t", "3", "-c", "321", "-I", "2m", "-A", "-R", "7"])
    st_pairs = []
    with srv.wire() as w:
        w.send(b"stats settings\r\n")
        st_pairs = parse_stats(w.read_response((b"END\r\n",)))
    st = dict(st_pairs)
    missing = [n for n in SETTINGS_NAMES if n not in st]
    assert not missing, f"stats settings lacks {missing}"
    assert st["maxbytes"] == str(48 * MB)
    assert st["maxconns"] == "321"
    assert st["tcpport"] == str(srv.port)
    assert st["num_threads"] == "3"
    assert st["item_size_max"] == str(2 * MB)
    assert st["shutdown_command"] == "yes"
    assert st["reqs_per_event"] == "7"
    assert st["cas_enabled"] == "yes"
    assert st["growth_factor"] == "1.25"
    assert st["chunk_size"] == "48"
    assert st["evictions"] == "on"
    assert st["verbosity"] == "0"


def test_stats_items_slabs_conns(server: Server, k: str) -> None:
    key = k.encode()
    with server.wire() as w:
        w.expect(b"set %sa 0 0 5\r\nhello\r\nget %sa\r\n" % (key, key), b"STORED\r\nVALUE")
        w.read_response((b"END\r\n",))
        w.send(b"stats items\r\n")
        items = parse_stats(w.read_response((b"END\r\n",)))
        w.send(b"stats slabs\r\n")
        slabs = parse_stats(w.read_response((b"END\r\n",)))
        w.send(b"stats conns\r\n")
        conns = parse_stats(w.read_response((b"END\r\n",)))
        local_port = w.sock.getsockname()[1]
    classes = {n.split(":")[1] for n, _ in items}
    assert classes, "stats items is empty after a set"
    for cls in classes:
        for f in ITEMS_FIELDS:
            assert f"items:{cls}:{f}" in dict(items), f"stats items lacks items:{cls}:{f}"
    assert sum(int(v) for n, v in items if n.endswith(":number")) >= 1
    sd = dict(slabs)
    assert "active_slabs" in sd and "total_malloced" in sd
    slab_classes = {n.split(":")[0] for n, _ in slabs if ":" in n}
    assert slab_classes >= classes
    for cls in slab_classes:
        for f in SLABS_FIELDS:
            assert f"{cls}:{f}" in sd, f"stats slabs lacks {cls}:{f}"
        assert int(sd[f"{cls}:chunk_size"]) > 0
    assert int(sd["active_slabs"]) >= 1
    for n, _ in conns:
        assert re.fullmatch(r"\d+:(addr|listen_addr|state|secs_since_last_cmd)", n), n
    cd = dict(conns)
    mine = [n.split(":")[0] for n, v in conns if v == f"tcp:127.0.0.1:{local_port}"]
    assert len(mine) == 1, f"our connection (port {local_port}) not in stats conns: {conns}"
    assert cd[f"{mine[0]}:listen_addr"] == f"tcp:127.0.0.1:{server.port}"
    assert f"{mine[0]}:state" in cd
    assert any(v == "conn_listening" for n, v in conns if n.endswith(":state"))
    with server.wire() as w:
        w.expect(b"stats nosuchgroup\r\n", b"ERROR\r\n")
        w.expect(b"stats reset\r\n", b"RESET\r\n")
