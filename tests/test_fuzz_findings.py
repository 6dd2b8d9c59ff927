"""Regression tests for what the fuzzers (tests/fuzz/) found, over the network.

Each case replays a finding against a real stackmapd process with a raw
socket client; the fuzz corpus holds the same input as a regression seed.
"""

from __future__ import annotations

from pathlib import Path

from control_support import request, start


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
