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

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from control_support import Proc, running
from prom_support import PROMETHEUS, SKIP_REASON, Prometheus, query, wait_for

PROMTOOL = shutil.which("promtool")
SS = shutil.which("ss")
RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "stackmapd-alerts.yml"

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason=SKIP_REASON)


@pytest.fixture
def srv() -> Iterator[Proc]:
    with running(["-t", "4"]) as p:
        yield p


@pytest.fixture
def prom(srv: Proc, tmp_path: Path) -> Iterator[Prometheus]:
    p = Prometheus(srv.http_port, tmp_path, RULES)
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
