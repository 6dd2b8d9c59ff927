"""Plain ``stats`` prints memcached 1.6.18's names, in its order; ``stats backend`` ours.

memcached's own t/stats.t counts the names plain ``stats`` prints (83 with
its flags), and tools parse them: so plain ``stats`` prints exactly the
names memcached prints with the same flags, in memcached's order, and
stackmapd's own figures (the backend in use, syscalls, io_uring,
/dev/stackmap and kTLS counters) are the ``stats backend`` group, which
/metrics reads too.  Differential: /usr/bin/memcached and stackmapd are
started with the same flags and the ordered lists of names compared, for a
few flag sets that change what memcached prints.

The values of memcached's response_obj_* and read_buf_* names are ours
(README, "stats compatibility"): response_obj_* the output queue's scratch
chunks, read_buf_* the workers' buffer pools.  They are checked to move as
that memory does.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import MEMCACHED, Server, Target
from mcbinary import STAT, req, split_packets
from mcwire import parse_stats

# Names only stackmapd prints, all in "stats backend".
BACKEND_NAMES = """backend syscalls uring_submits uring_cqes uring_buf_ring_empty uring_send_zc
uring_batch_waits uring_batch_timeouts uring_batch_rests uring_bufs_published uring_batch_avg
stackmap_syncs stackmap_rx_slots stackmap_tx_slots stackmap_bad_slots stackmap_tx_lent
stackmap_tx_lent_copied stackmap_slots_per_sync""".split()
TLS_BACKEND_NAMES = ["ssl_ktls_conns", "ssl_userspace_conns"]

FLAG_SETS = [
    # t/stats.t's
    ["-I", "1024", "-o", "slab_chunk_max=1024,no_lru_crawler,no_lru_maintainer"],
    [],
    ["-t", "4"],
    ["-o", "no_lru_crawler"],
    ["-o", "no_lru_maintainer"],
    ["-o", "lru_crawler,lru_maintainer"],
    ["-o", "no_slab_reassign"],
    ["-o", "idle_timeout=30"],
    ["-M"],
    ["-o", "no_modern"],
]

# memcached's no_modern also turns maxconns_fast off: memcached then leaves a
# connection over -c waiting instead of refusing it, and stops printing
# rejected_connections.  stackmapd always refuses (stats settings:
# maxconns_fast yes), so it keeps counting them (README).
EXTRA_WITH = {"no_modern": ["rejected_connections"]}


def names(srv: Server, group: str = "") -> list[str]:
    cmd = b"stats\r\n" if not group else f"stats {group}\r\n".encode()
    with srv.wire() as w:
        return [n for n, _ in parse_stats(w.request(cmd, (b"END\r\n",)))]


def values(srv: Server, group: str = "") -> dict[str, str]:
    cmd = b"stats\r\n" if not group else f"stats {group}\r\n".encode()
    with srv.wire() as w:
        return dict(parse_stats(w.request(cmd, (b"END\r\n",))))


@pytest.mark.parametrize("flags", FLAG_SETS, ids=lambda f: " ".join(f) or "default")
def test_plain_stats_names_are_memcacheds(start_server: Callable[..., Server], target: Target,
                                          flags: list[str]) -> None:
    ref = names(start_server(MEMCACHED, flags))
    ours = names(start_server(target, flags))
    extra = [n for f in flags for key, more in EXTRA_WITH.items() if key in f for n in more]
    assert [n for n in ours if n not in extra] == ref
    if not flags:
        assert len(ours) == 92  # memcached 1.6.18's default count


def make_cert(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "c.pem", tmp / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True, timeout=60)
    key.chmod(0o644)  # memcached drops to another user before it reads the key
    return cert, key


@pytest.mark.parametrize("session_cache", [False, True], ids=["tls", "tls-session-cache"])
def test_plain_stats_names_with_tls(start_server: Callable[..., Server], target: Target, tmp_path: Path,
                                    session_cache: bool) -> None:
    """-Z adds memcached's ssl_* names to plain stats, and ours (kTLS) to stats backend."""
    cert, key = make_cert(tmp_path)
    opts = f"ssl_chain_cert={cert},ssl_key={key}" + (",ssl_session_cache" if session_cache else "")
    # the one listener is plaintext (notls:), to ask on
    flags = ["-Z", "-o", opts, "-l", "notls:127.0.0.1"]
    ref, ours = start_server(MEMCACHED, flags), start_server(target, flags)
    assert names(ours) == names(ref)
    assert "ssl_handshake_errors" in names(ours)
    assert names(ours, "backend") == BACKEND_NAMES + TLS_BACKEND_NAMES


