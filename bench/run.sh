#!/bin/bash
# make bench: qevo's forward throughput beside PyTorch's, in the same run, on the three
# example models at batch 256 with one thread; achieved GFLOP/s and the fraction of this
# machine's single-thread sgemm peak. Ratios > 1 mean qevo is faster.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build}"
PY="${QEVO_PYTHON:-/usr/bin/python3}"
BATCH="${BATCH:-256}"
SECONDS_PER="${SECONDS_PER:-3}"
MODELS=(examples/models/vgg.safetensors examples/models/resnet20.safetensors
        examples/models/autoencoder.safetensors)
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1

qevo_json=$(mktemp)
torch_json=$(mktemp)
trap 'rm -f "$qevo_json" "$torch_json"' EXIT
"$BUILD/bench/bench_forward" --batch "$BATCH" --seconds "$SECONDS_PER" "${MODELS[@]}" >"$qevo_json"
"$PY" scripts/bench_torch.py --batch "$BATCH" --seconds "$SECONDS_PER" "${MODELS[@]}" >"$torch_json"

"$PY" - "$qevo_json" "$torch_json" <<'PYEOF'
import json, os, sys
qevo = [json.loads(l) for l in open(sys.argv[1])]
torch = {r["model"]: r for r in map(json.loads, open(sys.argv[2]))}
peak = next(r for r in qevo if r["what"] == "sgemm")
print(f"single-thread sgemm peak (1024^3): {peak['gflops']:.1f} GFLOP/s, OpenBLAS kernels: "
      f"{peak.get('core', '?')}")
if os.environ.get("OPENBLAS_CORETYPE"):
    print(f"note: OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} is set, so qevo keeps those "
          f"kernels (unset it to let OpenBLAS and qevo pick)")
print(f"{'model':<14}{'qevo img/s':>12}{'GFLOP/s':>9}{'of peak':>9}"
      f"{'torch eager':>13}{'ratio':>7}{'torch frozen':>14}{'ratio':>7}")
for r in qevo:
    if r["what"] != "qevo":
        continue
    t = torch[r["model"]]
    name = os.path.basename(r["model"]).split(".")[0]
    print(f"{name:<14}{r['images_per_s']:>12.0f}{r['gflops']:>9.1f}{r['peak_fraction']:>9.0%}"
          f"{t['eager_images_per_s']:>13.0f}{r['images_per_s'] / t['eager_images_per_s']:>7.2f}"
          f"{t['frozen_images_per_s']:>14.0f}{r['images_per_s'] / t['frozen_images_per_s']:>7.2f}")
PYEOF
