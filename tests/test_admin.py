"""The admin API and stackmapctl against a real stackmapd.

Every command of ``stackmapctl`` runs as a real process against a real
server; what it did is checked over memcached's own protocol.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from control_support import Proc, http, pipeline_sets, request, running, start

from stackmapd.admin import Access, AdminError, host_forms

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def srv() -> Iterator[Proc]:
    with running(["-m", "64"]) as p:
        yield p


def stats(p: Proc, group: bytes = b"") -> dict[str, str]:
    with p.conn() as s:
        raw = request(s, b"stats " + group + b"\r\n" if group else b"stats\r\n")
    return {ln.split(" ")[1]: ln.split(" ")[2] for ln in raw.decode().split("\r\n") if ln.startswith("STAT ")}


def get(p: Proc, key: bytes) -> bytes:
    with p.conn() as s:
        return request(s, b"get " + key + b"\r\n")


def fill(p: Proc, prefix: bytes, n: int, size: int = 10, exptime: int = 0) -> None:
    with p.conn() as s:
        pipeline_sets(s, [(prefix + b"%d" % i, i, exptime, b"v" * size) for i in range(n)])


def test_health_and_readiness(srv: Proc) -> None:
    assert http("GET", srv.url + "/healthz") == (200, b'{"status": "ok"}\n')
    assert json.loads(http("GET", srv.url + "/readyz")[1]) == {  # start() runs -t 2
        "ready": True, "workers": [{"worker": 0, "state": "serving"}, {"worker": 1, "state": "serving"}]}
    r = srv.ctl("health")
    assert r.returncode == 0 and r.stdout.startswith("ready"), r.stderr


def test_keys_lists_with_prefix_and_paginates(srv: Proc) -> None:
    fill(srv, b"user:", 3000, size=33)
    fill(srv, b"sess:", 500, exptime=3600)
    r = srv.ctl("keys", "--prefix", "user:")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert sorted(ln.split("\t")[0] for ln in lines) == sorted(f"user:{i}" for i in range(3000))
    assert all("\tsize=33\t" in ln and "\texp=never\t" in ln for ln in lines)
    assert "# 3000 keys" in r.stderr

    r = srv.ctl("--json", "keys", "--prefix", "sess:")
    objs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert objs[-1] == {"done": True, "cursor": "0", "count": 500}
    now = time.time()
    assert all(3500 < o["exptime"] - now < 3700 and o["size"] == 10 for o in objs[:-1])

    seen: list[str] = []
    cursor = ""
    for _page in range(10):
        args = ["--json", "keys", "--prefix", "user:", "--limit", "1000"] + (["--cursor", cursor] if cursor else [])
        objs = [json.loads(ln) for ln in srv.ctl(*args).stdout.splitlines()]
        seen += [o["key"] for o in objs[:-1]]
        if objs[-1]["done"]:
            break
        cursor = objs[-1]["cursor"]
    assert sorted(seen) == sorted(f"user:{i}" for i in range(3000))


def test_get_meta_and_delete(srv: Proc) -> None:
    with srv.conn() as s:
        request(s, b"set meta:1 42 0 5\r\nhello\r\n", b"STORED\r\n")
        cas = int(request(s, b"gets meta:1\r\n").split(b"\r\n")[0].split()[4])
    r = srv.ctl("--json", "get-meta", "meta:1")
    meta = json.loads(r.stdout)
    assert (meta["key"], meta["flags"], meta["size"], meta["cas"], meta["exptime"]) == ("meta:1", 42, 5, cas, 0)
    assert meta["fetched"] is True
    assert srv.ctl("delete", "meta:1").stdout == "deleted 1\n"
    assert srv.ctl("delete", "meta:1").stdout == "deleted 0\n"
    assert get(srv, b"meta:1") == b"END\r\n"
    r = srv.ctl("get-meta", "meta:1")
    assert r.returncode == 1 and "not found" in r.stderr


def test_delete_prefix_is_counted_and_idempotent(srv: Proc) -> None:
    fill(srv, b"gone:", 2000)
    fill(srv, b"keep:", 10)
    assert srv.ctl("delete", "--prefix", "gone:").stdout == "deleted 2000\n"
    assert srv.ctl("delete", "--prefix", "gone:").stdout == "deleted 0\n"
    assert get(srv, b"gone:7") == b"END\r\n"
    assert get(srv, b"keep:7").startswith(b"VALUE keep:7 ")
    r = srv.ctl("delete", "--prefix", "")
    assert r.returncode == 1 and "use flush" in r.stderr


def test_set_verbosity_and_stats(srv: Proc) -> None:
    assert srv.ctl("set-verbosity", "2").stdout == "verbosity 2\n"
    assert stats(srv, b"settings")["verbosity"] == "2"
    srv.ctl("set-verbosity", "0")
    r = srv.ctl("--json", "stats", "all")
    groups = json.loads(r.stdout)["stats"]
    assert set(groups) >= {"general", "backend", "settings", "items", "slabs"}
    assert groups["settings"]["maxconns"] == "1024"
    assert groups["backend"]["backend"] in ("epoll", "uring", "stackmap")
    assert "backend" not in groups["general"]
    assert srv.ctl("set-verbosity", "9").returncode == 1


def test_delayed_and_immediate_flush() -> None:
    p = start()
    try:
        fill(p, b"f:", 100)
        # flush_all N takes effect N-1 to N seconds on (memcached's rule):
        # 4 leaves a stackmapctl start on a loaded host 3 s to spare.
        assert p.ctl("flush", "--delay", "4").returncode == 0
        assert get(p, b"f:1").startswith(b"VALUE")
        time.sleep(4.2)
        assert get(p, b"f:1") == b"END\r\n"
        fill(p, b"g:", 100)
        assert p.ctl("flush").stdout == "flushed\n"
        assert get(p, b"g:1") == b"END\r\n"
    finally:
        p.stop()
        p.cleanup()


def test_shrinking_the_memory_limit_evicts_down_to_it() -> None:
    p = start(["-m", "64"])
    try:
        fill(p, b"big:", 30_000, size=1000)
        assert int(stats(p)["bytes"]) > 30 * MIB
        r = p.ctl("--json", "set-memory-limit", "8")
        result = json.loads(r.stdout)
        after = stats(p)
        assert after["limit_maxbytes"] == str(8 * MIB)
        assert int(after["bytes"]) <= 8 * MIB
        assert result["evicted"] == int(after["evictions"]) > 0
        # The slab page mover then empties pages into the pool until the
        # pages fit the limit too, evicting what no free chunk can take.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            after = stats(p)
            if int(stats(p, b"slabs")["total_malloced"]) <= 8 * MIB and after["slab_reassign_running"] == "0":
                break
            time.sleep(0.2)
        slabs = stats(p, b"slabs")
        assert int(slabs["total_malloced"]) <= 8 * MIB
        gone = result["evicted"] + int(after["slab_reassign_evictions_nomem"])
        assert int(after["curr_items"]) == 30_000 - gone
    finally:
        p.stop()
        p.cleanup()


def test_token_is_required_when_configured(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    p = start(["--admin-token-file", str(token_file)])
    try:
        r = p.ctl("stats")
        assert r.returncode == 1 and "Authorization: Bearer" in r.stderr
        assert p.ctl("stats", token="wrong").returncode == 1
        assert p.ctl("stats", "general", token="s3cret-token").returncode == 0
        assert http("GET", p.url + "/metrics")[0] == 200  # scrapes never need it
        assert http("GET", p.url + "/admin/stats", token="s3cret-token")[0] == 200
    finally:
        p.stop()
        p.cleanup()


def test_admin_beyond_loopback_needs_a_token() -> None:
    with pytest.raises(AdminError) as info:
        Access(token=None, loopback=False).check(None, ["10.0.0.1:9150"])
    assert info.value.status == 403
    Access(token=None, loopback=True, hosts=host_forms("127.0.0.1", 9150)).check(None, ["127.0.0.1:9150"])
    Access(token="t", loopback=False).check("Bearer t", ["cache-1.example:9150"])
    with pytest.raises(AdminError):
        Access(token="t", loopback=True).check("Bearer nope", ["127.0.0.1:9150"])


def test_host_forms_of_each_loopback_listen_address() -> None:
    assert host_forms("127.0.0.1", 9150) == {"127.0.0.1:9150", "localhost:9150"}
    assert host_forms("::1", 9150) == {"[::1]:9150", "localhost:9150"}
    assert host_forms("[::1]", 80) == {"[::1]:80", "localhost:80", "[::1]", "localhost"}
    assert host_forms("localhost", 1) == {"localhost:1", "127.0.0.1:1", "[::1]:1"}


def test_unreachable_server_exits_2() -> None:
    import subprocess

    from control_support import BIN, free_port

    r = subprocess.run([str(BIN / "stackmapctl"), "--url", f"http://127.0.0.1:{free_port()}", "stats"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "cannot reach" in r.stderr
