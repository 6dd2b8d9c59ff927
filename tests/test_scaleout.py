"""stackmapd as a node of a memcached pool: behind twemproxy, under client hashing.

Users who outgrow one node put several behind twemproxy (nutcracker) or hash
keys in the client.  These tests build both layouts on 127.0.0.1 with three
nodes and hold stackmapd to what memcached nodes do in the same place:

* every command twemproxy forwards gives the same bytes through a pool of
  stackmapd nodes as through a pool of memcached nodes (same names, so
  ketama puts every key on the same node index in both);
* pymemcache and memaslap run through the proxy;
* a node killed under load is ejected and comes back; clients see only
  the errors a dead node causes, and never a value other than the last one
  written (also when it restarts with --snapshot: a snapshot that SIGKILL
  did not refresh is refused by --snapshot-max-age);
* pymemcache's HashClient with a ketama hasher places keys exactly where
  the proxy does, and fails over the same way.

Timings and throughput are not asserted; tests/scaleout_bench.py measures
them for README "Scaling out".
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, MEMCACHED, Target, free_port, stackmapd_executable
from ketama import KetamaHash
from mcwire import Wire, stats
from scaleout_pool import (
    FailoverResult,
    Pool,
    VersionedLoad,
    disallowed,
    failover,
    proxy_client,
    start_pool,
    start_proxy,
)

pytestmark = pytest.mark.skipif(not os.access("/usr/sbin/nutcracker", os.X_OK),
                                reason="needs Debian's nutcracker (make test installs it)")

BACKENDS = [b.strip() for b in os.environ.get("STACKMAP_BACKENDS", "epoll,uring").split(",") if b.strip()]
STACKMAPD = [Target("stackmapd", b) for b in BACKENDS]

# ---------------------------------------------------------------------------
# Byte-for-byte: a session through the proxy, memcached pool vs stackmapd pool
# ---------------------------------------------------------------------------

END_MARK = b"VALUE __end__ 0 1\r\nZ\r\nEND\r\n"
KEYS = [f"key{i}" for i in range(40)]


def session_steps() -> list[bytes]:
    """Every command twemproxy 0.5 forwards for memcached, in cases that
    exercise its multi-key fan-out and noreply.  "{cas:KEY}" is replaced by
    the CAS this pool last returned for KEY."""
    steps: list[bytes] = []
    sets = b"".join(b"set %s %d 0 %d\r\n%s\r\n" % (k.encode(), i, len(k) + 2, (k + "=v").encode())
                    for i, k in enumerate(KEYS))
    steps.append(sets)  # 40 pipelined sets over the three nodes
    allkeys = " ".join(KEYS).encode()
    steps += [
        b"get " + allkeys + b" nope1 nope2\r\n",  # fan-out to every node, reassembled in order
        b"gets " + allkeys + b"\r\n",
        b"get key7\r\n",
        b"get nope\r\n",
        b"gets key3 key3 nope key3\r\n",  # repeated keys
        b"cas key3 9 0 2 {cas:key3}\r\nC3\r\n",
        b"cas key3 9 0 2 {cas:key3}\r\nC4\r\n",  # stale CAS
        b"cas nope 0 0 1 1\r\nX\r\n",
        b"gets key3\r\n",
        b"add key4 0 0 1\r\nA\r\n",
        b"add fresh 3 0 5\r\nadded\r\n",
        b"replace nope 0 0 1\r\nR\r\n",
        b"replace key5 1 0 2\r\nRR\r\n",
        b"append key6 0 0 3\r\n+ap\r\n",
        b"prepend key6 0 0 3\r\npp+\r\n",
        b"append nope 0 0 1\r\nx\r\n",
        b"get key4 key5 key6 fresh\r\n",
        b"set num 0 0 2\r\n10\r\n",
        b"incr num 5\r\n",
        b"decr num 100\r\n",
        b"incr num 18446744073709551615\r\n",
        b"set max 0 0 20\r\n18446744073709551615\r\n",
        b"incr max 1\r\n",  # wraps to 0
        b"incr key1 1\r\n",  # not a number
        b"incr nope 1\r\n",
        b"decr nope 1\r\n",
        b"gets num max\r\n",
        b"touch key8 100\r\n",
        b"touch nope 100\r\n",
        b"delete key9\r\n",
        b"delete key9\r\n",
        b"get key8 key9\r\n",
        # noreply: nothing comes back; the following get shows the effect
        b"set quiet 5 0 2 noreply\r\nQQ\r\n",
        b"add quiet 0 0 1 noreply\r\nx\r\n",
        b"replace key10 0 0 2 noreply\r\nR1\r\n",
        b"append key11 0 0 1 noreply\r\n!\r\n",
        b"prepend key12 0 0 1 noreply\r\n^\r\n",
        b"set n2 0 0 1 noreply\r\n7\r\n",
        b"incr n2 3 noreply\r\n",
        b"decr n2 1 noreply\r\n",
        b"touch key13 50 noreply\r\n",
        b"delete key14 noreply\r\n",
        b"cas key15 0 0 1 1 noreply\r\nx\r\n",
        b"get quiet key10 key11 key12 n2 key13 key14 key15\r\n",
        # values that look like protocol, binary bytes, limits
        b"set tricky 0 0 12\r\nEND\r\nVALUE x\r\n",
        b"set bin 4294967295 0 4\r\n\x00\xff\r\n\r\n",
        b"get tricky bin\r\n",
        b"set big 0 0 300000\r\n" + bytes(range(256)) * 1171 + b"\x01" * 224 + b"\r\n",
        b"get big key0 big\r\n",
        b"set empty 0 0 0\r\n\r\n",
        b"gets empty\r\n",
    ]
    return steps


def run_session(pool: Pool) -> list[tuple[bytes, bytes]]:
    """Send each step through the pool's proxy; collect each reply."""
    assert pool.proxy is not None
    cas: dict[bytes, bytes] = {}
    out: list[tuple[bytes, bytes]] = []
    with Wire(HOST, pool.proxy.port, timeout=10) as w:
        w.send(b"set __end__ 0 0 1\r\nZ\r\n")
        assert w.read_response([b"\r\n"]) == b"STORED\r\n"
        for step in session_steps():
            req = re.sub(rb"\{cas:([^}]+)\}", lambda m: cas.get(m.group(1), b"0"), step)
            w.send(req + b"get __end__\r\n")
            reply = w.read_response([END_MARK])
            assert reply.endswith(END_MARK), (step[:60], reply[-200:])
            reply = reply[: -len(END_MARK)]
            for m in re.finditer(rb"^VALUE (\S+) \d+ \d+ (\d+)\r$", reply, re.M):
                cas[m.group(1)] = m.group(2)
            out.append((step[:80], reply))
    return out


