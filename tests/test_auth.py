"""-Y FILE: memcached's auth file, text-protocol authentication and binary SASL PLAIN.

Text clients: until a connection authenticates, its first command must be
"set <key> <flags> <exptime> <bytes>" with "user password" as the data;
everything else is "CLIENT_ERROR unauthenticated".  The text sessions are
compared byte for byte with memcached 1.6.18 started with the same file.
memcached -Y speaks only text (its binary protocol needs -S and
cyrus-sasl); stackmapd also lets binary clients in with SASL PLAIN
against the same file, with memcached's SASL status codes: those are
checked here on their own.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MEMCACHED, Server, Target, stackmapd_executable
from difftools import Raw, run_pair, server_pair
from mcbinary import (
    AUTH_ERROR,
    EINVAL,
    GET,
    KEY_ENOENT,
    NOOP,
    SASL_AUTH,
    SASL_LIST_MECHS,
    SASL_STEP,
    SET,
    STAT,
    SUCCESS,
    VERSION,
    call,
    req,
    split_packets,
    store,
)
from mcwire import parse_stats

USERS = b"user:pass\nother:s3cret:with:colons\r\nspace man:pw\n"


@pytest.fixture(scope="module")
def auth_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("auth") / "users"
    p.write_bytes(USERS)
    return p


@pytest.fixture(scope="module")
def pair(target: Target, auth_file: Path) -> Iterator[tuple[Server, Server]]:
    with server_pair(target, ["-Y", str(auth_file)]) as p:
        yield p


TEXT_SESSIONS: dict[str, list[bytes | Raw]] = {
    "unauthenticated_commands": [
        Raw(b"get foo\r\n"), Raw(b"version\r\n"), Raw(b"mn\r\n"), Raw(b"mg foo v\r\n"), Raw(b"stats\r\n"),
        Raw(b"flush_all\r\n"), Raw(b"set foo 0 0\r\n"), Raw(b"set foo 0 0 x\r\n"), Raw(b"bogus\r\n"),
        Raw(b"\r\n"),
    ],
    "login_then_use": [
        Raw(b"set a 0 0 9\r\nuser pass\r\n"),
        Raw(b"set foo 0 0 3\r\nbar\r\nget foo\r\n"),
        Raw(b"set a 0 0 9\r\nuser pass\r\nget a\r\n"),
    ],
    "wrong_password_then_right": [
        Raw(b"set a 0 0 10\r\nuser wrong\r\n"),
        Raw(b"get foo\r\n"),
        Raw(b"set a 0 0 9\r\nuser Pass\r\n"),
        Raw(b"set a 0 0 9\r\nUser pass\r\n"),
        Raw(b"set a 0 0 8\r\nuser pas\r\n"),
        Raw(b"set a 0 0 10\r\nuser passs\r\n"),
        Raw(b"set a 0 0 24\r\nother s3cret:with:colons\r\n"),
        Raw(b"get foo\r\n"),
    ],
    "user_and_password_rules": [
        Raw(b"set a 0 0 4\r\nuser\r\n"),
        Raw(b"set a 0 0 0\r\n\r\n"),
        Raw(b"set a 0 0 11\r\nuser passXX"),
        Raw(b"YY"),
        Raw(b"set a 0 0 14\r\nuser pass more\r\n"),
        Raw(b"get x\r\n"),
    ],
    "space_in_user_cannot_log_in": [Raw(b"set a 0 0 12\r\nspace man pw\r\n"), Raw(b"get x\r\n")],
    "flags_and_key_are_ignored": [Raw(b"set anything x y 9 noreply\r\nuser pass\r\n"), Raw(b"get x\r\n")],
    "data_in_pieces": [Raw(b"set a 0 0 9\r\nus"), Raw(b"er pa"), Raw(b"ss\r\nget x\r\n")],
    "line_in_pieces": [Raw(b"set a 0"), Raw(b" 0 9\r"), Raw(b"\nuser pass\r\n"), Raw(b"get x\r\n")],
    "pipelined": [Raw(b"set a 0 0 9\r\nuser pass\r\nset x 0 0 1\r\n1\r\nget x\r\n")],
    "junk_without_newline_closes": [Raw(b"x" * 3000)],
    "long_line_is_answered": [Raw(b"x" * 2000 + b"\r\n"), Raw(b"get x\r\n")],
}


@pytest.mark.parametrize("name", list(TEXT_SESSIONS))
def test_text_auth_session(pair: tuple[Server, Server], name: str) -> None:
    ref, tgt = pair
    run_pair(ref, tgt, TEXT_SESSIONS[name])


def test_every_unauthenticated_command_is_answered(pair: tuple[Server, Server]) -> None:
    """A known difference (README): memcached answers only the last of the
    commands an unauthenticated connection sends in one packet (they share
    one response object); stackmapd answers each of them."""
    _, tgt = pair
    with tgt.wire() as w:
        w.expect(b"get x\r\nmn\r\nset a 0 0 9\r\nuser pass\r\nmn\r\n",
                 b"CLIENT_ERROR unauthenticated\r\n" * 2 + b"STORED\r\nMN\r\n")


def auth_counts(srv: Server, user: bytes = b"user pass") -> tuple[int, int]:
    with srv.wire() as w:
        w.expect(b"set a 0 0 %d\r\n%s\r\n" % (len(user), user), b"STORED\r\n")
        st = dict(parse_stats(w.request(b"stats\r\n", (b"END\r\n",))))
    return int(st["auth_cmds"]), int(st["auth_errors"])


def test_auth_stats_and_settings(start_server, target: Target, auth_file: Path) -> None:  # type: ignore[no-untyped-def]
    """auth_cmds counts every attempt and auth_errors the failures, as memcached's."""
    for t in (MEMCACHED, target):
        srv = start_server(t, ["-Y", str(auth_file)])
        with srv.wire() as w:
            w.expect(b"set a 0 0 10\r\nuser wrong\r\n", b"CLIENT_ERROR authentication failure\r\n")
            w.expect(b"set a 0 0 4\r\nuser\r\n", b"CLIENT_ERROR bad authentication token format\r\n")
            w.expect(b"get x\r\n", b"CLIENT_ERROR unauthenticated\r\n")
        assert auth_counts(srv) == (2, 1), t.id
        with srv.wire() as w:
            w.expect(b"set a 0 0 9\r\nuser pass\r\n", b"STORED\r\n")
            settings = dict(parse_stats(w.request(b"stats settings\r\n", (b"END\r\n",))))
        assert settings["auth_enabled_ascii"] == str(auth_file), t.id


