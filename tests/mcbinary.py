"""memcached binary protocol packets for the tests: building requests, reading responses.

A request or response is a 24-byte header (magic, opcode, key length,
extras length, data type, vbucket or status, body length, opaque, CAS)
and a body of extras, key and value (memcached's doc/protocol-binary.xml).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mcwire import Wire

REQ_MAGIC = 0x80
RES_MAGIC = 0x81
HEADER = struct.Struct(">BBHBBHIIQ")

# Opcodes.
GET, SET, ADD, REPLACE, DELETE, INCR, DECR, QUIT, FLUSH, GETQ, NOOP, VERSION = range(12)
GETK, GETKQ, APPEND, PREPEND, STAT, SETQ, ADDQ, REPLACEQ, DELETEQ = range(0x0C, 0x15)
INCRQ, DECRQ, QUITQ, FLUSHQ, APPENDQ, PREPENDQ, VERBOSITY, TOUCH, GAT, GATQ = range(0x15, 0x1F)
SASL_LIST_MECHS, SASL_AUTH, SASL_STEP, GATK, GATKQ = range(0x20, 0x25)

# Status codes.
SUCCESS, KEY_ENOENT, KEY_EEXISTS, E2BIG, EINVAL, NOT_STORED, DELTA_BADVAL = range(7)
AUTH_ERROR, UNKNOWN_COMMAND = 0x20, 0x81


def req(
    opcode: int,
    key: bytes = b"",
    value: bytes = b"",
    extras: bytes = b"",
    *,
    opaque: int = 0,
    cas: int = 0,
    keylen: int | None = None,
    extlen: int | None = None,
    bodylen: int | None = None,
    magic: int = REQ_MAGIC,
) -> bytes:
    """One request; the lengths may be overridden to build malformed headers."""
    kl = len(key) if keylen is None else keylen
    el = len(extras) if extlen is None else extlen
    bl = len(extras) + len(key) + len(value) if bodylen is None else bodylen
    return HEADER.pack(magic, opcode, kl, el, 0, 0, bl, opaque, cas) + extras + key + value


def store(opcode: int, key: bytes, value: bytes, flags: int = 0, exptime: int = 0, **kw: int) -> bytes:
    """SET/ADD/REPLACE (and quiet forms): 8 bytes of extras, flags and expiration."""
    return req(opcode, key, value, struct.pack(">II", flags, exptime), **kw)


def arith(opcode: int, key: bytes, delta: int, initial: int = 0, exptime: int = 0, **kw: int) -> bytes:
    """INCR/DECR (and quiet forms): delta, initial value, expiration."""
    return req(opcode, key, b"", struct.pack(">QQI", delta, initial, exptime), **kw)


def touch(opcode: int, key: bytes, exptime: int = 0, **kw: int) -> bytes:
    """TOUCH/GAT/GATK (and quiet forms): 4 bytes of expiration."""
    return req(opcode, key, b"", struct.pack(">I", exptime), **kw)


@dataclass
class Packet:
    """One response as received."""

    magic: int
    opcode: int
    status: int
    opaque: int
    cas: int
    extras: bytes
    key: bytes
    value: bytes
    raw: bytes  # the whole packet as it came


def split_packets(data: bytes) -> tuple[list[Packet], bytes]:
    """The complete packets at the start of data, and what is left over."""
    out: list[Packet] = []
    off = 0
    while len(data) - off >= HEADER.size:
        magic, op, kl, el, _dt, status, bl, opaque, cas = HEADER.unpack_from(data, off)
        end = off + HEADER.size + bl
        if end > len(data):
            break
        body = data[off + HEADER.size : end]
        out.append(Packet(magic, op, status, opaque, cas, body[:el], body[el : el + kl], body[el + kl :],
                          data[off:end]))
        off = end
    return out, data[off:]


def read_until_opaque(w: Wire, opaque: int, timeout: float = 10.0, opcode: int = NOOP) -> tuple[list[Packet], bytes]:
    """Packets up to and including the first `opcode` carrying `opaque` (a NOOP sentinel).

    On timeout or end of stream returns what arrived; the second item is
    any trailing bytes that are not a whole packet.
    """
    got = b""
    while True:
        packets, rest = split_packets(got)
        for i, p in enumerate(packets):
            if p.opaque == opaque and p.opcode == opcode:
                consumed = sum(len(q.raw) for q in packets[: i + 1])
                w.buf = got[consumed:] + w.buf
                return packets[: i + 1], b""
        more = w.read_exact(1, timeout)  # waits for the next receive...
        if not more:
            return packets, rest
        more += w.buf  # ...and takes all of it
        w.buf = b""
        got += more


def call(w: Wire, data: bytes, opaque: int = 0x5EA1, sentinel: int = NOOP) -> list[Packet]:
    """Send data followed by a `sentinel` request (NOOP; VERSION before SASL)
    with `opaque`; the packets before the sentinel's answer."""
    w.send(data + req(sentinel, opaque=opaque))
    packets, _ = read_until_opaque(w, opaque, opcode=sentinel)
    assert packets and packets[-1].opcode == sentinel and packets[-1].opaque == opaque, packets
    return packets[:-1]
