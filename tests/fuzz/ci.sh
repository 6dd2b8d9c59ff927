#!/usr/bin/env bash
# tests/fuzz/ci.sh -- what CI runs for fuzzing and ThreadSanitizer.
#
# Builds the harnesses, runs each for CI_FUZZ_SECONDS (60) from the seeds in
# tests/fuzz/corpus plus whatever an earlier run left in build/fuzz/corpus,
# then `make tsan`.  Exits non-zero on any fuzzer finding or TSan report.
# About 4 x 60 s of fuzzing and 2-3 minutes of TSan on the 2-core machine.
set -u
cd "$(dirname "$0")/../.."
status=0
make --no-print-directory apt-fuzz fuzz-build fuzz-py-deps || exit 1
FUZZ_SECONDS=${CI_FUZZ_SECONDS:-60} bash tests/fuzz/run.sh fuzz_conn fuzz_snapshot fuzz_config fuzz_snapfile || status=1
make --no-print-directory tsan || status=1
if [ "$status" -eq 0 ]; then
    echo "fuzz+tsan: 0 findings"
else
    echo "fuzz+tsan: FAILED (see above)"
fi
exit $status
