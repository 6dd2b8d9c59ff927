"""The watch command: memcached's log streams, line for line.

A connection that sends "watch <kinds>" gets "OK", then one line per event
of those kinds: "ts=SECS.USECS gid=N type=..." in memcached 1.6's format.
ts and gid differ from run to run and are checked for their shape only;
the rest of each line is compared exactly (run with --target memcached to
see Debian's memcached give the same lines).  A watcher that reads too
slowly loses lines, counted in log_watcher_skipped and announced with
"skipped=N"; the clients it watches never wait for it.
"""

from __future__ import annotations

import re
import socket
import time

import pytest
from conftest import MEMCACHED, Server, Target
from mcwire import Wire, stats

HEAD = re.compile(rb"^ts=\d+\.\d+ gid=(\d+) ")
WAIT = 10.0  # seconds a line may take to arrive (the logger thread batches them)


def watcher(server: Server, kinds: str) -> Wire:
    w = server.wire(timeout=WAIT)
    w.expect(b"watch %s\r\n" % kinds.encode() if kinds else b"watch\r\n", b"OK\r\n")
    return w


def lines(w: Wire, n: int) -> list[bytes]:
    """The next n log lines without their ts= and gid= (checked, gids increasing)."""
    out = []
    last_gid = 0
    for _ in range(n):
        line = w.read_response((b"\n",), timeout=WAIT)
        m = HEAD.match(line)
        assert m and line.endswith(b"\n") and not line.endswith(b"\r\n"), line
        gid = int(m.group(1))
        assert gid > last_gid, (gid, last_gid)
        last_gid = gid
        out.append(line[m.end():-1])
    return out


def events_of(w: Wire, port: int, n: int) -> list[bytes]:
    """The next n connevents lines about the client on port (other clients' may come between)."""
    out: list[bytes] = []
    while len(out) < n:
        line = lines(w, 1)[0]
        if b" rport=%d " % port in line:
            out.append(line)
    return out


def own_fd(w: Wire) -> int:
    """The descriptor the server gives this connection: its line in stats conns (by our port)."""
    port = w.sock.getsockname()[1]
    raw = w.request(b"stats conns\r\n", (b"END\r\n",))
    for ln in raw.split(b"\r\n"):
        m = re.fullmatch(rb"STAT (\d+):addr tcp:127\.0\.0\.1:%d" % port, ln)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no stats conns line for port {port}: {raw!r}")


def test_fetchers_and_mutations(server: Server) -> None:
    with watcher(server, "fetchers mutations") as wt, server.wire() as c:
        fd = own_fd(c)
        c.expect(b"set wkey 0 0 5\r\nhello\r\n", b"STORED\r\n")
        c.expect(b"get wkey nokey\r\n", b"VALUE wkey 0 5\r\nhello\r\nEND\r\n")
        c.expect(b"add wkey 0 0 1\r\nx\r\n", b"NOT_STORED\r\n")
        c.expect(b"set n,foo 0 0 2\r\nab\r\n", b"STORED\r\n")
        got = lines(wt, 8)
        cls = re.search(rb"clsid=(\d+)", got[1]).group(1)  # type: ignore[union-attr]
        assert got == [
            b"type=item_get key=wkey status=not_found clsid=0 cfd=%d size=0" % fd,
            b"type=item_store key=wkey status=stored cmd=set ttl=0 clsid=%s cfd=%d size=5" % (cls, fd),
            b"type=item_get key=wkey status=found clsid=%s cfd=%d size=5" % (cls, fd),
            b"type=item_get key=nokey status=not_found clsid=0 cfd=%d size=0" % fd,
            b"type=item_get key=wkey status=found clsid=%s cfd=%d size=5" % (cls, fd),
            b"type=item_store key=wkey status=not_stored cmd=add ttl=0 clsid=%s cfd=%d size=1" % (cls, fd),
            b"type=item_get key=n%%2Cfoo status=not_found clsid=0 cfd=%d size=0" % fd,
            b"type=item_store key=n%%2Cfoo status=stored cmd=set ttl=0 clsid=%s cfd=%d size=2" % (cls, fd),
        ]


