#!/usr/bin/env bash
# tests/fuzz/tsan.sh -- the engine under ThreadSanitizer (make tsan).
#
# 1. build/tsan-stress: the admin API (stats of every group including
#    "stats conns", set_maxconns, memory limit, key listing, dumps, deletes)
#    called in a loop while client threads pipeline text and meta commands
#    over loopback, on epoll and on io_uring (where the kernel allows).
# 2. The concurrency-relevant pytest files against build/smd-tsan (the bare
#    C driver, started by tests/conftest.py through $STACKMAPD_BIN).
#
# Every process writes TSan reports to build/tsan/ (TSAN_OPTIONS log_path;
# halt_on_error makes the process exit 66 at the first one, so the test that
# drove it fails too).  Fails if any report was written, and prints them.
# No suppression file: the few intended races are exempted in the source
# (stackmap_core/src/racy.h), each with its reason.
set -u
cd "$(dirname "$0")/../.."
secs=${TSAN_STRESS_SECONDS:-15}
tests=${TSAN_TESTS:-tests/test_concurrency.py tests/test_backpressure.py tests/test_pipeline.py tests/test_batch_wait.py tests/test_eviction.py tests/test_uring_bufs.py}
out=build/tsan
rm -rf "$out"
mkdir -p "$out"
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 log_path=$PWD/$out/report"
status=0
for backend in epoll uring; do
    ./build/tsan-stress "$secs" "$backend"
    rc=$?
    if [ "$rc" -eq 2 ] && [ "$backend" = uring ]; then
        echo "tsan: io_uring not usable here, uring stress skipped"
    elif [ "$rc" -ne 0 ]; then
        echo "tsan: tsan-stress ($backend) exited $rc"
        status=1
    fi
done
# test_uring_batches_syscalls counts io_uring submits per request: a
# performance property that TSan's slowdown does not exercise, and that
# flakes when the machine is loaded.  test_batch_wait_rests_beside_unrelated_busy_work
# asserts that two batch waits in a row run out while a co-running pair holds
# the CPU: under TSan's 5-15x slowdown the rounds are too long for that
# pattern to show reliably (CI run of 460df40: 18 timeouts, none back to
# back).  It runs uninstrumented in make test.
STACKMAPD_BIN=$PWD/build/smd-tsan .venv/bin/pytest -q -k "not uring_batches_syscalls and not rests_beside" $tests || status=1
reports=$(ls "$out" | grep -c '^report' || true)
if [ "$reports" -gt 0 ] || grep -rqs "WARNING: ThreadSanitizer" "$out"; then
    echo "tsan: $reports report file(s) in $out:"
    cat "$out"/report*
    status=1
else
    echo "tsan: no ThreadSanitizer reports"
fi
exit $status
