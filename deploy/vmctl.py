#!/usr/bin/env python3
"""Host side of the test VM's control: readiness, guest commands, free ports, forward backlog.

deploy/run-vm.sh calls this (standard library only, any python3 >= 3.9):

  vmctl.py free-port                          print a free TCP port on 127.0.0.1
  vmctl.py wait-ready PORT TIMEOUT [PIDFILE]  wait for "version" -> "VERSION ..." on
                                              127.0.0.1:PORT; fail early if qemu
                                              (PIDFILE) exits
  vmctl.py exec AGENTPORT TIMEOUT CMD         run CMD in the guest through sm-agent,
                                              print its output, exit with its status
  vmctl.py widen-backlog PIDFILE BACKLOG PORT...
                                              raise the listen() backlog of qemu's
                                              forwarded 127.0.0.1:PORT sockets

Readiness is an application round trip because qemu's user-network forwarder
accepts the host's connection before anything listens in the guest: a bare
connect() proves nothing.  Tests import ``memcached_version`` and ``guest_exec``
from here instead of repeating the protocol.  Every address used is 127.0.0.1.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sys
import time

HOST = "127.0.0.1"
# pidfd_getfd(2): the same number on every architecture (the unified syscall
# table that Linux 5.6 added it to).
SYS_PIDFD_GETFD = 438


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def memcached_version(port: int, timeout: float = 2.0) -> str | None:
    """The server's answer to "version", or None when there is no complete answer."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"version\r\n")
            buf = b""
            while not buf.endswith(b"\r\n"):
                chunk = s.recv(256)
                if not chunk:
                    return None
                buf += chunk
    except OSError:
        return None
    line = buf.decode(errors="replace").strip()
    return line if line.startswith("VERSION ") else None


