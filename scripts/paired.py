#!/usr/bin/python3
"""Paired test-split comparison of two qevo model files on Fashion-MNIST's test split.

    /usr/bin/python3 scripts/paired.py A.safetensors B.safetensors [--build build] [--json]

Runs `qevo eval --dump-outputs` on both models (the weights as stored: quantized files
carry their dequantized weights) and compares them image by image:
- classifiers: images only A gets right / only B gets right, McNemar's chi2 with
  continuity correction and its p-value (the same formula as qevo-island's result.json);
- autoencoders: the mean per-image MSE difference A - B and its paired t statistic.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmnist  # noqa: E402


def outputs(build, model, tmp, tag):
    path = os.path.join(tmp, f"{tag}.npy")
    subprocess.run([f"{build}/qevo", "eval", model, "--data", "fashion-mnist:test",
                    "--dump-outputs", path], check=True, capture_output=True, text=True)
    return np.load(path)


def compare(a_out, b_out, images, labels):
    """The paired statistics of outputs a_out and b_out (N, ...) on the test images."""
    n = len(labels)
    if a_out.reshape(n, -1).shape[1] != images[0].size:  # not an image: class logits
        ra, rb = a_out.argmax(1) == labels, b_out.argmax(1) == labels
        only_a, only_b = int((ra & ~rb).sum()), int((rb & ~ra).sum())
        disc = only_a + only_b
        chi2 = (abs(only_a - only_b) - 1.0) ** 2 / disc if disc else 0.0
        return {"images": n, "accuracy_a": float(ra.mean()), "accuracy_b": float(rb.mean()),
                "only_a_right": only_a, "only_b_right": only_b, "mcnemar_chi2": chi2,
                "p_value": math.erfc(math.sqrt(chi2 / 2.0))}
    target = images.reshape(n, -1).astype(np.float64) / 255.0
    ea = ((a_out.reshape(n, -1) - target) ** 2).mean(1)
    eb = ((b_out.reshape(n, -1) - target) ** 2).mean(1)
    d = ea - eb
    sd = d.std(ddof=1)
    return {"images": n, "mse_a": float(ea.mean()), "mse_b": float(eb.mean()),
            "mean_difference": float(d.mean()),
            "paired_t": float(d.mean() / (sd / math.sqrt(n))) if sd > 0 else 0.0,
            "a_better_images": int((d < 0).sum())}


def paired(a, b, build="build"):
    images, labels = fmnist.load("test")
    with tempfile.TemporaryDirectory(prefix="qevo-paired-") as tmp:
        return compare(outputs(build, a, tmp, "a"), outputs(build, b, tmp, "b"), images,
                       labels)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--build", default="build")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        r = paired(args.a, args.b, args.build)
    except subprocess.CalledProcessError as e:
        print(f"paired.py: {' '.join(e.cmd)} failed: {e.stderr.strip()}", file=sys.stderr)
        return 1
    print(json.dumps(r, indent=1) if args.json else
          "  ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
