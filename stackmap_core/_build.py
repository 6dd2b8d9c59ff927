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

What the build needs from the system is checked before anything compiles,
so a missing piece is named instead of surfacing as a compiler error: a C
compiler (build-essential) and Python's headers (python3-dev) are required;
liburing (liburing-dev) is optional.  liburing counts as present only when a
small program using it compiles *and links* with the compiler setuptools
will use (pkg-config's flags when pkg-config knows liburing, else plain
``-luring``): a header without the library, or the library without
pkg-config, can no longer give a module that fails at import.  Without it
the uring backend is compiled out (``SM_HAVE_URING`` undefined) and the
engine refuses ``--backend uring`` naming liburing-dev.  ``SM_NO_URING=1``
in the environment builds without it on purpose.

The detected configuration is written into cffi's generated wrapper (a
comment), so that a rebuild after installing or removing liburing-dev
changes the wrapper's text; setuptools then sees a newer source than the
extension in ``build/`` and recompiles every file, instead of reusing
objects built for the other configuration.

The compiler and linker flags are decided here and nowhere else:
:func:`compile_flags` and :func:`link_flags` give them to the extension
build, and ``python stackmap_core/_build.py --cflags`` / ``--libs`` print
the same lists for the Makefile's C-only targets (build/smd, the C tests,
the fuzz and sanitizer builds; no cffi needed), which add only their own
optimisation level and sanitizers.  tests/test_build.py checks that the
Makefile and the extension build get the same flags.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
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
# under -Wall -Wextra -Werror, so nothing is relaxed for it.  The first line
# records the build configuration (see the module docstring for why).
WRAPPER_PREAMBLE = '/* stackmapd build configuration: {config} */\n#include "engine.h"\n'


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
    """(cflags, libs) from pkg-config, or None when pkg-config or the package is missing."""
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


class BuildRequirementError(RuntimeError):
    """Something the build needs from the system is missing; the message names the package."""


def compiler() -> list[str]:
    """The C compiler command setuptools will use: $CC, else the one Python was built with."""
    return shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")


def check_build_requirements() -> None:
    """Raise BuildRequirementError naming the Debian package for a missing compiler or Python.h."""
    cc = compiler()
    if not cc or shutil.which(cc[0]) is None:
        raise BuildRequirementError(
            f"no C compiler ({' '.join(cc) or 'cc'} not found): install build-essential "
            "(Debian/Ubuntu: apt-get install build-essential)"
        )
    if not any(Path(d, "openssl", "ssl.h").is_file() for d in ("/usr/include", "/usr/local/include")):
        raise BuildRequirementError(
            "openssl/ssl.h not found: TLS (-Z, tls.c) needs OpenSSL's headers; install libssl-dev "
            "(Debian/Ubuntu: apt-get install libssl-dev)"
        )
    paths = sysconfig.get_paths()
    for key, header in (("include", "Python.h"), ("platinclude", "pyconfig.h")):
        path = Path(paths[key]) / header
        if not path.is_file():
            raise BuildRequirementError(
                f"{path} not found: Python's C headers for {sys.executable} are missing; "
                f"install python{sys.version_info.major}-dev (Debian/Ubuntu: apt-get install "
                f"python{sys.version_info.major}-dev), or the headers of this interpreter"
            )


# A program using liburing the way io/uring.c does: the newest calls it makes
# (liburing 2.3, Debian 12's) and calls that live in the library, so both the
# header and the library must be there for it to compile and link.
URING_PROBE = r"""
#include <liburing.h>
#include <stddef.h>
int main(void) /* compiled and linked, never run */
{
    struct io_uring ring;
    struct io_uring_sqe sqe;
    io_uring_queue_init(1, &ring, 0);
    io_uring_prep_sendmsg_zc(&sqe, 0, NULL, 0);
    io_uring_prep_recv_multishot(&sqe, 0, NULL, 0, 0);
    io_uring_register_files_sparse(&ring, 1);
    io_uring_register_files_update(&ring, 0, NULL, 0);
    io_uring_register_buf_ring(&ring, NULL, 0);
    io_uring_submit_and_wait_timeout(&ring, NULL, 1, NULL, NULL);
    io_uring_queue_exit(&ring);
    return 0;
}
"""


