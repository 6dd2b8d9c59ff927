"""Whether the data plane serves: readiness and ``memcached_up``.

Two questions, answered from two sides:

- ``/readyz`` asks the engine: ready only when it is started and every
  worker thread is serving (``Engine.workers``).  A worker whose ring could
  not be set up never lets the engine start; one whose loop dies later (its
  listener destroyed, its ring broken) is ``failed`` with the reason, and
  the body lists it.
- ``memcached_up`` asks that and then the data plane itself: a real
  ``version`` round trip to the memcached port over loopback, with a short
  timeout, at scrape time, as memcached_exporter connects to memcached.  So
  a server whose workers are all alive but whose port does not answer also
  reads 0.  When the whole process is gone nothing in it can say 0: the
  alert rules in deploy/prometheus/stackmapd-alerts.yml cover that with
  Prometheus's own ``up``.  Under ``-Z`` the round trip goes over TLS (a
  plain ``notls:`` listener is preferred), without checking the server's
  certificate: the probe asks whether the port answers, not who it is.
"""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING, Any

from stackmapd.settings import split_listen_entry

if TYPE_CHECKING:
    from stackmap_core import Engine

# Longest a scrape waits for the data plane's answer: well under Prometheus's
# scrape timeouts (10 s by default, often 1 s in tight configs).
PROBE_TIMEOUT = 0.5

# A wildcard listen address is probed on loopback of its family.
_WILDCARD = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1", "*": "127.0.0.1"}


NOTLS = "notls:"


def probe_listener(listen: str, tls: bool) -> tuple[str, int | None, bool]:
    """The address to probe for a ``-l`` list, its own port if it names one
    (else the -p port is probed), and whether it speaks TLS: under ``-Z`` its
    first ``notls:`` entry if any, else its first entry; loopback for a
    wildcard."""
    entries = [e.strip() for e in listen.split(",") if e.strip()] or [""]
    plain = [e for e in entries if e.startswith(NOTLS)]
    host, port = split_listen_entry((plain or entries)[0].removeprefix(NOTLS))
    return _WILDCARD.get(host, host), port, tls and not plain


def probe_host(listen: str) -> str:
    """The address to probe for a ``-l`` list: its first entry, loopback for a wildcard."""
    return probe_listener(listen, False)[0]


def _probe_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _connect(host: str, port: int, unix_path: str, timeout: float) -> socket.socket:
    """A connection to the memcached port: the -s unix socket when there is one, else host:port."""
    if not unix_path:
        return socket.create_connection((host, port), timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(unix_path)
    except OSError:
        sock.close()
        raise
    return sock


def answers_version(host: str, port: int, timeout: float = PROBE_TIMEOUT, tls: bool = False,
                    unix_path: str = "") -> bool:
    """True when ``version`` on a new connection to host:port (or unix_path; TLS when
    ``tls``, as -Z makes TCP listeners speak it) gets ``VERSION ...`` in time."""
    try:
        with _connect(host, port, unix_path, timeout) as raw:
            sock = _probe_context().wrap_socket(raw) if tls and not unix_path else raw
            sock.settimeout(timeout)
            sock.sendall(b"version\r\n")
            buf = b""
            while not buf.endswith(b"\r\n"):
                chunk = sock.recv(256)
                if not chunk:
                    return False
                buf += chunk
            return buf.startswith(b"VERSION ")
    except OSError:
        return False


class Health:
    """Readiness and liveness of one running engine's data plane."""

    def __init__(self, engine: Engine, listen: str, port: int, tls: bool = False, unix_path: str = "") -> None:
        self.engine = engine
        self.host, self.entry_port, self.tls = probe_listener(listen, tls)
        self.port = port  # the -p port, probed unless the entry named its own
        self.unix_path = unix_path  # -s: the engine listens there and not on TCP

    def readiness(self) -> dict[str, Any]:
        """``/readyz``'s body: ``ready`` and each worker's state (and error)."""
        try:
            ready = self.engine.ready
            workers = self.engine.workers()
        except Exception:  # the engine is gone (stopping)
            return {"ready": False, "workers": []}
        listed: list[dict[str, Any]] = []
        for w in workers:
            entry: dict[str, Any] = {"worker": w.worker, "state": w.state}
            if w.error:
                entry["error"] = w.error
            listed.append(entry)
        return {"ready": ready, "workers": listed}

    def up(self) -> bool:
        """``memcached_up``: every worker serving and a ``version`` answered over loopback."""
        try:
            if not self.engine.ready:
                return False
        except Exception:
            return False
        port = self.port if self.entry_port is None else self.entry_port
        return answers_version(self.host, port, tls=self.tls, unix_path=self.unix_path)
