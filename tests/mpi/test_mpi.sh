#!/bin/bash
# MPI tests: tests/mpi/test_island under mpirun -n 1, 2, 4, and qevo-island end to end:
# determinism across two runs, one island without migration, four islands on a torus,
# layer-wise reconstruction agreeing on 1 and 2 islands, one rank failing on a bad file (every rank exits, one message), config errors.
set -u
. "$(dirname "$0")/../lib.sh"

for n in 1 2 4; do
    out=$(timeout 300 "${MPIRUN[@]}" -n "$n" "$BUILD/mpitests/test_island" 2>&1)
    line=$(echo "$out" | grep -E "^test_island \($n ranks\): [0-9]+ passed, [0-9]+ failed$")
    if [ -z "$line" ]; then
        echo "$out" | tail -20
        bad "test_island -n $n: no result"
        continue
    fi
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')
    passed=$((passed + p))
    failed=$((failed + f))
    [ "$f" -eq 0 ] || echo "$out" | grep FAIL | head -20
done

# A run small enough for a test: a few generations on a few images.
cat >"$tmp/tiny.json" <<JSON
{
  "model": "examples/models/vgg.safetensors",
  "quantizer": {"bits": 3},
  "data": {"fitness_size": 128, "validation_size": 64, "fitness_batch": 32,
           "eval_batch": 64, "test_size": 200},
  "evolution": {"population": 2, "offspring": 3, "rate": 0.001},
  "islands": {"interval": 2, "migrants": 1},
  "stop": {"generations": 6},
  "report": {"interval": 2},
  "output": {"dir": "$tmp/out"},
  "seed": 5
}
JSON

run_island() { # n, output dir, extra args...
    local n="$1" dir="$2"
    shift 2
    timeout 300 "${MPIRUN[@]}" -n "$n" "$ISLAND" "$tmp/tiny.json" --set output.dir="$dir" "$@"
}

# Determinism: same config, seed and ranks -> same result.json (timings aside) and the
# same best codes.
strip_times() {
    "$PY" -c '
import json, sys
r = json.load(open(sys.argv[1]))
r.pop("time")
r.pop("performance")
print(json.dumps(r, sort_keys=True))' "$1"
}
if run_island 2 "$tmp/a" >"$tmp/a.log" 2>&1 && run_island 2 "$tmp/b" >"$tmp/b.log" 2>&1; then
    ok
    [ "$(strip_times "$tmp/a/result.json")" = "$(strip_times "$tmp/b/result.json")" ] && ok ||
        bad "two runs gave different result.json"
    cmp -s "$tmp/a/best.safetensors" "$tmp/b/best.safetensors" && ok ||
        bad "two runs gave different best.safetensors"
    [ "$(grep -c '"type": "report"\|"type":"report"' "$tmp/a/log.jsonl")" -eq 3 ] && ok ||
        bad "log.jsonl should hold 3 reports: $(cat "$tmp/a/log.jsonl" | head -3)"
    grep -q '"sender"' "$tmp/a/log.jsonl" && ok || bad "no migration events in log.jsonl"
    "$BUILD/qevo" eval "$tmp/a/best.safetensors" --data fashion-mnist:test --limit 100 >/dev/null &&
        ok || bad "qevo eval cannot read best.safetensors"
else
    cat "$tmp/a.log" "$tmp/b.log" | tail -20
    bad "qevo-island -n 2 failed"
fi

# One island: runs without migration.
if run_island 1 "$tmp/one" >"$tmp/one.log" 2>&1; then
    ok
    grep -q '"sender"' "$tmp/one/log.jsonl" && bad "one island logged migrations" || ok
    grep -q '"ranks": 1' "$tmp/one/result.json" && ok || bad "result.json lacks ranks 1"
else
    tail -20 "$tmp/one.log"
    bad "qevo-island -n 1 failed"
fi

# Four islands on a torus.
if run_island 4 "$tmp/four" --set islands.topology=torus >"$tmp/four.log" 2>&1; then
    ok
    grep -q '"topology": "torus"' "$tmp/four/result.json" && ok || bad "torus not in result.json"
