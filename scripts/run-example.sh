#!/bin/bash
# The main job on the shipped example: qevo-island on 2 ranks improves the 3-bit
# per-channel VGG on Fashion-MNIST (about 10 minutes on a 2-core machine); then
# `qevo eval` scores the evolved model on the test split and plot_run.py draws the run.
#   scripts/run-example.sh [CONFIG]        (default examples/vgg.json; RANKS=2)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build}"
PY="${QEVO_PYTHON:-/usr/bin/python3}"
config="${1:-examples/vgg.json}"
ranks="${RANKS:-2}"
out=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["output"]["dir"])' "$config")

# One OpenBLAS thread per rank: the ranks already use the cores.
export OPENBLAS_NUM_THREADS=1
mpirun_args=(-n "$ranks")
if [ "$(id -u)" = 0 ]; then
    mpirun_args+=(--allow-run-as-root) # Open MPI refuses root unless told
fi
if [ "$ranks" -gt "$(nproc)" ]; then
    mpirun_args+=(--oversubscribe)
fi
mpirun "${mpirun_args[@]}" "$BUILD/qevo-island" "$config"
echo
"$BUILD/qevo" eval "$out/best.safetensors" --data fashion-mnist:test
"$PY" scripts/plot_run.py "$out"
