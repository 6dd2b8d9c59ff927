#!/usr/bin/env bash
# deploy/build-image.sh -- build the stackmapd test VM from parts this repo owns.
#
# Output (all under build/vm/, which is gitignored):
#   vmlinux        Debian's 6.12 kernel, uncompressed (qemu boots it via PVH)
#   initrd.gz      busybox initramfs: loads virtio + ext4 modules, mounts /dev/vda
#   image.ext4     root filesystem: debootstrap minbase + python3, our package in
#                  /opt/stackmapd (a venv), our module and ringtest when built,
#                  /sbin/sm-init, the guest agent
#   vm.env         what run-vm.sh needs to know (kernel version, module present, ...)
#   timings.txt    seconds per step of the last run
#
# Every step is cached under a key made of its inputs' hashes, so a second run
# with nothing changed only hashes files (~1 s), and a change to the Python
# package rebuilds only the wheel and the disk image.  Run as root (debootstrap,
# chroot).  Usage: deploy/build-image.sh [--force]   (--force drops the caches
# of the image and initramfs, not the downloads or the debootstrap tree).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VM=${SM_VM_DIR:-$ROOT/build/vm}
GUEST=$ROOT/deploy/guest
# SUITE, MIRROR, hash_of, step (deploy/lib.sh)
. "$ROOT/deploy/lib.sh"
KMETA=${SM_KERNEL_META:-linux-image-6.12-amd64}
# Guest packages beyond minbase: the interpreter and venv for our package, ip
# for the network, insmod for our module, busybox for poweroff -f and friends,
# liburing2 for the core's uring backend (the wheel's extension links it).
# (libssl3, which tls.c links, comes with python3: libpython3.11-stdlib needs it.)
GUEST_PKGS=python3,python3-venv,iproute2,kmod,busybox-static,liburing2
# Modules the initramfs loads (with their modules.dep closure).  crc32c_generic
# is what ext4's metadata checksums ask the crypto API for; it is requested at
# mount time, when no modprobe exists yet, so it is loaded up front.  tls
# and the AEADs it asks the crypto API for (gcm + ghash for AES-GCM, aes and
# ctr are built in; chacha20poly1305) are kTLS, for -Z (stackmap_core/src/tls.c):
# the root filesystem has no /lib/modules tree for modprobe to find them in.
INITRD_MODULES="virtio_pci virtio_net virtio_blk ext4 crc32c_generic tls gcm ghash_generic chacha20poly1305 chacha_generic poly1305_generic"
HOST_PKGS="qemu-system-x86 debootstrap busybox-static cpio kmod e2fsprogs xz-utils zstd ca-certificates"

FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

mkdir -p "$VM"
TIMINGS=$VM/timings.txt
: >"$TIMINGS"

