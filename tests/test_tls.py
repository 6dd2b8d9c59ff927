"""TLS (-Z): real TLS clients against a real server, as memcached's TLS users run it.

A throwaway CA, a server certificate for 127.0.0.1, a client certificate and
a second, unrelated CA are made with ``openssl req`` in a temporary directory.
Each test starts a server with ``-Z -o ssl_chain_cert=...,ssl_key=...`` (the
same flags memcached takes) and talks to it with Python's ``ssl`` module,
pymemcache with an ``ssl.SSLContext`` and ``openssl s_client``.

The record layer: where the kernel has kTLS (the ``tls`` module: TCP_ULP
"tls" can be set on a socket) ``ssl_ktls_conns`` must move, elsewhere (this
host: no CONFIG_TLS) ``ssl_userspace_conns`` (both in ``stats backend``); tests/vm/test_vm.py proves
the kTLS side on every backend in the VM.

The suite runs against memcached too (``--target memcached``), except for
the stats that are stackmapd's own.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import HOST, Server, Target, free_port, terminate
from pymemcache.client.base import Client

T = TypeVar("T")

START_TIMEOUT = 15.0
TIMEOUT = 10.0


@dataclass(frozen=True)
class Pki:
    """Files of the throwaway PKI."""

    dir: Path
    ca: Path  # the CA the server's and the client's certificates are signed by
    cert: Path  # server certificate (CN localhost, SAN IP 127.0.0.1)
    key: Path  # its key
    client_cert: Path  # a client certificate signed by ca
    client_key: Path  # its key
    other_ca: Path  # a CA that signed nothing here


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(d: Path, name: str, cn: str, ca: str, ext: str | None) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={cn}", cwd=d)
    args = ["x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2"]
    if ext:
        (d / f"{name}.ext").write_text(ext)
        args += ["-extfile", f"{name}.ext"]
    _openssl(*args, cwd=d)


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    with tempfile.TemporaryDirectory(prefix="stackmap-tls-") as tmp:
        d = Path(tmp)
        for ca in ("ca", "other"):
            _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out",
                     f"{ca}.crt", "-days", "2", "-subj", f"/CN=stackmap test {ca}", cwd=d)
        _issue(d, "server", "localhost", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _issue(d, "client", "stackmap test client", "ca", None)
        yield Pki(d, d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt",
                  d / "client.key", d / "other.crt")


def client_context(pki: Pki, ca: Path | None = None, cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(ca or pki.ca))
    if cert:
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


class TlsWire:
    """One TLS connection with time-bounded reads."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        raw = socket.create_connection((HOST, port), timeout=TIMEOUT)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.buf = b""

    def __enter__(self) -> TlsWire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until(self, marker: bytes, count: int = 1) -> bytes:
        """Everything up to and including the count-th marker."""
        deadline = time.monotonic() + TIMEOUT
        data = bytearray(self.buf)
        found = cut = scan = 0
        while True:
            while found < count and (at := data.find(marker, scan)) >= 0:
                found += 1
                cut = scan = at + len(marker)
            if found == count:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {marker!r} in {bytes(data[-200:])!r}")
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError(f"closed; got {bytes(data[-200:])!r}")
            scan = max(cut, len(data) - len(marker) + 1)
            data += chunk
        out, self.buf = bytes(data[:cut]), bytes(data[cut:])
        return out

    def request(self, data: bytes, marker: bytes = b"\r\n") -> bytes:
        self.send(data)
        return self.read_until(marker)


def tls_stats(port: int, ctx: ssl.SSLContext, group: str = "") -> dict[str, str]:
    with TlsWire(port, ctx) as w:
        raw = w.request(f"stats {group}".strip().encode() + b"\r\n", b"END\r\n")
    out = {}
    for line in raw.decode().splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "STAT":
            out[parts[1]] = parts[2]
    return out


