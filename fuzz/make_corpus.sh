#!/bin/sh
# Regenerates the committed seed corpora fuzz/corpus/<target>/ (`make fuzz-corpus`):
# tiny copies of the example models (fuzz/shrink_models.py), then every other seed from
# build/fuzz/make_corpus (fuzz/make_corpus.c), which uses the library's own writers.
# The output is deterministic. fuzz/crashes/ is not touched: past crashes stay there.
set -eu
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=1
out=fuzz/corpus
rm -rf "$out"
mkdir -p "$out/graph"
/usr/bin/python3 fuzz/shrink_models.py examples/models "$out/graph"
TMPDIR="${TMPDIR:-/tmp}" build/fuzz/make_corpus "$out"
for d in "$out"/*/; do
    printf '%s: %s files, %s bytes\n' "$(basename "$d")" "$(find "$d" -type f | wc -l)" \
        "$(cat "$d"/* | wc -c)"
done
