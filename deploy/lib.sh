# deploy/lib.sh -- what the build scripts share (sourced, never run).
#
# The test VM (deploy/build-image.sh), the appliance disk
# (deploy/appliance/build.sh), the container base (deploy/container/build.sh),
# CI's fresh root (.ci/fresh-root.sh) and our kernels (kernel/build-kernel.sh)
# all key caches by hashing their inputs, time their steps and write Debian's
# apt sources; they do it here, once.  POSIX sh, so the /bin/sh scripts can
# source it too.

# The Debian release and mirrors every image is bootstrapped from.
SUITE=bookworm
MIRROR=${SM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SM_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# hash_of ARGS...: one short sha256 over strings and file contents (an
# argument naming a file counts by its contents, anything else as text).
hash_of() {
    for a in "$@"; do
        if [ -f "$a" ]; then sha256sum <"$a"; else printf '%s\n' "$a"; fi
    done | sha256sum | cut -c1-16
}

# step NAME COMMAND...: run COMMAND and append its wall time to $TIMINGS
# (and to stderr).
step() {
    _step_name=$1
    shift
    _step_t0=$(date +%s.%N)
    "$@"
    _step_t1=$(date +%s.%N)
    awk -v n="$_step_name" -v a="$_step_t0" -v b="$_step_t1" \
        'BEGIN { printf "%-12s %6.1f s\n", n, b - a }' | tee -a "$TIMINGS" >&2
}

# debian_sources ROOT: Debian 12's standard apt sources, as its installer
# writes them (debootstrap writes only the main suite; a real install also
# has updates and security), in place of debootstrap's sources.list.
debian_sources() {
    rm -f "$1/etc/apt/sources.list"
    cat >"$1/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
}
