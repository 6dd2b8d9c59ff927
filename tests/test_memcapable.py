"""memcapable (Debian's `memccapable`) in ASCII mode against the target.

libmemcached's conformance tool runs its own checks of every text command.
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

TOOL = shutil.which("memccapable") or shutil.which("memcapable")


def run_memcapable(srv: Server) -> tuple[int, dict[str, str], str]:
    assert TOOL
    proc = subprocess.run(
        [TOOL, "-a", "-t", "5", "-h", srv.host, "-p", str(srv.port)],
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
def test_memcapable_ascii(start_server, target) -> None:  # type: ignore[no-untyped-def]
    ref_rc, ref_results, ref_out = run_memcapable(start_server(MEMCACHED, []))
    assert ref_rc == 0 and ref_results, f"memcapable fails against memcached itself:\n{ref_out}"
    assert all(v == "pass" for v in ref_results.values()), ref_out
    rc, results, out = run_memcapable(start_server(target, []))
    failed = sorted(name for name, v in results.items() if v != "pass")
    assert not failed, f"memcapable failures: {failed}\n{out}"
    assert set(results) == set(ref_results), f"tests run differ from memcached's run:\n{out}"
    assert rc == 0, f"memcapable exit code {rc}\n{out}"
