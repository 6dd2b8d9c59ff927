#!/bin/sh
# kernel/build-kernel.sh appliance|debug -- build our patched 6.12 kernel and
# stackmap.ko against it, cached outside the checkout; print the output
# directory on the last line of stdout.
#
# Why: the appliance runs Debian's linux-source-6.12 with kernel/patches/
# applied and a small config (tinyconfig + kernel/config/appliance.config),
# and the module's ring tests run under a debug build of the same kernel
# (+ kernel/config/debug.config: KASAN, kmemleak, lockdep).  A kernel build
# costs minutes, so each result is cached under a key made of
#   the linux-source-6.12 package version and tarball, the patches,
#   the config fragments, the compiler version and RECIPE below,
# in CACHE/kernels/NAME-KEY/ (CACHE: $STACKMAPD_CACHE, else
# $XDG_CACHE_HOME/stackmapd, else /var/cache/stackmapd as root or
# ~/.cache/stackmapd), with ccache's objects in CACHE/ccache.  A second run
# with the same inputs only hashes them (seconds); a change to kernel/*.c
# rebuilds just the module.  The output directory holds:
#   bzImage vmlinux System.map .config kernelrelease build-info
#   stackmap.ko             our module, built against this tree
#   modules/lib/modules/RELEASE/   modules_install tree + extra/stackmap.ko
#                           and depmod's files (copy it to / in an image)
#   build/                  the O= object tree (for more out-of-tree modules)
# Kernel builds run under `nice -n 19` with make -j$KERNEL_JOBS (default 2).
#
# The source version the patches were made against is SOURCE_VERSION below;
# any other installed version is said loudly, and the patches must still
# apply or the build stops.  Run as root on a fresh machine: missing build
# packages are installed with apt-get.
set -eu

RECIPE=1                                # bump when this script's output changes
SOURCE_PKG=linux-source-6.12
SOURCE_VERSION=6.12.118-1~deb12u1       # what kernel/patches/ was made against
SOURCE_TAR=/usr/src/linux-source-6.12.tar.xz
BUILD_PKGS="linux-source-6.12 build-essential flex bison libelf-dev bc libssl-dev ccache cpio kmod xz-utils util-linux patch python3"

here=$(cd "$(dirname "$0")" && pwd)
name=${1:-}
case "$name" in
	appliance) fragments="$here/config/appliance.config" ;;
	debug) fragments="$here/config/appliance.config $here/config/debug.config" ;;
	*) echo "usage: $0 appliance|debug" >&2; exit 2 ;;
esac
jobs=${KERNEL_JOBS:-2}

