"""The LRU crawler: background reclaim, the lru_crawler command, metadump.

Against real processes: stackmapd (each backend) and, where the behaviour is
memcached's, Debian's memcached 1.6.18 side by side with the same commands.

- Expired items in the middle of an LRU are freed without any lookup
  (curr_items falls; crawler_reclaimed counts them).  The tail reclaimer
  alone never reaches them: immortal items sit at the tail.
- `lru_crawler metadump` lists the same items with the same fields as
  memcached (times compared within a tolerance, as the two processes
  started at different moments).
- Every lru_crawler subcommand's argument checking answers byte for byte as
  memcached does, with the crawler on, off (-o no_lru_crawler) and with
  dumping disabled (-X).
- `memcached-tool HOST:PORT dump` and `keys` complete and list every key.
- A metadump larger than the socket buffers, read slowly, does not stop
  other clients of the same worker, nor make the server hold the dump.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import MEMCACHED, Server, Target
from control_support import pipeline_sets, running
from mcwire import Wire, stats

pytestmark = pytest.mark.slow

MEMCACHED_TOOL = next(
    (p for p in (shutil.which("memcached-tool"), "/usr/share/memcached/scripts/memcached-tool",
                 "/work/memcached-src/memcached-1.6.18/scripts/memcached-tool") if p and Path(p).exists()),
    None,
)
LINE = re.compile(rb"^key=(\S+) exp=(-?\d+) la=(\d+) cas=(\d+) fetch=(yes|no) cls=(\d+) size=(\d+)$")


def only_stackmapd(target: Target) -> None:
    if target.name != "stackmapd":
        pytest.skip("about stackmapd itself (memcached is the reference in the other tests)")


def wait_for(pred: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Poll pred() until true; fail naming `what` (a liveness bound, not a timing claim)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    pytest.fail(f"{what}: not within {limit:.0f} s")


def crawler_idle(srv: Server) -> bool:
    return stats(srv.host, srv.port).get("lru_crawler_running", "0") == "0"


def metadump(w: Wire, arg: bytes = b"all") -> list[bytes]:
    """The lines of one metadump, up to END."""
    w.send(b"lru_crawler metadump " + arg + b"\r\n")
    raw = w.read_response((b"END\r\n",), timeout=30)
    assert raw.endswith(b"END\r\n"), raw[-200:]
    return [ln for ln in raw[: -len(b"END\r\n")].split(b"\n") if ln]


def parse_dump(lines: list[bytes]) -> dict[bytes, tuple[object, ...]]:
    out: dict[bytes, tuple[object, ...]] = {}
    for ln in lines:
        m = LINE.match(ln)
        assert m, f"not a metadump line: {ln!r}"
        key = urllib.parse.unquote_to_bytes(m.group(1).decode())
        assert key not in out, f"{key!r} listed twice"
        out[key] = (int(m.group(2)), int(m.group(3)), int(m.group(4)), m.group(5), int(m.group(6)),
                    int(m.group(7)))
    return out


# ---------------------------------------------------------------------------
# Background reclaim
# ---------------------------------------------------------------------------


def test_expired_items_are_freed_without_a_lookup(target: Target, start_server) -> None:
    only_stackmapd(target)
    srv = start_server(target, ["-m", "64"])
    with srv.wire() as w:
        # 300 immortal items first: the LRU tail, all the tail reclaimer sees;
        # then 300 that expire in 2 seconds, in the middle of the LRU.
        w.send(b"".join(b"set imm%d 0 0 2 noreply\r\nok\r\n" % i for i in range(300)))
        w.send(b"".join(b"set tmp%d 0 2 2 noreply\r\nok\r\n" % i for i in range(300)))
        assert w.request(b"mn\r\n") == b"MN\r\n"
    assert stats(srv.host, srv.port)["curr_items"] == "600"
    wait_for(lambda: stats(srv.host, srv.port)["curr_items"] == "300", "expired items freed in the background")
    st = stats(srv.host, srv.port)
    assert st["crawler_reclaimed"] == "300"
    assert st["get_expired"] == "0" and st["cmd_get"] == "0"  # nobody looked them up
    assert int(st["crawler_items_checked"]) >= 600
    assert stats(srv.host, srv.port, "items")["items:1:crawler_reclaimed"] == "300"
    with srv.wire() as w:  # the immortal ones are all there
        keys = b" ".join(b"imm%d" % i for i in range(300))
        assert w.request(b"get " + keys + b"\r\n", (b"END\r\n",)).count(b"VALUE ") == 300


def test_crawl_command_frees_a_class(target: Target, start_server) -> None:
    """memcached's t/lru-crawler.t first part, with the background crawler on."""
    srv = start_server(target, ["-m", "32"])
    with srv.wire() as w:
        for prefix, ttl in ((b"ifoo", 0), (b"lfoo", 3600), (b"sfoo", 1)):
            w.send(b"".join(b"set %s%d 0 %d 2\r\nok\r\n" % (prefix, i, ttl) for i in range(30)))
            assert w.read_exact(len(b"STORED\r\n") * 30) == b"STORED\r\n" * 30
        time.sleep(2.5)  # the short ones expire (memcached counts in whole seconds)
        wait_for(lambda: crawler_idle(srv), "crawler idle before the crawl")
        assert w.request(b"lru_crawler crawl 1\r\n") == b"OK\r\n"
        wait_for(lambda: crawler_idle(srv), "crawl finished")
        assert stats(srv.host, srv.port, "slabs")["1:used_chunks"] == "60"
        assert len(metadump(w)) == 60


