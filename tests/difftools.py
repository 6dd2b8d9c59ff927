"""Differential sessions: the same steps against memcached and a target.

One runner for every test that compares stackmapd with memcached 1.6.18
byte for byte (test_differential for the text and meta protocols,
test_binary_differential for the binary one, test_auth for -Y): each
session is a list of steps sent one at a time on one connection to each
server, and the responses are recorded as transcript lines, normalised by
the wire format, then compared; a difference fails with both transcripts
as a unified diff.

How a step is read back: a complete request is followed by the format's
sentinel (text: a meta no-op "mn"; binary: a NOOP with a sentinel opaque)
and the response is everything up to the sentinel's answer, so no step
waits on a timer.  Steps wrapped in Raw() (partial requests, value headers
awaiting data, input that makes the server close the connection) are sent
alone and read until the connection has been quiet for a moment.

Only bytes are compared, not when they are sent: a response that one
server sends before the rest of a partial request arrives and the other
after it would show up as a difference, so sessions avoid such steps.

What each format masks:
  * text (TextFrames): VERSION strings and STAT values; CAS numbers (gets
    and gats lines, meta "c" flags, "cas=" in me) renamed C1, C2, ... in
    order of first appearance on each server, so equality between CAS
    values is still compared, not their numbers (a step may use "{cas}"
    for the last CAS number that server returned); meta "l" and "t"
    values and me's la=, cls=, size= (timing and item layout are not
    protocol).
  * binary (BinaryFrames): the VERSION string and STAT values, nothing
    else: both servers hand out the same CAS uniques in the same order.
"""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from conftest import MEMCACHED, Server, Target, launch
from mcbinary import NOOP, STAT, VERSION, Packet, read_until_opaque, req, split_packets
from mcwire import Wire

# memcached features stackmapd has none of (see test_text): libevent's version,
# NAPI ids (-N: stats settings' num_napi_ids), TLS, extstore, memory-file restart.
IGNORED_PREFIXES = (
    "libevent", "num_napi_ids", "ssl_", "ext_", "memory_file",
)


@dataclass(frozen=True)
class Raw:
    """A step sent without the sentinel, read until the connection is quiet
    for `quiet` seconds (None: the wire format's default)."""

    data: bytes
    quiet: float | None = None


Step = bytes | Raw


class TextFrames:
    """Text and meta lines: the sentinel is "mn", responses are normalised line by line."""

    name = "text"
    quiet = 0.25  # a Raw step's default quiet time
    sentinel = b"mn\r\n"
    # whether a Raw step also waits a moment for the peer to close (binary
    # does: a close it answers first is still a response)
    probe_close = False

    def __init__(self) -> None:
        self.cas_names: dict[bytes, bytes] = {}  # CAS number -> C1, C2, ...
        self.last_cas = b"0"  # what "{cas}" in a step stands for

    def expand(self, raw: bytes) -> bytes:
        return raw.replace(b"{cas}", self.last_cas)

    def read_reply(self, w: Wire) -> bytes:
        return w.read_response((self.sentinel.upper(),), timeout=10)

    def _cas(self, m: re.Match[bytes]) -> bytes:
        num = m.group(2)
        self.last_cas = num
        name = self.cas_names.setdefault(num, b"C%d" % (len(self.cas_names) + 1))
        return m.group(1) + name

    def normalise(self, resp: bytes) -> bytes:
        out = []
        for line in resp.split(b"\r\n"):
            if line.startswith(b"VALUE ") and len(line.split(b" ")) == 5:
                line = re.sub(rb"^(VALUE \S+ \d+ \d+ )(\d+)$", self._cas, line)
            elif re.match(rb"^(HD|VA|EN|EX|NF|NS)( |$)", line):
                toks = line.split(b" ")
                for i, t in enumerate(toks[1:], 1):
                    if re.fullmatch(rb"c\d+", t):
                        toks[i] = self._cas(re.match(rb"(c)(\d+)", t))  # type: ignore[arg-type]
                    elif re.fullmatch(rb"l\d+", t):
                        toks[i] = b"l<n>"
                    elif re.fullmatch(rb"t\d+", t):
                        toks[i] = b"t<n>"
                line = b" ".join(toks)
            elif line.startswith(b"ME "):
                line = re.sub(rb"(cas=)(\d+)", self._cas, line)
                line = re.sub(rb"\b(la|cls|size)=\d+", rb"\1=<n>", line)
            elif line.startswith(b"VERSION "):
                line = b"VERSION <version>"
            elif line.startswith(b"STAT "):
                line = re.sub(rb"^(STAT \S+) .*$", rb"\1 <v>", line)
            out.append(line)
        return b"\r\n".join(out)

    def render(self, resp: bytes) -> list[str]:
        lines = self.normalise(resp).split(b"\r\n")
        return ["< " + repr(line[:300]) for line in lines if line or len(lines) == 1]


