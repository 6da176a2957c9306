#!/bin/bash
# The qevo command line: usage, every class of bad input (clear message on stderr naming
# the file or option, exit 1), and that nothing half-written is left behind.
set -u
. "$(dirname "$0")/../lib.sh"
QEVO="$BUILD/qevo"
MODEL=examples/models/vgg.safetensors
AE=examples/models/autoencoder.safetensors

# expect_fail "what" "substring of stderr" cmd...
expect_fail() {
    local what="$1" want="$2"
    shift 2
    "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    if [ $rc -ne 1 ]; then
        bad "$what: exit $rc, expected 1"
    elif ! grep -qF -- "$want" "$tmp/err"; then
        bad "$what: stderr '$(cat "$tmp/err")' lacks '$want'"
    elif [ -s "$tmp/out" ]; then
        bad "$what: wrote to stdout on failure"
    else
        ok
    fi
}

# expect_ok "what" "substring of stdout" cmd...
expect_ok() {
    local what="$1" want="$2"
    shift 2
    if ! "$@" >"$tmp/out" 2>"$tmp/err"; then
        bad "$what: failed: $(cat "$tmp/err")"
    elif ! grep -qF -- "$want" "$tmp/out"; then
        bad "$what: stdout lacks '$want': $(head -c 600 "$tmp/out")"
    else
        ok
    fi
}

expect_fail "no arguments" "usage: qevo" "$QEVO"
expect_ok "help" "usage: qevo" "$QEVO" --help
expect_fail "unknown command" "unknown command 'frobnicate'" "$QEVO" frobnicate
expect_fail "unknown option" "unknown option '--fast'" "$QEVO" eval "$MODEL" --fast
expect_fail "missing model" "missing MODEL" "$QEVO" eval --data fashion-mnist:test
expect_fail "eval without data" "eval needs --data" "$QEVO" eval "$MODEL"
expect_fail "bits out of range" "--bits must be an integer in [2, 8], found '9'" \
    "$QEVO" eval "$MODEL" --data fashion-mnist:test --bits 9
expect_fail "bits not a number" "found 'three'" "$QEVO" eval "$MODEL" --data fashion-mnist:test --bits three
expect_fail "option without value" "--data needs a value" "$QEVO" eval "$MODEL" --data
expect_fail "missing model file" "$tmp/none.safetensors: cannot open" \
    "$QEVO" eval "$tmp/none.safetensors" --data fashion-mnist:test
expect_fail "unknown dataset" "nosuch" "$QEVO" eval "$MODEL" --data nosuch:test

# A truncated model, a model with garbage, a file that is not a model.
head -c 1000 "$MODEL" >"$tmp/trunc.safetensors"
expect_fail "truncated model" "$tmp/trunc.safetensors" "$QEVO" inspect "$tmp/trunc.safetensors"
printf 'not a model at all' >"$tmp/junk.safetensors"
expect_fail "junk model" "$tmp/junk.safetensors" "$QEVO" inspect "$tmp/junk.safetensors"

# Wrong image shape: a 2x2 PNG folder against a 28x28 model.
"${QEVO_PYTHON:-/usr/bin/python3}" - "$tmp/png" <<'PY'
import sys, os, zlib, struct
def png(path, w, h):
    raw = b"".join(b"\x00" + bytes([(x * 40 + y) % 256 for x in range(w)]) for y in range(h))
    def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    open(path, "wb").write(data)
for c in ("a", "b"):
    os.makedirs(os.path.join(sys.argv[1], c))
    png(os.path.join(sys.argv[1], c, "0.png"), 2, 2)
PY
expect_fail "wrong image size" "expects (1, 28, 28)" "$QEVO" eval "$MODEL" --data "$tmp/png"

# Quantize: output into a missing folder fails and leaves nothing; a good run writes a
# model that eval and inspect accept.
expect_fail "quantize into a missing folder" "$tmp/no/q.safetensors" \
    "$QEVO" quantize "$MODEL" --out "$tmp/no/q.safetensors" --bits 4
[ -z "$(ls -A "$tmp/no" 2>/dev/null)" ] && ok || bad "quantize left files in $tmp/no"
expect_fail "quantize without --out" "quantize needs --out" "$QEVO" quantize "$MODEL"
expect_ok "quantize" "wrote $tmp/q.safetensors (4 bits per_tensor" \
    "$QEVO" quantize "$MODEL" --out "$tmp/q.safetensors" --bits 4 --per-tensor
ls "$tmp"/q.safetensors.tmp.* >/dev/null 2>&1 && bad "temporary file left behind" || ok
expect_ok "inspect a quantized model" "weights (quantizable)" "$QEVO" inspect "$tmp/q.safetensors"
expect_ok "eval a quantized model" "as stored in the model file" \
    "$QEVO" eval "$tmp/q.safetensors" --data fashion-mnist:test --limit 200

# Results: the eval line formats for both tasks and JSON output.
expect_ok "eval accuracy" "accuracy" "$QEVO" eval "$MODEL" --data fashion-mnist:test --limit 300 --bits 3
expect_ok "eval autoencoder" "psnr" "$QEVO" eval "$AE" --data fashion-mnist:test --limit 300
expect_ok "eval json" '"accuracy": ' "$QEVO" eval "$MODEL" --data fashion-mnist:test --limit 100 --json
expect_ok "inspect" "MFLOP per image" "$QEVO" inspect "$MODEL"
expect_ok "dump outputs" "accuracy" "$QEVO" eval "$MODEL" --data fashion-mnist:test --limit 7 \
    --dump-outputs "$tmp/o.npy"
[ "$(head -c 6 "$tmp/o.npy" | tail -c 5)" = "NUMPY" ] && ok || bad "dump is not a .npy file"

echo "test_qevo_cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
