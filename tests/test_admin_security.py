"""Who may use the admin API, against a real stackmapd on loopback.

The threat: with no token (the default on 127.0.0.1) every local process may
use the admin API, but a web page the operator happens to open must not.
A browser is not run here (none is installed); instead each request carries
exactly the headers a browser sends for that page action: a cross-origin
``fetch`` (``mode: "no-cors"``, a CORS "simple request": ``text/plain``
body, ``Origin`` and ``Sec-Fetch-Site: cross-site``), an HTML form POST
(``application/x-www-form-urlencoded``, or ``text/plain`` whose body is made
to parse as JSON), and a DNS-rebinding page (its own name resolved to
127.0.0.1, so its requests are same-origin to the browser: ``Host`` and
``Origin`` name the attacker's domain and it may send ``application/json``).
Each must be refused and change nothing, while stackmapctl, curl-style
clients and Prometheus keep working.

The snapshot endpoint may only write a plain file name inside one directory
(``--snapshot-dir``, default ``--snapshot``'s), through a temporary file it
creates itself (never a planted symlink), and must not replace a file that
is not a snapshot.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from control_support import Proc, pipeline_sets, request, running, start
from http_raw import Answer
from http_raw import request as raw

from stackmapd.snapshot import MAGIC

CHROME_UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/120.0.0.0 Safari/537.36")
EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def srv() -> Iterator[Proc]:
    with running(["-m", "64"]) as p:
        yield p


def store(p: Proc, key: bytes) -> None:
    with p.conn() as s:
        request(s, b"set %s 0 0 1\r\nv\r\n" % key, b"STORED\r\n")


def present(p: Proc, key: bytes) -> bool:
    with p.conn() as s:
        return request(s, b"get %s\r\n" % key).startswith(b"VALUE ")


def refused(answer: Answer, status: int) -> None:
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    assert "error" in answer.json()
    assert not any(h.startswith("access-control-") for h in answer.headers), answer.headers


# ---- a page in a browser ----


def browser_headers(content_type: str, mode: str, dest: str) -> dict[str, str]:
    """What Chrome sends for a page at http://evil.example acting on our port."""
    return {"Connection": "keep-alive", "User-Agent": CHROME_UA, "Content-Type": content_type,
            "Accept": "*/*", "Origin": EVIL, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": mode,
            "Sec-Fetch-Dest": dest, "Referer": EVIL + "/", "Accept-Encoding": "gzip, deflate, br",
            "Accept-Language": "en-US,en;q=0.9"}


@pytest.mark.parametrize("content_type,mode,dest,body", [
    # fetch(url, {method: "POST", mode: "no-cors", body: "{}"})
    ("text/plain;charset=UTF-8", "no-cors", "empty", b"{}"),
    # <form method=post enctype=text/plain><input name='{"delay": 0, "x": "' value='"}'>
    ("text/plain", "navigate", "document", b'{"delay": 0, "x": "="}\r\n'),
    # <form method=post> (the default enctype)
    ("application/x-www-form-urlencoded", "navigate", "document", b"delay=0"),
    ("multipart/form-data; boundary=----x", "navigate", "document",
     b'------x\r\nContent-Disposition: form-data; name="delay"\r\n\r\n0\r\n------x--\r\n'),
], ids=["fetch-no-cors", "form-text-plain-json", "form-urlencoded", "form-multipart"])
def test_cross_origin_page_cannot_flush(srv: Proc, content_type: str, mode: str, dest: str,
                                        body: bytes) -> None:
    store(srv, b"precious")
    answer = raw(srv.http_port, "POST", "/admin/flush", browser_headers(content_type, mode, dest), body)
    refused(answer, 403)
    assert present(srv, b"precious")


def test_simple_request_without_origin_headers_is_refused_for_its_content_type(srv: Proc) -> None:
    """An old browser sending neither Origin nor Sec-Fetch-*: text/plain is still not JSON."""
    store(srv, b"precious2")
    answer = raw(srv.http_port, "POST", "/admin/flush", {"Content-Type": "text/plain"}, b'{"delay": 0}')
    refused(answer, 415)
    assert present(srv, b"precious2")


