"""cffi builder for the C data plane (API mode, out of line).

This is the only place where C meets Python.  ``setup.py`` names it in
``cffi_modules``; building the package runs it, which compiles every ``.c``
file under ``stackmap_core/src`` together with cffi's generated wrapper into
one extension module, ``stackmap_core._stackmap_core``.

The declarations cffi sees are not repeated here: they are read from
``engine.h`` between its ``SM_CDEF_BEGIN`` / ``SM_CDEF_END`` markers, so the
header stays the single contract between the two sides.

Every source, ours and cffi's generated wrapper alike, is compiled with the
project's strict flags (``-Wall -Wextra -Werror``); cffi 2.0's wrapper
compiles cleanly under them, so no warning needs relaxing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
HEADER = SRC / "engine.h"
BEGIN = "/* SM_CDEF_BEGIN */"
END = "/* SM_CDEF_END */"

STRICT_FLAGS = [
    "-std=c11",
    "-D_GNU_SOURCE",
    "-O2",
    "-g",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-pthread",
    # Only the module's init function (PyMODINIT_FUNC marks it) leaves the
    # shared object; everything else binds inside it, so calls between our
    # files do not go through the PLT nor globals through the GOT.
    "-fvisibility=hidden",
    # Python's own CFLAGS come first and carry -fwrapv; our C is built and
    # tested without it (build/smd, tests/c), so the module is built alike.
    "-fno-wrapv",
]

# cffi pastes this in front of its generated wrapper.  The wrapper is built
# with the same strict flags as our sources: checked clean with cffi 2.0
# under -Wall -Wextra -Werror, so nothing is relaxed for it.
WRAPPER_PREAMBLE = '#include "engine.h"\n'


def read_cdef(header: Path = HEADER) -> str:
    """Return the text of ``header`` between the cdef markers."""
    text = header.read_text(encoding="utf-8")
    start = text.find(BEGIN)
    stop = text.find(END)
    if start < 0 or stop < 0 or stop < start:
        raise RuntimeError(f"{header}: missing {BEGIN} / {END} markers")
    return text[start + len(BEGIN) : stop]


def core_sources(src: Path = SRC) -> list[str]:
    """Every C file of the data plane, recursively, sorted, relative paths.

    setuptools wants paths relative to the project root (where setup.py
    runs); absolute paths would also leak into the wheel's build metadata.
    """
    root = HERE.parent
    return sorted(str(p.relative_to(root)) for p in src.rglob("*.c"))


# The kernel module's uapi header, shared with the stackmap backend (io/stackmap.c).
UAPI = HERE.parent / "kernel" / "include" / "uapi" / "stackmap.h"


def core_headers(src: Path = SRC) -> list[str]:
    """Every header, so that a changed header rebuilds the extension."""
    root = HERE.parent
    return sorted(str(p.relative_to(root)) for p in [*src.rglob("*.h"), UAPI])


def pkg_config(package: str) -> tuple[list[str], list[str]] | None:
    """(cflags, libs) from pkg-config, or None when the package is missing."""
    if shutil.which("pkg-config") is None:
        return None
    probe = subprocess.run(
        ["pkg-config", "--exists", package], check=False, capture_output=True
    )
    if probe.returncode != 0:
        return None
    cflags = subprocess.run(
        ["pkg-config", "--cflags", package], check=True, capture_output=True, text=True
    ).stdout.split()
    libs = subprocess.run(
        ["pkg-config", "--libs", package], check=True, capture_output=True, text=True
    ).stdout.split()
    return cflags, libs


def make_builder() -> FFI:
    """Configure the FFI builder (does not compile)."""
    builder = FFI()
    builder.cdef(read_cdef())

    libraries = ["pthread"]
    extra_compile = list(STRICT_FLAGS)
    extra_link = ["-pthread"]
    uring = pkg_config("liburing")
    if uring is not None:
        cflags, libs = uring
        extra_compile += [f for f in cflags if f not in extra_compile]
        libraries += [f[2:] for f in libs if f.startswith("-l")]
        extra_link += [f for f in libs if not f.startswith("-l")]

    root = HERE.parent
    builder.set_source(
        "stackmap_core._stackmap_core",
        WRAPPER_PREAMBLE,
        sources=core_sources(),
        depends=[*core_headers(), str((HERE / "_build.py").relative_to(root))],  # new flags rebuild too
        include_dirs=[str(SRC.relative_to(root))],
        extra_compile_args=extra_compile,
        extra_link_args=extra_link,
        libraries=libraries,
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
