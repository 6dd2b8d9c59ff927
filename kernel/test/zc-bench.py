#!/usr/bin/env python3
"""zc-bench.py -- zero-copy TX against the copying path, in the test VM.

Why: the module's zero-copy TX (stackmap.4, ZERO-COPY TX) saves the guest
kernel's copy of every response byte into the socket, at the price of a
notifier per sendmsg, page references per skb and a completion per loan.
Whether that pays, and from which response size, is a measurement, and
the default of -o stackmap_zc_threshold is chosen from it
(kernel/README.md, "Zero-copy TX").

What it does: with the test VM running (deploy/run-vm.sh start; Debian's
6.12 kernel, our module, stackmapd on the stackmap backend, qemu user
networking with virtio-net), for each value size and for copying
(threshold 0) and zero-copy (threshold 1) it restarts the guest's stackmapd
with the same arguments plus the threshold, stores one value, and has
CLIENTS host threads send REQUESTS `get`s for it in all over the forwarded
127.0.0.1 port.  It reads around each run: the guest's /proc/stat (busy
jiffies), the host's qemu process CPU time (/proc/PID/stat), and the
server's stats (tx slots, lent buffers, lent buffers copied after all).
Copy and zero-copy runs alternate, REPS times per size; it prints every
run and then, per size, the medians and the median of the per-repetition
ratios zero-copy / copy.  Under TCG every figure is emulated: compare
ratios only.

Usage (as root, from the top of the checkout):
    deploy/run-vm.sh start --backend stackmap -l 0.0.0.0 -t 1
    .venv/bin/python kernel/test/zc-bench.py [--sizes 4096,16384,...] [--requests N]
    deploy/run-vm.sh stop
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TOP / "deploy"))
sys.path.insert(0, str(TOP))
import vmctl  # noqa: E402

from loadtest.host import host_line  # noqa: E402

GROUPS = ("", "backend", "settings")  # the stats groups read before and after a run


def one_client(port: int, key: bytes, size: int, n: int, errors: list[str]) -> None:
    expect = len(b"VALUE %s 0 %d\r\n" % (key, size)) + size + len(b"\r\nEND\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        for _ in range(n):
            s.sendall(b"get " + key + b"\r\n")
            got = 0
            while got < expect:
                chunk = s.recv(262144)
                if not chunk:
                    errors.append("connection closed")
                    return
                got += len(chunk)
            if got != expect:
                errors.append(f"{got} bytes, want {expect}")
                return


def measure(port: int, agent: int, qpid: int, base: str, size: int, thr: int,
            args: argparse.Namespace) -> dict[str, float]:
    """One run: restart with the threshold, REQUESTS gets of one SIZE-byte value."""
    vmctl.guest_exec(agent, f"sm-server {base} -o stackmap_zc_threshold={thr}", 60)
    vmctl.wait_ready(port, 60)
    key = b"zcbench%d" % size
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"set %s 0 0 %d\r\n" % (key, size) + bytes(size) + b"\r\n")
        if s.recv(100) != b"STORED\r\n":
            raise RuntimeError("set failed")
    errors: list[str] = []
    one_client(port, key, size, 20, errors)  # warm up
    s0, g0, q0, t0 = vmctl.server_stats(port, GROUPS), vmctl.guest_busy(agent), vmctl.qemu_cpu(qpid), time.monotonic()
    per = args.requests // args.clients
    threads = [threading.Thread(target=one_client, args=(port, key, size, per, errors))
               for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t1, q1, g1, s1 = time.monotonic(), vmctl.qemu_cpu(qpid), vmctl.guest_busy(agent), vmctl.server_stats(port, GROUPS)
    if errors:
        raise RuntimeError(f"client errors: {errors[:3]}")
    if s1.get("backend") != "stackmap" or s1.get("stackmap_zc_threshold") != str(thr):
        raise RuntimeError("the guest's server is not the one asked for")
    n = per * args.clients
    d = {k: int(s1[k]) - int(s0[k]) for k in
         ("stackmap_tx_slots", "stackmap_tx_lent", "stackmap_tx_lent_copied")}
    return {
        "req_s": n / (t1 - t0),
        "guest_ms": (g1 - g0) * 10.0 / n,  # USER_HZ 100: 10 ms per jiffy
        "qemu_ms": (q1 - q0) * 1000.0 / n,
        "slots": d["stackmap_tx_slots"] / n,
        "lent": d["stackmap_tx_lent"] / n,
        # TX slots whose bytes the guest kernel copied: not lent, or lent and copied after all.
        "kcopied": (d["stackmap_tx_slots"] - d["stackmap_tx_lent"] + d["stackmap_tx_lent_copied"]) / n,
    }


def run(args: argparse.Namespace) -> int:
    env = vmctl.read_env(TOP / "build/vm/run/vm.env")
    port, agent, qpid = int(env["SM_VM_PORT"]), int(env["SM_VM_AGENT"]), int(env["SM_VM_PID"])
    base = env.get("SM_VM_ARGS", "")
    med = statistics.median
    print(host_line() + " (qemu TCG: ratios only)\n")
    print("| value | copy: guest ms/req | zc: guest ms/req | guest CPU zc/copy | qemu CPU zc/copy "
          "| req/s zc/copy | TX slots/req | lent/req (zc) | slots copied by the guest kernel/req: copy, zc |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in [int(x) for x in args.sizes.split(",")]:
        reps = []
        for rep in range(args.reps):
            c = measure(port, agent, qpid, base, size, 0, args)
            z = measure(port, agent, qpid, base, size, 1, args)
            reps.append((c, z))
            print(f"# {size} B rep {rep + 1}: copy {c}  zc {z}", file=sys.stderr, flush=True)
        c_g = med(c["guest_ms"] for c, _ in reps)
        z_g = med(z["guest_ms"] for _, z in reps)
        r_g = med(z["guest_ms"] / c["guest_ms"] for c, z in reps)
        r_q = med(z["qemu_ms"] / c["qemu_ms"] for c, z in reps)
        r_t = med(z["req_s"] / c["req_s"] for c, z in reps)
        print(f"| {size // 1024} KiB | {c_g:.2f} | {z_g:.2f} | {r_g:.2f} | {r_q:.2f} | {r_t:.2f} "
              f"| {med(c['slots'] for c, _ in reps):.0f} | {med(z['lent'] for _, z in reps):.1f} "
              f"| {med(c['kcopied'] for c, _ in reps):.1f}, {med(z['kcopied'] for _, z in reps):.1f} |",
              flush=True)
    vmctl.guest_exec(agent, f"sm-server {base}", 60)
    vmctl.wait_ready(port, 60)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4096,8192,16384,32768,65536")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    return run(ap.parse_args())


if __name__ == "__main__":
    sys.exit(main())
