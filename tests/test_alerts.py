"""The shipped alert rules, evaluated by a real Prometheus.

deploy/prometheus/stackmapd-alerts.yml is loaded into Debian's
``prometheus`` (1 s scrape and evaluation intervals, a temporary data
directory, loopback only) scraping a real stackmapd.  MemcachedDown must
become active (pending, then firing after its ``for``) both when the
process dies, where memcached_up vanishes instead of reading 0 and only
Prometheus's ``up`` can tell, and when the process lives but a worker
fails, where memcached_up reads 0.  ``promtool`` checks the file's syntax.
Every wait polls the Prometheus HTTP API with a deadline.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from control_support import HOST, Proc, free_port, start

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
SS = shutil.which("ss")
RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "stackmapd-alerts.yml"
DEADLINE = 60.0

pytestmark = pytest.mark.skipif(PROMETHEUS is None,
                                reason="Debian's prometheus is not installed (make test installs it)")


def query(port: int, expr: str) -> list[dict[str, object]]:
    url = f"http://{HOST}:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        data = json.loads(resp.read())
    assert data["status"] == "success", data
    return data["data"]["result"]  # type: ignore[no-any-return]


def wait_for(port: int, expr: str, what: str) -> list[dict[str, object]]:
    """Poll until ``expr`` has a result; the result."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            result = query(port, expr)
        except OSError:
            result = []
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"{what}: {expr} stayed empty")


class Prometheus:
    """A Prometheus scraping one stackmapd target as job "stackmapd" with the shipped rules."""

    def __init__(self, target_http_port: int, tmp: Path) -> None:
        self.port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {RULES}\n"
            "scrape_configs:\n  - job_name: stackmapd\n    static_configs:\n"
            f"      - targets: ['{HOST}:{target_http_port}']\n")
        self.log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 (closed in stop)
        assert PROMETHEUS is not None
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


@pytest.fixture
def srv() -> Iterator[Proc]:
    p = start(["-t", "4"])
    yield p
    p.stop()
    p.cleanup()


@pytest.fixture
def prom(srv: Proc, tmp_path: Path) -> Iterator[Prometheus]:
    p = Prometheus(srv.http_port, tmp_path)
    yield p
    p.stop()


ALERT = 'ALERTS{alertname="MemcachedDown",job="stackmapd"}'


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian's prometheus) is not installed")
def test_promtool_accepts_the_rules() -> None:
    out = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 2 rules found" in out.stdout, out.stdout


def test_memcached_down_fires_when_the_process_dies(srv: Proc, prom: Prometheus) -> None:
    wait_for(prom.port, 'memcached_up{job="stackmapd"} == 1', "the server is up")
    assert query(prom.port, ALERT) == []
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(timeout=30)
    alerts = wait_for(prom.port, ALERT, "MemcachedDown after the process died")
    assert alerts[0]["metric"]["alertstate"] in ("pending", "firing"), alerts  # type: ignore[index]
    # What the rule is for: memcached_up did not turn 0, it vanished.
    assert query(prom.port, 'memcached_up{job="stackmapd"} == 0') == []
    assert query(prom.port, 'up{job="stackmapd"} == 0'), "Prometheus's up is what tells"


@pytest.mark.skipif(SS is None, reason="ss (iproute2) is needed to destroy a listener")
def test_memcached_down_fires_when_a_worker_fails(srv: Proc, prom: Prometheus) -> None:
    wait_for(prom.port, 'memcached_up{job="stackmapd"} == 1', "the server is up")
    assert query(prom.port, ALERT) == []
    assert SS is not None
    kill = subprocess.run([SS, "-K", "state", "listening", "sport", "=", f":{srv.port}"],
                          capture_output=True, text=True, timeout=30)
    if f":{srv.port}" not in kill.stdout:
        pytest.skip(f"ss -K cannot destroy sockets here: {kill.stderr.strip()}")
    alerts = wait_for(prom.port, ALERT, "MemcachedDown after a worker failed")
    assert alerts[0]["metric"]["alertstate"] in ("pending", "firing"), alerts  # type: ignore[index]
    assert query(prom.port, 'memcached_up{job="stackmapd"} == 0'), "the process reports itself down"
    assert query(prom.port, 'up{job="stackmapd"} == 1'), "while its /metrics still answers"
    assert srv.proc.poll() is None
