"""Loopback ports for test servers, safe when pytest runs in several processes.

`make test` runs the suite on several pytest-xdist workers at once, each
starting servers.  The old way (bind port 0, read the port back, close,
start the server on it) lets two workers be handed the same port: the
kernel may give a port that one worker just closed to the next bind(0) of
another before the first worker's server has bound it.  Then one server
fails to start, or worse, the other worker's probe is answered by the
first worker's server and its tests talk to a stranger.  Connections the
tests make also take ephemeral ports, and one can sit on a port a server
is about to bind.

So every worker gets its own slice of ports 12000-19999, below the
kernel's ephemeral range (/proc/sys/net/ipv4/ip_local_port_range, where
bind(0) and connect() take theirs) and below the loadtest package's random
picks (20000-31999, loadtest/targets.py), and walks it from a random start: a
port is handed out only when a bind to it succeeds right now (nothing else
on the machine holds it), and never twice by one process until its whole
slice has been used.  Worker N of M (PYTEST_XDIST_WORKER=gwN,
PYTEST_XDIST_WORKER_COUNT=M) owns slice N of M; a run without xdist is
worker 0 of 1.  If that range is too small (a machine whose ephemeral
range starts low), the kernel's bind(0) is used as before.
"""

from __future__ import annotations

import os
import random
import socket

HOST = "127.0.0.1"
LOWEST = 12000  # below: well-known services (9150, 11211, ...) stay clear
HIGHEST = 20000  # loadtest/targets.py picks its servers' ports from 20000 up
MIN_SLICE = 200  # ports per worker below which the slices are not worth it


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _slice() -> range | None:
    """This process's ports, or None when bind(0) must do."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    try:
        index = int(worker.removeprefix("gw"))
        count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    except ValueError:
        return None
    high = min(HIGHEST, _ephemeral_low())
    size = (high - LOWEST) // max(count, 1)
    if size < MIN_SLICE or not 0 <= index < count:
        return None
    return range(LOWEST + index * size, LOWEST + (index + 1) * size)


class _Allocator:
    """Walks this process's slice from a random start, one port after another."""

    def __init__(self) -> None:
        self.ports = _slice()
        self.next = random.randrange(len(self.ports)) if self.ports else 0

    def take(self) -> int:
        if self.ports is None:
            return _kernel_port()
        for _ in range(len(self.ports)):
            port = self.ports[self.next]
            self.next = (self.next + 1) % len(self.ports)
            if _bindable(port):
                return port
        raise RuntimeError(f"no free loopback port in {self.ports.start}-{self.ports.stop - 1}")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _kernel_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


_ALLOCATOR = _Allocator()


def free_port() -> int:
    """A loopback TCP port nobody holds right now and no other test worker will be given."""
    return _ALLOCATOR.take()
