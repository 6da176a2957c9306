#!/bin/bash
# Incremental fitness evaluation against full forward passes, in the same run: the same
# qevo-island configuration, seed and generations twice, once with the parent-activation
# cache (evolution.cache_mb from the config) and once without (cache_mb=0: every offspring
# is a full forward pass). The cache changes only speed (the adaptive layer choice counts
# the cost of incremental evaluation in both), so both runs evolve the same states and the
# ratio of evaluations per second is the speed-up of incremental evaluation alone (the
# script fails if the two runs end with different best states). Extra arguments are
# qevo-island --set options (e.g. --set evolution.layers=proportional).
#   bench/incremental.sh [CONFIG [GENERATIONS [RANKS [--set KEY=VALUE ...]]]]
#   (default: examples/resnet20.json 100 2)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build}"
PY="${QEVO_PYTHON:-/usr/bin/python3}"
config="${1:-examples/resnet20.json}"
generations="${2:-100}"
ranks="${3:-2}"
shift $(($# < 3 ? $# : 3))
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export OPENBLAS_NUM_THREADS=1
mpirun_args=(-n "$ranks")
[ "$(id -u)" = 0 ] && mpirun_args+=(--allow-run-as-root)
[ "$ranks" -gt "$(nproc)" ] && mpirun_args+=(--oversubscribe)

for mode in incremental full; do
    extra=()
    [ "$mode" = full ] && extra=(--set evolution.cache_mb=0)
    mpirun "${mpirun_args[@]}" "$BUILD/qevo-island" "$config" \
        --set output.dir="$out/$mode" --set stop.generations="$generations" \
        --set stop.seconds=0 --set stop.patience=0 --set data.test_size=1000 \
        --set checkpoint.every_seconds=0 --set checkpoint.every_generations=0 \
        "$@" "${extra[@]}" >"$out/$mode.log"
done

"$PY" - "$out" "$config" "$generations" "$ranks" <<'PYEOF'
import json, sys
out, config, generations, ranks = sys.argv[1:]
r = {m: json.load(open(f"{out}/{m}/result.json")) for m in ("incremental", "full")}
rate = {}
print(f"{config}: {generations} generations on {ranks} ranks, same states in both runs")
print(f"{'mode':<13}{'evaluations':>12}{'eval s/island':>15}{'evals/s/island':>16}"
      f"{'loop evals/s (all islands)':>28}")
for m, res in r.items():
    perf = res["performance"]
    eval_s = perf["evaluation_seconds_all_islands"] / int(ranks)
    loop_s = max(perf["loop_seconds_per_island"])
    rate[m] = res["evaluations"] / int(ranks) / eval_s
    print(f"{m:<13}{res['evaluations']:>12}{eval_s:>15.1f}{rate[m]:>16.1f}"
          f"{res['evaluations'] / loop_s:>28.1f}")
same = (r["incremental"]["best"] == r["full"]["best"]
        and r["incremental"]["scores"] == r["full"]["scores"])
print(f"speed-up of incremental evaluation: {rate['incremental'] / rate['full']:.2f}x "
      f"(best states {'identical' if same else 'DIFFERENT: the ratio mixes speed with search'})")
sys.exit(0 if same else 1)
PYEOF