@pytest.fixture(scope="module")
def memcached_session() -> list[tuple[bytes, bytes]]:
    pool = start_pool(MEMCACHED)
    try:
        return run_session(pool)
    finally:
        pool.stop()


@pytest.mark.parametrize("node", STACKMAPD, ids=[t.id for t in STACKMAPD])
def test_proxy_replies_match_memcached(node: Target,
                                       memcached_session: list[tuple[bytes, bytes]]) -> None:
    pool = start_pool(node)
    try:
        ours = run_session(pool)
        # every node got some of the keys: the fan-out really crossed nodes
        per_node = [int(stats(HOST, n.port)["curr_items"]) for n in pool.nodes]
    finally:
        pool.stop()
    assert all(count > 0 for count in per_node), per_node
    assert len(ours) == len(memcached_session)
    for (step, ref), (_, got) in zip(memcached_session, ours, strict=True):
        assert got == ref, f"step {step!r}:\nmemcached pool: {ref[:400]!r}\nstackmapd pool: {got[:400]!r}"


# ---------------------------------------------------------------------------
# Real clients through the proxy
# ---------------------------------------------------------------------------


def pymemcache_session(pool: Pool) -> list[object]:
    """What an application sees through the proxy, call by call."""
    assert pool.proxy is not None
    c = proxy_client(pool.proxy)
    r: list[object] = []
    values = {f"pm{i}": f"value-{i}".encode() * (i + 1) for i in range(60)}
    r.append(c.set_many(values, noreply=False))
    r.append(c.get_many(list(values) + ["absent"]))
    r.append(sorted((k, v[0]) for k, v in c.gets_many(["pm1", "pm2"]).items()))
    value, token = c.gets("pm1")
    r.append(c.cas("pm1", b"new", token, noreply=False))
    r.append(c.cas("pm1", b"newer", token, noreply=False))
    r.append(c.get("pm1"))
    r.append(c.add("pm2", b"x", noreply=False))
    r.append(c.replace("absent", b"x", noreply=False))
    r.append(c.append("pm3", b"+", noreply=False))
    r.append(c.prepend("pm3", b"-", noreply=False))
    r.append(c.get("pm3"))
    r.append(c.set("counter", b"41", noreply=False))
    r.append(c.incr("counter", 1, noreply=False))
    r.append(c.decr("counter", 50, noreply=False))
    r.append(c.incr("absent", 1, noreply=False))
    r.append(c.touch("pm4", 100, noreply=False))
    r.append(c.touch("absent", 100, noreply=False))
    r.append(c.delete("pm5", noreply=False))
    r.append(c.delete("pm5", noreply=False))
    r.append(c.delete_many(["pm6", "pm7", "absent"]))
    c.set("nr", b"1")  # pymemcache's default is noreply
    c.incr("nr", 4)
    r.append(c.get_many(["nr", "pm5", "pm6", "pm8"]))
    c.close()
    return r


