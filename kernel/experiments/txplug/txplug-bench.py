#!/usr/bin/env python3
"""txplug-bench.py -- TX doorbell batching: stock against patched kernel.

Why: 0001-net-per-task-transmit-plug.patch (here until it joins
kernel/patches/; kernel/README.md, "TX doorbell batching") lets the module's TX sync
plug the task's transmit path so that one sync's responses reach
virtio-net as one burst with xmit_more and one device notification.
Whether that pays is a measurement: device notifications ("kicks"), guest
CPU and host qemu CPU per request, the stock appliance kernel against the
patched one, with the same module source and the same root disk.

What it does: for each repetition and each kernel (alternating) it boots
the VM directory made by vm-dir.sh (deploy/run-vm.sh with SM_VM_DIR;
stackmapd -t 1 --backend stackmap in the guest, qemu TCG, 1 vCPU, qemu user
networking with virtio-net), sets eth0's root qdisc (--qdisc, default fq_codel as on the appliance),
stores KEYS small values, and for each
workload (CLIENTSxDEPTH[:REQUESTS]: host connections, each with DEPTH
pipelined `get`s outstanding) sends REQUESTS gets over the forwarded 127.0.0.1 port, one
selector loop, every reply counted.  Around each run it reads the guest's
virtio-net counters through SIOCETHTOOL (`ethtool -S eth0`: tx0_kicks),
the guest's eth0 tx_packets and busy jiffies (/proc/stat), the host qemu
process's CPU time and stackmapd's stats (syncs, TX slots).  It prints
every run, then per workload the medians and the median of the
per-repetition ratios patched / stock.  Under TCG every figure is
emulated, and this host is shared: compare ratios only.

Usage (as root, from the top of the checkout; the patched kernel from
`cp kernel/experiments/txplug/0001-*.patch kernel/patches/` and
kernel/build-kernel.sh appliance with STACKMAPD_CACHE set to a scratch
directory, so that the shared cache's stock entries are not pruned):
    kernel/experiments/txplug/vm-dir.sh STOCK_KDIR STOCK_KO build/txplug/stock
    kernel/experiments/txplug/vm-dir.sh PATCHED_KDIR build/txplug/patched
    .venv/bin/python kernel/experiments/txplug/txplug-bench.py \\
        build/txplug/stock build/txplug/patched [--reps 3] [--workloads 1x1,16x1,16x8]
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(TOP / "deploy"))
sys.path.insert(0, str(TOP))
import vmctl  # noqa: E402

from loadtest.host import host_line  # noqa: E402

GROUPS = ("", "backend")  # the stats groups read before and after a run (stackmap_* are "stats backend"'s)

# Runs in the guest (python3 of the test VM's disk): virtio-net's ethtool
# statistics through SIOCETHTOOL and eth0's tx_packets.  (Busy jiffies are
# read apart with busybox: a python3 start costs more guest CPU than a run.)
GUEST_PROBE = r"""
import ctypes, fcntl, socket, struct
def call(buf):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ifr = struct.pack("16sP", b"eth0", ctypes.addressof(buf)) + bytes(16)
    fcntl.ioctl(s.fileno(), 0x8946, ifr)
    s.close()
b = ctypes.create_string_buffer(struct.pack("IIQI", 0x37, 0, 1 << 1, 0))
call(b)
n = struct.unpack_from("I", b, 16)[0]
b = ctypes.create_string_buffer(struct.pack("III", 0x1B, 1, n) + bytes(32 * n))
call(b)
names = [b.raw[12 + 32 * i:44 + 32 * i].split(b"\0")[0].decode() for i in range(n)]
b = ctypes.create_string_buffer(struct.pack("II", 0x1D, n) + bytes(8 * n))
call(b)
for k, v in zip(names, struct.unpack_from("%dQ" % n, b, 8)):
    print("eth", k, v)
