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
    "$PY" - "$tmp/$mode/result.json" "$mode" <<'PY' && ok || bad "$mode: see above"
import json, sys
r = json.load(open(sys.argv[1]))
mode, m, loops = sys.argv[2], r["migration"], r["performance"]["loop_seconds_per_island"]
problems = []
if m["mode"] != mode:
    problems.append(f"mode {m['mode']}")
if m["states_sent"] != m["states_received"] or m["states_sent"] == 0:
    problems.append(f"sent {m['states_sent']} states, received {m['states_received']}")
if m["generations_per_island"] != [20] * 4:
    problems.append(f"generations {m['generations_per_island']}")
slow, fast = loops[1], max(loops[0], loops[2], loops[3])
# The slow island sleeps 20 x 0.3 s; asynchronous islands finish long before it,
# synchronous ones wait for it at every migration.
if mode == "async" and not fast < 0.6 * slow:
    problems.append(f"fast islands took {fast:.1f} s, the slow one {slow:.1f} s: they waited")
if mode == "sync" and not fast > 0.8 * slow:
    problems.append(f"sync: fast islands {fast:.1f} s vs slow {slow:.1f} s: no waiting?")
print(f"{mode}: loop seconds {[round(x, 1) for x in loops]}, states {m['states_sent']}"
      f"/{m['states_received']}" + ("" if not problems else f"; FAIL: {problems}"))
sys.exit(1 if problems else 0)
PY
done

echo "test_async: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
