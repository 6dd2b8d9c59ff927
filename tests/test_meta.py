"""Meta protocol (mg, ms, md, ma, mn, me): every flag, exact bytes on raw sockets.

Each test is a scripted session: (request, expected response) pairs, written
as latin-1 strings.  In both, "@" stands for a key prefix unique to the test.
In expected responses "<N>" matches any unsigned number: it is used only for
values that legitimately differ between servers or runs (CAS numbers,
seconds since last access, slab class and item size in "me", a TTL read a
tick later).  Everything else must match memcached 1.6.18 byte for byte.
"""

from __future__ import annotations

import base64
import re
import time

import pytest
from conftest import Server
from mcwire import Wire

Step = tuple[str, str]


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return "m" + re.sub(r"[^A-Za-z0-9]", "_", request.node.name)[-50:] + "_"


def _pattern(expected: bytes) -> re.Pattern[bytes]:
    parts = expected.split(b"<N>")
    return re.compile(rb"-?\d+".join(re.escape(p) for p in parts), re.S)


def check(w: Wire, send: bytes, expected: bytes, what: str = "") -> None:
    """Send one request and compare the response with `expected` (see module doc)."""
    if send:
        w.send(send)
    if b"<N>" not in expected:
        got = w.read_exact(len(expected))
        assert got == expected, f"{what}sent {send!r}\n  expected {expected!r}\n  got      {got!r}"
        return
    pat = _pattern(expected)
    deadline = time.monotonic() + w.timeout
    got = b""
    while time.monotonic() < deadline:
        got += w.read_available(0.02)
        if pat.fullmatch(got):
            return
        if w.eof:
            break
    got += w.read_available(0.05)
    assert pat.fullmatch(got), f"{what}sent {send!r}\n  expected {expected!r}\n  got      {got!r}"


def run(server: Server, prefix: str, steps: list[Step]) -> None:
    with server.wire() as w:
        for i, (send, expected) in enumerate(steps):
            s = send.replace("@", prefix).encode("latin-1")
            e = expected.replace("@", prefix).encode("latin-1")
            check(w, s, e, f"step {i}: ")
        w.expect_silence(0.1)


def test_mg_flags(server: Server, prefix: str) -> None:
    run(server, prefix, [
        ("ms @a 3 T0 F7\r\nabc\r\n", "HD\r\n"),
        # flags come back in the order they were asked for
        ("mg @a v f s t k O9 c\r\n", "VA 3 f7 s3 t-1 k@a O9 c<N>\r\nabc\r\n"),
        ("mg @a s v\r\n", "VA 3 s3\r\nabc\r\n"),
        ("mg @a\r\n", "HD\r\n"),
        ("mg @a q\r\n", "HD\r\n"),
        ("mg @a k q\r\n", "HD k@a\r\n"),
        ("mg @a O123456789012345678901234567890\r\n", "HD O123456789012345678901234567890\r\n"),
        ("mg @miss\r\n", "EN\r\n"),
        ("mg @miss v\r\n", "EN\r\n"),
        # q hides the miss; mn marks the end of a pipeline
        ("mg @miss q\r\nmg @miss v q k\r\nmn\r\n", "MN\r\n"),
        ("mg @a v q\r\nmg @miss v q\r\nmn\r\n", "VA 3\r\nabc\r\nMN\r\n"),
        ("mn\r\n", "MN\r\n"),
        ("mg @a zz\r\n", "CLIENT_ERROR invalid flag\r\n"),
        ("mg @a v v\r\n", "CLIENT_ERROR duplicate flag\r\n"),
        ("mg\r\n", "ERROR\r\n"),
    ])


def test_mg_hit_and_last_access(server: Server, prefix: str) -> None:
    run(server, prefix, [
        ("ms @h 1\r\nh\r\n", "HD\r\n"),
        # h and l report the state before this request
        ("mg @h h\r\n", "HD h0\r\n"),
        ("mg @h h l\r\n", "HD h1 l<N>\r\n"),
        ("ms @u 1\r\nu\r\n", "HD\r\n"),
        # u: no bump, so the item stays "not hit"
        ("mg @u h u\r\n", "HD h0\r\n"),
        ("mg @u h\r\n", "HD h0\r\n"),
        ("mg @u h\r\n", "HD h1\r\n"),
    ])