else
    tail -20 "$tmp/four.log"
    bad "qevo-island -n 4 torus failed"
fi

# Layer-wise reconstruction of the start state: every island reconstructs the same
# state from the Grams of the whole fitness split, so 1 and 2 islands agree.
recon_summary() {
    "$PY" -c '
import json, sys
r = json.load(open(sys.argv[1]))
layers = r["reconstruction"]["layers"]
assert r["start"] == "nearest + reconstruction", r["start"]
assert len(layers) == 7, layers
assert all(l["error_after"] < l["error_before"] for l in layers), layers
v = r["scores"]["validation"]
assert v["start"]["kl"] < v["nearest"]["kl"], v
print(" ".join("%s:%d:%.6f" % (l["layer"], l["codes_moved"], l["error_after"]) for l in layers))
' "$1"
}
if run_island 1 "$tmp/rec1" --set reconstruction.sweeps=50 >"$tmp/rec1.log" 2>&1 &&
    run_island 2 "$tmp/rec2" --set reconstruction.sweeps=50 >"$tmp/rec2.log" 2>&1; then
    ok
    one=$(recon_summary "$tmp/rec1/result.json") && two=$(recon_summary "$tmp/rec2/result.json") &&
        ok || bad "reconstruction missing or not lowering errors in result.json"
    [ -n "$one" ] && [ "$one" = "$two" ] && ok ||
        bad "1 and 2 islands reconstructed differently: '$one' vs '$two'"
    grep -q "reconstruction (" "$tmp/rec2.log" && ok || bad "no reconstruction lines in the header"
else
    tail -20 "$tmp/rec1.log" "$tmp/rec2.log"
    bad "qevo-island with reconstruction failed"
fi

# One rank cannot read its data: every rank exits 1, rank 0 prints one message.
mkdir -p "$tmp/nodata"
timeout 120 "${MPIRUN[@]}" -n 1 -x QEVO_FASHION_MNIST_DIR=/usr/share/datasets/fashion-mnist \
    "$ISLAND" "$tmp/tiny.json" --set output.dir="$tmp/bad" : \
    -n 1 -x QEVO_FASHION_MNIST_DIR="$tmp/nodata" "$ISLAND" "$tmp/tiny.json" \
    --set output.dir="$tmp/bad" >"$tmp/badrank.log" 2>&1
rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] && ok || bad "a rank with a bad file: exit $rc (124 = hung)"
[ "$(grep -c '^qevo-island: rank 1: data.train' "$tmp/badrank.log")" -eq 1 ] && ok ||
    bad "expected one 'rank 1: data.train' message: $(cat "$tmp/badrank.log")"

# Configuration errors: one message from rank 0, exit 1, nothing left running.
timeout 120 "${MPIRUN[@]}" -n 2 "$ISLAND" "$tmp/tiny.json" --set evolution.rate=2 \
    >"$tmp/cfg.log" 2>&1
rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] && ok || bad "config error: exit $rc"
[ "$(grep -c 'evolution.rate: expected a number in (0, 1], found 2' "$tmp/cfg.log")" -eq 1 ] &&
    ok || bad "config error message: $(cat "$tmp/cfg.log")"
timeout 120 "${MPIRUN[@]}" -n 2 "$ISLAND" "$tmp/tiny.json" --set data.fitness_size=70000 \
    >"$tmp/size.log" 2>&1
grep -q "data.fitness_size (70000) + data.validation_size (64) exceed" "$tmp/size.log" && ok ||
    bad "impossible sizes: $(cat "$tmp/size.log")"

# Dry run: configuration and splits only.
if run_island 2 "$tmp/dry" --dry-run >"$tmp/dry.log" 2>&1 && [ -f "$tmp/dry/splits.json" ] &&
    [ -f "$tmp/dry/config.json" ] && [ ! -f "$tmp/dry/result.json" ]; then
    ok
else
    bad "dry run: $(cat "$tmp/dry.log")"
fi

echo "test_mpi: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
