#!/bin/sh
# kernel/test/ringtest-vm.sh appliance|debug -- the module's ring tests under
# our own kernel (kernel/build-kernel.sh), in a throwaway qemu TCG guest.
#
# Why: run-in-vm.sh proves the module on Debian's stock kernel; the appliance
# ships our patched kernel, and the debug build of it (KASAN + KASAN_VMALLOC,
# kmemleak, lockdep, DEBUG_ATOMIC_SLEEP) is what catches a use-after-free,
# a leak or a lock-order bug in the module.  The debug guest gets 2 vCPUs
# (VM_SMP, default 2 for debug and 1 for appliance): ringtest's forked
# clients send on one vCPU while the port owner syncs on the other, so the
# sockets' data-ready upcalls race the sync.
#
# The guest boots the bzImage the appliance boots (the debug kernel's
# vmlinux does not start through qemu's PVH entry: KASAN's early shadow
# setup needs the bzImage's own entry path).  It is a busybox initramfs (every driver the test needs is built
# into our kernel; no disk, no network device: ringtest talks over
# 127.0.0.1 inside the guest; with --expect-plug when the kernel has the
# transmit plug, which puts fq_codel on lo so that the TX sync's packets
# meet a qdisc and the plug).  Its /init loads stackmap.ko, runs ringtest
# (many concurrent clients, large values, peer close, a stalled reader,
# hostile rings, SIGKILL of a port owner, socket and vmalloc accounting),
# unloads the module, then on a kmemleak kernel waits out kmemleak's minimum
# object age and triggers two scans, and powers off.  The host then fails
# the run on any FAIL line, a missing RINGTEST PASS / VMTEST DONE, a timeout,
# or any report in the whole console log: KASAN, kmemleak, lockdep (or
# lockdep having switched itself off), BUG/WARNING/Oops, RCU or atomic-sleep
# complaints.  Output: the guest's PASS/FAIL/INFO lines, then "KERNEL-VM
# PASS name" or "KERNEL-VM FAIL name: why" as the last line; exit status 0
# only on PASS.  Work files go to build/kernel-vm/NAME/ (console.log there).
#
# Environment: VM_TIMEOUT (seconds, default 1800), VM_MEM (MiB, default 1024),
# VM_SMP, and kernel/build-kernel.sh's (STACKMAPD_CACHE, KERNEL_JOBS).
set -eu

name=${1:-}
case "$name" in
	appliance) smp=${VM_SMP:-1} ;;
	debug) smp=${VM_SMP:-2} ;;
	*) echo "usage: $0 appliance|debug" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
kdir=$(cd "$here/.." && pwd)
top=$(cd "$kdir/.." && pwd)
work=$top/build/kernel-vm/$name
timeout_s=${VM_TIMEOUT:-1800}
mem=${VM_MEM:-1024}

log() { echo "ringtest-vm[$name]: $*" >&2; }
verdict() { echo "KERNEL-VM $*"; [ "${1%% *}" = PASS ]; exit $?; }

need=
if [ ! -x /bin/busybox ] || ! ldd /bin/busybox 2>&1 | grep -q "not a dynamic"; then
	need="$need busybox-static"
fi
command -v cpio >/dev/null 2>&1 || need="$need cpio"
command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"
command -v gcc >/dev/null 2>&1 || need="$need gcc libc6-dev"
if [ -n "$need" ]; then
	if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
	log "installing:$need"
	# shellcheck disable=SC2086
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $need >&2 ||
		{ $SUDO apt-get update -q >&2 &&
		  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $need >&2; }
fi

# --- kernel + module (cached), test program ----------------------------------
kout=$("$kdir/build-kernel.sh" "$name" | tail -n1)
[ -f "$kout/bzImage" ] && [ -f "$kout/stackmap.ko" ] || verdict "FAIL $name: kernel/build-kernel.sh gave no kernel or module ($kout)"
krel=$(cat "$kout/kernelrelease")
log "kernel $krel from $kout, $smp vCPU(s)"
rm -rf "$work"
mkdir -p "$work"
gcc -static -std=c11 -O2 -Wall -Wextra -Werror -o "$work/ringtest" "$here/ringtest.c"

# --- initramfs -----------------------------------------------------------------
ird=$work/initramfs
mkdir -p "$ird/bin" "$ird/dev" "$ird/proc" "$ird/sys" "$ird/tmp"
cp /bin/busybox "$ird/bin/busybox"
cp "$kout/stackmap.ko" "$ird/stackmap.ko"
cp "$work/ringtest" "$ird/ringtest"
# A kernel with the transmit plug (kernel/patches/0001-*) must show the TX
# sync using it: ringtest --expect-plug puts fq_codel on lo and checks it.
if grep -q ' netdev_xmit_plug_start$' "$kout/System.map"; then
	echo --expect-plug >"$ird/ringtest-args"
	log "kernel has the transmit plug: ringtest --expect-plug"
