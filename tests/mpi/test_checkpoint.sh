#!/bin/bash
# Checkpoint and restart: a run stopped by SIGTERM and resumed ends identical to one
# never interrupted; a rank killed with SIGKILL loses at most one checkpoint interval;
# a changed setting is refused by name; a corrupt checkpoint is skipped; a run resumes
# on another number of ranks.
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
  "stop": {"generations": 150},
  "checkpoint": {"every_generations": 10},
  "report": {"interval": 5},
  "seed": 11
}
JSON

run() { # ranks, dir, extra...
    local n="$1" dir="$2"
    shift 2
    timeout 600 "${MPIRUN[@]}" -n "$n" "$ISLAND" "$tmp/run.json" --set output.dir="$dir" "$@"
}

same_result() { # dir a, dir b
    "$PY" - "$1/result.json" "$2/result.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
for r in (a, b):
    r.pop("time"); r.pop("performance")
sys.exit(0 if a == b else 1)
PY
}

# Started in the background; waits until the progress shows generation >= $1.
wait_for_generation() { # log, generation
    for _ in $(seq 600); do
        g=$(awk '$1 ~ /^[0-9]+$/ {g = $1} END {print g + 0}' "$1" 2>/dev/null)
        [ "${g:-0}" -ge "$2" ] && return 0
        sleep 0.1
    done
    return 1
}

# The reference: never interrupted.
run 2 "$tmp/ref" >"$tmp/ref.log" 2>&1 && ok || { tail "$tmp/ref.log"; bad "reference run"; }

# SIGTERM to mpirun mid-way: the ranks checkpoint and exit 0, but mpirun itself exits 1
# (Open MPI's way with a SIGTERM it forwarded; README says so); the next run resumes and
# ends with the same result and best codes.
run 2 "$tmp/sig" >"$tmp/sig1.log" 2>&1 &
pid=$!
wait_for_generation "$tmp/sig1.log" 40 || bad "the run did not reach generation 40"
pkill -TERM -f "^mpirun .*output.dir=$tmp/sig"  # mpirun alone: a second SIGTERM makes it abort
wait $pid
rc=$?
[ "$rc" -eq 1 ] && ok || bad "mpirun after SIGTERM exited $rc; README says 1"
grep -q "stopped by a signal at generation" "$tmp/sig1.log" && ok ||
    bad "no checkpoint-and-stop after SIGTERM: $(tail -5 "$tmp/sig1.log")"
[ -f "$tmp/sig/result.json" ] && bad "an interrupted run wrote result.json" || ok
run 2 "$tmp/sig" >"$tmp/sig2.log" 2>&1 && ok || bad "resume failed: $(tail -5 "$tmp/sig2.log")"
grep -q "^resuming from $tmp/sig/checkpoints/gen-" "$tmp/sig2.log" && ok ||
    bad "the second run did not say it resumed"
same_result "$tmp/ref" "$tmp/sig" && ok || bad "resumed result.json differs from the uninterrupted one"
cmp -s "$tmp/ref/best.safetensors" "$tmp/sig/best.safetensors" && ok ||
    bad "resumed best.safetensors differs"

# SIGUSR2 to mpirun (what the SLURM batch script sends): checkpoint, stop, exit 0.
run 2 "$tmp/usr2" >"$tmp/usr2.log" 2>&1 &
pid=$!
wait_for_generation "$tmp/usr2.log" 20 || bad "the run did not reach generation 20"
pkill -USR2 -f "^mpirun .*output.dir=$tmp/usr2"
wait $pid
rc=$?
[ "$rc" -eq 0 ] && grep -q "stopped by a signal at generation" "$tmp/usr2.log" && ok ||
    bad "SIGUSR2: mpirun exited $rc (README says 0): $(tail -3 "$tmp/usr2.log")"

# SIGKILL of one rank: the job dies; restarting loses at most one checkpoint interval.
run 2 "$tmp/kill" >"$tmp/kill1.log" 2>&1 &
pid=$!
wait_for_generation "$tmp/kill1.log" 55 || bad "the run did not reach generation 55"
reached=$(awk '$1 ~ /^[0-9]+$/ {g = $1} END {print g + 0}' "$tmp/kill1.log")
victim=$(pgrep -f "$ISLAND $tmp/run.json --set output.dir=$tmp/kill" | tail -n 1)
kill -KILL "$victim"
wait $pid
run 2 "$tmp/kill" >"$tmp/kill2.log" 2>&1 && ok || bad "restart after SIGKILL failed: $(tail -5 "$tmp/kill2.log")"
resumed=$(sed -nE 's/^resuming from .* \(generation ([0-9]+)\).*/\1/p' "$tmp/kill2.log")
[ -n "$resumed" ] && [ "$resumed" -ge $((reached - 10)) ] && ok ||
    bad "after SIGKILL at generation >= $reached the restart resumed at '${resumed}' (interval 10)"
