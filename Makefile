# stackmapd -- top-level make targets.
#
#   make run    fresh machine -> venv, build, install, start stackmapd on 127.0.0.1:11211
#   make test   fresh machine -> system and Python dependencies, build, full test suite
#
# The C-only targets below (build/smd, build/test_cache, compile-check) are for
# working on the data plane without Python: build/smd is a bare C driver of the
# engine, useful under gdb, valgrind and sanitizers.

CC      ?= cc
CORE    := stackmap_core/src
CWARN   := -Wall -Wextra -Werror
# The core's compiler and linker flags come from stackmap_core/_build.py,
# which gives the same lists to the extension build (pip install .): the
# strict flags, the include path and liburing's flags when a liburing
# program compiles and links (-DSM_HAVE_URING=1; else io/uring.c builds its
# stub).  Targets below add only an optimisation level and sanitizers.
# Asked once, only by targets that compile the core (the $(eval) keeps the
# first answer); tests/test_build.py checks both sides agree.
core_flags = $(or $(shell $(PYTHON) stackmap_core/_build.py $(1)),$(error stackmap_core/_build.py $(1) failed))
CFLAGS_CORE = $(eval CFLAGS_CORE := $$(call core_flags,--cflags))$(CFLAGS_CORE)
CORE_LIBS = $(eval CORE_LIBS := $$(call core_flags,--libs))$(CORE_LIBS)
CORE_SRCS := $(shell find $(CORE) -name '*.c' | sort)
CORE_HDRS := $(shell find $(CORE) -name '*.h') kernel/include/uapi/stackmap.h

.PHONY: compile-check clean-c

build:
	mkdir -p build

# Compile every core file on its own (catches warnings early).
compile-check: | build
	@set -e; for f in $(CORE_SRCS); do echo "CC $$f"; $(CC) $(CFLAGS_CORE) -c $$f -o build/check.o; done

build/smd: $(CORE_SRCS) $(CORE_HDRS) tests/c/smd_main.c | build
	$(CC) $(CFLAGS_CORE) -o $@ $(CORE_SRCS) tests/c/smd_main.c $(CORE_LIBS)

build/smd-asan: $(CORE_SRCS) $(CORE_HDRS) tests/c/smd_main.c | build
	$(CC) $(CFLAGS_CORE) -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -o $@ $(CORE_SRCS) tests/c/smd_main.c $(CORE_LIBS)

CACHE_SRCS := $(shell find $(CORE)/cache -name '*.c') $(CORE)/stats.c $(CORE)/prefetch.c $(CORE)/latency.c $(CORE)/proto/parse.c
build/test_cache: $(CACHE_SRCS) $(CORE_HDRS) tests/c/test_cache.c | build
	$(CC) $(CFLAGS_CORE) -DSM_TEST_HOOKS -fsanitize=address,undefined -o $@ $(CACHE_SRCS) tests/c/test_cache.c -pthread

# Our load generator (loadtest/mcblast.c; python -m loadtest builds it the same way).
build/mcblast: loadtest/mcblast.c | build
	$(CC) -O2 -std=c11 $(CWARN) -o $@ loadtest/mcblast.c -lm

# What the C targets above and below build, and setuptools' staging and
# objects (build/lib.*, build/temp.*, build/bdist.*).  Everything else in
# build/ stays: the VM image cache (build/vm, slow to rebuild), the fuzz
# corpora and findings (build/fuzz/corpus, build/fuzz/findings), TSan
# reports (build/tsan) and the kernel module's build (build/kernel).
C_OUTPUTS = build/check.o build/smd build/smd-asan build/smd-tsan build/tsan-stress build/test_cache \
            build/mcblast $(addprefix build/fuzz/,$(FUZZ_C))

clean-c:
	rm -rf $(C_OUTPUTS) build/lib.* build/temp.* build/bdist.*

# ---------------------------------------------------------------------------
# Python: venv, package, `make run`, `make test`, `make lint`.
#
# Everything is installed into .venv by pip from this checkout; system
# packages (compiler, liburing, memcached for the differential tests) come
# from apt-get, only when missing, and only as root.  Stamps in .venv keep a
# second run quick: the package is reinstalled only when a C or Python source
# (or the packaging) changed.
# ---------------------------------------------------------------------------

# Debian's interpreter when there is one: the apt packages below
# (python3-dev, python3-venv) are its headers and venv module, and it is the
# python3 a Debian user has.  A pyenv or other python3 earlier on PATH would
# build against its own headers and hide a missing python3-dev.  Another
# interpreter: make PYTHON=python3.12 (its headers are then yours to provide).
PYTHON  ?= $(if $(wildcard /usr/bin/python3),/usr/bin/python3,python3)
VENV    := .venv
VPY     := $(VENV)/bin/python
VPIP    := $(VPY) -m pip
STAMP_PKG  := $(VENV)/.stamp-installed
STAMP_TEST := $(VENV)/.stamp-test-deps
PKG_FILES  := pyproject.toml setup.py MANIFEST.in $(shell find stackmap_core stackmapd -name '*.py' -not -name '_stackmap_core*')

