"""memcached 1.6.18's own test suite (its t/ files) against stackmapd.

tests/mcsuite/setup.sh builds build/mctest/ as memcached's harness expects
a build directory to look (t/, timedrun, and memcached-debug: a wrapper that
starts stackmapd with each file's flags); tests/mcsuite/files.toml says, for
every file, whether it must pass (required), is run and reported while its
feature is built elsewhere (pending: a failure is an expected failure), or
is not run (not-applicable), and what Debian's memcached does with it.

One test per file and target: for stackmapd on each backend the file runs
with SM_MCTEST_BACKEND set; for the memcached target (``--target
memcached``) against /usr/bin/memcached, which re-measures the table's
memcached column.  The files mostly wait (sleeps, timeouts), so every run
of a session starts at once on a pool of SUITE_JOBS (default 6) and each
test waits for its own file's result: the whole suite costs about as long
as its slowest files.

Rows with ``ssl_test = true`` (the ssl_*.t files, which skip themselves
otherwise) run in memcached's TLS mode, SSL_TEST=1: the harness starts
every server with -Z and t/'s certificates and talks to it over TLS
(IO::Socket::SSL, Debian's libio-socket-ssl-perl).  Rows with ``also_tls =
true`` run twice, plain and in that mode (test ids ending "-tls"), as
memcached's ``make test_tls`` runs its whole suite; only a few files do,
the ones whose connections TLS changes (big values, closes, pipelining):
the whole suite again would double its time.

A file passes when perl exits 0 and its TAP plan ran (no "not ok"); it
skipped when it printed "1..0 # SKIP ...".
"""

from __future__ import annotations

import os
import signal
import subprocess
import tomllib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Target, stackmapd_executable

ROOT = Path(__file__).resolve().parent.parent
MCSUITE = ROOT / "tests" / "mcsuite"
TABLE = MCSUITE / "files.toml"
BUILD = Path(os.environ.get("SM_MCTEST_DIR", ROOT / "build" / "mctest"))
FILE_TIMEOUT = 120  # seconds for one file (the slowest take about 25 s alone)
JOBS = int(os.environ.get("SUITE_JOBS", "6"))
STATUSES = ("required", "pending", "not-applicable")
OUTCOMES = ("pass", "skip", "fail")


def load_table(path: Path = TABLE) -> dict[str, dict[str, str]]:
    """files.toml's rows, checked: every file has a known status and memcached outcome."""
    with path.open("rb") as f:
        files = tomllib.load(f)["files"]
    for name, row in files.items():
        if row.get("status") not in STATUSES or row.get("memcached") not in OUTCOMES:
            raise ValueError(f"{path}: {name}: status must be one of {STATUSES} and memcached one of {OUTCOMES}")
        if row["status"] != "required" and not row.get("why"):
            raise ValueError(f"{path}: {name} is {row['status']}: say why")
        if not isinstance(row.get("ssl_test", False), bool) or not isinstance(row.get("also_tls", False), bool):
            raise ValueError(f"{path}: {name}: ssl_test and also_tls are true or false")
        if row.get("also_tls") and (row["status"] != "required" or row["memcached"] != "pass"):
            raise ValueError(f"{path}: {name}: also_tls is for required files memcached passes")
    return files


FILES = load_table()


@dataclass
class Outcome:
    result: str  # pass, skip or fail
    output: str  # perl's stdout and stderr, the end of it