def test_mg_ttl_flags(server: Server, prefix: str) -> None:
    run(server, prefix, [
        ("ms @t 1 T0\r\nt\r\n", "HD\r\n"),
        ("mg @t t\r\n", "HD t-1\r\n"),
        ("mg @t T100 t\r\n", "HD t100\r\n"),
        ("mg @t t v\r\n", "VA 1 t<N>\r\nt\r\n"),
        ("ms @t2 1 T1000\r\nt\r\n", "HD\r\n"),
        ("mg @t2 t\r\n", "HD t<N>\r\n"),
        # a negative TTL expires the item
        ("mg @t T-1\r\n", "HD\r\n"),
        ("mg @t v\r\n", "EN\r\n"),
    ])
    with server.wire() as w:
        w.send(f"mg {prefix}t2 t\r\n".encode())
        ttl = int(w.read_line().split()[1][1:])
        assert 995 <= ttl <= 1000


def test_mg_vivify_and_recache(server: Server, prefix: str) -> None:
    run(server, prefix, [
        # N: a miss creates an empty item, the first client wins (W) ...
        ("mg @nv N30 s v c t\r\n", "VA 0 s0 c<N> t30 W\r\n\r\n"),
        # ... later ones are told somebody else already won (Z)
        ("mg @nv N30 s v t\r\n", "VA 0 s0 t<N> Z\r\n\r\n"),
        ("mg @nv v\r\n", "VA 0 Z\r\n\r\n"),
        ("ms @nv 4\r\nreal\r\n", "HD\r\n"),
        ("mg @nv v N30\r\n", "VA 4\r\nreal\r\n"),
        # R: win the recache when the remaining TTL is below the token
        ("ms @r 1 T100\r\nr\r\n", "HD\r\n"),
        ("mg @r v R50\r\n", "VA 1\r\nr\r\n"),
        ("mg @r v R200\r\n", "VA 1 W\r\nr\r\n"),
        ("mg @r v R200\r\n", "VA 1 Z\r\nr\r\n"),
        ("mg @r v R50\r\n", "VA 1 Z\r\nr\r\n"),
        # md I marks stale: X, and the next fetch wins the recache
        ("ms @s 1 T100\r\ns\r\n", "HD\r\n"),
        ("md @s I T30\r\n", "HD\r\n"),
        ("mg @s v c\r\n", "VA 1 c<N> X W\r\ns\r\n"),
        ("mg @s v c\r\n", "VA 1 c<N> Z X\r\ns\r\n"),
        ("mg @s v t\r\n", "VA 1 t<N> Z X\r\ns\r\n"),
        ("ms @s 1 C999\r\nx\r\n", "EX\r\n"),
        ("mg @s v\r\n", "VA 1 Z X\r\ns\r\n"),
        # a plain store replaces the stale item
        ("ms @s 1\r\nn\r\n", "HD\r\n"),
        ("mg @s v\r\n", "VA 1\r\nn\r\n"),
    ])


def test_ms_modes(server: Server, prefix: str) -> None:
    run(server, prefix, [
        ("ms @m 1 ME\r\n1\r\n", "HD\r\n"),
        ("ms @m 1 ME\r\n2\r\n", "NS\r\n"),
        ("ms @m 1 MA\r\n3\r\n", "HD\r\n"),
        ("ms @m 1 MP\r\n0\r\n", "HD\r\n"),
        ("mg @m v\r\n", "VA 3\r\n013\r\n"),
        ("ms @none 1 MR\r\nx\r\n", "NS\r\n"),
        ("ms @none 1 MA\r\nx\r\n", "NS\r\n"),
        ("ms @none 1 MP\r\nx\r\n", "NS\r\n"),
        ("mg @none v\r\n", "EN\r\n"),
        ("ms @m 1 MR F3 T0\r\nR\r\n", "HD\r\n"),
        ("mg @m v f\r\n", "VA 1 f3\r\nR\r\n"),
        ("ms @m 1 MS\r\nS\r\n", "HD\r\n"),
        ("ms @m 1 Ms\r\ns\r\n", "CLIENT_ERROR invalid mode for ms M token\r\n"),
        ("ms @m 1 me\r\ne\r\n", "CLIENT_ERROR invalid flag\r\n"),
        ("mg @m v f\r\n", "VA 1 f0\r\nS\r\n"),
    ])


