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
CFLAGS_CORE := -std=c11 -D_GNU_SOURCE -O2 -g $(CWARN) -pthread -I$(CORE)
CORE_SRCS := $(shell find $(CORE) -name '*.c' | sort)
CORE_HDRS := $(shell find $(CORE) -name '*.h')
CORE_LIBS := -pthread $(shell pkg-config --exists liburing 2>/dev/null && echo -luring)

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

CACHE_SRCS := $(shell find $(CORE)/cache -name '*.c') $(CORE)/stats.c
build/test_cache: $(CACHE_SRCS) $(CORE_HDRS) tests/c/test_cache.c | build
	$(CC) $(CFLAGS_CORE) -fsanitize=address,undefined -o $@ $(CACHE_SRCS) tests/c/test_cache.c -pthread

clean-c:
	rm -rf build
