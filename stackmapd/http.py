"""The control plane's HTTP server: metrics, health and the admin API.

One small threaded HTTP server (standard library) on ``--metrics-listen``
(default 127.0.0.1:9150), never on the data path:

    GET  /metrics                 Prometheus text format (stackmapd/metrics.py)
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
    POST /admin/snapshot          {"name": N}: N inside --snapshot-dir ({}: --snapshot)
    POST /admin/reload            re-read the config; apply what can change live

Answers are JSON; errors are {"error": "..."} with a 4xx/5xx status, for
every request the server refuses, malformed ones included.  The admin paths
check access first (stackmapd/admin.py: Access: token, Host, Origin), and every
POST must be ``Content-Type: application/json`` with a JSON object of plain
values (no nesting) of at most MAX_BODY bytes.

Bounds, so that no client can exhaust the control plane: at most
MAX_HANDLERS connections are served at once (a further one gets an
immediate 503 from the accepting thread, which never waits); a request (line, headers, body) must
arrive whole within REQUEST_TIMEOUT seconds, which is also how long an idle
keep-alive connection is kept (slow-loris safe); each write of an answer may
take SEND_TIMEOUT seconds; the listen backlog is memcached's 1024.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from stackmapd.admin import Access, Admin, AdminError, host_forms
from stackmapd.log import log
from stackmapd.metrics import render

MAX_BODY = 1 << 16  # our bodies are a few small fields
MAX_HANDLERS = 32  # connections served at once (a thread each)
REQUEST_TIMEOUT = 10.0  # seconds for a whole request to arrive (and for an idle keep-alive)
SEND_TIMEOUT = 30.0  # seconds for one write of an answer to a slow reader
LISTEN_BACKLOG = 1024  # memcached's -b default
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")


class RequestTimeout(Exception):
    """The request did not arrive whole before its deadline."""


class _DeadlineReader(io.RawIOBase):
    """The connection's socket, read against the current request's deadline."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = math.inf  # time.monotonic() by which the request must be in
        self.received = 0  # bytes read from the socket so far

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RequestTimeout
        self.sock.settimeout(left)
        try:
            n = self.sock.recv_into(buf)
        except TimeoutError:
            raise RequestTimeout from None
        self.received += n
        return n


