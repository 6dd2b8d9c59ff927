"""Counting a server's system calls with ``strace -c -f -p PID``.

Syscalls per operation is the figure the StackMap idea is about (a read, a write and an
epoll_wait share per request on the socket API; one io_uring_enter for a whole batch on
rings).  strace attaches to every thread of the running server, counts each system call,
and prints a summary table when it detaches.  Tracing stops the traced thread at every
system call, so the server is several times slower while traced: the pass that uses this is
separate and shorter, and its throughput is never reported.  (A slower server may also
batch differently; stackmapd's own ``syscalls`` counter, read from ``stats backend`` in every run,
is the untraced cross-check.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class StraceError(RuntimeError):
    """strace could not attach, or left no summary."""


@dataclass
class SyscallCounts:
    """strace -c's summary: calls per system call name, and the total."""

    total: int  # the "total" row's calls
    calls: dict[str, int] = field(default_factory=dict)  # name -> calls
    errors: int = 0  # the "total" row's errors

    def top(self, n: int) -> list[tuple[str, int]]:
        """The ``n`` most frequent calls, most frequent first."""
        return sorted(self.calls.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def parse_summary(text: str) -> SyscallCounts:
    """Parse ``strace -c``'s table::

        % time     seconds  usecs/call     calls    errors syscall
        ------ ----------- ----------- --------- --------- ----------------
         25.41    0.178184          23      7724         4 io_uring_enter
        ...
        100.00    0.701348          89      7843        15 total

    The errors column is blank for calls that never failed, so ``calls`` is the fourth
    column and the name the last.
    """
    calls: dict[str, int] = {}
    total: int | None = None
    errors = 0
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 5 or not cols[3].isdigit():
            continue
        try:
            float(cols[0])
        except ValueError:
            continue
        name, n = cols[-1], int(cols[3])
        if name == "total":
            total = n
            errors = int(cols[4]) if len(cols) == 6 and cols[4].isdigit() else 0
        else:
            calls[name] = n
    if total is None:
        if not calls:
            raise StraceError("no strace -c summary table in its output")
        total = sum(calls.values())
    return SyscallCounts(total=total, calls=calls, errors=errors)


def _all_threads_traced(pid: int) -> bool:
    """Whether every thread of ``pid`` has a tracer (strace has attached to all)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue  # a thread that just exited
        for line in status.splitlines():
            if line.startswith("TracerPid:") and line.split()[1] == "0":
                return False
    return bool(tids)


class Tracer:
    """``strace -c -f -p PID`` running while the load runs; stop() returns the counts."""

    def __init__(self, strace: str, pid: int, out_path: Path, cpu: int | None = None) -> None:
        self.out_path = out_path
        argv = [strace, "-c", "-f", "-q", "-p", str(pid), "-o", str(out_path)]
        # Pinned like the server, so that the tracer cannot spread work onto other CPUs.
        self.argv = (["taskset", "-c", str(cpu)] if cpu is not None else []) + argv
        self._err_path = out_path.with_suffix(".stderr")
        self._err = open(self._err_path, "wb")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._err, stderr=self._err)
        self.pid = pid

    def wait_attached(self, timeout: float = 10.0) -> None:
        """Block until strace traces every thread of the server."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StraceError(f"strace exited with {self.proc.returncode}: {self._stderr()}")
            if _all_threads_traced(self.pid):
                return
            time.sleep(0.02)
        raise StraceError(f"strace did not attach to every thread of {self.pid} within {timeout:g} s")

    def stop(self) -> SyscallCounts:
        """Detach (SIGINT makes strace print its summary) and parse the summary."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    raise StraceError("strace did not exit within 10 s of SIGINT") from None
        finally:
            self._err.close()
        try:
            text = self.out_path.read_text(errors="replace")
        except OSError as exc:
            raise StraceError(f"strace left no summary: {exc}; {self._stderr()}") from exc
        return parse_summary(text)

    def kill(self) -> None:
        """Stop strace without reading anything (error paths)."""
        with contextlib.suppress(ProcessLookupError):
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._err.close()

    def _stderr(self) -> str:
        try:
            return self._err_path.read_text(errors="replace").strip()[-500:]
        except OSError:
            return ""
