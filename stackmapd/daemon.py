"""memcached's process flags: -d (daemon), -P (pid file), -u (user), -r (core files).

Why a module of its own: these flags change the process, not the engine,
and their order matters.  memcached's order is kept where it matters to a
user, and the one place stackmapd differs is said here and in the README:

- ``-r`` raises the core file limit first (soft and hard to unlimited, else
  the soft limit to the hard one), as memcached does; a limit still 0
  afterwards is an error (exit 71).
- ``-u USER`` is looked up before anything starts (an unknown user exits 67,
  EX_NOUSER, as memcached), and applied after the engine has bound its
  listeners and every worker has opened its ring (``/dev/stackmap`` for the
  stackmap backend): supplementary groups, then the group, then the user.
  glibc applies setuid/setgid to every thread of the process, so the worker
  threads drop too.  Not root: ``-u`` is ignored, as memcached ignores it.
  Root without ``-u``: memcached refuses to start; stackmapd keeps running as
  root (containers, the test VM and ``make test`` run it so, and the systemd
  unit sets ``User=``) and says so once at ``-v``.
- ``-d`` forks before the engine starts (a process with running worker
  threads cannot fork them), but the parent does not exit until the child
  has bound its listeners and started: it waits on a pipe, and exits 0 once
  the child says it serves, or with the child's own status when the child
  fails.  Until then the child's stderr is still the terminal, so every
  start-up error is seen there.  Then the child detaches: a new session,
  stdin/stdout/stderr on /dev/null (kept with ``-v``, as memcached keeps
  them when verbose).  It keeps its working directory, unlike memcached's
  chdir("/"), so relative ``--snapshot`` paths keep meaning what they meant.
- ``-P FILE`` is written once the listeners are open (with ``-d``: the
  daemon's pid, before privileges are dropped, so /run works) and removed at
  a clean exit when the (possibly dropped) user may.  A pid file that cannot
  be written is an error (exit 73, EX_CANTCREAT): memcached only prints it,
  but a supervisor reading the file would then watch nothing.
"""

from __future__ import annotations

import os
import pwd
import resource
import sys
from dataclasses import dataclass

EX_NOUSER = 67
EX_OSERR = 71
EX_CANTCREAT = 73


class ProcessError(Exception):
    """A process flag that cannot be honoured: the message, and memcached's exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ProcessFlags:
    """-d, -P, -u and -r as given (None / False: not given)."""

    daemon: bool = False
    pidfile: str | None = None
    user: str | None = None
    enable_coredumps: bool = False


def lookup_user(name: str) -> pwd.struct_passwd:
    """The password entry of -u's user; ProcessError (67) when there is none."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ProcessError(f"can't find the user {name} to switch to", EX_NOUSER) from None


def raise_core_limit() -> None:
    """-r: the core file limit to unlimited, else up to the hard limit; ProcessError when still 0."""
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
        except (ValueError, OSError):
            pass
    if resource.getrlimit(resource.RLIMIT_CORE)[0] == 0:
        raise ProcessError("failed to ensure corefile creation", EX_OSERR)


def drop_privileges(user: pwd.struct_passwd) -> None:
    """Become ``user`` (groups, group, then user); ProcessError (71) when the kernel says no."""
    try:
        os.initgroups(user.pw_name, user.pw_gid)
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    except OSError as exc:
        raise ProcessError(f"failed to assume identity of user {user.pw_name}: {exc.strerror}",
                           EX_OSERR) from None


def running_as_root() -> bool:
    return os.getuid() == 0 or os.geteuid() == 0


def write_pidfile(path: str) -> None:
    """This process's pid into ``path`` (replaced atomically); ProcessError (73) when it cannot be."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="ascii") as out:
            out.write(f"{os.getpid()}\n")
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ProcessError(f"could not open the pid file {path} for writing: {exc.strerror}",
                           EX_CANTCREAT) from None


def remove_pidfile(path: str) -> str | None:
    """Remove the pid file if it is still ours; the reason when it could not be."""
    try:
        with open(path, encoding="ascii") as inp:
            if inp.read().strip() != str(os.getpid()):
                return None  # another process's now: leave it
        os.unlink(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


class Detacher:
    """-d: fork now; the parent waits until the child calls ready() (or dies).

    ``start()`` returns None in the child (go on starting the server) and the
    exit status in the parent (0 once the child serves, else the child's own).
    """

    def __init__(self) -> None:
        self._write_fd = -1

    def start(self) -> int | None:
        sys.stdout.flush()
        sys.stderr.flush()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            self._write_fd = write_fd
            os.setsid()
            return None
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            said = pipe.read(1)
        if said == b"1":
            return 0
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        return code if code > 0 else EX_OSERR

    def ready(self, verbose: int) -> None:
        """In the child, once serving: release the parent, then leave the terminal."""
        if self._write_fd < 0:
            return
        os.write(self._write_fd, b"1")
        os.close(self._write_fd)
        self._write_fd = -1
        if verbose > 0:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if null > 2:
            os.close(null)
