#!/usr/bin/python3
"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training
Quantization") on qevo's quantizer: a gradient-based reference to compare qevo with.

    /usr/bin/python3 scripts/adaround.py --model FLOAT.safetensors --bits 3 \\
        [--per-tensor] [--first-bits 8] [--last-bits 8] \\
        [--grid symmetric|asymmetric] [--scales max|mse] \\
        (--calibration SPLITS.json | --calibration-size N [--seed S]) \\
        [--data fashion-mnist:train] [--iterations 2000] [--batch 32] \\
        [--reg-weight 0.01] [--beta-start 20] [--beta-end 2] [--warmup 0.2] \\
        [--lr 1e-3] [--threads 2] --out ADAROUND.safetensors

The quantizer is exactly qevo's (docs/FORMAT.md, as implemented by qevo_ref.py): the same
batch-norm folding, the same per-channel / per-tensor scales, grid (--grid: symmetric,
codes in [-qmax, qmax], or asymmetric, all 2^b codes [lo, lo + 2^b - 1] with a zero point
per group), scale search (--scales: max or mse) and first/last layer bits. AdaRound keeps
the scales and code ranges and learns, per weight, whether to round down or up:
code = clip(floor(W/s) + h, lo, hi), h in {0, 1}, with [lo, hi] the weight's group's
range ([-qmax, qmax] on the symmetric grid). A weight whose W/s is an exact integer has
no up/down choice (floor = ceil) and keeps h = 0.

Per quantized layer, in graph order (the paper's sequential variant with asymmetric
reconstruction, quantized input x~ against the float target; unrelated to --grid):

    h(V)  = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1),  zeta = 1.1, gamma = -0.1
    W~    = s * clip(floor(W/s) + h(V), lo, hi)
    loss  = || f_a(W x) - f_a(W~ x~) ||^2 + reg_weight * sum(1 - |2 h(V) - 1|^beta)

x is the layer's input in the float model, x~ its input in the quantized model (earlier
layers already AdaRounded), f_a the relu/sigmoid that directly follows the layer (if
any). V starts where h(V) equals the fractional part of W/s; Adam optimises V alone;
beta decays linearly from --beta-start to --beta-end after a warm-up (--warmup, a share
of the iterations) during which the regulariser is off. Finally h = [V >= 0].
The reconstruction term is the squared error summed over output channels and averaged
over images and positions (BRECQ's reference implementation, lp_loss: sum over dim 1,
mean over the rest; the scaling its reg-weight 0.01 goes with); --rec-loss mean uses the
plain mean, which weakens the reconstruction term by the number of output channels.

Each layer's calibration data is computed once, in batches of 256 images, and held in
memory: its input in the quantized model and its float target f_a(W x) (for VGG's second
conv and 2048 images, 2 x 205 MB). The iterations draw batches from that cache.

Calibration images: --calibration SPLITS.json (written by qevo-island) uses the union of
its "fitness" lists, in order: the images qevo's islands score on. --calibration-size N
uses the first N of numpy.random.default_rng(seed).permutation(train size): NOT the same
images as a qevo run. Only the training split is read; the test split never is.