SENTINEL_OPAQUE = 0x5E47_1E1


def describe(p: Packet) -> str:
    """One binary response packet as a transcript line, with the masks applied."""
    value = p.value
    if p.opcode == VERSION and p.status == 0:
        value = b"<version>"
    elif p.opcode == STAT and p.key:
        value = b"<v>"
    hdr = p.raw[:24]
    # magic, opcode, key length, extras length, data type, status, opaque (the
    # body length and CAS are shown decoded)
    fields = f"{hdr[0]:02x} op={hdr[1]:02x} kl={hdr[2:4].hex()} el={hdr[4]:02x} dt={hdr[5]:02x} st={hdr[6:8].hex()}"
    body_len = len(p.raw) - 24 if value is p.value else "<masked>"
    return f"{fields} bl={body_len} opq={hdr[12:16].hex()} cas={p.cas} ext={p.extras.hex()} key={p.key!r} val={value[:200]!r}"


class BinaryFrames:
    """Binary packets: the sentinel is a NOOP, responses are described packet by packet."""

    name = "binary"
    quiet = 0.3
    sentinel = req(NOOP, opaque=SENTINEL_OPAQUE)
    probe_close = True

    def expand(self, raw: bytes) -> bytes:
        return raw

    def read_reply(self, w: Wire) -> bytes:
        packets, rest = read_until_opaque(w, SENTINEL_OPAQUE)
        return b"".join(p.raw for p in packets) + rest

    def render(self, resp: bytes) -> list[str]:
        packets, rest = split_packets(resp)
        lines = ["< " + describe(p) for p in packets]
        if rest:
            lines.append(f"< (partial) {rest[:100]!r}")
        return lines


Frames = TextFrames | BinaryFrames


class Transcript:
    """Runs steps on one connection and records the normalised responses."""

    def __init__(self, server: Server, frames: Frames) -> None:
        self.w: Wire | None = server.wire(timeout=10)
        self.frames = frames
        self.lines: list[str] = []

    def step(self, step: Step) -> bytes:
        """Send one step; the raw response (also recorded, normalised, in lines)."""
        if self.w is None:
            self.lines.append("> (connection closed)")
            return b""
        raw = self.frames.expand(step.data if isinstance(step, Raw) else step)
        self.lines.append("> " + repr(raw[:200]) + (f" ...({len(raw)} bytes)" if len(raw) > 200 else ""))
        try:
            self.w.send(raw if isinstance(step, Raw) else raw + self.frames.sentinel)
        except (BrokenPipeError, ConnectionResetError):
            self.w.eof = True  # closed on the first bytes of a long step: what came back is below
        if isinstance(step, Raw):
            quiet = self.frames.quiet if step.quiet is None else step.quiet
            resp = b""
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                chunk = self.w.read_available(quiet)
                resp += chunk
                if not chunk:
                    break
        else:
            resp = self.frames.read_reply(self.w)
        self.lines += self.frames.render(resp)
        if self.w.eof or (isinstance(step, Raw) and self.frames.probe_close and self.w.closed_by_peer(0.05)):
            self.lines.append("< <connection closed>")
            self.w.close()
            self.w = None
        return resp

    def run(self, steps: list[Step]) -> None:
        for s in steps:
            self.step(s)

    def close(self) -> None:
        if self.w is not None:
            self.w.close()


def run_pair(ref: Server, tgt: Server, steps: list[Step], frames: type[Frames] = TextFrames,
             together: bool = False) -> None:
    """Run steps on a connection to each server; fail with a diff unless the
    transcripts are the same.  Steps alternate between the servers, or with
    together each server runs the whole list in its own thread (sessions
    with no clock in them: a step that is never answered then waits out its
    read timeout on both at once)."""
    a, b = Transcript(ref, frames()), Transcript(tgt, frames())
    try:
        if together:
            with ThreadPoolExecutor(2) as pool:
                for done in [pool.submit(t.run, steps) for t in (a, b)]:
                    done.result()
        else:
            for s in steps:
                a.step(s)
                b.step(s)
    finally:
        a.close()
        b.close()
    if a.lines != b.lines:
        diff = "\n".join(difflib.unified_diff(a.lines, b.lines, "memcached", tgt.target.id, lineterm="", n=3))
        pytest.fail(f"{frames.name} responses differ from memcached's:\n{diff}", pytrace=False)


@contextmanager
def server_pair(target: Target, args: list[str]) -> Iterator[tuple[Server, Server]]:
    """A fresh memcached and a fresh target, both started with args; stopped after."""
    ref = launch(MEMCACHED, args)
    try:
        tgt = launch(target, args)
    except BaseException:
        ref.stop()
        raise
    try:
        yield ref, tgt
    finally:
        ref.stop()
        tgt.stop()
