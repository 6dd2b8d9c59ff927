"""What the atheris harnesses here share around atheris itself.

Each harness writes every input to one scratch file (the loaders it fuzzes
read files) and runs the fuzzer from its ``main``.  libFuzzer ends the
process with exit() from C, so no Python clean-up runs after a fuzzing
run: tests/fuzz/run.sh gives each harness a scratch directory
(``FUZZ_SCRATCH``) and removes it afterwards; run by hand, a harness makes
its own under the temporary directory and leaves it there.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris


def scratch_file(prefix: str, name: str) -> Path:
    """A path ``name`` in $FUZZ_SCRATCH, or in a new private temporary directory."""
    parent = os.environ.get("FUZZ_SCRATCH") or tempfile.mkdtemp(prefix=prefix)
    return Path(parent) / name


def fuzz_main(test_one: Callable[[bytes], None]) -> None:
    """Run libFuzzer (flags and corpus directories from sys.argv) over ``test_one``."""
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
