#!/bin/bash
# SLURM tests: scripts/slurm/qevo-island.sbatch on a real single-node cluster
# (tests/slurm/slurm_env.sh, started and torn down here). One run of the tiny config
# directly under mpirun is the reference; then, under SLURM:
#   - a short job finishes and is not requeued; a job with a broken config fails and is
#     not requeued;
#   - the real time limit: --time=1 --signal=B:USR1@20; the job checkpoints, requeues
#     itself, resumes, and ends with the reference's result.json (timings aside) and
#     best.safetensors;
#   - scancel --batch --signal=USR1 (the same signal, on demand): the same checks.
# The run length is calibrated to about 45 s on this machine; the time-limit job runs
# beside the reference so that the warning (10-40 s in) finds it running. About 3
# minutes in all. Needs slurm-wlm + munge (scripts/install-deps.sh; missing is a
# failure) and root (slurmd starts the jobs; as another user the test says it skipped).
# QEVO_SLURM_TEST_SECONDS sets the run length (default 45).
# QEVO_KEEP_SLURM_TMP=1 keeps the temp dir (logs, cluster state) for a look afterwards.
set -u
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
BUILD="${BUILD:-build}"
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
ISLAND="$BUILD/qevo-island"
PY="${QEVO_PYTHON:-/usr/bin/python3}"
SBATCH_SCRIPT="$ROOT/scripts/slurm/qevo-island.sbatch"
export OPENBLAS_NUM_THREADS=1
# shellcheck source=tests/slurm/slurm_env.sh
. "$ROOT/tests/slurm/slurm_env.sh"

