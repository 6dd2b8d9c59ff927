"""Replay a workload trace (loadtest/workloads.py) against one server, look-aside style.

Why a Python replayer and not memaslap or mcblast: the hit ratio depends on the exact
sequence of keys, and on the client storing a key only after its get missed; neither
generator replays a given sequence or sets on a miss.  A batch of distinct keys is sent as
one write of pipelined ``get`` commands (after the ``set`` commands for the previous
batch's misses), and answered before the next batch goes out, over one connection: a
few hundred thousand requests take seconds, not minutes.

Pacing (``rate``): batch i is not sent before its due time (``Trace.due_times``: its first
request's index over ``rate``, or a phase's own pace), so a given request is sent at the
same time after the start on every server (as long as the client keeps up; the lag is
recorded).  That makes time-dependent behaviour (TTL expiry,
memcached's background LRU maintainer, crawler and slab automover) comparable.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from loadtest.targets import HOST
from loadtest.workloads import MAX_VALUE, Trace

# Filler for every value (the content does not matter to a cache).
_VALUE = b"v" * MAX_VALUE
_RECV = 1 << 18


class ReplayError(RuntimeError):
    """The server answered something a memcached server does not, or went away."""


@dataclass
class ReplayResult:
    """What the client saw."""

    hits: bytearray  # per request: 1 if the get hit
    sets: int  # sets sent (one per miss)
    set_errors: int  # sets not answered STORED
    first_set_error: str | None  # the first such answer
    seconds: float  # wall time of the replay
    client_cpu_s: float  # this process's CPU time during the replay
    max_lag_s: float  # paced: the most a batch went out after its due time


class _Reader:
    """Buffered reads of memcached text replies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0

    def _more(self) -> None:
        data = self.sock.recv(_RECV)
        if not data:
            raise ReplayError("the server closed the connection")
        if self.pos > _RECV:
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += data

    def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                out = bytes(self.buf[self.pos : end])
                self.pos = end + 2
                return out
            self._more()

    def skip(self, n: int) -> bytes:
        """Consume n bytes; return the last two (for a framing check)."""
        while len(self.buf) - self.pos < n:
            self._more()
        self.pos += n
        return bytes(self.buf[self.pos - 2 : self.pos])

    def get_reply(self) -> bool:
        """One ``get`` reply: True for a hit (one VALUE block), False for END alone."""
        line = self.line()
        if line == b"END":
            return False
        if not line.startswith(b"VALUE "):
            raise ReplayError(f"unexpected reply to get: {line[:80]!r}")
        n = int(line.rsplit(b" ", 1)[1])
        if self.skip(n + 2) != b"\r\n" or self.line() != b"END":
            raise ReplayError("malformed VALUE block")
        return True


def replay(port: int, trace: Trace, rate: float | None, timeout_s: float = 60.0) -> ReplayResult:
    """Replay ``trace`` against 127.0.0.1:port; ``rate`` in requests per second or None."""
    keys, sizes, ttls, reqs, batches = trace.keys, trace.sizes, trace.ttls, trace.requests, trace.batches
    n = len(reqs)
    hits = bytearray(n)
    sets = set_errors = 0
    first_error: str | None = None
    max_lag = 0.0
    value = memoryview(_VALUE)
    with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = _Reader(sock)
        pending: list[int] = []  # keys that missed in the batch before: set them now
        due_times = trace.due_times(rate) if rate else []
        cpu0, t0 = time.process_time(), time.monotonic()
        for b in range(len(batches) + 1):
            start = batches[b] if b < len(batches) else n
            end = batches[b + 1] if b + 1 < len(batches) else n
            out: list[bytes | memoryview] = []
            for k in pending:
                out.append(b"set %s 0 %d %d\r\n" % (keys[k], ttls[k], sizes[k]))
                out.append(value[: sizes[k]])
                out.append(b"\r\n")
            for i in range(start, end):
                out.append(b"get %s\r\n" % keys[reqs[i]])
            if not out:
                break
            if due_times and b < len(due_times):
                due = t0 + due_times[b]
                now = time.monotonic()
                if now < due:
                    time.sleep(due - now)
                else:
                    max_lag = max(max_lag, now - due)
            sock.sendall(b"".join(out))
            for _ in pending:
                line = reader.line()
                if line != b"STORED":
                    set_errors += 1
                    first_error = first_error or line.decode("ascii", "replace")
            sets += len(pending)
            pending = []
            for i in range(start, end):
                if reader.get_reply():
                    hits[i] = 1
                else:
                    pending.append(reqs[i])
        seconds = time.monotonic() - t0
        cpu = time.process_time() - cpu0
    return ReplayResult(hits, sets, set_errors, first_error, seconds, cpu, max_lag)
