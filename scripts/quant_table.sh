#!/bin/bash
# The README's table: test accuracy (classifiers) or MSE (autoencoder) of the shipped
# models in float and at 8/4/3/2 bits by nearest rounding, per channel and per tensor,
# on the 10,000 Fashion-MNIST test images.   scripts/quant_table.sh > table.md
set -euo pipefail
cd "$(dirname "$0")/.."
QEVO="${BUILD:-build}/qevo"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$(nproc)}"

score() { # model, extra args -> "0.9427" or "0.00123"
    "$QEVO" eval "$1" --data fashion-mnist:test --json "${@:2}" |
        sed -E 's/.*"(accuracy|mse)": ([0-9.e-]+).*/\2/'
}

printf '| model | metric | float |'
for b in 8 4 3 2; do printf ' %d-bit/ch | %d-bit/tensor |' "$b" "$b"; done
printf '\n|---|---|---|'
for b in 8 4 3 2; do printf -- '---|---|'; done
printf '\n'
for m in vgg resnet20 autoencoder; do
    f="examples/models/$m.safetensors"
    metric=accuracy
    [ "$m" = autoencoder ] && metric=MSE
    printf '| %s | %s | %s |' "$m" "$metric" "$(score "$f")"
    for b in 8 4 3 2; do
        printf ' %s | %s |' "$(score "$f" --bits "$b" --per-channel)" \
            "$(score "$f" --bits "$b" --per-tensor)"
    done
    printf '\n'
done
