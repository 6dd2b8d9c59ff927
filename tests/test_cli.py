"""The stackmapd command line and config file, without serving traffic.

Bad usage must fail the way memcached does (exit status 64, a one-line
reason on stderr, no traceback); the config file and the command line must
merge with the command line winning; sizes take memcached's k/m suffixes.
Most cases parse in-process (``stackmapd.cli.parse``); the exit-status cases
run the installed console script, as a user would.  Two cases start the
real engine briefly: SIGTERM must end it with status 0, and a taken port
with status 71.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ports import free_port

import stackmap_core
from stackmapd.cli import parse
from stackmapd.settings import MIB, OPTIONS, OptionError, parse_size

REPO = Path(__file__).resolve().parent.parent


def stackmapd_cmd() -> list[str]:
    """The installed console script next to this interpreter (the venv's)."""
    script = Path(sys.executable).parent / "stackmapd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "stackmapd"]


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*stackmapd_cmd(), *args], capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


# --- bad usage: exit 64 and a precise message --------------------------------


BAD = [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["-x"], "unrecognized arguments: -x"),
    (["-p"], "expected one argument"),
    (["-p", "abc"], "-p/--port: expected an integer"),
    (["-p", "70000"], "-p/--port: must be between 0 and 65535"),
    (["-t", "0"], "-t/--threads: must be between 1 and 256"),
    (["-c", "0"], "-c/--conn-limit"),
    (["-f", "1.0"], "-f/--slab-growth-factor: must be greater than 1"),
    (["-n", "0"], "-n/--slab-min-size"),
    (["-R", "0"], "-R/--max-reqs-per-event"),
    (["-b", "x"], "-b/--listen-backlog: expected an integer"),
    (["-U", "11211"], "UDP is not supported"),
    (["-I", "512"], "-I/--max-item-size: must be between 1024 and 1073741824"),
    (["-I", "1025m", "-m", "4096"], "-I/--max-item-size: must be between 1024"),
    (["-I", "1g"], "expected a size like"),
    (["-I", "2m", "-m", "2"], "cannot be larger than half of -m/--memory-limit"),
    (["-o", "bogus"], "unknown extended option 'bogus'"),
    (["-o", "hashpower=5"], "hashpower: must be between 12 and 32"),
    (["-o", "hashpower"], "hashpower needs a value"),
    # memcached's slab_chunk_max checks, in its words
    (["-I", "1024"], "slab_chunk_max (bytes: 524288) cannot be larger than -I (item_size_max 1024)"),
    (["-I", "1000000"], "-I (item_size_max: 1000000) must be evenly divisible by slab_chunk_max (bytes: 524288)"),
    (["-o", "slab_chunk_max=3000"], "-I (item_size_max: 1048576) must be evenly divisible by slab_chunk_max"),
    (["-I", "3000", "-o", "slab_chunk_max=3000"], "slab_chunk_max (bytes: 3000) must divide evenly into 1048576"),
    (["-o", "slab_chunk_max=2m"], "slab_chunk_max: must be between 0 and 1048576"),
    (["-o", "tcp_nodelay=maybe"], "tcp_nodelay: expected true or false"),
    (["-o", "uring_buf_size=256"], "uring_buf_size: must be between 512 and 16777216"),
    (["-o", "hot_lru_pct=0"], "hot_lru_pct: must be between 1 and 79, got 0"),
    (["-o", "warm_lru_pct=80"], "warm_lru_pct: must be between 1 and 79, got 80"),
    (["-o", "hot_lru_pct=50,warm_lru_pct=40"], "hot_lru_pct + warm_lru_pct cannot be more than 80% combined"),
    (["-o", "hot_max_factor=0"], "hot_max_factor: must be greater than 0"),
    (["-o", "warm_max_factor=abc"], "warm_max_factor: expected a number"),
    (["-o", "temporary_ttl=-2"], "temporary_ttl: must be between -1 and 2147483647"),
    (["-o", "no_lru_maintainer,temporary_ttl=10"], "temporary_ttl requires lru_maintainer to be enabled"),
    (["-o", "lru_segmented=maybe"], "lru_segmented: expected true or false"),
    (["--backend", "dpdk"], "--backend: must be one of auto, epoll"),
    (["-l", "127.0.0.1,,::1"], "-l/--listen: empty or invalid address"),
    (["stray"], "unrecognized arguments: stray"),
    (["--config", "/nonexistent/stackmapd.toml"], "no such config file"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_usage_exits_64(args: list[str], message: str) -> None:
    proc = run(*args)
    assert proc.returncode == 64, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_help_exits_0_and_lists_every_flag() -> None:
    proc = run("-h")
    assert proc.returncode == 0
    for opt in OPTIONS:
        assert opt.long in proc.stdout
    assert "uring_entries" in proc.stdout  # the extended options are listed too


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("stackmapd ")
    assert stackmap_core.version() in proc.stdout


def test_every_option_is_in_the_readme_flags_table() -> None:
    readme = (REPO / "README.md").read_text()
    for opt in OPTIONS:
        assert f"`{opt.long}" in readme or opt.long in readme, opt.long


# --- defaults ------------------------------------------------------------------


def test_defaults_are_memcacheds_and_match_the_engine() -> None:
    s = parse([])
    assert (s.port, s.listen, s.maxbytes, s.maxconns, s.num_threads) == (
        11211, "127.0.0.1", 64 * MIB, 1024, 4)
    assert (s.item_size_max, s.factor, s.chunk_size) == (MIB, 1.25, 48)
    assert stackmap_core.derived_settings(s)["slab_page_size"] == MIB
    assert (s.use_cas, s.verbose, s.shutdown_enabled, s.backlog, s.reqs_per_event) == (
        True, 0, False, 1024, 20)
    assert s.backend == stackmap_core.BACKENDS["auto"]
    # What Python leaves unset is the engine's default; what it sets must
    # agree with the engine's own defaults (sm_settings_init).
    engine = stackmap_core.default_settings()
    for name, value in s.as_dict().items():
        if value is not None:
            assert engine[name] == value, name


def test_flags_map_to_settings() -> None:
    s = parse(["-p", "22333", "-l", "127.0.0.1,::1", "-m", "128", "-c", "10", "-t", "2",
               "-I", "4m", "-f", "1.5", "-n", "96", "-C", "-A", "-vv", "-b", "64",
               "-R", "5", "-U", "0", "--backend", "epoll"])
    assert s.port == 22333
    assert s.listen == "127.0.0.1,::1"
    assert s.maxbytes == 128 * MIB
    assert (s.maxconns, s.num_threads) == (10, 2)
    assert s.item_size_max == 4 * MIB
    assert stackmap_core.derived_settings(s)["slab_page_size"] == 4 * MIB  # pages hold the largest item
    assert (s.factor, s.chunk_size) == (1.5, 96)
    assert s.use_cas is False and s.shutdown_enabled is True
    assert (s.verbose, s.backlog, s.reqs_per_event) == (2, 64, 5)
    assert s.backend == stackmap_core.BACKENDS["epoll"]


def test_long_flags_and_attached_values() -> None:
    s = parse(["--port=22334", "--memory-limit", "32", "-t3", "--max-item-size=512k"])
    assert (s.port, s.maxbytes, s.num_threads, s.item_size_max) == (22334, 32 * MIB, 3, 512 * 1024)
    assert stackmap_core.derived_settings(s)["slab_page_size"] == MIB  # never below 1 MiB


@pytest.mark.parametrize(("flags", "level"), [([], 0), (["-v"], 1), (["-vv"], 2),
                                              (["-vvv"], 3), (["-v", "-v"], 2), (["-vvvv"], 3)])
def test_verbosity_counts(flags: list[str], level: int) -> None:
    assert parse(flags).verbose == level


def test_extended_options() -> None:
    s = parse(["-o", "hashpower=20,idle_timeout=30,no_lru_segmented", "-o",
               "uring_entries=512,uring_bufs=64,uring_buf_size=8k,uring_zc_threshold=16k,"
               "uring_sqpoll,tcp_nodelay=0,uring_batch_usec=200"])
    assert s.hashpower_init == 20
    assert s.idle_timeout == 30
    assert s.lru_segmented is False
    assert (s.uring_entries, s.uring_bufs, s.uring_buf_size) == (512, 64, 8192)
    assert s.uring_zc_threshold == 16384
    assert s.uring_sqpoll is True
    assert s.uring_batch_usec == 200
    assert s.tcp_nodelay is False
    assert parse(["-o", "lru_segmented=0"]).lru_segmented is False


def test_segmented_lru_options() -> None:
    """memcached 1.6's LRU options: segmented with a maintainer by default, each
    switch with its no_ form, the tuning values, from -o, the config file and the
    environment alike."""
    e = stackmap_core.default_settings()  # what the engine takes when -o leaves them out
    assert (e["lru_segmented"], e["lru_maintainer"]) == (1, 1)
    assert (e["hot_lru_pct"], e["warm_lru_pct"], e["hot_max_factor"], e["warm_max_factor"]) == (20, 40, 0.2, 2.0)
    assert e["temporary_ttl"] == -1
    s = parse(["-o", "hot_lru_pct=10,warm_lru_pct=70,hot_max_factor=0.5,warm_max_factor=3,temporary_ttl=61"])
    assert (s.hot_lru_pct, s.warm_lru_pct, s.hot_max_factor, s.warm_max_factor) == (10, 70, 0.5, 3.0)
    assert s.temporary_ttl == 61
    assert parse(["-o", "no_lru_maintainer"]).lru_maintainer is False
    assert parse(["-o", "no_lru_segmented"]).lru_segmented is False


def test_lru_options_from_config_and_environment(tmp_path: Path) -> None:
    cfg = write(tmp_path, "[extended]\nlru_segmented = false\nhot_lru_pct = 30\n")
    s = parse(["--config", str(cfg)])
    assert (s.lru_segmented, s.hot_lru_pct) == (False, 30)
    cfg = write(tmp_path, "[extended]\nhot_lru_pct = 60\nwarm_lru_pct = 30\n")
    proc = run("--config", str(cfg))
    assert proc.returncode == 64
    assert "hot_lru_pct + warm_lru_pct cannot be more than 80% combined" in proc.stderr
    proc = subprocess.run([*stackmapd_cmd()], capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL,
                          env={**os.environ, "STACKMAP_EXTENDED": "no_lru_maintainer,temporary_ttl=5"})
    assert proc.returncode == 64
    assert "temporary_ttl requires lru_maintainer to be enabled" in proc.stderr
    # The engine's own check (for callers of the C API) says the same.
    with pytest.raises(stackmap_core.SettingsError, match="cannot be more than 80% combined"):
        stackmap_core.check_settings({"hot_lru_pct": 41, "warm_lru_pct": 40})
    stackmap_core.check_settings({"hot_lru_pct": 40, "warm_lru_pct": 40})


# --- sizes -----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("1024", 1024), ("1k", 1024), ("1K", 1024), ("512k", 512 * 1024), ("1m", MIB),
    ("2M", 2 * MIB), ("1024m", 1024 * MIB), (" 64k ", 65536), (4096, 4096),
])
def test_size_suffixes(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "k", "1g", "1.5m", "-1k", "1 m", "1kb", "0x10", True])
def test_bad_sizes(text: str | bool) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