passed=0
failed=0
ok() { passed=$((passed + 1)); }
bad() {
    failed=$((failed + 1))
    echo "FAIL: $*"
}
note() { echo "test_slurm: [$(date +%T)] $*"; }
finish() {
    echo "test_slurm: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}

PATH="$PATH:/usr/sbin:/sbin"
missing=""
for b in slurmctld slurmd sbatch scontrol munged; do
    command -v "$b" >/dev/null 2>&1 || missing="$missing $b"
done
if [ -n "$missing" ]; then
    bad "not installed:$missing (scripts/install-deps.sh installs slurm-wlm and munge)"
    finish
fi
if [ "$(id -u)" != 0 ]; then
    echo "test_slurm: SKIPPED: needs root (slurmd starts the jobs)"
    finish
fi
if [ ! -x "$ISLAND" ]; then
    bad "$ISLAND not built"
    finish
fi
if [ ! -f "$ROOT/examples/models/vgg.safetensors" ]; then
    bad "examples/models/vgg.safetensors is missing (the tests' model)"
    finish
fi

MPIRUN=(mpirun --oversubscribe --allow-run-as-root)
tmp=$(mktemp -d /tmp/qevo-slurm-test.XXXXXX)
chmod 755 "$tmp"
cluster="$tmp/cluster"
mkdir -p "$cluster" "$tmp/jobs" "$tmp/bin"
# Every run uses this one copy, so that a rebuild while the test runs cannot give the
# reference and the jobs different binaries.
cp "$ISLAND" "$tmp/bin/qevo-island" && ISLAND="$tmp/bin/qevo-island" || {
    bad "cannot copy $ISLAND"
    finish
}
bg_pids=""
t_ref=60 # seconds; measured by the reference run
cleanup() {
    local p
    for p in $bg_pids; do
        kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null
    done
    slurm_env_down "$cluster"
    for p in $bg_pids; do
        kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
    done
    if [ -n "${QEVO_KEEP_SLURM_TMP:-}" ]; then
        echo "test_slurm: kept $tmp"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'echo "test_slurm: interrupted"; exit 130' INT TERM HUP

# The tiny config of tests/mpi, with absolute paths: jobs run in $tmp/jobs.
write_config() { # file, generations
    cat >"$1" <<JSON
{
  "model": "$ROOT/examples/models/vgg.safetensors",
  "quantizer": {"bits": 3},
  "data": {"fitness_size": 128, "validation_size": 64, "fitness_batch": 32,
           "eval_batch": 64, "test_size": 200},
  "evolution": {"population": 2, "offspring": 3, "rate": 0.001},
  "islands": {"interval": 2, "migrants": 1},
  "stop": {"generations": $2}, "checkpoint": {"every_generations": 3},
  "report": {"interval": 2},
  "output": {"dir": "$tmp/unused"},
  "seed": 5
}
JSON
}

strip_times() {
    "$PY" -c '
import json, sys
r = json.load(open(sys.argv[1]))
r.pop("time", None)
r.pop("performance", None)
print(json.dumps(r, sort_keys=True))' "$1"
}

diff_results() { # resumed, reference: the keys whose values differ
    "$PY" -c '
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
def walk(x, y, path):
    if isinstance(x, dict) and isinstance(y, dict):
        for k in sorted(set(x) | set(y)):
            if path == "" and k in ("time", "performance"):
                continue
            walk(x.get(k), y.get(k), path + "." + k)
    elif x != y:
        print("  %s: %s (resumed) vs %s (uninterrupted)" % (path[1:], x, y))
walk(a, b, "")' "$1" "$2"
}

job_field() { # job id, field name -> value from scontrol show job
    timeout 10 scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

show_job() { # job id: everything needed to see why it failed
    echo "----- scontrol show job $1"
    timeout 10 scontrol show job "$1" 2>&1 | sed 's/^/  /'
    local f
    for f in "$tmp/jobs/"*"-$1.out" "$tmp/jobs/"*"-$1.err"; do
        [ -f "$f" ] || continue
        echo "----- $f (last 60 lines)"
        tail -n 60 "$f"
    done
}

# Waits until the job ends; prints its final state. Fails after a timeout.
wait_done() { # job id, timeout in seconds
    local t0=$SECONDS s
    while :; do
        s=$(job_field "$1" JobState)
        case "$s" in
        COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | \
            DEADLINE | PREEMPTED)
            echo "$s"
            return 0
            ;;
        esac
        if [ $((SECONDS - t0)) -ge "$2" ]; then
            echo "timeout(${s:-unknown job})"
            return 1
        fi
        sleep 1
    done
}

# Waits until the job has been requeued at least once.
wait_requeued() { # job id, timeout in seconds
    local t0=$SECONDS r s
    while :; do
        r=$(job_field "$1" Restarts)
        [ "${r:-0}" -ge 1 ] && return 0
        s=$(job_field "$1" JobState)
        case "$s" in
        COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | "") return 1 ;;
        esac
        [ $((SECONDS - t0)) -ge "$2" ] && return 1
        sleep 0.5
    done
}

submit() { # name, sbatch options..., -- , script args...
    local name="$1" id
    shift
    id=$(cd "$tmp/jobs" && timeout 30 sbatch --parsable --job-name="$name" "$@" 2>"$tmp/sbatch.err")
    id=${id%%;*}
    if [ -z "$id" ]; then
        cat "$tmp/sbatch.err" >&2
        return 1
    fi
    echo "$id"
}

# Checks a requeued job's end: completed, resumed, and the reference's results.
check_resumed_job() { # label, job id, output dir
    local label="$1" id="$2" dir="$3" out="$tmp/jobs/qevo-island-$2.out" fails=$failed
    [ "$(job_field "$id" JobState)" = COMPLETED ] && ok ||
        bad "$label: job $id ended $(job_field "$id" JobState), not COMPLETED"
    [ "$(job_field "$id" ExitCode)" = 0:0 ] && ok ||
        bad "$label: job $id exit code $(job_field "$id" ExitCode)"
    [ "$(job_field "$id" Restarts)" -ge 1 ] 2>/dev/null && ok ||
        bad "$label: job $id was not requeued (Restarts=$(job_field "$id" Restarts))"
    grep -q "qevo-island: stopped by a signal at generation" "$out" && ok ||
        bad "$label: the log does not say qevo-island stopped after a checkpoint"
    grep -q "checkpointed before the time limit; requeueing job $id" "$out" && ok ||
        bad "$label: the log does not say the job requeued itself"
    grep -q "^resuming from $dir/checkpoints/gen-" "$out" && ok ||
        bad "$label: the log does not say the requeued run resumed from a checkpoint"
    grep -q "run 2: requeued 1 time(s)" "$out" && ok ||
        bad "$label: the second run does not log its restart count"
    [ "$(grep -c "qevo-island finished; not requeued" "$out")" = 1 ] && ok ||
        bad "$label: the last run does not log 'finished; not requeued' exactly once"
    if [ -f "$dir/result.json" ] && [ -f "$dir/best.safetensors" ]; then
        if [ "$(strip_times "$dir/result.json")" = "$(strip_times "$tmp/ref/result.json")" ]; then
            ok
        else
            bad "$label: result.json differs from the uninterrupted run:"
            diff_results "$dir/result.json" "$tmp/ref/result.json"
        fi
        cmp -s "$dir/best.safetensors" "$tmp/ref/best.safetensors" && ok ||
            bad "$label: best.safetensors differs from the uninterrupted run"
    else
        bad "$label: no result.json / best.safetensors in $dir"
    fi
    [ "$failed" -eq "$fails" ] || show_job "$id"
}

# --- 1. the cluster comes up while a short calibration run measures this machine.
t_all=$SECONDS
note "starting a single-node SLURM in $cluster; calibrating the run length"
(slurm_env_up "$cluster" >"$tmp/up.log" 2>&1) &
up_pid=$!
bg_pids="$up_pid"
write_config "$tmp/cal.json" 40
t0=$SECONDS
if ! timeout 120 "${MPIRUN[@]}" -n 2 "$ISLAND" "$tmp/cal.json" --set output.dir="$tmp/cal" \
    >"$tmp/cal.log" 2>&1; then
    tail -20 "$tmp/cal.log"
    bad "qevo-island -n 2 (calibration, outside SLURM) failed"
    finish
fi
# Seconds per generation from log.jsonl (generation 10 -> 40), and the start-up time.
read -r spg startup < <("$PY" -c '
import json, sys
e = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("type") == "report":
        e[r["generation"]] = r["elapsed"]
spg = (e[40] - e[10]) / 30
print("%.4f %.2f" % (spg, e[10] - 10 * spg))' "$tmp/cal/log.jsonl" 2>/dev/null)
if [ -z "${spg:-}" ]; then
    bad "cannot read the calibration run's log.jsonl"
    finish
fi
target="${QEVO_SLURM_TEST_SECONDS:-45}"
GENS=$("$PY" -c "import math; print(max(20, min(5000, math.ceil(($target - $startup) / $spg))))")
note "calibration: $(($SECONDS - t0)) s, ${spg} s/generation, start-up ${startup} s" \
    "-> $GENS generations (about $target s a run alone)"

if ! wait "$up_pid" || ! slurm_env_up "$cluster" >>"$tmp/up.log" 2>&1; then
    cat "$tmp/up.log"
    bad "the SLURM cluster did not come up"
    finish
fi
bg_pids=""
ok
note "cluster up ($(sinfo -h -o '%N %t %c CPUs' 2>&1)), SLURM_CONF=$SLURM_CONF"

# --- 2. two short jobs: one finishes, one fails; neither is requeued.
export QEVO_ISLAND="$ISLAND"
write_config "$tmp/short.json" 6
echo '{"no_such_key": 1}' >"$tmp/broken.json"
short_id=$(submit short --nodes=1 --ntasks-per-node=1 --time=5 "$SBATCH_SCRIPT" \
    "$tmp/short.json" --set output.dir="$tmp/short")
broken_id=$(submit short --nodes=1 --ntasks-per-node=1 --time=5 "$SBATCH_SCRIPT" \
    "$tmp/broken.json" --set output.dir="$tmp/broken")
[ -n "$short_id" ] && [ -n "$broken_id" ] && ok || bad "sbatch failed"
if [ -n "$short_id" ]; then
    s=$(wait_done "$short_id" 120)
    out="$tmp/jobs/short-$short_id.out"
    fails=$failed
    [ "$s" = COMPLETED ] && [ "$(job_field "$short_id" ExitCode)" = 0:0 ] && ok ||
        bad "short job: $s, exit code $(job_field "$short_id" ExitCode)"
    [ "$(job_field "$short_id" Restarts)" = 0 ] && ok || bad "short job: requeued"
    grep -q "qevo-island finished; not requeued" "$out" 2>/dev/null && ok ||
        bad "short job: the log does not say 'finished; not requeued'"
    grep -q "run 1: starting on $SLURM_ENV_NODE (1 ranks)" "$out" 2>/dev/null && ok ||
        bad "short job: mpirun did not take 1 rank from the allocation"
    [ -f "$tmp/short/result.json" ] && ok || bad "short job: no result.json"
    [ "$failed" -eq "$fails" ] || show_job "$short_id"
fi
if [ -n "$broken_id" ]; then
    s=$(wait_done "$broken_id" 120)
    out="$tmp/jobs/short-$broken_id.out"
    fails=$failed
    [ "$s" = FAILED ] && ok || bad "job with a broken config: $s, not FAILED"
    [ "$(job_field "$broken_id" Restarts)" = 0 ] && ok || bad "broken job: requeued"
    grep -q "qevo-island failed (mpirun exit status [1-9][0-9]*); not requeued" "$out" \
        2>/dev/null && ok || bad "broken job: the log does not say 'failed; not requeued'"
    [ "$failed" -eq "$fails" ] || show_job "$broken_id"
fi
note "short jobs done"

# --- 3. the real time limit, with the reference run beside it.
# With --time=1 and @20, slurmctld sends USR1 at its first time-limit check with 10 s or
# more of run time (it checks every 30 s, and signals when the warning time falls before
# its next check): 10-40 s into the run. The reference runs at the same time, outside
# SLURM, on the same cores: the job then goes at about half speed and is sure to be still
# running when the warning comes, unless the machine got much faster than the
# calibration said; then it is tried once more with twice the generations.
# Once requeued, the job gets a longer limit so that the rest runs in one go.
# Sets tl_id, t_ref; returns 2 if the job finished before the warning came.
time_limit_phase() {
    local t0=$SECONDS ref_pid s
    write_config "$tmp/run.json" "$GENS"
    rm -rf "$tmp/ref" "$tmp/timelimit"
    tl_id=$(submit qevo-island --nodes=1 --ntasks-per-node=2 --time=1 --signal=B:USR1@20 \
        "$SBATCH_SCRIPT" "$tmp/run.json" --set output.dir="$tmp/timelimit")
    [ -n "$tl_id" ] && ok || bad "sbatch failed"
    note "time-limit job $tl_id submitted (--time=1 --signal=B:USR1@20); reference run:" \
        "$GENS generations on 2 ranks under mpirun, outside SLURM"
    timeout 900 "${MPIRUN[@]}" -n 2 "$ISLAND" "$tmp/run.json" --set output.dir="$tmp/ref" \
        >"$tmp/ref.log" 2>&1 &
    ref_pid=$!
    bg_pids="$ref_pid"
    if [ -n "$tl_id" ]; then
        if wait_requeued "$tl_id" 150; then
            note "time-limit job $tl_id: signalled and requeued at $((SECONDS - t0)) s"
            timeout 10 scontrol update JobId="$tl_id" TimeLimit=10 ||
                note "could not raise the time limit of job $tl_id (it may be requeued again)"
        elif [ "$(job_field "$tl_id" JobState)" = COMPLETED ] &&
            ! grep -q "got SIGUSR1" "$tmp/jobs/qevo-island-$tl_id.out"; then
            note "time-limit job $tl_id: finished in $((SECONDS - t0)) s, before the warning"
            wait "$ref_pid"
            bg_pids=""
            return 2
        else
            bad "time-limit job $tl_id: not requeued within 150 s"
        fi
    fi
    if wait "$ref_pid" && [ -f "$tmp/ref/result.json" ]; then
        ok
    else
        tail -20 "$tmp/ref.log"
        bad "the reference run failed"
        finish
    fi
    bg_pids=""
    t_ref=$((SECONDS - t0))
    note "reference run: done at $t_ref s"
    if [ -n "$tl_id" ]; then
        s=$(wait_done "$tl_id" $((3 * t_ref + 150)))
        note "time-limit job $tl_id: $s at $((SECONDS - t0)) s"
        check_resumed_job "time-limit job" "$tl_id" "$tmp/timelimit"
        grep -q "run 1: got SIGUSR1" "$tmp/jobs/qevo-island-$tl_id.out" && ok ||
            bad "time-limit job: the first run does not log the USR1 from the time limit"
    fi
    return 0
}
time_limit_phase
if [ $? -eq 2 ]; then
    GENS=$((2 * GENS))
    time_limit_phase
    [ $? -eq 2 ] && bad "time-limit job $tl_id: finished before the time-limit warning twice"
fi

# True once dir holds a checkpoint of generation >= $2.
checkpoint_from() { # output dir, generation
    local d
    for d in "$1"/checkpoints/gen-*; do
        [ -d "$d" ] && [ $((10#${d##*gen-})) -ge "$2" ] && return 0
    done
    return 1
}

# --- 4. scancel --batch --signal=USR1 (what the warning does, on demand): checkpoint,
# requeue, resume, same result. The default --signal (USR1 120 s before a 10 min limit)
# stays far away.
t0=$SECONDS
id=$(submit qevo-island --nodes=1 --ntasks-per-node=2 --time=10 "$SBATCH_SCRIPT" \
    "$tmp/run.json" --set output.dir="$tmp/usr1")
if [ -z "$id" ]; then
    bad "sbatch failed"
else
    note "USR1 job $id submitted; signalling it once it has checkpointed"
    # Any checkpoint from generation 9 on: with checkpoint.keep old ones are removed
    # within a fraction of a second, faster than this loop looks.
    until checkpoint_from "$tmp/usr1" 9; do
        if [ $((SECONDS - t0)) -ge 150 ]; then
            bad "USR1 job: no checkpoint of generation 9 or later after 150 s"
            show_job "$id"
            break
        fi
        sleep 0.5
    done
    timeout 10 scancel --batch --signal=USR1 "$id" && ok || bad "scancel --batch --signal=USR1"
    note "USR1 job $id: signalled at $((SECONDS - t0)) s"
    if wait_requeued "$id" 60; then
        note "USR1 job $id: requeued at $((SECONDS - t0)) s"
    else
        bad "USR1 job $id: not requeued within 60 s of the signal"
    fi
    s=$(wait_done "$id" $((3 * t_ref + 120)))
    note "USR1 job $id: $s at $((SECONDS - t0)) s"
    check_resumed_job "USR1 job" "$id" "$tmp/usr1"
fi

if [ "$failed" -ne 0 ]; then
    echo "----- cluster logs"
    slurm_env_logs "$cluster"
fi
note "all done in $((SECONDS - t_all)) s"
finish
