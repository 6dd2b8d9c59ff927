"""The appliance image, booted as a user would: serve, reboot, still serve the same cache.

``make appliance-test`` (part of ``make test``) builds the image if needed
(``make image``) and runs this module with SM_APPLIANCE=1; without it every
test here is skipped, so a plain ``pytest tests`` does not spend minutes
booting a VM.  With SM_APPLIANCE=1 a missing image is a failure.

One appliance instance for the module (tests/vm/appliance_support.py): a
copy-on-write overlay of the built image, a NoCloud seed (admin token, listen
address, memory), booted under UEFI (OVMF).  The tests run in file order:
first boot checks, the data path (memccapable, pymemcache, stats and
/metrics naming the stackmap backend), then 10,000 items, an ACPI power-off
(qemu's system_powerdown), a second boot of the same overlay under BIOS
(SeaBIOS) and every unexpired item back; last the console: no failed unit in
either boot, a clean kernel log, and the built image unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymemcache.client.base import Client

from .appliance_support import IMAGE, OVMF_CODE, RUN_DIR, Appliance

pytestmark = pytest.mark.skipif(os.environ.get("SM_APPLIANCE") != "1",
                                reason="appliance image test: run by `make appliance-test` (SM_APPLIANCE=1)")

ITEMS = 10_000
SHORT_TTL = 2  # seconds: these items must not outlive the reboot
MIB = 1 << 20
# Kernel messages that mean a kernel bug, whatever the subsystem.
KERNEL_BAD = re.compile(r"Oops|BUG:|WARNING:|Call Trace|general protection|Kernel panic|KASAN|"
                        r"kernel BUG|list_(add|del) corruption|refcount_t:|INFO: task .* blocked")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def image_digest() -> str:
    if not IMAGE.exists():
        pytest.fail(f"SM_APPLIANCE=1 but {IMAGE} does not exist: run `make image`")
    for tool in ("qemu-system-x86_64", "qemu-img", "mkfs.vfat", "mcopy", "memccapable"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed")
    if not OVMF_CODE.exists():
        pytest.fail(f"{OVMF_CODE} missing (apt-get install ovmf)")
    return sha256(IMAGE)


@pytest.fixture(scope="module")
def appliance(image_digest: str) -> Iterator[Appliance]:
    # Our own scratch directory, kept after the run for its console log and
    # overlay (pytest's tmp_path is pruned by any other pytest run as the same user).
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir(parents=True)
    app = Appliance(RUN_DIR, token=secrets.token_hex(16))
    try:
        seconds = app.boot("uefi")
        print(f"\nappliance: UEFI boot to /readyz in {seconds:.1f} s (console: {app.console})")
        yield app
    finally:
        if app.proc is not None and app.proc.poll() is None:
            try:
                app.powerdown()
            except Exception:  # noqa: BLE001 -- a hung guest must not outlive the tests
                app.kill()
        else:
            app.kill()


@pytest.fixture
def mc(appliance: Appliance) -> Iterator[Client]:
    client = Client(("127.0.0.1", appliance.port), connect_timeout=30, timeout=60)
    yield client
    client.close()


def stats(client: Client, *group: str) -> dict[str, str]:
    return {k.decode(): v.decode() if isinstance(v, bytes) else str(v) for k, v in client.stats(*group).items()}


def reports(console: str) -> list[dict[str, str]]:
    """The boot reports on the console (stackmapd-report.service), one dict per boot."""
    boots: list[dict[str, str]] = []
    for line in console.splitlines():
        m = re.search(r"stackmapd-report: (.*)", line)
        if not m:
            continue
        text = m.group(1).strip()
        if text.startswith("boot "):
            boots.append({"finished": text})
        elif boots:
            key, _, value = text.partition(":")
            boots[-1].setdefault(key.split()[0], text)
    return boots


def wait_reports(appliance: Appliance, count: int, timeout: float = 300) -> list[dict[str, str]]:
    """The console's boot reports once there are COUNT complete ones (the report comes when
    systemd says the boot has finished, which may be after stackmapd is ready)."""
    deadline = time.monotonic() + timeout
    while True:
        boots = reports(appliance.console_text())
        if len(boots) >= count and "machine-id" in boots[count - 1]:
            return boots
        if time.monotonic() > deadline:
            return boots
        time.sleep(1)


def check_report(report: dict[str, str]) -> None:
    assert report["finished"].endswith("finished: running"), report
    assert report["failed"] == "failed units: 0", report
    assert report["stackmapd"].startswith("stackmapd active, /dev/stackmap root:stackmapd 660"), report


def test_first_boot(appliance: Appliance) -> None:
    """systemd reached `running` with no failed unit; stackmapd up; the seed was applied once."""
    boots = wait_reports(appliance, 1)
    assert len(boots) == 1, boots
    console = appliance.console_text()
    assert "stackmapd-seed: instance appliance-test-1: wrote /etc/stackmapd/stackmapd.toml" in console
    assert appliance.token not in console, "the admin token must not be logged"
    check_report(boots[0])
    # No machine-id was baked in: systemd made one at this first boot.
    assert re.search(r"machine-id [0-9a-f]{32},", boots[0]["machine-id"]), boots[0]


def test_seed_configured_memory_and_token(appliance: Appliance, mc: Client) -> None:
    """memory_limit and the admin token come from the NoCloud seed."""
    assert int(stats(mc)["limit_maxbytes"]) == 256 * MIB
    status, _ = appliance.http("/admin/stats?group=settings")
    assert status == 401
    status, body = appliance.http("/admin/stats?group=settings", token=appliance.token)
    assert status == 200, body


def test_backend_is_stackmap(appliance: Appliance, mc: Client) -> None:
    assert stats(mc, "backend")["backend"] == "stackmap"
    status, metrics = appliance.http("/metrics")
    assert status == 200
    assert re.search(r'^stackmap_backend_info\{backend="stackmap"\} 1\.0$', metrics, re.M), \
        [line for line in metrics.splitlines() if "backend" in line]


def test_memccapable(appliance: Appliance) -> None:
    proc = subprocess.run(["memccapable", "-h", "127.0.0.1", "-p", str(appliance.port), "-a", "-t", "30"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "All tests passed" in proc.stdout, proc.stdout + proc.stderr


def test_pymemcache(mc: Client) -> None:
    mc.flush_all()
    assert mc.set("a", b"1", noreply=False)
    assert mc.get("a") == b"1"
    assert mc.add("a", b"2", noreply=False) is False
    assert mc.replace("a", b"3", noreply=False)
    assert mc.append("a", b"4", noreply=False) and mc.prepend("a", b"0", noreply=False)
    assert mc.get("a") == b"034"
    value, cas = mc.gets("a")
    assert mc.cas("a", b"5", cas, noreply=False)
    assert mc.cas("a", b"6", cas, noreply=False) is False
    assert mc.get("a") == b"5"
    mc.set("n", b"10")
    assert mc.incr("n", 5) == 15 and mc.decr("n", 20) == 0
    big = secrets.token_bytes(512 * 1024)
    assert mc.set("big", big, noreply=False)
    assert mc.get("big") == big
    many = {f"m{i}": str(i).encode() * (i % 50 + 1) for i in range(200)}
    mc.set_many(many, noreply=False)
    assert mc.get_many(list(many)) == many
    assert mc.delete("a", noreply=False) and mc.get("a") is None


class Raw:
    """The text protocol on one socket, pipelined: bulk stores and gets that carry flags."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(1 << 16)
            assert chunk, "server closed the connection"
            self.buf += chunk
        end = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:end], self.buf[end:]
        return out

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            assert chunk, "server closed the connection"
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def store(self, items: dict[str, tuple[bytes, int, int]]) -> None:
        """set KEY FLAGS EXPTIME with noreply, then version: one round trip per batch."""
        req = b"".join(b"set %s %d %d %d noreply\r\n%s\r\n" % (k.encode(), flags, exp, len(v), v)
                       for k, (v, flags, exp) in items.items())
        self.sock.sendall(req + b"version\r\n")
        answer = self._until(b"\r\n")
        assert answer.startswith(b"VERSION "), answer[:200]

    def get(self, keys: list[str]) -> dict[str, tuple[bytes, int]]:
        self.sock.sendall(b"get " + b" ".join(k.encode() for k in keys) + b"\r\n")
        out: dict[str, tuple[bytes, int]] = {}
        while True:
            line = self._until(b"\r\n")
            if line == b"END\r\n":
                return out
            word, key, flags, size = line.split()[:4]
            assert word == b"VALUE", line[:200]
            data = self._exactly(int(size) + 2)  # the value may itself hold "\r\n"
            out[key.decode()] = (data[:-2], int(flags))


