"""Many clients at once on a multi-threaded server (-t 4).

Sixteen client threads, each with its own pymemcache connection, mix
set/get/incr on shared counters and on private keys.  Connections land on
different worker threads, so lost updates or torn values between workers
show up as wrong final totals or wrong private values.
"""

from __future__ import annotations

import threading

from conftest import Server, assert_alive
from mcwire import stats
from pymemcache.client.base import Client

SERVER_ARGS = ["-t", "4"]
THREADS = 16
ROUNDS = 250


def test_concurrent_clients(server: Server) -> None:
    setup = Client((server.host, server.port), connect_timeout=5, timeout=10, default_noreply=False)
    setup.set("shared_a", b"0")
    setup.set("shared_b", b"1000000")
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def worker(n: int) -> None:
        try:
            c = Client((server.host, server.port), connect_timeout=5, timeout=10, default_noreply=False)
            start.wait(timeout=10)
            for i in range(ROUNDS):
                key = f"priv_{n}_{i % 10}"
                value = f"{n}:{i}:".encode() + bytes([65 + n]) * (i % 50)
                assert c.set(key, value) is True
                assert c.get(key) == value, f"thread {n} read back a foreign value"
                c.incr("shared_a", 1)
                c.decr("shared_b", 2)
                if i % 25 == 0:
                    got = c.get_many([f"priv_{n}_{j}" for j in range(10)])
                    assert all(v.startswith(f"{n}:".encode()) for v in got.values())
            c.set(f"done_{n}", str(ROUNDS).encode())
            c.close()
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "client threads did not finish"
    assert not errors, errors[:3]
    assert setup.get("shared_a") == str(THREADS * ROUNDS).encode()
    assert setup.get("shared_b").rstrip(b" ") == str(1000000 - 2 * THREADS * ROUNDS).encode()
    for n in range(THREADS):
        assert setup.get(f"done_{n}") == str(ROUNDS).encode()
        last = {i % 10: i for i in range(ROUNDS)}
        for slot, i in last.items():
            want = f"{n}:{i}:".encode() + bytes([65 + n]) * (i % 50)
            assert setup.get(f"priv_{n}_{slot}") == want
    st = stats(server.host, server.port)
    assert int(st["incr_hits"]) == THREADS * ROUNDS
    assert int(st["decr_hits"]) == THREADS * ROUNDS
    assert int(st["total_connections"]) >= THREADS + 1
    setup.close()
    assert_alive(server)