def _refuse_busy(sock: socket.socket) -> None:
    """A 503 straight from the accepting thread, without a handler thread."""
    body = b'{"error": "the control plane is serving too many connections; retry"}\n'
    head = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n" % len(body))
    try:
        sock.settimeout(0)
        try:
            while sock.recv(65536):  # what has arrived; an unread buffer would turn close into RST
                pass
        except BlockingIOError:
            pass
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class ControlHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer carrying what the handlers need."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], admin: Admin, registry: CollectorRegistry,
                 access: Access, ready: Callable[[], dict[str, Any]]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.admin = admin
        self.registry = registry
        self.access = access
        access.hosts = host_forms(address[0], self.server_address[1])  # the bound port (0 -> real)
        self.ready = ready
        self.slots = threading.BoundedSemaphore(MAX_HANDLERS)
        self.thread: threading.Thread | None = None

    def process_request(self, request: Any, client_address: Any) -> None:
        """A handler thread only when one of MAX_HANDLERS slots is free; else 503."""
        if not self.slots.acquire(blocking=False):
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line in the log, not socketserver's traceback on stderr."""
        exc = sys.exc_info()[1]
        log.warning("http: connection from %s ended by an error: %s: %s", client_address[0],
                    type(exc).__name__, exc)

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

    # ---- connection and request framing ----

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain socket file: replaced by one that keeps the deadline
        self.reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)  # type: ignore[assignment]

    def handle_one_request(self) -> None:
        """One request, which must arrive whole within REQUEST_TIMEOUT; 408 if it does not."""
        self.reader.deadline = time.monotonic() + REQUEST_TIMEOUT
        started = self.reader.received
        self.raw_requestline = b""
        self.requestline = ""
        self.request_version = "HTTP/1.1"
        self.command = ""
        self._responded = False  # a status line went out for this request
        self._body_read = False  # the request's body (if any) has been consumed
        try:
            super().handle_one_request()
        except RequestTimeout:
            self.close_connection = True
            if (self.raw_requestline or self.reader.received > started) and not self._responded:
                self._error(408, f"the request did not arrive whole within {REQUEST_TIMEOUT:g} s")

    def send_response(self, code: int, message: str | None = None) -> None:
        self._responded = True
        self.connection.settimeout(SEND_TIMEOUT)
        super().send_response(code, message)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, headers too long, ...) as JSON."""
        if code == 501:  # "Unsupported method": a 4xx, the method is what is wrong
            code = 405
        if self.request_version == "HTTP/0.9":  # an unparsable line: answer with a status line anyway
            self.request_version = "HTTP/1.1"
        self.close_connection = True
        self._error(code, message or self.responses.get(code, ("error",))[0])

    def _error(self, status: int, message: str) -> None:
        try:
            self._json(status, {"error": message})
        except OSError:
            self.close_connection = True

    # ---- responses ----

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
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
        if self.command == "HEAD":
            return
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
        """The POST body: application/json, a JSON object of plain values, at most MAX_BODY bytes."""
        ctype = self.headers.get_content_type()
        if ctype != "application/json":
            raise AdminError(415, f"the admin API takes Content-Type: application/json, not {ctype}")
        if self.headers.get("Transfer-Encoding") is not None:
            raise AdminError(411, "send the body with a Content-Length (no Transfer-Encoding)")
        given = self.headers.get_all("Content-Length") or []
        if len(given) > 1:
            raise AdminError(400, "more than one Content-Length header")
        text = given[0].strip() if given else "0"
        if not _CONTENT_LENGTH.fullmatch(text):
            raise AdminError(400, f"Content-Length must be a non-negative integer, got {text[:40]!r}")
        length = int(text)
        if length > MAX_BODY:
            raise AdminError(413, f"request body too large ({length} bytes; at most {MAX_BODY})")
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            self.close_connection = True
            raise AdminError(400, f"the body ended after {len(raw)} of {length} bytes")
        self._body_read = True
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise AdminError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise AdminError(400, "the request body must be a JSON object")
        for key, value in body.items():
            if isinstance(value, dict | list):
                raise AdminError(400, f"{key} must be a string, number or boolean")
        return body

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _not_allowed(self) -> None:
        self.close_connection = True  # a body we do not read may follow
        self._error(405, f"method {self.command} is not allowed (GET, HEAD or POST)")

    # No CORS preflight is ever granted: OPTIONS is refused like any other method.
    do_OPTIONS = do_PUT = do_DELETE = do_PATCH = do_TRACE = do_CONNECT = _not_allowed

    def _route(self, method: str) -> None:
        try:
            try:
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            except ValueError:
                raise AdminError(400, "malformed request target") from None
            if url.path == "/metrics" and method == "GET":
                self._send(200, render(self.server.registry), CONTENT_TYPE_LATEST)
            elif url.path == "/healthz" and method == "GET":
                self._json(200, {"status": "ok"})
            elif url.path == "/readyz" and method == "GET":
                body = self.server.ready()  # stackmapd/health.py: Health.readiness
                self._json(200 if body["ready"] else 503, body)
            elif url.path.startswith("/admin/"):
                self.server.access.check(self.headers.get("Authorization"), self.headers.get_all("Host"),
                                         self.headers.get_all("Origin"),
                                         self.headers.get_all("Sec-Fetch-Site"))
                self._admin(method, url.path[len("/admin/"):], query)
            else:
                raise AdminError(404, f"no such endpoint: {method} {url.path}")
        except AdminError as exc:
            if method == "POST" and not self._body_read:
                self.close_connection = True  # its body was not read: the stream is out of step
            if self._responded:
                self.close_connection = True
            else:
                self._error(exc.status, str(exc))
        except RequestTimeout:
            raise
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # a bug: one line in the log, a JSON 500, never a dropped request
            log.error("http: %s %s failed: %s: %s", method, self.path[:200], type(exc).__name__, exc)
            self.close_connection = True
            if not self._responded:
                self._error(500, f"internal error: {type(exc).__name__}")

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
                if "path" in body:
                    raise AdminError(400, "give \"name\", a file name inside the snapshot directory "
                                          "(--snapshot-dir), not a path")
                name_given = body.get("name")
                return self._json(200, admin.snapshot(None if name_given is None else _str(body, "name")))
            if name == "reload":
                result = admin.reload()
                return self._json(400 if "error" in result else 200, result)
        raise AdminError(404, f"no such endpoint: {method} /admin/{name}")


_INT = re.compile(r"-?[0-9]{1,30}")


def _int(raw: object, what: str) -> int:
    """An integer from JSON or a query string; the callee checks its range."""
    if isinstance(raw, bool):
        raise AdminError(400, f"{what} must be an integer")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and _INT.fullmatch(raw.strip()):
        return int(raw.strip())
    raise AdminError(400, f"{what} must be an integer, got {str(raw)[:40]!r}")


def _str(body: dict[str, Any], what: str) -> str:
    value = body.get(what)
    if not isinstance(value, str):
        raise AdminError(400, f"{what} must be a string")
    return value


def _flag(raw: str | None) -> bool:
    return (raw or "").lower() in ("1", "true", "yes")