def run_file(name: str, env: dict[str, str]) -> Outcome:
    """One t/ file under memcached's harness, from the build directory."""
    proc = subprocess.Popen(["perl", f"t/{name}"], cwd=BUILD, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=FILE_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # perl, timedrun and the server it started
        out, _ = proc.communicate()
        for sock in Path("/tmp").glob(f"memcachetest.{proc.pid}.*"):  # the harness's END never ran
            sock.unlink(missing_ok=True)
        return Outcome("fail", out.decode(errors="replace")[-6000:] + f"\n(killed after {FILE_TIMEOUT} s)")
    text = out.decode(errors="replace")
    if proc.returncode == 0 and text.lstrip().startswith("1..0 # SKIP"):
        return Outcome("skip", text[-6000:])
    if proc.returncode == 0 and "\nnot ok" not in "\n" + text:
        return Outcome("pass", text[-6000:])
    return Outcome("fail", f"exit status {proc.returncode}\n" + text[-6000:])


def setup_build() -> None:
    """build/mctest/ as setup.sh makes it, made again when the wrapper changed."""
    wrapper = (MCSUITE / "memcached-debug").read_bytes()
    current = BUILD / "memcached-debug"
    if (BUILD / ".source-sha256").exists() and current.exists() and current.read_bytes() == wrapper:
        return
    got = subprocess.run(["sh", str(MCSUITE / "setup.sh"), str(BUILD)], capture_output=True, text=True)
    if got.returncode != 0:
        pytest.fail(f"tests/mcsuite/setup.sh failed:\n{got.stderr}")


def target_env(target: Target, name: str, tls: bool = False) -> dict[str, str]:
    """The harness's environment for one file against one target (tls: an also_tls file's TLS run)."""
    env = dict(os.environ)
    env.pop("T_MEMD_USE_DAEMON", None)
    env.pop("SSL_TEST", None)
    if tls or FILES[name].get("ssl_test"):
        env["SSL_TEST"] = "1"  # memcached's TLS mode: -Z, t/'s certificates, TLS sockets
    if target.name == "memcached":
        env["SM_MCTEST_SERVER"] = "/usr/bin/memcached"
    else:
        env.pop("SM_MCTEST_SERVER", None)
        env["SM_MCTEST_STACKMAPD"] = stackmapd_executable()
        env["SM_MCTEST_BACKEND"] = target.backend or "auto"
    return env


def runs_file(target: Target, name: str) -> bool:
    """Whether the session runs this file against this target (not-applicable ones only as memcached)."""
    return target.name == "memcached" or FILES[name]["status"] != "not-applicable"


class Runs:
    """Every selected file of the session's targets, started together on one pool."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=JOBS)
        self.futures: dict[tuple[str, str, bool], Future[Outcome]] = {}

    def start(self, runs: list[tuple[Target, str, bool]]) -> None:
        # slowest first: the long files overlap the short ones
        for target, name, tls in sorted(runs, key=lambda p: -SLOW.get(p[1], 0)):
            key = (target.id, name, tls)
            if key not in self.futures and runs_file(target, name):
                self.futures[key] = self.pool.submit(run_file, name, target_env(target, name, tls))

    def result(self, target: Target, name: str, tls: bool) -> Outcome:
        return self.futures[(target.id, name, tls)].result()


# Files that take longest (seconds alone, measured): started first.
SLOW = {"getset.t": 25, "idle-timeout.t": 20, "metaget.t": 22, "shutdown.t": 13, "flush-all.t": 15,
        "lru-crawler.t": 14, "lru-maintainer.t": 11, "watcher.t": 11, "getandtouch.t": 9, "cas.t": 7,
        "incrdecr.t": 6, "issue_14.t": 8, "issue_163.t": 6, "dyn-maxbytes.t": 6, "slabs-reassign2.t": 9}


@pytest.fixture(scope="session")
def runs(request: pytest.FixtureRequest) -> Runs:
    setup_build()
    r = Runs()
    # what this session selected: conftest parametrizes "target", we "name" and "tls"
    r.start([(item.callspec.params["target"], item.callspec.params["name"], item.callspec.params["tls"])
             for item in request.session.items
             if getattr(item, "module", None) is not None and item.module.__name__ == __name__
             and hasattr(item, "callspec") and "target" in item.callspec.params])
    yield r
    r.pool.shutdown(cancel_futures=True)


# Every file, and the also_tls ones a second time in the harness's TLS mode.
CASES = [pytest.param(name, False, id=name) for name in sorted(FILES)] + [
    pytest.param(name, True, id=f"{name}-tls") for name in sorted(FILES) if FILES[name].get("also_tls")]


@pytest.mark.parametrize("name, tls", CASES)
def test_file(runs: Runs, target: Target, name: str, tls: bool) -> None:
    row = FILES[name]
    if target.name == "memcached":
        got = runs.result(target, name, tls)
        assert got.result == row["memcached"], (
            f"{name}: memcached {got.result}s it, files.toml says {row['memcached']}\n{got.output}")
        return
    if row["status"] == "not-applicable":
        pytest.skip(f"not applicable: {row['why']}")
    got = runs.result(target, name, tls)
    if row["status"] == "pending":
        if got.result == "fail":
            pytest.xfail(f"pending: {row['why']}")
        return  # passes (or skips itself) already: files.toml may make it required
    expected = ("pass", "skip") if row["memcached"] == "skip" else ("pass",)
    if got.result not in expected:
        # memcached's files wait for background threads with fixed sleeps; the
        # pool runs SUITE_JOBS of them at once on this machine's cores, so a
        # failure there is run again on its own before it counts (CI's fresh
        # root once lost lru-maintainer.t's canary this way, 1 check of 226).
        crowded = got
        got = run_file(name, target_env(target, name, tls))
        assert got.result in expected, (
            f"{name} on {target.id}: {got.result} (also in the shared pool: {crowded.result})\n{got.output}")


def test_table_lists_every_file() -> None:
    """files.toml has a row for each t/ file of the source, and none that is not one."""
    setup_build()
    on_disk = {p.name for p in (BUILD / "t").glob("*.t")}
    assert set(FILES) == on_disk