Writes a quantized model file exactly as qevo does (FORMAT.md): folded graph,
L.weight = codes * scales, L.bias, L.scales, L.codes, L.code_min (asymmetric grid only),
qevo.quant (with its grid and scales), qevo.description. qevo-island takes it as a
`start` with the same quantizer settings.
"""
import argparse
import json
import os
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmnist  # noqa: E402
import qevo_export as qx  # noqa: E402
import qevo_ref as qr  # noqa: E402

ZETA, GAMMA = 1.1, -0.1
CHUNK = 256  # images per forward pass when filling the caches


class AdaRoundError(ValueError):
    """Bad arguments or input files (reported without a traceback)."""


# ----------------------------------------------------------------- arguments and data

def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="AdaRound (Nagel et al. 2020) with qevo's quantizer; writes a qevo "
                    "quantized model file.")
    ap.add_argument("--model", required=True, help="float model (.safetensors)")
    ap.add_argument("--bits", type=int, required=True, help="bits per weight, 2..8")
    ap.add_argument("--per-tensor", action="store_true",
                    help="one scale per layer (default: per output channel)")
    ap.add_argument("--first-bits", type=int, help="bits of the first conv/linear layer")
    ap.add_argument("--last-bits", type=int, help="bits of the last conv/linear layer")
    ap.add_argument("--grid", choices=qr.GRIDS, default="symmetric",
                    help="code grid: symmetric (default, codes in [-qmax, qmax]) or "
                         "asymmetric (all 2^b codes, a zero point per group)")
    ap.add_argument("--scales", choices=qr.SCALE_SEARCHES, default="max",
                    help="scale search: max (default, clipping ratio 1) or mse (the "
                         "clipping ratio of 100 with the smallest weight error)")
    cal = ap.add_mutually_exclusive_group(required=True)
    cal.add_argument("--calibration", metavar="SPLITS.json",
                     help="qevo-island's splits file: the union of its fitness lists")
    cal.add_argument("--calibration-size", type=int, metavar="N",
                     help="N training images drawn with --seed (not a qevo run's images)")
    ap.add_argument("--seed", type=int, default=0,
                    help="image draw of --calibration-size and the batch draws (default 0)")
    ap.add_argument("--data", help="training data: fashion-mnist:train (default, or the "
                    "dataset named by SPLITS.json) or IMAGES.idx[.gz],LABELS.idx[.gz]")
    ap.add_argument("--iterations", type=int, default=2000, help="per layer (default 2000)")
    ap.add_argument("--batch", type=int, default=32, help="images per iteration (32)")
    ap.add_argument("--reg-weight", type=float, default=0.01, help="lambda (0.01)")
    ap.add_argument("--beta-start", type=float, default=20.0)
    ap.add_argument("--beta-end", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=0.2,
                    help="share of the iterations without regulariser (0.2)")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (1e-3)")
    ap.add_argument("--rec-loss", choices=("channel-sum", "mean"), default="channel-sum",
                    help="reconstruction term: squared error summed over output channels "
                         "and averaged over images and positions (default, as BRECQ's "
                         "AdaRound code), or the plain mean")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    ap.add_argument("--out", required=True, help="quantized model file to write")
    args = ap.parse_args(argv)
    for key in ("bits", "first_bits", "last_bits"):
        v = getattr(args, key)
        if v is not None and not 2 <= v <= 8:
            ap.error(f"--{key.replace('_', '-')} must be in 2..8, got {v}")
    if args.calibration_size is not None and args.calibration_size < 1:
        ap.error("--calibration-size must be >= 1")
    if args.iterations < 1 or args.batch < 1 or args.threads < 1:
        ap.error("--iterations, --batch and --threads must be >= 1")
    if not 0 <= args.warmup < 1:
        ap.error("--warmup must be in [0, 1)")
    if args.lr <= 0 or args.reg_weight < 0 or args.beta_start <= 0 or args.beta_end <= 0:
        ap.error("--lr, --beta-start and --beta-end must be > 0, --reg-weight >= 0")
    return args


def load_training_data(spec):
    """(images uint8 (N, C, H, W), labels int64 (N,) or None) of a training dataset."""
    if spec == "fashion-mnist:train":
        return fmnist.load("train")
    if spec.startswith("fashion-mnist:"):
        raise AdaRoundError(f"--data {spec}: only fashion-mnist:train may be used for "
                            f"calibration (the test split never takes part in a choice)")
    parts = spec.split(",")
    if len(parts) > 2 or not all(parts):
        raise AdaRoundError(f"--data {spec!r}: expected fashion-mnist:train or "
                            f"IMAGES.idx[.gz][,LABELS.idx[.gz]]")
    try:
        images = fmnist.read_idx(parts[0])
        labels = fmnist.read_idx(parts[1]).astype(np.int64) if len(parts) == 2 else None
    except (OSError, ValueError, KeyError) as e:
        raise AdaRoundError(f"--data {spec}: {e}") from None
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or (labels is not None and labels.shape != (images.shape[0],)):
        raise AdaRoundError(f"--data {spec}: images {images.shape} / labels "
                            f"{None if labels is None else labels.shape} do not match")
    return images, labels


def read_splits(path):
    """(dataset name or None, calibration indices): the union of the fitness lists."""
    try:
        with open(path) as f:
            splits = json.load(f)
    except (OSError, ValueError) as e:
        raise AdaRoundError(f"--calibration {path}: {e}") from None
    fitness = splits.get("fitness") if isinstance(splits, dict) else None
    if not (isinstance(fitness, list) and fitness and all(
            isinstance(shard, list) and all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in shard)
            for shard in fitness)):
        raise AdaRoundError(f"--calibration {path}: 'fitness' must be a non-empty list of "
                            f"lists of image indices (one per island)")
    seen, indices = set(), []
    for shard in fitness:
        for i in shard:
            if i not in seen:
                seen.add(i)
                indices.append(i)
    if not indices:
        raise AdaRoundError(f"--calibration {path}: the fitness lists are empty")
    dataset = splits.get("dataset")
    if dataset is not None and not isinstance(dataset, str):
        raise AdaRoundError(f"--calibration {path}: 'dataset' must be a string")
    return dataset, np.array(indices, dtype=np.int64)


def calibration_set(args):
    """(dataset spec, indices, images uint8, labels or None, description)."""
    if args.calibration:
        dataset, indices = read_splits(args.calibration)
        spec = args.data or dataset or "fashion-mnist:train"
        if dataset is not None and args.data is not None and args.data != dataset:
            raise AdaRoundError(f"--data {args.data} but {args.calibration} was drawn from "
                                f"{dataset}")
        how = f"fitness lists of {args.calibration}"
    else:
        spec = args.data or "fashion-mnist:train"
        indices = None
        how = f"seed {args.seed}; not the images of a qevo run"
    images, labels = load_training_data(spec)
    n = images.shape[0]
    if indices is None:
        if args.calibration_size > n:
            raise AdaRoundError(f"--calibration-size {args.calibration_size} but {spec} "
                                f"holds {n} images")
        indices = np.random.default_rng(args.seed).permutation(n)[:args.calibration_size]
    elif indices.max() >= n:
        raise AdaRoundError(f"{args.calibration}: index {int(indices.max())} but {spec} "
                            f"holds {n} images")
    return (spec, indices, images[indices], None if labels is None else labels[indices],
            f"{len(indices)} images of {spec} ({how})")


def normalise(images_u8, mean, std):
    """uint8 (N, C, H, W) -> float32 (pixel / 255 - mean[c]) / std[c], as qevo does."""
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).float() / 255.0
    c = x.shape[1]
    m = torch.tensor(mean, dtype=torch.float32).reshape(1, c, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).reshape(1, c, 1, 1)
    return (x - m) / s


# ----------------------------------------------------------------- graph helpers

def layer_input(module, index, x):
    """The input of layer `index` of a QevoModule for the normalised batch x."""
    sources = module.sources
    last = {}
    for j in range(index + 1):
        for s in sources[j]:
            last[s] = j
    env = {"input": x}
    for j in range(index):
        env[module.names[j]] = module.layers[j](*[env[s] for s in sources[j]])
        for s in set(sources[j]):
            if last.get(s, -1) <= j:
                del env[s]
    return env[sources[index][0]]


def activation_after(graph, name):
    """The relu/sigmoid that directly follows layer `name` (its only consumer), or None."""
    users = [l for l in graph["layers"] if name in l["inputs"]]
    if name != graph["output"] and len(users) == 1 and users[0]["op"] in ("relu", "sigmoid"):
        return users[0]["op"]
    return None


def as_op_input(layer, x):
    """The layer input in the shape its op takes (qevo views a flat tensor as (F, 1, 1))."""
    if layer["op"] == "linear":
        return x.flatten(1)
    return x if x.dim() == 4 else x.reshape(x.shape[0], -1, 1, 1)


def run_layer(layer, x, weight, bias, act):
    """f_a(layer(x)) with the given weight; x already in as_op_input's shape."""
    op = layer["op"]
    if op == "conv2d":
        y = F.conv2d(x, weight, bias, tuple(layer["stride"]), tuple(layer["padding"]))
    elif op == "convtranspose2d":
        y = F.conv_transpose2d(x, weight, bias, tuple(layer["stride"]),
                               tuple(layer["padding"]), tuple(layer["output_padding"]))
    else:
        y = F.linear(x, weight, bias)
    if act == "relu":
        y = F.relu(y)
    elif act == "sigmoid":
        y = torch.sigmoid(y)
    return y


