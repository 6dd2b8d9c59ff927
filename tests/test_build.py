"""The package build on machines that lack liburing or pkg-config.

Each test copies the package's sources into a temporary directory and builds
the cffi extension there the way ``pip install .`` does (setup.py, cffi's
hook, stackmap_core/_build.py, setuptools' build_ext), with this venv's
setuptools and cffi, then runs the result as real processes:

- liburing hidden (``SM_NO_URING=1``): the module imports, ``--backend uring``
  is refused at start naming liburing-dev, ``--backend auto`` serves.
- pkg-config missing but liburing installed: the module links liburing and
  imports (it used to fail with ``undefined symbol: io_uring_...``).
- a rebuild in the same tree after liburing appears compiles uring in
  (setuptools used to reuse the extension built without it).
- the Makefile's C targets and the extension build compile the core with
  the same flags (they used to keep a list each, and drifted).
- the wheel ``pip wheel`` builds installs exactly the packages ``stackmapd``
  and ``stackmap_core`` (it used to install a top-level ``server``, which
  collides with any other package of that name in site-packages).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import HOST, free_port
from mcwire import Wire

REPO = Path(__file__).resolve().parent.parent
# What the sdist carries (MANIFEST.in) and the build reads.
TREE = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "stackmap_core", "stackmapd",
        "kernel/include"]
BUILD_TIMEOUT = 600


def copy_tree(dest: Path) -> Path:
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.o", "_stackmap_core*.c")
    for name in TREE:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def build(tree: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``setup.py build_ext --inplace`` in ``tree``; fails the test with the output if it fails."""
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert proc.returncode == 0, f"build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def built_backends(tree: Path, env: dict[str, str]) -> list[str]:
    """Import the freshly built module (from ``tree``) and ask it which backends it has."""
    code = "import stackmap_core as s; print(' '.join(s.built_backends()))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"the built module does not import:\n{proc.stderr[-3000:]}"
    return proc.stdout.split()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SM_NO_URING", "PYTHONPATH")}
    env.update(extra)
    return env


def stackmapd(tree: Path, port: int, *args: str) -> list[str]:
    """The CLI of the module built in ``tree`` (cwd=tree puts it first on sys.path)."""
    return [sys.executable, "-m", "stackmapd", "-l", HOST, "-p", str(port), *args]


def test_without_liburing_the_module_imports_and_refuses_uring(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path / "src")
    env = clean_env(SM_NO_URING="1")
    out = build(tree, env)
    assert "uring=no" in out.stderr
    assert built_backends(tree, env) == ["auto", "epoll", "stackmap"]

    version = subprocess.run([sys.executable, "-m", "stackmapd", "--version"], cwd=tree, env=env,
                             capture_output=True, text=True, timeout=60)
    assert "backends built in: epoll, stackmap)" in version.stdout, version.stdout

    port = free_port()
    refused = subprocess.run(stackmapd(tree, port, "--backend", "uring"), cwd=tree, env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 64, refused.stderr  # a usage error, like memcached's bad flags
    assert "built without liburing" in refused.stderr
    assert "liburing-dev" in refused.stderr

    # auto skips uring, says why, and serves.
    log = tmp_path / "auto.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(stackmapd(tree, port, "--backend", "auto", "-v"), cwd=tree, env=env,
                                stdout=sink, stderr=subprocess.STDOUT)
    try:
        reply = b""
        for _ in range(150):
            assert proc.poll() is None, log.read_text()
            try:
                with Wire(HOST, port, timeout=2.0) as w:
                    reply = w.request(b"version\r\n")
                break
            except OSError:
                time.sleep(0.1)
        assert reply.startswith(b"VERSION "), log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "backend epoll" in text or "backend stackmap" in text, text
    assert "built without liburing" in text, text


def test_without_pkg_config_liburing_is_still_linked(tmp_path: Path) -> None:
    # A PATH with every tool of the current one except pkg-config.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        d = Path(entry)
        if not d.is_dir():
            continue
        for tool in d.iterdir():
            if "pkg-config" in tool.name or "pkgconf" in tool.name or (bin_dir / tool.name).exists():
                continue
            (bin_dir / tool.name).symlink_to(tool)
    env = clean_env(PATH=str(bin_dir))
    assert shutil.which("pkg-config", path=env["PATH"]) is None
    tree = copy_tree(tmp_path / "src")
    build(tree, env)
    assert "uring" in built_backends(tree, env)


