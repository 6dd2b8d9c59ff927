#!/usr/bin/env bash
# tests/fuzz/ci.sh -- what CI runs for fuzzing and ThreadSanitizer.
#
# Builds the harnesses, runs each for CI_FUZZ_SECONDS (60) from the seeds in
# tests/fuzz/corpus plus whatever an earlier run left in build/fuzz/corpus,
# then `make tsan`.  Exits non-zero on any fuzzer finding or TSan report.
#
# Every harness is single-threaded and its budget is wall time, so the
# harnesses run in CI_FUZZ_JOBS lanes at once (default: 2, or 1 on a
# one-CPU machine), each lane one harness after another: every harness
# still gets its whole budget on a CPU of its own, in half the time.  Each
# lane's output is printed when it ends, not interleaved.
# About 2 x 60 s of fuzzing and 2-3 minutes of TSan on the 2-core machine.
set -u
cd "$(dirname "$0")/../.."
status=0
cpus=$(nproc)
jobs=${CI_FUZZ_JOBS:-$(( cpus < 2 ? 1 : 2 ))}
make --no-print-directory apt-fuzz || exit 1
# The builds in parallel too: each harness and TSan binary is one compiler
# run over the whole core (apt-fuzz first: the compiler may be what it installs).
make --no-print-directory -j"$jobs" fuzz-build fuzz-py-deps || exit 1
harnesses=(fuzz_conn fuzz_snapshot fuzz_config fuzz_snapfile)
lanes=()
for (( i = 0; i < ${#harnesses[@]}; i++ )); do
    lanes[i % jobs]+="${harnesses[i]} "
done
pids=()
outs=()
for lane in "${lanes[@]}"; do
    out=$(mktemp "${TMPDIR:-/tmp}/fuzz-lane-XXXXXX")
    outs+=("$out")
    # shellcheck disable=SC2086  # a lane is a list of harness names
    FUZZ_SECONDS=${CI_FUZZ_SECONDS:-60} bash tests/fuzz/run.sh $lane >"$out" 2>&1 &
    pids+=($!)
done
for i in "${!pids[@]}"; do
    wait "${pids[i]}" || status=1
    cat "${outs[i]}"
    rm -f "${outs[i]}"
done
make --no-print-directory -j"$jobs" tsan || status=1
if [ "$status" -eq 0 ]; then
    echo "fuzz+tsan: 0 findings"
else
    echo "fuzz+tsan: FAILED (see above)"
fi
exit $status