def test_pymemcache_logs_in_with_set(start_server, target: Target, auth_file: Path) -> None:  # type: ignore[no-untyped-def]
    """How memcached documents it for clients without auth support: the
    first command is a set of "user password"."""
    from pymemcache.client.base import Client
    from pymemcache.exceptions import MemcacheClientError

    srv = start_server(target, ["-Y", str(auth_file)])
    c = Client((srv.host, srv.port), timeout=5)
    with pytest.raises(MemcacheClientError, match="unauthenticated"):
        c.get(b"k")
    assert c.set(b"auth", b"user pass", noreply=False) is True
    assert c.set(b"k", b"value", noreply=False) is True
    assert c.get(b"k") == b"value"
    c.close()
    other = Client((srv.host, srv.port), timeout=5)  # another connection starts unauthenticated
    with pytest.raises(MemcacheClientError, match="unauthenticated"):
        other.get(b"k")
    other.close()


@pytest.fixture
def sasl_server(start_server, target: Target, auth_file: Path) -> Server:  # type: ignore[no-untyped-def]
    srv = start_server(target, ["-Y", str(auth_file)])
    with srv.wire() as w:
        w.expect(b"set a 0 0 9\r\nuser pass\r\nset secret 0 0 4\r\ndata\r\n", b"STORED\r\nSTORED\r\n")
    return srv


def plain(authzid: bytes, user: bytes, password: bytes) -> bytes:
    return authzid + b"\0" + user + b"\0" + password