log() { echo "build-kernel[$name]: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- host packages ----------------------------------------------------------
missing=
for p in $BUILD_PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
	if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
	log "installing:$missing"
	# shellcheck disable=SC2086
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing >&2 ||
		{ $SUDO apt-get update -q >&2 &&
		  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing >&2; } ||
		die "apt-get install$missing failed"
fi
srcver=$(dpkg-query -W -f='${Version}' "$SOURCE_PKG")
if [ "$srcver" != "$SOURCE_VERSION" ]; then
	log "WARNING: $SOURCE_PKG is $srcver, but kernel/patches/ was made and measured"
	log "WARNING: against $SOURCE_VERSION; trying anyway (the cache key includes the version)"
fi
[ -f "$SOURCE_TAR" ] || die "$SOURCE_TAR missing (package $SOURCE_PKG $srcver)"

# --- cache location and keys -------------------------------------------------
if [ -n "${STACKMAPD_CACHE:-}" ]; then
	cache=$STACKMAPD_CACHE
elif [ -n "${XDG_CACHE_HOME:-}" ]; then
	cache=$XDG_CACHE_HOME/stackmapd
elif [ "$(id -u)" -eq 0 ]; then
	cache=/var/cache/stackmapd
else
	cache=$HOME/.cache/stackmapd
fi
mkdir -p "$cache/kernels" "$cache/ccache"

# hash_of (deploy/lib.sh)
. "$here/../deploy/lib.sh"
patches=$(find "$here/patches" -maxdepth 1 -name '*.patch' 2>/dev/null | LC_ALL=C sort)
# The tarball by its size and mtime: a different tarball with the same
# package version is unlikely, and hashing 150 MB would cost the cached run.
tarid=$(stat -c '%s %Y' "$SOURCE_TAR")
# A patch counts by its name and its diff (from its first "--- " line on),
# not by its prose header: the header records the measured effect, which is
# written after the patched kernel was built and measured, and rewording it
# must not rebuild both kernels.
patchids=$(for p in $patches; do
	printf '%s %s\n' "$(basename "$p")" "$(sed -n '/^--- /,$p' "$p" | sha256sum | cut -c1-16)"
done)
# shellcheck disable=SC2086
srckey=$(hash_of "$SOURCE_PKG" "$srcver" "$tarid" ${patchids:+"$patchids"})
ccver=$(gcc --version | head -n1)
# shellcheck disable=SC2086
key=$(hash_of "$RECIPE" "$srckey" "$name" "$ccver" $fragments)
src=$cache/kernels/src-$srckey
out=$cache/kernels/$name-$key
bld=$out/build

# One build of a configuration at a time (the image build and the VM test
# may both ask for it), and one unpacking of the shared source; a cached
# configuration is not held up by the other one's build.
exec 9>"$cache/kernels/.lock-$name"
flock 9

# --- source: unpack and patch (shared by both configurations) ---------------
exec 8>"$cache/kernels/.lock-src"
flock 8
if [ ! -f "$src/.done" ]; then
	log "unpacking $SOURCE_PKG $srcver"
	rm -rf "$src" "$src.tmp"
	mkdir -p "$src.tmp"
	tar -xf "$SOURCE_TAR" -C "$src.tmp" --strip-components=1
	for p in $patches; do
		log "applying $(basename "$p")"
		patch -d "$src.tmp" -p1 --forward --batch --quiet <"$p" >&2 ||
			die "$(basename "$p") does not apply to $SOURCE_PKG $srcver (made for $SOURCE_VERSION)"
	done
	mv "$src.tmp" "$src"
	touch "$src/.done"
fi
exec 8>&-

kmake() {
	nice -n 19 make -C "$src" O="$bld" ARCH=x86_64 \
		CC="ccache gcc" HOSTCC="ccache gcc" \
		KBUILD_BUILD_TIMESTAMP="$(date -u -d @"${tarid#* }")" KBUILD_BUILD_USER=stackmapd KBUILD_BUILD_HOST=build \
		"$@"
}
export CCACHE_DIR="$cache/ccache" CCACHE_BASEDIR="$cache/kernels" CCACHE_NOHASHDIR=1 \
	CCACHE_COMPILERCHECK=content
ccache --max-size="${KERNEL_CCACHE_SIZE:-4G}" >/dev/null

# --- kernel ------------------------------------------------------------------
if [ ! -f "$out/.kernel-done" ]; then
	t0=$(date +%s)
	rm -rf "$out"
	mkdir -p "$bld"
	log "configuring: tinyconfig +$(for f in $fragments; do printf ' %s' "$(basename "$f")"; done)"
	kmake -s tinyconfig >&2
	# shellcheck disable=SC2086
	(cd "$bld" && "$src/scripts/kconfig/merge_config.sh" -m -O "$bld" "$bld/.config" $fragments >/dev/null)
	kmake -s olddefconfig >&2
	# Every option a fragment names must have the value it asks for.
	bad=$(cat $fragments | python3 -c '
import re, sys
want = {}
for line in sys.stdin:
    line = line.strip()
    m = re.match(r"^(CONFIG_\w+)=(.*)$", line) or re.match(r"^# (CONFIG_\w+) is not set$", line)
    if m:
        want[m.group(1)] = m.group(2) if m.lastindex == 2 else "n"
have = {}
for line in open(sys.argv[1]):
    m = re.match(r"^(CONFIG_\w+)=(.*)$", line.strip())
    if m:
        have[m.group(1)] = m.group(2)
for k, v in want.items():
    if have.get(k, "n") != v:
        print(f"{k}: wanted {v}, got {have.get(k, chr(110))}")
' "$bld/.config")
	[ -z "$bad" ] || die "config options that did not stick (missing dependency?):
$bad"
	log "building with make -j$jobs (nice 19, ccache in $CCACHE_DIR)"
	ccache -z >/dev/null
	kmake -j"$jobs" >"$out/make.log" 2>&1 || { tail -n 40 "$out/make.log" >&2; die "kernel build failed (log: $out/make.log)"; }
	krel=$(cat "$bld/include/config/kernel.release")
	cp "$bld/arch/x86/boot/bzImage" "$bld/vmlinux" "$bld/System.map" "$bld/.config" "$out/"
	echo "$krel" >"$out/kernelrelease"
	kmake -s INSTALL_MOD_PATH="$out/modules" modules_install >&2
	t1=$(date +%s)
	{
		echo "name=$name"
		echo "key=$key"
		echo "source=$SOURCE_PKG $srcver"
		echo "patches=$(for p in $patches; do printf '%s ' "$(basename "$p")"; done)"
		echo "compiler=$ccver"
		echo "kernelrelease=$krel"
		echo "build_seconds=$((t1 - t0))"
		ccache -s 2>/dev/null | grep -Ei 'hits|misses' | sed 's/^ */ccache: /'
	} >"$out/build-info"
	touch "$out/.kernel-done"
	log "kernel $krel built in $((t1 - t0)) s"
fi
krel=$(cat "$out/kernelrelease")

# --- our module against this tree ------------------------------------------
modkey=$(cd "$here" && hash_of "$key" Makefile $(find . -maxdepth 1 -name '*.[ch]' | LC_ALL=C sort) include/uapi/stackmap.h)
if [ ! -f "$out/stackmap.ko" ] || [ "$(cat "$out/stackmap.ko.key" 2>/dev/null)" != "$modkey" ]; then
	log "building stackmap.ko against $krel"
	rm -rf "$out/module-src" "$out/stackmap.ko" "$out/stackmap.ko.key"
	mkdir -p "$out/module-src/include/uapi"
	cp "$here"/Makefile "$here"/*.c "$here"/*.h "$out/module-src/"
	cp "$here"/include/uapi/stackmap.h "$out/module-src/include/uapi/"
	kmake -s M="$out/module-src" modules >&2 || die "stackmap.ko does not build against $krel"
	cp "$out/module-src/stackmap.ko" "$out/stackmap.ko"
	mdir=$out/modules/lib/modules/$krel
	mkdir -p "$mdir/extra"
	cp "$out/stackmap.ko" "$mdir/extra/stackmap.ko"
	depmod -b "$out/modules" "$krel"
	echo "$modkey" >"$out/stackmap.ko.key"
fi

# --- prune cache entries that no longer match their inputs ---------------------
for d in "$cache/kernels/$name"-* "$cache/kernels"/src-*; do
	case "$d" in "$out" | "$src" | *.tmp | *'*') ;; *) log "pruning $d"; rm -rf "$d" ;; esac
done
echo "$out"
