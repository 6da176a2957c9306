#!/bin/bash
# Asynchronous migration (islands.mode "async"): more ranks than cores and one island
# slowed down; the others do not wait for it, the run ends cleanly, and every migrant
# sent is received exactly once. The same run in sync mode shows the waiting it avoids.
set -u
. "$(dirname "$0")/../lib.sh"

cat >"$tmp/run.json" <<JSON
{
  "model": "examples/models/vgg.safetensors",
  "quantizer": {"bits": 3},
  "data": {"fitness_size": 128, "validation_size": 64, "fitness_batch": 16,
           "eval_batch": 64, "test_size": 100},
  "evolution": {"population": 2, "offspring": 2, "rate": 0.001},
  "islands": {"interval": 1, "migrants": 1, "topology": "full"},
  "stop": {"generations": 20},
  "report": {"interval": 5},
  "seed": 3
}
JSON

for mode in async sync; do
    QEVO_TEST_SLOW_RANK=1 QEVO_TEST_SLOW_MS=300 timeout 300 "${MPIRUN[@]}" -n 4 \
        -x QEVO_TEST_SLOW_RANK -x QEVO_TEST_SLOW_MS "$BUILD/qevo-island" "$tmp/run.json" \
        --set islands.mode=$mode --set output.dir="$tmp/$mode" >"$tmp/$mode.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] && ok || { tail -20 "$tmp/$mode.log"; bad "$mode run: exit $rc"; continue; }
    "$PY" - "$tmp/$mode" "$mode" <<'PY' && ok || bad "$mode: see above"
import json, sys
out, mode = sys.argv[1], sys.argv[2]
r = json.load(open(f"{out}/result.json"))
m, loops = r["migration"], r["performance"]["loop_seconds_per_island"]
problems = []
if m["mode"] != mode:
    problems.append(f"mode {m['mode']}")
if m["states_sent"] != m["states_received"] or m["states_sent"] == 0:
    problems.append(f"sent {m['states_sent']} states, received {m['states_received']}")
if m["generations_per_island"] != [20] * 4:
    problems.append(f"generations {m['generations_per_island']}")
# Island 0's migrants at its generation 20, from the log: 3 senders x 20 generations = 60
# if it waited for every island. The slow island sleeps 0.3 s per generation on top of
# the same work, so an island that does not wait reaches generation 20 before it has sent
# all of its migrants. An order of events, not a timing: a loaded machine slows all alike.
log = [json.loads(l) for l in open(f"{out}/log.jsonl")]
if mode == "async":
    at20 = [e["migrants_in"] for e in log
            if e["type"] == "island_report" and e["island"] == 0 and e["generation"] == 20]
else:
    at20 = [i["migrants_in"] for e in log if e["type"] == "report" and e["generation"] == 20
            for i in e["islands"]]
if not at20:
    problems.append("no generation-20 report in log.jsonl")
elif mode == "async" and not max(at20) < 60:
    problems.append(f"island 0 had all {at20[0]} migrants at generation 20: it waited")
elif mode == "sync" and at20 != [60] * 4:
    problems.append(f"migrants in at generation 20: {at20}, expected 60 on every island")
print(f"{mode}: migrants in at generation 20 {at20}; loop seconds "
      f"{[round(x, 1) for x in loops]}, states {m['states_sent']}/{m['states_received']}"
      + ("" if not problems else f"; FAIL: {problems}"))
sys.exit(1 if problems else 0)
PY
done

echo "test_async: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