def expected_items() -> dict[str, tuple[bytes, int, int]]:
    """Key -> (value, flags, exptime): 32..3008-byte values, varied flags, half never
    expiring and half in an hour (both must survive)."""
    return {f"reboot:{i:05d}": (hashlib.sha256(str(i).encode()).digest() * (i % 94 + 1), i % 251,
                                0 if i % 2 else 3600)
            for i in range(ITEMS)}


def test_reboot_keeps_the_cache(appliance: Appliance, mc: Client) -> None:
    """10,000 items, ACPI power-off, boot again (BIOS this time): every unexpired item is back."""
    mc.flush_all()
    items = expected_items()
    keys = list(items)
    raw = Raw(appliance.port)
    for start in range(0, ITEMS, 500):
        raw.store({k: items[k] for k in keys[start:start + 500]})
    short = {f"short:{i}": (b"gone", 0, SHORT_TTL) for i in range(100)}
    raw.store(short)
    assert len(raw.get(keys[:200])) == 200
    raw.close()
    mc.close()

    off = appliance.powerdown()
    assert appliance.proc is not None and appliance.proc.returncode == 0, appliance.proc
    seconds = appliance.boot("bios")
    print(f"\nappliance: power-off {off:.1f} s, BIOS boot to /readyz {seconds:.1f} s")

    raw = Raw(appliance.port)
    got: dict[str, tuple[bytes, int]] = {}
    for start in range(0, ITEMS, 200):
        got.update(raw.get(keys[start:start + 200]))
    assert raw.get(list(short)) == {}, "items that expired before the reboot came back"
    raw.close()
    missing = [k for k in keys if k not in got]
    wrong = [k for k in got if got[k] != items[k][:2]]
    assert not missing, f"{len(missing)} of {ITEMS} items lost across the reboot, e.g. {missing[:5]}"
    assert not wrong, f"{len(wrong)} items changed across the reboot, e.g. {wrong[:5]}"


