#!/usr/bin/env bash
# deploy/appliance/build.sh -- build the stackmapd appliance disk image.
#
# Why this exists: deploy/build-image.sh builds a test rig (a kernel booted
# with qemu -kernel, a busybox init, a command agent).  This builds the
# product: a GPT disk that boots by itself, under UEFI or BIOS, with GRUB,
# systemd, our kernel module loaded at boot and stackmapd as a hardened
# service that keeps its cache across reboots.  See deploy/appliance/README.md.
#
# Output: build/stackmapd-appliance.qcow2 (SM_APPLIANCE_OUT overrides it).
# The disk:
#   1  bios_grub   1 MiB   GRUB's BIOS core image (no filesystem)
#   2  ESP        64 MiB   FAT32: EFI/BOOT/BOOTX64.EFI (GRUB, standalone)
#   3  root      ~1.5 GiB  ext4 labelled stackmapd-root: Debian 12 + systemd,
#                          the kernel, /boot/grub/grub.cfg, stackmapd in /opt
# Nothing is loop-mounted: the filesystems are made from directories
# (mkfs.ext4 -d, mkfs.vfat -C + mtools), the partitions are copied into a raw
# file laid out by sgdisk, and GRUB's BIOS boot sector is patched in by hand
# (what grub-bios-setup would do; see bios_boot below).
#
# Caches (build/appliance/, keyed by their inputs' hashes; apt downloads in
# /var/cache/stackmapd/apt-archives, shared with .ci/fresh-root.sh):
#   rootfs-KIND-KEY/  debootstrap + systemd (+ Debian's kernel and initramfs): ~3-4 min
#                 once per kernel kind (debian, appliance)
#   image.key     the inputs of the last image: unchanged -> nothing is done
# Kernel (SM_APPLIANCE_KERNEL): ours (the default) runs `kernel/build-kernel.sh
# appliance` (cached outside the checkout) and takes its directory: our
# patched kernel, no initramfs, everything built in, our module built
# against it; DIR (any directory with bzImage and stackmap.ko) likewise;
# debian takes Debian's linux-image-6.12-amd64 (with its initramfs) and our
# module built against its headers by kernel/build.sh.
# Run as root (debootstrap, chroot).  Heavy steps run under nice -n 10.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/deploy/appliance
WORK=${SM_APPLIANCE_DIR:-$ROOT/build/appliance}
OUT=${SM_APPLIANCE_OUT:-$ROOT/build/stackmapd-appliance.qcow2}
APTCACHE=${SM_APT_ARCHIVES:-/var/cache/stackmapd/apt-archives}
# SUITE, MIRROR, SECURITY_MIRROR, hash_of, step (deploy/lib.sh)
. "$ROOT/deploy/lib.sh"
# The userland: systemd as init, udev, dbus (logind wants it), kmod for
# modules-load.d, e2fsprogs for the root fsck at boot, python3 + venv for stackmapd, python3-yaml for the NoCloud
# seed's user-data, liburing2 for the uring backend, iproute2 for the operator.
PKGS=systemd,systemd-sysv,udev,dbus,kmod,e2fsprogs,python3,python3-venv,python3-yaml,liburing2,iproute2
# Modules the Debian kernel's initramfs carries (MODULES=list): what a root
# disk on qemu/KVM (virtio-blk, virtio-scsi) or a cloud (NVMe) needs.
INITRD_MODULES="virtio_pci virtio_blk virtio_scsi sd_mod nvme ext4 crc32c_generic"
ROOT_SIZE_MB=${SM_APPLIANCE_ROOT_MB:-1536}
ESP_SIZE_MB=64
NICE="nice -n 10"

log() { echo "appliance: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

TIMINGS=$WORK/timings.txt

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it)"
for t in debootstrap sgdisk mkfs.vfat mcopy mkfs.ext4 qemu-img grub-mkimage; do
    command -v "$t" >/dev/null || die "$t missing (apt-get install debootstrap gdisk dosfstools mtools e2fsprogs qemu-utils grub-common grub-efi-amd64-bin grub-pc-bin)"