print("tx_packets", open("/sys/class/net/eth0/statistics/tx_packets").read().strip())
"""




def probe(agent: int) -> dict[str, int]:
    rc, out = vmctl.guest_exec(agent, "python3 /run/txplug-probe.py", 60)
    if rc != 0:
        raise RuntimeError(f"guest probe failed: {out}")
    got: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == "eth":
            got[parts[1]] = int(parts[2])
        elif len(parts) == 2:
            got[parts[0]] = int(parts[1])
    return got



def load(port: int, clients: int, depth: int, total: int, keys: int) -> None:
    """TOTAL gets over CLIENTS connections, DEPTH outstanding on each."""
    sel = selectors.DefaultSelector()
    conns = []
    for c in range(clients):
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.setblocking(False)
        conns.append(s)
        sel.register(s, selectors.EVENT_READ, c)
    per = total // clients
    sent = [0] * clients
    done = [0] * clients
    bufs = [b""] * clients
    k = 0

    def send(c: int) -> None:
        nonlocal k
        n = min(depth, per - sent[c])
        if n <= 0:
            return
        req = b"".join(b"get txk%d\r\n" % ((k + i) % keys) for i in range(n))
        k += n
        conns[c].setblocking(True)
        conns[c].sendall(req)
        conns[c].setblocking(False)
        sent[c] += n

    for c in range(clients):
        send(c)
    deadline = time.monotonic() + 600
    while sum(done) < per * clients:
        if time.monotonic() > deadline:
            raise RuntimeError("load: no progress for 600 s")
        for key, _ in sel.select(timeout=60):
            c = key.data
            chunk = conns[c].recv(262144)
            if not chunk:
                raise RuntimeError("load: connection closed")
            bufs[c] += chunk
            n = bufs[c].count(b"END\r\n")
            if n:
                if bufs[c].count(b"VALUE ") != n:
                    raise RuntimeError(f"load: a get missed: {bufs[c][:200]!r}")
                bufs[c] = bufs[c][bufs[c].rindex(b"END\r\n") + 5:]
                done[c] += n
                if done[c] == sent[c]:
                    send(c)
    for s in conns:
        sel.unregister(s)
        s.close()


def boot(vmdir: Path, args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ, SM_VM_DIR=str(vmdir))
    subprocess.run([str(TOP / "deploy/run-vm.sh"), "start", "-l", "0.0.0.0", "-p", "11211",
                    "-t", "1", "--backend", "stackmap"], env=env, check=True)
    e = vmctl.read_env(vmdir / "run/vm.env")
    agent, port = int(e["SM_VM_AGENT"]), int(e["SM_VM_PORT"])
    rc, out = vmctl.guest_exec(agent, "cat > /run/txplug-probe.py <<'EOF'\n" + GUEST_PROBE
                               + f"\nEOF\ntc qdisc replace dev eth0 root {args.qdisc} && uname -r"
                               + " && tc qdisc show dev eth0", 60)
    if rc != 0 or f"qdisc {args.qdisc} " not in out:
        raise RuntimeError(f"guest setup failed: {out}")
    e["uname"] = out.split()[0]
    if vmctl.server_stats(port, ("backend",)).get("backend") != "stackmap":
        raise RuntimeError("the guest's stackmapd is not on the stackmap backend")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        val = b"v" * args.value
        s.sendall(b"".join(b"set txk%d 0 0 %d noreply\r\n%s\r\n" % (i, len(val), val)
                           for i in range(args.keys)) + b"mn\r\n")
        buf = b""
        while b"MN\r\n" not in buf:
            buf += s.recv(4096)
    load(port, 4, 4, 400, args.keys)  # warm up
    return e


def stop(vmdir: Path) -> None:
    env = dict(os.environ, SM_VM_DIR=str(vmdir))
    subprocess.run([str(TOP / "deploy/run-vm.sh"), "stop"], env=env, check=False)


def measure(e: dict[str, str], clients: int, depth: int, requests: int,
            args: argparse.Namespace) -> dict[str, float]:
    port, agent, qpid = int(e["SM_VM_PORT"]), int(e["SM_VM_AGENT"]), int(e["SM_VM_PID"])
    p0, s0, g0, q0 = probe(agent), vmctl.server_stats(port, GROUPS), vmctl.guest_busy(agent), vmctl.qemu_cpu(qpid)
    t0 = time.monotonic()
    load(port, clients, depth, requests, args.keys)
    t1 = time.monotonic()
    q1, g1, s1, p1 = vmctl.qemu_cpu(qpid), vmctl.guest_busy(agent), vmctl.server_stats(port, GROUPS), probe(agent)
    n = (requests // clients) * clients
    # Per queue (tx0_kicks, ...); "tx_kicks" is their sum.
    kicks = sum(p1[k] - p0[k] for k in p1 if re.fullmatch(r"tx\d+_kicks", k))
    syncs = int(s1["stackmap_syncs"]) - int(s0["stackmap_syncs"])
    return {
        "n": n,
        "kicks_req": kicks / n,
        "pkts_req": (p1["tx_packets"] - p0["tx_packets"]) / n,
        "kicks_pkt": kicks / max(1, p1["tx_packets"] - p0["tx_packets"]),
        "guest_ms": (g1 - g0) * 10.0 / n,  # USER_HZ 100
        "qemu_ms": (q1 - q0) * 1000.0 / n,
        "req_s": n / (t1 - t0),
        "slots_sync": (int(s1["stackmap_tx_slots"]) - int(s0["stackmap_tx_slots"])) / max(1, syncs),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stock", type=Path, help="vm-dir.sh directory of the stock kernel")
    ap.add_argument("patched", type=Path, help="vm-dir.sh directory of the patched kernel")
    ap.add_argument("--workloads", default="1x1:4000,16x1,16x8",
                    help="CLIENTSxDEPTH[:REQUESTS], comma separated")
    ap.add_argument("--requests", type=int, default=20000, help="gets per run unless the workload says")
    ap.add_argument("--keys", type=int, default=100)
    ap.add_argument("--value", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--qdisc", default="fq_codel",
                    help="eth0's root qdisc (the appliance's systemd sets fq_codel; the test VM has pfifo_fast)")
    args = ap.parse_args()
    # CLIENTSxDEPTH[:REQUESTS]
    wls = [tuple(int(x) for x in w.replace(":", "x").split("x")) for w in args.workloads.split(",")]
    runs: dict[tuple[str, tuple[int, ...]], list[dict[str, float]]] = {}
    for rep in range(args.reps):
        order = ["stock", "patched"] if rep % 2 == 0 else ["patched", "stock"]
        for which in order:
            vmdir = getattr(args, which).resolve()
            try:
                e = boot(vmdir, args)
                for w in wls:
                    r = measure(e, w[0], w[1], w[2] if len(w) > 2 else args.requests, args)
                    runs.setdefault((which, w), []).append(r)
                    print(f"# rep {rep + 1} {which} ({e['uname']}) {w[0]}x{w[1]}: n={r['n']:.0f} "
                          + " ".join(f"{k}={v:.3f}" for k, v in r.items() if k != "n"), file=sys.stderr, flush=True)
            finally:
                stop(vmdir)
    med = statistics.median
    print(host_line() + " (qemu TCG: ratios only)\n")
    print(f"qdisc {args.qdisc}, gets of {args.value}-byte values, {args.reps} reps; "
          f"host load average at the end: {os.getloadavg()[0]:.1f}")
    print("| clients x depth | kicks/req stock | kicks/req patched | kicks/pkt stock | kicks/pkt patched "
          "| guest CPU/req patched/stock | qemu CPU/req patched/stock | req/s patched/stock "
          "| TX slots/sync stock, patched |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w in wls:
        st, pa = runs[("stock", w)], runs[("patched", w)]

        def ratio(key: str, st: list[dict[str, float]] = st, pa: list[dict[str, float]] = pa) -> float:
            return med(p[key] / s[key] for s, p in zip(st, pa, strict=True))

        print(f"| {w[0]}x{w[1]} | {med(r['kicks_req'] for r in st):.3f} | {med(r['kicks_req'] for r in pa):.3f} "
              f"| {med(r['kicks_pkt'] for r in st):.3f} | {med(r['kicks_pkt'] for r in pa):.3f} "
              f"| {ratio('guest_ms'):.2f} | {ratio('qemu_ms'):.2f} | {ratio('req_s'):.2f} "
              f"| {med(r['slots_sync'] for r in st):.1f}, {med(r['slots_sync'] for r in pa):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