@pytest.mark.parametrize("node", STACKMAPD, ids=[t.id for t in STACKMAPD])
def test_pymemcache_through_proxy(node: Target) -> None:
    results = []
    for t in (MEMCACHED, node):
        pool = start_pool(t)
        try:
            results.append(pymemcache_session(pool))
        finally:
            pool.stop()
    assert results[1] == results[0]


@pytest.mark.parametrize("node", [MEMCACHED, *STACKMAPD], ids=["memcached", *[t.id for t in STACKMAPD]])
def test_memaslap_through_proxy(node: Target, tmp_path: Path) -> None:
    """memaslap (libmemcached-tools' memcaslap) through the proxy with value
    verification: no failed or wrong operation, every node took part."""
    memaslap = shutil.which("memcaslap")
    if memaslap is None:
        pytest.fail("memcaslap (libmemcached-tools) is required; make test installs it")
    cfg = tmp_path / "memaslap.cfg"
    cfg.write_text("key\n16 64 1\nvalue\n32 2048 1\ncmd\n0 0.2\n1 0.8\n")
    pool = start_pool(node)
    try:
        assert pool.proxy is not None
        proc = subprocess.run(
            [memaslap, "-s", f"{HOST}:{pool.proxy.port}", "-T", "1", "-c", "8", "-F", str(cfg),
             "-x", "20000", "--verify=0.2"],
            capture_output=True, text=True, timeout=90)
        per_node = [stats(HOST, n.port) for n in pool.nodes]
    finally:
        pool.stop()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    counters = {k: int(v) for k, v in re.findall(r"^(\w+): (\d+)$", out, re.M)}
    assert counters.get("cmd_get", 0) + counters.get("cmd_set", 0) == 20000, out
    for bad in ("get_misses", "verify_misses", "verify_failed"):
        assert counters.get(bad) == 0, out
    assert all(int(s["cmd_set"]) > 0 and int(s["cmd_get"]) > 0 for s in per_node), per_node


# ---------------------------------------------------------------------------
# Client-side hashing agrees with the proxy
# ---------------------------------------------------------------------------


