"""The host a figure was measured on, in one line.

Figures from different hosts must never be mixed: the same commands gave
stackmapd 0.64x memcached's CPU per request on one 2-vCPU host kind and
0.78x on another (issue 18), because what a request costs depends on the CPU
and on the mitigations its kernel applies at every entry and return.  So
every benchmark output carries this line: CPU model, clock, vCPU count,
kernel release, and every entry of /sys/devices/system/cpu/vulnerabilities
that is not "Not affected" (retpolines, SRSO "Safe RET", IBRS and the like
are what make a syscall dearer on one host than on another).
"""

from __future__ import annotations

import glob
import os
import platform
from pathlib import Path

VULN_DIR = "/sys/devices/system/cpu/vulnerabilities"


def cpu_model() -> str:
    """The first "model name" of /proc/cpuinfo."""
    return _cpuinfo("model name") or platform.processor() or "unknown CPU"


def _cpuinfo(field: str) -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def mitigations(vuln_dir: str = VULN_DIR) -> list[str]:
    """ "name: state" for every CPU vulnerability the kernel reports as anything but
    "Not affected", sorted by name."""
    out = []
    for path in sorted(glob.glob(os.path.join(vuln_dir, "*"))):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text != "Not affected":
            out.append(f"{Path(path).name}: {text}")
    return out


def host_line(vuln_dir: str = VULN_DIR) -> str:
    """ "Host: MODEL at MHZ MHz, N vCPU, Linux RELEASE; mitigations" """
    mhz = _cpuinfo("cpu MHz")
    clock = f"{float(mhz):.0f}" if mhz else "?"
    vulns = mitigations(vuln_dir)
    return (
        f"Host: {cpu_model()} at {clock} MHz, {os.cpu_count()} vCPU, Linux {platform.release()};"
        f" {'; '.join(vulns) or 'no CPU vulnerabilities reported'}"
    )