# --- config file -----------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stackmapd.toml"
    path.write_text(text)
    return path


def test_config_file_values(tmp_path: Path) -> None:
    cfg = write(tmp_path, """
port = 22335
listen = ["127.0.0.1", "::1"]
memory_limit = 256
threads = 2
max_item_size = "2m"
disable_cas = true
verbose = 1
backend = "epoll"
extended = "hashpower=18"
""")
    s = parse(["--config", str(cfg)])
    assert (s.port, s.listen, s.maxbytes, s.num_threads) == (22335, "127.0.0.1,::1",
                                                              256 * MIB, 2)
    assert (s.item_size_max, s.use_cas, s.verbose) == (2 * MIB, False, 1)
    assert s.backend == stackmap_core.BACKENDS["epoll"]
    assert s.hashpower_init == 18


def test_command_line_wins_over_config_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, """
port = 22336
memory_limit = 128
threads = 2
verbose = 2

[extended]
hashpower = 20
idle_timeout = 5
""")
    s = parse(["--config", str(cfg), "-p", "22337", "-v", "-o", "idle_timeout=9"])
    assert s.port == 22337  # command line
    assert s.maxbytes == 128 * MIB  # file
    assert s.num_threads == 2  # file
    assert s.verbose == 1  # command line, even though lower
    assert s.hashpower_init == 20  # file's extended key kept
    assert s.idle_timeout == 9  # command line's extended key wins
    # The order of --config on the command line does not matter.
    s2 = parse(["-p", "22337", "--config", str(cfg)])
    assert s2.port == 22337