# What `pip install .` needs on a bare Debian 12 (proven by .ci/fresh-root.sh):
# a compiler, Python's headers (pyconfig.h comes with python3-dev), venv, and
# liburing for the uring backend (without it the build leaves uring out).
# pkg-config gives the C-only targets liburing's flags.  cffi comes as a
# wheel from PyPI, so libffi-dev is not needed.
APT_BUILD := build-essential python3-dev python3-venv pkg-config liburing-dev libssl-dev
# perl and xz-utils: memcached's own t/ suite (tests/test_mc_suite.py) is
# perl, fetched as a .tar.xz (tests/mcsuite/setup.sh); libio-socket-ssl-perl:
# its harness's TLS mode (SSL_TEST=1, the ssl_*.t files) speaks TLS with it.
APT_TEST  := $(APT_BUILD) memcached libmemcached-tools strace prometheus nutcracker iproute2 curl buildah debootstrap \
             perl xz-utils libio-socket-ssl-perl

# $(call apt_ensure,packages): install the packages dpkg does not have.
# apt-get update runs first when there are no package lists (a fresh
# debootstrap or container), and again if an install fails (stale lists).
define apt_ensure
	command -v dpkg-query >/dev/null 2>&1 || { echo "no dpkg: make sure these are installed: $(1)"; exit 0; }; \
	missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" != 0 ]; then echo "missing system packages:$$missing -- install them as root"; exit 1; fi; \
	echo "apt-get install$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	ls /var/lib/apt/lists/ 2>/dev/null | grep -q '_Packages' || apt-get update -q >/dev/null; \
	apt-get install -y -q $$missing >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; }
endef

.PHONY: run test lint apt-build apt-test venv install mctest

apt-build:
	@$(call apt_ensure,$(APT_BUILD))

apt-test:
	@$(call apt_ensure,$(APT_TEST))

$(VPY):
	$(PYTHON) -m venv $(VENV)

venv: $(VPY)

# The package (C core compiled by cffi) into the venv.
# setuptools stages the wheel in build/lib.* and never prunes it: a module
# renamed or deleted in the tree would still ship.  Stage from scratch.
$(STAMP_PKG): $(CORE_SRCS) $(CORE_HDRS) $(PKG_FILES) | $(VPY)
	rm -rf build/lib.* build/bdist.*
	$(VPIP) install -q .
	@touch $@

install: apt-build $(STAMP_PKG)

# Test tools (the [test] extra); installing the extra installs the package too.
$(STAMP_TEST): pyproject.toml | $(VPY)
	rm -rf build/lib.* build/bdist.*
	$(VPIP) install -q '.[test]'
	@touch $@ $(STAMP_PKG)

run: apt-build
	@$(MAKE) --no-print-directory $(STAMP_PKG)
	exec $(VENV)/bin/stackmapd -l 127.0.0.1 -p 11211

# The suite runs on TEST_JOBS pytest-xdist workers, one test file per worker
# at a time (--dist loadfile: a file's module-scoped servers and fixtures
# are made once, as in a plain `pytest tests`): most tests wait on servers,
# sleeps and TTLs rather than burn CPU, so 4 workers on 2 cores take well
# under half the time of one.  Each worker starts its servers on ports of
# its own (tests/ports.py).
#
# Beside it, in a second lane, the guests boot one after another under qemu
# TCG (test-guests: the test VM, our kernels' ring tests, the appliance
# image; their lines start with "[guests] ").  The workers use about one of
# two cores and a TCG guest about one, so the lanes together take little
# more than the longer of them, where one after the other they took the sum
# (measured in .ci/run's header).  Only the guest lane runs apt-get (the VM
# tools, the kernel build packages, the image's tools), so the two never
# wait on dpkg's lock; the guests forward ports the kernel picks (bind 0, in
# the ephemeral range), which the workers' port slices stay below.  The
# tests marked `serial` measure how a server shares a CPU and run last, alone.
TEST_JOBS ?= 4
PYTEST_PARALLEL = $(VENV)/bin/pytest -q -rs -n $(TEST_JOBS) --dist loadfile -m 'not serial'
PYTEST_SERIAL = $(VENV)/bin/pytest -q -rs -m serial

test: apt-test
	@$(MAKE) --no-print-directory $(STAMP_TEST)
	@$(MAKE) --no-print-directory $(STAMP_PKG) build/test_cache
	./build/test_cache
	$(VENV)/bin/ruff check .
	@$(MAKE) --no-print-directory -j2 test-suite test-guests
	$(PYTEST_SERIAL) tests