def launch_tls(target: Target, pki: Pki, extra: str = "", args: list[str] | None = None) -> Server:
    """Start target with -Z and the PKI; wait until a TLS "version" is answered.

    stackmapd gets -o ssl_kernel_tls (off by default, as memcached's), so its
    records go to the kernel wherever the kernel takes them; extra comes
    after it and may turn it off again.
    """
    ours = ",ssl_kernel_tls" if target.name == "stackmapd" else ""
    opts = f"ssl_chain_cert={pki.cert},ssl_key={pki.key}{ours}" + (f",{extra}" if extra else "")
    argv = ["-Z", "-o", opts, *(args or [])]
    ctx = client_context(pki, cert=True)
    port = free_port()
    fd, log_path = tempfile.mkstemp(prefix=f"{target.id}-tls-", suffix=".log")
    cmd = target.command(port, argv)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True)
    os.close(fd)
    srv = Server(target, HOST, port, proc, argv, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with TlsWire(port, ctx) as w:
                if w.request(b"version\r\n").startswith(b"VERSION "):
                    return srv
        except OSError:
            time.sleep(0.05)
    log = srv.log()
    srv.stop()
    pytest.fail(f"{' '.join(cmd)} did not start: {log}")


@contextmanager
def spawned(cmd: list[str], prefix: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """cmd running, its output in a log file; stopped and the log removed after."""
    fd, log_path = tempfile.mkstemp(prefix=prefix, suffix=".log")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True)
    os.close(fd)
    try:
        yield proc, Path(log_path)
    finally:
        terminate(proc)
        os.unlink(log_path)


def wait_for(proc: subprocess.Popen[bytes], log: Path, probe: Callable[[], T | None],
             retry_on: tuple[type[BaseException], ...] = (OSError,)) -> T:
    """probe()'s first answer that is not None, retried while it raises one of
    retry_on, as long as the server runs (fails with its log otherwise)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        try:
            got = probe()
            if got is not None:
                return got
        except retry_on:
            pass
        time.sleep(0.05)


@contextmanager
def plain_beside_tls(target: Target, pki: Pki, args: list[str],
                     connect: Callable[[int], socket.socket]) -> Iterator[socket.socket]:
    """Start target with -Z, the PKI and args; yield the first socket
    connect(its TCP port) opens, retried until the server listens (a plain
    one: what it speaks is the test's); closed, and the server stopped, after."""
    port = free_port()
    cmd = target.command(port, ["-Z", "-o", f"ssl_chain_cert={pki.cert},ssl_key={pki.key}", *args])
    with spawned(cmd, f"{target.id}-plain-") as (proc, log):
        with wait_for(proc, log, lambda: connect(port), (FileNotFoundError, ConnectionRefusedError)) as sock:
            yield sock


def recv_until(sock: socket.socket, end: bytes) -> bytes:
    """What sock receives up to and including `end` (fails on a close before it)."""
    buf = b""
    while not buf.endswith(end):
        chunk = sock.recv(4096)
        assert chunk, f"closed after {buf!r}"
        buf += chunk
    return buf


@pytest.fixture
def tls_server(target: Target, pki: Pki) -> Iterator[Server]:
    srv = launch_tls(target, pki, args=["-I", "2m"])
    yield srv
    srv.stop()


def kernel_has_ktls() -> bool:
    """Whether TCP_ULP "tls" can be attached here (the kernel's tls module)."""
    with socket.create_server((HOST, 0)) as ls:
        c = socket.create_connection(ls.getsockname())
        a, _ = ls.accept()
        try:
            c.setsockopt(socket.IPPROTO_TCP, 31, b"tls")  # TCP_ULP
            return True
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        finally:
            c.close()
            a.close()


def record_layer_counters(srv: Server, pki: Pki) -> tuple[int, int]:
    s = tls_stats(srv.port, client_context(pki), "backend")
    return int(s["ssl_ktls_conns"]), int(s["ssl_userspace_conns"])


def assert_record_layer_moved(srv: Server, pki: Pki, before: tuple[int, int], conns: int) -> None:
    """conns handshakes ended in the kernel (kTLS here) or in user space (no kTLS)."""
    if srv.target.name != "stackmapd":
        return
    ktls, user = record_layer_counters(srv, pki)
    if kernel_has_ktls():
        assert ktls - before[0] >= conns, (before, ktls, user)
    else:
        assert ktls == before[0] and user - before[1] >= conns, (before, ktls, user)


def assert_serves(srv: Server, pki: Pki) -> None:
    assert srv.alive(), srv.log()
    with TlsWire(srv.port, client_context(pki)) as w:
        assert w.request(b"version\r\n").startswith(b"VERSION ")


# ---------------------------------------------------------------------------


def test_pymemcache_set_get_big_values(tls_server: Server, pki: Pki) -> None:
    before = record_layer_counters(tls_server, pki) if tls_server.target.name == "stackmapd" else (0, 0)
    mc = Client((HOST, tls_server.port), tls_context=client_context(pki), timeout=TIMEOUT,
                connect_timeout=TIMEOUT)
    try:
        assert mc.set("small", b"v" * 10)
        assert mc.get("small") == b"v" * 10
        big = os.urandom(1 << 20)
        assert mc.set("big", big)
        assert mc.get("big") == big
        many = {f"k{i}": os.urandom(1000 + i) for i in range(200)}
        mc.set_many(many)
        assert mc.get_many(list(many)) == many
    finally:
        mc.close()
    assert_record_layer_moved(tls_server, pki, before, 1)


def test_pipelined_requests_in_one_write(tls_server: Server, pki: Pki) -> None:
    before = record_layer_counters(tls_server, pki) if tls_server.target.name == "stackmapd" else (0, 0)
    value = os.urandom(1024).hex().encode()  # 2 KiB
    with TlsWire(tls_server.port, client_context(pki)) as w:
        # The first request rides with the client's Finished: its records are
        # decrypted before any switch to the kernel.
        w.send(b"set p 0 0 %d\r\n%s\r\n" % (len(value), value))
        assert w.read_until(b"\r\n") == b"STORED\r\n"
        w.send(b"get p\r\n" * 300)
        got = w.read_until(b"END\r\n", 300)
        assert got == (b"VALUE p 0 %d\r\n%s\r\nEND\r\n" % (len(value), value)) * 300
        if tls_server.target.name != "stackmapd":
            return  # memcached 1.6.18 stalls here: the get stays in its SSL buffer until more bytes come
        big = os.urandom(700_000)
        w.send(b"set q 0 0 %d\r\n%s\r\nget q\r\n" % (len(big), big))
        assert w.read_until(b"END\r\n") == b"STORED\r\nVALUE q 0 %d\r\n%s\r\nEND\r\n" % (len(big), big)
    assert_record_layer_moved(tls_server, pki, before, 1)


def test_openssl_s_client(tls_server: Server, pki: Pki) -> None:
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"{HOST}:{tls_server.port}", "-CAfile", str(pki.ca),
         "-verify_return_error", "-quiet"],
        input=b"set sc 0 0 5\r\nhello\r\nget sc\r\nquit\r\n", capture_output=True, timeout=30)
    assert out.stdout == b"STORED\r\nVALUE sc 0 5\r\nhello\r\nEND\r\n", out.stderr
    assert_serves(tls_server, pki)


