"""Exact-bytes HTTP for the control-plane tests.

urllib and http.client add and normalise headers; the security and
robustness tests need to send precisely what a browser, an attacker or a
broken client sends, so they write the request bytes themselves and parse
the answer with http.client (status, headers, a Content-Length or chunked
body).  A connection the server closes without answering is reported as
status 0.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any

HOST = "127.0.0.1"


@dataclass
class Answer:
    """One HTTP answer (status 0: the server closed the connection without one)."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def read_answer(sock: socket.socket, method: str = "GET") -> Answer:
    resp = http.client.HTTPResponse(sock, method=method)
    try:
        resp.begin()
    except (http.client.RemoteDisconnected, ConnectionResetError):
        return Answer(0, {}, b"")
    body = resp.read()
    return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)


def send(port: int, data: bytes, timeout: float = 60.0, method: str | None = None) -> Answer:
    """Send ``data`` on a new connection and read one answer."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_answer(sock, method or data.split(b" ", 1)[0].decode("latin-1"))


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes = b"", host: str | None = None, timeout: float = 60.0) -> Answer:
    """One request with exactly these headers (Host first unless ``host`` is "")."""
    lines = [f"{method} {path} HTTP/1.1"]
    host = f"{HOST}:{port}" if host is None else host
    if host:
        lines.append(f"Host: {host}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    return send(port, data, timeout, method)
