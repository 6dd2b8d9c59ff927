"""Raw-socket helpers for byte-exact protocol tests.

The integration tests compare what a server sends with what memcached 1.6
sends, byte for byte.  Client libraries hide exactly the details that matter
(line endings, order of flags, what happens after an error), so most tests
talk to the server through this small wrapper around a blocking socket: send
bytes, read exactly N bytes or read until a terminator, and tell whether the
server closed the connection.  Every operation has a timeout, so a server that
stays silent makes a test fail instead of hang.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable

DEFAULT_TIMEOUT = 5.0


class Wire:
    """One TCP connection to a server, with buffered, time-bounded reads."""

    def __init__(self, host: str, port: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read once more into the buffer; False on timeout or EOF."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 20)
        except TimeoutError:
            return False
        except ConnectionResetError:
            self.eof = True
            return False
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read_exact(self, n: int, timeout: float | None = None) -> bytes:
        """Exactly n bytes, or fewer if the timeout expires or the peer closes."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self.buf) < n and self._fill(deadline):
            pass
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self, end_markers: Iterable[bytes] = (b"\r\n",), timeout: float | None = None) -> bytes:
        """Bytes up to and including the first end marker found (earliest in the stream).

        On timeout or EOF, returns whatever arrived (so the comparison fails
        with the partial bytes in the message).
        """
        markers = tuple(end_markers)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            best = -1
            for m in markers:
                i = self.buf.find(m)
                if i >= 0 and (best < 0 or i + len(m) < best):
                    best = i + len(m)
            if best >= 0:
                out, self.buf = self.buf[:best], self.buf[best:]
                return out
            if not self._fill(deadline):
                out, self.buf = self.buf, b""
                return out

    def read_line(self, timeout: float | None = None) -> bytes:
        return self.read_response((b"\r\n",), timeout)

    def read_available(self, wait: float = 0.2) -> bytes:
        """Everything that arrives within `wait` seconds."""
        deadline = time.monotonic() + wait
        while self._fill(deadline):
            pass
        out, self.buf = self.buf, b""
        return out

    def request(self, data: bytes, end_markers: Iterable[bytes] = (b"\r\n",)) -> bytes:
        self.send(data)
        return self.read_response(end_markers)

    def expect(self, data: bytes, expected: bytes, timeout: float | None = None) -> None:
        """Send data and assert the next len(expected) bytes are exactly `expected`."""
        if data:
            self.send(data)
        got = self.read_exact(len(expected), timeout)
        assert got == expected, f"sent {data[:300]!r}\n  expected {expected[:600]!r}\n  got      {got[:600]!r}"

    def expect_silence(self, wait: float = 0.2) -> None:
        """Assert nothing (more) arrives within `wait` seconds."""
        extra = self.read_available(wait)
        assert extra == b"", f"unexpected bytes from server: {extra[:300]!r}"

    def closed_by_peer(self, wait: float = 2.0) -> bool:
        """True if the server closes the connection within `wait` seconds.

        Any bytes that arrive first are kept in self.buf for inspection.
        """
        deadline = time.monotonic() + wait
        while self._fill(deadline):
            pass
        return self.eof


def parse_stats(raw: bytes) -> list[tuple[str, str]]:
    """'STAT name value' lines (up to END) as an ordered list of pairs."""
    assert raw.endswith(b"END\r\n"), f"stats response not terminated by END: {raw[-200:]!r}"
    pairs: list[tuple[str, str]] = []
    for line in raw[: -len(b"END\r\n")].split(b"\r\n"):
        if not line:
            continue
        parts = line.decode().split(" ", 2)
        assert parts[0] == "STAT" and len(parts) == 3, f"bad stats line {line!r}"
        pairs.append((parts[1], parts[2]))
    return pairs


def stats(host: str, port: int, group: str = "") -> dict[str, str]:
    """One 'stats [group]' round trip on a fresh connection, as a dict."""
    cmd = b"stats\r\n" if not group else f"stats {group}\r\n".encode()
    with Wire(host, port) as w:
        return dict(parse_stats(w.request(cmd, (b"END\r\n", b"ERROR\r\n"))))