def set_weight(module, index, weight):
    """Replaces the weight of quantized layer `index` of a QevoModule."""
    m = module.layers[index]
    inner = m.inner if hasattr(m, "inner") else m.linear
    with torch.no_grad():
        inner.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))


def rectified_sigmoid(v):
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def inverse_rectified_sigmoid(h):
    """V with rectified_sigmoid(V) = h for h in [0, 1)."""
    return -np.log((ZETA - GAMMA) / (h - GAMMA) - 1.0)


def beta_at(t, args):
    """None during the warm-up (no regulariser), else the linearly decayed beta."""
    warm = args.warmup * args.iterations
    if t < warm:
        return None
    rel = (t - warm) / max(args.iterations - warm, 1e-12)
    return args.beta_end + (args.beta_start - args.beta_end) * max(0.0, 1.0 - rel)


def rec_loss(y, target, kind):
    d = (y - target) ** 2
    return d.mean() if kind == "mean" else d.sum(1).mean()


def full_mse(layer, xq, target, weight, bias, act):
    """Plain mean squared error of the layer output over the whole cached set."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, xq.shape[0], CHUNK):
            y = run_layer(layer, xq[i:i + CHUNK], weight, bias, act)
            total += ((y - target[i:i + CHUNK]) ** 2).sum().item()
    return total / target.numel()


# ----------------------------------------------------------------- AdaRound, one layer

def fill_caches(float_module, quant_module, index, layer, x_all, w_float, bias, act):
    """(quantized-model input x~, float target f_a(W x)) of layer `index` for every image."""
    xq, target = None, None
    with torch.no_grad():
        for i in range(0, x_all.shape[0], CHUNK):
            xb = x_all[i:i + CHUNK]
            xf = as_op_input(layer, layer_input(float_module, index, xb))
            t = run_layer(layer, xf, w_float, bias, act)
            q = as_op_input(layer, layer_input(quant_module, index, xb))
            if xq is None:
                xq = torch.empty((x_all.shape[0],) + tuple(q.shape[1:]))
                target = torch.empty((x_all.shape[0],) + tuple(t.shape[1:]))
            xq[i:i + len(xb)], target[i:i + len(xb)] = q, t
    return xq, target


def per_weight(values, shape, axis):
    """A per-group array ((C,) or (1,)) broadcast to the weight's shape along axis."""
    v = values.reshape(qr._channel_shape(len(shape), axis)) if values.shape != (1,) \
        else values.reshape(())
    return np.ascontiguousarray(np.broadcast_to(v, shape))