def test_second_boot(appliance: Appliance) -> None:
    """The second boot: no failed unit, the same machine-id, the seed not applied again."""
    boots = wait_reports(appliance, 2)
    assert len(boots) == 2, boots
    console = appliance.console_text()
    check_report(boots[1])
    first = boots[0]["machine-id"].split(",")[0]
    assert boots[1]["machine-id"].startswith(first + ","), (boots[0], boots[1])
    assert "stackmapd-seed: seed of instance appliance-test-1 already applied" in console
    # A clean power-off: systemd stopped the services and powered off (no
    # hard kill of the guest), so stackmapd had its SIGTERM and saved.
    assert "reboot: Power down" in console


def test_kernel_log_clean(appliance: Appliance) -> None:
    """Nothing on either boot's console that means a kernel bug (the console gets every
    kernel message at warning level and above)."""
    bad = [line for line in appliance.console_text().splitlines() if KERNEL_BAD.search(line)]
    assert not bad, "\n".join(bad[:40])


def test_image_unchanged(appliance: Appliance, image_digest: str) -> None:
    """The built image was only ever a backing file."""
    info = subprocess.run(["qemu-img", "info", "-U", str(appliance.overlay)], capture_output=True, text=True,
                          check=True).stdout
    assert f"backing file: {IMAGE}" in info
    assert sha256(IMAGE) == image_digest
