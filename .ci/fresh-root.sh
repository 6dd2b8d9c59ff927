#!/usr/bin/env bash
# .ci/fresh-root.sh -- prove the README's two commands on a bare Debian 12.
#
# Why this exists: `make test` passing on a developer's machine proves only
# that the developer's machine has what the build needs.  It once lacked
# python3-dev in the Makefile's package list and nobody saw it, because every
# machine that ran the tests had it.  So CI runs the README's commands where
# nothing is installed but what the README assumes: a debootstrap minbase
# bookworm root with python3, python3-venv, python3-pip, git, make and
# ca-certificates, Debian 12's standard apt sources (bookworm,
# bookworm-updates, bookworm-security), nothing else.
#
#   1. The pristine root is built once and cached as a tarball keyed by the
#      suite, mirror and package list ($SM_FRESH_CACHE, default
#      /var/cache/stackmapd).  The tarball is never modified: every run
#      unpacks it into a scratch directory ($SM_FRESH_WORK, default /var/tmp)
#      and deletes that directory at the end.
#   2. The repository's HEAD commit (committed work only) is cloned into the
#      scratch root as /root/stackmapd.
#   3. /proc, /sys, /dev, /dev/pts and /dev/shm are mounted, resolv.conf is
#      copied, and `make test` runs inside as root (its apt-get installs what
#      is missing; the test VM boots under qemu from inside the root).
#   4. `make run` is started inside, 127.0.0.1:11211 must answer `version`,
#      then it is stopped.  The root shares the host's network namespace, so
#      the port must be free on the host; if it is not, this fails saying so.
#
# Two things are added to the unpacked root, both what any chroot or
# container needs and neither a build dependency: /usr/sbin/policy-rc.d
# (exit 101, so that installing memcached or prometheus does not start their
# daemons on the host's loopback ports) and a bind mount of
# $SM_FRESH_CACHE/apt-archives on /var/cache/apt/archives (downloaded .debs
# only; the package lists are fetched fresh by every run), and likewise
# $SM_FRESH_CACHE/kernels, /ccache and /sources on /var/cache/stackmapd/ (our
# built kernels, see kernel/README.md; memcached's source for its t/ suite).
#
# Usage (as root):  .ci/fresh-root.sh [REPO]     REPO defaults to this checkout
# Exit status: 0 when both commands worked, else the first failure's status.
set -euo pipefail

REPO=$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)
# SUITE, MIRROR, SECURITY_MIRROR, debian_sources (deploy/lib.sh)
. "$REPO/deploy/lib.sh"
# What the README assumes a user already has (and nothing else).
PKGS=python3,python3-venv,python3-pip,git,make,ca-certificates
CACHE=${SM_FRESH_CACHE:-/var/cache/stackmapd}
WORK=${SM_FRESH_WORK:-/var/tmp}
PORT=11211
RUN_TIMEOUT=${SM_FRESH_RUN_TIMEOUT:-300}   # seconds for `make run` to answer

log() { printf 'fresh-root: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
t_start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t_start )) s"; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mounts need it)"
git -C "$REPO" rev-parse --verify -q HEAD >/dev/null || die "$REPO is not a git checkout with a commit"
COMMIT=$(git -C "$REPO" rev-parse HEAD)

host_tool() {  # host_tool COMMAND PACKAGE: install PACKAGE when COMMAND is missing
    command -v "$1" >/dev/null && return 0
    log "apt-get install $2 (host)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null; }
}
host_tool debootstrap debootstrap

# ---------------------------------------------------------------------------
# 1. The pristine root, cached.
# ---------------------------------------------------------------------------
KEY=$(printf '%s\n' "v1" "$SUITE" minbase "$MIRROR" "$SECURITY_MIRROR" "$PKGS" | sha256sum | cut -c1-16)
TARBALL=$CACHE/fresh-root-$SUITE-$KEY.tar
mkdir -p "$CACHE" "$CACHE/apt-archives/partial"

