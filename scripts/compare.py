#!/usr/bin/python3
"""qevo beside AdaRound on one example, on the same model, quantizer and calibration
images, scored on the held-out test split: float, nearest rounding, AdaRound, qevo, and
qevo started from AdaRound's codes, with the wall time of each method.

    /usr/bin/python3 scripts/compare.py examples/vgg.json [--ranks 2]
        [--from-adaround-seconds 150] [--set KEY=VALUE ...] [--out runs/compare-vgg]

1. `mpirun -n RANKS qevo-island CONFIG` (its stop rule as configured), into OUT/qevo;
2. scripts/adaround.py with the config's quantizer (bits, first/last bits, granularity,
   grid and scale search, as resolved in OUT/qevo/config.json with the --set overrides) on
   the union of the fitness shards of that run (OUT/qevo/splits.json), i.e. exactly the
   images qevo's islands scored on;
3. `qevo-island CONFIG --set start=<AdaRound model>` into OUT/qevo-from-adaround, for
   --from-adaround-seconds of wall time (0 = the config's stop rule);
4. `qevo eval` of AdaRound's model on the test split; the other figures come from the
   runs' result.json (scored on the test split once, at the end); on Fashion-MNIST's
   whole test split, scripts/paired.py compares qevo's two models with AdaRound's image
   by image (McNemar for classifiers, paired t for autoencoders).

Every run starts fresh: run folders an earlier compare left in OUT are removed first
(qevo-island would otherwise resume from their checkpoints).
Writes OUT/compare.json and prints one Markdown table row per method.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import paired


def run(cmd, log):
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.time() - t0


def fresh(folder):
    """Removes a run folder an earlier compare left, so the run starts anew."""
    if os.path.exists(folder):
        print(f"compare.py: removing {folder} from an earlier compare", flush=True)
        shutil.rmtree(folder)
    return folder


def mpirun(ranks):
    cmd = ["mpirun", "-n", str(ranks)]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")  # Open MPI refuses root unless told
    if ranks > os.cpu_count():
        cmd.append("--oversubscribe")
    return cmd


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--from-adaround-seconds", type=float, default=150)
    ap.add_argument("--set", action="append", default=[], help="qevo-island --set KEY=VALUE")
    ap.add_argument("--adaround-iterations", type=int, default=2000)
    ap.add_argument("--build", default="build")
    ap.add_argument("--out")
    args = ap.parse_args()

    name = os.path.splitext(os.path.basename(args.config))[0]
    out = args.out or f"runs/compare-{name}"
    os.makedirs(out, exist_ok=True)
    sets = [x for kv in args.set for x in ("--set", kv)]
    island = mpirun(args.ranks) + [f"{args.build}/qevo-island", args.config] + sets
    os.environ["OPENBLAS_NUM_THREADS"] = "1"

    wall = {}
    wall["qevo"] = run(island + ["--set", f"output.dir={fresh(out + '/qevo')}"],
                       f"{out}/qevo.log")
    cfg = json.load(open(f"{out}/qevo/config.json"))  # resolved, with the --set overrides
    q = cfg["quantizer"]
    ada_model = f"{out}/adaround.safetensors"
    ada = [sys.executable, "scripts/adaround.py", "--model", cfg["model"],
           "--bits", str(q["bits"]), "--calibration", f"{out}/qevo/splits.json",
           "--data", cfg["data"]["train"], "--iterations", str(args.adaround_iterations),
           "--threads", str(os.cpu_count()), "--out", ada_model]
    if q["granularity"] == "per_tensor":
        ada.append("--per-tensor")
    # the grid and scale search (absent from a config.json older than them: the defaults)
    ada += ["--grid", q.get("grid", "symmetric"), "--scales", q.get("scales", "max")]
    for key in ("first_bits", "last_bits"):
        if q[key]:
            ada += [f"--{key.replace('_', '-')}", str(q[key])]
    wall["adaround"] = run(ada, f"{out}/adaround.log")
    extra = ["--set", f"start={ada_model}",
             "--set", f"output.dir={fresh(out + '/qevo-from-adaround')}"]
    if args.from_adaround_seconds > 0:
        extra += ["--set", f"stop.seconds={args.from_adaround_seconds}",
                  "--set", "stop.generations=0"]
    wall["qevo_from_adaround"] = run(island + extra, f"{out}/qevo-from-adaround.log")

    ev = subprocess.run([f"{args.build}/qevo", "eval", ada_model, "--data", cfg["data"]["test"],
                         "--json"], check=True, capture_output=True, text=True)
    ada_score = json.loads(ev.stdout)
    res = json.load(open(f"{out}/qevo/result.json"))
    res_ada = json.load(open(f"{out}/qevo-from-adaround/result.json"))
    metric = "mse" if "mse" in ada_score else "accuracy"
    test = res["scores"]["test"]
    rows = [("float", test["float"][metric], None),
            ("nearest", test["nearest"][metric], None),
            ("AdaRound", ada_score[metric], wall["adaround"]),
            ("qevo", test["evolved"][metric], wall["qevo"]),
            ("qevo from AdaRound", res_ada["scores"]["test"]["evolved"][metric],
             wall["adaround"] + wall["qevo_from_adaround"])]
    gap = test["float"][metric] - test["nearest"][metric]
    vs_peer = {}
    if cfg["data"]["test"] == "fashion-mnist:test" and not cfg["data"]["test_size"]:
        # image by image against the peer: a = qevo's model, b = AdaRound's
        vs_peer = {"qevo": paired.paired(f"{out}/qevo/best.safetensors", ada_model, args.build),
                   "qevo_from_adaround": paired.paired(
                       f"{out}/qevo-from-adaround/best.safetensors", ada_model, args.build)}
    summary = {"config": args.config, "ranks": args.ranks, "metric": metric,
               "quantizer": q, "calibration_images": cfg["data"]["fitness_size"],
               "rows": [{"method": m, "test": v, "wall_seconds": w} for m, v, w in rows],
               "paired": {"qevo": res.get("test_paired"),
                          "qevo_from_adaround": res_ada.get("test_paired")},
               "paired_vs_adaround": vs_peer}
    with open(f"{out}/compare.json.tmp", "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(f"{out}/compare.json.tmp", f"{out}/compare.json")

    print(f"| method | test {metric} | share of float-nearest gap recovered | wall time |")
    print("|---|---|---|---|")
    for m, v, w in rows:
        share = (v - test["nearest"][metric]) / gap + 0.0 if gap else 0.0  # no "-0%"
        fmt = f"{v:.4f}" if metric == "accuracy" else f"{v:.6f}"
        print(f"| {m} | {fmt} | {share:.0%} | {'' if w is None else f'{w:.0f} s'} |")
    for m, r in vs_peer.items():
        print(f"{m} vs AdaRound, image by image: " + "  ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
