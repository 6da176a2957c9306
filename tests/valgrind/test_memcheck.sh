#!/bin/bash
# Every unit test under valgrind memcheck: no invalid read or write, no use of an
# uninitialised value, no leak. Valgrind cannot run sanitized binaries, so the unit tests
# are (re)built unsanitized in build/ whatever build the caller uses. test_ops runs 7 of
# its 60 random trials (all of its kernels and paths; the others repeat them at sizes that
# take minutes under valgrind).
set -u
. "$(dirname "$0")/../lib.sh"

if ! command -v valgrind >/dev/null; then
    echo "valgrind is not installed (scripts/install-deps.sh installs it)"
    echo "test_memcheck: 0 passed, 1 failed"
    exit 1
fi

units=()
for src in tests/unit/*.c; do
    units+=("build/tests/$(basename "$src" .c)")
done
# SAN= and DEBUG= override the caller's make variables (also those passed down in MAKEFLAGS).
if ! make -s --no-print-directory SAN= DEBUG= BUILD=build "${units[@]}" >"$tmp/make.log" 2>&1; then
    cat "$tmp/make.log"
    echo "test_memcheck: 0 passed, 1 failed"
    exit 1
fi

for t in "${units[@]}"; do
    args=()
    [ "$(basename "$t")" = test_ops ] && args=(7)
    log="$tmp/$(basename "$t").log"
    # --error-exitcode tells valgrind's findings apart from the test's own failures (1).
    env -u ASAN_OPTIONS valgrind -q --error-exitcode=99 --leak-check=full \
        --errors-for-leak-kinds=definite,possible "$t" "${args[@]}" >"$log" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then
        ok
    else
        bad "$(basename "$t") under valgrind: exit $rc (99 = memcheck errors)"
        grep -E '^==[0-9]+==|FAIL' "$log" | head -30
    fi
done

echo "test_memcheck: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
