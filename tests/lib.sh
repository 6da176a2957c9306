# Shared prelude of the shell test suites: run from the repository root, a temporary
# folder removed at exit, pass/fail counters, and mpirun arguments that also work as
# root. Source it first:   . "$(dirname "$0")/../lib.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
BUILD="${BUILD:-build}"
ISLAND="$BUILD/qevo-island"
PY="${QEVO_PYTHON:-/usr/bin/python3}"
export OPENBLAS_NUM_THREADS=1
MPIRUN=(mpirun --oversubscribe)
[ "$(id -u)" = 0 ] && MPIRUN+=(--allow-run-as-root) # Open MPI refuses root unless told
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "FAIL: $*"; }
