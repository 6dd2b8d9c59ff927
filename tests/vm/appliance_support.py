"""Booting the appliance image under qemu for tests/vm/test_appliance.py.

The built image (build/stackmapd-appliance.qcow2, or $SM_APPLIANCE_IMAGE) is
never written: every run boots a qcow2 overlay whose backing file it is, so
that a reboot (ACPI power-off, then a new qemu on the same overlay) keeps
what the guest wrote while the image stays as built.  The guest gets a
NoCloud seed (a FAT volume labelled CIDATA, made with mkfs.vfat -C and mtools,
no loop device) carrying the admin token, listen address and memory.

qemu runs under TCG (this host's KVM cannot run a stock guest), one vCPU,
without default devices, with user networking restricted to the two forwards
on 127.0.0.1 (memcached and the metrics/admin HTTP port).  Its QMP socket
sends ``system_powerdown``, the ACPI power button.  Firmware: UEFI (OVMF,
pflash with a private copy of the variable store) or BIOS (SeaBIOS, qemu's
default); the image boots by itself under both.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .vm_support import REPO, vmctl

IMAGE = Path(os.environ.get("SM_APPLIANCE_IMAGE", REPO / "build" / "stackmapd-appliance.qcow2")).resolve()
# Overlay, seed, console logs of the last run (build/ is not in git).
RUN_DIR = Path(os.environ.get("SM_APPLIANCE_RUN", REPO / "build" / "appliance-run")).resolve()
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
HOST = "127.0.0.1"
BOOT_TIMEOUT = float(os.environ.get("SM_APPLIANCE_BOOT_TIMEOUT", "600"))
POWEROFF_TIMEOUT = 600.0


def make_seed(path: Path, instance_id: str, stackmapd: dict[str, object]) -> None:
    """A NoCloud seed: FAT volume CIDATA with meta-data and a #cloud-config user-data."""
    work = path.parent / "seed"
    work.mkdir(exist_ok=True)
    (work / "meta-data").write_text(f"instance-id: {instance_id}\n")
    lines = ["#cloud-config", "stackmapd:"]
    lines += [f"  {key}: {json.dumps(value)}" for key, value in stackmapd.items()]
    (work / "user-data").write_text("\n".join(lines) + "\n")
    path.unlink(missing_ok=True)
    subprocess.run(["mkfs.vfat", "-n", "CIDATA", "-C", str(path), "1024"], check=True, capture_output=True)
    subprocess.run(["mcopy", "-i", str(path), str(work / "meta-data"), str(work / "user-data"), "::/"], check=True)