else
	: >"$ird/ringtest-args"
fi
cat >"$ird/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
echo "VM: kernel $(uname -r) cpus $(grep -c ^processor /proc/cpuinfo)"
rc=0
if insmod /stackmap.ko; then echo "PASS insmod"; else echo "FAIL insmod"; rc=1; fi
if [ -c /dev/stackmap ]; then echo "PASS dev-node"; else echo "FAIL dev-node"; rc=1; fi
# shellcheck disable=SC2046
[ $rc -eq 0 ] && { /ringtest $(cat /ringtest-args) || rc=1; }
# Unloading only works once every port is released (module refcount 0).
if rmmod stackmap; then echo "PASS rmmod"; else echo "FAIL rmmod"; rc=1; fi
if [ -e /sys/kernel/debug/kmemleak ]; then
	# kmemleak reports only objects older than 5 s; scan twice so that
	# a leak is seen unreferenced by a complete scan.
	sleep 6
	echo scan >/sys/kernel/debug/kmemleak
	echo scan >/sys/kernel/debug/kmemleak
	cat /sys/kernel/debug/kmemleak >/tmp/leaks
	if [ -s /tmp/leaks ]; then
		echo "FAIL kmemleak: $(grep -c '^unreferenced object' /tmp/leaks) object(s)"
		sed 's/^/KMEMLEAK: /' /tmp/leaks; rc=1
	else
		echo "PASS kmemleak-clean"
	fi
fi
if [ -e /proc/lockdep_stats ]; then
	# lockdep switches itself off after its first report.
	if grep -q 'debug_locks: *1' /proc/lockdep_stats; then echo "PASS lockdep-still-on"
	else echo "FAIL lockdep-still-on: lockdep turned itself off (a report was printed)"; rc=1; fi
fi
# The whole kernel log, whatever the console loglevel let through.
dmesg | sed 's/^/DMESG: /'
echo "VMTEST DONE rc=$rc"
sync
poweroff -f
EOF
chmod +x "$ird/init"
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1 >"$work/initramfs.cpio.gz")

# --- boot ------------------------------------------------------------------------
console=$work/console.log
log "booting under TCG (timeout ${timeout_s} s), console in $console"
t0=$(date +%s)
set +e
timeout "$timeout_s" qemu-system-x86_64 -accel tcg -smp "$smp" -m "$mem" \
	-kernel "$kout/bzImage" -initrd "$work/initramfs.cpio.gz" \
	-append "console=ttyS0 panic=-1 loglevel=5 rdinit=/init" \
	-display none -monitor none -serial "file:$console" -no-reboot -nic none </dev/null >"$work/qemu.log" 2>&1
qrc=$?
set -e
log "guest ran $(($(date +%s) - t0)) s (qemu exit $qrc)"
tr -d '\r' <"$console" >"$work/console.txt"
grep -E "^(PASS|FAIL|INFO|RINGTEST|VMTEST|VM:|KMEMLEAK:)" "$work/console.txt" || true

# Any report anywhere in the log, boot included.
trouble='KASAN|kmemleak: [0-9]+ new suspected|unreferenced object|BUG:|WARNING:|Oops|general protection|'\
'possible circular locking|possible recursive locking|inconsistent lock state|'\
'lock held when returning|bad unlock balance|suspicious RCU usage|INFO: task .* blocked|'\
'sleeping function called from invalid context|refcount_t:|list_(add|del) corruption|'\
'Kernel panic|Call Trace:|UBSAN:'
if grep -Eq "$trouble" "$work/console.txt"; then
	grep -En "$trouble" "$work/console.txt" | head -n 20 >&2
	verdict "FAIL $name: kernel report in $console"
fi
[ $qrc -ne 124 ] || { tail -n 30 "$work/console.txt" >&2; verdict "FAIL $name: timeout after ${timeout_s} s"; }
grep -q "^VMTEST DONE rc=0" "$work/console.txt" || { tail -n 30 "$work/console.txt" >&2; verdict "FAIL $name: the guest did not report success"; }
! grep -q "^FAIL" "$work/console.txt" || verdict "FAIL $name: FAIL lines in the console"
grep -q "^RINGTEST PASS" "$work/console.txt" || verdict "FAIL $name: no RINGTEST PASS"
grep -q "^VM: kernel $krel cpus $smp\$" "$work/console.txt" || verdict "FAIL $name: guest did not run $krel on $smp vCPU(s)"
if [ "$name" = debug ]; then
	grep -q "^PASS kmemleak-clean" "$work/console.txt" || verdict "FAIL $name: kmemleak did not scan"
	grep -q "^PASS lockdep-still-on" "$work/console.txt" || verdict "FAIL $name: lockdep not checked"
	grep -q "^DMESG: .*KernelAddressSanitizer initialized" "$work/console.txt" || verdict "FAIL $name: KASAN is not on"
fi
verdict "PASS $name ($krel, $smp vCPU(s))"
