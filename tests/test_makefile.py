"""The Makefile's housekeeping targets, run for real in a scratch directory.

- ``make clean-c`` removes what the C targets build (and setuptools' staged
  objects) but leaves the caches that are slow or impossible to remake: the
  VM images in build/vm, the fuzz corpora and findings, TSan reports and the
  kernel module's build.  It used to ``rm -rf build``.
- ``make lint`` needs nothing but the lint tools: a venv with ruff, no system
  packages, no build of the package.  It used to install the test extra
  (which builds the package) after apt-test (memcached, Prometheus, ...).

The (flag) agreement between the Makefile and the extension build is in
tests/test_build.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

KEPT = ["build/vm/base-abc123.qcow2", "build/vm/run/console.log", "build/fuzz/corpus/fuzz_conn/seed-1",
        "build/fuzz/findings/fuzz_conn/crash-1", "build/tsan/report.1", "build/kernel/stackmap.ko"]
REMOVED = ["build/smd", "build/smd-asan", "build/test_cache", "build/check.o", "build/mcblast",
           "build/fuzz/fuzz_conn", "build/fuzz/fuzz_snapshot",
           "build/lib.linux-x86_64-cpython-311/stackmap_core/__init__.py",
           "build/temp.linux-x86_64-cpython-311/stackmap_core/src/conn.o"]


def make(tree: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", "-C", str(tree), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_clean_c_keeps_the_vm_cache_and_the_fuzz_corpora(tmp_path: Path) -> None:
    shutil.copy2(REPO / "Makefile", tmp_path / "Makefile")
    for name in KEPT + REMOVED:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    proc = make(tmp_path, "clean-c")
    assert proc.returncode == 0, proc.stderr
    assert [n for n in KEPT if not (tmp_path / n).exists()] == [], "clean-c deleted a cache"
    assert [n for n in REMOVED if (tmp_path / n).exists()] == [], "clean-c left a C build output"
    assert not any((tmp_path / "build").glob("lib.*")) and not any((tmp_path / "build").glob("temp.*"))


def test_lint_installs_only_the_lint_tools(tmp_path: Path) -> None:
    """A tree with no C core, no setup.py: lint still runs, and the venv holds ruff alone."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(REPO / name, tmp_path / name)
    (tmp_path / "clean.py").write_text('"""Nothing to report."""\n')
    proc = make(tmp_path, "lint", f"PYTHON={sys.base_prefix}/bin/python3", timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "All checks passed" in proc.stdout, proc.stdout
    listed = subprocess.run([str(tmp_path / ".venv/bin/python"), "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, timeout=120, check=True).stdout
    installed = {line.split("==")[0].lower() for line in listed.split()}
    assert "ruff" in installed, installed
    assert installed <= {"ruff", "pip", "setuptools", "wheel"}, installed

    # And it does lint: a finding fails the target.
    (tmp_path / "dirty.py").write_text("import os\n")
    proc = make(tmp_path, "lint", f"PYTHON={sys.base_prefix}/bin/python3", timeout=600)
    assert proc.returncode != 0 and "F401" in proc.stdout, proc.stdout