def test_cross_checks_see_the_merged_values(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'max_item_size = "4m"\n')
    with pytest.raises(OptionError, match="half of -m"):
        parse(["--config", str(cfg), "-m", "4"])
    assert parse(["--config", str(cfg), "-m", "8"]).item_size_max == 4 * MIB


@pytest.mark.parametrize(("text", "message"), [
    ("prot = 1\n", "key 'prot'"),
    ("memory-limit = 64\n", "did you mean 'memory_limit'"),
    ("config = 'x.toml'\n", "command line only"),
    ("port = 'eleven'\n", "key 'port': expected an integer"),
    ("port = 99999\n", "key 'port': must be between 0 and 65535"),
    ("max_item_size = '1g'\n", "key 'max_item_size': expected a size"),
    ("disable_cas = 'perhaps'\n", "key 'disable_cas': expected true or false"),
    ("udp_port = 11211\n", "key 'udp_port': UDP is not supported"),
    ("extended = 'hashpower=99'\n", "key 'extended': hashpower: must be between 12 and 32"),
    ("[extended]\nfoo = 1\n", "unknown extended option 'foo'"),
    ("port = \n", "not valid TOML"),
])
def test_config_file_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    cfg = write(tmp_path, text)
    with pytest.raises(OptionError) as info:
        parse(["--config", str(cfg)])
    assert str(cfg) in str(info.value)
    assert message in str(info.value)