def ketama_client(pool: Pool, **kwargs: object) -> Any:
    from pymemcache.client.hash import HashClient

    names = {f"{HOST}:{port}": name for name, port in pool.names}
    return HashClient([(HOST, n.port) for n in pool.nodes],
                      hasher=lambda: KetamaHash(names, "fnv1a_64"),
                      connect_timeout=2, timeout=2, no_delay=True, **kwargs)


def test_ketama_hashclient_places_keys_like_the_proxy() -> None:
    """Keys written through nutcracker are found by a HashClient using
    tests/ketama.py, and sit on the node that model predicts."""
    pool = start_pool(STACKMAPD[0])
    try:
        assert pool.proxy is not None
        proxy = proxy_client(pool.proxy)
        keys = [f"user:{i}:profile" for i in range(600)]
        proxy.set_many({k: k.encode() for k in keys}, noreply=False)
        hasher = KetamaHash({f"{HOST}:{port}": name for name, port in pool.names})
        for n in pool.nodes:
            hasher.add_node(f"{HOST}:{n.port}")
        owners = {k: hasher.get_node(k) for k in keys}
        for n in pool.nodes:
            direct = proxy_client_direct(n.port)
            mine = [k for k in keys if owners[k] == f"{HOST}:{n.port}"]
            assert mine, "every node owns some keys"
            found = direct.get_many(keys)
            assert sorted(found) == sorted(mine)
        hc = ketama_client(pool)
        assert hc.get_many(keys) == {k: k.encode() for k in keys}
    finally:
        pool.stop()


def proxy_client_direct(port: int) -> Any:
    from pymemcache.client.base import Client

    return Client((HOST, port), connect_timeout=5, timeout=5)


# libmemcached's enums (libmemcached-1.0/types/*.h), for ctypes
MEMCACHED_DISTRIBUTION_CONSISTENT_WEIGHTED = 5  # what MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED sets
MEMCACHED_HASH = {"md5": 1, "fnv1a_64": 4}


@pytest.mark.parametrize("hash_name", ["fnv1a_64", "md5"])
def test_libmemcached_ketama_places_keys_like_the_proxy(hash_name: str) -> None:
    """libmemcached (Debian's libmemcached11, through ctypes) with weighted
    ketama and the same key hash picks, for every key, the node nutcracker
    stored it on -- when nutcracker.yml names each server as libmemcached
    does ("host:port", or "host" for port 11211)."""
    import ctypes
    import ctypes.util

    path = ctypes.util.find_library("memcached") or "libmemcached.so.11"
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        pytest.fail("libmemcached (libmemcached11, pulled in by libmemcached-tools) is required")
    lib.memcached.restype = ctypes.c_void_p
    lib.memcached.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.memcached_free.argtypes = [ctypes.c_void_p]
    lib.memcached_behavior_set_distribution.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.memcached_behavior_set_key_hash.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.memcached_generate_hash.restype = ctypes.c_uint32
    lib.memcached_generate_hash.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]

    pool = start_pool(STACKMAPD[0], proxy=False)
    try:
        pool.proxy = start_proxy([(f"{HOST}:{n.port}", n.port) for n in pool.nodes], pool.workdir,
                                 hash_name=hash_name)
        conf = " ".join(f"--SERVER={HOST}:{n.port}" for n in pool.nodes).encode()
        memc = lib.memcached(conf, len(conf))
        assert memc
        try:
            assert lib.memcached_behavior_set_distribution(
                memc, MEMCACHED_DISTRIBUTION_CONSISTENT_WEIGHTED) == 0
            assert lib.memcached_behavior_set_key_hash(memc, MEMCACHED_HASH[hash_name]) == 0
            # Keys that differ in more than their last digits: FNV-1a (cut to
            # 32 bits) of "session:00000".."session:00599" clusters so tightly
            # that, for some node ports, one node's arcs get none of them.
            keys = [f"session:{hashlib.sha1(b'%d' % i).hexdigest()[:16]}" for i in range(600)]
            owner = {k: lib.memcached_generate_hash(memc, k.encode(), len(k)) for k in keys}
        finally:
            lib.memcached_free(memc)
        failed = proxy_client(pool.proxy).set_many({k: b"x" for k in keys}, noreply=False)
        assert not failed, (failed[:5], pool.proxy.log())
        for i, n in enumerate(pool.nodes):
            on_node = set(proxy_client_direct(n.port).get_many(keys))
            assert on_node, (f"node {i + 1} holds none of the keys", pool.proxy.log(), n.log())
            assert on_node == {k for k in keys if owner[k] == i}
    finally:
        pool.stop()


