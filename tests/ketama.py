"""Ketama key placement as twemproxy computes it, for client-side hashing.

A pool is only a pool if every client agrees on which node owns a key.
twemproxy (``distribution: ketama``) builds the continuum the way
libketama did: for each live server, 40 MD5 digests of ``"NAME-i"``
(NAME is the server's name in nutcracker.yml, or ``host:port`` without
one), each digest giving 4 little-endian 32-bit points, all points sorted;
a key belongs to the first point at or after its hash, wrapping around.
The key hash is the pool's ``hash:``; ``fnv1a_64`` is FNV-1a on 64 bits of
which the low 32 are kept (twemproxy computes in 32 bits, libmemcached in
64 and truncates: the low 32 bits are the same).

``KetamaHash`` plugs into pymemcache's ``HashClient(hasher=...)`` so that
a Python client places keys exactly where a twemproxy pool would; the
tests check that against a real nutcracker.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Mapping

POINTS_PER_SERVER = 160  # libketama: 40 digests x 4 points per server
POINTS_PER_HASH = 4


def fnv1a_64(key: bytes) -> int:
    """twemproxy's ``fnv1a_64``: the low 32 bits of 64-bit FNV-1a."""
    h = 0xCBF29CE484222325 & 0xFFFFFFFF
    for b in key:
        # twemproxy reads the key as (signed) char: bytes >= 0x80 sign-extend
        h ^= b if b < 0x80 else (b | 0xFFFFFF00)
        h = (h * 0x100000001B3) & 0xFFFFFFFF
    return h


def md5_hash(key: bytes) -> int:
    """twemproxy's ``md5`` (and libmemcached's default ketama key hash)."""
    d = hashlib.md5(key).digest()
    return int.from_bytes(d[0:4], "little")


HASHES: dict[str, Callable[[bytes], int]] = {"fnv1a_64": fnv1a_64, "md5": md5_hash}


def continuum(names: list[str]) -> list[tuple[int, str]]:
    """The sorted (point, name) ring of equally weighted servers."""
    points: list[tuple[int, str]] = []
    per_server = POINTS_PER_SERVER // POINTS_PER_HASH
    for name in names:
        for i in range(per_server):
            digest = hashlib.md5(f"{name}-{i}".encode()).digest()
            for x in range(POINTS_PER_HASH):
                value = int.from_bytes(digest[4 * x : 4 * x + 4], "little")
                points.append((value, name))
    points.sort(key=lambda p: p[0])
    return points


class KetamaHash:
    """A pymemcache ``HashClient`` hasher that places keys like twemproxy.

    ``names`` maps the node key pymemcache uses (``"host:port"``) to the
    server's name in nutcracker.yml; nodes not in it are named as they are.
    """

    def __init__(self, names: Mapping[str, str] | None = None, hash_name: str = "fnv1a_64") -> None:
        self.names = dict(names or {})
        self.key_hash = HASHES[hash_name]
        self.nodes: list[str] = []
        self._ring: list[tuple[int, str]] = []
        self._values: list[int] = []
        self._by_name: dict[str, str] = {}

    def _rebuild(self) -> None:
        self._by_name = {self.names.get(n, n): n for n in self.nodes}
        self._ring = continuum(list(self._by_name))
        self._values = [v for v, _ in self._ring]

    def add_node(self, node: str) -> None:
        if node not in self.nodes:
            self.nodes.append(node)
            self._rebuild()

    def remove_node(self, node: str) -> None:
        if node not in self.nodes:
            raise ValueError(f"No such node {node} to remove")
        self.nodes.remove(node)
        self._rebuild()

    def get_node(self, key: str | bytes) -> str | None:
        if not self._ring:
            return None
        raw = key.encode() if isinstance(key, str) else key
        i = bisect.bisect_left(self._values, self.key_hash(raw))
        if i == len(self._ring):
            i = 0
        return self._by_name[self._ring[i][1]]