def test_mutations_only_and_ttl(server: Server) -> None:
    with watcher(server, "mutations") as wt, server.wire() as c:
        fd = own_fd(c)
        c.expect(b"set ttlkey 0 100 3\r\nabc\r\n", b"STORED\r\n")
        c.expect(b"cas ttlkey 0 0 1 1\r\nz\r\n", b"EXISTS\r\n")
        got = lines(wt, 2)
        assert re.fullmatch(rb"type=item_store key=ttlkey status=stored cmd=set ttl=(99|100) clsid=\d+ cfd=%d size=3"
                            % fd, got[0]), got
        assert re.fullmatch(rb"type=item_store key=ttlkey status=exists cmd=cas ttl=0 clsid=\d+ cfd=%d size=1" % fd,
                            got[1]), got


def test_connevents(server: Server) -> None:
    with watcher(server, "connevents") as wt:
        c = socket.create_connection((server.host, server.port), timeout=WAIT)
        port = c.getsockname()[1]
        c.sendall(b"version\r\n")
        assert c.recv(100).startswith(b"VERSION ")
        c.sendall(b"quit\r\n")
        assert c.recv(100) == b""
        c.close()
        new, close = events_of(wt, port, 2)
        m = re.fullmatch(rb"type=conn_new rip=127\.0\.0\.1 rport=%d transport=tcp cfd=(\d+)" % port, new)
        assert m, new
        assert close == b"type=conn_close rip=127.0.0.1 rport=%d transport=tcp reason=normal cfd=%s" % (
            port, m.group(1)), close
        # a line that looks like HTTP: memcached hangs up, an error close
        c = socket.create_connection((server.host, server.port), timeout=WAIT)
        port = c.getsockname()[1]
        c.sendall(b"GET / HTTP/1.1\r\n")
        new, close = events_of(wt, port, 2)
        c.close()
        assert new.startswith(b"type=conn_new rip=127.0.0.1 rport=%d transport=tcp cfd=" % port), new
        assert re.fullmatch(rb"type=conn_close rip=127\.0\.0\.1 rport=%d transport=tcp reason=error cfd=\d+" % port,
                            close), close


