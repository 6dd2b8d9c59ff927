#!/usr/bin/env python3
"""`make vm-test`: build what is missing, boot the test VM, test, power off, report.

Steps, each timed:
  1. deploy/build-image.sh (cached: seconds when nothing changed)
  2. deploy/run-vm.sh start  -- boot to "stackmapd answers through the forward"
  3. for each backend: (re)start the guest's stackmapd with --backend B through
     the guest agent, then pytest tests/vm/test_vm.py with SM_VM_BACKEND=B and
     SM_VM_REQUIRED=1 (a missing VM is a failure there, not a skip)
  4. once: pytest tests/vm/test_vm_kernel.py (module, in-guest ringtest, and
     last the guest kernel log, which by then covers every run above)
  5. deploy/run-vm.sh stop   -- poweroff -f in the guest
and finally a summary of what was proved, per backend, with the timings.

--bench (`make vm-bench`) runs, instead of steps 3 and 4, the in-guest backend
comparison: a benchmark that proves nothing, so `make vm-test` leaves it out.

Backends: --backends a,b or $SM_VM_BACKENDS; default "auto" = epoll, plus
stackmap when /dev/stackmap exists in the guest (i.e. the module loaded).  Exit status 0 only if every pytest run
passed.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploy"))

import vmctl  # noqa: E402

VM_DIR = Path(os.environ.get("SM_VM_DIR", REPO / "build" / "vm"))
RUN = VM_DIR / "run"
RUN_VM = ["bash", str(REPO / "deploy" / "run-vm.sh")]
SERVER_TESTS = REPO / "tests" / "vm" / "test_vm.py"
KERNEL_TESTS = REPO / "tests" / "vm" / "test_vm_kernel.py"
SERVER_ARGS = ["-l", "0.0.0.0", "-p", "11211"]



def timed(label: str, timings: list[tuple[str, float]], cmd: list[str], **kw: object) -> int:
    """Run CMD (output straight through), record its wall time under LABEL."""
    print(f"\n==> {label}: {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    rc = subprocess.run(cmd, **kw).returncode  # type: ignore[call-overload]
    timings.append((label, time.monotonic() - t0))
    return rc


def describe_tests() -> dict[str, str]:
    """test function name -> first line of its docstring (what it proves)."""
    docs = {}
    for path in (SERVER_TESTS, KERNEL_TESTS):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                doc = ast.get_docstring(node) or node.name
                docs[node.name] = doc.splitlines()[0]
    return docs


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-")


def run_pytest(label: str, backend: str, flag: str, tests: Path, timings: list[tuple[str, float]]) -> int:
    """pytest on TESTS against the running VM (its stackmapd started with
    --backend FLAG); junit XML goes to build/vm/run/."""
    junit = RUN / f"junit-{slug(label)}.xml"
    junit.unlink(missing_ok=True)
    env = dict(os.environ, SM_VM_BACKEND=backend, SM_VM_REQUIRED="1", SM_VM_STATE=str(RUN / "vm.env"),
               SM_VM_SERVER_ARGS=" ".join([*SERVER_ARGS, "--backend", flag]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "--durations=5", "-p", "no:cacheprovider",
           f"--junitxml={junit}", str(tests)]
    return timed(label, timings, cmd, env=env, cwd=REPO)


def junit_results(path: Path) -> list[tuple[str, str, str]]:
    """(test name, outcome, message) for each test case in a pytest junit file."""
    out: list[tuple[str, str, str]] = []
    if not path.exists():
        return out
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, msg = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
                msg = (el.get("message") or "").splitlines()[0][:110] if el.get("message") else ""
                break
        out.append((case.get("name", "?"), outcome, msg))
    return out


def choose_backends(requested: str, agent: int) -> list[tuple[str, str]]:
    """(backend expected in ``stats``, value given to --backend) for each run.

    "stackmap" is asked for by name when the guest package's BACKENDS lists it,
    else through "auto" (which prefers stackmap when /dev/stackmap exists); the
    server tests then check that ``stats`` really reports stackmap.
    """
    rc, out = vmctl.guest_exec(agent, "/opt/stackmapd/bin/python -c "
                                      "'import stackmap_core; print(\" \".join(stackmap_core.BACKENDS))'", 60)
    known = out.split() if rc == 0 else []
    if requested == "auto":
        names = ["epoll", "uring"]
        if vmctl.guest_exec(agent, "test -c /dev/stackmap", 30)[0] == 0:
            names.append("stackmap")
    else:
        names = [b.strip() for b in requested.split(",") if b.strip()]
    return [(name, name if name in known or name != "stackmap" else "auto") for name in names]


# The in-guest comparison: the load-test harness (copied to /opt/loadtest with a
# static mcblast) runs every backend on the guest's own loopback, one vCPU,
# alternated and repeated.  Emulated (TCG): only the ratios mean anything.
COMPARE = (
    "cd /opt/loadtest && /opt/stackmapd/bin/python -m loadtest --generator mcblast"
    " --mcblast /usr/local/bin/mcblast --stackmapd /opt/stackmapd/bin/stackmapd"
    " --targets {targets} --baseline stackmapd-uring --values 64 --concurrency 16 --depth {depth}"
    " --duration 4 --warmup 1 --keys 2000 --reps 3 --pin same --ready-timeout 60 --markdown"
)


def compare_backends(agent: int, backends: list[str], timings: list[tuple[str, float]]) -> int:
    """Print the harness's table for the backends this VM has; 0 if every run worked."""
    targets = ",".join(f"stackmapd-{b}" for b in backends)
    status = 0
    for depth in (1, 8):
        t0 = time.monotonic()
        rc, out = vmctl.guest_exec(agent, COMPARE.format(targets=targets, depth=depth), 900)
        timings.append((f"in-guest compare d={depth}", time.monotonic() - t0))
        print(f"\n--- in-guest backend comparison (emulated: ratios only), mcblast 16 x {depth} ---")
        print(out if rc == 0 else f"(failed, exit {rc})\n{out}")
        if rc != 0:
            status = 1
    return status


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default=os.environ.get("SM_VM_BACKENDS", "auto"))
    ap.add_argument("--no-build", action="store_true", help="use the image as it is")
    ap.add_argument("--keep", action="store_true", help="leave the VM running afterwards")
    ap.add_argument("--bench", action="store_true",
                    help="run only the in-guest backend comparison (make vm-bench), no tests")
    opts = ap.parse_args()

    timings: list[tuple[str, float]] = []
    t_start = time.monotonic()
    if not opts.no_build:
        if timed("build image", timings, ["bash", str(REPO / "deploy" / "build-image.sh")]) != 0:
            print("vm-test: image build failed", file=sys.stderr)
            return 1
    # Boot with epoll (every build has it); each run below restarts the server
    # with its own backend through the guest agent.
    first = "epoll"
    if timed("boot to ready", timings, [*RUN_VM, "start", *SERVER_ARGS, "--backend", first]) != 0:
        print("vm-test: the VM did not boot", file=sys.stderr)
        return 1

    results: dict[str, list[tuple[str, str, str]]] = {}
    rcs: dict[str, int] = {}
    image = vmctl.read_env(VM_DIR / "vm.env")
    fwd_backlog = "?"
    try:
        state = vmctl.read_env(RUN / "vm.env")
        fwd_backlog = state.get("SM_VM_FWD_BACKLOG", "1")
        port, agent = int(state["SM_VM_PORT"]), int(state["SM_VM_AGENT"])
        backends = choose_backends(opts.backends, agent)
        if opts.bench:
            label = "in-guest backend comparison"
            rcs[label] = compare_backends(agent, [b for b, _ in backends], timings)
            results[label] = [("python -m loadtest --generator mcblast", "passed" if rcs[label] == 0 else "failed", "")]
        current = first
        for backend, flag in [] if opts.bench else backends:
            if flag != current:
                rc, out = vmctl.guest_exec(agent, "sm-server " + " ".join([*SERVER_ARGS, "--backend", flag]), 60)
                if rc != 0:
                    print(out)
                current = flag
            label = f"server tests ({backend}{'' if flag == backend else ', via --backend ' + flag})"
            try:
                vmctl.wait_ready(port, 60)
            except (TimeoutError, RuntimeError) as exc:
                log = vmctl.guest_exec(agent, "tail -n 30 /run/stackmapd.log", 30)[1]
                print(f"vm-test: stackmapd --backend {flag} did not come up: {exc}\n{log}")
                rcs[label] = 1
                results[label] = [("server start", "ERROR", f"stackmapd --backend {flag} did not answer")]
                continue
            rcs[label] = run_pytest(label, backend, flag, SERVER_TESTS, timings)
            results[label] = junit_results(RUN / f"junit-{slug(label)}.xml")
        if not opts.bench:
            label = "kernel module + log"
            last = backends[-1] if backends else (first, first)
            rcs[label] = run_pytest(label, last[0], last[1], KERNEL_TESTS, timings)
            results[label] = junit_results(RUN / f"junit-{slug(label)}.xml")
    finally:
        if not opts.keep:
            timed("power off", timings, [*RUN_VM, "stop"])
    total = time.monotonic() - t_start

    docs = describe_tests()
    print("\n" + "=" * 78)
    print("vm-test summary")
    print(f"  guest kernel  : Debian linux-image-{image.get('KVER')} ({image.get('KPKGVER')}), qemu TCG, 1 vCPU")
    print(f"  our module    : {'stackmap.ko in the image' if image.get('MODULES', '0') != '0' else 'not built'}; "
          f"ringtest: {'yes' if image.get('RINGTEST') == '1' else 'not present'}")
    print(f"  package       : {image.get('WHEEL')} in /opt/stackmapd (guest venv)")
    print(f"  forwards      : 127.0.0.1 -> guest through qemu user networking, listen backlog {fwd_backlog}"
          f"{'' if fwd_backlog != '1' else ' (libslirp default: bursts may stall, see run-vm.sh)'}")
    for label, cases in results.items():
        npass = sum(1 for _, o, _ in cases if o == "passed")
        nskip = sum(1 for _, o, _ in cases if o == "skipped")
        nfail = len(cases) - npass - nskip
        print(f"\n  {label}: {npass} passed, {nfail} failed, {nskip} skipped")
        for name, outcome, msg in cases:
            line = f"    [{outcome:7}] {docs.get(name, name)}"
            print(line + (f"  -- {msg}" if outcome != "passed" and msg else ""))
    print("\n  timings:")
    build_steps = VM_DIR / "timings.txt"
    if not opts.no_build and build_steps.exists():
        steps = ", ".join(" ".join(line.split()) for line in build_steps.read_text().splitlines())
        print(f"    (build steps: {steps})")
    for label, secs in timings:
        print(f"    {label:22} {secs:7.1f} s")
    print(f"    {'total':22} {total:7.1f} s")
    ok = bool(results) and all(rc == 0 for rc in rcs.values())
    print(f"\n{'vm-bench' if opts.bench else 'vm-test'}: {'PASSED' if ok else 'FAILED'}")
    print("=" * 78)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