# ---------------------------------------------------------------------------
# A node dies under load and comes back
# ---------------------------------------------------------------------------


def check_failover(r: FailoverResult) -> None:
    assert not r.wrong, f"{r.label}: wrong values served: {r.wrong[:5]}"
    assert not r.errors_before, r.errors_before
    assert not r.errors_after, f"errors after the node served again: {r.errors_after[:5]}"
    assert not disallowed(r.errors_down), disallowed(r.errors_down)[:5]


@pytest.mark.parametrize("node", [MEMCACHED, *STACKMAPD], ids=["memcached", *[t.id for t in STACKMAPD]])
def test_proxy_failover(node: Target) -> None:
    """SIGKILL one of three nodes under load through nutcracker; it is
    ejected, restarted on its port, and serves again.  Only the errors a
    dead node causes, none once it is back, and never a wrong value."""
    pool = start_pool(node)
    try:
        r = failover(pool, 1, pool.nodes[1].args, node.id)
    finally:
        pool.stop()
    check_failover(r)
    assert r.ejects >= 1
    assert r.restored_items == 0


@pytest.mark.parametrize("node", STACKMAPD[:1], ids=[t.id for t in STACKMAPD[:1]])
def test_proxy_failover_with_snapshot(node: Target, tmp_path: Path) -> None:
    """A node run with --snapshot and killed: SIGKILL writes no snapshot, so
    the file on disk is the one from its last clean stop, older than what
    the pool wrote since.  With --snapshot-max-age below the downtime the
    restarted node refuses it and starts empty: no stale value is served."""
    snap = tmp_path / "node2.snap"
    pool = start_pool(node, per_node=lambda i: ["--snapshot", str(snap)] if i == 1 else [])
    max_age = 1

    def clean_restart() -> None:
        # a planned restart of node2 (SIGTERM saves, the restart loads), done
        # before the failover so that a snapshot with old versions exists
        from scaleout_pool import start_on_port

        srv = pool.nodes[1]
        srv.proc.terminate()
        srv.proc.wait(timeout=10)
        assert snap.exists()
        pool.nodes[1] = start_on_port(srv.target, srv.port, srv.args, srv.log_path)
        assert int(stats(HOST, srv.port)["curr_items"]) > 0  # warm

    try:
        r = failover(pool, 1, pool.nodes[1].args + ["--snapshot-max-age", str(max_age)],
                     "stackmapd --snapshot", before_kill=clean_restart, hold=max_age + 1.0)
        log = pool.nodes[1].log()
    finally:
        pool.stop()
    check_failover(r)
    assert r.restored_items == 0, "the stale snapshot was loaded"
    assert "older than --snapshot-max-age" in log, log


# ---------------------------------------------------------------------------
# Client-side hashing: HashClient fails over too
# ---------------------------------------------------------------------------

HASHCLIENT_SETTINGS = {"retry_attempts": 1, "retry_timeout": 0.2, "dead_timeout": 1.0}


@pytest.mark.parametrize("node", [MEMCACHED, STACKMAPD[0]], ids=["memcached", STACKMAPD[0].id])
def test_hashclient_failover(node: Target) -> None:
    """The same kill and restart with pymemcache's HashClient (ketama
    hasher, the README's retry settings) instead of a proxy."""
    pool = start_pool(node, proxy=False)
    victim = pool.nodes[1]

    def is_dead(load: VersionedLoad) -> bool:
        return (HOST, victim.port) in load.client._dead_clients

    try:
        r = failover(pool, 1, victim.args, f"{node.id} HashClient",
                     make_client=lambda: ketama_client(pool, **HASHCLIENT_SETTINGS),
                     ejected=is_dead)
    finally:
        pool.stop()
    check_failover(r)



