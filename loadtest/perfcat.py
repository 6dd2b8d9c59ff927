"""``python -m loadtest.perfcat PERF.DATA...``: where a server's CPU goes, by kind of work.

Why: on one host stackmapd spent 0.64x memcached's CPU per request and on another 0.78x
(issue 18).  Three quarters of a request under memaslap is the kernel's TCP over loopback,
the same for every server; what differs is how much of the rest is syscall entry and exit,
scheduling, io_uring and user space.  This groups ``perf report``'s per-symbol shares of a
``perf record -g -p PID`` profile into those kinds, so profiles of different servers and
hosts can be compared line by line (BENCHMARKS.md keeps the tables).

The groups are by kernel symbol name (regular expressions below, the first that matches
wins); user-space samples are grouped by the object they ran in.
"""

from __future__ import annotations

import re
import subprocess
import sys

KERNEL_GROUPS: list[tuple[str, str]] = [
    ("io_uring", r"^(io_|__io_|io_uring)"),
    (
        "scheduler and wake-ups",
        r"(finish_task_switch|schedule|try_to_wake_up|ttwu|enqueue|dequeue|pick_next|update_curr"
        r"|_raw_spin_unlock_irqrestore|__wake_up|autoremove_wake|select_task_rq|psi_|switch_mm"
        r"|__switch_to|update_load|set_next_entity|put_prev|sched_clock|reweight|update_rq_clock"
        r"|wake_up_q|futex)",
    ),
    (
        "syscall entry/exit, fd lookup, VFS, epoll",
        r"(do_syscall_64|entry_SYSCALL|syscall_exit|syscall_return|exit_to_user|fdget|__fget|fput"
        r"|ksys_|__x64_sys|__sys_|sock_write_iter|sock_read_iter|vfs_read|vfs_write|rw_verify"
        r"|security_|apparmor|fsnotify|ep_|do_epoll)",
    ),
    (
        "copies to and from user",
        r"(_copy_to_iter|_copy_from_iter|__check_object_size|__virt_addr_valid|check_heap_object"
        r"|copy_user|rep_movs|simple_copy|skb_copy_datagram|clear_user)",
    ),
    (
        "TCP/IP and loopback",
        r"(tcp|ip_|ipv4|inet|sk_|sock_|skb|kmalloc|kmem_cache|net_rx|netif|__dev_|dev_|loopback"
        r"|bbr|napi|softirq|local_bh|ktime|read_tsc|release_sock|lock_sock|validate_xmit|dst_"
        r"|nf_|neigh|eth_|process_backlog|kfree|__build_skb|page_frag|mem_cgroup|__mod_|refill_stock"
        r"|memcg|csum|cgroup|bpf|irq_exit|__irq|sysvec|asm_|rcu)",
    ),
]
LINE = re.compile(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(\S+)")


def group_of(kind: str, dso: str, symbol: str) -> str:
    """The group of one sample line: ``kernel: GROUP`` or ``user: DSO``."""
    if kind != "k":
        return f"user: {dso}"
    for name, pattern in KERNEL_GROUPS:
        if re.search(pattern, symbol):
            return f"kernel: {name}"
    return "kernel: other"


def groups(report: str) -> dict[str, float]:
    """Percent per group from ``perf report --sort dso,sym -g none`` text."""
    out: dict[str, float] = {}
    for line in report.splitlines():
        m = LINE.match(line)
        if m:
            key = group_of(m.group(3), m.group(2), m.group(4))
            out[key] = out.get(key, 0.0) + float(m.group(1))
    return out


def report_text(path: str) -> str:
    cmd = ["perf", "report", "-i", path, "--no-children", "--sort", "dso,sym", "-q", "-g", "none"]
    cmd += ["--percent-limit", "0"]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m loadtest.perfcat PERF.DATA...", file=sys.stderr)
        return 2
    for path in paths:
        print(f"== {path}")
        for key, pct in sorted(groups(report_text(path)).items(), key=lambda kv: -kv[1]):
            if pct >= 0.5:
                print(f"  {pct:5.1f}%  {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
