"""``stackmapctl``: the operator's command line for a running stackmapd.

It talks to the admin API on the control plane's HTTP server (stackmapd/http.py;
default http://127.0.0.1:9150, ``--url`` or ``STACKMAP_URL`` to change), with
the bearer token from ``--token``, ``--token-file``, ``STACKMAP_ADMIN_TOKEN``
or ``STACKMAP_ADMIN_TOKEN_FILE`` when one is needed.  Every command prints a
human form by default and the API's JSON with ``--json``.

Exit status: 0 success, 1 the server refused or failed (its message is
printed), 2 the server cannot be reached, 64 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import quote, urlencode

EX_USAGE = 64
DEFAULT_URL = "http://127.0.0.1:9150"


class CtlError(Exception):
    """The server answered with an error (status 1) or could not be reached (status 2)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


class Client:
    """A tiny JSON-over-HTTP client for the admin API (loopback by default)."""

    def __init__(self, url: str, token: str | None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _open(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = exc.reason
            raise CtlError(f"{message} (HTTP {exc.code})") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CtlError(f"cannot reach {self.url}: {reason}", 2) from None

    def get(self, path: str) -> Any:
        with self._open("GET", path) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        with self._open("POST", path, body) as resp:
            return json.loads(resp.read())

    def lines(self, path: str) -> Iterator[dict[str, Any]]:
        with self._open("GET", path) as resp:
            for line in resp:
                if line.strip():
                    yield json.loads(line)


def _when(ts: int) -> str:
    if ts == 0:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def cmd_stats(c: Client, a: argparse.Namespace) -> None:
    result = c.get("/admin/stats?" + urlencode({"group": a.group}))
    if a.json:
        return _print_json(result)
    for group, stats in result["stats"].items():
        if len(result["stats"]) > 1:
            print(f"[{group}]")
        width = max((len(k) for k in stats), default=0)
        for name, value in stats.items():
            print(f"{name:<{width}}  {value}")


def cmd_keys(c: Client, a: argparse.Namespace) -> None:
    # A listing is background work: on the server's own machine it must not
    # take CPU from the workers (the server runs its side at low priority too).
    try:
        os.nice(19)
    except OSError:
        pass
    query: dict[str, Any] = {"prefix": a.prefix}
    if a.limit is not None:
        query["limit"] = a.limit
    if a.cursor:
        query["cursor"] = a.cursor
    out = sys.stdout
    for obj in c.lines("/admin/keys?" + urlencode(query)):
        if "done" in obj:
            if a.json:
                out.write(json.dumps(obj) + "\n")
            else:
                more = "" if obj["done"] else f"; more: --cursor {obj['cursor']}"
                print(f"# {obj['count']} keys{more}", file=sys.stderr)
            break
        if a.json:
            out.write(json.dumps(obj) + "\n")
        else:
            out.write(f"{obj['key']}\tsize={obj['size']}\texp={_when(obj['exptime'])}"
                      f"\tla={_when(obj['last_access'])}\tcas={obj['cas']}\tflags={obj['flags']}"
                      f"\tfetch={'yes' if obj['fetched'] else 'no'}\tcls={obj['slab_class']}\n")


def cmd_get_meta(c: Client, a: argparse.Namespace) -> None:
    query = "key=" + quote(a.key, safe="") + ("&base64=1" if a.base64 else "")
    result = c.get("/admin/item?" + query)
    if a.json:
        return _print_json(result)
    for name in ("key", "size", "flags", "cas", "fetched", "slab_class"):
        print(f"{name:<12} {result[name]}")
    print(f"{'exptime':<12} {_when(result['exptime'])}")
    print(f"{'last_access':<12} {_when(result['last_access'])}")


def cmd_delete(c: Client, a: argparse.Namespace) -> None:
    if (a.key is None) == (a.prefix is None):
        raise CtlError("give either KEY or --prefix P", EX_USAGE)
    body: dict[str, Any] = {"prefix": a.prefix} if a.prefix is not None else {"key": a.key, "base64": a.base64}
    result = c.post("/admin/delete", body)
    if a.json:
        return _print_json(result)
    print(f"deleted {result['deleted']}")


def cmd_flush(c: Client, a: argparse.Namespace) -> None:
    result = c.post("/admin/flush", {"delay": a.delay})
    if a.json:
        return _print_json(result)
    print("flushed" + (f" (effective in {a.delay} s)" if a.delay else ""))


def cmd_memory(c: Client, a: argparse.Namespace) -> None:
    result = c.post("/admin/memory-limit", {"mb": a.mb})
    if a.json:
        return _print_json(result)
    print(f"memory limit {a.mb} MB; evicted {result['evicted']} items; {result['bytes']} bytes stored")


def cmd_verbosity(c: Client, a: argparse.Namespace) -> None:
    result = c.post("/admin/verbosity", {"level": a.level})
    if a.json:
        return _print_json(result)
    print(f"verbosity {result['verbosity']}")


def cmd_snapshot(c: Client, a: argparse.Namespace) -> None:
    body = {"name": a.name} if a.name else {}
    result = c.post("/admin/snapshot", body)
    if a.json:
        return _print_json(result)
    print(f"saved {result['items']} items ({result['bytes']} bytes) to {result['path']} in {result['seconds']} s")


def cmd_reload(c: Client, a: argparse.Namespace) -> None:
    result = c.post("/admin/reload", {})
    if a.json:
        return _print_json(result)
    applied = result.get("applied", {})
    print("applied: " + (", ".join(f"{k}={v}" for k, v in applied.items()) or "nothing changed"))
    if result.get("restart_required"):
        print("needs a restart: " + ", ".join(result["restart_required"]))
    for key, why in result.get("failed", {}).items():
        print(f"failed: {key}: {why}")


def cmd_health(c: Client, a: argparse.Namespace) -> None:
    started = time.monotonic()
    try:
        ready = c.get("/readyz")
    except CtlError as exc:
        raise CtlError(f"not ready: {exc}", exc.status) from None
    print(f"ready ({(time.monotonic() - started) * 1000:.1f} ms)" if ready.get("ready") else "not ready")


def build_parser() -> Parser:
    p = Parser(prog="stackmapctl", description="Administer a running stackmapd through its admin API.")
    p.add_argument("--url", default=os.environ.get("STACKMAP_URL", DEFAULT_URL),
                   help=f"the admin API (default $STACKMAP_URL or {DEFAULT_URL})")
    p.add_argument("--token", default=os.environ.get("STACKMAP_ADMIN_TOKEN"),
                   help="bearer token (default $STACKMAP_ADMIN_TOKEN)")
    p.add_argument("--token-file", default=os.environ.get("STACKMAP_ADMIN_TOKEN_FILE"),
                   help="read the bearer token from this file")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = sub.add_parser("stats", help="stats groups (general, backend, settings, items, slabs, conns, all)")
    s.add_argument("group", nargs="?", default="all")
    s.set_defaults(fn=cmd_stats)

    s = sub.add_parser("keys", help="list keys (streams; like lru_crawler metadump)")
    s.add_argument("--prefix", default="", help="only keys starting with this")
    s.add_argument("--limit", type=int, help="at most this many (a page); prints the cursor to resume")
    s.add_argument("--cursor", default="", help="resume a listing where a page stopped")
    s.set_defaults(fn=cmd_keys)

    s = sub.add_parser("get-meta", help="one key's metadata")
    s.add_argument("key")
    s.add_argument("--base64", action="store_true", help="KEY is base64 (a binary meta key)")
    s.set_defaults(fn=cmd_get_meta)

    s = sub.add_parser("delete", help="delete a key, or every key with --prefix")
    s.add_argument("key", nargs="?")
    s.add_argument("--prefix")
    s.add_argument("--base64", action="store_true", help="KEY is base64 (a binary meta key)")
    s.set_defaults(fn=cmd_delete)

    s = sub.add_parser("flush", help="flush_all")
    s.add_argument("--delay", type=int, default=0, help="seconds until the flush takes effect")
    s.set_defaults(fn=cmd_flush)

    s = sub.add_parser("set-memory-limit", help="change -m live (shrinking evicts down to it and frees pages)")
    s.add_argument("mb", type=int)
    s.set_defaults(fn=cmd_memory)

    s = sub.add_parser("set-verbosity", help="change -v live (0..3)")
    s.add_argument("level", type=int)
    s.set_defaults(fn=cmd_verbosity)

    s = sub.add_parser("snapshot", help="snapshot save [NAME]: a file in the server's --snapshot-dir "
                                        "(default: the server's --snapshot)")
    s.add_argument("action", choices=["save"])
    s.add_argument("name", nargs="?")
    s.set_defaults(fn=cmd_snapshot)

    s = sub.add_parser("reload", help="re-read the config; apply what can change live")
    s.set_defaults(fn=cmd_reload)

    s = sub.add_parser("health", help="is the server ready")
    s.set_defaults(fn=cmd_health)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    token = args.token
    if not token and args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as fh:
                token = fh.readline().strip()
        except OSError as exc:
            print(f"stackmapctl: error: --token-file {args.token_file}: {exc.strerror}", file=sys.stderr)
            return EX_USAGE
    try:
        args.fn(Client(args.url, token), args)
    except CtlError as exc:
        print(f"stackmapctl: error: {exc}", file=sys.stderr)
        return exc.status
    except BrokenPipeError:  # `stackmapctl keys | head`
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
