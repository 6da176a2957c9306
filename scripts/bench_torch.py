#!/usr/bin/python3
"""PyTorch's forward throughput on qevo model files, for bench/run.sh.

Each model runs as PyTorch would run it for a user: eager mode (the module rebuilt by
qevo_export.load, batch-norm unfolded) and TorchScript-frozen (torch.jit.freeze folds
batch-norm and lets oneDNN fuse), both with the same thread count as qevo.
Prints one JSON object per line.

    /usr/bin/python3 scripts/bench_torch.py [--batch 256] [--seconds 3] MODEL...
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qevo_export  # noqa: E402


def images_per_s(fn, x, seconds):
    fn(x)  # warm-up (and oneDNN's first-call kernel generation)
    fn(x)
    calls, t0 = 0, time.perf_counter()
    while True:
        fn(x)
        calls += 1
        t = time.perf_counter() - t0
        if t >= seconds and calls >= 3:
            return len(x) * calls / t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("models", nargs="+")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for path in args.models:
        module = qevo_export.load(path).eval()
        x = torch.randn((args.batch,) + tuple(module.input_shape))
        with torch.no_grad():
            eager = images_per_s(module, x, args.seconds)
            frozen_module = torch.jit.freeze(torch.jit.trace(module, x, check_trace=False))
            frozen = images_per_s(frozen_module, x, args.seconds)
        print(json.dumps({"what": "torch", "model": path, "batch": args.batch,
                          "threads": args.threads, "eager_images_per_s": round(eager, 1),
                          "frozen_images_per_s": round(frozen, 1)}), flush=True)


if __name__ == "__main__":
    main()
