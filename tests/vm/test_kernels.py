"""Our own kernels (kernel/build-kernel.sh) and the module's ring tests under them.

Each test boots a throwaway qemu TCG guest through kernel/test/ringtest-vm.sh:
- appliance: the patched appliance kernel (1 vCPU) runs ringtest against
  stackmap.ko built against that very tree;
- debug: the same kernel with KASAN (+KASAN_VMALLOC), kmemleak, lockdep and
  DEBUG_ATOMIC_SLEEP, on 2 vCPUs so that ringtest's concurrent clients race
  the port owner's sync; hostile rings, SIGKILL of a port owner and rmmod
  included, then a kmemleak scan; any KASAN, kmemleak or lockdep report in
  the guest log fails it.
and a second build of a kernel must come from the cache (no compiler run).

A first run builds the kernels (tens of minutes on 2 cores; cached outside
the checkout afterwards), so these run only when SM_KERNEL_TESTS=1, which
``make kernel-test`` (part of ``make test``) sets.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.environ.get("SM_KERNEL_TESTS") != "1",
    reason="kernel builds and TCG boots are slow: SM_KERNEL_TESTS=1 (make kernel-test) runs them",
)


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", ["appliance", "debug"])
def test_ringtest_under_our_kernel(name: str) -> None:
    """ringtest passes in the guest and the guest kernel log has no report."""
    p = _run(["sh", "kernel/test/ringtest-vm.sh", name], timeout=3 * 3600)
    lines = p.stdout.strip().splitlines()
    detail = "\n".join(lines[-40:]) + "\n--- stderr ---\n" + p.stderr[-4000:]
    assert p.returncode == 0, detail
    assert lines and lines[-1].startswith(f"KERNEL-VM PASS {name}"), detail
    assert "RINGTEST PASS" in lines, detail


@pytest.mark.parametrize("name", ["appliance", "debug"])
def test_kernel_build_is_cached(name: str) -> None:
    """Building an already built kernel again compiles nothing and names the same directory."""
    first = _run(["sh", "kernel/build-kernel.sh", name], timeout=3 * 3600)
    assert first.returncode == 0, first.stderr[-4000:]
    again = _run(["sh", "kernel/build-kernel.sh", name], timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    out = again.stdout.strip().splitlines()[-1]
    assert out == first.stdout.strip().splitlines()[-1]
    assert "building" not in again.stderr and "unpacking" not in again.stderr, again.stderr
    for f in ("bzImage", "vmlinux", "System.map", ".config", "stackmap.ko", "kernelrelease"):
        assert (Path(out) / f).is_file(), f
    krel = (Path(out) / "kernelrelease").read_text().strip()
    assert (Path(out) / "modules" / "lib" / "modules" / krel / "extra" / "stackmap.ko").is_file()