def test_ms_flags(server: Server, prefix: str) -> None:
    run(server, prefix, [
        ("ms @f 2 F4294967295 T0\r\nff\r\n", "HD\r\n"),
        ("mg @f f v\r\n", "VA 2 f4294967295\r\nff\r\n"),
        ("ms @f 1 k O77\r\nq\r\n", "HD k@f O77\r\n"),
        ("ms @f 1 k O77 q\r\nq\r\nmn\r\n", "MN\r\n"),
        ("ms @f 1 c\r\nc\r\n", "HD c<N>\r\n"),
        ("ms @f 1 Fabc\r\nq\r\n", "CLIENT_ERROR bad command line format\r\n"),
        ("ms @f 1 Tabc\r\nq\r\n", "CLIENT_ERROR bad token in command line format\r\n"),
        ("ms @f abc\r\nq\r\n", "CLIENT_ERROR bad command line format\r\nERROR\r\n"),
        ("ms @f S2\r\nhe\r\n", "CLIENT_ERROR bad command line format\r\nERROR\r\n"),
        ("ms @f\r\n", "CLIENT_ERROR bad command line format\r\n"),
        ("ms @f 1 c\r\nxyz\r\n", "CLIENT_ERROR bad data chunk\r\nERROR\r\n"),
        ("mg @f v\r\n", "VA 1\r\nc\r\n"),
        ("ms @f 0\r\n\r\n", "HD\r\n"),
        ("mg @f v s\r\n", "VA 0 s0\r\n\r\n"),
        ("ms @f 1 I\r\ni\r\n", "HD\r\n"),
        ("mg @f v\r\n", "VA 1\r\ni\r\n"),
    ])


def _cas(w: Wire, key: str) -> int:
    w.send(f"mg {key} c\r\n".encode())
    line = w.read_line()
    m = re.fullmatch(rb"HD c(\d+)( [^\r\n]*)?\r\n", line)
    assert m, line
    return int(m.group(1))


def test_ms_cas_and_invalidate(server: Server, prefix: str) -> None:
    key = prefix + "c"
    with server.wire() as w:
        check(w, f"ms {key} 1\r\n1\r\n".encode(), b"HD\r\n")
        cas = _cas(w, key)
        check(w, f"ms {key} 1 c C{cas + 1000}\r\nC\r\n".encode(), b"EX c0\r\n")
        check(w, f"ms {key} 1 C{cas} MA\r\n2\r\n".encode(), b"HD\r\n")
        check(w, f"mg {key} v\r\n".encode(), b"VA 2\r\n12\r\n")
        assert _cas(w, key) != cas, "a store must change the CAS value"
        cas2 = _cas(w, key)
        check(w, f"ms {key} 1 C{cas} MP\r\n0\r\n".encode(), b"EX\r\n")
        # I with an older CAS: stored, but marked stale (X on the next mg)
        check(w, f"ms {key} 1 c C{cas2 - 1} I\r\nI\r\n".encode(), b"HD c<N>\r\n")
        check(w, f"mg {key} v\r\n".encode(), b"VA 1 X W\r\nI\r\n")
        # I with a newer CAS than the item's: EX
        cas3 = _cas(w, key)
        check(w, f"ms {key} 1 C{cas3 + 100} I\r\nJ\r\n".encode(), b"EX\r\n")
        check(w, f"ms {prefix}none 1 C5\r\nx\r\n".encode(), b"NF\r\n")
        check(w, f"ms {key} 1 C{cas3}\r\nK\r\n".encode(), b"HD\r\n")
        check(w, f"mg {key} v\r\n".encode(), b"VA 1\r\nK\r\n")


def test_md_flags(server: Server, prefix: str) -> None:
    run(server, prefix, [
        ("ms @d 1\r\nd\r\n", "HD\r\n"),
        ("md @d C1\r\n", "EX\r\n"),
        ("md @d q\r\nmn\r\n", "MN\r\n"),
        ("md @d\r\n", "NF\r\n"),
        ("md @d q\r\n", "NF\r\n"),
        ("md @d k O3\r\n", "NF k@d O3\r\n"),
        ("ms @d 1\r\nd\r\n", "HD\r\n"),
        ("md @d k O3\r\n", "HD k@d O3\r\n"),
        ("ms @d 1 T0\r\nd\r\n", "HD\r\n"),
        # I: mark stale instead of removing; T only applies with I
        ("md @d I T30\r\n", "HD\r\n"),
        ("mg @d v t\r\n", "VA 1 t<N> X W\r\nd\r\n"),
        ("md @d\r\n", "HD\r\n"),
        ("mg @d v\r\n", "EN\r\n"),
        ("md @d z\r\n", "CLIENT_ERROR invalid or duplicate flag\r\n"),
        ("md\r\n", "ERROR\r\n"),
    ])
    key = prefix + "dc"
    with server.wire() as w:
        check(w, f"ms {key} 1\r\n1\r\n".encode(), b"HD\r\n")
        cas = _cas(w, key)
        check(w, f"md {key} C{cas + 1} q\r\n".encode(), b"EX\r\n")
        check(w, f"md {key} C{cas} I\r\n".encode(), b"HD\r\n")
        assert _cas(w, key) != cas, "md I must bump the CAS value"
        check(w, f"md {key} C{cas}\r\n".encode(), b"EX\r\n")