log() { echo "build-image: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }


[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it)"

# ---------------------------------------------------------------------------
# Host tools.
# ---------------------------------------------------------------------------
host_tools() {
    local p missing=""
    for p in $HOST_PKGS; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    log "apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $missing >/dev/null; }
}

# ---------------------------------------------------------------------------
# Kernel: resolve the version from the metapackage, download, extract vmlinux.
# ---------------------------------------------------------------------------
resolve_kernel() {
    local dep
    dep=$(apt-cache depends "$KMETA" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
    if [ -z "$dep" ]; then
        log "apt-get update (no $KMETA in the package lists)"
        apt-get update -q >/dev/null
        dep=$(apt-cache depends "$KMETA" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
    fi
    [ -n "$dep" ] || die "cannot resolve $KMETA to a kernel package"
    KPKG=$dep
    KVER=${dep#linux-image-}
    KPKGVER=$(apt-cache policy "$KPKG" | awk '/Candidate:/ {print $2}')
    KDIR=$VM/kernel/$KVER-$KPKGVER
    log "kernel $KVER (package $KPKG $KPKGVER)"
}

# extract_vmlinux BZIMAGE OUT: find the compressed payload inside a bzImage
# and decompress it to an ELF vmlinux (the approach of the kernel tree's
# scripts/extract-vmlinux, written here for the decompressors Debian uses).
extract_vmlinux() {
    local img=$1 out=$2 magic tool off
    for pair in "28b52ffd:unzstd" "fd377a585a00:unxz" "1f8b0800:gunzip" "5d000000:unlzma" "894c5a:lzop -d" \
                "02214c18:lz4 -d" "425a68:bunzip2"; do
        magic=${pair%%:*} tool=${pair#*:}
        command -v "${tool%% *}" >/dev/null || continue
        # Byte offsets of every occurrence of the magic, tried in order.
        for off in $(LC_ALL=C grep -obUaP "$(echo "$magic" | sed 's/../\\x&/g')" "$img" | cut -d: -f1); do
            tail -c "+$((off + 1))" "$img" | $tool -c 2>/dev/null >"$out.tmp" || true
            if [ "$(head -c 4 "$out.tmp" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
                mv "$out.tmp" "$out"
                log "vmlinux: $tool payload at offset $off"
                return 0
            fi
        done
    done
    rm -f "$out.tmp"
    return 1
}

kernel() {
    resolve_kernel
    if [ ! -f "$KDIR/.done" ]; then
        rm -rf "$KDIR"
        mkdir -p "$KDIR/deb"
        # (apt warns that _apt cannot write here and downloads as root: harmless)
        (cd "$KDIR/deb" && apt-get download -q "$KPKG=$KPKGVER" >"$VM/apt-download.log" 2>&1) \
            || { cat "$VM/apt-download.log" >&2; die "apt-get download $KPKG failed"; }
        dpkg -x "$KDIR"/deb/*.deb "$KDIR/root"
        rm -rf "$KDIR/deb"
        extract_vmlinux "$KDIR/root/boot/vmlinuz-$KVER" "$KDIR/vmlinux" || die "no ELF payload found in vmlinuz"
        depmod -b "$KDIR/root" "$KVER"
        touch "$KDIR/.done"
    fi
    ln -sfn "$KDIR/vmlinux" "$VM/vmlinux"
}

# ---------------------------------------------------------------------------
# Our module and ring test, by the kernel helper's kernel/build.sh.
# ---------------------------------------------------------------------------
MODULES_KO=()
RINGTEST=""
kmod_build() {
    local f out
    if [ "${SM_VM_SKIP_MODULE:-0}" = 1 ]; then
        log "SM_VM_SKIP_MODULE=1: image without our module"
        return 0
    fi
    if [ ! -f "$ROOT/kernel/build.sh" ]; then
        log "no kernel/build.sh yet: image without our module"
        return 0
    fi
    # Our own build directory, so that a developer's build/kernel is left alone;
    # rebuilt only when a file under kernel/ (or the kernel) changed.
    # build.sh prints the .ko's path on its last line.
    local key
    key=$(cd "$ROOT" && hash_of "$KVER" "$KPKGVER" $(find kernel -type f -not -name '*.o' -not -name '*.ko' | LC_ALL=C sort))
    if [ -f "$VM/kmod/.key" ] && [ "$(cat "$VM/kmod/.key")" = "$key" ] && [ -f "$(cat "$VM/kmod/.ko")" ]; then
        f=$(cat "$VM/kmod/.ko")
    else
        rm -rf "$VM/kmod"
        out=$(BUILD_DIR=$VM/kmod KVER=$KVER sh "$ROOT/kernel/build.sh") \
            || die "kernel/build.sh failed (SM_VM_SKIP_MODULE=1 builds the image without the module)"
        f=$(printf '%s\n' "$out" | tail -n 1)
        [ -f "$f" ] || die "kernel/build.sh did not name a module file (last line: $f)"
        echo "$f" >"$VM/kmod/.ko"
        echo "$key" >"$VM/kmod/.key"
    fi
    modinfo -F vermagic "$f" | grep -q "^$KVER " || die "$f was not built for $KVER: $(modinfo -F vermagic "$f")"
    MODULES_KO=("$f")
    # The ring-level test program: static, so it needs nothing from the guest.
    # Take a built one, or build kernel/test/ringtest.c ourselves.
    RINGTEST=$(find "$VM/kmod" "$ROOT/kernel/test" -maxdepth 2 -type f -name ringtest -perm -u+x 2>/dev/null | head -n1)
    if [ -z "$RINGTEST" ] && [ -f "$ROOT/kernel/test/ringtest.c" ]; then
        gcc -static -std=gnu11 -O2 -Wall -Wextra -Werror -pthread -I"$ROOT/kernel/include" \
            -o "$VM/kmod/ringtest" "$ROOT/kernel/test/ringtest.c" || die "building kernel/test/ringtest.c failed"
        RINGTEST=$VM/kmod/ringtest
    fi
    log "module: $f; ringtest: ${RINGTEST:-none}"
}

# ---------------------------------------------------------------------------
# Initramfs: busybox + the modules.dep closure of INITRD_MODULES.
# ---------------------------------------------------------------------------
initrd() {
    local key out work order
    key=$(hash_of "$KVER" "$KPKGVER" "$INITRD_MODULES" "$GUEST/initramfs-init" /bin/busybox)
    out=$VM/initrd-$key.gz
    if [ "$FORCE" = 1 ] || [ ! -f "$out" ]; then
        work=$VM/initrd-work
        rm -rf "$work"
        mkdir -p "$work"/{bin,lib/modules,proc,sys,dev,newroot}
        cp /bin/busybox "$work/bin/busybox"
        install -m 0755 "$GUEST/initramfs-init" "$work/init"
        # Dependency closure in load order: every module after its dependencies.
        order=$(python3 - "$KDIR/root/lib/modules/$KVER" $INITRD_MODULES <<'PY'
import sys, os
base, wanted = sys.argv[1], sys.argv[2:]
deps, byname = {}, {}
with open(os.path.join(base, "modules.dep")) as f:
    for line in f:
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        name = os.path.basename(path).split(".ko")[0].replace("-", "_")
        byname[name] = path
builtin = set()
with open(os.path.join(base, "modules.builtin")) as f:
    for line in f:
        builtin.add(os.path.basename(line.strip()).split(".ko")[0].replace("-", "_"))
order, seen = [], set()
def visit(path):
    if path in seen:
        return
    seen.add(path)
    for d in deps[path]:
        visit(d)
    order.append(path)
for w in wanted:
    if w in byname:
        visit(byname[w])
    elif w not in builtin:
        sys.exit(f"module {w} is neither a module nor built in")
print("\n".join(order))
PY
        )
        : >"$work/modules.order"
        local p name
        for p in $order; do
            name=$(basename "$p"); name=${name%%.ko*}
            case "$p" in
                *.ko.xz) xz -dc "$KDIR/root/lib/modules/$KVER/$p" >"$work/lib/modules/$name.ko" ;;
                *.ko.zst) zstd -qdc "$KDIR/root/lib/modules/$KVER/$p" >"$work/lib/modules/$name.ko" ;;
                *.ko.gz) gzip -dc "$KDIR/root/lib/modules/$KVER/$p" >"$work/lib/modules/$name.ko" ;;
                *) cp "$KDIR/root/lib/modules/$KVER/$p" "$work/lib/modules/$name.ko" ;;
            esac
            echo "$name" >>"$work/modules.order"
        done
        log "initramfs modules: $(tr '\n' ' ' <"$work/modules.order")"
        (cd "$work" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -1 >"$out.tmp"
        mv "$out.tmp" "$out"
        rm -rf "$work"
    fi
    ln -sfn "$out" "$VM/initrd.gz"
}

# ---------------------------------------------------------------------------
# Base root filesystem: debootstrap minbase + GUEST_PKGS, trimmed, cached.
# ---------------------------------------------------------------------------
rootfs_base() {
    BASE=$VM/rootfs-base-$(hash_of "$SUITE" "$MIRROR" "$GUEST_PKGS")
    [ -f "$BASE/.done" ] && return 0
    rm -rf "$BASE" "$BASE.tmp"
    log "debootstrap --variant=minbase $SUITE (+$GUEST_PKGS)"
    # One retry: a mirror hiccup should not cost a CI run.
    debootstrap --variant=minbase --include="$GUEST_PKGS" "$SUITE" "$BASE.tmp" "$MIRROR" >"$VM/debootstrap.log" 2>&1 \
        || { log "debootstrap failed, retrying once"; rm -rf "$BASE.tmp"; sleep 5;
             debootstrap --variant=minbase --include="$GUEST_PKGS" "$SUITE" "$BASE.tmp" "$MIRROR" \
                 >"$VM/debootstrap.log" 2>&1; } \
        || { tail -n 20 "$VM/debootstrap.log" >&2; die "debootstrap failed (log: $VM/debootstrap.log)"; }
    # Nothing in the VM reads docs, man pages, locales or apt's caches.
    rm -rf "$BASE.tmp"/usr/share/{doc,man,info,locale}/* "$BASE.tmp"/var/cache/apt/*.bin \
        "$BASE.tmp"/var/cache/apt/archives/*.deb "$BASE.tmp"/var/lib/apt/lists/*_Packages
    mv "$BASE.tmp" "$BASE"
    touch "$BASE/.done"
}

# ---------------------------------------------------------------------------
# Our package as wheels (host build; cp311 like the guest's python3).
# ---------------------------------------------------------------------------
WHEEL=""
wheels() {
    local src_key dir tag guest_tag
    src_key=$(cd "$ROOT" && hash_of pyproject.toml setup.py MANIFEST.in \
        $(find stackmap_core stackmapd kernel/include -type f \( -name '*.py' -o -name '*.c' -o -name '*.h' \) \
            -not -name '_stackmap_core*' 2>/dev/null | LC_ALL=C sort))
    dir=$VM/wheels-$src_key
    if [ ! -f "$dir/.done" ]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        # A clean copy of the tree so that the build does not leave build/ or
        # egg-info droppings in the checkout (and never sees build/vm).
        local src=$VM/wheel-src
        rm -rf "$src"
        mkdir -p "$src"
        (cd "$ROOT" && tar -cf - --exclude=./build --exclude=./.venv --exclude=./.git \
            --exclude='*.egg-info' --exclude=__pycache__ .) | tar -xf - -C "$src"
        python3 -m pip wheel -q "$src" -w "$dir" >"$VM/wheel.log" 2>&1 \
            || { tail -n 30 "$VM/wheel.log" >&2; rm -rf "$src"; die "pip wheel failed (log: $VM/wheel.log)"; }
        rm -rf "$src"
        touch "$dir/.done"
    fi
    WHEEL=$(ls "$dir"/stackmapd-*.whl)
    tag=$(basename "$WHEEL" .whl | cut -d- -f3-4)
    guest_tag=$(chroot "$BASE" /usr/bin/python3 -c 'import sys; v=sys.version_info; print(f"cp{v[0]}{v[1]}-cp{v[0]}{v[1]}")')
    [ "$tag" = "$guest_tag" ] || die "wheel is $tag, the guest's python3 is $guest_tag"
    WHEELDIR=$dir
    log "wheel $(basename "$WHEEL") matches the guest's $guest_tag"
}

# ---------------------------------------------------------------------------
# The disk image: base + venv + our files, made by mkfs.ext4 -d (no loop mount).
# ---------------------------------------------------------------------------
image() {
    local key stage f
    # The load-test harness and a static mcblast, for the in-guest backend comparison.
    mkdir -p "$VM/bench"
    gcc -static -std=c11 -O2 -Wall -Wextra -Werror -o "$VM/bench/mcblast" "$ROOT/loadtest/mcblast.c" -lm \
        || die "building a static mcblast failed"
    key=$(hash_of "$BASE" "$WHEELDIR"/*.whl "$GUEST/sm-init" "$GUEST/sm-agent" "$GUEST/sm-server" \
        "${MODULES_KO[@]}" ${RINGTEST:+"$RINGTEST"} "$VM/bench/mcblast" "$ROOT"/loadtest/*.py)
    if [ "$FORCE" = 0 ] && [ -f "$VM/image.key" ] && [ "$(cat "$VM/image.key")" = "$key" ] && [ -f "$VM/image.ext4" ]; then
        return 0
    fi
    stage=$VM/stage
    umount "$stage/proc" 2>/dev/null || true  # left mounted by an interrupted run
    rm -rf "$stage"
    cp -a "$BASE" "$stage"
    rm -f "$stage/.done"
    mkdir -p "$stage/tmp/wheels"
    cp "$WHEELDIR"/*.whl "$stage/tmp/wheels/"
    # The venv is made inside the guest's own tree, by the guest's python3, so
    # its paths and interpreter are the guest's.  No network: every wheel is local.
    mount -t proc proc "$stage/proc"
    trap 'umount "$VM/stage/proc" 2>/dev/null || true' EXIT
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$stage" /bin/sh -c '
        set -e
        python3 -m venv /opt/stackmapd
        /opt/stackmapd/bin/pip install -q --no-index --find-links /tmp/wheels --disable-pip-version-check stackmapd
        /opt/stackmapd/bin/stackmapd --version
    ' || die "installing the wheel in the guest venv failed"
    umount "$stage/proc"
    trap - EXIT
    rm -rf "$stage/tmp/wheels"
    install -m 0755 "$GUEST/sm-init" "$stage/sbin/sm-init"
    install -m 0755 "$GUEST/sm-agent" "$stage/usr/local/sbin/sm-agent"
    install -m 0755 "$GUEST/sm-server" "$stage/usr/local/sbin/sm-server"
    mkdir -p "$stage/lib/modules/stackmap"
    for f in "${MODULES_KO[@]}"; do install -m 0644 "$f" "$stage/lib/modules/stackmap/"; done
    [ -n "$RINGTEST" ] && install -m 0755 "$RINGTEST" "$stage/usr/local/bin/ringtest"
    install -m 0755 "$VM/bench/mcblast" "$stage/usr/local/bin/mcblast"
    mkdir -p "$stage/opt/loadtest/loadtest"
    install -m 0644 "$ROOT"/loadtest/*.py "$stage/opt/loadtest/loadtest/"
    echo stackmap-vm >"$stage/etc/hostname"
    rm -f "$VM/image.ext4.tmp"
    mkfs.ext4 -q -F -E root_owner=0:0 -L stackmap-root -d "$stage" "$VM/image.ext4.tmp" 1G >/dev/null
    mv "$VM/image.ext4.tmp" "$VM/image.ext4"
    echo "$key" >"$VM/image.key"
    rm -rf "$stage"
}

write_env() {
    {
        echo "KVER=$KVER"
        echo "KPKGVER=$KPKGVER"
        echo "MODULES=${#MODULES_KO[@]}"
        echo "RINGTEST=$([ -n "$RINGTEST" ] && echo 1 || echo 0)"
        echo "WHEEL=$(basename "$WHEEL")"
    } >"$VM/vm.env"
}

step host-tools host_tools
step kernel kernel
step module kmod_build
step initramfs initrd
step debootstrap rootfs_base
step wheel wheels
step image image
# Drop cache entries that no longer match their inputs.
prune() {
    local d
    for d in "$VM"/rootfs-base-* "$VM"/wheels-* "$VM"/initrd-*.gz; do
        case "$d" in "$BASE" | "$WHEELDIR" | "$(readlink "$VM/initrd.gz")") ;; *) rm -rf "$d" ;; esac
    done
    for d in "$VM"/kernel/*; do [ "$d" = "$KDIR" ] || rm -rf "$d"; done
}

write_env
prune
log "done: $VM/{vmlinux,initrd.gz,image.ext4}"
