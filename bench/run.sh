#!/bin/bash
# make bench: qevo's forward throughput beside PyTorch's on the three example models at
# batch 256 with one thread; achieved GFLOP/s and the fraction of this machine's
# single-thread sgemm peak. Ratios > 1 mean qevo is faster.
#
# A shared machine drifts by factors of two between runs of a few seconds, so a single
# pair of runs is not a measurement: qevo and PyTorch alternate (qevo, torch, qevo,
# torch, ...) for ROUNDS rounds, each round's ratio pairs the two runs taken next to each
# other, and the table shows medians with the min-max of the per-round ratios.
#   ROUNDS (default 5), SECONDS_PER (seconds per model and engine per round, default 2),
#   BATCH (default 256).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build}"
PY="${QEVO_PYTHON:-/usr/bin/python3}"
BATCH="${BATCH:-256}"
SECONDS_PER="${SECONDS_PER:-2}"
ROUNDS="${ROUNDS:-5}"
MODELS=(examples/models/vgg.safetensors examples/models/resnet20.safetensors
        examples/models/autoencoder.safetensors)
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1

if ! [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]]; then
    echo "bench: ROUNDS must be a positive integer, got '$ROUNDS'" >&2
    exit 1
fi
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for ((round = 1; round <= ROUNDS; round++)); do
    echo "bench: round $round of $ROUNDS" >&2
    "$BUILD/bench/bench_forward" --batch "$BATCH" --seconds "$SECONDS_PER" "${MODELS[@]}" |
        sed "s/^{/{\"round\": $round, /" >>"$results"
    "$PY" scripts/bench_torch.py --batch "$BATCH" --seconds "$SECONDS_PER" "${MODELS[@]}" |
        sed "s/^{/{\"round\": $round, /" >>"$results"
done

"$PY" - "$results" "$ROUNDS" <<'PYEOF'
import json, os, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rounds = int(sys.argv[2])

def pick(what, model=None):
    """Rows of one kind (and model), one per round, in round order."""
    got = sorted((r for r in rows if r["what"] == what and r.get("model", model) == model),
                 key=lambda r: r["round"])
    assert len(got) == rounds, f"{what} {model}: {len(got)} of {rounds} rounds"
    return got

def spread(values, fmt):
    return (f"{format(statistics.median(values), fmt)} "
            f"[{format(min(values), fmt)}-{format(max(values), fmt)}]")

peaks = pick("sgemm")
print(f"{rounds} interleaved rounds (qevo, PyTorch, qevo, ...); median [min-max] over rounds;"
      f" ratios pair the qevo and PyTorch runs of the same round")
print(f"single-thread sgemm peak (1024^3): {spread([p['gflops'] for p in peaks], '.1f')} GFLOP/s,"
      f" OpenBLAS kernels: {peaks[0].get('core', '?')}")
if os.environ.get("OPENBLAS_CORETYPE"):
    print(f"note: OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} is set, so qevo keeps those "
          f"kernels (unset it to let OpenBLAS and qevo pick)")
print(f"{'model':<12}{'qevo img/s':>21}{'GFLOP/s':>9}{'of peak':>9}{'torch frozen':>21}"
      f"{'qevo/frozen':>19}{'qevo/eager':>19}")
models = [r["model"] for r in rows if r["what"] == "qevo" and r["round"] == 1]
for model in models:
    q, t = pick("qevo", model), pick("torch", model)
    qps = [r["images_per_s"] for r in q]
    frozen = [r["frozen_images_per_s"] for r in t]
    vs_frozen = [a / b for a, b in zip(qps, frozen)]
    vs_eager = [a["images_per_s"] / b["eager_images_per_s"] for a, b in zip(q, t)]
    name = os.path.basename(model).split(".")[0]
    print(f"{name:<12}{spread(qps, '.0f'):>21}"
          f"{statistics.median(r['gflops'] for r in q):>9.1f}"
          f"{statistics.median(r['peak_fraction'] for r in q):>9.0%}"
          f"{spread(frozen, '.0f'):>21}{spread(vs_frozen, '.2f'):>19}"
          f"{spread(vs_eager, '.2f'):>19}")
PYEOF
