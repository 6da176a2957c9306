#!/usr/bin/python3
"""Reference batch-norm folding and weight quantizer for qevo, independent of the C code.

Everything is computed with numpy float32 arithmetic, one IEEE float32 operation at a
time in the order docs/FORMAT.md gives, so results are bit-exact references for qevo.
Every quantizer takes grid ("symmetric": codes in [-qmax, qmax], the default; or
"asymmetric": all 2^bits codes [lo, lo + 2^bits - 1] with a zero point -lo per group)
and scales (the scale search: "max", clipping ratio 1, the default; or "mse", the first
of the ratios 1.00 .. 0.01 with the smallest squared weight error, summed sequentially in
float64). A group is an output channel (per channel) or the whole weight (per tensor).

    fold_graph(graph, tensors)           -> (folded layers, tensors)
    quantize_grid(weight, bits, per_channel, axis, grid, scales)
                                         -> (codes int8, scales float32, code_min int8)
    quantize(weight, bits, per_channel, axis, grid, scales) -> (codes, scales)
    quantize_model(path, bits, per_channel, first_bits, last_bits, grid=, scales=)
                                         -> {layer: (codes, scales, dequantized)}
    quantized_model(path, ...)           -> (graph, tensors, quant) as qevo writes them
                                            (L.code_min tensors with the asymmetric grid)
    write_quantized(src, dst, ...)       writes that quantized model file
    build_quantized_module(path, ...)    -> torch module with the dequantized weights
    check_quantized_file(path, float_path=None) -> list of problems (empty when exact);
                                            grid and scales are read from the file

Command line:
    qevo_ref.py quantize SRC DST --bits 4 [--per-tensor] [--first-bits 8] [--last-bits 8]
                [--grid symmetric|asymmetric] [--scales max|mse]
    qevo_ref.py check QUANTIZED [--float SRC]
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qevo_export as qx  # noqa: E402

QUANTIZED_OPS = ("conv2d", "convtranspose2d", "linear")
FOLDABLE_OPS = ("conv2d", "convtranspose2d")


class FoldError(ValueError):
    """A batchnorm that cannot be folded into the conv before it."""


def out_axis(op):
    """The output-channel axis of a weight: 1 for convtranspose2d, else 0."""
    return 1 if op == "convtranspose2d" else 0


def _channel_shape(ndim, axis):
    shape = [1] * ndim
    shape[axis] = -1
    return shape


# ----------------------------------------------------------------- folding

def _use_counts(layers, output):
    count = {}
    for layer in layers:
        for src in layer["inputs"]:
            count[src] = count.get(src, 0) + 1
    count[output] = count.get(output, 0) + 1
    return count


def fold_batchnorm(conv_op, weight, bias, gamma, beta, mean, var, eps):
    """Folds one batchnorm into its conv's weight and bias (FORMAT.md, float32).

    k = gamma / sqrt(var + float32(eps)); W' = W * k (output channel axis);
    b' = beta + (b - mean) * k with b = 0 when the conv has no bias.
    """
    f32 = np.float32
    k = gamma.astype(f32) / np.sqrt(var.astype(f32) + f32(eps))
    w = weight.astype(f32) * k.reshape(_channel_shape(weight.ndim, out_axis(conv_op)))
    b = np.zeros_like(k) if bias is None else bias.astype(f32)
    return w, beta.astype(f32) + (b - mean.astype(f32)) * k


def _fold_one(bn, conv, tensors, layers):
    """Folds batchnorm layer bn into conv; returns the new weight and bias names."""
    w = qx.layer_tensor(conv, "weight", tensors, ndim=4)
    channels = w.shape[out_axis(conv["op"])]
    parts = [qx.layer_tensor(bn, key, tensors, ndim=1) for key in ("weight", "bias", "mean",
                                                                     "var")]
    if any(p.shape != (channels,) for p in parts):
        raise FoldError(f"batchnorm '{bn['name']}' has {[list(p.shape) for p in parts]} "
                        f"channels but conv '{conv['name']}' has {channels} outputs")
    bias = qx.layer_tensor(conv, "bias", tensors)
    if bias is not None and bias.shape != (channels,):
        raise FoldError(f"conv '{conv['name']}': bias shape {list(bias.shape)}, expected "
                        f"[{channels}]")
    new_w, new_b = fold_batchnorm(conv["op"], w, bias, *parts, bn["eps"])
    names = (f"{conv['name']}.weight", f"{conv['name']}.bias")
    for name in names:
        shared = [l["name"] for l in layers if l is not conv and name in (
            l.get("weight"), l.get("bias"), l.get("mean"), l.get("var"))]
        if shared:
            raise FoldError(f"cannot fold '{bn['name']}': tensor name '{name}' is also "
                            f"used by layer '{shared[0]}'")
    tensors[names[0]], tensors[names[1]] = new_w, new_b
    return names


def _fold(graph, tensors):
    """fold_graph's work; also returns the (possibly redirected) output name."""
    graph = qx.parse_graph({"qevo.graph": json.dumps(graph)})  # validates, explicit inputs
    layers = graph["layers"]
    tensors = dict(tensors)
    uses, by_name, renamed = _use_counts(layers, graph["output"]), {}, {}
    for layer in layers:
        by_name[layer["name"]] = layer
        if layer["op"] != "batchnorm":
            continue
        src = by_name.get(layer["inputs"][0])
        if src is None or src["op"] not in FOLDABLE_OPS:
            raise FoldError(f"batchnorm '{layer['name']}' does not follow a conv2d or "
                            f"convtranspose2d (its input is '{layer['inputs'][0]}')")
        if uses[src["name"]] != 1:
            raise FoldError(f"batchnorm '{layer['name']}': conv '{src['name']}' is also used "
                            f"elsewhere, so the batchnorm cannot be folded into it")
        src["weight"], src["bias"] = _fold_one(layer, src, tensors, layers)
        renamed[layer["name"]] = src["name"]
    folded = [l for l in layers if l["op"] != "batchnorm"]
    for layer in folded:
        layer["inputs"] = [renamed.get(s, s) for s in layer["inputs"]]
    return folded, tensors, renamed.get(graph["output"], graph["output"])


