"""Meta vivify (mg N, ma N) under concurrency: one item, one win, never a miss.

memcached looks the key up and creates the missing item under one item
lock, so an mg or ma with N always finds or makes an item: of many clients
racing on one missing key exactly one creates it (mg: the one answered W;
ma: the one answered J's value), and none is ever told EN/NF, not even
while other clients delete the key as fast as they can.  Each client is a
real connection on the server under test, pipelining its requests so the
server's workers run them back to back.
"""

from __future__ import annotations

import re
import socket
import threading

from conftest import Server

CLIENTS = 6  # more than the default worker count: requests of one round run in parallel
ROUNDS = 60


def _session(server: Server, payload: bytes, replies: int, terminator: bytes) -> bytes:
    """Send `payload` on a new connection and read until `replies` lines ending in terminator."""
    with socket.create_connection((server.host, server.port), timeout=30) as s:
        s.sendall(payload)
        got = b""
        while got.count(terminator) < replies:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            got += chunk
        return got


def _race(server: Server, requests: list[bytes], replies: int | list[int]) -> list[bytes]:
    """Each request pipelined by its own client, all released at once; their responses
    (read until `replies` lines, one count for all or one per request)."""
    counts = replies if isinstance(replies, list) else [replies] * len(requests)
    out: list[bytes] = [b""] * len(requests)
    start = threading.Barrier(len(requests))

    def run(i: int) -> None:
        start.wait()
        out[i] = _session(server, requests[i], counts[i], b"\r\n")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_mg_vivify_one_win(server: Server) -> None:
    """Many mg N on one missing key: one item (one CAS), exactly one W, the rest Z."""
    for r in range(ROUNDS):
        key = b"viv_mg_%d" % r
        got = _race(server, [b"mg %s N30 c\r\n" % key] * CLIENTS, 1)
        lines = [g.strip() for g in got]
        assert all(re.fullmatch(rb"HD c\d+( W| Z)", x) for x in lines), lines
        assert sum(x.endswith(b" W") for x in lines) == 1, lines
        assert len({x.split()[1] for x in lines}) == 1, lines  # one item: one CAS


def test_ma_vivify_one_creation(server: Server) -> None:
    """Many ma N J100 on one missing key: one creates it (100), the others count on from it."""
    for r in range(ROUNDS):
        key = b"viv_ma_%d" % r
        got = _race(server, [b"ma %s N0 J100 v\r\n" % key] * CLIENTS, 2)
        values = sorted(int(g.split(b"\r\n")[1]) for g in got)
        assert values == list(range(100, 100 + CLIENTS)), got


def _vivify_against_deletes(server: Server, request: bytes, miss: bytes) -> None:
    per_client = 3000
    vivify = request * per_client
    delete = b"md viv_del q\r\n" * per_client + b"mn\r\n"
    got = _race(server, [vivify] * (CLIENTS - 2) + [delete] * 2, [per_client] * (CLIENTS - 2) + [1, 1])
    for g in got[: CLIENTS - 2]:
        assert g.count(b"\r\n") >= per_client, g[-200:]
        assert miss not in g, f"a vivifying request was answered {miss!r}"


def test_mg_vivify_never_misses_under_delete(server: Server) -> None:
    """mg N answers HD even while other clients delete the key (never EN)."""
    _vivify_against_deletes(server, b"mg viv_del N30 s\r\n", b"EN")


def test_ma_vivify_never_misses_under_delete(server: Server) -> None:
    """ma N answers a value even while other clients delete the key (never NF)."""
    _vivify_against_deletes(server, b"ma viv_del N30 J7\r\n", b"NF")
