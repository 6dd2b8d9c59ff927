"""memcapable (Debian's `memccapable`) in ASCII and binary mode against the target,
and memaslap (`memcaslap`) driving the binary protocol.

libmemcached's conformance tool runs its own checks of every text command
(-a) and of every binary opcode (-b).
It prints one "[pass]" or "[FAIL]" line per check; all must pass and it must
exit 0.  The same run against memcached shows that the tool and the
environment are fine (parity), so a failure points at the target.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from conftest import MEMCACHED, Server
from mcwire import stats

TOOL = shutil.which("memccapable") or shutil.which("memcapable")


def run_memcapable(srv: Server, mode: str = "-a") -> tuple[int, dict[str, str], str]:
    assert TOOL
    proc = subprocess.run(
        [TOOL, mode, "-t", "5", "-h", srv.host, "-p", str(srv.port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    results = {
        m.group(1).strip(): m.group(2)
        for m in re.finditer(r"^(.*?)\s+\[(pass|FAIL|skip)\]\s*$", out, re.M)
    }
    return proc.returncode, results, out


@pytest.mark.skipif(TOOL is None, reason="memccapable (libmemcached-tools) not installed")
@pytest.mark.parametrize("mode", ["-a", "-b"], ids=["ascii", "binary"])
def test_memcapable(start_server, target, mode: str) -> None:  # type: ignore[no-untyped-def]
    ref_rc, ref_results, ref_out = run_memcapable(start_server(MEMCACHED, []), mode)
    assert ref_rc == 0 and ref_results, f"memcapable fails against memcached itself:\n{ref_out}"
    assert all(v == "pass" for v in ref_results.values()), ref_out
    rc, results, out = run_memcapable(start_server(target, []), mode)
    failed = sorted(name for name, v in results.items() if v != "pass")
    assert not failed, f"memcapable failures: {failed}\n{out}"
    assert set(results) == set(ref_results), f"tests run differ from memcached's run:\n{out}"
    assert rc == 0, f"memcapable exit code {rc}\n{out}"


MEMASLAP = shutil.which("memcaslap") or shutil.which("memaslap")


@pytest.mark.skipif(MEMASLAP is None, reason="memcaslap (libmemcached-tools) not installed")
def test_memaslap_binary(start_server, target) -> None:  # type: ignore[no-untyped-def]
    """memaslap -B (binary protocol, 9:1 get/set) runs to completion, every
    get finds its value, and the server counts the binary commands."""
    srv = start_server(target, [])
    assert MEMASLAP
    proc = subprocess.run(
        [MEMASLAP, "-s", f"{srv.host}:{srv.port}", "-B", "-x", "20000", "-T", "2", "-c", "8"],
        capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    m = re.search(r"^cmd_get: (\d+)\s*$.*^cmd_set: (\d+)\s*$.*^get_misses: (\d+)\s*$", out, re.M | re.S)
    assert m, out
    gets, sets, misses = (int(x) for x in m.groups())
    assert gets + sets == 20000 and misses == 0, out
    st = stats(srv.host, srv.port)
    assert int(st["cmd_get"]) >= gets and int(st["cmd_set"]) >= sets, st