def test_ma_flags(server: Server, prefix: str) -> None:
    run(server, prefix, [
        ("ma @n\r\n", "NF\r\n"),
        ("ma @n q\r\n", "NF\r\n"),
        ("ma @n N0 J13\r\n", "HD\r\n"),
        ("ma @n v\r\n", "VA 2\r\n14\r\n"),
        ("ma @n v D5\r\n", "VA 2\r\n19\r\n"),
        ("ma @n v MD D100\r\n", "VA 1\r\n0\r\n"),
        ("ma @n v M- D1\r\n", "VA 1\r\n0\r\n"),
        ("ma @n v MI D18446744073709551615\r\n", "VA 20\r\n18446744073709551615\r\n"),
        ("ma @n v M+ D7\r\n", "VA 1\r\n6\r\n"),
        ("ma @n v Mx\r\n", "CLIENT_ERROR invalid mode for ma M token\r\n"),
        ("ma @n v Dabc\r\n", "CLIENT_ERROR invalid or duplicate flag\r\n"),
        ("ma @n v D-1\r\n", "CLIENT_ERROR invalid or duplicate flag\r\n"),
        ("ma @n t v\r\n", "VA 1 t-1\r\n7\r\n"),
        ("ma @n c v\r\n", "VA 1 c<N>\r\n8\r\n"),
        ("ma @n c v C1\r\n", "EX\r\n"),
        ("ma @n q\r\nmn\r\n", "MN\r\n"),
        ("ma @n q v\r\nmn\r\n", "MN\r\n"),
        ("ma @n k O4 v\r\n", "VA 2 k@n O4\r\n11\r\n"),
        ("ma @new N0 J18446744073709551615 v\r\n", "VA 20\r\n18446744073709551615\r\n"),
        ("ma @new v\r\n", "VA 1\r\n0\r\n"),
        ("ma @new2 N100 t v\r\n", "VA 1 t100\r\n0\r\n"),
        ("ma @new3 N0 J5 D10 MD v\r\n", "VA 1\r\n5\r\n"),
        ("ma @new4 Jabc N0 v\r\n", "CLIENT_ERROR invalid or duplicate flag\r\n"),
        ("ms @s 3\r\nabc\r\n", "HD\r\n"),
        ("ma @s\r\n", "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"),
        ("ma @s q\r\n", "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"),
        ("ma @missing q\r\nmn\r\n", "NF\r\nMN\r\n"),
        ("ma @n x\r\n", "CLIENT_ERROR invalid or duplicate flag\r\n"),
        ("ma\r\n", "ERROR\r\n"),
    ])
    key = prefix + "mc"
    with server.wire() as w:
        check(w, f"ma {key} N0 J1\r\n".encode(), b"HD\r\n")
        cas = _cas(w, key)
        check(w, f"ma {key} C{cas} v\r\n".encode(), b"VA 1\r\n2\r\n")
        check(w, f"ma {key} C{cas} v\r\n".encode(), b"EX\r\n")
        check(w, f"ma {key} T100 N50 t v\r\n".encode(), b"VA 1 t100\r\n3\r\n")
        check(w, f"ma {key} T-1 q\r\nmg {key} v\r\n".encode(), b"EN\r\n")