def test_the_issue_s_request_is_refused(srv: Proc) -> None:
    """The issue's exact request: text/plain, Origin http://evil.example, Host evil.example."""
    store(srv, b"precious3")
    answer = raw(srv.http_port, "POST", "/admin/flush", {"Content-Type": "text/plain", "Origin": EVIL},
                 b"{}", host="evil.example")
    assert answer.status in (403, 415), answer
    assert present(srv, b"precious3")


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/admin/flush", b"{}"),
    ("POST", "/admin/delete", b'{"prefix": "p"}'),
    ("GET", "/admin/keys", b""),
    ("GET", "/admin/item?key=precious4", b""),
    ("GET", "/admin/stats", b""),
])
def test_dns_rebinding_page_is_refused(srv: Proc, method: str, path: str, body: bytes) -> None:
    """evil.example now resolves to 127.0.0.1: the browser sees one origin, we see its Host."""
    store(srv, b"precious4")
    site = f"evil.example:{srv.http_port}"
    headers = {"Origin": f"http://{site}", "Sec-Fetch-Site": "same-origin", "User-Agent": CHROME_UA}
    if body:
        headers["Content-Type"] = "application/json"
    answer = raw(srv.http_port, method, path, headers, body, host=site)
    refused(answer, 403)
    assert b"precious4" not in answer.body
    assert present(srv, b"precious4")


@pytest.mark.parametrize("origin", ["null", EVIL, "http://127.0.0.1", "https://127.0.0.1:{port}",
                                    "http://localhost:{port}"])
def test_foreign_or_null_origin_is_refused_even_with_our_host(srv: Proc, origin: str) -> None:
    store(srv, b"precious5")
    answer = raw(srv.http_port, "POST", "/admin/flush",
                 {"Content-Type": "application/json", "Origin": origin.format(port=srv.http_port)}, b"{}")
    refused(answer, 403)
    assert present(srv, b"precious5")


def test_preflight_is_never_granted(srv: Proc) -> None:
    answer = raw(srv.http_port, "OPTIONS", "/admin/flush",
                 {"Origin": EVIL, "Access-Control-Request-Method": "POST",
                  "Access-Control-Request-Headers": "content-type"})
    refused(answer, 405)


def test_missing_or_doubled_host_is_refused(srv: Proc) -> None:
    refused(raw(srv.http_port, "GET", "/admin/stats", host=""), 403)
    answer = raw(srv.http_port, "GET", "/admin/stats", {"Host": "evil.example"})
    refused(answer, 400)


# ---- what must keep working ----


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}"])
def test_local_clients_naming_the_listen_address_may(srv: Proc, host: str) -> None:
    h = host.format(port=srv.http_port)
    assert raw(srv.http_port, "GET", "/admin/stats", host=h).status == 200
    own = raw(srv.http_port, "POST", "/admin/verbosity",
              {"Content-Type": "application/json; charset=utf-8", "Origin": f"http://{h}"},
              b'{"level": 0}', host=h)
    assert own.status == 200, own


def test_stackmapctl_and_curl_work(srv: Proc) -> None:
    store(srv, b"gone-soon")
    assert srv.ctl("flush").stdout == "flushed\n"
    assert not present(srv, b"gone-soon")
    r = subprocess.run(["curl", "-sS", "-X", "POST", "-H", "Content-Type: application/json", "-d",
                        '{"level": 0}', f"http://localhost:{srv.http_port}/admin/verbosity"],
                       capture_output=True, text=True, timeout=30)
    assert json.loads(r.stdout) == {"verbosity": 0}, r


