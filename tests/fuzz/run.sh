#!/usr/bin/env bash
# tests/fuzz/run.sh -- run fuzz harnesses for FUZZ_SECONDS each and report.
#
# Usage: FUZZ_SECONDS=60 bash tests/fuzz/run.sh fuzz_conn fuzz_snapshot fuzz_config ...
# A name with a build/fuzz/<name> binary is a libFuzzer harness (make
# fuzz-build); a name with tests/fuzz/<name>.py is an atheris harness run
# with .venv/bin/python.  Each starts from its seeds (tests/fuzz/corpus/<name>)
# plus the scratch corpus of earlier runs (build/fuzz/corpus/<name>, where
# new inputs go: the repo is never written).  Prints executions, coverage and
# corpus size per harness; exits 1 if any harness found a crash, leak,
# sanitizer report, timeout or out-of-memory (the reproducer is left in
# build/fuzz/findings/<name>/ and the report's tail is printed).
set -u
cd "$(dirname "$0")/../.."
secs=${FUZZ_SECONDS:-300}
nice_level=${FUZZ_NICE:-0}
status=0
summary=()
for name in "$@"; do
    seeds=tests/fuzz/corpus/$name
    corpus=build/fuzz/corpus/$name
    findings=build/fuzz/findings/$name
    log=build/fuzz/$name.log
    mkdir -p "$corpus" "$findings"
    args=(-max_total_time="$secs" -print_final_stats=1 -timeout=20 -rss_limit_mb=2560
          -max_len=4096 -artifact_prefix="$findings/" -close_fd_mask=1)
    [ -f "tests/fuzz/$name.dict" ] && args+=(-dict="tests/fuzz/$name.dict")
    if [ -x "build/fuzz/$name" ]; then
        cmd=("build/fuzz/$name")
    elif [ -f "tests/fuzz/$name.py" ]; then
        cmd=(.venv/bin/python "tests/fuzz/$name.py")
    else
        echo "run.sh: no harness named $name" >&2
        exit 2
    fi
    echo "== $name: ${secs}s"
    before=$(ls "$findings" | grep -cE '^(crash|leak|timeout|oom)-')
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-$name-XXXXXX")  # files a harness writes each input to
    FUZZ_SCRATCH=$scratch ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
        nice -n "$nice_level" "${cmd[@]}" "${args[@]}" "$corpus" "$seeds" >"$log" 2>&1
    rc=$?
    rm -rf "$scratch"
    after=$(ls "$findings" | grep -cE '^(crash|leak|timeout|oom)-')
    execs=$(grep -a 'stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -1)
    rate=$(grep -a 'stat::average_exec_per_sec' "$log" | awk '{print $2}' | tail -1)
    last=$(grep -aE '^#[0-9]+' "$log" | tail -1)
    cov=$(sed -nE 's/.* cov: ([0-9]+) ft: ([0-9]+) corp: ([0-9]+)\/([^ ]+) .*/cov \1, ft \2, corpus \3 inputs (\4)/p' <<<"$last")
    line="$name: ${execs:-?} executions (${rate:-?}/s), ${cov:-no coverage line}"
    if [ "$rc" -ne 0 ] || [ "$after" -gt "$before" ]; then
        line="$line -- FINDING (exit $rc), reproducer in $findings/, log $log"
        status=1
        echo "---- $log (tail) ----"
        grep -av -E '^#[0-9]+.*(NEW|REDUCE|pulse)' "$log" | tail -60
        echo "----"
    fi
    echo "$line"
    summary+=("$line")
done
echo "== fuzz summary (${secs}s each)"
printf '  %s\n' "${summary[@]}"
exit $status