def test_base64_keys(server: Server, prefix: str) -> None:
    raw = (prefix + "\x00bin\xffkey").encode("latin-1")
    b64 = base64.b64encode(raw).decode()
    with server.wire() as w:
        check(w, f"ms {b64} 2 b\r\nhi\r\n".encode(), b"HD\r\n")
        check(w, f"mg {b64} b v k\r\n".encode(), f"VA 2 k{b64} b\r\nhi\r\n".encode())
        check(w, f"mg {b64} b k q\r\n".encode(), f"HD k{b64} b\r\n".encode())
        check(w, f"ma {b64} b q\r\nmn\r\n".encode(), b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\nMN\r\n")
        check(w, f"me {b64} b\r\n".encode(), f"ME {b64} exp=-1 la=<N> cas=<N> fetch=yes cls=<N> size=<N>\r\n".encode())
        check(w, f"md {b64} b q\r\nmn\r\n".encode(), b"MN\r\n")
        check(w, f"mg {b64} b v\r\n".encode(), b"EN\r\n")
        # the decoded key is the real key: a plain-text key is a different item
        plain = prefix + "foobar"
        pb64 = base64.b64encode(plain.encode()).decode()
        check(w, f"ms {pb64} 2 b\r\nok\r\n".encode(), b"HD\r\n")
        check(w, f"mg {plain} v\r\n".encode(), b"VA 2\r\nok\r\n")
        check(w, f"ms {b64} 1 b\r\n5\r\n".encode(), b"HD\r\n")
        check(w, f"ma {b64} b v k\r\n".encode(), f"VA 1 k{b64} b\r\n6\r\n".encode())
        check(w, b"mg !!!! b v\r\n", b"CLIENT_ERROR error decoding key\r\n")


def test_me_and_mn(server: Server, prefix: str) -> None:
    run(server, prefix, [
        ("ms @e 3 T0\r\nabc\r\n", "HD\r\n"),
        ("me @e\r\n", "ME @e exp=-1 la=<N> cas=<N> fetch=no cls=<N> size=<N>\r\n"),
        ("mg @e v\r\n", "VA 3\r\nabc\r\n"),
        ("me @e\r\n", "ME @e exp=-1 la=<N> cas=<N> fetch=yes cls=<N> size=<N>\r\n"),
        ("ms @e2 1 T500\r\nx\r\n", "HD\r\n"),
        ("me @e2\r\n", "ME @e2 exp=<N> la=<N> cas=<N> fetch=no cls=<N> size=<N>\r\n"),
        ("me @nokey\r\n", "EN\r\n"),
        ("me\r\n", "CLIENT_ERROR bad command line format\r\n"),
        ("mn\r\n", "MN\r\n"),
        ("mn extra\r\n", "MN\r\n"),
    ])


def test_meta_and_text_share_items(server: Server, prefix: str) -> None:
    run(server, prefix, [
        ("set @x 9 0 3\r\nabc\r\n", "STORED\r\n"),
        ("mg @x v f\r\n", "VA 3 f9\r\nabc\r\n"),
        ("ms @y 2 F4\r\nhi\r\n", "HD\r\n"),
        ("get @y\r\n", "VALUE @y 4 2\r\nhi\r\nEND\r\n"),
        ("ma @z N0 J41\r\n", "HD\r\n"),
        ("incr @z 1\r\n", "42\r\n"),
        ("md @y\r\n", "HD\r\n"),
        ("get @y\r\n", "END\r\n"),
    ])


def test_explicit_cas_extension(start_server, target) -> None:  # type: ignore[no-untyped-def]
    """E<cas> on ms/mg, a newer-memcached flag stackmapd takes (1.6.18 answers
    "CLIENT_ERROR invalid flag" to every E; tests/test_differential checks the
    refused forms against it).  E takes 1..2^63-1 and raises the CAS counter,
    so uniques handed out later never equal an explicit one; anything else,
    E0 and values that would leave the counter no room included, is refused
    with 1.6.18's answer and the value is swallowed."""
    if target.backend is None:
        pytest.skip("memcached 1.6.18 has no E flag")
    top = (1 << 63) - 1
    run(start_server(target, []), "e_", [
        ("ms @a 1 E1000 c\r\nx\r\n", "HD c1000\r\n"),
        ("ms @b 1 c\r\nx\r\n", "HD c1001\r\n"),
        ("mg @v N30 E5000 c v\r\n", "VA 0 c5000 W\r\n\r\n"),
        ("mg @v c v\r\n", "VA 0 c5000 Z\r\n\r\n"),
        ("ms @c 1 c\r\nx\r\n", "HD c5001\r\n"),
        (f"ms @d 1 E{top} c\r\nx\r\n", f"HD c{top}\r\n"),
        ("ms @e 1 c\r\nx\r\n", f"HD c{top + 1}\r\n"),
        (f"ms @f 1 E{top + 1} c\r\nx\r\nmg @f\r\n", "CLIENT_ERROR invalid flag\r\nEN\r\n"),
        ("ms @f 1 E18446744073709551615\r\nx\r\nms @f 1 E0\r\nx\r\n",
         "CLIENT_ERROR invalid flag\r\nCLIENT_ERROR invalid flag\r\n"),
        ("mg @a E99 c v\r\n", "VA 1 c1000\r\nx\r\n"),
        ("ms @g 1 c\r\nx\r\n", f"HD c{top + 2}\r\n"),
    ])