def test_evictions(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    server: Server = start_server(target, ["-m", "2"])
    value = b"E" * 10000
    with watcher(server, "evictions") as wt, server.wire(timeout=30) as c:
        for i in range(600):  # 6 MB into 2 MB
            c.send(b"set ev%d 0 0 %d noreply\r\n%s\r\n" % (i, len(value), value))
        c.expect(b"mn\r\n", b"MN\r\n", timeout=30)
        first = lines(wt, 1)[0]
    assert re.fullmatch(rb"type=eviction key=ev\d+ fetch=no ttl=-1 la=\d+ clsid=\d+ size=10000", first), first
    assert int(stats(server.host, server.port)["evictions"]) > 0


def test_slow_watcher_skips_and_never_blocks(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    server: Server = start_server(target, ["-o", "watcher_logbuf_size=8"])
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect((server.host, server.port))
    slow.settimeout(WAIT)
    slow.sendall(b"watch fetchers\r\n")
    assert slow.recv(4) == b"OK\r\n"
    key = b"k" * 200
    with server.wire(timeout=30) as c:
        for _ in range(40):  # 20000 lookups while the watcher reads nothing
            c.send(b"".join(b"get %s%d\r\n" % (key, i) for i in range(500)))
            got = c.read_exact(5 * 500)
            assert got == b"END\r\n" * 500
    deadline = time.monotonic() + WAIT
    st = stats(server.host, server.port)
    while int(st["log_watcher_skipped"]) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        st = stats(server.host, server.port)
    assert int(st["log_watcher_skipped"]) > 0, st
    assert int(st["log_watcher_sent"]) > 0, st
    # what it reads now: whole lines, and "skipped=N" before the first line after a gap
    slow.settimeout(0.5)
    data = b""
    with server.wire() as c:
        deadline = time.monotonic() + WAIT
        while b"skipped=" not in data and time.monotonic() < deadline:
            c.expect(b"get after\r\n", b"END\r\n")
            try:
                data += slow.recv(1 << 16)
            except TimeoutError:
                pass
    slow.close()
    assert re.search(rb"\nskipped=\d+\nts=\d+\.\d+ gid=\d+ type=item_get key=", data), data[-500:]


def test_watcher_count_follows_connections(server: Server) -> None:
    def watchers() -> int:
        return int(stats(server.host, server.port)["log_watchers"])

    base = watchers()
    w1 = watcher(server, "fetchers")
    w2 = watcher(server, "")
    assert watchers() == base + 2
    w1.close()
    w2.close()
    deadline = time.monotonic() + WAIT
    while watchers() != base and time.monotonic() < deadline:
        time.sleep(0.05)
    assert watchers() == base


def test_bad_watch_commands(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    server: Server = start_server(target, [])
    with server.wire() as c:
        c.expect(b"watch fetchers bogus\r\n", b"ERROR\r\n")
        # still a normal connection
        c.expect(b"get x\r\n", b"END\r\n")
        c.expect(b"version\r\nwatch\r\n", b"VERSION ")
        c.read_line()
        c.expect(b"", b"ERROR cannot pipeline other commands before watch\r\n")
        c.expect(b"watch noreply\r\nget x\r\n", b"END\r\n")  # (noreply silences its ERROR)
    many = [watcher(server, "mutations") for _ in range(20)]
    with server.wire() as c:
        c.expect(b"watch\r\n", b"WATCHER_TOO_MANY log watcher limit reached\r\n")
    for w in many:
        w.close()
    nowatch: Server = start_server(target, ["-W"])
    with nowatch.wire() as c:
        c.expect(b"watch mutations\r\n", b"CLIENT_ERROR watch commands not allowed\r\n")
        c.expect(b"get x\r\n", b"END\r\n")


def test_nothing_is_logged_without_a_watcher(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    server: Server = start_server(target, [])
    with server.wire() as c:
        for i in range(50):
            c.expect(b"set q%d 0 0 1\r\nq\r\n" % i, b"STORED\r\n")
            c.expect(b"get q%d\r\n" % i, b"VALUE q%d 0 1\r\nq\r\nEND\r\n" % i)
    st = stats(server.host, server.port)
    assert st["log_worker_written"] == "0" and st["log_watchers"] == "0", st


@pytest.mark.parametrize("kinds", ["fetchers", "mutations evictions"])
def test_a_watcher_ignores_what_it_is_sent(start_server, target: Target, kinds: str) -> None:  # type: ignore[no-untyped-def]
    server: Server = start_server(target, [])
    with watcher(server, kinds) as wt:
        wt.send(b"get x\r\nversion\r\nset a 0 0 1\r\nb\r\n")
        wt.expect_silence(0.3)
        assert stats(server.host, server.port)["curr_items"] == "0"


def test_stats_conns_in_descriptor_order(server: Server) -> None:
    """memcached walks its connections by descriptor; t/watcher_connid.t reads its own fd from the last line."""
    clients = [server.wire() for _ in range(6)]
    try:
        for c in clients:  # each accepted by its worker
            c.expect(b"mn\r\n", b"MN\r\n")
        raw = clients[0].request(b"stats conns\r\n", (b"END\r\n",))
        fds = [int(m) for m in re.findall(rb"STAT (\d+):state ", raw)]
        assert len(fds) >= 6 and fds == sorted(fds), raw
        assert {own_fd(c) for c in clients} <= set(fds)
    finally:
        for c in clients:
            c.close()


def test_stats_reset_zeroes_the_log_counters(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    server: Server = start_server(target, [])
    with watcher(server, "mutations") as wt, server.wire() as c:
        for i in range(3):
            c.expect(b"set r%d 0 0 1\r\nr\r\n" % i, b"STORED\r\n")
        lines(wt, 3)  # delivered: counted
        st = stats(server.host, server.port)
        assert int(st["log_worker_written"]) >= 3 and int(st["log_watcher_sent"]) >= 3, st
        c.expect(b"stats reset\r\n", b"RESET\r\n")
        st = stats(server.host, server.port)
        assert (st["log_worker_written"], st["log_watcher_sent"], st["log_watchers"]) == ("0", "0", "1"), st


def test_delete_and_incr_log_their_lookup(server: Server) -> None:
    """memcached's delete and incr/decr fetch the item first: fetchers sees it."""
    with watcher(server, "fetchers") as wt, server.wire() as c:
        fd = own_fd(c)
        c.expect(b"set num 0 0 1\r\n7\r\n", b"STORED\r\n")
        c.expect(b"incr num 1\r\n", b"8\r\n")
        c.expect(b"delete num\r\n", b"DELETED\r\n")
        c.expect(b"decr num 1\r\n", b"NOT_FOUND\r\n")
        got = lines(wt, 4)
        cls = re.search(rb"clsid=(\d+)", got[1]).group(1)  # type: ignore[union-attr]
        assert got == [
            b"type=item_get key=num status=not_found clsid=0 cfd=%d size=0" % fd,
            b"type=item_get key=num status=found clsid=%s cfd=%d size=1" % (cls, fd),
            b"type=item_get key=num status=found clsid=%s cfd=%d size=1" % (cls, fd),
            b"type=item_get key=num status=not_found clsid=0 cfd=%d size=0" % fd,
        ]


def fill_and_flush(srv: Server) -> None:
    """About six pages of 1000-byte values in one class, then all of them flushed:
    the class holds far more than 2.5 pages of free chunks."""
    with srv.wire() as w:
        value = b"x" * 1000
        w.send(b"".join(b"set k%d 0 0 1000 noreply\r\n%s\r\n" % (i, value) for i in range(6000)))
        w.expect(b"flush_all\r\n", b"OK\r\n")


def slab_moves(w: Wire, seconds: float) -> list[bytes]:
    """The slab_move lines a sysevents watcher gets within `seconds` (memcached's
    crawler lines, which stackmapd does not send, are left out)."""
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = w.read_response((b"\n",), timeout=max(0.05, deadline - time.monotonic()))
        if not line.endswith(b"\n"):  # nothing more within the time
            w.buf = line + w.buf
            break
        m = HEAD.match(line)
        assert m and line.endswith(b"\n"), line
        if b" type=slab_move " in line:
            out.append(line[m.end():-1])
            break
    return out


@pytest.mark.parametrize("which", ["memcached", "target"])
def test_sysevents_slab_move(start_server, target: Target, which: str) -> None:  # type: ignore[no-untyped-def]
    """The automover's decision to give a mostly free class's page to the global
    pool reaches a sysevents watcher as memcached's slab_move line (both servers
    make the same decision here: the class of 1000-byte values, 12, to 0)."""
    srv = start_server(MEMCACHED if which == "memcached" else target,
                       ["-m", "64", "-o", "slab_automove_window=3"])
    w = watcher(srv, "sysevents")
    fill_and_flush(srv)
    assert slab_moves(w, 30) == [b"type=slab_move src=12 dst=0"]


@pytest.mark.parametrize("which", ["memcached", "target"])
def test_sysevents_no_line_for_slabs_reassign(start_server, target: Target, which: str) -> None:  # type: ignore[no-untyped-def]
    """A page moved by "slabs reassign" is not logged, as in memcached (only its automover logs)."""
    srv = start_server(MEMCACHED if which == "memcached" else target, ["-m", "64", "-o", "slab_automove=0"])
    w = watcher(srv, "sysevents")
    fill_and_flush(srv)
    with srv.wire() as c:
        assert c.request(b"slabs reassign 12 0\r\n") == b"OK\r\n"
        deadline = time.monotonic() + WAIT
        while stats(srv.host, srv.port)["slabs_moved"] == "0":
            assert time.monotonic() < deadline, "the page never moved"
            time.sleep(0.05)
    assert slab_moves(w, 2) == []


# memcached's refused-store line gives its clsid= and cfd= from misplaced
# arguments (clsid= is the descriptor, cfd= whatever follows); ours are the
# true ones (0: no class, and the descriptor).  The rest is compared.
REFUSED = re.compile(rb"(type=item_store key=\S+ status=\S+ cmd=\S+ ttl=\d+) clsid=\d+ cfd=-?\d+ (size=\d+)")


def binary_set(key: bytes, value: bytes, cas: int = 0) -> bytes:
    body = bytes(8) + key + value  # extras: flags 0, exptime 0
    return (bytes([0x80, 0x01]) + len(key).to_bytes(2, "big") + bytes([8, 0, 0, 0]) + len(body).to_bytes(4, "big")
            + bytes(4) + cas.to_bytes(8, "big") + body)


@pytest.mark.parametrize("which", ["memcached", "target"])
def test_refused_stores_log_item_store(start_server, target: Target, which: str) -> None:  # type: ignore[no-untyped-def]
    """A store refused for its size logs status=too_large from text and meta (it
    did from text only), and from binary (which crashes memcached 1.6.18 while a
    mutations watcher is on: only stackmapd is asked)."""
    srv = start_server(MEMCACHED if which == "memcached" else target,
                       ["-I", "1024", "-o", "slab_chunk_max=1024"])
    big = b"B" * 2048
    with watcher(srv, "mutations") as wt, srv.wire() as c:
        fd = own_fd(c)
        c.expect(b"set tl 0 0 2048\r\n" + big + b"\r\n", b"SERVER_ERROR object too large for cache\r\n")
        c.expect(b"ms tl 2048 T0\r\n" + big + b"\r\n", b"SERVER_ERROR object too large for cache\r\n")
        c.expect(b"ms tl 2048 MA\r\n" + big + b"\r\n", b"SERVER_ERROR object too large for cache\r\n")
        c.expect(b"ms tl 2048 C99\r\n" + big + b"\r\n", b"SERVER_ERROR object too large for cache\r\n")
        got = lines(wt, 4)
        assert [REFUSED.sub(rb"\1 \2", line) for line in got] == [
            b"type=item_store key=tl status=too_large cmd=%s ttl=0 size=0" % cmd
            for cmd in (b"set", b"set", b"append", b"cas")]
        if which == "memcached":
            return
        assert all(b" clsid=0 cfd=%d " % fd in line for line in got), got
    with watcher(srv, "mutations") as wt, srv.wire() as b:  # (a binary connection of its own)
        b.send(binary_set(b"tl", big))
        assert b.read_exact(24 + len(b"Too large."))[:2] == b"\x81\x01"
        b.send(binary_set(b"tl", big, cas=5))
        assert b.read_exact(24 + len(b"Too large."))[:2] == b"\x81\x01"
        got = lines(wt, 2)
        for line, cmd in zip(got, (b"set", b"cas"), strict=True):
            assert re.fullmatch(rb"type=item_store key=tl status=too_large cmd=%s ttl=0 clsid=0 cfd=\d+ size=0" % cmd,
                                line), got


# What memcached 1.6.18 answers to "watch" pipelined after other commands in
# one batch: "ERROR cannot pipeline ..." while a reply of the batch is unsent
# (a response object stacked: every command leaves one, noreply and quiet ones
# too), but OK after a get's END or an mn, which make it send all it has.
PIPELINED_WATCH = [
    b"get miss\r\nwatch\r\n", b"get a b\r\nwatch\r\n", b"get h\r\nwatch\r\n", b"get h miss\r\nwatch\r\n",
    b"gets miss\r\nwatch\r\n", b"gat 0 miss\r\nwatch\r\n", b"get miss\r\nget miss\r\nwatch\r\n",
    b"mn\r\nwatch\r\n", b"set s 0 0 1\r\ns\r\nget h\r\nwatch\r\n", b"version\r\nwatch\r\n",
    b"mg miss v\r\nwatch\r\n", b"mg miss v q\r\nwatch\r\n", b"delete nope noreply\r\nwatch\r\n",
    b"set q 0 0 1 noreply\r\nq\r\nwatch\r\n", b"touch nope 1\r\nwatch\r\n", b"incr nope 1\r\nwatch\r\n",
    b"get " + b"k" * 251 + b"\r\nwatch\r\n", b"get miss\r\nversion\r\nwatch\r\n", b"version\r\nmn\r\nwatch\r\n",
]


def pipelined_watch_answers(srv: Server) -> list[bytes]:
    with srv.wire() as c:
        c.expect(b"set h 0 0 1\r\nh\r\n", b"STORED\r\n")
    out = []
    for batch in PIPELINED_WATCH:
        with srv.wire() as c:
            c.send(batch)
            out.append(c.read_response((b"OK\r\n", b"before watch\r\n")))
    return out


def test_watch_pipelined_after_other_commands(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    ref = pipelined_watch_answers(start_server(MEMCACHED, []))
    assert pipelined_watch_answers(start_server(target, [])) == ref
    assert ref[0] == b"END\r\nOK\r\n" and ref[9].endswith(b"ERROR cannot pipeline other commands before watch\r\n")
