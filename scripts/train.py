#!/usr/bin/python3
"""Train one of the reference models on Fashion-MNIST and export it in qevo's format.

    /usr/bin/python3 scripts/train.py --model vgg --out examples/models/vgg.safetensors

Training uses the train split only (random crop with 2-pixel padding and horizontal
flips for the classifiers); the test split is read once, at the end, to report accuracy.
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmnist  # noqa: E402
import models  # noqa: E402

DEFAULT_EPOCHS = {"vgg": 20, "resnet20": 6, "autoencoder": 4}


def augment(x, rng):
    """Random crop (pad 2) and horizontal flip on a float batch (N,C,H,W)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (2, 2, 2, 2), mode="constant", value=float(x.min()))
    dy = rng.integers(0, 5, n)
    dx = rng.integers(0, 5, n)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    flip = torch.from_numpy(rng.random(n) < 0.5)
    out[flip] = out[flip].flip(3)
    return out


def evaluate(model, x, y, task, batch=1000):
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model(x[i:i + batch])
            if task == "classify":
                total += (out.argmax(1) == y[i:i + batch]).sum().item()
            else:
                total += F.mse_loss(out, x[i:i + batch], reduction="sum").item()
    return total / len(x) if task == "classify" else total / x.numel()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, choices=sorted(DEFAULT_EPOCHS))
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", help="qevo model file (.safetensors) to write")
    ap.add_argument("--save-state", help="also save the torch state_dict here")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    task = "reconstruct" if args.model == "autoencoder" else "classify"
    mean, std = (0.0, 1.0) if task == "reconstruct" else (fmnist.MEAN, fmnist.STD)

    xtr_u8, ytr = fmnist.load("train")
    xte_u8, yte = fmnist.load("test")
    xtr, xte = fmnist.to_float(xtr_u8, mean, std), fmnist.to_float(xte_u8, mean, std)
    ytr, yte = torch.from_numpy(ytr), torch.from_numpy(yte)

    model = models.build(args.model)
    epochs = args.epochs or DEFAULT_EPOCHS[args.model]
    steps = epochs * math.ceil(len(xtr) / args.batch)
    if task == "classify":
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                              weight_decay=5e-4, nesterov=True)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"],
                                                total_steps=steps)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.from_numpy(rng.permutation(len(xtr)))
        loss_sum = 0.0
        for i in range(0, len(xtr), args.batch):
            idx = perm[i:i + args.batch]
            xb = xtr[idx]
            if task == "classify":
                xb = augment(xb, rng)
                loss = F.cross_entropy(model(xb), ytr[idx])
            else:
                loss = F.mse_loss(model(xb), xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}  loss {loss_sum / len(xtr):.4f}  "
              f"{time.time() - t0:.0f} s", flush=True)

    model.eval()
    score = evaluate(model, xte, yte, task)
    label = "test accuracy" if task == "classify" else "test MSE"
    print(f"{args.model}: {label} {score:.4f} (10,000 test images)", flush=True)
    if args.save_state:
        torch.save(model.state_dict(), args.save_state)
    if args.out:
        import qevo_export
        qevo_export.export(model, (1, 28, 28), args.out, mean=[mean], std=[std], task=task,
                           description=f"{args.model} trained by scripts/train.py "
                                       f"--model {args.model} --epochs {epochs} "
                                       f"--seed {args.seed}")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
