# stackmapd container image: the package built from this checkout, run as
# `stackmapd -l 0.0.0.0` in the container's own network namespace.  Publish
# the port where your clients are, e.g. only on the host's loopback:
#
#   docker build -t stackmapd .
#   docker run -d --name stackmapd -p 127.0.0.1:11211:11211 stackmapd -m 1024 -t 4
#
# (arguments after the image name go to stackmapd).  Prometheus /metrics and
# the admin API stay on the container's own 127.0.0.1:9150 unless you pass
# --metrics-listen 0.0.0.0:9150 (and publish it; set --admin-token-file).
#
# Two stages on one base.  The first compiles the C core (cffi) into a wheel
# with the build tools and installs it and its dependencies (cffi,
# prometheus-client) into a venv, /opt/stackmapd; the second has only
# Debian's python3, liburing2 (the uring backend) and that venv: no compiler,
# no pip.  It runs as the unprivileged user stackmapd (uid 11211, numeric so
# Kubernetes' runAsNonRoot can check it).  The stackmap backend needs the
# host to have loaded the module and the container to be given the device
# (`--device /dev/stackmap`); without it, --backend auto falls back.
#
# BASE is any Debian 12 (bookworm) image: a Docker user has debian:bookworm-slim;
# deploy/container/build.sh builds one from debootstrap where no registry is
# reachable and passes it with --build-arg BASE=... (see deploy/README.md).
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
# Few steps, since a builder without overlay storage (buildah's vfs) keeps a
# full copy of the tree per step: the toolchain (cached across source
# changes), the sources, the build.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       build-essential pkg-config liburing-dev libssl-dev python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/pip
# PyPI by default; another index with --build-arg PIP_INDEX_URL=... (an
# unset ARG is not in the environment, so pip then sees nothing).
ARG PIP_INDEX_URL
# A CA bundle for pip (PIP_CERT), when the build reaches PyPI through a
# TLS-inspecting proxy the base image does not trust; deploy/container/build.sh
# mounts the build host's bundle for the build only (nothing of it is kept).
ARG PIP_CERT
# .dockerignore admits only what the package build needs.
COPY . /src/
RUN cd /src \
    && /opt/pip/bin/pip wheel --no-cache-dir --disable-pip-version-check -w /wheels . \
    && python3 -m venv --without-pip /opt/stackmapd \
    && /opt/pip/bin/pip --python /opt/stackmapd/bin/python install --no-cache-dir \
       --disable-pip-version-check --no-index --find-links /wheels stackmapd \
    && cd / && /opt/stackmapd/bin/python -I -c "import stackmap_core, stackmapd"

FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 liburing2 libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 11211 stackmapd \
    && useradd --system --uid 11211 --gid 11211 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin stackmapd
COPY --from=build /opt/stackmapd /opt/stackmapd
ENV PATH=/opt/stackmapd/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER 11211:11211
EXPOSE 11211
ENTRYPOINT ["stackmapd", "-l", "0.0.0.0"]