# ---------------------------------------------------------------------------
# Several nodes on one host: the stackmapd@.service template
# ---------------------------------------------------------------------------

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNIT = DEPLOY / "stackmapd@.service"
OPT_BIN = "/opt/stackmapd/bin/stackmapd"


def render_instance(instance: str, etc: Path) -> list[str]:
    """The unit's ExecStart for `instance`, as systemd would expand it, with
    the install paths (/opt/stackmapd, /etc/stackmapd) moved to this checkout."""
    lines = [ln for ln in UNIT.read_text().splitlines() if ln.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    line = lines[0].removeprefix("ExecStart=").replace("%i", instance)
    argv = line.split()
    assert argv[0] == OPT_BIN, argv
    return [stackmapd_executable()] + [a.replace("/etc/stackmapd/", f"{etc}/") for a in argv[1:]]


def instance_config(name: str, etc: Path, port: int, metrics: int) -> Path:
    """deploy/scaleout/NAME.toml with its ports moved to free ones."""
    text = (DEPLOY / "scaleout" / f"{name}.toml").read_text()
    text, n1 = re.subn(r"(?m)^port = \d+$", f"port = {port}", text)
    text, n2 = re.subn(r'(?m)^metrics_listen = "[^"]+"$', f'metrics_listen = "{HOST}:{metrics}"', text)
    text, n3 = re.subn(r"(?m)^memory_limit = \d+$", "memory_limit = 64", text)
    assert (n1, n2, n3) == (1, 1, 1), text
    path = etc / f"{name}.toml"
    path.write_text(text)
    return path


def test_template_unit_runs_several_nodes(tmp_path: Path) -> None:
    """Each instance of stackmapd@.service, started with the command line
    the unit renders and its own deploy/scaleout config, is a working node
    with its own metrics port, next to the others."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = []
        for name in ("node1", "node2", "node3"):
            port, metrics = free_port(), free_port()
            instance_config(name, tmp_path, port, metrics)
            argv = render_instance(name, tmp_path)
            assert argv[1:] == ["--config", f"{tmp_path}/{name}.toml"]
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True))
            ports.append((port, metrics))
        for i, ((port, metrics), proc) in enumerate(zip(ports, procs, strict=True)):
            deadline = time.monotonic() + 15
            while True:
                assert proc.poll() is None, f"instance exited with {proc.returncode}"
                try:
                    with Wire(HOST, port, timeout=2) as w:
                        for k in range(i + 1):  # i+1 items: each instance is told apart
                            assert w.request(b"set k%d 0 0 1\r\nv\r\n" % k) == b"STORED\r\n"
                        break
                except OSError:
                    assert time.monotonic() < deadline, "instance did not start"
                    time.sleep(0.05)
            # The memcached port can answer before the metrics server listens.
            while True:
                try:
                    with urllib.request.urlopen(f"http://{HOST}:{metrics}/metrics", timeout=5) as resp:
                        assert resp.status == 200
                        body = resp.read().decode()
                    break
                except urllib.error.URLError:
                    assert time.monotonic() < deadline, "the instance's metrics port did not open"
                    time.sleep(0.05)
            # this instance's own metrics port reports this instance's items
            assert re.search(rf"(?m)^memcached_current_items {i + 1}(\.0)?$", body), body[:2000]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
    assert [p.returncode for p in procs] == [0, 0, 0]  # clean stop on SIGTERM


def test_template_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the template and an instance of it
    (with ExecStart pointed at this checkout's executable)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    text = UNIT.read_text().replace(OPT_BIN, stackmapd_executable())
    for name in ("stackmapd@.service", "stackmapd@node1.service"):
        (tmp_path / name).write_text(text)
        proc = subprocess.run([analyze, "verify", str(tmp_path / name)], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "stackmapd@" not in proc.stderr, proc.stderr  # no warning about our unit
