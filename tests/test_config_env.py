"""Config precedence (flag > STACKMAP_* env > file > default), validation
errors (exit 64, naming where the bad value came from), and live reload by
SIGHUP and ``stackmapctl reload``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from control_support import BIN, HOST, free_port, http, request, start

from stackmapd.cli import load
from stackmapd.settings import MIB, OptionError


def write(tmp_path: Path, text: str, name: str = "stackmapd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    cfg = write(tmp_path, "memory_limit = 16\nthreads = 3\nconn_limit = 77\n")
    env = {"STACKMAP_MEMORY_LIMIT": "32", "STACKMAP_THREADS": "5"}
    both = load(["--config", str(cfg), "-m", "48"], env)
    assert (both.settings.maxbytes, both.settings.num_threads, both.settings.maxconns) == (48 * MIB, 5, 77)
    no_flag = load(["--config", str(cfg)], env)
    assert no_flag.settings.maxbytes == 32 * MIB
    no_env = load(["--config", str(cfg)], {})
    assert (no_env.settings.maxbytes, no_env.settings.num_threads) == (16 * MIB, 3)
    nothing = load([], {})
    assert (nothing.settings.maxbytes, nothing.values["metrics_listen"]) == (64 * MIB, "127.0.0.1:9150")
    via_env_config = load([], {"STACKMAP_CONFIG": str(cfg)})
    assert via_env_config.settings.num_threads == 3


def test_env_covers_flags_switches_and_extended() -> None:
    env = {"STACKMAP_DISABLE_CAS": "yes", "STACKMAP_VERBOSE": "2", "STACKMAP_EXTENDED": "hashpower=20",
           "STACKMAP_METRICS_LISTEN": "off", "STACKMAP_TARGETS": "memcached", "STACKMAP_WHATEVER": "x"}
    loaded = load(["-o", "idle_timeout=5"], env)  # unknown STACKMAP_* names are not ours: ignored
    assert (loaded.settings.use_cas, loaded.settings.verbose) == (False, 2)
    assert (loaded.settings.hashpower_init, loaded.settings.idle_timeout) == (20, 5)
    assert loaded.values["metrics_listen"] is None


@pytest.mark.parametrize(("env", "message"), [
    ({"STACKMAP_THREADS": "0"}, "environment variable STACKMAP_THREADS: must be between 1 and 256, got 0"),
    ({"STACKMAP_METRICS_LISTEN": "9150"}, "environment variable STACKMAP_METRICS_LISTEN: expected HOST:PORT"),
    ({"STACKMAP_DISABLE_CAS": "maybe"}, "environment variable STACKMAP_DISABLE_CAS: expected true or false"),
])
def test_bad_env_value_exits_64_with_where_and_why(env: dict[str, str], message: str) -> None:
    with pytest.raises(OptionError, match=message.split(": ", 1)[1][:20]):
        load([], env)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STACKMAP_")}
    proc = subprocess.run([str(BIN / "stackmapd"), "-p", str(free_port())], env={**clean, **env},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 64
    assert message in proc.stderr


def test_bad_file_values_name_file_and_key(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'metrics_listen = "localhost:99999"\n')
    with pytest.raises(OptionError, match=f"{cfg}: key 'metrics_listen': port must be between 0 and 65535"):
        load(["--config", str(cfg)], {})
    cfg = write(tmp_path, 'admin_token = "a"\nadmin_token_file = "/nonexistent"\n', "two.toml")
    with pytest.raises(OptionError, match="give only one of them"):
        load(["--config", str(cfg)], {})
    with pytest.raises(OptionError, match="--admin-token-file /nonexistent: cannot read"):
        load(["--admin-token-file", "/nonexistent"], {})


def settings_stats(port: int) -> dict[str, str]:
    with socket.create_connection((HOST, port), timeout=10) as s:
        raw = request(s, b"stats settings\r\n")
    return {ln.split(" ")[1]: ln.split(" ")[2] for ln in raw.decode().split("\r\n") if ln.startswith("STAT ")}


def wait_for(cond: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_sighup_and_ctl_reload_apply_live_settings(tmp_path: Path) -> None:
    http_port = free_port()
    base = f'metrics_listen = "{HOST}:{http_port}"\nlisten_backlog = 128\n'
    cfg = write(tmp_path, base + "memory_limit = 64\nconn_limit = 100\n")
    p = start(["--config", str(cfg)], http_port=http_port, metrics_flag=False)
    try:
        assert settings_stats(p.port)["maxconns"] == "100"
        cfg.write_text(base.replace("= 128", "= 256") + "memory_limit = 32\nconn_limit = 2\n")
        p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: settings_stats(p.port)["maxconns"] == "2")
        with socket.create_connection((HOST, p.port), timeout=10) as s:
            assert b"STAT limit_maxbytes %d\r\n" % (32 * MIB) in request(s, b"stats\r\n")
            # the new limit holds: this connection and one more; a third is refused
            with socket.create_connection((HOST, p.port), timeout=10) as s2:
                assert request(s2, b"version\r\n", b"\r\n").startswith(b"VERSION")
                with socket.create_connection((HOST, p.port), timeout=10) as s3:
                    assert s3.recv(100) == b"ERROR Too many open connections\r\n"
        wait_for(lambda: "needs a restart: ['listen_backlog']" in p.log())

        new_port = free_port()
        cfg.write_text(f'metrics_listen = "{HOST}:{new_port}"\nlisten_backlog = 256\nmemory_limit = 32\n'
                       "conn_limit = 50\nverbose = 1\n")
        r = p.ctl("reload")
        assert r.returncode == 0, r.stderr
        assert "conn_limit=50" in r.stdout and "verbose=1" in r.stdout
        assert f"metrics_listen={HOST}:{new_port}" in r.stdout
        assert "needs a restart: listen_backlog" in r.stdout
        assert http("GET", f"http://{HOST}:{new_port}/readyz")[0] == 200
        with pytest.raises(OSError):
            http("GET", p.url + "/readyz")  # the old address is closed

        cfg.write_text("threads = 0\n")
        p.http_port = new_port
        r = p.ctl("reload")
        assert r.returncode == 1 and f"{cfg}: key 'threads': must be between 1 and 256" in r.stderr
        assert settings_stats(p.port)["maxconns"] == "50"  # nothing applied
    finally:
        p.stop()
        p.cleanup()


@pytest.mark.parametrize("backend", ["epoll", "uring"])
def test_conn_limit_raised_live_beyond_start_size(tmp_path: Path, backend: str) -> None:
    """A -c raised by reload is honoured even past what the backend sized at
    start (io_uring's registered-file table holds -c + 16 slots): the extra
    connections are served through their plain fds."""
    http_port = free_port()
    base = f'metrics_listen = "{HOST}:{http_port}"\nbackend = "{backend}"\nthreads = 1\n'
    cfg = write(tmp_path, base + "conn_limit = 4\n")
    p = start(["--config", str(cfg)], http_port=http_port, metrics_flag=False)
    try:
        cfg.write_text(base + "conn_limit = 60\n")
        p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: settings_stats(p.port)["maxconns"] == "60")
        socks = [socket.create_connection((HOST, p.port), timeout=10) for _ in range(40)]
        try:
            for i, s in enumerate(socks):
                key = b"k%d" % i
                assert request(s, b"set " + key + b" 0 0 2\r\nok\r\n", b"\r\n") == b"STORED\r\n"
            for i, s in enumerate(socks):
                assert request(s, b"get k%d\r\n" % i, b"END\r\n") == b"VALUE k%d 0 2\r\nok\r\nEND\r\n" % i
        finally:
            for s in socks:
                s.close()
    finally:
        p.stop()
