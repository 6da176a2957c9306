#!/bin/bash
# Every setup and resume failure, on any rank, ends every rank with exit 1 and one clear
# message; hostile checkpoints (CRC right, lengths and values wrong) are refused naming
# the file. Each run is bounded by `timeout -k`: a hang fails the check instead of CI.
set -u
. "$(dirname "$0")/../lib.sh"

cat >"$tmp/run.json" <<JSON
{
  "model": "examples/models/vgg.safetensors",
  "quantizer": {"bits": 3},
  "data": {"fitness_size": 128, "validation_size": 64, "fitness_batch": 32,
           "eval_batch": 64, "test_size": 200},
  "evolution": {"population": 2, "offspring": 3, "rate": 0.001},
  "islands": {"interval": 2, "migrants": 1},
  "stop": {"generations": 4},
  "checkpoint": {"every_generations": 2},
  "report": {"interval": 2},
  "seed": 3
}
JSON

run() { # log, extra arguments...
    local log="$1"
    shift
    timeout -k 5 90 "${MPIRUN[@]}" -n 2 "$ISLAND" "$tmp/run.json" "$@" >"$log" 2>&1
}

# expect_failure NAME MESSAGE [args...]: exit 1 (not a timeout) with MESSAGE in the output.
expect_failure() {
    local name="$1" message="$2"
    shift 2
    run "$tmp/$name.log" "$@"
    local rc=$?
    if [ "$rc" -eq 1 ] && grep -qF -- "$message" "$tmp/$name.log"; then
        ok
    else
        bad "$name: exit $rc (want 1), want '$message' in: $(tail -3 "$tmp/$name.log")"
    fi
}

run "$tmp/pristine.log" --set output.dir="$tmp/pristine" && ok ||
    bad "pristine run: $(tail -3 "$tmp/pristine.log")"

# Resume failures.
expect_failure nonexistent "--resume /nonexistent/ckpt: no valid checkpoint there" \
    --set output.dir="$tmp/out-nonexistent" --resume /nonexistent/ckpt
mkdir -p "$tmp/empty"
expect_failure empty "--resume $tmp/empty: no valid checkpoint there" \
    --set output.dir="$tmp/out-empty" --resume "$tmp/empty"

hostile() { # variant, message
    "$PY" tests/mpi/hostile_checkpoint.py "$tmp/pristine" "$tmp/h-$1" "$1" ||
        { bad "$1: could not build the checkpoint"; return; }
    expect_failure "$1" "$2" --set output.dir="$tmp/h-$1" --resume "$tmp/h-$1"
}
gen="$tmp/h-VARIANT/checkpoints/gen-00000004"
island1() { echo "rank 1: ${gen/VARIANT/$1}/island-00001.bin: $2"; }
hostile short "$(island1 short "10 bytes, shorter than the 56-byte island header")"
hostile nmig "$(island1 nmig "268435456 migration events of 8 bytes do not fit")"
hostile nmig_wrap "$(island1 nmig_wrap "4294967295 migration events of 8 bytes do not fit")"
hostile version "$(island1 version "island state version 7; this qevo reads version 1")"
hostile island "$(island1 island "holds the state of island 5")"
hostile mu0 "$(island1 mu0 "island state of 0 members")"
hostile weights "$(island1 weights "island state of ")"
hostile code "$(island1 code "island state: member 0: weight")"
hostile nan_score "island-00000.bin: island state: member 0 has a score that is not finite"
hostile run_island_val "run.json: \"island_val\" must hold one entry per island (2)"
hostile run_generation "run.json: \"generation\" must be an integer"
hostile best_code "best.bin: weight"

# Setup failures: on every rank (model, data), on rank 0 only (configuration, output).
expect_failure model "model: /nonexistent/model.safetensors" \
    --set output.dir="$tmp/out-model" --set model=/nonexistent/model.safetensors
expect_failure data "data.train: " --set output.dir="$tmp/out-data" \
    --set data.train=idx:/nonexistent/images.idx
expect_failure start "start: " --set output.dir="$tmp/out-start" \
    --set start=/nonexistent/codes.safetensors
expect_failure config "evolution.population" --set output.dir="$tmp/out-config" \
    --set evolution.population=0
expect_failure test_size "data.test_size: 20000 is more than the 10000 images of" \
    --set output.dir="$tmp/out-test-size" --set data.test_size=20000
: >"$tmp/a-file"
expect_failure output "output.dir: " --set output.dir="$tmp/a-file/out"

echo "test_resume_errors: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