# ---------------------------------------------------------------------------
# metadump against memcached
# ---------------------------------------------------------------------------

KEYS = [b"plain", b"with%percent", b"sp\xc3\xa9cial", b"a/b?c=d&e", b"tilde~dash-dot.under_", b"x" * 250]


def fill_same(w: Wire) -> None:
    """The same items, in the same order, in any server (flags 0: see the README)."""
    for i, k in enumerate(KEYS):
        w.expect(b"set %s 0 %d 3\r\nabc\r\n" % (k, 0 if i % 2 else 1000), b"STORED\r\n")
    for i in range(200):
        w.expect(b"set n%d 0 0 %d\r\n%s\r\n" % (i, i * 7, b"v" * (i * 7)), b"STORED\r\n")
    # fetched ones say fetch=yes
    w.expect(b"get plain n3\r\n", b"VALUE plain 0 3\r\nabc\r\nVALUE n3 0 21\r\n" + b"v" * 21 + b"\r\nEND\r\n")


def test_metadump_lists_what_memcached_lists(target: Target, start_server) -> None:
    only_stackmapd(target)
    mine, ref = start_server(target, ["-m", "64"]), start_server(MEMCACHED, ["-m", "64"])
    dumps = []
    for srv in (mine, ref):
        with srv.wire() as w:
            fill_same(w)
            dumps.append(parse_dump(metadump(w)))
            assert parse_dump(metadump(w, b"hash")) == dumps[-1]
    got, want = dumps
    assert sorted(got) == sorted(want)
    for key, (exp, la, cas, fetch, cls, size) in want.items():
        g_exp, g_la, g_cas, g_fetch, g_cls, g_size = got[key]
        assert (g_cas, g_fetch, g_cls, g_size) == (cas, fetch, cls, size), key
        # unix times: the processes did each store within a second or two
        assert (exp == -1) == (g_exp == -1), key
        assert abs(g_exp - exp) <= 2 and abs(g_la - la) <= 2, key


def test_metadump_of_some_classes(target: Target, start_server) -> None:
    srv = start_server(target, ["-m", "64"])
    with srv.wire() as w:
        fill_same(w)
        everything = parse_dump(metadump(w))
        classes = sorted({v[4] for v in everything.values()})
        assert len(classes) > 2
        some = classes[:2]
        part = parse_dump(metadump(w, b",".join(b"%d" % c for c in some)))
        assert part == {k: v for k, v in everything.items() if v[4] in some}


