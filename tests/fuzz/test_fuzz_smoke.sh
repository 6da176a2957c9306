#!/bin/bash
# The libFuzzer targets (fuzz/): `make fuzz-smoke` builds them in build/fuzz (clang,
# ASan + UBSan, whatever SAN or BUILD the other suites use), replays every seed and past
# crash, and fuzzes each target for a bounded time. One check per target.
set -u
cd "$(dirname "$0")/../.." || exit 1
# The fuzz build has its own flags and folder: none of the caller's make variables
# (SAN=..., -j) or sanitizer options are passed on.
unset MAKEFLAGS MFLAGS MAKELEVEL SAN DEBUG BUILD ASAN_OPTIONS LSAN_OPTIONS UBSAN_OPTIONS
log=$(mktemp)
trap 'rm -f "$log"' EXIT
make -j1 --no-print-directory fuzz-smoke >"$log" 2>&1
rc=$?
grep -v "^OMPI_CC=\|^ar rcs" "$log"
line=$(grep -E "^fuzz-smoke: [0-9]+ passed, [0-9]+ failed$" "$log" | tail -n 1)
if [ -z "$line" ]; then
    echo "test_fuzz_smoke: 0 passed, 1 failed" # the build or the runner failed
    exit 1
fi
p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')
[ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && f=1
echo "test_fuzz_smoke: $p passed, $f failed"
[ "$f" -eq 0 ]
