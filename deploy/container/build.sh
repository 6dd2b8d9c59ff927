#!/usr/bin/env bash
# deploy/container/build.sh -- build the Dockerfile's image here, with buildah.
#
# Why this exists: this machine (and CI) has no Docker daemon and no registry
# that serves base images, only Debian's apt mirror.  So the base image is
# made from a `debootstrap --variant=minbase bookworm` root, as Debian's own
# images are, and the Dockerfile is built on it with Debian's buildah
# (`--storage-driver vfs --isolation chroot`: no daemon, no overlay mounts,
# no user namespaces needed).  A Docker user needs none of this:
# `docker build -t stackmapd .` uses debian:bookworm-slim.
#
#   1. The base root, cached as a tarball keyed by its inputs (suite,
#      mirrors, the trims below, this script's version) in $SM_CONTAINER_CACHE
#      (default /var/cache/stackmapd, next to .ci/fresh-root.sh's root);
#      debootstrap reuses $CACHE/apt-archives for the .debs it downloads.
#      The root is trimmed the way debian:bookworm-slim is (no docs, man
#      pages or locales; apt keeps no .debs or lists) and has Debian 12's
#      standard apt sources.
#   2. The base image localhost/stackmapd-base:bookworm-KEY: `buildah from
#      scratch`, the tarball added at /, committed.  Skipped when it exists.
#   3. The image: `buildah build --layers` of the Dockerfile with
#      BASE=that base, tagged localhost/stackmapd:src-HASH (HASH covers the
#      Dockerfile, .dockerignore, every file the Dockerfile copies and the
#      base) and localhost/stackmapd:latest.  Skipped when src-HASH exists,
#      so an unchanged checkout costs a second.  The layer cache keeps the
#      apt steps of both stages across source changes.  After a build,
#      older images and the cached layers only they used are removed (vfs
#      keeps a full copy of the tree per layer).
#
# The build stage's pip needs an index for setuptools, cffi and
# prometheus-client.  PyPI when reachable; this machine has none, so when
# $SM_PIP_INDEX_DIR (default /opt/pypi, a local PEP 503 index) exists it is
# bind-mounted read-only into the build and passed as PIP_INDEX_URL.
#
# Usage (as root):  deploy/container/build.sh      prints the image's tag last
# Environment: SM_CONTAINER_CACHE, SM_DEBIAN_MIRROR, SM_DEBIAN_SECURITY_MIRROR,
#              SM_PIP_INDEX_DIR, SM_HOST_CA_BUNDLE (default the host's
#              /etc/ssl/certs/ca-certificates.crt, given to pip as PIP_CERT),
#              SM_BUILDAH_STORAGE_DRIVER (default vfs).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# SUITE, MIRROR, SECURITY_MIRROR, debian_sources (deploy/lib.sh)
. "$REPO/deploy/lib.sh"
CACHE=${SM_CONTAINER_CACHE:-/var/cache/stackmapd}
PIP_INDEX_DIR=${SM_PIP_INDEX_DIR:-/opt/pypi}
HOST_CA_BUNDLE=${SM_HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
IMAGE=localhost/stackmapd
BUILDAH=(buildah --storage-driver "${SM_BUILDAH_STORAGE_DRIVER:-vfs}")

log() { printf 'container: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
t_start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t_start )) s"; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and buildah's chroot isolation need it)"
command -v buildah >/dev/null || die "buildah is not installed (apt-get install buildah)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"

# ---------------------------------------------------------------------------
# 1. The base root, cached.
# ---------------------------------------------------------------------------
# What debian:bookworm-slim leaves out (its /etc/dpkg/dpkg.cfg.d/docker).
DPKG_EXCLUDES='path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias'
# apt keeps no downloaded .debs and no binary caches (its /etc/apt/apt.conf.d/docker-clean).
APT_CLEAN='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Install-Recommends "false";'
KEY=$(printf '%s\n' "v1" "$SUITE" minbase "$MIRROR" "$SECURITY_MIRROR" "$DPKG_EXCLUDES" "$APT_CLEAN" \
      | sha256sum | cut -c1-16)
TARBALL=$CACHE/container-base-$SUITE-$KEY.tar
BASE=localhost/stackmapd-base:$SUITE-$KEY

build_root() {
    local tmp=$CACHE/container-base-build-$KEY.$$ f
    rm -rf "$tmp"
    mkdir -p "$CACHE/apt-archives"
    log "debootstrap --variant=minbase $SUITE $MIRROR (cached afterwards as $TARBALL)"
    # The trims go in before debootstrap unpacks anything but the essentials.
    mkdir -p "$tmp/etc/dpkg/dpkg.cfg.d"
    printf '%s\n' "$DPKG_EXCLUDES" >"$tmp/etc/dpkg/dpkg.cfg.d/docker"
    debootstrap --variant=minbase --cache-dir="$CACHE/apt-archives" "$SUITE" "$tmp" "$MIRROR" \
        >"$CACHE/container-debootstrap.log" 2>&1 \
        || { tail -n 20 "$CACHE/container-debootstrap.log" >&2; rm -rf "$tmp"; die "debootstrap failed (log: $CACHE/container-debootstrap.log)"; }
    debian_sources "$tmp"
    printf '%s\n' "$APT_CLEAN" >"$tmp/etc/apt/apt.conf.d/docker-clean"
    # What debootstrap unpacked before the excludes applied, the package
    # lists, caches and logs: nothing an image should carry.
    for f in man groff info lintian linda locale; do
        find "$tmp/usr/share/$f" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
    done
    find "$tmp/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$tmp/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/*.bin "$tmp"/var/cache/apt/archives/*.deb \
           "$tmp"/var/log/* "$tmp"/var/cache/debconf/*-old "$tmp"/etc/machine-id "$tmp"/etc/hostname
    : >"$tmp/etc/resolv.conf"
    tar --numeric-owner --xattrs -C "$tmp" -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$tmp"
}