# ---------------------------------------------------------------------------
# Argument checking, byte for byte
# ---------------------------------------------------------------------------

# Commands whose replies do not depend on timing, in order (state carries over).
SESSION = [
    b"lru_crawler",
    b"lru_crawler crawl",
    b"lru_crawler crawl 1 2",
    b"lru_crawler bogus",
    b"lru_crawler bogus x",
    b"lru_crawler mgdump all",
    b"lru_crawler crawl 0",
    b"lru_crawler crawl 64",
    b"lru_crawler crawl 1,64",
    b"lru_crawler crawl -1",
    b"lru_crawler crawl x",
    b"lru_crawler crawl 1x",
    b"lru_crawler crawl ,",
    b"lru_crawler crawl ,,,",
    b"lru_crawler crawl hash",
    b"lru_crawler metadump 0",
    b"lru_crawler metadump 1,abc",
    b"lru_crawler metadump 63",
    b"lru_crawler metadump 1,2,,3",
    b"lru_crawler sleep",
    b"lru_crawler sleep x",
    b"lru_crawler sleep -1",
    b"lru_crawler sleep 1000001",
    b"lru_crawler sleep 4294967296",
    b"lru_crawler sleep 1000000",
    b"lru_crawler sleep 0",
    b"lru_crawler tocrawl",
    b"lru_crawler tocrawl x",
    b"lru_crawler tocrawl -5",
    b"lru_crawler tocrawl 18446744073709551616",
    b"lru_crawler tocrawl 4294967295",
    b"lru_crawler tocrawl 0",
    b"lru_crawler enable",
    b"lru_crawler enable now",
    b"mg foo v\r\nlru_crawler metadump all",
    b"lru_crawler disable",
    b"lru_crawler disable",
    b"lru_crawler crawl 1",
    b"lru_crawler crawl 0",
    b"lru_crawler metadump all",
    b"lru_crawler tocrawl 5",
    b"lru_crawler sleep 7",
    b"lru_crawler enable",
    b"lru_crawler enable",
    # Last: memcached 1.6.18 keeps this connection as its dump client after
    # NOTSTARTED, so every later metadump there answers "ERROR an unknown
    # error happened" (a bug not reproduced here).
    b"lru_crawler metadump ,",
]


def run_session(srv: Server, session: list[bytes]) -> list[bytes]:
    out = []
    with srv.wire() as w:
        for cmd in session:
            w.send(cmd + b"\r\n")
            out.append(w.read_available(0.3))
        st = dict(stats(srv.host, srv.port, "settings"))
        out.append(b"settings %s %s %s" % (st["lru_crawler"].encode(), st["lru_crawler_sleep"].encode(),
                                           st["lru_crawler_tocrawl"].encode()))
    return out


@pytest.mark.parametrize("args", [[], ["-o", "no_lru_crawler"], ["-X"]], ids=["on", "off", "no-dump"])
def test_replies_match_memcached(target: Target, start_server, args: list[str]) -> None:
    only_stackmapd(target)
    mine, ref = start_server(target, args), start_server(MEMCACHED, args)
    for srv in (mine, ref):  # memcached's maintainer kicks one crawl at start: let it end
        wait_for(lambda srv=srv: crawler_idle(srv), "crawler idle at start")
    # The two sessions at once: each reply is read until its server is quiet
    # for 0.3 s, so one after the other they would take twice as long.
    with ThreadPoolExecutor(2) as pool:
        got_f, want_f = pool.submit(run_session, mine, SESSION), pool.submit(run_session, ref, SESSION)
        got, want = got_f.result(), want_f.result()
    for cmd, g, m in zip([*SESSION, b"stats settings"], got, want, strict=True):
        assert g == m, f"{cmd!r}: stackmapd {g!r}, memcached {m!r}"


