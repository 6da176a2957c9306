#!/usr/bin/python3
"""Scaling studies of qevo-island: strong scaling (fixed total population and data, more
ranks) and weak scaling (fixed work per rank), from one command.

    /usr/bin/python3 scripts/scaling.py examples/vgg.json --ranks 1 2 4 8 \\
        --generations 40 --out runs/scaling

For each study and rank count it runs `mpirun -n R qevo-island CONFIG` with overrides,
reads result.json, and writes OUT/scaling.csv with: study, ranks, population per island,
fitness images, generations/s, evaluations/s, seconds in migration and in validation
(per rank), bytes per migrant and per migration against a whole code array, and the
quality reached at the fixed budget (validation score, test score). It draws
OUT/speedup.png, OUT/efficiency.png and OUT/time_breakdown.png, and prints a cost model
for 64-1024 ranks built from the measured computation and communication terms (see
--help for the network constants the projection assumes).

Strong scaling: the total population (--population-total), the offspring per generation
(--offspring-total) and the fitness images (config's data.fitness_size) stay fixed, so
each island gets total/R parents and offspring and scores its whole shard of
fitness_size/R images. Weak scaling: each island keeps the config's population
and data.fitness_size images, so the totals grow with R. On a machine with fewer cores
than ranks (mpirun --oversubscribe), runs beyond the core count show behaviour, not
speed; the CSV marks them.
"""
import argparse
import csv
import json
import math
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FIELDS = ["study", "ranks", "oversubscribed", "population_per_island", "fitness_images",
          "generations", "seconds", "generations_per_s", "evaluations_per_s",
          "evaluation_s", "migration_s", "validation_s", "migrations", "bytes_per_migrant",
          "bytes_per_migration", "full_state_bytes", "validation_fitness", "test_metric"]


