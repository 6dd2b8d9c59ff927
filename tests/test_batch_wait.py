"""The io_uring backend's batch wait (-o uring_batch_usec).

A loaded worker whose CPU never idles asks the kernel for a batch of
arrivals instead of waking at the first one (the clients that share its CPU
run meanwhile); a lightly loaded worker, or one told 0, wakes at the first
arrival.  The counters uring_batch_waits / uring_batch_timeouts show which
happened.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import HOST, Server, Target
from mcwire import stats


def memaslap_same_cpu(srv: Server, seconds: int) -> dict[str, int]:
    """memaslap c=64 and the server on CPU 0 for `seconds`; the counters' deltas."""
    memaslap = shutil.which("memcaslap")
    if memaslap is None:
        pytest.fail("memcaslap (libmemcached-tools) is required; make test installs it")
    if shutil.which("taskset") is None:
        pytest.skip("taskset (util-linux) is needed to share one CPU")
    cfg = Path(srv.log_path).with_suffix(".memaslap.cfg")
    cfg.write_text("key\n64 64 1\nvalue\n64 64 1\ncmd\n0 0.1\n1 0.9\n")
    for task in Path(f"/proc/{srv.pid}/task").iterdir():
        subprocess.run(["taskset", "-p", "-c", "0", task.name], check=False, capture_output=True)
    names = ("cmd_get", "cmd_set", "uring_batch_waits", "uring_batch_timeouts", "uring_submits")
    before = stats(HOST, srv.port)
    subprocess.run(
        ["taskset", "-c", "0", memaslap, "-s", f"{HOST}:{srv.port}", "-T", "1", "-c", "64",
         "-F", str(cfg), "-t", f"{seconds}s"],
        check=True, capture_output=True, timeout=60,
    )
    after = stats(HOST, srv.port)
    return {n: int(after[n]) - int(before[n]) for n in names}


def uring_only(target: Target) -> None:
    if target.backend != "uring":
        pytest.skip("the batch wait is a property of the uring backend")


def test_batch_wait_engages_when_clients_share_the_cpu(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    uring_only(target)
    srv = start_server(target, ["-t", "1"])
    assert stats(HOST, srv.port, "settings")["uring_batch_usec"] == "500"
    d = memaslap_same_cpu(srv, 3)
    requests = d["cmd_get"] + d["cmd_set"]
    assert requests > 1000, f"memaslap served only {requests} requests"
    assert d["uring_batch_waits"] > 0, f"no batch waits in {requests} requests on a busy CPU: {d}"
    assert d["uring_batch_timeouts"] < d["uring_batch_waits"], d


def test_batch_wait_off_when_disabled(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    uring_only(target)
    srv = start_server(target, ["-t", "1", "-o", "uring_batch_usec=0"])
    d = memaslap_same_cpu(srv, 2)
    assert d["cmd_get"] + d["cmd_set"] > 1000
    assert d["uring_batch_waits"] == 0, d


def test_no_batch_wait_for_one_client(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    """A lone client's requests are answered at once: no round ever shows load."""
    uring_only(target)
    srv = start_server(target, ["-t", "1"])
    before = stats(HOST, srv.port)
    with srv.wire() as w:
        w.expect(b"set k 0 0 1\r\nv\r\n", b"STORED\r\n")
        for _ in range(3000):
            w.expect(b"get k\r\n", b"VALUE k 0 1\r\nv\r\nEND\r\n")
    after = stats(HOST, srv.port)
    assert int(after["uring_batch_waits"]) - int(before["uring_batch_waits"]) == 0