def test_metadump_then_more_commands_on_the_same_connection(target: Target, start_server) -> None:
    """Commands sent after a metadump are answered after its END, in order."""
    srv = start_server(target, [])
    with srv.wire() as w:
        w.expect(b"set a 0 0 1\r\n1\r\n", b"STORED\r\n")
        w.send(b"lru_crawler metadump all\r\nget a\r\nversion\r\n")
        raw = w.read_response((b"VERSION ",), timeout=10) + w.read_line()
        dump, rest = raw.split(b"END\r\n", 1)
        assert dump.startswith(b"key=a exp=-1 ")
        assert rest.startswith(b"VALUE a 0 1\r\n1\r\nEND\r\nVERSION ")


# ---------------------------------------------------------------------------
# memcached-tool
# ---------------------------------------------------------------------------


@pytest.mark.skipif(MEMCACHED_TOOL is None or shutil.which("perl") is None, reason="memcached-tool or perl missing")
def test_memcached_tool_dump_and_keys(target: Target, start_server) -> None:
    srv = start_server(target, ["-m", "64"])
    keys = {b"k%d" % i: b"value-%d" % i for i in range(2000)}
    keys[b"pct%25key"] = b"x"  # a key metadump must URL-encode (and the tool decode)
    with srv.wire() as w:
        w.send(b"".join(b"set %s 7 0 %d noreply\r\n%s\r\n" % (k, len(v), v) for k, v in keys.items()))
        assert w.request(b"mn\r\n") == b"MN\r\n"
    addr = f"{srv.host}:{srv.port}"
    out = subprocess.run(["perl", MEMCACHED_TOOL, addr, "keys"], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    listed = parse_dump([ln for ln in out.stdout.split(b"\n") if ln])
    assert set(listed) == set(keys)
    out = subprocess.run(["perl", MEMCACHED_TOOL, addr, "dump"], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    dumped = dict(re.findall(rb"add (\S+) 7 0 \d+\r\n(.*?)\r\n", out.stdout))
    assert dumped == keys


# ---------------------------------------------------------------------------
# A dump bigger than the socket buffers, read slowly
# ---------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_big_metadump_read_slowly_while_others_are_served(target: Target, start_server) -> None:
    only_stackmapd(target)
    srv = start_server(target, ["-m", "256", "-t", "1"])  # one worker: the dump shares its loop
    n = 150_000
    with srv.wire() as w:
        for base in range(0, n, 10_000):
            w.send(b"".join(b"set some-longish-key-name-%07d 0 0 1 noreply\r\nv\r\n" % i
                            for i in range(base, base + 10_000)))
        assert w.request(b"mn\r\n") == b"MN\r\n"
    rss_before = rss_kib(srv.pid)
    # A small receive buffer, set before connecting (so the window is small
    # from the start): ~13 MB of dump cannot fit in it plus the server's
    # send buffer (at most net.core.wmem_max), so the server must wait.
    dumper = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    dumper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    dumper.settimeout(60)
    dumper.connect((srv.host, srv.port))
    dumper.sendall(b"lru_crawler metadump all\r\n")
    got = dumper.recv(4096)
    assert got.startswith(b"key=some-longish-key-name-")
    # The dumper stops reading; the other clients of its worker are served.
    with srv.wire() as other:
        for i in range(200):
            other.expect(b"set other%d 0 0 2\r\nok\r\nget other%d\r\n" % (i, i),
                         b"STORED\r\nVALUE other%d 0 2\r\nok\r\nEND\r\n" % i)
    line = b"key=some-longish-key-name-0000000 exp=-1 la=1796627150 cas=1 fetch=no cls=1 size=89\n"
    dump_bytes = n * len(line)
    grown = (rss_kib(srv.pid) - rss_before) * 1024
    assert grown < dump_bytes // 8, f"RSS grew {grown} bytes during a {dump_bytes}-byte dump"
    parts = [got]
    while not parts[-1].endswith(b"END\r\n"):
        chunk = dumper.recv(1 << 20)
        assert chunk, "connection closed before END"
        parts.append(chunk)
    dumper.close()
    raw = b"".join(parts)
    listed = parse_dump([ln for ln in raw[: -len(b"END\r\n")].split(b"\n") if ln])
    assert sum(1 for k in listed if k.startswith(b"some-longish")) == n
    assert len(raw) > dump_bytes * 9 // 10


def test_client_gone_mid_dump(target: Target, start_server) -> None:
    """A metadump whose client disconnects ends; the crawler is not left running."""
    only_stackmapd(target)
    srv = start_server(target, ["-m", "128"])
    with srv.wire() as w:
        w.send(b"".join(b"set gone-%06d 0 0 1 noreply\r\nv\r\n" % i for i in range(50_000)))
        assert w.request(b"mn\r\n") == b"MN\r\n"
    w = Wire(srv.host, srv.port, timeout=5)
    w.send(b"lru_crawler metadump all\r\n")
    assert w.read_exact(100).startswith(b"key=gone-")
    w.close()
    wait_for(lambda: crawler_idle(srv), "metadump ended after its client left")
    assert srv.alive()
    with srv.wire() as w2:
        assert len(metadump(w2)) == 50_000



@pytest.mark.parametrize("opts", ["no_modern", "no_modern,lru_crawler", "lru_crawler,no_modern", "modern",
                                  "no_modern,lru_maintainer", "no_modern,modern", "no_lru_maintainer,modern",
                                  "no_lru_crawler,lru_crawler_sleep=50,lru_crawler_tocrawl=9"])
def test_start_options_as_memcached(target: Target, start_server, opts: str) -> None:
    """-o keys act where they appear in the list, as memcached's getsubopt loop:
    no_modern only sets its keys where it stands (a later key overrides it)
    and modern changes nothing."""
    only_stackmapd(target)
    got = [stats(s.host, s.port, "settings") for s in (start_server(target, ["-o", opts]),
                                                       start_server(MEMCACHED, ["-o", opts]))]
    for name in ("lru_crawler", "lru_crawler_sleep", "lru_crawler_tocrawl", "lru_maintainer_thread",
                 "lru_segmented", "slab_reassign", "slab_automove"):
        assert got[0][name] == got[1][name], name


def test_admin_keys_and_metadump_see_the_same_items() -> None:
    """stackmapctl keys (the admin API) and lru_crawler metadump share one walker."""
    with running(["-m", "64"]) as p:
        with p.conn() as s:
            pipeline_sets(s, [(b"adm:%d" % i, 0, 3600 if i % 2 else 0, b"v" * (i % 50)) for i in range(3000)])
        r = p.ctl("--json", "keys")
        assert r.returncode == 0, r.stderr
        listed = {o["key"].encode(): o for o in map(json.loads, r.stdout.splitlines()) if "key" in o}
        with Wire("127.0.0.1", p.port) as w:
            dumped = parse_dump(metadump(w))
    assert set(listed) == set(dumped)
    for key, (exp, _la, cas, fetch, cls, _size) in dumped.items():
        o = listed[key]
        assert (o["cas"], o["slab_class"], o["fetched"]) == (cas, cls, fetch == b"yes"), key
        assert o["exptime"] == (0 if exp == -1 else exp), key


def test_half_closed_client_gets_the_whole_dump(target: Target, start_server) -> None:
    """`printf 'lru_crawler metadump all\\r\\n' | nc -N`: the end of the request
    stream does not cut the dump short, nor what was asked after it."""
    srv = start_server(target, ["-m", "64"])
    with srv.wire() as w:
        w.send(b"".join(b"set hc-%06d 0 0 1 noreply\r\nv\r\n" % i for i in range(30_000)))
        assert w.request(b"mn\r\n") == b"MN\r\n"
    s = socket.create_connection((srv.host, srv.port), timeout=30)
    s.sendall(b"lru_crawler metadump all\r\nversion\r\n")
    s.shutdown(socket.SHUT_WR)
    parts = []
    while chunk := s.recv(1 << 20):
        parts.append(chunk)
    s.close()
    raw = b"".join(parts)
    dump, _, tail = raw.partition(b"END\r\n")
    assert tail.startswith(b"VERSION ") and tail.endswith(b"\r\n")
    assert len(parse_dump([ln for ln in dump.split(b"\n") if ln])) == 30_000
