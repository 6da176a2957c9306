#!/bin/bash
# fuzz-smoke: for each target named on the command line (built as build/fuzz/fuzz_<t>),
#   1. replays every file of fuzz/corpus/<t>/ and fuzz/crashes/<t>/ (past crashes must
#      not crash any more),
#   2. fuzzes for $FUZZ_SECONDS seconds (default 20) on one core, starting from both,
#      with new inputs in a scratch folder (the committed corpus is not changed).
# Prints one line per target and ends with "fuzz-smoke: N passed, N failed"; exits
# non-zero if any target failed. A crash found in step 2 is kept in
# build/fuzz/artifacts/<t>/ (fix it, then add the input to fuzz/crashes/<t>/).
set -u
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"
# Sanitizer options given for the unit tests (tests/run.sh under SAN=) would change how
# libFuzzer reports; the fuzzers run with their own.
unset ASAN_OPTIONS LSAN_OPTIONS MSAN_OPTIONS
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export OPENBLAS_NUM_THREADS=1
work=$(mktemp -d)
# The harnesses' temporary files: in memory where there is /dev/shm (quant_save and
# ckpt files are written with fsync).
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    files_dir=$(mktemp -d -p /dev/shm qevo-fuzz-smoke.XXXXXX)
else
    files_dir="$work"
fi
trap 'rm -rf "$work" "$files_dir"' EXIT
export TMPDIR="$files_dir"
flags=(-rss_limit_mb=2048 -timeout=10)
passed=0
failed=0
for t in "$@"; do
    bin="build/fuzz/fuzz_$t"
    log="$work/$t.log"
    dirs=("fuzz/corpus/$t")
    [ -d "fuzz/crashes/$t" ] && dirs+=("fuzz/crashes/$t")
    mapfile -t files < <(find "${dirs[@]}" -type f | sort)
    if [ ! -x "$bin" ] || [ ${#files[@]} -eq 0 ]; then
        echo "fuzz-smoke: $t: FAILED: no $bin or no seed corpus in fuzz/corpus/$t"
        failed=$((failed + 1))
        continue
    fi
    start=$SECONDS
    if ! "$bin" "${flags[@]}" "${files[@]}" >"$log" 2>&1; then
        echo "fuzz-smoke: $t: FAILED replaying fuzz/corpus/$t and fuzz/crashes/$t:"
        grep -E "^Running:|ERROR|SUMMARY|fuzz:|==[0-9]+==" "$log" | tail -n 20
        failed=$((failed + 1))
        continue
    fi
    crashes=$(find "fuzz/crashes/$t" -type f 2>/dev/null | wc -l)
    art="build/fuzz/artifacts/$t"
    mkdir -p "$art" "$work/corpus-$t"
    if ! "$bin" "${flags[@]}" -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix="$art/" "$work/corpus-$t" "${dirs[@]}" >"$log" 2>&1; then
        echo "fuzz-smoke: $t: FAILED fuzzing (input kept in $art/):"
        grep -E "ERROR|SUMMARY|fuzz:|Test unit written|==[0-9]+==" "$log" | tail -n 20
        failed=$((failed + 1))
        continue
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    last=$(grep -E "^#[0-9]+.*cov: " "$log" | tail -n 1)
    cov=$(echo "$last" | sed -E 's/.* cov: ([0-9]+).*/\1/')
    ft=$(echo "$last" | sed -E 's/.* ft: ([0-9]+).*/\1/')
    corp=$(echo "$last" | sed -E 's/.* corp: ([0-9]+).*/\1/')
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")
    printf 'fuzz-smoke: %s: ok: replayed %d inputs (%d past crashes); fuzzed %s s: %s execs, cov %s, ft %s, corpus %s, peak RSS %s MB (%d s)\n' \
        "$t" "${#files[@]}" "$crashes" "$seconds" "${execs:-?}" "${cov:-?}" "${ft:-?}" \
        "${corp:-?}" "${rss:-?}" $((SECONDS - start))
    passed=$((passed + 1))
done
echo "fuzz-smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
