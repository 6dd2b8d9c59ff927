"""The README's generated sections (flags, extended options, metrics) are current.

``python -P -m stackmapd.docs --check`` is run as a user runs it; after a
change to options.h or stats_table.h it fails until
``python -P -m stackmapd.docs`` has rewritten README.md.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def docs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-P", "-m", "stackmapd.docs", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO)


def test_readme_generated_sections_are_current() -> None:
    proc = docs("--check", "README.md")
    assert proc.returncode == 0, proc.stderr


def test_a_stale_section_is_named_and_rewritten(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", readme)
    text = readme.read_text(encoding="utf-8")
    stale = text.replace("| `-p`, `--port` |", "| `-p`, `--port-number` |", 1)
    assert stale != text
    readme.write_text(stale, encoding="utf-8")
    proc = docs("--check", str(readme))
    assert proc.returncode == 1 and "stale generated sections: flags" in proc.stderr
    assert readme.read_text(encoding="utf-8") == stale  # --check changes nothing
    assert docs(str(readme)).returncode == 0
    assert readme.read_text(encoding="utf-8") == text