class Uring(NamedTuple):
    """Whether liburing is usable for this build, with its flags or why not.

    (A NamedTuple, not a dataclass: cffi runs this file outside sys.modules,
    where dataclasses cannot resolve the module's annotations.)
    """

    present: bool  # a liburing program compiled and linked
    cflags: tuple[str, ...]  # compiler flags (pkg-config --cflags), without -DSM_HAVE_URING
    libs: tuple[str, ...]  # linker flags, e.g. ("-luring",)
    why: str  # when absent: the reason, for the build log

    def describe(self) -> str:
        """One line for the build log and the wrapper's configuration comment."""
        if self.present:
            return f"uring=yes ({' '.join(self.libs)})"
        return f"uring=no ({self.why})"


def detect_uring() -> Uring:
    """Compile and link URING_PROBE with the build's compiler, pkg-config's flags or -luring."""
    if os.environ.get("SM_NO_URING", "") not in ("", "0"):
        return Uring(False, (), (), "SM_NO_URING is set")
    found = pkg_config("liburing")
    cflags, libs = found if found is not None else ([], ["-luring"])
    with tempfile.TemporaryDirectory(prefix="sm-uring-probe-") as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text(URING_PROBE, encoding="utf-8")
        try:
            result = subprocess.run(
                # Relative names: the reason goes into the wrapper's text and
                # must not change from one build to the next.
                [*compiler(), *cflags, src.name, "-o", "probe", *libs],
                cwd=tmp, check=False, capture_output=True, text=True,
            )
        except OSError as exc:
            return Uring(False, (), (), f"cannot run the compiler: {exc}")
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line] or lines or ["the compiler failed"]
        return Uring(False, (), (), f"liburing >= 2.3 not usable, install liburing-dev: {errors[0]}")
    return Uring(True, tuple(cflags), tuple(libs), "")


def compile_flags(uring: Uring) -> list[str]:
    """Every compiler flag of the C core: strict flags, include path, liburing's."""
    flags = [*STRICT_FLAGS, f"-I{SRC.relative_to(HERE.parent)}"]
    if uring.present:
        flags += ["-DSM_HAVE_URING=1", *(f for f in uring.cflags if f not in flags)]
    return flags


def link_flags(uring: Uring) -> list[str]:
    """Every linker flag of the C core: threads, liburing when present, OpenSSL (tls.c)."""
    return ["-pthread", *(uring.libs if uring.present else ()), "-lssl", "-lcrypto"]


def make_builder(uring: Uring | None = None) -> FFI:
    """Configure the FFI builder (does not compile); checks the system first."""
    from cffi import FFI

    check_build_requirements()
    if uring is None:
        uring = detect_uring()
    print(f"stackmapd build: {uring.describe()}", file=sys.stderr)

    builder = FFI()
    builder.cdef(read_cdef())

    # setuptools wants the libraries by name; the other link flags pass as they are.
    link = link_flags(uring)
    libraries = [f[2:] for f in link if f.startswith("-l")]
    extra_link = [f for f in link if not f.startswith("-l")]

    root = HERE.parent
    builder.set_source(
        "stackmap_core._stackmap_core",
        WRAPPER_PREAMBLE.format(config=uring.describe().replace("*/", "* /")),
        sources=core_sources(),
        depends=[*core_headers(), str((HERE / "_build.py").relative_to(root))],  # new flags rebuild too
        extra_compile_args=compile_flags(uring),
        extra_link_args=extra_link,
        libraries=libraries,
    )
    return builder


def main(argv: list[str]) -> int:
    """``--cflags`` / ``--libs`` for the Makefile; no argument: build in place."""
    if argv in (["--cflags"], ["--libs"]):
        uring = detect_uring()
        print(" ".join(compile_flags(uring) if argv[0] == "--cflags" else link_flags(uring)))
        return 0
    if argv:
        print("usage: _build.py [--cflags | --libs]", file=sys.stderr)
        return 2
    make_builder().compile(verbose=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
else:
    # cffi's setuptools hook (setup.py's cffi_modules) runs this file and takes
    # `ffibuilder`; a missing system package stops the build here, named.
    try:
        ffibuilder = make_builder()
    except BuildRequirementError as exc:
        sys.exit(f"stackmapd build: error: {exc}")