def test_reading_endpoints_stay_open_to_any_host(srv: Proc) -> None:
    """/metrics, /healthz, /readyz reveal no keys: a scraper's Host is never checked."""
    for path in ("/metrics", "/healthz", "/readyz"):
        assert raw(srv.http_port, "GET", path, {"Origin": EVIL}, host="monitoring.example:80").status == 200


def test_with_a_token_host_is_not_checked_but_origin_is(tmp_path: Path) -> None:
    """A token proves a configured client (ssh tunnels on another port work); pages still not."""
    p = start(["--admin-token", "tok"])
    try:
        auth = {"Authorization": "Bearer tok"}
        assert raw(p.http_port, "GET", "/admin/stats", auth, host="tunnel.example:8000").status == 200
        refused(raw(p.http_port, "GET", "/admin/stats", {**auth, "Origin": EVIL}), 403)
        refused(raw(p.http_port, "POST", "/admin/flush", {**auth, "Content-Type": "text/plain"}, b"{}"), 415)
        refused(raw(p.http_port, "GET", "/admin/stats", {"Authorization": "Bearer nope"}), 401)
    finally:
        p.stop()
        p.cleanup()


# ---- snapshots: one directory, plain names, no planted files followed ----


def snapshot(p: Proc, body: dict[str, object]) -> Answer:
    return raw(p.http_port, "POST", "/admin/snapshot", {"Content-Type": "application/json"},
               json.dumps(body).encode())


@pytest.fixture
def snapdir(tmp_path: Path) -> Iterator[tuple[Proc, Path]]:
    d = tmp_path / "snaps"
    d.mkdir()
    p = start(["--snapshot-dir", str(d)])
    store(p, b"k1")
    yield p, d
    p.stop()
    p.cleanup()


@pytest.mark.parametrize("name", ["../escape.snap", "sub/x.snap", "/tmp/abs.snap", "..", ".", ".hidden",
                                  "a\x00b", "", "x" * 256, "sp ace", "new\nline"])
def test_snapshot_names_that_leave_the_directory_are_refused(snapdir: tuple[Proc, Path], name: str) -> None:
    p, d = snapdir
    before = sorted(os.listdir(d.parent))
    refused(snapshot(p, {"name": name}), 400)
    assert sorted(os.listdir(d.parent)) == before
    assert os.listdir(d) == []
    assert not Path("/tmp/abs.snap").exists()


def test_snapshot_path_is_not_accepted_any_more(snapdir: tuple[Proc, Path]) -> None:
    p, d = snapdir
    outside = d.parent / "outside.snap"
    refused(snapshot(p, {"path": str(outside)}), 400)
    assert not outside.exists()


def test_snapshot_is_written_inside_the_directory(snapdir: tuple[Proc, Path]) -> None:
    p, d = snapdir
    answer = snapshot(p, {"name": "nightly-1.snap"})
    assert answer.status == 200, answer
    assert answer.json()["path"] == str(d / "nightly-1.snap") and answer.json()["items"] == 1
    assert os.listdir(d) == ["nightly-1.snap"]  # no temporary file left
    assert (d / "nightly-1.snap").stat().st_mode & 0o077 == 0  # private: it holds every value
    assert snapshot(p, {"name": "nightly-1.snap"}).status == 200  # a snapshot may be replaced
    r = p.ctl("snapshot", "save", "by-ctl.snap")
    assert r.returncode == 0 and str(d / "by-ctl.snap") in r.stdout, r.stderr


def test_planted_symlink_at_a_temporary_name_is_not_followed(snapdir: tuple[Proc, Path]) -> None:
    """Plant symlinks at every name the old scheme (".NAME.tmp-PID") would use."""
    p, d = snapdir
    victim = d.parent / "victim"
    victim.write_bytes(b"do not touch")
    for pid in {p.proc.pid, *(int(t) for t in os.listdir(f"/proc/{p.proc.pid}/task"))}:
        (d / f".planted.snap.tmp-{pid}").symlink_to(victim)
    assert snapshot(p, {"name": "planted.snap"}).status == 200
    assert victim.read_bytes() == b"do not touch"
    assert (d / "planted.snap").read_bytes().startswith(MAGIC)
    assert not (d / "planted.snap").is_symlink()


