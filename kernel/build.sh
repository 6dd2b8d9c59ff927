#!/bin/sh
# build.sh -- build stackmap.ko out of tree against Debian 12's 6.12 kernel
# headers and print the path of the .ko on the last line of stdout.
#
# The exact ABI version moves with security updates, so it is resolved now
# from the linux-headers-6.12-amd64 metapackage (or taken from $KVER), and
# the headers are installed (as root, without recommends) when missing.
# The sources are copied to $BUILD_DIR (default build/kernel/ at the top of
# the repository, gitignored) so the tree stays clean.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
out=${BUILD_DIR:-$top/build/kernel}

if [ -z "${KVER:-}" ]; then
	KVER=$(apt-cache depends linux-headers-6.12-amd64 2>/dev/null |
		sed -n 's/.*Depends: linux-headers-//p' | head -n1)
fi
if [ -z "${KVER:-}" ] && [ "$(id -u)" -eq 0 ]; then
	# A fresh machine has no package lists yet: fetch them once and ask again.
	apt-get update -q >&2 || true
	KVER=$(apt-cache depends linux-headers-6.12-amd64 2>/dev/null |
		sed -n 's/.*Depends: linux-headers-//p' | head -n1)
fi
if [ -z "${KVER:-}" ]; then
	# No apt metadata: take an installed 6.12 amd64 header tree.
	KVER=$(ls -d /usr/src/linux-headers-6.12*-amd64 2>/dev/null |
		sed 's|.*/linux-headers-||' | sort -V | tail -n1)
fi
[ -n "$KVER" ] || { echo "build.sh: cannot resolve the 6.12 headers version (run apt-get update?)" >&2; exit 1; }
KDIR=/usr/src/linux-headers-$KVER
if [ ! -d "$KDIR" ]; then
	echo "build.sh: installing linux-headers-$KVER" >&2
	if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
		"linux-headers-$KVER" >&2
fi

mkdir -p "$out"
cp "$here"/Makefile "$here"/*.c "$here"/*.h "$out"/
mkdir -p "$out/include/uapi"
cp "$here"/include/uapi/stackmap.h "$out/include/uapi/"
make -s -C "$KDIR" M="$out" modules >&2
echo "$out/stackmap.ko"
