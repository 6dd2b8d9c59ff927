"""stackmapd inside the test VM (Debian's 6.12 kernel under qemu), driven from the host.

What these prove, against the server in the guest through the forwarded
127.0.0.1 port (so every byte crosses the guest kernel's TCP stack and
virtio-net):
- the guest runs the backend it was asked for (``stats`` says so);
- memcapable's ASCII conformance checks all pass;
- pymemcache's storage, retrieval, CAS, arithmetic, expiry, multi-get,
  large-value and many-connection behaviour is right;
- afterwards the server still serves and its log has no Python traceback.
deploy/vm_test.py runs this module once per backend, then test_vm_kernel.py
(the module, the ring-level test and the kernel log) once at the end.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from pymemcache.client.base import Client

from .vm_support import VM

MEMCAPABLE = shutil.which("memccapable") or shutil.which("memcapable")


@pytest.fixture
def mc(vm: VM) -> Iterator[Client]:
    client = Client(("127.0.0.1", vm.port), connect_timeout=10, timeout=30)
    client.flush_all()
    yield client
    client.close()


def test_backend_in_use(vm: VM) -> None:
    """The guest's stackmapd runs the backend this run is about."""
    stats = Client(("127.0.0.1", vm.port), timeout=10).stats()
    assert stats[b"backend"].decode() == vm.backend, stats


def test_memcapable_ascii(vm: VM) -> None:
    """libmemcached's conformance tool, all ASCII checks, from the host into the guest."""
    if MEMCAPABLE is None:
        pytest.skip("memccapable (libmemcached-tools) not installed on the host")
    proc = subprocess.run([MEMCAPABLE, "-a", "-t", "10", "-h", "127.0.0.1", "-p", str(vm.port)],
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    results = dict(re.findall(r"^(.*?)\s+\[(pass|FAIL|skip)\]\s*$", out, re.M))
    assert results, f"memcapable printed no results:\n{out}"
    failed = sorted(name.strip() for name, verdict in results.items() if verdict != "pass")
    assert not failed, f"memcapable failures: {failed}\n{out}"
    assert proc.returncode == 0, out


def test_store_and_retrieve(mc: Client) -> None:
    """set/get/add/replace/append/prepend/delete with flags-free bytes values."""
    assert mc.set("k1", b"v1", noreply=False)
    assert mc.get("k1") == b"v1"
    assert not mc.add("k1", b"other", noreply=False)
    assert mc.add("k2", b"v2", noreply=False)
    assert mc.replace("k2", b"v2b", noreply=False)
    assert not mc.replace("missing", b"x", noreply=False)
    assert mc.append("k1", b"-tail", noreply=False)
    assert mc.prepend("k1", b"head-", noreply=False)
    assert mc.get("k1") == b"head-v1-tail"
    assert mc.delete("k1", noreply=False)
    assert mc.get("k1") is None
    binary = bytes(range(256)) + b"\r\nEND\r\n"
    assert mc.set("bin", binary, noreply=False)
    assert mc.get("bin") == binary


def test_cas_and_arithmetic(mc: Client) -> None:
    """gets/cas conflicts, incr/decr including decr's floor at zero."""
    mc.set("c", b"10", noreply=False)
    value, token = mc.gets("c")
    assert value == b"10"
    assert mc.cas("c", b"11", token, noreply=False)
    assert mc.cas("c", b"12", token, noreply=False) is False
    assert mc.incr("c", 5) == 16
    assert mc.decr("c", 100) == 0
    assert mc.incr("nope", 1) is None


def test_multi_get_and_noreply(mc: Client) -> None:
    """500 noreply sets, then one get_many for all of them."""
    items = {f"key:{i}": f"value-{i}".encode() * (1 + i % 7) for i in range(500)}
    for key, value in items.items():
        mc.set(key, value, noreply=True)
    assert mc.get_many(list(items)) == items


def test_large_values(mc: Client) -> None:
    """Values from a few bytes to 900 KiB survive the round trip intact."""
    for size in (1, 1400, 2048, 2049, 65536, 300_000, 900 * 1024):
        value = bytes((i * 31 + size) & 0xFF for i in range(size))
        assert mc.set(f"big{size}", value, noreply=False)
        assert mc.get(f"big{size}") == value, size


def test_expiry(mc: Client) -> None:
    """An item set with a 1 s TTL is gone 2.5 s later (guest clock)."""
    assert mc.set("short", b"x", expire=1, noreply=False)
    assert mc.get("short") == b"x"
    time.sleep(2.5)
    assert mc.get("short") is None


def test_touch_and_flush(mc: Client) -> None:
    """touch on present and absent keys; flush_all empties the cache."""
    mc.set("t", b"1", noreply=False)
    assert mc.touch("t", 100, noreply=False)
    assert not mc.touch("absent", 100, noreply=False)
    mc.flush_all(noreply=False)
    assert mc.get("t") is None


def test_many_connections(vm: VM) -> None:
    """40 clients at once, each with its own keys, all answered correctly."""
    errors: list[str] = []

    def worker(n: int) -> None:
        try:
            c = Client(("127.0.0.1", vm.port), connect_timeout=20, timeout=60)
            for i in range(20):
                key, value = f"conn{n}:{i}", f"{n}-{i}".encode() * 10
                c.set(key, value, noreply=False)
                if c.get(key) != value:
                    errors.append(f"client {n} item {i}: wrong value")
            c.close()
        except Exception as exc:  # noqa: BLE001 -- collected and reported below
            errors.append(f"client {n}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors[:10]


def test_peer_close_mid_request(vm: VM) -> None:
    """Clients that vanish mid-value or mid-line do not disturb the server."""
    for payload in (b"set half 0 0 100\r\nonly-part", b"get abc", b"set x 0 0 5\r\nab"):
        s = socket.create_connection(("127.0.0.1", vm.port), timeout=10)
        s.sendall(payload)
        s.close()
    c = Client(("127.0.0.1", vm.port), timeout=10)
    assert c.set("after", b"ok", noreply=False)
    assert c.get("after") == b"ok"


def test_server_still_serves(vm: VM) -> None:
    """After all of the above: still answering, no traceback in the server's log."""
    c = Client(("127.0.0.1", vm.port), timeout=10)
    assert c.set("final", b"yes", noreply=False)
    assert c.get("final") == b"yes"
    log = vm.check("cat /run/stackmapd.log")
    assert "Traceback" not in log, log
