#!/usr/bin/env bash
# deploy/run-vm.sh -- boot, drive and stop the test VM built by build-image.sh.
#
#   run-vm.sh start [STACKMAPD ARGS...]  boot in the background; return when stackmapd
#                                        in the guest answers "version" through the
#                                        forwarded port and the guest agent answers
#   run-vm.sh exec [-t SECONDS] CMD...   run CMD in the guest (sh -c), print its output,
#                                        exit with its status
#   run-vm.sh stop                       poweroff -f in the guest; kill qemu if needed
#   run-vm.sh status                     print the state file (ports, pid)
#
# The machine: qemu TCG (this host's /dev/kvm cannot run a stock kernel), one
# vCPU (faster than two under TCG here), 1 GiB, the uncompressed vmlinux booted
# through its PVH note, the disk in -snapshot mode so image.ext4 stays pristine.
# Network is qemu user networking with restrict=on (the guest reaches nothing
# outside) and exactly two forwards on the host's loopback:
#   127.0.0.1:SM_VM_PORT  -> guest 11211 (stackmapd)
#   127.0.0.1:SM_VM_AGENT -> guest 7000  (sm-agent)
# Ports are chosen free unless SM_VM_PORT / SM_VM_AGENT are set.  qemu listens
# on those forwards with a backlog of 1 (libslirp's listen(fd, 1)); right after
# boot the backlog is raised to FWD_BACKLOG (vmctl.py widen-backlog), else a
# burst of clients overflows the host's accept queue and stalls for seconds
# under load (see widen_backlog in vmctl.py).  State goes to build/vm/run/:
# vm.env (ports, pid, the forwards' backlog), console.log (the serial console).
# STACKMAPD ARGS default to "-l 0.0.0.0 -p 11211 --backend epoll"; they reach
# the guest's init as sm.args=a,b,c on the kernel command line.  SM_VM_APPEND
# adds kernel parameters (e.g. "slub_debug=FZPU sm.nomodule").
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VM=${SM_VM_DIR:-$ROOT/build/vm}
RUN=$VM/run
CTL="python3 $ROOT/deploy/vmctl.py"
BOOT_TIMEOUT=${SM_VM_BOOT_TIMEOUT:-180}
# listen() backlog for qemu's forwarded host ports: memcached's default, more
# than the largest burst of connections the VM tests open at once (100).
FWD_BACKLOG=1024

