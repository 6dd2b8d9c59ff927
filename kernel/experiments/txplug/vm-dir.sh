#!/bin/sh
# kernel/experiments/txplug/vm-dir.sh KDIR [KO] OUTDIR -- a run-vm.sh VM
# directory that boots one of our kernels with the test VM's root disk.
#
# Why: the TX-plug measurement (txplug-bench.py) runs stackmapd's stackmap
# backend under a stock and a patched appliance kernel with everything else
# equal.  The test VM (deploy/run-vm.sh, make vm-image) already has a root
# disk with stackmapd, its guest agent and a python3; it boots Debian's
# kernel, whose initramfs loads Debian's virtio and ext4 modules.  Our
# appliance kernel has those built in, so this makes a directory run-vm.sh
# can use (SM_VM_DIR=OUTDIR):
#   vmlinux     KDIR/vmlinux (the appliance kernel boots it through PVH)
#   initrd.gz   busybox + KO (default KDIR/stackmap.ko) + an /init that
#               mounts /dev/vda, puts KO in place of the disk's module and
#               switch_roots to the disk's /sbin/sm-init
#   image.ext4  a symlink to the test VM's disk (qemu opens it -snapshot)
# The disk comes from $SM_VM_IMAGE, else build/vm/image.ext4 of this
# checkout (make vm-image builds it).
set -eu

[ $# -eq 2 ] || [ $# -eq 3 ] || { echo "usage: $0 KDIR [KO] OUTDIR" >&2; exit 2; }
kdir=$1
if [ $# -eq 3 ]; then ko=$2; out=$3; else ko=$kdir/stackmap.ko; out=$2; fi
top=$(cd "$(dirname "$0")/../../.." && pwd)
image=${SM_VM_IMAGE:-$top/build/vm/image.ext4}
for f in "$kdir/vmlinux" "$ko" "$image" /bin/busybox; do
	[ -e "$f" ] || { echo "vm-dir: $f missing" >&2; exit 1; }
done

mkdir -p "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/proc" "$stage/sys" "$stage/dev" "$stage/newroot"
cp /bin/busybox "$stage/bin/busybox"
cp "$ko" "$stage/stackmap.ko"
cat >"$stage/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "initramfs: $*" >/dev/console; poweroff -f; sleep 5; }
i=0
while [ ! -b /dev/vda ]; do
	i=$((i + 1)); [ "$i" -gt 100 ] && fail "no /dev/vda"; sleep 0.1
done
mount -t ext4 -o rw /dev/vda /newroot || fail "cannot mount /dev/vda"
mkdir -p /newroot/lib/modules/stackmap
rm -f /newroot/lib/modules/stackmap/*.ko
cp /stackmap.ko /newroot/lib/modules/stackmap/stackmap.ko
echo "initramfs: $(uname -r), module $(md5sum /stackmap.ko | cut -c1-12)" >/dev/console
for d in proc sys dev; do mount --move "/$d" "/newroot/$d"; done
exec switch_root /newroot /sbin/sm-init
EOF
chmod +x "$stage/init"
(cd "$stage" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initrd.gz"
ln -sf "$kdir/vmlinux" "$out/vmlinux"
ln -sf "$image" "$out/image.ext4"
echo "$out"