build_root() {
    local tmp=$CACHE/build-$KEY.$$
    rm -rf "$tmp"
    log "debootstrap --variant=minbase --include=$PKGS $SUITE $MIRROR (cached afterwards as $TARBALL)"
    debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -n 20 "$CACHE/debootstrap.log" >&2; rm -rf "$tmp"; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
    debian_sources "$tmp"
    chroot "$tmp" apt-get clean
    rm -rf "$tmp"/var/lib/apt/lists/*
    tar -C "$tmp" -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$tmp"
}

exec 9>"$CACHE/.lock"
flock 9
[ -f "$TARBALL" ] || build_root
flock -u 9
log "pristine root: $TARBALL ($(elapsed))"

# ---------------------------------------------------------------------------
# 2. A scratch copy, the commit cloned into it, the mounts.
# ---------------------------------------------------------------------------
SCRATCH=$(mktemp -d "$WORK/stackmapd-fresh.XXXXXX")
R=$SCRATCH/root
MOUNTS=()
RUN_PID=""

# Anything still running with its root in the scratch root was started by
# this script (make test, a VM's qemu, make run): stop it by pid.
kill_root_procs() {
    local p pids=""
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$R" ] && pids="$pids ${p#/proc/}"
    done
    [ -z "$pids" ] && return 0
    log "stopping processes left in the root:$pids"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    sleep 2
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
}

cleanup() {
    local rc=$? i
    set +e
    if [ -n "$RUN_PID" ]; then kill -TERM -- "-$RUN_PID" 2>/dev/null; fi
    kill_root_procs
    for (( i=${#MOUNTS[@]}-1; i>=0; i-- )); do
        umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" || log "cannot unmount ${MOUNTS[$i]}"
    done
    # Never delete through a mount point: only remove the tree when nothing
    # under it is mounted any more.
    if grep -q " $SCRATCH/" /proc/self/mounts; then
        log "mounts remain under $SCRATCH; leaving it in place"
    elif [ "${SM_FRESH_KEEP:-0}" = 1 ]; then
        log "SM_FRESH_KEEP=1: scratch root kept at $R"
    else
        rm -rf "$SCRATCH"
    fi
    log "done in $(elapsed), exit status $rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# This machine's network, not a build dependency: CAs the host trusts that
# Debian's bundle lacks (e.g. a TLS-intercepting proxy's) are added to the
# root's store the Debian way, so apt, pip and git reach the network as they
# do on the host.  Nothing is added when the host trusts only Debian's CAs.
add_host_cas() {
    local host=/etc/ssl/certs/ca-certificates.crt dir=$R/usr/local/share/ca-certificates/fresh-root-host n
    [ -f "$host" ] || return 0
    mkdir -p "$dir"
    awk -v dir="$dir" -v known="$R/etc/ssl/certs/ca-certificates.crt" '
        BEGIN {
            while ((getline line < known) > 0) {
                if (line ~ /BEGIN CERTIFICATE/) cur = ""
                cur = cur line "\n"
                if (line ~ /END CERTIFICATE/) seen[cur] = 1
            }
        }
        /BEGIN CERTIFICATE/ { cur = ""; incert = 1 }
        incert { cur = cur $0 "\n" }
        /END CERTIFICATE/ {
            incert = 0
            if (!(cur in seen)) { n++; f = dir "/host-" n ".crt"; printf "%s", cur > f; close(f) }
        }' "$host"
    n=$(find "$dir" -name '*.crt' | wc -l)
    if [ "$n" = 0 ]; then rmdir "$dir"; return 0; fi
    log "adding $n CA certificate(s) the host trusts beyond Debian's to the root's store"
    chroot "$R" update-ca-certificates >/dev/null
}

mkdir "$R"
tar -C "$R" -xpf "$TARBALL"
printf '#!/bin/sh\n# fresh-root.sh: no daemons start inside this chroot\nexit 101\n' >"$R/usr/sbin/policy-rc.d"
chmod 0755 "$R/usr/sbin/policy-rc.d"
cp -L /etc/resolv.conf "$R/etc/resolv.conf"
add_host_cas
git clone -q --no-hardlinks --no-checkout "$REPO" "$R/root/stackmapd"
git -C "$R/root/stackmapd" checkout -q --detach "$COMMIT"
log "cloned $COMMIT into $R/root/stackmapd ($(elapsed))"

mnt() {  # mnt TARGET MOUNT-ARGS...: mount and remember for the cleanup
    local target=$R$1
    shift
    mkdir -p "$target"
    mount "$@" "$target"
    MOUNTS+=("$target")
}
# The root is a mount point of its own, as a real machine's / is: buildah
# (tests/test_container.py) makes / a private mount before it applies a
# layer, which fails with EINVAL when / is only a directory.
mnt / --bind "$R"
mnt /proc -t proc proc
mnt /sys --bind /sys
mnt /dev --bind /dev
mnt /dev/pts --bind /dev/pts
mnt /dev/shm -t tmpfs -o mode=1777 shm
mnt /var/cache/apt/archives --bind "$CACHE/apt-archives"
# Our kernels (kernel/build-kernel.sh) and their ccache: a cache like the
# .debs above, so that only the first CI run pays the kernel builds.
mkdir -p "$CACHE/kernels" "$CACHE/ccache"
mnt /var/cache/stackmapd/kernels --bind "$CACHE/kernels"
mnt /var/cache/stackmapd/ccache --bind "$CACHE/ccache"
# memcached's source tarball for its t/ suite (tests/mcsuite/setup.sh
# checks its pinned sha256 at every use, so a bad file is fetched again).
mkdir -p "$CACHE/sources"
mnt /var/cache/stackmapd/sources --bind "$CACHE/sources"

# in_root COMMAND: run a shell command in the checkout inside the root, with
# the environment a root login on a fresh machine has (plus CI=true).
in_root() {
    chroot "$R" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb CI=true \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /bin/bash -c "cd /root/stackmapd && $1" </dev/null
}

# ---------------------------------------------------------------------------
# 3. make test.
# ---------------------------------------------------------------------------
log "make test (in the fresh root)"
t0=$(date +%s)
in_root "make test" || { rc=$?; log "make test FAILED (exit $rc) in the fresh root"; exit "$rc"; }
log "make test passed in the fresh root ($(( $(date +%s) - t0 )) s)"

# ---------------------------------------------------------------------------
# 4. make run: serves on 127.0.0.1:11211, answers `version`, stops.
# ---------------------------------------------------------------------------
# alive PID: the process exists and is not a zombie (kill -0 succeeds on both).
alive() {
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) && [ -n "$st" ] && [ "$st" != Z ]
}
# version_reply: the first line 127.0.0.1:$PORT answers to `version`, or fail.
version_reply() {
    local line
    exec 3<>"/dev/tcp/127.0.0.1/$PORT" || return 1
    printf 'version\r\n' >&3
    IFS= read -r -t 5 line <&3 || { exec 3<&-; return 1; }
    exec 3<&-
    printf '%s\n' "${line%$'\r'}"
}
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "127.0.0.1:$PORT is already in use on this machine (the root shares its network namespace), so \`make run\` cannot be checked; stop what listens there"
fi
log "make run (in the fresh root)"
setsid chroot "$R" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb CI=true \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c "cd /root/stackmapd && exec make run" </dev/null >"$SCRATCH/make-run.log" 2>&1 &
RUN_PID=$!
reply=""
for (( i=0; i<RUN_TIMEOUT; i++ )); do
    alive "$RUN_PID" || { cat "$SCRATCH/make-run.log" >&2; die "make run exited before serving 127.0.0.1:$PORT"; }
    reply=$(version_reply 2>/dev/null) && break
    sleep 1
done
[ -n "$reply" ] || { cat "$SCRATCH/make-run.log" >&2; die "make run did not answer on 127.0.0.1:$PORT within $RUN_TIMEOUT s"; }
case "$reply" in
    "VERSION "*) log "make run serves 127.0.0.1:$PORT: $reply" ;;
    *) die "127.0.0.1:$PORT answered \`version\` with: $reply" ;;
esac
kill -TERM -- "-$RUN_PID"
for (( i=0; i<30; i++ )); do alive "$RUN_PID" || break; sleep 1; done
if alive "$RUN_PID"; then die "make run did not stop within 30 s of SIGTERM"; fi
RUN_PID=""
log "make run stopped; both README commands work on a fresh Debian 12 ($(elapsed))"