.PHONY: test-suite test-guests
# tests/vm/ is the guest lane's: its tests run against a guest that is up
# (build/vm/run/vm.env) and skip otherwise, so beside the guest lane they
# would test its VM a second time, at once.
test-suite:
	$(PYTEST_PARALLEL) --ignore=tests/vm tests

# pipefail (bash): the lane fails when a guest test does, not with sed;
# unbuffered Python: what a guest test printed is in the log even when a
# time limit kills the lane.
test-guests:
	@bash -c 'set -o pipefail; export PYTHONUNBUFFERED=1; { $(MAKE) --no-print-directory vm-test && \
	  $(MAKE) --no-print-directory kernel-test && \
	  $(MAKE) --no-print-directory appliance-test; } 2>&1 | sed -u "s/^/[guests] /"'

# memcached 1.6.18's own t/ files against stackmapd (epoll and uring), alone;
# `make test` runs them too.  build/mctest/ is memcached's harness's build
# directory (tests/mcsuite/setup.sh, also run by the test module when
# missing); tests/mcsuite/files.toml says what each file must do.
mctest: apt-test
	@$(MAKE) --no-print-directory $(STAMP_TEST)
	@$(MAKE) --no-print-directory $(STAMP_PKG)
	sh tests/mcsuite/setup.sh build/mctest
	$(VENV)/bin/pytest -q -rxXs tests/test_mc_suite.py

# Lint needs the lint tools only (the [lint] extra, read from
# pyproject.toml): no system packages, no build of the package.
STAMP_LINT := $(VENV)/.stamp-lint
LINT_REQS = $(shell $(PYTHON) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["lint"])')

$(STAMP_LINT): pyproject.toml | $(VPY)
	$(VPIP) install -q $(foreach r,$(LINT_REQS),'$(r)')
	@touch $@

lint: $(STAMP_LINT)
	$(VENV)/bin/ruff check .

# ---------------------------------------------------------------------------
# Test VM (deploy/, owned by the deploy part): Debian's 6.12 kernel under qemu
# TCG with our module and stackmapd inside, driven from the host over
# 127.0.0.1 forwards.  Caches live in build/vm/ (keyed by input hashes):
# a first build downloads the kernel and debootstraps (~1.5 min), later ones
# take seconds.  `make vm-test` builds what is missing, boots, runs
# memccapable + pymemcache + the in-guest checks, prints what it proved and
# powers off.  SM_VM_BACKENDS=epoll,stackmap picks the backends (default auto).
# ---------------------------------------------------------------------------
# `make vm-bench` boots the same VM and runs only the in-guest backend
# comparison (the load-test harness, mcblast 16 x 1 and 16 x 8, every backend):
# a benchmark, so not part of vm-test.
.PHONY: vm-image vm-test vm-bench

vm-image:
	bash deploy/build-image.sh

vm-test: apt-test
	@$(MAKE) --no-print-directory $(STAMP_TEST)
	$(VPY) deploy/vm_test.py

vm-bench: apt-test
	@$(MAKE) --no-print-directory $(STAMP_TEST)
	$(VPY) deploy/vm_test.py --bench
# --- end of test VM block ---

# --- our kernels (kernel/, owned by the kernel part) ---
# Debian's linux-source-6.12 + kernel/patches/, two configurations
# (kernel/config/), built by kernel/build-kernel.sh and cached outside the
# checkout (/var/cache/stackmapd/kernels as root; see kernel/README.md).  The
# first build costs tens of minutes on 2 cores, later ones seconds.
#   make kernel-appliance | kernel-debug   build (or reuse) one kernel + module
#   make kernel-test      ring tests under both kernels in qemu TCG (debug:
#                         2 vCPUs, KASAN/kmemleak/lockdep must stay silent)
.PHONY: kernel-appliance kernel-debug kernel-test

kernel-appliance:
	sh kernel/build-kernel.sh appliance

kernel-debug:
	sh kernel/build-kernel.sh debug

kernel-test: apt-test
	@$(MAKE) --no-print-directory $(STAMP_TEST)
	SM_KERNEL_TESTS=1 $(VENV)/bin/pytest -q -rs tests/vm/test_kernels.py
# --- end of our kernels block ---

# --- appliance image (deploy/appliance/, owned by the image part) ---
# `make image` builds build/stackmapd-appliance.qcow2: a GPT disk that boots
# by itself under UEFI or BIOS (GRUB), Debian 12 with systemd, our kernel
# module loaded at boot, stackmapd as a hardened service that keeps its cache
# across reboots, configured at first boot from a NoCloud seed
# (deploy/appliance/README.md).  Cached in build/appliance/ by input hashes:
# the first build debootstraps (~3-4 min), an unchanged tree takes seconds.
# `make appliance-test` boots a copy-on-write overlay of it under qemu TCG
# (tests/vm/test_appliance.py): serve, ACPI power-off, boot again, same cache.
APT_IMAGE := debootstrap gdisk dosfstools mtools e2fsprogs qemu-utils qemu-system-x86 ovmf \
             grub-common grub-efi-amd64-bin grub-pc-bin kmod
