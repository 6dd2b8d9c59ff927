"""The StackMap kernel module inside the test VM, and the guest kernel's health.

Run once, after every backend's server tests (deploy/vm_test.py does that), so
that the final kernel-log check covers everything the VM went through:
- our module is loaded and /dev/stackmap exists (when the image has it);
- the kernel helper's ring-level test program passes inside the guest (when
  the image has it): many connections, large values, peer close, a stalled
  reader and hostile rings, straight against /dev/stackmap;
- the server still answers afterwards;
- the guest kernel log has no oops, warning, BUG or kmemleak report.
"""

from __future__ import annotations

import re

import pytest
from pymemcache.client.base import Client

from .vm_support import VM

# What a broken kernel path prints.  kmemleak reports are checked through
# debugfs as well when the kernel has kmemleak (Debian's does not).
KERNEL_TROUBLE = re.compile(
    r"Oops|WARNING:|BUG:|kmemleak|general protection fault|Kernel panic|Call Trace:|UBSAN:|KASAN:"
)


def test_module_loaded(vm: VM) -> None:
    """Our module is in the guest kernel and its device node exists."""
    if not vm.has_module:
        pytest.skip("the image has no stackmap.ko (kernel/build.sh absent or skipped)")
    modules = vm.check("cat /proc/modules")
    assert re.search(r"^stackmap\s", modules, re.M), modules
    vm.check("test -c /dev/stackmap")


def test_ringtest_in_guest(vm: VM) -> None:
    """The kernel helper's ring-level test program, run inside the guest against the module."""
    if not vm.has_module:
        pytest.skip("the image has no stackmap.ko")
    if not vm.has_ringtest:
        pytest.skip("the image has no ringtest (kernel/test/ringtest.c not present)")
    rc, out = vm.run("/usr/local/bin/ringtest", timeout=600)
    print(out)
    assert rc == 0, f"ringtest exited {rc}:\n{out}"


def test_server_survives_ringtest(vm: VM) -> None:
    """stackmapd in the guest still answers after the ring-level tests."""
    # The log first: when the server died, its traceback says why.
    log = vm.check("tail -n 60 /run/stackmapd.log")
    assert "Traceback" not in log, f"stackmapd in the guest failed:\n{log}"
    c = Client(("127.0.0.1", vm.port), timeout=10)
    assert c.set("after-ringtest", b"ok", noreply=False)
    assert c.get("after-ringtest") == b"ok"


def test_guest_kernel_log_clean(vm: VM) -> None:
    """No oops, WARNING, BUG or leak report in the guest kernel's log (last on purpose)."""
    rc, leaks = vm.run("test -e /sys/kernel/debug/kmemleak && echo scan > /sys/kernel/debug/kmemleak "
                       "&& cat /sys/kernel/debug/kmemleak")
    if rc == 0:
        assert leaks.strip() == "", f"kmemleak reports:\n{leaks}"
    dmesg = vm.check("dmesg")
    trouble = [line for line in dmesg.splitlines() if KERNEL_TROUBLE.search(line)]
    assert not trouble, "guest kernel log:\n" + "\n".join(trouble)
    # The console also carries our own init's and agent's lines (which echo
    # commands such as the kmemleak scan above): only the kernel's count.
    console = vm.console.read_text(errors="replace")
    trouble = [line for line in console.splitlines()
               if KERNEL_TROUBLE.search(line) and not line.startswith(("sm-agent:", "sm-init:", "sm-server:"))]
    assert not trouble, "guest console:\n" + "\n".join(trouble)