done
[ -d /usr/lib/grub/x86_64-efi ] || die "/usr/lib/grub/x86_64-efi missing (apt-get install grub-efi-amd64-bin)"
[ -d /usr/lib/grub/i386-pc ] || die "/usr/lib/grub/i386-pc missing (apt-get install grub-pc-bin)"
mkdir -p "$WORK" "$APTCACHE/partial"
: >"$TIMINGS"

# Mounts made in a chroot are undone on any exit.
MOUNTS=()
cleanup() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTS[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
chroot_mounts() {  # chroot_mounts DIR: proc, sys, dev and the apt archive cache
    local d=$1
    mount -t proc proc "$d/proc" && MOUNTS+=("$d/proc")
    mount -t sysfs sys "$d/sys" && MOUNTS+=("$d/sys")
    mount --bind /dev "$d/dev" && MOUNTS+=("$d/dev")
    mkdir -p "$d/var/cache/apt/archives"
    mount --bind "$APTCACHE" "$d/var/cache/apt/archives" && MOUNTS+=("$d/var/cache/apt/archives")
}
chroot_umount() { cleanup; MOUNTS=(); }
in_chroot() {  # in_chroot DIR SCRIPT: run SCRIPT with sh -e in DIR, a clean environment
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        $NICE chroot "$1" /bin/sh -ec "$2"
}

# ---------------------------------------------------------------------------
# Kernel choice.
# ---------------------------------------------------------------------------
kernel_resolve() {
    SM_APPLIANCE_KERNEL=${SM_APPLIANCE_KERNEL:-ours}
    [ "$SM_APPLIANCE_KERNEL" = debian ] && SM_APPLIANCE_KERNEL=
    if [ "${SM_APPLIANCE_KERNEL:-}" = ours ]; then
        # Our patched appliance kernel, built (or taken from its cache) by the
        # kernel part's script, which prints its output directory last.
        [ -f "$ROOT/kernel/build-kernel.sh" ] || die "SM_APPLIANCE_KERNEL=ours needs kernel/build-kernel.sh"
        SM_APPLIANCE_KERNEL=$(sh "$ROOT/kernel/build-kernel.sh" appliance | tail -n 1) \
            || die "kernel/build-kernel.sh appliance failed"
    fi
    if [ -n "${SM_APPLIANCE_KERNEL:-}" ]; then
        [ -f "$SM_APPLIANCE_KERNEL/bzImage" ] && [ -f "$SM_APPLIANCE_KERNEL/stackmap.ko" ] \
            || die "SM_APPLIANCE_KERNEL=$SM_APPLIANCE_KERNEL must hold bzImage and stackmap.ko"
        KVER=$(modinfo -F vermagic "$SM_APPLIANCE_KERNEL/stackmap.ko" | awk '{print $1}')
        KIND=appliance
        log "kernel: our appliance kernel $KVER from $SM_APPLIANCE_KERNEL"
    else
        KVER=$(apt-cache depends linux-headers-6.12-amd64 2>/dev/null | sed -n 's/.*Depends: linux-headers-//p' | head -n1)
        [ -n "$KVER" ] || { apt-get update -q >/dev/null; KVER=$(apt-cache depends linux-headers-6.12-amd64 | sed -n 's/.*Depends: linux-headers-//p' | head -n1); }
        [ -n "$KVER" ] || die "cannot resolve linux-headers-6.12-amd64"
        KPKGVER=$(apt-cache policy "linux-image-$KVER" | awk '/Candidate:/ {print $2}')
        KIND=debian
        log "kernel: Debian's linux-image-$KVER $KPKGVER"
    fi
}

# ---------------------------------------------------------------------------
# The base root filesystem: debootstrap + PKGS (+ Debian's kernel), cached.
# ---------------------------------------------------------------------------
rootfs_base() {
    local key
    if [ "$KIND" = debian ]; then
        key=$(hash_of v1 "$SUITE" "$MIRROR" "$SECURITY_MIRROR" "$PKGS" "$KVER" "$KPKGVER" "$INITRD_MODULES")
    else
        key=$(hash_of v1 "$SUITE" "$MIRROR" "$SECURITY_MIRROR" "$PKGS" none)
    fi
    BASE=$WORK/rootfs-$KIND-$key
    [ -f "$BASE/.done" ] && return 0
    rm -rf "$BASE" "$BASE.tmp"
    log "debootstrap --variant=minbase $SUITE (+$PKGS), log in $WORK/debootstrap.log"
    $NICE debootstrap --variant=minbase --cache-dir="$APTCACHE" --include="$PKGS" "$SUITE" "$BASE.tmp" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log: $WORK/debootstrap.log)"; }
    cat >"$BASE.tmp/etc/apt/sources.list" <<SRC
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
SRC
    if [ "$KIND" = debian ]; then
        # The initramfs: only the modules a virtual or cloud root disk needs
        # (MODULES=most would be ~4x larger, and every byte is read by the
        # firmware and decompressed under emulation at each boot).
        mkdir -p "$BASE.tmp/etc/initramfs-tools/conf.d"
        echo "MODULES=list" >"$BASE.tmp/etc/initramfs-tools/conf.d/appliance.conf"
        printf '%s\n' $INITRD_MODULES >>"$BASE.tmp/etc/initramfs-tools/modules"
        cp /etc/resolv.conf "$BASE.tmp/etc/resolv.conf"
        printf '#!/bin/sh\nexit 101\n' >"$BASE.tmp/usr/sbin/policy-rc.d"
        chmod 0755 "$BASE.tmp/usr/sbin/policy-rc.d"
        chroot_mounts "$BASE.tmp"
        in_chroot "$BASE.tmp" "
            apt-get update -q >/dev/null
            apt-get install -y -q --no-install-recommends linux-image-$KVER=$KPKGVER >/dev/null
            ls /boot/vmlinuz-$KVER /boot/initrd.img-$KVER
        " >"$WORK/kernel-install.log" 2>&1 \
            || { chroot_umount; tail -n 20 "$WORK/kernel-install.log" >&2; die "installing the kernel failed (log: $WORK/kernel-install.log)"; }
        chroot_umount
        rm -f "$BASE.tmp/usr/sbin/policy-rc.d" "$BASE.tmp/etc/resolv.conf"
    fi
    # Nothing in the appliance reads docs, man pages, locales or apt's lists.
    rm -rf "$BASE.tmp"/usr/share/{doc,man,info,locale}/* "$BASE.tmp"/var/cache/apt/*.bin \
        "$BASE.tmp"/var/cache/apt/archives/*.deb "$BASE.tmp"/var/lib/apt/lists/*_* "$BASE.tmp"/var/log/*.log
    mv "$BASE.tmp" "$BASE"
    touch "$BASE/.done"
}

# ---------------------------------------------------------------------------
# Our module (for Debian's kernel: kernel/build.sh against its headers).
# ---------------------------------------------------------------------------
module() {
    local key out f
    if [ "$KIND" = appliance ]; then
        KO=$SM_APPLIANCE_KERNEL/stackmap.ko
        return 0
    fi
    key=$(cd "$ROOT" && hash_of "$KVER" $(find kernel -type f -not -name '*.o' -not -name '*.ko' \
        -not -path 'kernel/patches/*' -not -path 'kernel/config/*' | LC_ALL=C sort))
    if [ -f "$WORK/kmod/.key" ] && [ "$(cat "$WORK/kmod/.key")" = "$key" ] && [ -f "$WORK/kmod/stackmap.ko" ]; then
        KO=$WORK/kmod/stackmap.ko
        return 0
    fi
    rm -rf "$WORK/kmod"
    out=$(BUILD_DIR=$WORK/kmod KVER=$KVER $NICE sh "$ROOT/kernel/build.sh") || die "kernel/build.sh failed"
    f=$(printf '%s\n' "$out" | tail -n 1)
    [ -f "$f" ] || die "kernel/build.sh did not name a module file (last line: $f)"
    [ "$f" = "$WORK/kmod/stackmap.ko" ] || cp "$f" "$WORK/kmod/stackmap.ko"
    echo "$key" >"$WORK/kmod/.key"
    KO=$WORK/kmod/stackmap.ko
}

# ---------------------------------------------------------------------------
# Our package as a wheel (host build; the host's python3 is the guest's 3.11).
# ---------------------------------------------------------------------------
wheel() {
    local key dir src
    key=$(cd "$ROOT" && hash_of pyproject.toml setup.py MANIFEST.in \
        $(find stackmap_core stackmapd kernel/include -type f \( -name '*.py' -o -name '*.c' -o -name '*.h' \) \
            -not -name '_stackmap_core*' 2>/dev/null | LC_ALL=C sort))
    dir=$WORK/wheel-$key
    if [ ! -f "$dir/.done" ]; then
        rm -rf "$WORK"/wheel-* "$WORK/wheel-src"
        mkdir -p "$dir" "$WORK/wheel-src"
        src=$WORK/wheel-src
        (cd "$ROOT" && tar -cf - --exclude=./build --exclude=./.venv --exclude=./.git \
            --exclude='*.egg-info' --exclude=__pycache__ .) | tar -xf - -C "$src"
        $NICE python3 -m pip wheel -q --no-deps "$src" -w "$dir" >"$WORK/wheel.log" 2>&1 \
            || { tail -n 30 "$WORK/wheel.log" >&2; die "pip wheel failed (log: $WORK/wheel.log)"; }
        # Its dependencies (cffi, pycparser) as wheels too: the guest has no network.
        $NICE python3 -m pip wheel -q "$src" -w "$dir" >>"$WORK/wheel.log" 2>&1 \
            || { tail -n 30 "$WORK/wheel.log" >&2; die "pip wheel (dependencies) failed (log: $WORK/wheel.log)"; }
        rm -rf "$src"
        touch "$dir/.done"
    fi
    WHEELDIR=$dir
}

# ---------------------------------------------------------------------------
# The root filesystem: base + venv + our files, as an ext4 image.
# ---------------------------------------------------------------------------
GRUB_MODS_EFI="part_gpt part_msdos ext2 fat search search_fs_uuid search_label normal linux configfile echo serial terminal test gzio efi_gop all_video boot reboot halt"
GRUB_MODS_BIOS="biosdisk part_gpt ext2 search search_fs_uuid"

stage_root() {
    local stage=$WORK/stage f kimg kinit
    rm -rf "$stage"
    cp -a "$BASE" "$stage"
    rm -f "$stage/.done"
    # stackmapd in a venv, installed by the guest's own python3 from local wheels.
    mkdir -p "$stage/tmp/wheels"
    cp "$WHEELDIR"/*.whl "$stage/tmp/wheels/"
    chroot_mounts "$stage"
    in_chroot "$stage" '
        python3 -m venv /opt/stackmapd
        /opt/stackmapd/bin/pip install -q --no-index --find-links /tmp/wheels --disable-pip-version-check stackmapd
        /opt/stackmapd/bin/stackmapd --version
    ' >"$WORK/venv.log" 2>&1 || { chroot_umount; cat "$WORK/venv.log" >&2; die "installing stackmapd in the guest venv failed"; }
    chroot_umount
    rm -rf "$stage/tmp/wheels"
    find "$stage/opt/stackmapd" -name __pycache__ -prune -exec rm -rf {} +
    # Our files (units, udev rule, modules-load.d, sysusers, network, config, seed).
    cp -a "$HERE/files/." "$stage/"
    install -m 0644 "$ROOT/deploy/stackmapd.service" "$stage/usr/lib/systemd/system/stackmapd.service"
    chmod 0755 "$stage/usr/lib/stackmapd/"*
    # The service user, made now (systemd-sysusers would make it at boot too);
    # /var/lib/stackmapd is the unit's StateDirectory= (systemd creates it).
    in_chroot "$stage" 'systemd-sysusers /usr/lib/sysusers.d/stackmapd.conf'
    grep -q '^stackmapd:' "$stage/etc/passwd" || die "the stackmapd user was not created"
    # The kernel and our module.
    if [ "$KIND" = appliance ]; then
        install -m 0644 "$SM_APPLIANCE_KERNEL/bzImage" "$stage/boot/vmlinuz-$KVER"
        # Its modules_install tree, when it has one (modules.builtin and
        # friends, for modprobe); our module goes to updates/ either way.
        if [ -d "$SM_APPLIANCE_KERNEL/modules/lib/modules/$KVER" ]; then
            mkdir -p "$stage/lib/modules"
            cp -a "$SM_APPLIANCE_KERNEL/modules/lib/modules/$KVER" "$stage/lib/modules/"
            rm -f "$stage/lib/modules/$KVER/extra/stackmap.ko" "$stage/lib/modules/$KVER/build" "$stage/lib/modules/$KVER/source"
        fi
        kinit=""
    else
        [ -f "$stage/boot/vmlinuz-$KVER" ] || die "no /boot/vmlinuz-$KVER in the base tree"
        kinit=/boot/initrd.img-$KVER
    fi
    kimg=/boot/vmlinuz-$KVER
    install -D -m 0644 "$KO" "$stage/lib/modules/$KVER/updates/stackmap.ko"
    depmod -b "$stage" "$KVER" 2>/dev/null || in_chroot "$stage" "depmod $KVER"
    # systemd units: ours enabled; networkd for DHCP; no interactive first boot.
    in_chroot "$stage" '
        systemctl enable -q systemd-networkd.service stackmapd.service stackmapd-seed.service stackmapd-report.service
        systemctl mask -q systemd-firstboot.service
    '
    # Identity: none baked in.  An empty machine-id makes systemd generate one
    # at first boot (and treat it as the first boot); no SSH server, no
    # passwords (root's is locked), no host keys, no random seed.
    : >"$stage/etc/machine-id"
    ln -sfn /etc/machine-id "$stage/var/lib/dbus/machine-id"
    rm -rf "$stage/var/lib/systemd/random-seed" "$stage"/etc/ssh/ssh_host_* "$stage/etc/resolv.conf" \
        "$stage"/var/log/journal/* "$stage/var/lib/systemd/credential.secret"
    sed -i 's/^root:[^:]*:/root:*:/' "$stage/etc/shadow"
    echo stackmapd >"$stage/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\tstackmapd\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$stage/etc/hosts"
    cat >"$stage/etc/fstab" <<FSTAB
# The root partition, found by its GPT partition UUID (no initramfs needed).
PARTUUID=$ROOT_PARTUUID  /  ext4  errors=remount-ro  0  1
FSTAB
    # GRUB: its modules for both platforms and the menu, on the root filesystem.
    mkdir -p "$stage/boot/grub"
    for f in x86_64-efi i386-pc; do
        mkdir -p "$stage/boot/grub/$f"
        cp /usr/lib/grub/$f/*.mod /usr/lib/grub/$f/*.lst "$stage/boot/grub/$f/"
    done
    cat >"$stage/boot/grub/grub.cfg" <<GRUB
# stackmapd appliance: GRUB's menu (written by deploy/appliance/build.sh).
# The serial console is ttyS0 at 115200; the kernel's console is ttyS0 too
# (tty0 for a VGA screen).  root= names the GPT partition UUID, which the
# kernel resolves without an initramfs.
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
menuentry 'stackmapd appliance ($KVER)' {
    search --no-floppy --fs-uuid --set=root $ROOT_FSUUID
    linux $kimg root=PARTUUID=$ROOT_PARTUUID ro console=tty0 console=ttyS0,115200n8 panic=10
${kinit:+    initrd $kinit}
}
GRUB
    STAGE=$stage
}

# ---------------------------------------------------------------------------
# Boot loaders.
# ---------------------------------------------------------------------------
# Both GRUBs start from the same early config: find the root filesystem by
# UUID and read /boot/grub (modules, grub.cfg) from it.
grub_images() {
    local g=$WORK/grub
    rm -rf "$g"
    mkdir -p "$g"
    printf 'search --no-floppy --fs-uuid --set=root %s\nset prefix=($root)/boot/grub\n' "$ROOT_FSUUID" >"$g/early.cfg"
    # shellcheck disable=SC2086
    grub-mkimage -O x86_64-efi -o "$g/BOOTX64.EFI" -c "$g/early.cfg" -p /boot/grub $GRUB_MODS_EFI
    # shellcheck disable=SC2086
    grub-mkimage -O i386-pc -o "$g/core.img" -c "$g/early.cfg" -p /boot/grub $GRUB_MODS_BIOS
    # The ESP: FAT32 with GRUB at the removable-media path, so that firmware
    # with no boot entries (a fresh VM, a cloud) finds it.
    mkfs.vfat -F 32 -n ESP -C "$g/esp.img" $((ESP_SIZE_MB * 1024)) >/dev/null
    mmd -i "$g/esp.img" ::/EFI ::/EFI/BOOT
    mcopy -i "$g/esp.img" "$g/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
}

# bios_boot DISK: what grub-bios-setup does for a GPT disk with a bios_grub
# partition (grub-pc, which ships it, is not a build dependency): GRUB's
# boot.img goes into the MBR's code area (the protective MBR's partition
# table is kept), told where core.img starts; core.img goes into partition 1,
# its first sector (diskboot.img) told where the rest of it is.  Offsets are
# GRUB 2's i386-pc ABI (include/grub/i386/pc/boot.h): the kernel sector at
# 0x5c (8 bytes LBA), the boot drive at 0x64 (0xff: the BIOS's), the floppy
# check at 0x66 (0x9090 disables it, as grub-bios-setup does for disks);
# diskboot's blocklist at the end of its sector (start LBA 8 bytes, length 2).
bios_boot() {
    local disk=$1 core=$WORK/grub/core.img start sectors
    start=$(sgdisk -i 1 "$disk" | awk '/First sector:/ {print $3}')
    sectors=$(( ($(stat -c %s "$core") + 511) / 512 ))
    [ "$sectors" -le 2048 ] || die "core.img ($sectors sectors) does not fit the 1 MiB bios_grub partition"
    python3 - "$disk" "$core" /usr/lib/grub/i386-pc/boot.img "$start" "$sectors" <<'PY'
import struct, sys
disk, core_path, boot_path, start, sectors = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
core = bytearray(open(core_path, "rb").read())
core += bytes(sectors * 512 - len(core))
boot = bytearray(open(boot_path, "rb").read())
assert len(boot) == 512
with open(disk, "r+b") as f:
    mbr = bytearray(f.read(512))
    boot[0x1B8:0x200] = mbr[0x1B8:0x200]          # disk signature + protective partition table
    boot[0x5C:0x64] = struct.pack("<Q", start)     # where core.img starts
    boot[0x64] = 0xFF                              # boot from the drive the BIOS booted
    boot[0x66:0x68] = b"\x90\x90"                  # no floppy probing
    core[500:510] = struct.pack("<QH", start + 1, sectors - 1)  # the rest of core.img
    f.seek(0)
    f.write(boot)
    f.seek(start * 512)
    f.write(core)
PY
}

# ---------------------------------------------------------------------------
# The disk: GPT, three partitions, copied in; then qcow2.
# ---------------------------------------------------------------------------
assemble() {
    local raw=$WORK/disk.raw esp_start root_start total
    log "mkfs.ext4 -d (root filesystem, ${ROOT_SIZE_MB} MiB)"
    rm -f "$WORK/root.ext4"
    $NICE mkfs.ext4 -q -F -L stackmapd-root -U "$ROOT_FSUUID" -E root_owner=0:0 -d "$STAGE" \
        "$WORK/root.ext4" "${ROOT_SIZE_MB}M" >/dev/null
    rm -rf "$STAGE"
    grub_images
    total=$(( 1 + 1 + ESP_SIZE_MB + ROOT_SIZE_MB + 1 ))
    rm -f "$raw"
    truncate -s "${total}M" "$raw"
    sgdisk -U R \
        -n 1:2048:+1M -t 1:EF02 -c 1:bios-grub \
        -n 2:0:+${ESP_SIZE_MB}M -t 2:EF00 -c 2:esp \
        -n "3:0:+${ROOT_SIZE_MB}M" -t 3:4f68bce3-e8cd-4db1-96e7-fbcaf984b709 -c 3:stackmapd-root -u "3:$ROOT_PARTUUID" \
        "$raw" >"$WORK/sgdisk.log" 2>&1 || { cat "$WORK/sgdisk.log" >&2; die "sgdisk failed"; }
    esp_start=$(sgdisk -i 2 "$raw" | awk '/First sector:/ {print $3}')
    root_start=$(sgdisk -i 3 "$raw" | awk '/First sector:/ {print $3}')
    dd if="$WORK/grub/esp.img" of="$raw" bs=512 seek="$esp_start" conv=notrunc,sparse status=none
    $NICE dd if="$WORK/root.ext4" of="$raw" bs=1M seek=$((root_start / 2048)) conv=notrunc,sparse status=none
    [ $((root_start % 2048)) = 0 ] || die "root partition not MiB-aligned"
    bios_boot "$raw"
    rm -f "$WORK/root.ext4"
    $NICE qemu-img convert -q -f raw -O qcow2 "$raw" "$OUT.tmp"
    rm -f "$raw"
    mv "$OUT.tmp" "$OUT"
}

kernel_resolve
step rootfs rootfs_base
step module module
step wheel wheel
KEY=$(hash_of v1 "$KIND" "$KVER" "$BASE" "$KO" "$WHEELDIR"/*.whl "$ROOT/deploy/stackmapd.service" "$HERE/build.sh" \
    $(find "$HERE/files" -type f | LC_ALL=C sort) /usr/lib/grub/i386-pc/boot.img /usr/lib/grub/x86_64-efi/normal.mod \
    ${SM_APPLIANCE_KERNEL:+"$SM_APPLIANCE_KERNEL/bzImage"})
if [ "${1:-}" != --force ] && [ -f "$OUT" ] && [ -f "$WORK/image.key" ] && [ "$(cat "$WORK/image.key")" = "$KEY" ]; then
    log "up to date: $OUT"
    exit 0
fi
rm -f "$WORK/image.key"
ROOT_FSUUID=$(cat /proc/sys/kernel/random/uuid)
ROOT_PARTUUID=$(cat /proc/sys/kernel/random/uuid)
step stage stage_root
step disk assemble
echo "$KEY" >"$WORK/image.key"
# Drop base trees of this kernel kind that no longer match their inputs
# (the other kind's stays: switching kernels back and forth costs nothing).
for d in "$WORK"/rootfs-$KIND-*; do [ "$d" = "$BASE" ] || rm -rf "$d"; done
log "done: $OUT ($(du -h --apparent-size "$OUT" | cut -f1) qcow2, $(du -h "$OUT" | cut -f1) on disk; kernel $KVER)"