.PHONY: apt-image image appliance-test

apt-image:
	@$(call apt_ensure,$(APT_IMAGE))

# APPLIANCE_KERNEL=ours (default): our patched kernel (kernel/build-kernel.sh
# appliance, cached in /var/cache/stackmapd/kernels); =debian: Debian's
# linux-image-6.12-amd64; =DIR: a directory with bzImage and stackmap.ko.
APPLIANCE_KERNEL ?= ours
image: apt-image
	SM_APPLIANCE_KERNEL=$(APPLIANCE_KERNEL) bash deploy/appliance/build.sh

appliance-test: apt-test apt-image
	@$(MAKE) --no-print-directory $(STAMP_TEST)
	@$(MAKE) --no-print-directory image
	SM_APPLIANCE=1 $(VENV)/bin/pytest -q -rs tests/vm/test_appliance.py
# --- end of appliance image block ---

# --- fuzzing and sanitizers ---
# libFuzzer harnesses and a ThreadSanitizer build of the engine (tests/fuzz/,
# see its README).  Clang's libFuzzer and sanitizer runtimes come from
# Debian's libclang-rt-14-dev; the Python harnesses use atheris (PyPI),
# installed into the venv.
#
#   make fuzz [FUZZ_SECONDS=300]   every harness FUZZ_SECONDS each; fails on any finding
#   make fuzz-build                build the C harnesses (build/fuzz/)
#   make tsan                      the engine under ThreadSanitizer: admin-API stress
#                                  and the concurrency tests against build/smd-tsan
#   make ci-fuzz                   what CI runs: every harness 60 s, then tsan
#
# New corpus entries go to build/fuzz/corpus/<harness>/ (scratch: the seeds
# in tests/fuzz/corpus/<harness>/ are read, never written); reproducers of
# findings go to build/fuzz/findings/<harness>/.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 300
FUZZ_FLAGS    = $(CFLAGS_CORE) -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
                -fno-omit-frame-pointer
TSAN_FLAGS    = $(CFLAGS_CORE) -O1 -fsanitize=thread -fno-omit-frame-pointer
FUZZ_C       := fuzz_conn fuzz_snapshot
FUZZ_PY      := fuzz_config fuzz_snapfile
APT_FUZZ     := clang libclang-rt-14-dev $(APT_TEST)
STAMP_ATHERIS := $(VENV)/.stamp-atheris

.PHONY: apt-fuzz fuzz fuzz-build fuzz-py-deps tsan ci-fuzz

apt-fuzz:
	@$(call apt_ensure,$(APT_FUZZ))

build/fuzz:
	mkdir -p build/fuzz

build/fuzz/%: tests/fuzz/%.c $(CORE_SRCS) $(CORE_HDRS) | build/fuzz
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(CORE_SRCS) $(CORE_LIBS)

fuzz-build: $(addprefix build/fuzz/,$(FUZZ_C))

# atheris builds against clang's libFuzzer; 3.0.0 is the newest on PyPI.
$(STAMP_ATHERIS): $(STAMP_TEST)
	$(VPIP) install -q atheris==3.0.0
	@touch $@

fuzz-py-deps: $(STAMP_ATHERIS)
	@$(MAKE) --no-print-directory $(STAMP_PKG)

fuzz: apt-fuzz fuzz-build fuzz-py-deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash tests/fuzz/run.sh $(FUZZ_C) $(FUZZ_PY)

build/smd-tsan: $(CORE_SRCS) $(CORE_HDRS) tests/c/smd_main.c | build
	$(FUZZ_CC) $(TSAN_FLAGS) -o $@ $(CORE_SRCS) tests/c/smd_main.c $(CORE_LIBS)

build/tsan-stress: $(CORE_SRCS) $(CORE_HDRS) tests/fuzz/tsan_stress.c | build
	$(FUZZ_CC) $(TSAN_FLAGS) -o $@ $(CORE_SRCS) tests/fuzz/tsan_stress.c $(CORE_LIBS)

tsan: apt-fuzz build/smd-tsan build/tsan-stress
	@$(MAKE) --no-print-directory $(STAMP_TEST)
	@$(MAKE) --no-print-directory $(STAMP_PKG)
	bash tests/fuzz/tsan.sh

ci-fuzz:
	bash tests/fuzz/ci.sh
# --- end of fuzzing and sanitizers block ---
