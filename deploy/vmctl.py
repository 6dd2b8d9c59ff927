#!/usr/bin/env python3
"""Host side of the test VM's control: readiness, guest commands, free ports.

deploy/run-vm.sh calls this (standard library only, any python3 >= 3.9):

  vmctl.py free-port                          print a free TCP port on 127.0.0.1
  vmctl.py wait-ready PORT TIMEOUT [PIDFILE]  wait for "version" -> "VERSION ..." on
                                              127.0.0.1:PORT; fail early if qemu
                                              (PIDFILE) exits
  vmctl.py exec AGENTPORT TIMEOUT CMD         run CMD in the guest through sm-agent,
                                              print its output, exit with its status

Readiness is an application round trip because qemu's user-network forwarder
accepts the host's connection before anything listens in the guest: a bare
connect() proves nothing.  Tests import ``memcached_version`` and ``guest_exec``
from here instead of repeating the protocol.  Every address used is 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

HOST = "127.0.0.1"


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
        elif cmd == "exec":
            rc, out = guest_exec(int(args[0]), " ".join(args[2:]), float(args[1]))
            sys.stdout.write(out)
            return rc if 0 <= rc < 256 else 124
        else:
            print(f"unknown command {cmd!r}", file=sys.stderr)
            return 2
    except (TimeoutError, RuntimeError, OSError) as exc:
        print(f"vmctl: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