def test_config_file_error_exits_64(tmp_path: Path) -> None:
    cfg = write(tmp_path, "threads = 0\n")
    proc = run("--config", str(cfg))
    assert proc.returncode == 64
    assert f"{cfg}: key 'threads': must be between 1 and 256" in proc.stderr


def test_engine_facade_rejects_unknown_settings() -> None:
    with pytest.raises(stackmap_core.SettingsError, match="unknown engine setting 'bogus'"):
        stackmap_core.Engine({"bogus": 1})
    with pytest.raises(stackmap_core.SettingsError, match="threads"):
        stackmap_core.Engine({"num_threads": 0})  # sm_settings_check's own message


def test_engine_facade_stats_and_live_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny first buffer makes stats_text take its grow-and-retry path.
    monkeypatch.setattr(stackmap_core, "_STATS_BUF", 64)
    settings = parse(["-p", str(free_port()), "-t", "1", "-m", "32", "--backend", "epoll"])
    with stackmap_core.Engine(settings) as engine:
        engine.start()
        assert engine.backend == "epoll"
        general = engine.stats()
        assert general["version"] == stackmap_core.version().split("-")[0]
        assert general["limit_maxbytes"] == str(32 * MIB)
        assert engine.stats_text("settings").endswith("END\r\n")
        assert engine.stats("settings")["item_size_max"] == str(MIB)
        engine.set_memlimit(64 * MIB)
        assert engine.stats()["limit_maxbytes"] == str(64 * MIB)
        with pytest.raises(stackmap_core.EngineError, match="unknown stats group"):
            engine.stats("bogus")
        assert engine.wait(1) is False  # nobody sent "shutdown"
        engine.stop(100)


# --- the real process: signals and start failures --------------------------------


def wait_listening(port: int, proc: subprocess.Popen[str], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"version\r\n")
                if s.recv(100).startswith(b"VERSION "):
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"stackmapd did not answer on port {port}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_with_status_0(sig: signal.Signals) -> None:
    port = free_port()
    proc = subprocess.Popen([*stackmapd_cmd(), "-p", str(port), "-t", "1", "-v"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
        sent = time.monotonic()
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"exiting normally ({sig.name})" in err
    # 200 ms wait slice + 1 s grace; generous bound for a loaded machine.
    assert took < 5.0, f"took {took:.2f} s to stop"


def test_port_in_use_exits_71() -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        proc = run("-p", str(port), "-t", "1")
    assert proc.returncode == 71, proc.stderr
    assert "cannot start" in proc.stderr
