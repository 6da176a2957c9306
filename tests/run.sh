#!/bin/bash
# Runs every test suite and ends with one line "N passed, N failed".
#   unit tests      build/tests/*           (C, one binary per module)
#   command line    tests/cli/*.sh          (the qevo tools, bad input, exit codes)
#   MPI             tests/mpi/*.sh          (qevo-island under mpirun)
#   SLURM           tests/slurm/test_*.sh   (a single-node SLURM brought up for the test)
#   memcheck        tests/valgrind/*.sh     (the unit tests under valgrind)
#   fuzz            tests/fuzz/*.sh         (make fuzz-smoke: every libFuzzer target)
#   PyTorch         tests/python/*.py       (exporter, parity with PyTorch)
# Each suite prints "<name>: N passed, N failed" as its last line.
set -u
cd "$(dirname "$0")/.."
export BUILD="${BUILD:-build}"
export QEVO_PYTHON="${QEVO_PYTHON:-/usr/bin/python3}"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
unit_asan="${ASAN_OPTIONS:-}"
if [ -n "${SAN:-}" ]; then
    # Open MPI's own allocations (~122 KB at exit) are not ours to fix: leaks are checked
    # on the unit tests, which never initialise MPI, and not in the suites that run
    # mpirun. An ASAN_OPTIONS given by the caller applies to every suite.
    unit_asan="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
    export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}"
    export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
fi

passed=0
failed=0
suites_failed=""

run_suite() {
    local name="$1"
    shift
    local log
    log=$(mktemp)
    "$@" >"$log" 2>&1
    local rc=$?
    local line
    line=$(grep -E "^[^ ]+: [0-9]+ passed, [0-9]+ failed$" "$log" | tail -n 1)
    if [ -z "$line" ]; then
        # A suite that crashed before reporting counts as one failure.
        cat "$log"
        echo "$name: no result line (exit $rc)"
        failed=$((failed + 1))
        suites_failed="$suites_failed $name"
    else
        local p f
        p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
        f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')
        if [ "$f" -ne 0 ] || [ "$rc" -ne 0 ]; then
            cat "$log"
            [ "$f" -eq 0 ] && f=1 # a non-zero exit with no failed check is still a failure
            suites_failed="$suites_failed $name"
        else
            echo "$line"
        fi
        passed=$((passed + p))
        failed=$((failed + f))
    fi
    rm -f "$log"
}

for t in "$BUILD"/tests/*; do
    [ -x "$t" ] && run_suite "$(basename "$t")" env ASAN_OPTIONS="$unit_asan" "$t"
done
for t in tests/cli/*.sh tests/mpi/*.sh tests/slurm/test_*.sh tests/valgrind/*.sh tests/fuzz/*.sh; do
    [ -f "$t" ] && run_suite "$(basename "$t" .sh)" bash "$t"
done
for t in tests/python/*.py; do
    [ -f "$t" ] && run_suite "$(basename "$t" .py)" "$QEVO_PYTHON" "$t"
done

[ -n "$suites_failed" ] && echo "failing suites:$suites_failed"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