same_result "$tmp/ref" "$tmp/kill" && ok || bad "result after SIGKILL and restart differs"

# A changed setting that matters is refused, naming it; one that does not is accepted.
run 2 "$tmp/sig" --set evolution.rate=0.002 >"$tmp/changed.log" 2>&1
[ $? -ne 0 ] && grep -q "resume: the configuration changed: evolution.rate (0.001 -> 0.002)" \
    "$tmp/changed.log" && ok || bad "changed config: $(tail -3 "$tmp/changed.log")"
# A checkpoint whose configuration lacks a setting (written before it existed) is
# refused too: the setting may change the search.
mkdir -p "$tmp/old/checkpoints"
cp -r "$tmp/sig/checkpoints/$(ls "$tmp/sig/checkpoints" | tail -n 1)" "$tmp/old/checkpoints/"
"$PY" - "$(ls -d "$tmp"/old/checkpoints/*)/run.json" <<'PY'
import json, struct, sys, zlib
path = sys.argv[1]
raw = open(path, "rb").read()
run = json.loads(raw[20:])
config = json.loads(run["config"])
del config["reconstruction"]
run["config"] = json.dumps(config)
data = json.dumps(run).encode()
open(path, "wb").write(raw[:8] + struct.pack("<QI", len(data), zlib.crc32(data)) + data)
PY
run 2 "$tmp/old" >"$tmp/old.log" 2>&1
[ $? -ne 0 ] && grep -q "resume: the configuration changed: reconstruction.sweeps (absent -> 0)" \
    "$tmp/old.log" && ok || bad "checkpoint lacking a setting: $(tail -3 "$tmp/old.log")"
run 2 "$tmp/sig" --set stop.generations=160 >"$tmp/longer.log" 2>&1 && ok ||
    bad "extending stop.generations on resume: $(tail -3 "$tmp/longer.log")"

# A corrupt newest checkpoint is skipped for the one before.
newest=$(ls -d "$tmp/kill/checkpoints"/gen-* | tail -n 1)
printf 'garbage' | dd of="$newest/island-00001.bin" bs=1 seek=40 conv=notrunc 2>/dev/null
run 2 "$tmp/kill" --set stop.generations=170 >"$tmp/corrupt.log" 2>&1 && ok ||
    bad "resume past a corrupt checkpoint: $(tail -3 "$tmp/corrupt.log")"
grep -q "skipped 1 incomplete or corrupt checkpoint" "$tmp/corrupt.log" && ok ||
    bad "the corrupt checkpoint was not reported: $(head -3 "$tmp/corrupt.log")"

# Another number of ranks: 2 saved islands on 4 ranks, and 4 on 2; the mapping is stated.
run 4 "$tmp/sig" --set stop.generations=170 >"$tmp/four.log" 2>&1 && ok ||
    bad "resume on 4 ranks: $(tail -3 "$tmp/four.log")"
grep -q "2 saved islands on 4 ranks" "$tmp/four.log" && ok || bad "no mapping message for 2 -> 4"
run 2 "$tmp/sig" --set stop.generations=180 >"$tmp/two.log" 2>&1 && ok ||
    bad "resume on 2 ranks: $(tail -3 "$tmp/two.log")"
grep -q "rank 0 <- islands 0 2" "$tmp/two.log" && ok || bad "no mapping message for 4 -> 2"

# Paired selection with a confirmation batch and redraws: members carry per-image losses,
# which a checkpoint does not hold; a resumed run recomputes them on the saved draw's
# batches and ends exactly as a run never stopped.
paired=(--set evolution.significance=0.5 --set data.confirmation_batch=32
        --set data.redraw_every=7 --set stop.generations=60)
run 2 "$tmp/pref" "${paired[@]}" >"$tmp/pref.log" 2>&1 && ok ||
    bad "paired reference run: $(tail -3 "$tmp/pref.log")"
run 2 "$tmp/pres" "${paired[@]}" --set stop.generations=25 >"$tmp/pres1.log" 2>&1 && ok ||
    bad "paired first part: $(tail -3 "$tmp/pres1.log")"
run 2 "$tmp/pres" "${paired[@]}" >"$tmp/pres2.log" 2>&1 && ok ||
    bad "paired resume: $(tail -3 "$tmp/pres2.log")"
grep -q "^resuming from $tmp/pres/checkpoints/gen-00000025" "$tmp/pres2.log" && ok ||
    bad "the paired run did not resume from generation 25: $(head -3 "$tmp/pres2.log")"
same_result "$tmp/pref" "$tmp/pres" && ok ||
    bad "a resumed paired run with redraws differs from the uninterrupted one"
cmp -s "$tmp/pref/best.safetensors" "$tmp/pres/best.safetensors" && ok ||
    bad "resumed paired best.safetensors differs"

echo "test_checkpoint: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
