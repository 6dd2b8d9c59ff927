# stackmapd container image: the package built from this checkout, run as
# `stackmapd -l 0.0.0.0` (the container's own network namespace; publish the
# port with e.g. `docker run -p 127.0.0.1:11211:11211 stackmapd`).  Extra
# arguments go after the image name: `docker run stackmapd -m 1024 -t 4`.
#
# Two stages: the first compiles the C core (cffi) into a wheel with the
# build tools, the second installs only that wheel and the runtime library
# (liburing2, for the uring backend) on a slim base.  The stackmap backend
# needs the host to have loaded the module and the container to be given the
# device (`--device /dev/stackmap`); without it, --backend auto falls back.

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config liburing-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY stackmap_core ./stackmap_core
COPY stackmapd ./stackmapd
COPY kernel/include ./kernel/include
RUN pip wheel --no-cache-dir . -w /wheels

FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends liburing2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels stackmapd \
    && rm -rf /wheels \
    && useradd --system --no-create-home --shell /usr/sbin/nologin stackmapd
USER stackmapd
EXPOSE 11211
ENTRYPOINT ["stackmapd", "-l", "0.0.0.0"]
