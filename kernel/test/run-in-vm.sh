#!/bin/sh
# run-in-vm.sh -- prove stackmap.ko on Debian 12's 6.12 kernel under qemu.
#
# The host may run any kernel (here: not Debian's), so the module is tested
# in a throwaway VM: Debian's own linux-image for the ABI version the module
# was built against, booted as an uncompressed vmlinux (PVH) under TCG with
# a tiny busybox initramfs holding stackmap.ko and the static ringtest.  The
# guest's /init loads the module, runs ringtest, checks the kernel log for
# oopses/warnings, unloads the module (which only succeeds when every port
# has been released) and powers off.  This script parses the console and
# exits non-zero on any FAIL, a missing summary, or a timeout.
#
# Self-contained for CI from a clean clone (run as root, or with sudo): it
# installs the apt packages it needs, downloads the kernel image package
# with `apt-get download` into build/vm-kernel/ (gitignored, reused), and
# writes everything else under build/vm-ringtest/.
#
# Environment: VM_TIMEOUT (seconds, default 1200), VM_MEM (MiB, default 768).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
kdir=$(cd "$here/.." && pwd)
top=$(cd "$kdir/.." && pwd)
cache=$top/build/vm-kernel
work=$top/build/vm-ringtest
timeout_s=${VM_TIMEOUT:-1200}
mem=${VM_MEM:-768}

log() { echo "run-in-vm: $*" >&2; }
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi

# --- host tools -----------------------------------------------------------
need=
if [ ! -x /bin/busybox ] || ! ldd /bin/busybox 2>&1 | grep -q "not a dynamic"; then
	need="$need busybox-static"
fi
command -v cpio >/dev/null 2>&1 || need="$need cpio"
command -v modinfo >/dev/null 2>&1 || need="$need kmod"
command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"
command -v xz >/dev/null 2>&1 || need="$need xz-utils"
command -v zstd >/dev/null 2>&1 || need="$need zstd"
command -v gcc >/dev/null 2>&1 || need="$need gcc libc6-dev"
[ -e /usr/include/linux/types.h ] || need="$need linux-libc-dev"
command -v python3 >/dev/null 2>&1 || need="$need python3"
if [ -n "$need" ]; then
	log "installing:$need"
	$SUDO apt-get update -q >&2 || true
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $need >&2
fi

# --- module and test program ----------------------------------------------
ko=$("$kdir/build.sh" | tail -n1)
[ -f "$ko" ] || { log "module build failed"; exit 1; }
kver=$(modinfo -F vermagic "$ko" | awk '{print $1}')
log "module $ko for $kver"
mkdir -p "$work"
gcc -static -std=c11 -O2 -Wall -Wextra -Werror -o "$work/ringtest" "$here/ringtest.c"

# --- Debian's kernel, uncompressed ----------------------------------------
kc=$cache/$kver
if [ ! -s "$kc/vmlinux" ]; then
	mkdir -p "$kc"
	if ! ls "$kc"/linux-image-"$kver"_*.deb >/dev/null 2>&1; then
		log "downloading linux-image-$kver"
		(cd "$kc" && apt-get download "linux-image-$kver" >&2) || {
			$SUDO apt-get update -q >&2
			(cd "$kc" && apt-get download "linux-image-$kver" >&2)
		}
	fi
	rm -rf "$kc/root"
	dpkg -x "$kc"/linux-image-"$kver"_*.deb "$kc/root"
	# The bzImage carries the kernel compressed; find the payload and
	# decompress it (what scripts/extract-vmlinux does).
	python3 - "$kc/root/boot/vmlinuz-$kver" "$kc/vmlinux" <<'EOF'
import subprocess, sys
img = open(sys.argv[1], 'rb').read()
tools = [(b'\x28\xb5\x2f\xfd', ['zstd', '-dcq']), (b'\xfd7zXZ\x00', ['xz', '-dcq']),
         (b'\x1f\x8b\x08', ['gzip', '-dcq'])]
for magic, cmd in tools:
    pos = img.find(magic)
    while pos >= 0:
        p = subprocess.run(cmd, input=img[pos:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if p.stdout[:4] == b'\x7fELF':
            open(sys.argv[2], 'wb').write(p.stdout)
            sys.exit(0)
        pos = img.find(magic, pos + 1)
sys.exit('no ELF payload found in ' + sys.argv[1])
EOF
fi

# --- initramfs --------------------------------------------------------------
ird=$work/initramfs
rm -rf "$ird"
mkdir -p "$ird/bin" "$ird/dev" "$ird/proc" "$ird/sys" "$ird/tmp"
cp /bin/busybox "$ird/bin/busybox"
cp "$ko" "$ird/stackmap.ko"
cp "$work/ringtest" "$ird/ringtest"
cat > "$ird/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
echo "VM: kernel $(uname -r)"
rc=0
if insmod /stackmap.ko; then
	echo "PASS insmod"
else
	echo "FAIL insmod"; rc=1
fi
if [ -c /dev/stackmap ]; then echo "PASS dev-node"; else echo "FAIL dev-node"; rc=1; fi
if [ $rc -eq 0 ]; then
	/ringtest || rc=1
fi
# Anything the kernel complained about while we ran?
if dmesg | grep -E "BUG:|WARNING:|Oops|general protection|refcount_t:|list_(add|del) corruption|stackmap.*(leak|error)" >/tmp/bad; then
	echo "FAIL kernel-log-clean:"; cat /tmp/bad; rc=1
else
	echo "PASS kernel-log-clean"
fi
# Unloading only works once every port is released (module refcount 0).
if rmmod stackmap; then echo "PASS rmmod"; else echo "FAIL rmmod"; rc=1; fi
dmesg | grep -i stackmap | sed 's/^/VM-DMESG: /'
echo "VMTEST DONE rc=$rc"
sync
poweroff -f
EOF
chmod +x "$ird/init"
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1 > "$work/initramfs.cpio.gz")

# --- boot ---------------------------------------------------------------------
console=$work/console.log
log "booting $kver under TCG (timeout ${timeout_s}s), console in $console"
set +e
timeout "$timeout_s" qemu-system-x86_64 -accel tcg -smp 1 -m "$mem" \
	-kernel "$kc/vmlinux" -initrd "$work/initramfs.cpio.gz" \
	-append "console=ttyS0 panic=-1 loglevel=4 rdinit=/init" \
	-nographic -no-reboot -nic none </dev/null >"$console" 2>&1
qrc=$?
set -e
tr -d '\r' <"$console" | grep -E "^(PASS|FAIL|INFO|RINGTEST|VMTEST|VM:|VM-DMESG:)" || true
if [ $qrc -eq 124 ]; then
	log "FAIL: timeout after ${timeout_s}s (console tail follows)"
	tail -n 30 "$console" >&2
	exit 1
fi
if ! tr -d '\r' <"$console" | grep -q "^VMTEST DONE rc=0"; then
	log "FAIL: the guest did not report success (qemu exit $qrc)"
	tail -n 30 "$console" >&2
	exit 1
fi
if tr -d '\r' <"$console" | grep -q "^FAIL"; then
	log "FAIL lines in the console"
	exit 1
fi
if ! tr -d '\r' <"$console" | grep -q "^RINGTEST PASS"; then
	log "FAIL: no RINGTEST PASS"
	exit 1
fi
log "all passed"
