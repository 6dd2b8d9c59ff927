"""The control plane's HTTP server: metrics, health and the admin API.

One small threaded HTTP server (standard library) on ``--metrics-listen``
(default 127.0.0.1:9150), never on the data path:

    GET  /metrics                 Prometheus text format (server/metrics.py)
    GET  /healthz                 200 while the process is up
    GET  /readyz                  200 while every worker serves, 503 otherwise;
                                  {"ready", "workers": [{"worker","state","error"?}]}
    GET  /admin/stats?group=G     a stats group, or group=all
    GET  /admin/keys?prefix=P&limit=N&cursor=C
                                  newline-delimited JSON, streamed: one item per
                                  line, then {"done","cursor","count"}
    GET  /admin/item?key=K[&base64=1]         one key's metadata (404 if absent)
    POST /admin/delete            {"key": K} or {"prefix": P}
    POST /admin/flush             {"delay": N}
    POST /admin/memory-limit      {"mb": N}
    POST /admin/verbosity         {"level": N}
    POST /admin/snapshot          {"path": P} (default: --snapshot)
    POST /admin/reload            re-read the config; apply what can change live

Answers are JSON; errors are {"error": "..."} with a 4xx/5xx status.  The
admin paths check access first (server/admin.py: Access).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from server.admin import Access, Admin, AdminError
from server.metrics import render

log = logging.getLogger("stackmapd")

MAX_BODY = 1 << 16


class ControlHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer carrying what the handlers need."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], admin: Admin, registry: CollectorRegistry,
                 access: Access, ready: Callable[[], dict[str, Any]]) -> None:
        if ":" in address[0]:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.admin = admin
        self.registry = registry
        self.access = access
        self.ready = ready
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.serve_forever, name="stackmapd-http", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    server: ControlHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "stackmapd"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (BaseHTTPRequestHandler's name)
        log.debug("http: %s - %s", self.address_string(), format % args)

    # ---- responses ----

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, (json.dumps(obj) + "\n").encode(), "application/json")

    def _stream_ndjson(self, lines: Any) -> None:
        """Chunked transfer: each JSON line goes out as it is produced."""
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        buf: list[bytes] = []
        size = 0
        for obj in lines:
            line = (json.dumps(obj) + "\n").encode()
            buf.append(line)
            size += len(line)
            if size >= 32768:
                self._chunk(b"".join(buf))
                buf, size = [], 0
        if buf:
            self._chunk(b"".join(buf))
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    # ---- requests ----

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise AdminError(413, "request body too large")
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise AdminError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise AdminError(400, "the request body must be a JSON object")
        return body

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            if url.path == "/metrics" and method == "GET":
                self._send(200, render(self.server.registry), CONTENT_TYPE_LATEST)
            elif url.path == "/healthz" and method == "GET":
                self._json(200, {"status": "ok"})
            elif url.path == "/readyz" and method == "GET":
                body = self.server.ready()  # server/health.py: Health.readiness
                self._json(200 if body["ready"] else 503, body)
            elif url.path.startswith("/admin/"):
                self.server.access.check(self.headers.get("Authorization"))
                self._admin(method, url.path[len("/admin/"):], query)
            else:
                raise AdminError(404, f"no such endpoint: {method} {url.path}")
        except AdminError as exc:
            self._json(exc.status, {"error": str(exc)})
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _admin(self, method: str, name: str, query: dict[str, str]) -> None:
        admin = self.server.admin
        # Admin work (JSON for a million keys, a snapshot) must not take CPU
        # from the workers: this request's thread runs at the lowest priority.
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass
        if method == "GET":
            if name == "stats":
                return self._json(200, admin.stats(query.get("group", "")))
            if name == "keys":
                limit = _int(query.get("limit"), "limit") if query.get("limit") else None
                cursor = _int(query.get("cursor") or "0", "cursor")
                return self._stream_ndjson(admin.keys(query.get("prefix", ""), limit, cursor))
            if name == "item":
                if "key" not in query:
                    raise AdminError(400, "key is required")
                return self._json(200, admin.get_meta(query["key"], _flag(query.get("base64"))))
        elif method == "POST":
            body = self._body()
            if name == "delete":
                if "prefix" in body:
                    return self._json(200, admin.delete_prefix(_str(body, "prefix")))
                if "key" in body:
                    return self._json(200, admin.delete(_str(body, "key"), bool(body.get("base64"))))
                raise AdminError(400, "give a key or a prefix")
            if name == "flush":
                return self._json(200, admin.flush(_int(body.get("delay", 0), "delay")))
            if name == "memory-limit":
                return self._json(200, admin.set_memory_limit(_int(body.get("mb"), "mb")))
            if name == "verbosity":
                return self._json(200, admin.set_verbosity(_int(body.get("level"), "level")))
            if name == "snapshot":
                path = body.get("path")
                return self._json(200, admin.snapshot(None if path is None else _str(body, "path")))
            if name == "reload":
                result = admin.reload()
                return self._json(400 if "error" in result else 200, result)
        raise AdminError(404, f"no such endpoint: {method} /admin/{name}")


def _int(raw: object, what: str) -> int:
    if isinstance(raw, bool):
        raise AdminError(400, f"{what} must be an integer")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        return int(raw)
    raise AdminError(400, f"{what} must be an integer, got {raw!r}")


def _str(body: dict[str, Any], what: str) -> str:
    value = body.get(what)
    if not isinstance(value, str):
        raise AdminError(400, f"{what} must be a string")
    return value


def _flag(raw: str | None) -> bool:
    return (raw or "").lower() in ("1", "true", "yes")