def test_rebuild_after_liburing_appears_compiles_uring_in(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path / "src")
    build(tree, clean_env(SM_NO_URING="1"))
    assert "uring" not in built_backends(tree, clean_env())
    # Nothing changed: the second build keeps the extension as it is.
    (module,) = (tree / "stackmap_core").glob("_stackmap_core*.so")
    before = module.stat().st_mtime_ns
    build(tree, clean_env(SM_NO_URING="1"))
    assert module.stat().st_mtime_ns == before
    # Same tree, same build/ directory, liburing now usable: uring must be in.
    # setuptools compares whole seconds of mtime (distutils' newer_group), so
    # a wrapper regenerated in the same second as the last link looks no
    # newer than the module; a user installing liburing-dev takes longer than
    # that, so date the earlier build's modules back by a few seconds.
    for so in [module, *(tree / "build").glob("lib.*/stackmap_core/_stackmap_core*.so")]:
        st = so.stat()
        os.utime(so, ns=(st.st_atime_ns, st.st_mtime_ns - 5_000_000_000))
    out = build(tree, clean_env())
    assert "uring=yes" in out.stderr
    assert "uring" in built_backends(tree, clean_env())


def extension_flags(env: dict[str, str]) -> tuple[list[str], list[str]]:
    """(compile, link) flags stackmap_core/_build.py gives cffi for the extension, as flags."""
    spec = importlib.util.spec_from_file_location("_sm_build", REPO / "stackmap_core" / "_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        spec.loader.exec_module(module)  # runs make_builder(), as cffi's setuptools hook does
    finally:
        os.environ.clear()
        os.environ.update(saved)
    kw = module.ffibuilder._assigned_source[3]  # what set_source() hands setuptools
    compile_flags = [*kw.get("extra_compile_args", []), *(f"-I{d}" for d in kw.get("include_dirs", [])),
                     *(f"-D{n}" if v is None else f"-D{n}={v}" for n, v in kw.get("define_macros", []))]
    link_flags = [*kw.get("extra_link_args", []), *(f"-l{lib}" for lib in kw.get("libraries", []))]
    return compile_flags, link_flags


def make_flags(env: dict[str, str]) -> tuple[list[str], list[str]]:
    """(compile, link) flags the Makefile's C targets use for the core (CFLAGS_CORE, CORE_LIBS)."""
    show = "sm-show-flags: ; @echo '$(CFLAGS_CORE)'; echo '$(CORE_LIBS)'"
    proc = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(REPO), "--eval", show,
                           f"PYTHON={sys.executable}", "sm-show-flags"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    compile_line, link_line = proc.stdout.splitlines()
    return compile_line.split(), link_line.split()


@pytest.mark.parametrize("uring", ["detected", "SM_NO_URING"])
def test_make_and_the_extension_build_use_the_same_flags(uring: str) -> None:
    env = clean_env(SM_NO_URING="1") if uring == "SM_NO_URING" else clean_env()
    make_compile, make_link = make_flags(env)
    ext_compile, ext_link = extension_flags(env)
    assert sorted(make_compile) == sorted(ext_compile), (
        f"only in the Makefile: {sorted(set(make_compile) - set(ext_compile))}; "
        f"only in _build.py: {sorted(set(ext_compile) - set(make_compile))}")
    assert sorted(make_link) == sorted(ext_link)
    assert ("-DSM_HAVE_URING=1" in make_compile) == (uring == "detected" and "-luring" in make_link)


def test_wheel_holds_exactly_the_stackmapd_and_stackmap_core_packages(tmp_path: Path) -> None:
    """Build the wheel as ``pip install .`` does and read what it would install."""
    tree = copy_tree(tmp_path / "src")
    dist = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", str(dist)],
                          cwd=tree, env=clean_env(), capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    (wheel,) = dist.glob("stackmapd-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top_level = zf.read(next(n for n in names if n.endswith(".dist-info/top_level.txt"))).decode().split()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    installed = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert installed == {"stackmapd", "stackmap_core"}, sorted(installed)
    assert sorted(top_level) == ["stackmap_core", "stackmapd"]
    # Every module of the tree ships (a new one cannot be left out), the compiled core too.
    for package in ("stackmapd", "stackmap_core"):
        for module in (REPO / package).glob("*.py"):
            assert f"{package}/{module.name}" in names, f"{package}/{module.name} is not in the wheel"
    assert any(n.startswith("stackmap_core/_stackmap_core.") and n.endswith(".so") for n in names), names
    # The console scripts point into the package the wheel carries.
    assert "stackmapd = stackmapd.cli:main" in entry_points, entry_points
    assert "stackmapctl = stackmapd.ctl:main" in entry_points, entry_points