log() { echo "run-vm: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

load_state() {
    [ -f "$RUN/vm.env" ] || die "no VM state in $RUN (not started?)"
    # shellcheck disable=SC1091
    . "$RUN/vm.env"
}

qemu_alive() { [ -f "$RUN/qemu.pid" ] && kill -0 "$(cat "$RUN/qemu.pid")" 2>/dev/null; }

start() {
    local args port agent t0 t_ready version
    for f in vmlinux initrd.gz image.ext4; do
        [ -e "$VM/$f" ] || die "$VM/$f missing: run deploy/build-image.sh first"
    done
    if qemu_alive; then die "a VM is already running (pid $(cat "$RUN/qemu.pid")); run-vm.sh stop first"; fi
    mkdir -p "$RUN"
    rm -f "$RUN/qemu.pid" "$RUN/vm.env"
    if [ $# -gt 0 ]; then args=("$@"); else args=(-l 0.0.0.0 -p 11211 --backend epoll); fi
    local joined
    joined=$(IFS=,; echo "${args[*]}")
    case "$joined" in *' '* | *'"'*) die "stackmapd arguments cannot contain spaces or quotes: $joined" ;; esac
    port=${SM_VM_PORT:-$($CTL free-port)}
    agent=${SM_VM_AGENT:-$($CTL free-port)}
    [ "$port" != "$agent" ] || agent=$($CTL free-port)
    : >"$RUN/console.log"
    t0=$(date +%s.%N)
    qemu-system-x86_64 \
        -accel tcg -smp 1 -m 1024 \
        -kernel "$VM/vmlinux" -initrd "$VM/initrd.gz" \
        -append "console=ttyS0 panic=-1 loglevel=4 sm.args=$joined ${SM_VM_APPEND:-}" \
        -drive "file=$VM/image.ext4,format=raw,if=virtio" -snapshot \
        -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:11211,hostfwd=tcp:127.0.0.1:$agent-:7000" \
        -device virtio-net-pci,netdev=n0 \
        -display none -monitor none -serial "file:$RUN/console.log" -no-reboot \
        -daemonize -pidfile "$RUN/qemu.pid"
    cat >"$RUN/vm.env" <<EOF
SM_VM_PORT=$port
SM_VM_AGENT=$agent
SM_VM_PID=$(cat "$RUN/qemu.pid")
SM_VM_ARGS="${args[*]}"
SM_VM_CONSOLE=$RUN/console.log
EOF
    # libslirp's forwards listen with backlog 1; widen them before any client
    # connects.  Without this the VM still works, but bursts of connections
    # can stall under load: say so loudly and record it for the tests.
    local fwd_backlog=$FWD_BACKLOG
    if ! $CTL widen-backlog "$RUN/qemu.pid" "$FWD_BACKLOG" "$port" "$agent"; then
        log "WARNING: could not raise the backlog of qemu's forwarded ports (still 1):"
        log "  bursts of connections may stall for seconds under load"
        fwd_backlog=1
    fi
    echo "SM_VM_FWD_BACKLOG=$fwd_backlog" >>"$RUN/vm.env"
    log "qemu pid $(cat "$RUN/qemu.pid"); stackmapd -> 127.0.0.1:$port, agent -> 127.0.0.1:$agent"
    if ! version=$($CTL wait-ready "$port" "$BOOT_TIMEOUT" "$RUN/qemu.pid"); then
        log "last console lines:"
        tail -n 40 "$RUN/console.log" >&2
        stop || true
        die "the VM did not become ready"
    fi
    if ! $CTL wait-agent "$agent" 30 "$RUN/qemu.pid"; then
        tail -n 40 "$RUN/console.log" >&2
        stop || true
        die "the guest agent did not answer"
    fi
    t_ready=$(date +%s.%N)
    awk -v a="$t0" -v b="$t_ready" 'BEGIN { printf "%.1f\n", b - a }' >"$RUN/boot-seconds"
    echo "SM_VM_BOOT_SECONDS=$(cat "$RUN/boot-seconds")" >>"$RUN/vm.env"
    log "ready in $(cat "$RUN/boot-seconds") s: $version"
}

gexec() {
    local timeout=120
    if [ "${1:-}" = "-t" ]; then timeout=$2; shift 2; fi
    load_state
    $CTL exec "$SM_VM_AGENT" "$timeout" "$@"
}

stop() {
    local i
    [ -f "$RUN/qemu.pid" ] || { log "not running"; return 0; }
    if qemu_alive && [ -f "$RUN/vm.env" ]; then
        load_state
        # The agent's answer never comes: the guest is gone before it is sent.
        $CTL exec "$SM_VM_AGENT" 5 "sync; busybox poweroff -f" >/dev/null 2>&1 || true
    fi
    for i in $(seq 1 100); do
        qemu_alive || break
        sleep 0.1
    done
    if qemu_alive; then
        log "guest did not power off in 10 s: killing qemu"
        kill "$(cat "$RUN/qemu.pid")" 2>/dev/null || true
        sleep 1
    fi
    # No state file for a VM that is gone: its ports may be someone else's now.
    rm -f "$RUN/qemu.pid" "$RUN/vm.env"
    log "stopped"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    start) start "$@" ;;
    exec) gexec "$@" ;;
    stop) stop ;;
    status) load_state; cat "$RUN/vm.env"; qemu_alive && echo "running" || echo "not running" ;;
    *) sed -n '2,12p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
