"""Fixtures for the VM tests: a booted test VM, reached through 127.0.0.1 forwards.

The VM is booted by deploy/run-vm.sh (``make vm-test`` does it through
deploy/vm_test.py); these fixtures only attach to it.  Its state file,
build/vm/run/vm.env (or $SM_VM_STATE), gives the forwarded stackmapd port and
the guest agent's port.  Without a running VM every test here is skipped,
so a plain ``pytest tests`` on a machine without the VM still works -- unless
SM_VM_REQUIRED=1 (set by vm_test.py), which turns that skip into a failure so
that ``make vm-test`` can never pass by testing nothing.

SM_VM_BACKEND names the backend the guest's stackmapd must be running
(default epoll); test_backend_in_use checks it through ``stats``.
SM_VM_SERVER_ARGS are the arguments it was started with, for the tests that
restart it with an option of their own and then restore it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .vm_support import REPO, VM, read_env, vmctl

STATE = Path(os.environ.get("SM_VM_STATE", REPO / "build" / "vm" / "run" / "vm.env"))
IMAGE_ENV = STATE.parent.parent / "vm.env"


def _not_available(reason: str) -> None:
    if os.environ.get("SM_VM_REQUIRED") == "1":
        pytest.fail(f"SM_VM_REQUIRED=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def vm() -> Iterator[VM]:
    if not STATE.exists():
        _not_available(f"no running test VM ({STATE} missing; boot one with deploy/run-vm.sh start)")
    env = read_env(STATE)
    port, agent = int(env["SM_VM_PORT"]), int(env["SM_VM_AGENT"])
    if vmctl.memcached_version(port) is None:
        _not_available(f"the test VM in {STATE} does not answer on 127.0.0.1:{port}")
    image = read_env(IMAGE_ENV) if IMAGE_ENV.exists() else {}
    rc, kernel = vmctl.guest_exec(agent, "uname -r", 30)
    assert rc == 0, kernel
    yield VM(
        pid=int(env["SM_VM_PID"]),
        port=port,
        # run-vm.sh records the backlog it gave the forwards; a VM started by
        # an older run-vm.sh has libslirp's 1.
        fwd_backlog=int(env.get("SM_VM_FWD_BACKLOG", "1")),
        agent_port=agent,
        backend=os.environ.get("SM_VM_BACKEND", "epoll"),
        server_args=os.environ.get(
            "SM_VM_SERVER_ARGS", f"-l 0.0.0.0 -p 11211 --backend {os.environ.get('SM_VM_BACKEND', 'epoll')}"),
        console=Path(env.get("SM_VM_CONSOLE", STATE.parent / "console.log")),
        has_module=image.get("MODULES", "0") != "0",
        has_ringtest=image.get("RINGTEST", "0") == "1",
        kernel=kernel.strip(),
    )