def test_stats_backend(start_server: Callable[..., Server], target: Target) -> None:
    """stats backend names the backend first, then its counters; none is in plain stats."""
    srv = start_server(target, [])
    got = values(srv, "backend")
    assert list(got) == BACKEND_NAMES
    assert got["backend"] == target.backend
    general = names(srv)
    assert not set(BACKEND_NAMES) & set(general)
    assert int(got["syscalls"]) > 0  # the worker loops have run
    if target.backend == "uring":
        assert int(got["uring_submits"]) > 0
    else:
        assert got["uring_submits"] == "0"
    # the binary protocol's STAT "backend" gives the same names
    with srv.wire() as w:
        w.send(req(STAT, b"backend", opaque=5))
        got_names: list[str] = []
        buf = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            more = w.read_exact(1)
            buf += more + w.buf
            w.buf = b""
            packets, buf = split_packets(buf)
            done = False
            for p in packets:
                assert (p.opcode, p.status, p.opaque) == (STAT, 0, 5), p
                if not p.key:
                    done = True
                    break
                got_names.append(p.key.decode())
            if done:
                break
    assert got_names == BACKEND_NAMES


def test_response_and_read_buffer_figures(start_server: Callable[..., Server], target: Target) -> None:
    """response_obj_* follow the output queue's chunks, read_buf_* the pools' blocks."""
    srv = start_server(target, ["-t", "1"])
    st = values(srv)
    assert st["unexpected_napi_ids"] == "0" and st["round_robin_fallback"] == "0"
    # idle (the asking connection has nothing queued when the figures are taken)
    assert st["response_obj_count"] == "0"
    assert st["read_buf_bytes_free"] == st["read_buf_bytes"]
    value = b"v" * 1000  # copied into the queue's chunks (not sent from item memory)
    n = 12000
    with srv.wire() as slow:
        assert slow.request(b"set k 0 0 1000\r\n" + value + b"\r\n") == b"STORED\r\n"
        # answers the reader does not read: beyond the socket buffers they wait in the queue
        slow.send(b"get k\r\n" * n)
        busy: dict[str, str] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            busy = values(srv)
            if int(busy["response_obj_count"]) > 0:
                break
            time.sleep(0.05)
        assert int(busy["response_obj_count"]) > 0, busy
        assert int(busy["response_obj_bytes"]) >= int(busy["response_obj_count"]) * 16384
        # the queue's iovec and held-item arrays are pool blocks in use
        assert int(busy["read_buf_count"]) >= 1
        assert int(busy["read_buf_bytes_free"]) < int(busy["read_buf_bytes"])
        want = (b"VALUE k 0 1000\r\n" + value + b"\r\nEND\r\n") * n
        got = 0
        while got < len(want):
            chunk = slow.sock.recv(1 << 20)
            assert chunk
            got += len(chunk)
    # sent: the chunks and blocks are free again, kept for reuse
    deadline = time.monotonic() + 10
    idle = values(srv)
    while idle["response_obj_count"] != "0" and time.monotonic() < deadline:
        time.sleep(0.05)
        idle = values(srv)
    assert idle["response_obj_count"] == "0"
    assert int(idle["response_obj_bytes"]) > 0
    assert int(idle["read_buf_bytes"]) > 0
    assert idle["read_buf_bytes_free"] == idle["read_buf_bytes"]
    # stats reset leaves levels be
    with srv.wire() as w:
        assert w.request(b"stats reset\r\n") == b"RESET\r\n"
    after = values(srv)
    assert after["read_buf_bytes"] == idle["read_buf_bytes"]
    assert after["response_obj_bytes"] == idle["response_obj_bytes"]


CACHEDUMP_SESSION = (b"set foo 0 0 6\r\nfooval\r\nset bar 0 1000 3\r\nabc\r\nget foo\r\n"
                     b"stats cachedump 1 100\r\nstats cachedump 1 1\r\nstats cachedump 1 0\r\n"
                     b"stats cachedump 1\r\nstats cachedump x 1\r\nstats cachedump 1 -1\r\n"
                     b"stats cachedump 64 1\r\nstats cachedump 63 0\r\nstats cachedump 0 0\r\nmn\r\n")


@pytest.mark.parametrize("flags", [["-o", "no_lru_maintainer"], [], ["-X"]], ids=lambda f: " ".join(f) or "default")
def test_stats_cachedump(start_server: Callable[..., Server], target: Target, flags: list[str]) -> None:
    """memcached's "stats cachedump <class> <limit>" (t/stats.t uses it): one class's
    COLD LRU, newest first, with its refusals; expiry times are unix times."""
    out = []
    for t in (MEMCACHED, target):
        with start_server(t, flags).wire() as w:
            raw = w.request(CACHEDUMP_SESSION, (b"MN\r\n",))
        raw = re.sub(rb"; \d{9,} s\]", b"; T s]", raw)
        if flags != ["-o", "no_lru_maintainer"]:
            # Segmented, new items start in HOT and the maintainer thread moves them to COLD
            # when it gets round to it, in memcached as in stackmapd: whether a dump already
            # lists them is timing.  Compare the rest; the listing is compared unsegmented.
            raw = re.sub(rb"ITEM [^\r]*\r\n", b"", raw)
        out.append(raw)
    assert out[1] == out[0]
    if flags == ["-o", "no_lru_maintainer"]:  # not segmented: every item is in COLD
        assert b"ITEM bar [3 b; T s]\r\nITEM foo [6 b; 0 s]\r\nEND\r\n" in out[1]
