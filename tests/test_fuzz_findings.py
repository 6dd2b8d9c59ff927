"""Regression tests for what the fuzzers (tests/fuzz/) found, over the network.

Each case replays a finding against a real stackmapd process with a raw
socket client; the fuzz corpus holds the same input as a regression seed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from control_support import BIN, HOST, free_port, request, start


def test_key_with_control_characters_survives_a_warm_restart(tmp_path: Path) -> None:
    # fuzz_conn: memcached's text protocol takes any byte but space and
    # newline in a key; a snapshot of such an item used to be refused whole
    # at restore ("key contains whitespace or control characters"), so one
    # odd key emptied the cache on restart.
    path = tmp_path / "cache.snap"
    keys = [b"ctl\x01key", b"tab\tkey", b"cr\rkey", b"del\x7fkey", b"plain"]
    first = start(["--snapshot", str(path)])
    try:
        with first.conn() as sock:
            for i, key in enumerate(keys):
                assert request(sock, b"set %s %d 0 2\r\nv%d\r\n" % (key, i, i), b"\r\n") == b"STORED\r\n"
        assert first.stop() == 0, first.log()
    finally:
        first.cleanup()
    second = start(["--snapshot", str(path)])
    try:
        with second.conn() as sock:
            for i, key in enumerate(keys):
                got = request(sock, b"get %s\r\n" % key)
                assert got == b"VALUE %s %d 2\r\nv%d\r\nEND\r\n" % (key, i, i), (key, got, second.log())
    finally:
        second.stop()
        log = second.log()
        second.cleanup()
    assert "refused" not in log, log


def test_binary_protocol_key_with_space_survives_a_warm_restart(tmp_path: Path) -> None:
    # fuzz_conn (corpus: binary_key_with_space): a binary-protocol key may
    # hold a space, a newline or a NUL, which a snapshot records only as a
    # binary key; such items were dumped as text keys and the restore
    # refused the whole snapshot ("key contains whitespace").
    from mcbinary import GET, SET, SUCCESS, split_packets, store
    from mcbinary import req as breq

    path = tmp_path / "cache.snap"
    keys = [b"a b", b"new\nline", b"nul\0key", b"plain"]
    first = start(["--snapshot", str(path)])
    try:
        with first.conn() as sock:
            sock.sendall(b"".join(store(SET, k, b"v%d" % i, flags=i) for i, k in enumerate(keys)))
            got = b""
            while len(split_packets(got)[0]) < len(keys):
                got += sock.recv(65536)
            assert [p.status for p in split_packets(got)[0]] == [SUCCESS] * len(keys)
        assert first.stop() == 0, first.log()
    finally:
        first.cleanup()
    second = start(["--snapshot", str(path)])
    try:
        with second.conn() as sock:
            sock.sendall(b"".join(breq(GET, k) for k in keys))
            got = b""
            while len(split_packets(got)[0]) < len(keys):
                chunk = sock.recv(65536)
                assert chunk, (got, second.log())
                got += chunk
            packets = split_packets(got)[0]
            assert [(p.status, p.value) for p in packets] == [(SUCCESS, b"v%d" % i) for i in range(len(keys))]
    finally:
        second.stop()
        log = second.log()
        second.cleanup()
    assert "refused" not in log, log


NOT_UTF8 = b"memory_limit = 64\n# caf\xe9\n"  # a Latin-1 byte: TOML must be UTF-8


def test_config_file_that_is_not_utf8_exits_64_naming_the_file(tmp_path: Path) -> None:
    # fuzz_config: tomllib decodes the file before parsing, and its
    # UnicodeDecodeError escaped as a traceback (exit 1) instead of the
    # usual "FILE: not valid TOML" error and exit 64.
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes(NOT_UTF8)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKMAP_")}
    proc = subprocess.run([str(BIN / "stackmapd"), "--config", str(cfg), "-p", str(free_port())],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 64, proc.stderr
    assert f"{cfg}: not valid TOML: not UTF-8 text" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_reload_of_a_config_file_that_is_not_utf8_is_refused_and_serving_goes_on(tmp_path: Path) -> None:
    # The same file on SIGHUP: the exception used to escape the reload and
    # end the server; now the reload is refused and nothing changes.
    cfg = tmp_path / "stackmapd.toml"
    http_port = free_port()
    cfg.write_text(f'metrics_listen = "{HOST}:{http_port}"\nconn_limit = 100\n')
    p = start(["--config", str(cfg)], http_port=http_port, metrics_flag=False)
    try:
        cfg.write_bytes(NOT_UTF8)
        p.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "reload refused" not in p.log() and p.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.proc.poll() is None, p.log()
        assert f"reload refused: {cfg}: not valid TOML: not UTF-8 text" in p.log()
        with p.conn() as sock:
            assert b"STAT maxconns 100\r\n" in request(sock, b"stats settings\r\n")
    finally:
        p.stop()
        p.cleanup()
