#!/bin/sh
# tests/mcsuite/setup.sh OUTDIR -- memcached 1.6.18's own test suite, ready
# to run against stackmapd (tests/test_mc_suite.py; `make mctest`).
#
# Why: memcached's t/ files are the most complete statement of how a
# memcached behaves, and its harness (t/lib/MemcachedTest.pm) starts
# "$builddir/memcached-debug" with each file's own flags under
# "$builddir/timedrun".  So OUTDIR becomes such a builddir:
#   OUTDIR/t/               memcached's t/, untouched
#   OUTDIR/doc/protocol.txt line-lengths.t reads it
#   OUTDIR/timedrun         built from the same source (timedrun.c)
#   OUTDIR/memcached-debug  tests/mcsuite/memcached-debug (the wrapper that
#                           starts stackmapd, or $SM_MCTEST_SERVER)
# The source is Debian's memcached_1.6.18.orig.tar.xz (the version Debian 12
# ships; Debian's patches do not touch t/), fetched from the Debian mirror
# (deploy/lib.sh's MIRROR) once, checked against the sha256 pinned below
# and kept in CACHE/sources/ (CACHE: $STACKMAPD_CACHE, else /var/cache/stackmapd
# as root, else ~/.cache/stackmapd).  No apt source is added or changed.
set -eu

out=${1:?usage: setup.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../deploy/lib.sh"   # MIRROR

VERSION=1.6.18
TARBALL=memcached_$VERSION.orig.tar.xz
SHA256=35872bd25f8d29d7cc2072d23e74344530891bfd0aa4f4f64184a8ae7291164b
URL=$MIRROR/pool/main/m/memcached/$TARBALL

if [ -n "${STACKMAPD_CACHE:-}" ]; then
	cache=$STACKMAPD_CACHE
elif [ "$(id -u)" -eq 0 ]; then
	cache=/var/cache/stackmapd
else
	cache=$HOME/.cache/stackmapd
fi
mkdir -p "$cache/sources"
tar_path=$cache/sources/$TARBALL

have_good() { [ -f "$1" ] && echo "$SHA256  $1" | sha256sum -c --quiet - >/dev/null 2>&1; }

if ! have_good "$tar_path"; then
	echo "mcsuite: fetching $URL" >&2
	tmp=$tar_path.part.$$
	if command -v curl >/dev/null; then
		curl -fsSL --retry 3 -o "$tmp" "$URL"
	else
		python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$URL" "$tmp"
	fi
	if ! have_good "$tmp"; then
		rm -f "$tmp"
		echo "mcsuite: $URL does not have sha256 $SHA256: refused" >&2
		exit 1
	fi
	mv "$tmp" "$tar_path"
fi

rm -rf "$out.new"
mkdir -p "$out.new"
tar -C "$out.new" --strip-components=1 -xJf "$tar_path" "memcached-$VERSION/t" "memcached-$VERSION/timedrun.c" \
	"memcached-$VERSION/doc/protocol.txt"
${CC:-cc} -O2 -o "$out.new/timedrun" "$out.new/timedrun.c"
cp "$here/memcached-debug" "$out.new/memcached-debug"
chmod 755 "$out.new/memcached-debug"
echo "$SHA256" >"$out.new/.source-sha256"
rm -rf "$out"
mv "$out.new" "$out"