def adaround_layer(layer, w, scales, code_min, bits, grid, xq, target, bias, act, args,
                   seed):
    """Learns the rounding of one layer; returns (codes int8, final loss parts).

    code_min: each group's smallest code lo ((C,) or (1,)); its range is [lo, hi] with
    hi = lo + 2^bits - 1 on the asymmetric grid, hi = -lo = qmax on the symmetric one."""
    axis = qr.out_axis(layer["op"])
    s_np = per_weight(scales, w.shape, axis)
    ws = (w / s_np).astype(np.float32)  # the same float32 division as qr.quantize
    floor = np.floor(ws)
    rest = ws - floor
    choice = rest > 0  # an exact integer has no up/down choice
    width = 2 ** bits - 1 if grid == "asymmetric" else 2 ** bits - 2
    lo = per_weight(code_min.astype(np.float32), w.shape, axis)
    hi = lo + np.float32(width)

    s_t = torch.from_numpy(s_np)
    lo_t, hi_t = torch.from_numpy(lo), torch.from_numpy(hi)
    floor_t = torch.from_numpy(floor)
    mask_t = torch.from_numpy(choice.astype(np.float32))
    v = torch.nn.Parameter(torch.from_numpy(
        inverse_rectified_sigmoid(np.where(choice, rest, 0.0)).astype(np.float32)))
    opt = torch.optim.Adam([v], lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    n = xq.shape[0]
    batch = min(args.batch, n)
    rec = reg = torch.tensor(0.0)
    for t in range(args.iterations):
        idx = torch.randperm(n, generator=gen)[:batch]
        h = rectified_sigmoid(v) * mask_t
        w_soft = s_t * torch.minimum(torch.maximum(floor_t + h, lo_t), hi_t)
        y = run_layer(layer, xq[idx], w_soft, bias, act)
        rec = rec_loss(y, target[idx], args.rec_loss)
        beta = beta_at(t, args)
        if beta is None:
            loss = rec
            reg = torch.tensor(0.0)
        else:
            reg = (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()
            loss = rec + args.reg_weight * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        h_soft = rectified_sigmoid(v) * mask_t
        undecided = ((h_soft > 0) & (h_soft < 1)).float().sum().item() / max(
            choice.sum(), 1)
    up = (v.detach().numpy() >= 0) & choice  # h(V) >= 0.5
    codes = np.clip(floor + up, lo, hi).astype(np.int8)
    return codes, {"rec": rec.item(), "reg": reg.item(), "undecided": undecided}


# ----------------------------------------------------------------- scoring and output

def score(module, x, images_u8, labels, task):
    """{name: value} of a model on the calibration images (cross-entropy and accuracy of
    a classifier, MSE against the un-normalised image in [0, 1] of an autoencoder)."""
    if task == "classify" and labels is None:
        return {}
    total_ce, correct, sq = 0.0, 0, 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], CHUNK):
            y = module(x[i:i + CHUNK])
            if task == "classify":
                lb = torch.from_numpy(labels[i:i + CHUNK])
                total_ce += F.cross_entropy(y, lb, reduction="sum").item()
                correct += (y.argmax(1) == lb).sum().item()
            else:
                ref = torch.from_numpy(images_u8[i:i + CHUNK]).float() / 255.0
                sq += ((y.reshape(ref.shape) - ref) ** 2).sum().item()
    n = x.shape[0]
    if task == "classify":
        return {"cross-entropy": total_ce / n, "accuracy": correct / n}
    return {"mse": sq / (n * int(np.prod(images_u8.shape[1:])))}