def fold_graph(graph, tensors):
    """Folds every batchnorm into the conv2d / convtranspose2d before it.

    graph: a graph dict (raw or from qevo_export.parse_graph); tensors: the file's
    numpy arrays. Returns (layers, tensors): the layers with explicit 'inputs',
    batchnorm layers removed and references to them redirected to their conv (which
    keeps its name and position; its weight and bias become the new float32 tensors
    '<conv>.weight' and '<conv>.bias'), and a new tensors dict (the argument is not
    modified). Raises FoldError for a batchnorm that does not directly follow a conv
    used by nothing else.
    """
    layers, tensors, _ = _fold(graph, tensors)
    return layers, tensors


def fold_model(graph, tensors):
    """Like fold_graph but returns (graph dict, tensors), 'output' redirected."""
    layers, tensors, output = _fold(graph, tensors)
    return dict(graph, layers=layers, output=output), tensors


# ----------------------------------------------------------------- quantizer

GRIDS = ("symmetric", "asymmetric")
SCALE_SEARCHES = ("max", "mse")
MSE_RATIOS = 100  # the mse search tries a_k = float32(100 - k) / float32(100), k = 0..99


def check_options(grid, scales):
    """Raises ValueError unless grid and scales name a FORMAT.md grid and scale search."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {', '.join(GRIDS)}; got {grid!r}")
    if scales not in SCALE_SEARCHES:
        raise ValueError(f"scales (the scale search) must be one of "
                         f"{', '.join(SCALE_SEARCHES)}; got {scales!r}")


def _check_bits(bits):
    if not (isinstance(bits, (int, np.integer)) and not isinstance(bits, bool)
            and 2 <= bits <= 8):
        raise ValueError(f"bits must be an int in [2, 8], got {bits!r}")


def zero_point_range(bits):
    """(zmin, zmax) of the asymmetric grid: the zero points whose codes fit int8."""
    levels = 2 ** int(bits) - 1
    return max(0, levels - 127), min(levels, 128)


def _groups(w, per_channel, axis):
    """The weight as (groups, weights per group) in FORMAT.md's order: the output-channel
    axis moved first, row-major; the flat weight per tensor."""
    if per_channel:
        return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    return w.reshape(1, -1)


def _grid_at(a, wmin, wmax, amax, bits, grid):
    """(scale float32, lo, hi) per group for clipping ratio a (float32), FORMAT.md.

    wmin = min(min W, 0), wmax = max(max W, 0), amax = max|W| per group (float32 arrays).
    lo and hi are float32 arrays of integers (so the clip below stays float32).
    """
    f32 = np.float32
    if grid == "symmetric":
        qmax = f32(2 ** (int(bits) - 1) - 1)
        m = (a * amax).astype(f32)             # a * m rounded to float32 first
        scale = (m / qmax).astype(f32)
        scale[scale == 0] = f32(1)             # max|W| = 0, or max/qmax underflows
        lo = np.full(scale.shape, -qmax, f32)
        return scale, lo, -lo
    levels = f32(2 ** int(bits) - 1)
    zmin, zmax = (f32(v) for v in zero_point_range(bits))
    mn = (a * wmin).astype(f32)
    mx = (a * wmax).astype(f32)
    scale = ((mx - mn).astype(f32) / levels).astype(f32)
    zero = scale == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        zf = np.rint((-mn / np.where(zero, f32(1), scale)).astype(f32))
        z = np.minimum(np.maximum(zf, zmin), zmax).astype(f32)
        clamped = (z != zf) & ~zero           # only at 8 bits, where zmin = zmax = 128
        if clamped.any():
            up = (mx / (levels - z).astype(f32)).astype(f32)
            down = (-mn / z).astype(f32)
            wide = np.where(up > down, up, down).astype(f32)
            wide[wide == 0] = f32(1)
            scale = np.where(clamped, wide, scale).astype(f32)
    scale = np.where(zero, f32(1), scale).astype(f32)
    z = np.where(zero, zmin, z).astype(f32)
    return scale, -z, (levels - z).astype(f32)


def _nearest(w, scale, lo, hi):
    """clamp(rint(W / scale), lo, hi) in float32 (a true division), as float32 codes."""
    return np.minimum(np.maximum(np.rint((w / scale).astype(np.float32)), lo), hi)


def _group_errors(groups, scale, lo, hi):
    """Squared error of each group, summed sequentially in float64 in the group's order
    (np.cumsum, not np.sum, whose pairwise summation differs from qevo's loop)."""
    codes = _nearest(groups, scale[:, None], lo[:, None], hi[:, None])
    d = groups.astype(np.float64) - codes.astype(np.float64) * scale.astype(np.float64)[:, None]
    return np.cumsum(d * d, axis=1)[:, -1]


def group_grids(groups, bits, grid="symmetric", scales="max"):
    """(scale float32, lo int, hi int), one per row of groups (G, n) float32 (each row a
    group in FORMAT.md's weight order): the grid's scale and code range, with the
    clipping ratio 1 (scales="max") or the first of the 100 ratios with the smallest
    squared error (scales="mse")."""
    _check_bits(bits)
    check_options(grid, scales)
    f32 = np.float32
    g = np.asarray(groups, dtype=f32)
    if g.ndim != 2 or g.shape[1] == 0:
        raise ValueError(f"groups must be (G, n) with n >= 1, got shape {list(g.shape)}")
    wmin, wmax = g.min(axis=1), g.max(axis=1)
    wmin = np.where(wmin < 0, wmin, f32(0)).astype(f32)
    wmax = np.where(wmax > 0, wmax, f32(0)).astype(f32)
    amax = np.abs(g).max(axis=1)
    best = _grid_at(f32(1), wmin, wmax, amax, bits, grid)
    if scales == "mse":
        best = [x.copy() for x in best]
        err = _group_errors(g, *best)
        for k in range(1, MSE_RATIOS):
            a = f32(MSE_RATIOS - k) / f32(MSE_RATIOS)
            cand = _grid_at(a, wmin, wmax, amax, bits, grid)
            e = _group_errors(g, *cand)
            better = e < err                   # strict: the first minimum is kept
            if better.any():
                err = np.where(better, e, err)
                for b, c in zip(best, cand):
                    b[better] = c[better]
    scale, lo, hi = best
    return scale.astype(f32), lo.astype(np.int64), hi.astype(np.int64)


def quantize_grid(weight, bits, per_channel, axis=0, grid="symmetric", scales="max"):
    """Uniform quantization of a float32 weight (FORMAT.md, "Quantization").

    One group per output channel (axis) or per tensor. grid "symmetric": codes in
    [-qmax, qmax], scale = a * max|W| / qmax; "asymmetric": all 2^bits codes
    [-z, 2^bits - 1 - z] with a zero point z per group. scales "max": clipping ratio
    a = 1; "mse": the ratio of 100 with the smallest squared error. Then
    code = clip(rint(W / scale), lo, hi).
    Returns (codes int8 shaped like weight, scales float32 (C,) or (1,),
    code_min int8 (C,) or (1,): each group's lo, -qmax for every group when symmetric).
    """
    w = np.asarray(weight, dtype=np.float32)
    _check_bits(bits)
    check_options(grid, scales)
    if not np.all(np.isfinite(w)):
        raise ValueError("weight has non-finite values")
    if w.size == 0:
        raise ValueError("weight is empty")
    scale, lo, hi = group_grids(_groups(w, per_channel, axis), bits, grid, scales)
    if per_channel:
        shape = _channel_shape(w.ndim, axis)
        s, l, h = (x.reshape(shape) for x in (scale, lo.astype(np.float32),
                                              hi.astype(np.float32)))
    else:
        s, l, h = scale[0], np.float32(lo[0]), np.float32(hi[0])
    codes = _nearest(w, s, l, h).astype(np.int8)
    return codes, scale, lo.astype(np.int8)


def quantize(weight, bits, per_channel, axis=0, grid="symmetric", scales="max"):
    """quantize_grid without the code ranges: (codes int8, scales float32).

    With the defaults this is qevo's original quantizer: qmax = 2^(bits-1) - 1;
    scale = max|W| / qmax per output channel (axis) or per tensor, 1 where that is 0;
    code = clip(rint(W / scale), -qmax, qmax).
    """
    codes, s, _ = quantize_grid(weight, bits, per_channel, axis, grid, scales)
    return codes, s


def dequantize(codes, scales, axis=0):
    """code * scale in float32, scales broadcast along the output-channel axis."""
    c = codes.astype(np.float32)
    if scales.shape == (1,):
        return c * scales[0]
    return c * scales.reshape(_channel_shape(codes.ndim, axis))


def _layer_bits(qlayers, bits, first_bits, last_bits, layer_bits):
    """Bits per quantized layer: bits; first/last layer overrides; then layer_bits."""
    out = {l["name"]: bits for l in qlayers}
    if qlayers and first_bits is not None:
        out[qlayers[0]["name"]] = first_bits
    if qlayers and last_bits is not None:
        out[qlayers[-1]["name"]] = last_bits
    for name, b in (layer_bits or {}).items():
        if name not in out:
            raise ValueError(f"layer_bits names '{name}', which is not a quantized layer")
        out[name] = b
    return out


def _read(path):
    tensors, metadata = qx.read_safetensors(path)
    return qx.parse_graph(metadata), tensors, metadata


def _quantize_folded(graph, tensors, bits, per_channel, first_bits, last_bits, layer_bits,
                     grid, scales):
    """{name: (codes, scales, dequantized, code_min)} of every quantized layer; bits."""
    check_options(grid, scales)
    qlayers = [l for l in graph["layers"] if l["op"] in QUANTIZED_OPS]
    nbits = _layer_bits(qlayers, bits, first_bits, last_bits, layer_bits)
    result = {}
    for layer in qlayers:
        w = qx.layer_tensor(layer, "weight", tensors)
        axis = out_axis(layer["op"])
        codes, s, code_min = quantize_grid(w, nbits[layer["name"]], per_channel, axis,
                                           grid, scales)
        result[layer["name"]] = (codes, s, dequantize(codes, s, axis), code_min)
    return result, nbits


def quantize_model(path, bits, per_channel, first_bits=None, last_bits=None,
                   layer_bits=None, grid="symmetric", scales="max"):
    """Folds and quantizes a model file.

    Returns {layer name: (codes int8, scales float32, dequantized weight float32)} for
    every conv2d / convtranspose2d / linear layer, in graph order. first_bits and
    last_bits override bits for the first and last of those layers (last wins when they
    are the same layer); layer_bits {name: bits} overrides any layer. grid and scales as
    for quantize_grid (quantized_model also gives each group's code_min).
    """
    graph, tensors, _ = _read(path)
    graph, tensors = fold_model(graph, tensors)
    result, _ = _quantize_folded(graph, tensors, bits, per_channel, first_bits, last_bits,
                                 layer_bits, grid, scales)
    return {name: r[:3] for name, r in result.items()}


def quantized_model(path, bits, per_channel, first_bits=None, last_bits=None,
                    layer_bits=None, grid="symmetric", scales="max"):
    """The quantized model as FORMAT.md says qevo writes it: (graph, tensors, quant).

    graph is the folded graph (explicit inputs); for each quantized layer L the tensors
    are L.weight (dequantized), L.bias (folded bias, if any), L.codes, L.scales and, with
    the asymmetric grid, L.code_min (int8, each group's smallest code), which its
    qevo.quant entry names as "code_min". quant holds "grid" and "scales".
    """
    graph, tensors, _ = _read(path)
    graph, tensors = fold_model(graph, tensors)
    result, nbits = _quantize_folded(graph, tensors, bits, per_channel, first_bits,
                                     last_bits, layer_bits, grid, scales)
    out_tensors, layers, qlayers = {}, [], {}
    for layer in graph["layers"]:
        layer = dict(layer)
        name = layer["name"]
        if name in result:
            codes, s, deq, code_min = result[name]
            bias = qx.layer_tensor(layer, "bias", tensors)
            layer["weight"], layer["bias"] = f"{name}.weight", None
            out_tensors[f"{name}.weight"] = deq
            if bias is not None:
                layer["bias"] = f"{name}.bias"
                out_tensors[f"{name}.bias"] = bias
            out_tensors[f"{name}.codes"], out_tensors[f"{name}.scales"] = codes, s
            qlayers[name] = {"bits": int(nbits[name]), "codes": f"{name}.codes",
                             "scales": f"{name}.scales"}
            if grid == "asymmetric":
                out_tensors[f"{name}.code_min"] = code_min
                qlayers[name]["code_min"] = f"{name}.code_min"
        layers.append(layer)
    quant = {"version": 1, "granularity": "per_channel" if per_channel else "per_tensor",
             "grid": grid, "scales": scales, "bits": int(bits), "layers": qlayers}
    return dict(graph, layers=layers), out_tensors, quant


def write_quantized(src, dst, bits, per_channel, first_bits=None, last_bits=None,
                    layer_bits=None, description=None, grid="symmetric", scales="max"):
    """Writes the quantized model of src to dst in qevo's quantized-file layout."""
    graph, tensors, quant = quantized_model(src, bits, per_channel, first_bits, last_bits,
                                            layer_bits, grid, scales)
    _, metadata = qx.read_safetensors(src)
    if description is None:
        description = (f"{metadata.get('qevo.description') or src}; quantized by qevo_ref.py "
                       f"({quant['granularity']}, {grid} grid, {scales} scales, {bits} bits)")
    qx.write_safetensors(dst, tensors, {
        "qevo.graph": json.dumps(qx.compact_graph(graph)),
        "qevo.quant": json.dumps(quant),
        "qevo.description": description})


def build_folded_module(path):
    """A torch module of the folded float model (no quantization)."""
    graph, tensors, metadata = _read(path)
    graph, tensors = fold_model(graph, tensors)
    return qx.build_module(graph, tensors, metadata)


def build_quantized_module(path, bits, per_channel, first_bits=None, last_bits=None,
                           layer_bits=None, grid="symmetric", scales="max"):
    """A torch module running the folded model with dequantized weights (for accuracy)."""
    graph, tensors, quant = quantized_model(path, bits, per_channel, first_bits, last_bits,
                                            layer_bits, grid, scales)
    _, metadata = qx.read_safetensors(path)
    metadata = dict(metadata, **{"qevo.quant": json.dumps(quant)})
    return qx.build_module(graph, tensors, metadata)


# ----------------------------------------------------------------- checking qevo's files

def _same(a, b):
    """Bitwise equality of two arrays (so -0.0 != 0.0 and NaN == NaN)."""
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _check_quant_layer(layer, entry, tensors, granularity, grid="symmetric"):
    """Problems with one quantized layer of a quantized file."""
    name, problems = layer["name"], []
    w = qx.layer_tensor(layer, "weight", tensors)
    if not isinstance(entry, dict):
        return [f"{name}: qevo.quant entry {entry!r} is not an object"]
    codes, scales = tensors.get(entry.get("codes")), tensors.get(entry.get("scales"))
    bits = entry.get("bits")
    if codes is None or scales is None or not isinstance(bits, int) or \
            isinstance(bits, bool) or not 2 <= bits <= 8:
        return [f"{name}: qevo.quant entry {entry} is incomplete or names missing tensors"]
    axis = out_axis(layer["op"])
    channels = w.shape[axis] if granularity == "per_channel" else 1
    levels = 2 ** bits - 1
    if grid == "asymmetric":
        code_min = tensors.get(entry.get("code_min"))
        if code_min is None:
            return [f"{name}: asymmetric grid but qevo.quant entry {entry} names no "
                    f"code_min tensor in the file"]
        if code_min.dtype != np.int8 or code_min.shape != (channels,):
            return [f"{name}: code_min {code_min.dtype}{list(code_min.shape)}, expected "
                    f"int8[{channels}]"]
        lo = code_min.astype(np.int32)
        zmin, zmax = zero_point_range(bits)
        bad = (lo < -zmax) | (lo > -zmin)
        if bad.any():
            g = int(np.argmax(bad))
            problems.append(f"{name}: code_min {int(lo[g])} of group {g} is not minus a "
                            f"zero point in [{zmin}, {zmax}] for {bits} bits")
    else:
        if "code_min" in entry:
            problems.append(f"{name}: qevo.quant entry names code_min {entry['code_min']!r} "
                            f"but the grid is {grid}")
        lo = np.full(channels, -(2 ** (bits - 1) - 1), np.int32)
        levels -= 1  # [-qmax, qmax]
    if codes.dtype != np.int8 or codes.shape != w.shape:
        problems.append(f"{name}: codes {codes.dtype}{list(codes.shape)}, expected "
                        f"int8{list(w.shape)}")
    elif not problems:
        c = _groups(codes.astype(np.int32), granularity == "per_channel", axis)
        below, above = c < lo[:, None], c > (lo + levels)[:, None]
        if below.any() or above.any():
            g = int(np.argmax((below | above).any(axis=1)))
            rng = (f"[{int(lo[g])}, {int(lo[g] + levels)}]" if grid == "asymmetric"
                   else f"[-qmax, qmax] = [{int(lo[g])}, {int(lo[g] + levels)}]")
            problems.append(f"{name}: codes of group {g} in [{int(c[g].min())}, "
                            f"{int(c[g].max())}], outside its range {rng} for {bits} bits")
    if scales.dtype != np.float32 or scales.shape != (channels,):
        problems.append(f"{name}: scales {scales.dtype}{list(scales.shape)}, expected "
                        f"float32[{channels}]")
    if not problems and not _same(dequantize(codes, scales, axis), w):
        problems.append(f"{name}: weight is not exactly codes * scales")
    return problems


def quant_options(quant):
    """(grid, scales) of a parsed qevo.quant dict: "symmetric" / "max" when absent."""
    return quant.get("grid", "symmetric"), quant.get("scales", "max")


def check_quantized_file(path, float_path=None):
    """Checks a quantized model file (e.g. written by qevo's C side) against FORMAT.md.

    Returns a list of problems, empty when the file is consistent (weights exactly
    codes * scales; every code within its group's range, [-qmax, qmax] for the symmetric
    grid, [code_min, code_min + 2^b - 1] for the asymmetric one; no batchnorm left) and,
    when float_path is given, bit-identical (codes, scales, code_min, weights, biases) to
    this reference quantizer applied to that float model with the grid, scale search and
    per-layer bits recorded in the file (a file without "grid" / "scales" is symmetric /
    max).
    """
    graph, tensors, metadata = _read(path)
    if "qevo.quant" not in metadata:
        return [f"{path}: no qevo.quant metadata"]
    quant = json.loads(metadata["qevo.quant"])
    granularity = quant.get("granularity")
    if granularity not in ("per_channel", "per_tensor"):
        return [f"{path}: unknown granularity {granularity!r}"]
    grid, search = quant_options(quant)
    if grid not in GRIDS:
        return [f"{path}: unknown grid {grid!r} (expected one of {', '.join(GRIDS)})"]
    if search not in SCALE_SEARCHES:
        return [f"{path}: unknown scales {search!r} (expected one of "
                f"{', '.join(SCALE_SEARCHES)})"]
    problems = [f"{l['name']}: batchnorm left in a quantized file"
                for l in graph["layers"] if l["op"] == "batchnorm"]
    qlayers = [l for l in graph["layers"] if l["op"] in QUANTIZED_OPS]
    entries = quant.get("layers", {})
    for layer in qlayers:
        if layer["name"] not in entries:
            problems.append(f"{layer['name']}: not listed in qevo.quant")
            continue
        problems += _check_quant_layer(layer, entries[layer["name"]], tensors, granularity,
                                       grid)
    if float_path is not None and not problems:
        problems += _compare_with_reference(graph, tensors, entries, granularity, float_path,
                                            grid, search)
    return problems


def _compare_with_reference(graph, tensors, entries, granularity, float_path,
                            grid="symmetric", scales="max"):
    bits = {name: e["bits"] for name, e in entries.items()}
    ref_graph, ref_tensors, _ = quantized_model(float_path, 8, granularity == "per_channel",
                                                layer_bits=bits, grid=grid, scales=scales)
    problems = []
    ref_layers = {l["name"]: l for l in ref_graph["layers"]}
    if [l["name"] for l in graph["layers"]] != list(ref_layers):
        return [f"layer names/order differ from the reference: "
                f"{[l['name'] for l in graph['layers']]} vs {list(ref_layers)}"]
    keys = ("codes", "scales", "code_min") if grid == "asymmetric" else ("codes", "scales")
    for layer in graph["layers"]:
        ref = ref_layers[layer["name"]]
        for key in ("weight", "bias"):
            got = qx.layer_tensor(layer, key, tensors)
            want = qx.layer_tensor(ref, key, ref_tensors)
            if (got is None) != (want is None) or (got is not None and not _same(got, want)):
                problems.append(f"{layer['name']}: {key} differs from the reference")
        if layer["name"] in entries:
            e = entries[layer["name"]]
            for key in keys:
                got, want = tensors[e[key]], ref_tensors[f"{layer['name']}.{key}"]
                if not _same(got, want):
                    problems.append(f"{layer['name']}: {key} differ from the reference"
                                    f"{_first_difference(got, want)}")
    return problems


def _first_difference(got, want):
    """': in N of M values; first at [i, ...]: file x, reference y' (bitwise), or ''."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return f": file {got.dtype}{list(got.shape)}, reference {want.dtype}{list(want.shape)}"
    bits = np.dtype(f"u{got.dtype.itemsize}")
    diff = np.ascontiguousarray(got).view(bits) != np.ascontiguousarray(want).view(bits)
    if not diff.any():
        return ""
    at = tuple(int(v) for v in np.argwhere(diff)[0])
    return (f" in {int(diff.sum())} of {got.size} values; first at {list(at)}: file "
            f"{got[at]!r}, reference {want[at]!r}")


def main(argv=None):
    ap = argparse.ArgumentParser(description="qevo reference quantizer")
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quantize", help="fold and quantize SRC into DST")
    q.add_argument("src")
    q.add_argument("dst")
    q.add_argument("--bits", type=int, required=True)
    q.add_argument("--per-tensor", action="store_true")
    q.add_argument("--first-bits", type=int)
    q.add_argument("--last-bits", type=int)
    q.add_argument("--grid", choices=GRIDS, default="symmetric",
                   help="code grid (default symmetric)")
    q.add_argument("--scales", choices=SCALE_SEARCHES, default="max",
                   help="scale search: max (clipping ratio 1, default) or mse")
    c = sub.add_parser("check", help="check a quantized file (against --float SRC)")
    c.add_argument("path")
    c.add_argument("--float", dest="float_path")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "quantize":
            write_quantized(args.src, args.dst, args.bits, not args.per_tensor,
                            args.first_bits, args.last_bits, grid=args.grid,
                            scales=args.scales)
            return 0
        problems = check_quantized_file(args.path, args.float_path)
    except (OSError, ValueError) as e:
        print(f"qevo_ref: {e}", file=sys.stderr)
        return 1
    for p in problems:
        print(p)
    print(f"{args.path}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