@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
def test_a_file_that_is_not_a_snapshot_is_never_replaced(snapdir: tuple[Proc, Path], kind: str) -> None:
    p, d = snapdir
    victim = d.parent / "victim"
    victim.write_bytes(b"config = 1\n")
    target = d / "stackmapd.toml"
    if kind == "file":
        target.write_bytes(b"config = 1\n")
    elif kind == "symlink":
        target.symlink_to(victim)
    else:
        target.mkdir()
    refused(snapshot(p, {"name": "stackmapd.toml"}), 409)
    assert victim.read_bytes() == b"config = 1\n"
    if kind == "file":
        assert target.read_bytes() == b"config = 1\n"
    assert sorted(os.listdir(d)) == ["stackmapd.toml"]


def test_without_a_snapshot_directory_the_endpoint_says_so(srv: Proc) -> None:
    answer = snapshot(srv, {"name": "x.snap"})
    refused(answer, 400)
    assert "--snapshot-dir" in answer.json()["error"]
    refused(snapshot(srv, {}), 400)


def test_default_snapshot_directory_is_that_of_snapshot(tmp_path: Path) -> None:
    p = start(["--snapshot", str(tmp_path / "main.snap")])
    try:
        assert snapshot(p, {"name": "extra.snap"}).status == 200
        assert (tmp_path / "extra.snap").read_bytes().startswith(MAGIC)
    finally:
        p.stop()
        p.cleanup()


def test_snapshot_dir_must_exist(tmp_path: Path) -> None:
    r = subprocess.run([str(Path(sys.executable).parent / "stackmapd"), "--snapshot-dir",
                        str(tmp_path / "nope"), "-p", "0", "--metrics-listen", "off"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 64 and "not a directory" in r.stderr, r


def test_temporary_files_left_by_a_crash_are_removed_at_start(tmp_path: Path) -> None:
    d = tmp_path / "snaps"
    d.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (d / ".main.snap.tmp-1f2e3d4c5b6a7988").write_bytes(b"half a snapshot")
    (d / ".main.snap.tmp-4242").write_bytes(b"an older version's name")
    (d / ".other.tmp-ab").symlink_to(victim)
    (d / ".keep").write_bytes(b"not ours")
    (d / "main.snap.tmp-1").write_bytes(b"not ours either")
    p = start(["--snapshot", str(d / "main.snap"), "-v"])
    try:
        assert sorted(os.listdir(d)) == [".keep", ".other.tmp-ab", "main.snap.tmp-1"]
        assert victim.read_bytes() == b"keep"
        assert "temporary snapshot file left by a crash" in p.log()
    finally:
        p.stop()
        p.cleanup()


def test_a_save_killed_midway_leaves_no_temporary_after_restart(tmp_path: Path) -> None:
    """SIGKILL while --snapshot is being written at exit, then start again."""
    path = tmp_path / "main.snap"
    p = start(["-m", "256", "--snapshot", str(path)])
    try:
        with p.conn() as s:
            pipeline_sets(s, [(b"big:%d" % i, 0, 0, b"v" * 100_000) for i in range(1500)])
        p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60  # a guard only: the save of 150 MB takes a while
        while time.monotonic() < deadline and p.proc.poll() is None:
            if any(n.startswith(".main.snap.tmp-") for n in os.listdir(tmp_path)):
                p.proc.kill()
                break
        p.proc.wait()
        left = [n for n in os.listdir(tmp_path) if n.startswith(".main.snap.tmp-")]
        assert left and not path.exists(), "the save was not caught midway"
    finally:
        p.cleanup()
    q = start(["--snapshot", str(path)])
    try:
        assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
        assert f"removed {tmp_path / left[0]}" in q.log() or "left by a crash" in q.log()
    finally:
        q.stop()
        q.cleanup()