mkdir -p "$CACHE"
exec 9>"$CACHE/.container.lock"   # one build at a time (shared storage, shared cache)
flock 9
[ -f "$TARBALL" ] || build_root
log "base root: $TARBALL ($(elapsed))"

# ---------------------------------------------------------------------------
# 2. The base image.
# ---------------------------------------------------------------------------
if ! "${BUILDAH[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
    log "base image $BASE from $TARBALL"
    ctr=$("${BUILDAH[@]}" from --pull=never scratch)
    "${BUILDAH[@]}" add "$ctr" "$TARBALL" / >/dev/null
    "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd /bin/bash --os linux --arch amd64 \
        --label "org.opencontainers.image.description=debootstrap --variant=minbase $SUITE, trimmed like debian:$SUITE-slim" \
        "$ctr"
    "${BUILDAH[@]}" commit --rm -q "$ctr" "$BASE" >/dev/null
fi
log "base image: $BASE ($(elapsed))"

# prune BUILD_LOG: drop older images of ours and the layer cache that only
# they used.  vfs keeps a full copy of the tree per layer, so a cache that
# only grows would fill the disk.  Kept: the current base and image, and
# every intermediate image this build made or reused (its "--> ID" lines),
# which is the cache the next build can use.
prune() {
    local keep id k used removed i
    "${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}}' \
        | grep -E "^($IMAGE:src-|localhost/stackmapd-base:)" | grep -vxF -e "$TAG" -e "$BASE" \
        | while read -r id; do "${BUILDAH[@]}" rmi "$id" >/dev/null 2>&1 || true; done \
        || true   # nothing to remove: grep found no line
    keep=$(grep -oE '^--> (Using cache )?[0-9a-f]{11,}' "$1" | awk '{print $NF}') || true
    # Removing an unused image can leave its parent dangling: repeat.
    for (( i=0; i<32; i++ )); do
        removed=0
        for id in $("${BUILDAH[@]}" images -q --no-trunc --filter dangling=true); do
            id=${id#sha256:}
            used=0
            for k in $keep; do [[ $id == "$k"* ]] && used=1; done
            [ "$used" = 1 ] && continue
            "${BUILDAH[@]}" rmi "$id" >/dev/null 2>&1 && removed=1
        done
        [ "$removed" = 0 ] && break
    done
    return 0
}

# ---------------------------------------------------------------------------
# 3. The image.
# ---------------------------------------------------------------------------
# Exactly what the Dockerfile copies, plus the Dockerfile and the base.
SRC_HASH=$(cd "$REPO" && {
    printf '%s\n' "$BASE"
    find Dockerfile .dockerignore pyproject.toml setup.py MANIFEST.in README.md \
         stackmap_core stackmapd kernel/include -type f \
         ! -name '*.pyc' ! -name '*.so' ! -name '*.o' ! -path '*/__pycache__/*' \
         ! -name '_stackmap_core.c' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-16)
TAG=$IMAGE:src-$SRC_HASH

if "${BUILDAH[@]}" inspect --type image "$TAG" >/dev/null 2>&1; then
    log "image $TAG exists, not rebuilt ($(elapsed))"
else
    args=(--isolation chroot --layers --pull=never --build-arg "BASE=$BASE" -t "$TAG" -t "$IMAGE:latest")
    if [ -d "$PIP_INDEX_DIR/simple" ]; then
        args+=(--volume "$PIP_INDEX_DIR:$PIP_INDEX_DIR:ro" --build-arg "PIP_INDEX_URL=file://$PIP_INDEX_DIR/simple")
    fi
    # The build host's CA bundle, for pip only and only during the build: a
    # host that reaches PyPI through a TLS-inspecting proxy trusts the
    # proxy's CA, which a fresh Debian base does not.
    if [ -f "$HOST_CA_BUNDLE" ]; then
        args+=(--volume "$HOST_CA_BUNDLE:/run/stackmapd-build-ca.crt:ro" --build-arg "PIP_CERT=/run/stackmapd-build-ca.crt")
    fi
    log "buildah build ${args[*]} $REPO"
    t0=$(date +%s)
    build_log=$CACHE/container-build.log
    nice -n 10 "${BUILDAH[@]}" build "${args[@]}" "$REPO" 2>&1 | tee "$build_log" >&2 \
        || die "buildah build failed (log: $build_log)"
    log "built $TAG in $(( $(date +%s) - t0 )) s"
    prune "$build_log"
fi
log "done ($(elapsed))"
printf '%s\n' "$TAG"
