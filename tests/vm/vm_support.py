"""Shared pieces of the VM tests: the VM's description and how to reach it.

Kept out of conftest.py so that test modules can import it by a name that no
other conftest.py shadows.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy"))

import vmctl  # noqa: E402

read_env = vmctl.read_env


@dataclass(frozen=True)
class VM:
    """The running test VM as the host sees it."""

    pid: int  # qemu's process id on the host
    port: int  # 127.0.0.1 port forwarded to stackmapd (guest 11211)
    fwd_backlog: int  # listen() backlog of qemu's forwarded host ports (libslirp's is 1)
    agent_port: int  # 127.0.0.1 port forwarded to sm-agent (guest 7000)
    backend: str  # backend the guest's stackmapd was asked to use
    server_args: str  # the arguments the guest's stackmapd was started with (sm-server ARGS)
    console: Path  # the serial console log on the host
    has_module: bool  # the image carries our stackmap.ko
    has_ringtest: bool  # the image carries the ring-level test program
    kernel: str  # the guest kernel's release (uname -r)

    def run(self, cmd: str, timeout: float = 120.0) -> tuple[int, str]:
        """Run CMD with /bin/sh in the guest: (exit status, stdout+stderr)."""
        return vmctl.guest_exec(self.agent_port, cmd, timeout)

    def check(self, cmd: str, timeout: float = 120.0) -> str:
        """Run CMD in the guest and fail the test unless it exits 0."""
        rc, out = self.run(cmd, timeout)
        assert rc == 0, f"guest command {cmd!r} exited {rc}:\n{out}"
        return out
