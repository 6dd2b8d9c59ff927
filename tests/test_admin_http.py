"""The control plane's HTTP server under bad input, against a real stackmapd.

Every case here was found by throwing malformed requests at a running
server (numbers out of range, broken framing, nested JSON, bytes that are
not HTTP): each must get a 4xx answer with a JSON error, never a dropped
connection, a hang or a traceback in the log, and the server must go on
serving.  Then the bounds: a request that never finishes is cut off with a
408, idle connections beyond the handler limit get a 503 instead of a
thread each, and the listen backlog is memcached's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest
from control_support import Proc, http, running
from http_raw import Answer, read_answer, send
from http_raw import request as raw

from stackmapd.http import MAX_HANDLERS


@pytest.fixture(scope="module")
def srv() -> Iterator[Proc]:
    with running(["-m", "64"]) as p:
        yield p


def post(p: Proc, path: str, body: bytes, **headers: str) -> Answer:
    return raw(p.http_port, "POST", path, {"Content-Type": "application/json", **headers}, body)


def get(p: Proc, path: str) -> Answer:
    return raw(p.http_port, "GET", path)


def assert_json_error(answer: Answer, status: int | tuple[int, ...]) -> None:
    want = status if isinstance(status, tuple) else (status,)
    assert answer.status in want, answer
    assert answer.headers.get("content-type") == "application/json", answer
    assert isinstance(answer.json()["error"], str)


def assert_healthy(p: Proc) -> None:
    assert http("GET", p.url + "/healthz")[0] == 200
    assert "Traceback" not in p.log(), p.log()[-3000:]


POSTS = [
    ("memory-limit", {"mb": 2**50}),
    ("memory-limit", {"mb": 2**70}),
    ("memory-limit", {"mb": 0}),
    ("memory-limit", {"mb": "1e9"}),
    ("flush", {"delay": 2**40}),
    ("flush", {"delay": -1}),
    ("flush", {"delay": 1.5}),
    ("verbosity", {"level": 2**70}),
    ("delete", {"key": "\ud800"}),
    ("delete", {"prefix": "\udfff"}),
    ("delete", {"key": {"nested": 1}}),
    ("delete", {}),
    ("snapshot", {"name": "a\x00b"}),
    ("snapshot", {"path": "/tmp/a\x00b"}),
    ("snapshot", {"name": 5}),
    ("no-such-thing", {}),
]


@pytest.mark.parametrize("name,body", POSTS, ids=[f"{n}-{json.dumps(b)[:30]}" for n, b in POSTS])
def test_bad_values_get_a_json_4xx(srv: Proc, name: str, body: dict[str, object]) -> None:
    assert_json_error(post(srv, f"/admin/{name}", json.dumps(body).encode()), (400, 404))
    assert_healthy(srv)


@pytest.mark.parametrize("body", [
    b"[" * 30000 + b"]" * 30000,
    b'{"delay": ' + b"[" * 20000 + b"]" * 20000 + b"}",
    b'{"delay": ' + b"9" * 5000 + b"}",
    b'{"delay": 1e400}',
    b'{"delay": "\xff"}',
    b"[1, 2]",
    b"not json",
], ids=["deep-array", "deep-value", "5000-digits", "inf", "bad-utf8", "array", "text"])
def test_bad_json_gets_a_json_4xx(srv: Proc, body: bytes) -> None:
    assert_json_error(post(srv, "/admin/flush", body), (400, 413))
    assert_healthy(srv)


@pytest.mark.parametrize("query", ["cursor=-1", "cursor=" + "9" * 30, f"cursor={2**64}", "cursor=x",
                                   "limit=0", "limit=-5", "limit=" + "9" * 40])
def test_bad_keys_arguments_get_a_json_400(srv: Proc, query: str) -> None:
    assert_json_error(get(srv, "/admin/keys?" + query), 400)
    assert_healthy(srv)


@pytest.mark.parametrize("query", ["group=%00", "group=detail%20on", "group=nope"])
def test_unknown_stats_groups_get_a_json_400(srv: Proc, query: str) -> None:
    assert_json_error(get(srv, "/admin/stats?" + query), 400)


def test_a_cursor_from_nowhere_ends_the_walk(srv: Proc) -> None:
    answer = get(srv, "/admin/keys?cursor=12345678901234567")
    assert answer.status == 200
    assert json.loads(answer.body.splitlines()[-1])["done"] is True


def framing(port: int) -> list[tuple[str, bytes]]:
    host = f"127.0.0.1:{port}"
    head = f"POST /admin/flush HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    return [
        ("length-abc", (head + "Content-Length: abc\r\n\r\n{}").encode()),
        ("length-negative", (head + "Content-Length: -1\r\n\r\n{}").encode()),
        ("length-plus", (head + "Content-Length: +2\r\n\r\n{}").encode()),
        ("length-30-digits", (head + "Content-Length: " + "9" * 30 + "\r\n\r\n{}").encode()),
        ("length-too-big", (head + f"Content-Length: {1 << 20}\r\n\r\n{{}}").encode()),
        ("length-twice", (head + "Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}").encode()),
        ("chunked", (head + "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n").encode()),
        ("nul-in-path", f"GET /admin/st\0ats HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()),
        ("bad-absolute-target", f"GET http://[::1/admin/stats HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()),
        ("unknown-method", f"FOO /admin/stats HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()),
        ("put", f"PUT /admin/flush HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n\r\n{{}}".encode()),
        ("tls-hello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(1, 256)) + b"\r\n\r\n"),
        ("header-line-too-long", f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nX: {'a' * 70000}\r\n\r\n".encode()),
        ("too-many-headers", (f"GET /metrics HTTP/1.1\r\nHost: {host}\r\n" + "X: a\r\n" * 150 + "\r\n").encode()),
        ("uri-too-long", f"GET /admin/keys?prefix={'a' * 70000} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()),
    ]


CASES = [name for name, _ in framing(0)]


@pytest.mark.parametrize("case", CASES)
def test_broken_framing_gets_a_json_4xx(srv: Proc, case: str) -> None:
    data = dict(framing(srv.http_port))[case]
    answer = send(srv.http_port, data, timeout=30)
    assert_json_error(answer, tuple(range(400, 432)))
    assert_healthy(srv)


def test_http_versions_we_do_not_speak_get_a_json_answer(srv: Proc) -> None:
    """HTTP/2's preface over HTTP/1 framing: 505 (the version, not the request, is refused)."""
    answer = send(srv.http_port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", timeout=30)
    assert_json_error(answer, 505)


def test_a_request_that_never_arrives_whole_is_cut_off(srv: Proc) -> None:
    """A promised body that never comes, and a slow-loris header dribble: both end with a 408."""
    results: dict[str, Answer] = {}

    def short_body() -> None:
        with socket.create_connection(("127.0.0.1", srv.http_port), timeout=120) as s:
            s.sendall(f"POST /admin/flush HTTP/1.1\r\nHost: 127.0.0.1:{srv.http_port}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 10\r\n\r\n{}".encode())
            results["short"] = read_answer(s, "POST")

    def loris() -> None:
        with socket.create_connection(("127.0.0.1", srv.http_port), timeout=120) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
            stop = threading.Event()
            try:
                while not stop.wait(0.5):  # a header every half second, forever
                    s.sendall(b"X-Slow: 1\r\n")
            except OSError:  # the server gave up on us
                pass
            results["loris"] = read_answer(s, "GET")

    threads = [threading.Thread(target=short_body), threading.Thread(target=loris)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert_json_error(results["short"], 408)
    assert results["loris"].status in (0, 408)  # 408 if our writes had not yet hit the closed socket
    assert_healthy(srv)


def test_idle_connections_beyond_the_handler_limit_get_503_not_threads(srv: Proc) -> None:
    task_dir = f"/proc/{srv.proc.pid}/task"
    before = len(os.listdir(task_dir))
    held = [socket.create_connection(("127.0.0.1", srv.http_port), timeout=60)
            for _ in range(MAX_HANDLERS + 8)]
    try:
        # Connections are accepted in order: the last ones find every slot taken.
        last = held[-1]
        last.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{srv.http_port}\r\n\r\n".encode())
        answer = read_answer(last, "GET")
        assert_json_error(answer, 503)
        assert len(os.listdir(task_dir)) <= before + MAX_HANDLERS
    finally:
        for s in held:
            s.close()
    assert http("GET", srv.url + "/healthz")[0] == 200


def test_listen_backlog_is_memcacheds(srv: Proc) -> None:
    out = subprocess.run(["ss", "-ltnH", f"sport = :{srv.http_port}"], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[2] == "1024", out  # Send-Q of a listening socket: its backlog