def test_sasl_plain(sasl_server: Server) -> None:
    srv = sasl_server
    with srv.wire() as w:
        p = call(w, req(SASL_LIST_MECHS, opaque=1), sentinel=VERSION)
        assert [(x.opcode, x.status, x.opaque, x.value) for x in p] == [(SASL_LIST_MECHS, SUCCESS, 1, b"PLAIN")]
        wrong = [
            req(SASL_AUTH, b"PLAIN", plain(b"", b"user", b"nope"), opaque=3),
            req(SASL_AUTH, b"PLAIN", plain(b"other", b"user", b"pass"), opaque=4),  # acting for someone else
            req(SASL_AUTH, b"PLAIN", b"userpass", opaque=5),  # not a PLAIN message
            req(SASL_AUTH, b"CRAM-MD5", b"x", opaque=6),
            req(SASL_STEP, b"PLAIN", plain(b"", b"user", b"pass"), opaque=7),
        ]
        p = call(w, b"".join(wrong), sentinel=VERSION)
        assert [(x.status, x.opaque, x.value) for x in p] == [(AUTH_ERROR, o, b"Auth failure.") for o in range(3, 8)]
        p = call(w, req(SASL_AUTH, b"X" * 33, b"body to swallow", opaque=8), sentinel=VERSION)
        assert [(x.status, x.value) for x in p] == [(EINVAL, b"Invalid arguments")]
        p = call(w, req(SASL_AUTH, b"PLAIN", plain(b"user", b"user", b"pass"), opaque=9), sentinel=VERSION)
        assert [(x.opcode, x.status, x.opaque, x.value) for x in p] == [(SASL_AUTH, SUCCESS, 9, b"Authenticated")]
        p = call(w, req(GET, b"secret") + store(SET, b"b", b"binary") + req(GET, b"b") + req(GET, b"nokey"))
        assert [(x.status, x.value) for x in p] == [
            (SUCCESS, b"data"), (SUCCESS, b""), (SUCCESS, b"binary"), (KEY_ENOENT, b"Not found")]
        st = {x.key: x.value for x in call(w, req(STAT))}
    assert (st[b"auth_cmds"], st[b"auth_errors"]) == (b"7", b"5")  # the text login, 5 failures, 1 success


@pytest.mark.parametrize("opcode", [GET, SET, STAT, NOOP, 0x55])
def test_sasl_required_before_anything(sasl_server: Server, opcode: int) -> None:
    """Before SASL, any request but the SASL ones and VERSION is "Auth
    failure." and the connection closes, as memcached -S does; no data is
    reachable."""
    body = store(SET, b"secret", b"gone") if opcode == SET else req(opcode, b"secret" if opcode == GET else b"")
    with sasl_server.wire() as w:
        w.send(body + req(GET, b"secret"))
        assert w.closed_by_peer(5)
        packets, rest = split_packets(w.buf)
        assert [(x.opcode, x.status, x.value) for x in packets] == [(opcode, AUTH_ERROR, b"Auth failure.")]
        assert rest == b""
    with sasl_server.wire() as w:
        w.expect(b"set a 0 0 9\r\nuser pass\r\nget secret\r\n", b"STORED\r\nVALUE secret 0 4\r\ndata\r\nEND\r\n")


def test_no_auth_no_sasl(start_server, target: Target) -> None:  # type: ignore[no-untyped-def]
    """Without -Y the SASL opcodes are unknown commands, as in memcached
    without SASL (compared in test_binary_differential)."""
    srv = start_server(target, [])
    with srv.wire() as w:
        p = call(w, req(SASL_LIST_MECHS) + req(SASL_AUTH, b"PLAIN", plain(b"", b"user", b"pass")))
        assert [(x.status, x.value) for x in p] == [(0x81, b"Unknown command")] * 2


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "No such file or directory"),
        (b"user:pass\nnocolon\n", "line 2 is not user:password"),
        (b"user:pass\n\nother:x\n", "line 2 is not user:password"),
        (b"", "no user:password line"),
        (b"u:" + b"p" * 300 + b"\n", "line 1 longer than 255 bytes"),
        ("dir", "Is a directory"),
    ],
    ids=["missing", "no-colon", "empty-line", "empty", "long-line", "directory"],
)
def test_bad_auth_file_refuses_to_start(tmp_path: Path, target: Target, content: bytes | str | None,
                                        message: str) -> None:
    if target.name != "stackmapd":
        pytest.skip("stackmapd's own start-up check")
    path = tmp_path / "users"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        assert isinstance(content, bytes)
        path.write_bytes(content)
    cmd = [stackmapd_executable(), "-l", "127.0.0.1", "-p", "0", "--metrics-listen", "off", "-Y", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert f"auth file {path}" in proc.stderr and message in proc.stderr, proc.stderr