@dataclass
class Appliance:
    """One appliance instance: its overlay, seed and forwards, booted as many times as asked."""

    workdir: Path
    token: str
    port: int = field(default_factory=vmctl.free_port)  # 127.0.0.1 -> guest 11211
    http_port: int = field(default_factory=vmctl.free_port)  # 127.0.0.1 -> guest 9150
    proc: subprocess.Popen[bytes] | None = None
    boots: list[tuple[str, float]] = field(default_factory=list)  # (firmware, seconds to /readyz)

    def __post_init__(self) -> None:
        while self.http_port == self.port:
            self.http_port = vmctl.free_port()
        self.overlay = self.workdir / "overlay.qcow2"
        self.seed = self.workdir / "seed.img"
        self.console = self.workdir / "console.log"
        self.qmp_path = self.workdir / "qmp.sock"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(IMAGE), "-F", "qcow2",
                        str(self.overlay)], check=True)
        make_seed(self.seed, "appliance-test-1", {
            "admin_token": self.token,
            "listen": "0.0.0.0",
            "memory_limit": 256,
            "metrics_listen": "0.0.0.0:9150",
        })
        shutil.copy(OVMF_VARS, self.workdir / "ovmf-vars.fd")

    def command(self, firmware: str) -> list[str]:
        cmd = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-nodefaults", "-smp", "1", "-m", "1024",
               "-display", "none", "-no-user-config"]
        if firmware == "uefi":
            cmd += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                    "-drive", f"if=pflash,format=raw,file={self.workdir / 'ovmf-vars.fd'}"]
        cmd += [
            "-drive", f"file={self.overlay},format=qcow2,if=virtio",
            "-drive", f"file={self.seed},format=raw,if=virtio,readonly=on",
            "-netdev", (f"user,id=n0,restrict=on,hostfwd=tcp:{HOST}:{self.port}-:11211,"
                        f"hostfwd=tcp:{HOST}:{self.http_port}-:9150"),
            "-device", "virtio-net-pci,netdev=n0",
            "-serial", f"file:{self.workdir / 'console.part'}",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
        ]
        return cmd

    def boot(self, firmware: str) -> float:
        """Start qemu and wait for /readyz; return the seconds it took."""
        assert self.proc is None or self.proc.poll() is not None, "the appliance is already running"
        self.qmp_path.unlink(missing_ok=True)
        (self.workdir / "console.part").unlink(missing_ok=True)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.command(firmware), stdin=subprocess.DEVNULL,
                                     stdout=open(self.workdir / "qemu.log", "ab"), stderr=subprocess.STDOUT)
        deadline = t0 + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._collect_console()
                raise RuntimeError(f"qemu exited ({self.proc.returncode}) before /readyz answered; "
                                   f"console: {self.console}")
            if self.ready():
                seconds = time.monotonic() - t0
                self.boots.append((firmware, seconds))
                with open(self.workdir / "boot-times.txt", "a") as f:  # for the README's figures
                    f.write(f"{firmware} {seconds:.1f} s to /readyz\n")
                return seconds
            time.sleep(1)
        # A clean power-off writes the guest's journal out (kill -9 would lose its tail).
        try:
            self.powerdown(timeout=180)
        except Exception:  # noqa: BLE001 -- whatever the guest's state, stop qemu
            self.kill()
        raise TimeoutError(f"/readyz did not answer within {BOOT_TIMEOUT:g} s; console: {self.console}; "
                           f"the guest's journal of this boot:\n{self.guest_journal('-b -0')[-20000:]}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/readyz", timeout=3) as r:
                return r.status == 200 and json.loads(r.read()).get("ready") is True
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def http(self, path: str, token: str | None = None) -> tuple[int, str]:
        req = urllib.request.Request(f"http://{HOST}:{self.http_port}{path}")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def qmp(self, command: str) -> dict[str, object]:
        """One QMP command (after the capabilities handshake); its answer."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(self.qmp_path))
            f = s.makefile("rw")
            json.loads(f.readline())  # greeting
            for cmd in ("qmp_capabilities", command):
                f.write(json.dumps({"execute": cmd}) + "\n")
                f.flush()
                while True:
                    answer = json.loads(f.readline())
                    if "return" in answer or "error" in answer:
                        break
            return answer

    def powerdown(self, timeout: float = POWEROFF_TIMEOUT) -> float:
        """ACPI power button; wait for the guest to power off and qemu to exit.  Seconds taken."""
        assert self.proc is not None
        t0 = time.monotonic()
        answer = self.qmp("system_powerdown")
        assert "return" in answer, answer
        try:
            self.proc.wait(timeout)
        finally:
            self._collect_console()
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._collect_console()

    def _collect_console(self) -> None:
        """Append this boot's console output to console.log (all boots, in order)."""
        part = self.workdir / "console.part"
        if part.exists():
            with open(self.console, "ab") as out:
                out.write(part.read_bytes())
            part.unlink()

    def guest_journal(self, units: str = "") -> str:
        """The guest's systemd journal, read offline from the overlay (qemu stopped or not):
        the root partition copied out of a raw conversion, the journal files taken
        out with debugfs, read by the host's journalctl.  For failure messages."""
        work = self.workdir / "journal"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        raw, root = work / "disk.raw", work / "root.ext4"
        try:
            subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(self.overlay), str(raw)], check=True)
            table = subprocess.run(["sgdisk", "-i", "3", str(raw)], capture_output=True, text=True, check=True).stdout
            start = int(table.split("First sector:")[1].split()[0])
            subprocess.run(["dd", f"if={raw}", f"of={root}", "bs=1M", "iflag=skip_bytes", f"skip={start * 512}",
                            "status=none"], check=True)
            raw.unlink()
            subprocess.run(["debugfs", "-R", f"rdump /var/log/journal {work}", str(root)], capture_output=True,
                           check=True)
            files = [str(p) for p in (work / "journal").rglob("*.journal")]
            if not files:
                return "(no journal files in the guest)"
            cmd = ["journalctl", "--no-pager", "-o", "short-monotonic"]
            cmd += [arg for f in files for arg in ("--file", f)]
            return subprocess.run(cmd + units.split(), capture_output=True, text=True).stdout
        except (subprocess.CalledProcessError, OSError, IndexError, ValueError) as exc:
            return f"(could not read the guest journal: {exc})"
        finally:
            raw.unlink(missing_ok=True)
            root.unlink(missing_ok=True)

    def console_text(self) -> str:
        """Every boot's console so far (the running one included)."""
        text = self.console.read_bytes() if self.console.exists() else b""
        part = self.workdir / "console.part"
        if part.exists():
            text += part.read_bytes()
        return text.decode(errors="replace")