def test_tls12_client(tls_server: Server, pki: Pki) -> None:
    ctx = client_context(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    before = record_layer_counters(tls_server, pki) if tls_server.target.name == "stackmapd" else (0, 0)
    with TlsWire(tls_server.port, ctx) as w:
        assert w.sock.version() == "TLSv1.2"
        assert w.request(b"set t12 0 0 2\r\nok\r\n") == b"STORED\r\n"
        assert w.request(b"get t12\r\n", b"END\r\n") == b"VALUE t12 0 2\r\nok\r\nEND\r\n"
    if tls_server.target.name == "stackmapd":  # TLS 1.2 stays in user space
        ktls, user = record_layer_counters(tls_server, pki)
        assert user - before[1] >= 1


def test_wrong_ca_fails_server_carries_on(tls_server: Server, pki: Pki) -> None:
    errors = int(tls_stats(tls_server.port, client_context(pki))["ssl_handshake_errors"])
    with pytest.raises(ssl.SSLCertVerificationError):
        TlsWire(tls_server.port, client_context(pki, ca=pki.other_ca))
    assert_serves(tls_server, pki)
    if tls_server.target.name != "stackmapd":
        return  # memcached counts only handshakes that fail on its side of the wire
    deadline = time.monotonic() + TIMEOUT
    while int(tls_stats(tls_server.port, client_context(pki))["ssl_handshake_errors"]) <= errors:
        assert time.monotonic() < deadline, "the refused handshake was not counted"
        time.sleep(0.05)


@pytest.mark.parametrize("payload", [b"get foo\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                                     b"\x16\x03\x01\x00\x05" + b"\xff" * 5,
                                     bytes(range(256)) * 8])
def test_plaintext_and_garbage_close_cleanly(tls_server: Server, pki: Pki, payload: bytes) -> None:
    with TlsWire(tls_server.port, client_context(pki)) as keep:  # a TLS client already there
        assert keep.request(b"set g 0 0 1\r\nx\r\n") == b"STORED\r\n"
        with socket.create_connection((HOST, tls_server.port), timeout=TIMEOUT) as s:
            s.sendall(payload)
            got = b""
            try:
                while chunk := s.recv(4096):
                    got += chunk
            except ConnectionResetError:
                pass
            # At most a TLS alert record, then the close: never a memcached answer.
            assert got == b"" or got[:1] == b"\x15", got
        assert keep.request(b"get g\r\n", b"END\r\n") == b"VALUE g 0 1\r\nx\r\nEND\r\n"
    assert_serves(tls_server, pki)


def test_stalled_handshake_does_not_block_others(tls_server: Server, pki: Pki) -> None:
    # One client sends half a ClientHello and stops; another connects before
    # nothing at all.  Both stay open while TLS clients are served.
    hello = bytearray()
    probe = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO())
    try:
        probe.do_handshake()
    except ssl.SSLWantReadError:
        hello = bytearray(out.read())
    assert len(hello) > 20
    half = socket.create_connection((HOST, tls_server.port), timeout=TIMEOUT)
    mute = socket.create_connection((HOST, tls_server.port), timeout=TIMEOUT)
    try:
        half.sendall(bytes(hello[: len(hello) // 2]))
        for i in range(20):
            with TlsWire(tls_server.port, client_context(pki)) as w:
                assert w.request(b"set s%d 0 0 1\r\n1\r\n" % i) == b"STORED\r\n"
        half.settimeout(0.2)
        with pytest.raises(TimeoutError):
            half.recv(1)  # still waiting for the rest, not closed
    finally:
        half.close()
        mute.close()
    assert_serves(tls_server, pki)


def test_client_certificate_required(target: Target, pki: Pki) -> None:
    srv = launch_tls(target, pki, f"ssl_verify_mode=2,ssl_ca_cert={pki.ca}")
    try:
        with TlsWire(srv.port, client_context(pki, cert=True)) as w:
            assert w.request(b"set cc 0 0 1\r\n1\r\n") == b"STORED\r\n"
        # Without a certificate: TLS 1.3 clients finish first, so the refusal
        # (an alert, then the close) comes at the first read.
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with TlsWire(srv.port, client_context(pki)) as w:
                w.request(b"get cc\r\n", b"END\r\n")
        if target.name == "stackmapd":  # (memcached does not count this refusal)
            s = tls_stats(srv.port, client_context(pki, cert=True))
            assert int(s["ssl_handshake_errors"]) >= 1
        assert_serves_with_cert(srv, pki)
    finally:
        srv.stop()


def assert_serves_with_cert(srv: Server, pki: Pki) -> None:
    assert srv.alive(), srv.log()
    with TlsWire(srv.port, client_context(pki, cert=True)) as w:
        assert w.request(b"get cc\r\n", b"END\r\n") == b"VALUE cc 0 1\r\n1\r\nEND\r\n"


def test_min_version_tls13_refuses_tls12(target: Target, pki: Pki) -> None:
    srv = launch_tls(target, pki, "ssl_min_version=3")
    try:
        ctx = client_context(pki)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            TlsWire(srv.port, ctx)
        assert_serves(srv, pki)
    finally:
        srv.stop()


def test_stats_settings_show_tls(target: Target, pki: Pki) -> None:
    srv = launch_tls(target, pki, "ssl_verify_mode=2,ssl_session_cache,ssl_min_version=3," f"ssl_ca_cert={pki.ca}")
    try:
        s = tls_stats(srv.port, client_context(pki, cert=True), "settings")
        assert s["ssl_enabled"] == "yes"
        assert s["ssl_chain_cert"] == str(pki.cert)
        assert s["ssl_key"] == str(pki.key)
        assert s["ssl_verify_mode"] == "3"  # OpenSSL's flags, as memcached prints them
        assert s["ssl_keyformat"] == "1"
        assert s["ssl_ciphers"] == "NULL"
        assert s["ssl_ca_cert"] == str(pki.ca)
        assert s["ssl_session_cache"] == "yes"
        assert s["ssl_min_version"] == "tlsv1.3"
        general = tls_stats(srv.port, client_context(pki, cert=True))
        assert "ssl_new_sessions" in general and "time_since_server_cert_refresh" in general
    finally:
        srv.stop()


def test_session_cache_counts_new_sessions(target: Target, pki: Pki) -> None:
    srv = launch_tls(target, pki, "ssl_session_cache")
    try:
        ctx = client_context(pki)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # server-side session ids
        with TlsWire(srv.port, ctx) as w:
            assert w.request(b"version\r\n").startswith(b"VERSION")
            session = w.sock.session
        raw = socket.create_connection((HOST, srv.port), timeout=TIMEOUT)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as again:
            again.sendall(b"version\r\n")
            assert again.recv(100).startswith(b"VERSION")
            assert again.session_reused
        assert int(tls_stats(srv.port, client_context(pki))["ssl_new_sessions"]) >= 1
    finally:
        srv.stop()


def test_bad_certificate_is_a_clear_start_error(target: Target, pki: Pki, tmp_path: Path) -> None:
    if target.name != "stackmapd":
        pytest.skip("stackmapd's own message")
    missing = tmp_path / "missing.pem"
    # memcached's messages (its refresh_certs answers them too), with OpenSSL's reason.
    for opts, words in ((f"ssl_chain_cert={missing}", ["certificate chain", str(missing), "No such file"]),
                        (f"ssl_chain_cert={pki.cert},ssl_key={pki.client_key}",
                         ["Error loading the key", str(pki.client_key), "mismatch"]),
                        ("", ["ssl_chain_cert"])):
        cmd = target.command(free_port(), ["-Z", *(["-o", opts] if opts else [])])
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert out.returncode != 0
        for word in words:
            assert word in out.stderr, out.stderr


def test_notls_listener_is_plain(target: Target, pki: Pki) -> None:
    if target.name != "stackmapd":
        pytest.skip("one -l list with two addresses: stackmapd's form")

    def connect(port: int) -> socket.socket:
        return socket.create_connection(("127.0.0.2", port), timeout=TIMEOUT)

    with plain_beside_tls(target, pki, ["-l", "127.0.0.1,notls:127.0.0.2"], connect) as s:
        port = s.getpeername()[1]
        s.sendall(b"version\r\n")
        assert recv_until(s, b"\r\n").startswith(b"VERSION ")
        with TlsWire(port, client_context(pki)) as w:
            assert w.request(b"version\r\n").startswith(b"VERSION ")


def test_refresh_certs(target: Target, pki: Pki, tmp_path: Path) -> None:
    """memcached's refresh_certs: new connections get the reloaded certificate,
    a file that no longer loads is refused with memcached's error and the old
    certificate stays."""
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    cert.write_bytes(pki.cert.read_bytes())
    key.write_bytes(pki.key.read_bytes())
    live = Pki(pki.dir, pki.ca, cert, key, pki.client_cert, pki.client_key, pki.other_ca)
    srv = launch_tls(target, live)
    try:
        with TlsWire(srv.port, client_context(pki)) as w:
            first = w.sock.getpeercert(binary_form=True)
            assert w.request(b"refresh_certs\r\n") == b"OK\r\n"
            # Another certificate for the same name, from the other CA.
            _issue(pki.dir, "again", "localhost", "other", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
            cert.write_bytes((pki.dir / "again.crt").read_bytes())
            key.write_bytes((pki.dir / "again.key").read_bytes())
            assert w.request(b"refresh_certs\r\n") == b"OK\r\n"
            with TlsWire(srv.port, client_context(pki, ca=pki.other_ca)) as w2:
                assert w2.sock.getpeercert(binary_form=True) != first
                assert w2.request(b"version\r\n").startswith(b"VERSION ")
            cert.write_text("not a certificate\n")
            answer = w.request(b"refresh_certs\r\n")
            assert answer.startswith(b"Error loading the certificate chain: " + str(cert).encode()), answer
            assert w.request(b"version\r\n").startswith(b"VERSION ")  # the old session carries on
        with TlsWire(srv.port, client_context(pki, ca=pki.other_ca)) as w3:  # the last good certificate
            assert w3.request(b"version\r\n").startswith(b"VERSION ")
        if target.name == "stackmapd":
            assert int(tls_stats(srv.port, client_context(pki, ca=pki.other_ca))["time_since_server_cert_refresh"]) >= 0
    finally:
        srv.stop()


def test_refresh_certs_without_tls(target: Target) -> None:
    from conftest import launch

    srv = launch(target)
    try:
        with srv.wire() as w:
            assert w.request(b"refresh_certs\r\n") == b"Error TLS not enabled\r\n"
            assert w.request(b"version\r\n").startswith(b"VERSION ")
    finally:
        srv.stop()


def test_backpressure_over_tls(tls_server: Server, pki: Pki) -> None:
    """A pipeline whose replies pass the output high-water mark (4 MiB) while
    the client does not read: the input held meanwhile is parsed as the queue
    drains, and every reply arrives, encrypted, in order."""
    value = os.urandom(4096).hex().encode()  # 8 KiB
    n = 1200  # ~10 MB of replies
    with TlsWire(tls_server.port, client_context(pki)) as w:
        assert w.request(b"set bp 0 0 %d\r\n%s\r\n" % (len(value), value)) == b"STORED\r\n"
        w.send(b"get bp\r\n" * n)
        time.sleep(0.5)  # the server's queue fills while nobody reads
        got = w.read_until(b"END\r\n", n)
        assert got == (b"VALUE bp 0 %d\r\n%s\r\nEND\r\n" % (len(value), value)) * n
        assert w.request(b"version\r\n").startswith(b"VERSION ")


def test_stats_settings_without_tls(target: Target) -> None:
    """Without -Z the ssl_* settings read as memcached's: unset files are (null)."""
    from conftest import launch
    from mcwire import stats

    srv = launch(target)
    try:
        s = stats(srv.host, srv.port, "settings")
        assert s["ssl_enabled"] == "no"
        assert s["ssl_chain_cert"] == "(null)" and s["ssl_key"] == "(null)"
        assert s["ssl_ciphers"] == "NULL" and s["ssl_ca_cert"] == "NULL"
        assert s["ssl_verify_mode"] == "0" and s["ssl_keyformat"] == "1"
        assert s["ssl_session_cache"] == "no" and s["ssl_min_version"] == "tlsv1.2"
    finally:
        srv.stop()


def test_unix_socket_is_plain_under_tls(target: Target, pki: Pki, tmp_path: Path) -> None:
    """-Z with -s: the unix socket speaks plain memcached, as memcached's does (TLS is for TCP)."""
    path = tmp_path / "mc.sock"

    def connect(port: int) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(TIMEOUT)
        try:
            s.connect(str(path))
        except OSError:
            s.close()
            raise
        return s

    with plain_beside_tls(target, pki, ["-s", str(path)], connect) as s:
        s.sendall(b"set k 0 0 1\r\nv\r\nget k\r\n")
        assert recv_until(s, b"END\r\n") == b"STORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n"


def test_listen_entries_name_their_own_ports(target: Target, pki: Pki) -> None:
    """memcached's -l HOST:PORT (t/ssl_ports.t's form): a plain notls: listener
    on one port, TLS on another, one -l list; what one stores the other reads."""
    plain_port, tls_port = free_port(), free_port()
    cmd = target.command(tls_port, ["-Z", "-o", f"ssl_chain_cert={pki.cert},ssl_key={pki.key}"])
    at = cmd.index("-l")
    cmd[at + 1] = f"notls:{HOST}:{plain_port},{HOST}:{tls_port}"

    def store_over_tls() -> bytes:
        with TlsWire(tls_port, client_context(pki)) as w:
            return w.request(b"set ports 0 0 8\r\nover tls\r\n")

    with spawned(cmd, "tls-ports-") as (proc, log):
        assert wait_for(proc, log, store_over_tls, (ConnectionRefusedError, ConnectionResetError)) == b"STORED\r\n"
        with socket.create_connection((HOST, plain_port), timeout=TIMEOUT) as s:
            s.sendall(b"get ports\r\n")
            assert recv_until(s, b"END\r\n") == b"VALUE ports 0 8\r\nover tls\r\nEND\r\n"


@pytest.mark.parametrize("entry, words", [("127.0.0.1:99999", ['Invalid port number: "99999"']),
                                          ("127.0.0.1:1x", ['Invalid port number: "1x"']),
                                          ("[::1", ["Invalid IPV6 address"])])
def test_bad_listen_entry_is_a_clear_start_error(target: Target, entry: str, words: list[str]) -> None:
    if target.name != "stackmapd":
        pytest.skip("stackmapd's own checks (memcached takes 99999 modulo 65536)")
    cmd = target.command(free_port(), [])
    cmd[cmd.index("-l") + 1] = entry
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    for word in words:
        assert word in out.stderr, out.stderr


class RecordWire:
    """A TLS 1.3 client over memory BIOs that also reads the record headers
    (5 bytes, in clear) of what the server sends: how replies are cut into records."""

    TAG = 17  # TLS 1.3 AEAD: the inner content type byte + a 16-byte tag per record

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                chunk = self.sock.recv(65536)
                assert chunk, "closed in the handshake"
                self.inc.write(chunk)
        self._flush()
        # the session tickets come before this answer: after it the stream is at a record boundary
        assert self.request(b"version\r\n", b"\r\n")[0].startswith(b"VERSION ")

    def __enter__(self) -> RecordWire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _flush(self) -> None:
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def request(self, data: bytes, marker: bytes) -> tuple[bytes, list[int]]:
        """The answer up to marker and the plaintext size of each record it came in."""
        self.tls.write(data)
        self._flush()
        plain, wire, sizes = b"", b"", []
        while not plain.endswith(marker):
            chunk = self.sock.recv(65536)
            assert chunk, f"closed after {plain[-200:]!r}"
            wire += chunk
            while len(wire) >= 5 and len(wire) >= 5 + int.from_bytes(wire[3:5], "big"):
                n = int.from_bytes(wire[3:5], "big")
                assert wire[0] == 23, f"record type {wire[0]}"  # application data
                sizes.append(n - self.TAG)
                wire = wire[5 + n:]
            self.inc.write(chunk)
            while True:
                try:
                    plain += self.tls.read(65536)
                except ssl.SSLWantReadError:
                    break
        assert not wire
        return plain, sizes


def userspace_tls(target: Target) -> str:
    """-o options for TLS records made by the server's OpenSSL, not the kernel."""
    return ",no_ssl_kernel_tls" if target.name == "stackmapd" else ""


def test_ssl_wbuf_size_in_stats_settings(target: Target, pki: Pki) -> None:
    """memcached's -o ssl_wbuf_size (KiB, shown in bytes): 16 KiB by default."""
    for extra, want in (("", "16384"), ("ssl_wbuf_size=64", "65536")):
        srv = launch_tls(target, pki, extra)
        try:
            assert tls_stats(srv.port, client_context(pki), "settings")["ssl_wbuf_size"] == want
        finally:
            srv.stop()


def test_reply_pieces_share_a_record(target: Target, pki: Pki) -> None:
    """A reply's header, value and END go out in one TLS record, as memcached's
    ssl_wbuf gathers them, not one record each; a 64 KiB value in 16 KiB records."""
    srv = launch_tls(target, pki, userspace_tls(target).lstrip(","), args=["-I", "2m"])
    try:
        with RecordWire(srv.port, client_context(pki)) as w:
            value = os.urandom(50).hex().encode()
            assert w.request(b"set g 0 0 100\r\n%s\r\n" % value, b"\r\n") == (b"STORED\r\n", [8])
            reply = b"VALUE g 0 100\r\n%s\r\nEND\r\n" % value
            assert w.request(b"get g\r\n", b"END\r\n") == (reply, [len(reply)])
            got, sizes = w.request(b"get g g g\r\n", b"END\r\n")
            assert len(sizes) == 1 and got.count(b"VALUE") == 3, sizes
            big = os.urandom(32768).hex().encode()
            assert w.request(b"set big 0 0 65536\r\n%s\r\n" % big, b"\r\n")[0] == b"STORED\r\n"
            got, sizes = w.request(b"get big\r\n", b"END\r\n")
            assert big in got and max(sizes) == 16384 and len(sizes) <= 6, sizes
    finally:
        srv.stop()


def test_ssl_wbuf_size_caps_the_records(target: Target, pki: Pki) -> None:
    """-o ssl_wbuf_size=1: no record carries more than 1 KiB of reply."""
    srv = launch_tls(target, pki, "ssl_wbuf_size=1" + userspace_tls(target))
    try:
        with RecordWire(srv.port, client_context(pki)) as w:
            value = os.urandom(2000).hex().encode()
            assert w.request(b"set w 0 0 4000\r\n%s\r\n" % value, b"\r\n")[0] == b"STORED\r\n"
            got, sizes = w.request(b"get w\r\n", b"END\r\n")
            assert got == b"VALUE w 0 4000\r\n%s\r\nEND\r\n" % value
            assert max(sizes) == 1024 and len(sizes) >= 4, sizes
    finally:
        srv.stop()


def session_end(w: RecordWire) -> str:
    """Read to the end of the TCP stream: "close_notify" when TLS's end of
    session came first, "truncated" when the stream just stopped."""
    while True:
        try:
            chunk = w.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            break
        w.inc.write(chunk)
    try:
        while w.tls.read(65536):  # b"": the close_notify was read
            pass
    except ssl.SSLWantReadError:  # more was to come: the stream stopped short
        return "truncated"
    return "close_notify"


@pytest.mark.parametrize("how", ["quit", "idle_timeout"])
def test_server_close_sends_close_notify(target: Target, pki: Pki, how: str) -> None:
    """When the server ends a TLS session (quit, an idle kick) it says so with
    TLS's close_notify first, as memcached's SSL_shutdown does: a client reads
    a clean end, not a truncated stream (Perl's IO::Socket::SSL died of SIGPIPE
    in memcached's t/idle-timeout.t without it)."""
    srv = launch_tls(target, pki, "idle_timeout=1" + userspace_tls(target))
    try:
        with RecordWire(srv.port, client_context(pki)) as w:
            if how == "quit":
                w.tls.write(b"quit\r\n")
                w._flush()
            assert session_end(w) == "close_notify"  # (idle: the kick comes within ~2 s)
        if how == "idle_timeout":
            assert int(tls_stats(srv.port, client_context(pki))["idle_kicks"]) >= 1
        assert_serves(srv, pki)
    finally:
        srv.stop()


def test_up_probe_goes_to_the_notls_entry_port(target: Target, pki: Pki) -> None:
    """memcached_up under -Z probes the plain notls: listener, on the port its
    -l entry names (not -p's, which speaks TLS here)."""
    if target.name != "stackmapd":
        pytest.skip("memcached_up is stackmapd's")
    import urllib.request

    plain_port, tls_port, http_port = free_port(), free_port(), free_port()
    cmd = target.command(tls_port, ["-Z", "-o", f"ssl_chain_cert={pki.cert},ssl_key={pki.key}",
                                    "--metrics-listen", f"{HOST}:{http_port}"])
    cmd[cmd.index("-l") + 1] = f"{HOST}:{tls_port},notls:{HOST}:{plain_port}"

    def up() -> bool | None:
        with urllib.request.urlopen(f"http://{HOST}:{http_port}/metrics", timeout=TIMEOUT) as resp:
            return True if "\nmemcached_up 1" in resp.read().decode() else None

    with spawned(cmd, "tls-up-") as (proc, log):
        wait_for(proc, log, up)
