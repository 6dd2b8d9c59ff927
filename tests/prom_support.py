"""A real Prometheus for the tests that check what it sees: start one
scraping a stackmapd target (job "stackmapd", 1 s interval, optionally with
our shipped alert rules), query its HTTP API, poll for a result."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from control_support import HOST, free_port

PROMETHEUS = shutil.which("prometheus")
SKIP_REASON = "Debian's prometheus is not installed (make test installs it)"
DEADLINE = 60.0


def query(port: int, expr: str) -> list[dict[str, object]]:
    """The result vector of an instant query."""
    url = f"http://{HOST}:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        data = json.loads(resp.read())
    assert data["status"] == "success", data
    return data["data"]["result"]  # type: ignore[no-any-return]


def _poll(port: int, expr: str, timeout: float, done: Callable[[list[dict[str, object]]], bool]) -> bool:
    """Query ``expr`` until ``done(result)`` or the deadline; whether it was done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = query(port, expr)
        except OSError:
            result = []
        if done(result):
            return True
        time.sleep(0.3)
    return False


def wait_for(port: int, expr: str, what: str, timeout: float = DEADLINE) -> list[dict[str, object]]:
    """Poll until ``expr`` has a result; the result."""
    seen: list[list[dict[str, object]]] = []

    def has_result(result: list[dict[str, object]]) -> bool:
        seen.append(result)
        return bool(result)

    assert _poll(port, expr, timeout, has_result), f"{what}: {expr} stayed empty"
    return seen[-1]


def wait_value(port: int, expr: str, want: float, timeout: float = DEADLINE) -> None:
    """Poll until ``expr``'s first sample equals ``want``."""
    last: list[float] = []

    def equals(result: list[dict[str, object]]) -> bool:
        if result:
            last.append(float(result[0]["value"][1]))  # type: ignore[index]
        return bool(last) and last[-1] == want

    assert _poll(port, expr, timeout, equals), f"{expr}: last value {last[-1:]}, wanted {want}"


class Prometheus:
    """A Prometheus scraping one stackmapd target as job "stackmapd"."""

    def __init__(self, target_http_port: int, tmp: Path, rules: Path | None = None) -> None:
        assert PROMETHEUS is not None
        self.port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            + (f"rule_files:\n  - {rules}\n" if rules else "")
            + "scrape_configs:\n  - job_name: stackmapd\n    static_configs:\n"
            f"      - targets: ['{HOST}:{target_http_port}']\n")
        self.log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address={HOST}:{self.port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, start_new_session=True)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
