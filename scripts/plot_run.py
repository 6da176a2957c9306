#!/usr/bin/python3
"""Convergence plots of a qevo-island run from its log.jsonl.

    /usr/bin/python3 scripts/plot_run.py runs/vgg-3bit [--out runs/vgg-3bit/convergence.png]

Draws, against generations and against wall time: the global validation score (the
best state chosen so far) and each island's best and mean fitness on its own shard.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_log(path):
    reports = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"plot_run: {path}:{n}: not JSON ({e})")
            if rec.get("type") == "report":
                reports.append(rec)
    if not reports:
        sys.exit(f"plot_run: {path}: no report records")
    return reports


def fitness_name(run_dir):
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            return json.load(f)["fitness"]["kind"]
    except (OSError, ValueError, KeyError):
        return "fitness"


def plot(reports, kind, out):
    gens = [r["generation"] for r in reports]
    secs = [r["elapsed"] for r in reports]
    n_islands = len(reports[0]["islands"])
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharey="row")
    for col, (x, label) in enumerate(((gens, "generation"), (secs, "wall time (s)"))):
        ax = axes[0][col]
        ax.plot(x, [r["validation"]["global_best"] for r in reports], "k-", lw=2,
                label="global best (validation)")
        for i in range(n_islands):
            ax.plot(x, [r["validation"]["islands"][i] for r in reports], lw=0.8, alpha=0.7,
                    label=f"island {i} best (validation)" if n_islands <= 8 else None)
        ax.set_ylabel(f"validation {kind}")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax = axes[1][col]
        for i in range(n_islands):
            line, = ax.plot(x, [r["islands"][i]["best"] for r in reports], lw=1,
                            label=f"island {i}" if n_islands <= 8 else None)
            ax.plot(x, [r["islands"][i]["mean"] for r in reports], lw=0.8, ls="--",
                    color=line.get_color())
        ax.set_ylabel(f"shard {kind} (best solid, mean dashed)")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    axes[1][0].legend(fontsize=7)
    fig.suptitle(f"qevo-island: {n_islands} island{'s' if n_islands > 1 else ''}")
    fig.tight_layout()
    tmp = out + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="output folder of a qevo-island run (holds log.jsonl)")
    ap.add_argument("--out", help="PNG to write (default RUN_DIR/convergence.png)")
    args = ap.parse_args()
    log = os.path.join(args.run_dir, "log.jsonl")
    if not os.path.exists(log):
        sys.exit(f"plot_run: {log}: no such file")
    out = args.out or os.path.join(args.run_dir, "convergence.png")
    plot(read_log(log), fitness_name(args.run_dir), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