def write_output(path, graph, tensors, quant, args, description):
    """A quantized file laid out as qevo's quant_save writes it (floats first, codes last)."""
    floats = {k: v for k, v in tensors.items() if v.dtype == np.float32}
    codes = {k: v for k, v in tensors.items() if v.dtype != np.float32}
    meta = {"version": 1, "granularity": quant["granularity"], "grid": quant["grid"],
            "scales": quant["scales"], "bits": quant["bits"],
            "first_bits": args.first_bits or 0, "last_bits": args.last_bits or 0,
            "layers": quant["layers"]}
    qx.write_safetensors(path, dict(floats, **codes), {
        "qevo.graph": json.dumps(qx.compact_graph(graph)),
        "qevo.quant": json.dumps(meta),
        "qevo.description": description})


def run(argv=None):
    """Runs AdaRound; returns a dict (indices, per-layer results, scores) for tests."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    per_channel = not args.per_tensor

    src_tensors, metadata = qx.read_safetensors(args.model)
    float_graph, float_tensors = qr.fold_model(qx.parse_graph(metadata), src_tensors)
    float_module = qx.build_module(float_graph, float_tensors, metadata)
    qgraph, qtensors, quant = qr.quantized_model(args.model, args.bits, per_channel,
                                                 args.first_bits, args.last_bits,
                                                 grid=args.grid, scales=args.scales)
    quant_module = qx.build_module(qgraph, qtensors)
    nearest_module = qx.build_module(qgraph, qtensors)
    mean, std = float_module.mean, float_module.std

    spec, indices, images, labels, cal_desc = calibration_set(args)
    if tuple(images.shape[1:]) != float_module.input_shape:
        raise AdaRoundError(f"{spec} has images of {tuple(images.shape[1:])}, but "
                            f"{args.model} expects {float_module.input_shape}")
    x_all = normalise(images, mean, std)
    print(f"adaround: {args.model}, {args.bits} bits "
          f"{'per channel' if per_channel else 'per tensor'}, {args.grid} grid, "
          f"{args.scales} scales"
          f"{f', first {args.first_bits}' if args.first_bits else ''}"
          f"{f', last {args.last_bits}' if args.last_bits else ''}; calibration: "
          f"{cal_desc}; {args.iterations} iterations of batch {args.batch} per layer",
          flush=True)
    width = max([len("layer")] + [len(n) for n in quant["layers"]])
    print(f"{'layer':<{width}} {'bits':>4} {'iters':>6} {'mse nearest':>12} "
          f"{'mse adaround':>12} {'changed':>8} {'soft':>6} {'seconds':>8}", flush=True)

    layers = []
    for index, layer in enumerate(qgraph["layers"]):
        name = layer["name"]
        if name not in quant["layers"]:
            continue
        t0 = time.time()
        bits = quant["layers"][name]["bits"]
        flayer = float_graph["layers"][index]
        assert flayer["name"] == name
        w = qx.layer_tensor(flayer, "weight", float_tensors)
        b_np = qx.layer_tensor(flayer, "bias", float_tensors)
        bias = None if b_np is None else torch.from_numpy(b_np.copy())
        axis = qr.out_axis(layer["op"])
        scales = qtensors[f"{name}.scales"]
        nearest = qtensors[f"{name}.codes"]
        qmax = 2 ** (bits - 1) - 1
        code_min = qtensors.get(f"{name}.code_min",
                                np.full(scales.shape, -qmax, dtype=np.int8))
        act = activation_after(qgraph, name)
        xq, target = fill_caches(float_module, quant_module, index, layer, x_all,
                                 torch.from_numpy(w.copy()), bias, act)
        codes, parts = adaround_layer(layer, w, scales, code_min, bits, args.grid, xq,
                                      target, bias, act, args, args.seed * 1000003 + index)
        w_near = qr.dequantize(nearest, scales, axis)
        w_ada = qr.dequantize(codes, scales, axis)
        mse_near = full_mse(layer, xq, target, torch.from_numpy(w_near), bias, act)
        mse_ada = full_mse(layer, xq, target, torch.from_numpy(w_ada), bias, act)
        changed = float(np.mean(codes != nearest))
        qtensors[f"{name}.codes"] = codes
        qtensors[f"{name}.weight"] = w_ada
        set_weight(quant_module, index, w_ada)
        del xq, target
        secs = time.time() - t0
        layers.append({"name": name, "bits": bits, "iterations": args.iterations,
                       "mse_nearest": mse_near, "mse_adaround": mse_ada,
                       "changed": changed, "seconds": secs, "activation": act, **parts})
        print(f"{name:<{width}} {bits:>4} {args.iterations:>6} {mse_near:>12.6g} "
              f"{mse_ada:>12.6g} {changed:>8.2%} {parts['undecided']:>6.1%} {secs:>8.1f}",
              flush=True)

    description = ("AdaRound (scripts/adaround.py "
                   f"{' '.join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))})")
    write_output(args.out, qgraph, qtensors, quant, args, description)
    ada_wall = time.time() - t_start
    print(f"wrote {args.out} ({ada_wall:.1f} s)", flush=True)

    task = float_module.task
    scores = {}
    for label, module in (("float", float_module), ("nearest", nearest_module),
                          ("adaround", quant_module)):
        scores[label] = score(module, x_all, images, labels, task)
        print(f"calibration set ({len(indices)} images) {label:<9} " + ("  ".join(
            f"{k} {v:.4f}" for k, v in scores[label].items()) or "(no labels)"), flush=True)
    wall = time.time() - t_start
    print(f"total wall time {wall:.1f} s", flush=True)
    return {"indices": indices, "layers": layers, "scores": scores, "wall": wall,
            "dataset": spec}


def main(argv=None):
    try:
        run(argv)
    except (OSError, AdaRoundError, qx.FormatError, qr.FoldError) as e:
        print(f"adaround: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
