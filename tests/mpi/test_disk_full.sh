#!/bin/bash
# A full disk (fsync failing with ENOSPC, injected by build/faults/enospc.so) gives a
# clear message and exit 1 on every rank, leaves no half-written checkpoint, and at the
# end of a run still leaves result.json when the larger files cannot be written.
set -u
. "$(dirname "$0")/../lib.sh"
SHIM="$(pwd)/$BUILD/faults/enospc.so"
# The shim comes before a sanitizer runtime in the load order; that is intended here.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"

cat >"$tmp/run.json" <<JSON
{
  "model": "examples/models/vgg.safetensors",
  "quantizer": {"bits": 3},
  "data": {"fitness_size": 128, "validation_size": 64, "fitness_batch": 32,
           "eval_batch": 64, "test_size": 200},
  "evolution": {"population": 2, "offspring": 3, "rate": 0.001},
  "stop": {"generations": 6},
  "report": {"interval": 3},
  "seed": 5
}
JSON

full_disk_run() { # what fails to sync, log, extra arguments...
    local match="$1" log="$2"
    shift 2
    QEVO_FAIL_FSYNC="$match" LD_PRELOAD="$SHIM" timeout -k 5 120 "${MPIRUN[@]}" \
        -x QEVO_FAIL_FSYNC -x LD_PRELOAD -n 2 "$ISLAND" "$tmp/run.json" "$@" >"$log" 2>&1
}

# A checkpoint that cannot be written: the run stops with the message and no staging
# folder stays behind.
full_disk_run "/.gen-" "$tmp/ckpt.log" --set output.dir="$tmp/ckpt" \
    --set checkpoint.every_generations=2
rc=$?
[ "$rc" -eq 1 ] && grep -q "island-0000[01].bin: write failed: No space left on device" \
    "$tmp/ckpt.log" && ok || bad "checkpoint on a full disk: exit $rc: $(tail -3 "$tmp/ckpt.log")"
left=$(find "$tmp/ckpt/checkpoints" -mindepth 1 2>/dev/null)
[ -z "$left" ] && ok || bad "a failed checkpoint left: $left"

# The end of a run without checkpoints: best.safetensors cannot be written, result.json
# (written first) is there and whole.
full_disk_run "best.safetensors" "$tmp/end.log" --set output.dir="$tmp/end"
rc=$?
[ "$rc" -eq 1 ] && grep -q "best.safetensors: write failed: No space left on device" \
    "$tmp/end.log" && ok || bad "end of run on a full disk: exit $rc: $(tail -3 "$tmp/end.log")"
"$PY" -c 'import json, sys; r = json.load(open(sys.argv[1])); sys.exit(r["generations"] != 6)' \
    "$tmp/end/result.json" && ok || bad "no whole result.json after a full disk at the end"
[ ! -e "$tmp/end/best.safetensors" ] && ok || bad "a best.safetensors was left"

echo "test_disk_full: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