def run_one(args, study, ranks, population, offspring, fitness):
    """fitness = total fitness images; strong runs score each island's whole shard
    (fitness / ranks images) every evaluation, so the images scored per generation over
    all islands stay fixed; weak runs keep the config's per-island batch."""
    out = os.path.join(args.out, f"{study}-{ranks}")
    cmd = ["mpirun", "-n", str(ranks), "--oversubscribe"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    cmd += [args.island, args.config,
            "--set", f"output.dir={out}",
            "--set", f"stop.generations={args.generations}",
            "--set", "stop.seconds=0",
            "--set", f"evolution.population={population}",
            "--set", f"evolution.offspring={offspring}",
            "--set", f"evolution.tournament={min(2, population)}",
            "--set", f"islands.migrants=1",
            "--set", f"data.fitness_size={fitness}",
            "--set", f"data.test_size={args.test_size}"]
    if study == "strong":
        shard = fitness // ranks
        # Enough cache for every parent at every rank count (memory per island falls as
        # 1/R^2), so that caching does not change with R and distort the speedup.
        cmd += ["--set", "data.fitness_batch=0", "--set", f"data.eval_batch={shard}",
                "--set", f"evolution.cache_mb={args.strong_cache_mb}"]
    for s in args.set or []:
        cmd += ["--set", s]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    print(f"{study:6s} ranks {ranks:3d}: {' '.join(cmd)}", flush=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"scaling: run failed ({study}, {ranks} ranks):\n{r.stdout[-2000:]}\n"
                 f"{r.stderr[-2000:]}")
    with open(os.path.join(out, "result.json")) as f:
        res = json.load(f)
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    t, m = res["time"], res["migration"]
    loop = max(res["performance"]["loop_seconds_per_island"])
    interval = cfg["islands"]["interval"]
    migrations = res["generations"] // interval if ranks > 1 and interval else 0
    per_migration = m["bytes_sent"] / migrations / ranks if migrations else 0.0
    test = res["scores"]["test"]["evolved"]
    return {
        "study": study, "ranks": ranks, "oversubscribed": int(ranks > os.cpu_count()),
        "population_per_island": population, "fitness_images": fitness,
        "generations": res["generations"], "seconds": round(loop, 3),
        "generations_per_s": round(res["generations"] / loop, 4),
        "evaluations_per_s": round(res["evaluations"] / loop, 2),
        "evaluation_s": round(t["evaluation"], 3), "migration_s": round(t["migration"], 3),
        "validation_s": round(t["validation"], 3), "migrations": migrations,
        "bytes_per_migrant": round(m["bytes_per_state"], 1),
        "bytes_per_migration": round(per_migration, 1),
        "full_state_bytes": m["full_state_bytes"],
        "validation_fitness": res["best"]["validation_fitness"],
        "test_metric": test.get("accuracy", test.get("mse")),
    }


def plot(rows, out):
    for study in ("strong", "weak"):
        pts = [r for r in rows if r["study"] == study]
        if not pts:
            continue
        base = pts[0]
        ranks = [r["ranks"] for r in pts]
        if study == "strong":
            y = [base["seconds"] / r["seconds"] for r in pts]
            ideal = [r / base["ranks"] for r in ranks]
        else:  # weak: work grows with ranks; speedup in evaluations/s
            y = [r["evaluations_per_s"] / base["evaluations_per_s"] for r in pts]
            ideal = [r / base["ranks"] for r in ranks]
        plt.figure(1, figsize=(6, 4.5))
        plt.plot(ranks, y, "o-", label=f"{study} scaling")
        plt.plot(ranks, ideal, ":", color="gray")
        eff = [yy / ii for yy, ii in zip(y, ideal)]
        plt.figure(2, figsize=(6, 4.5))
        plt.plot(ranks, eff, "o-", label=f"{study} scaling")
    for fig, name, ylabel in ((1, "speedup.png", "speedup (dotted: ideal)"),
                              (2, "efficiency.png", "parallel efficiency")):
        plt.figure(fig)
        plt.xscale("log", base=2)
        plt.xlabel("ranks (islands)")
        plt.ylabel(ylabel)
        plt.grid(alpha=0.3)
        plt.legend()
        plt.tight_layout()
        plt.savefig(os.path.join(out, name), dpi=110)
        plt.close(fig)
    plt.figure(figsize=(8, 4.5))
    labels = [f"{r['study'][0]}{r['ranks']}" for r in rows]
    ev = [r["evaluation_s"] for r in rows]
    mi = [r["migration_s"] for r in rows]
    va = [r["validation_s"] for r in rows]
    other = [max(0.0, r["seconds"] - e - m - v) for r, e, m, v in zip(rows, ev, mi, va)]
    x = range(len(rows))
    plt.bar(x, ev, label="evaluation")
    plt.bar(x, mi, bottom=ev, label="migration")
    plt.bar(x, va, bottom=[a + b for a, b in zip(ev, mi)], label="validation")
    plt.bar(x, other, bottom=[a + b + c for a, b, c in zip(ev, mi, va)], label="other")
    plt.xticks(list(x), labels)
    plt.ylabel("seconds per rank (s = strong, w = weak; number = ranks)")
    plt.legend()
    plt.tight_layout()
    plt.savefig(os.path.join(out, "time_breakdown.png"), dpi=110)
    plt.close()


def projection(rows, args):
    """Per-generation time at 64..1024 ranks for the weak-scaling configuration.

    Measured (from the 1- and 2-rank weak runs on this machine): the computation per
    generation per island, the validation computation per report (V images per rank per
    report, whatever the rank count, since every rank scores every candidate on V/R
    images), and the bytes per migrant. Assumed: the network's latency and bandwidth
    (--latency-us, --bandwidth-gbs) and that neighbour collectives cost one latency per
    neighbour plus the bytes over the bandwidth; Allgatherv of R states and Allreduce cost
    log2(R) latencies plus the bytes.
    """
    weak = [r for r in rows if r["study"] == "weak" and not r["oversubscribed"]]
    if not weak:
        return []
    base = weak[-1]
    gens = base["generations"]
    compute = base["evaluation_s"] / gens
    with open(os.path.join(args.out, f"weak-{base['ranks']}", "config.json")) as f:
        cfg = json.load(f)
    interval, report = cfg["islands"]["interval"] or 0, cfg["report"]["interval"]
    reports = max(1, gens // report)
    validation = base["validation_s"] / reports
    degree = {"ring": 2, "torus": 4, "random": cfg["islands"]["degree"]}
    alpha, beta = args.latency_us * 1e-6, 1.0 / (args.bandwidth_gbs * 1e9)
    lines = []
    for n in (64, 128, 256, 512, 1024):
        d = n - 1 if cfg["islands"]["topology"] == "full" else degree[cfg["islands"]["topology"]]
        msg = base["bytes_per_migrant"] * cfg["islands"]["migrants"]
        migrate = (d * (alpha + msg * beta)) / interval if interval else 0.0
        gather = math.log2(n) * alpha + n * base["bytes_per_migrant"] * beta
        validate = (validation + gather + math.log2(n) * alpha) / report
        total = compute + migrate + validate
        lines.append((n, compute, migrate, validate, total, compute / total))
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--generations", type=int, default=40)
    ap.add_argument("--population-total", type=int, default=8,
                    help="strong scaling: parents over all islands (default 8)")
    ap.add_argument("--offspring-total", type=int, default=16,
                    help="strong scaling: offspring per generation over all islands (16)")
    ap.add_argument("--strong-cache-mb", type=int, default=6144,
                    help="strong scaling: evolution.cache_mb per island (6144)")
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--set", action="append", help="extra qevo-island --set KEY=VALUE")
    ap.add_argument("--island", default="build/qevo-island")
    ap.add_argument("--out", default="runs/scaling")
    ap.add_argument("--latency-us", type=float, default=2.0,
                    help="assumed network latency for the projection (InfiniBand-class)")
    ap.add_argument("--bandwidth-gbs", type=float, default=10.0,
                    help="assumed network bandwidth for the projection, GB/s")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with open(args.config) as f:
        cfg = json.load(f)
    fitness = cfg.get("data", {}).get("fitness_size", 4096)
    population = cfg.get("evolution", {}).get("population", 4)
    offspring = cfg.get("evolution", {}).get("offspring", 8)
    rows = []
    for ranks in args.ranks:
        rows.append(run_one(args, "strong", ranks, max(1, args.population_total // ranks),
                            max(1, args.offspring_total // ranks), fitness))
    for ranks in args.ranks:
        rows.append(run_one(args, "weak", ranks, population, offspring, fitness * ranks))
    path = os.path.join(args.out, "scaling.csv")
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(path + ".tmp", path)
    plot(rows, args.out)
    print(f"wrote {path}, speedup.png, efficiency.png, time_breakdown.png in {args.out}")
    proj = projection(rows, args)
    if proj:
        print(f"\nprojected seconds per generation (weak scaling; compute and validation "
              f"measured here, network assumed: {args.latency_us} us, "
              f"{args.bandwidth_gbs} GB/s):")
        print(f"{'ranks':>6} {'compute':>9} {'migration':>10} {'validation':>11} {'total':>8} "
              f"{'efficiency':>11}")
        for n, c, m, v, t, e in proj:
            print(f"{n:>6} {c:9.4f} {m:10.6f} {v:11.4f} {t:8.4f} {e:11.1%}")


if __name__ == "__main__":
    main()