def pid_alive(pidfile: str | None) -> bool:
    """Whether the process in PIDFILE still runs (True when there is no pidfile to check)."""
    if not pidfile:
        return True
    try:
        with open(pidfile) as f:
            os.kill(int(f.read().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def wait_ready(port: int, timeout: float, pidfile: str | None = None) -> str:
    """Retry the version round trip until it answers; raise TimeoutError or RuntimeError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = memcached_version(port)
        if answer:
            return answer
        if not pid_alive(pidfile):
            raise RuntimeError("qemu exited before the server answered")
        time.sleep(0.25)
    raise TimeoutError(f"no VERSION answer on {HOST}:{port} within {timeout:g} s")


def guest_exec(agent_port: int, cmd: str, timeout: float = 60.0) -> tuple[int, str]:
    """Run CMD with /bin/sh in the guest; return (exit status, merged output)."""
    req = json.dumps({"cmd": cmd, "timeout": timeout}).encode() + b"\n"
    with socket.create_connection((HOST, agent_port), timeout=timeout + 10) as s:
        s.sendall(req)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("guest agent closed the connection without an answer")
            buf += chunk
    reply = json.loads(buf)
    return int(reply["rc"]), str(reply["out"])


def wait_agent(agent_port: int, timeout: float, pidfile: str | None = None) -> None:
    """Retry a no-op guest command until the agent answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if guest_exec(agent_port, "true", timeout=5)[0] == 0:
                return
        except (OSError, ValueError):
            pass
        if not pid_alive(pidfile):
            raise RuntimeError("qemu exited before the guest agent answered")
        time.sleep(0.25)
    raise TimeoutError(f"guest agent on {HOST}:{agent_port} did not answer within {timeout:g} s")


def listening_fds(pid: int, ports: set[int]) -> dict[int, int]:
    """PORT -> descriptor number in process PID of its socket listening on 127.0.0.1:PORT.

    Read from /proc/PID/net/tcp (the process's own network namespace) and
    /proc/PID/fd; a port with no such socket is missing from the result.
    """
    want = {f"{socket.htonl(0x7F000001):08X}:{port:04X}": port for port in ports}
    inodes: dict[str, int] = {}
    with open(f"/proc/{pid}/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[1] in want:  # 0A: TCP_LISTEN
                inodes[f"socket:[{fields[9]}]"] = want[fields[1]]
    found: dict[int, int] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:  # closed meanwhile
            continue
        if target in inodes:
            found[inodes[target]] = int(name)
    return found


def accept_queue(pid: int, port: int) -> int:
    """Connections the kernel has queued on process PID's 127.0.0.1:PORT listener
    that the process has not accepted yet (a listener's rx_queue in /proc/net/tcp)."""
    local = f"{socket.htonl(0x7F000001):08X}:{port:04X}"
    with open(f"/proc/{pid}/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[1] == local:
                return int(fields[4].split(":")[1], 16)
    raise OSError(f"process {pid} has no socket listening on {HOST}:{port}")


def widen_backlog(pid: int, ports: set[int], backlog: int) -> None:
    """Call listen(BACKLOG) on process PID's sockets listening on 127.0.0.1:PORTS.

    qemu's user networking (libslirp) listens on each host forward with a
    backlog of 1, so the host kernel queues at most two connections that qemu
    has not accepted yet; a burst of clients overflows that queue whenever
    qemu's main loop is slow (TCG under host load) and the kernel drops their
    SYNs and handshake ACKs, which TCP then retransmits with exponential
    backoff (1, 3, 7, 15 s ...): connections that stall for many seconds
    while the guest never sees them.  listen() on a socket that already
    listens only changes its backlog (capped by net.core.somaxconn), so a
    duplicate of qemu's descriptor (pidfd_getfd, Linux 5.6+, needs the right
    to ptrace qemu: its owner or root) is all this takes.  Raises OSError,
    with the reason, when a port has no listener in PID or a call fails.
    """
    fds = listening_fds(pid, ports)
    missing = sorted(ports - fds.keys())
    if missing:
        raise OSError(f"process {pid} has no socket listening on {HOST}:{missing}")
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        for port, target in sorted(fds.items()):
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, target, 0)
            if fd < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"pidfd_getfd(qemu fd {target} for port {port}): {os.strerror(err)}")
            with socket.socket(fileno=fd) as dup:  # closing the duplicate leaves qemu's open
                dup.listen(backlog)
    finally:
        os.close(pidfd)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    try:
        if cmd == "free-port":
            print(free_port())
        elif cmd == "wait-ready":
            print(wait_ready(int(args[0]), float(args[1]), args[2] if len(args) > 2 else None))
        elif cmd == "wait-agent":
            wait_agent(int(args[0]), float(args[1]), args[2] if len(args) > 2 else None)
        elif cmd == "widen-backlog":
            with open(args[0]) as f:
                pid = int(f.read().strip())
            widen_backlog(pid, {int(p) for p in args[2:]}, int(args[1]))
        elif cmd == "exec":
            rc, out = guest_exec(int(args[0]), " ".join(args[2:]), float(args[1]))
            sys.stdout.write(out)
            return rc if 0 <= rc < 256 else 124
        else:
            print(f"unknown command {cmd!r}", file=sys.stderr)
            return 2
    except (TimeoutError, RuntimeError, OSError, ValueError) as exc:
        print(f"vmctl: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# ---- CPU figures of a guest and of its qemu (the kernel/ benchmarks) --------


def guest_busy(agent_port: int) -> int:
    """Busy jiffies of the guest (all CPUs): user+nice+system+irq+softirq+steal."""
    _, out = guest_exec(agent_port, "head -n1 /proc/stat", 30)
    f = [int(x) for x in out.split()[1:]]
    return f[0] + f[1] + f[2] + f[5] + f[6] + f[7]


def qemu_cpu(pid: int) -> float:
    """CPU seconds (user+system) the host's qemu process pid has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_env(path: str | os.PathLike[str]) -> dict[str, str]:
    """KEY=VALUE lines of a shell env file such as vm.env (values may be double-quoted)."""
    env: dict[str, str] = {}
    with open(path) as f:
        for line in f.read().splitlines():
            key, sep, value = line.partition("=")
            if sep and key and not key.startswith("#"):
                env[key.strip()] = value.strip().strip('"')
    return env


def server_stats(port: int, groups: tuple[str, ...] = ("",)) -> dict[str, str]:
    """The STAT lines of the server on 127.0.0.1:port for each stats group
    ("" is plain "stats"), merged into one name -> value table."""
    ask = b"".join(b"stats" + (b" " + g.encode() if g else b"") + b"\r\n" for g in groups)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(ask)
        buf = b""
        while buf.count(b"END\r\n") < len(groups):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    out: dict[str, str] = {}
    for line in buf.decode().splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "STAT":
            out[parts[1]] = parts[2]
    return out
