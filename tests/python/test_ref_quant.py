#!/usr/bin/python3
"""Tests of scripts/qevo_ref.py's grids and scale searches (plain asserts, no pytest).

    /usr/bin/python3 tests/python/test_ref_quant.py

docs/FORMAT.md, "Quantization": the asymmetric grid (zero point per group, the 8-bit
z = 128 branch) and the mse scale search, checked on hand-made weights whose codes,
scales and code_min are worked out by hand in the comments; against an independent
scalar, one-weight-at-a-time implementation of FORMAT.md's formulas for every bit width;
and the file checker (code ranges, code_min, files without "grid" / "scales"). When
build/qevo is built, its quantize is compared with the reference on a tiny model at
every bit width, grid and scale search.
The last line is "test_ref_quant: N passed, M failed"; the exit status is non-zero on
failure.
"""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

import numpy as np
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(ROOT, "scripts")
sys.path.insert(0, SCRIPTS)
import qevo_export as qx  # noqa: E402
import qevo_ref as qr  # noqa: E402

torch.set_num_threads(1)
QEVO = os.path.join(ROOT, os.environ.get("BUILD", "build"), "qevo")
TMP = None
TESTS = []
f32 = np.float32


def test(fn):
    TESTS.append(fn)
    return fn


def tmp(name):
    return os.path.join(TMP, name)


def arr(*values):
    return np.array(values, dtype=f32)


# ----------------------------------------------------------------- hand-made weights

@test
def test_asymmetric_2bit_by_hand():
    # L = 3, zmin = 0, zmax = 3; one group per row (per channel, axis 0).
    w = np.array([[-1.0, -0.25, 0.5, 2.0],     # mn -1, mx 2: scale 3/3 = 1, z = 1
                  [0.75, 1.5, 2.25, 0.375],    # mn 0, mx 2.25: scale 0.75, z = 0
                  [-3.0, -1.5, -0.75, 0.0]],   # mn -3, mx 0: scale 1, z = rint(3) = 3
                 dtype=f32)
    codes, scales, code_min = qr.quantize_grid(w, 2, True, 0, "asymmetric", "max")
    assert scales.tolist() == [1.0, 0.75, 1.0], scales
    assert code_min.dtype == np.int8 and code_min.tolist() == [-1, 0, -3], code_min
    # row 0: [-1, rint(-0.25) = 0, rint(0.5) = 0 (tie to even), 2], range [-1, 2]
    # row 1: w / 0.75 = [1, 2, 3, 0.5 -> 0], range [0, 3]
    # row 2: [-3, rint(-1.5) = -2, rint(-0.75) = -1, 0], range [-3, 0]
    assert codes.tolist() == [[-1, 0, 0, 2], [1, 2, 3, 0], [-3, -2, -1, 0]], codes
    # the same rows through the symmetric grid (qmax 1): code_min is -qmax everywhere
    codes, scales, code_min = qr.quantize_grid(w, 2, True, 0, "symmetric", "max")
    assert scales.tolist() == [2.0, 2.25, 3.0] and code_min.tolist() == [-1, -1, -1]
    # rows / [2, 2.25, 3]: [-0.5 -> 0, ...], [0.33, 0.67, 1, 0.17], [-1, -0.5 -> 0, ...]
    assert codes.tolist() == [[0, 0, 0, 1], [0, 1, 1, 0], [-1, 0, 0, 0]], codes


@test
def test_asymmetric_zero_point_rounds_in_float32():
    # mn -1, mx 1: scale = float32(2) / 3 = 0.6666667 (above 2/3), and -mn / scale is
    # 1.49999996 exactly, which rounds to the float32 1.5, so z = rint(1.5) = 2 (not 1):
    # range [-2, 1]; 1 / scale = 1.5 -> 2, clamped to 1; -1 / scale = -1.5 -> -2.
    w = arr(-1.0, 0.0, 0.0, 1.0)
    s = f32(2) / f32(3)
    assert f32(1) / s == f32(1.5)
    codes, scales, code_min = qr.quantize_grid(w, 2, False, 0, "asymmetric", "max")
    assert scales.tolist() == [float(s)] and code_min.tolist() == [-2], (scales, code_min)
    assert codes.tolist() == [-2, 0, 0, 1], codes


@test
def test_asymmetric_8bit_zero_point_128():
    # L = 255: zmin = zmax = 128, codes [-128, 127].
    # [-1, 1.984375]: scale (2.984375 / 255) gives z = rint(85.4) = 85, clamped to 128,
    # so scale = max(1.984375 / 127, 1 / 128) = 1/64: codes [-64, 127].
    codes, scales, code_min = qr.quantize_grid(arr(-1.0, 1.984375), 8, False, 0,
                                               "asymmetric", "max")
    assert scales.tolist() == [1 / 64] and code_min.tolist() == [-128], (scales, code_min)
    assert codes.tolist() == [-64, 127], codes
    # [-2, 0.5]: z clamped as well; scale = max(0.5 / 127, 2 / 128) = 1/64: [-128, 32]
    codes, scales, _ = qr.quantize_grid(arr(-2.0, 0.5), 8, False, 0, "asymmetric", "max")
    assert scales.tolist() == [1 / 64] and codes.tolist() == [-128, 32], (scales, codes)
    # [-128, 127]: scale 255 / 255 = 1 and z = rint(128) = 128: unchanged by the clamp,
    # so the scale is not recomputed (it would be the same here) and codes = W
    codes, scales, code_min = qr.quantize_grid(arr(-128, 0, 127), 8, False, 0,
                                               "asymmetric", "max")
    assert scales.tolist() == [1.0] and code_min.tolist() == [-128]
    assert codes.tolist() == [-128, 0, 127], codes
    # [-1, 3]: clamped (z would be 64); max(3 / 127, 1 / 128) = float32(3) / 127
    codes, scales, _ = qr.quantize_grid(arr(-1.0, 3.0), 8, False, 0, "asymmetric", "max")
    assert scales[0] == f32(3) / f32(127), scales
    assert codes.tolist() == [int(np.rint(f32(-1) / scales[0])), 127], codes
    # 7 bits: L = 127, zmin 0, zmax 127 (no clamp): all-negative group gets z = 127
    codes, scales, code_min = qr.quantize_grid(arr(-127.0, -1.0), 7, False, 0,
                                               "asymmetric", "max")
    assert scales.tolist() == [1.0] and code_min.tolist() == [-127], (scales, code_min)
    assert codes.tolist() == [-127, -1]


@test
def test_asymmetric_zero_group():
    # scale (0 - 0) / L = 0: scale 1, z = zmin (0 below 8 bits, 128 at 8 bits)
    for bits, lo in ((2, 0), (5, 0), (8, -128)):
        codes, scales, code_min = qr.quantize_grid(np.zeros((2, 3), f32), bits, True, 0,
                                                   "asymmetric", "mse")
        assert scales.tolist() == [1.0, 1.0] and code_min.tolist() == [lo, lo], bits
        assert not codes.any()


@test
def test_mse_picks_ratio_below_one_symmetric():
    # 2 bits symmetric (qmax 1), ten weights 1 and one outlier 4. Ratio a gives scale 4a;
    # the ones round to 1 while 4a < 2, so err(a) = 10 (1 - 4a)^2 + (4 - 4a)^2, smallest
    # at 4a = 28/22 = 1.273: a = 0.32 (err 8.182) beats 0.31 (8.194), 0.33 (8.206) and
    # a = 1 (the ones -> 0, err 10).
    w = np.concatenate([np.ones(10, f32), arr(4.0)])
    codes, scales, code_min = qr.quantize_grid(w, 2, False, 0, "symmetric", "mse")
    want = (f32(32) / f32(100)) * f32(4)
    assert scales[0] == want and abs(float(want) - 1.28) < 1e-6, (scales, want)
    assert codes.tolist() == [1] * 11 and code_min.tolist() == [-1], codes
    _, smax = qr.quantize(w, 2, False)
    assert smax.tolist() == [4.0], smax  # max: ratio 1


@test
def test_mse_picks_ratio_below_one_asymmetric_per_channel():
    # 2 bits asymmetric, row 0: ten 1s and a 4 (mn 0, mx 4a, scale 4a/3, z 0, codes 0..3)
    # err(a) = 10 (1 - s)^2 + (4 - 3s)^2 with s = 4a/3 while 4/s >= 2.5: smallest at
    # s = 44/38 = 1.158, so a = 0.87 (s = 1.16, err 0.5264) beats 0.86 (0.5287) and
    # 0.88 (0.5308); a = 1 gives 10/9. Row 1 is exact at a = 1 (codes 0..3 times 1) and
    # keeps ratio 1: each group searches alone.
    w = np.array([[1] * 10 + [4], [0, 1, 2, 3] + [0] * 7], f32)
    codes, scales, code_min = qr.quantize_grid(w, 2, True, 0, "asymmetric", "mse")
    a = f32(87) / f32(100)
    assert scales[0] == (a * f32(4)) / f32(3), scales
    assert scales[1] == f32(1), scales
    assert code_min.tolist() == [0, 0], code_min
    assert codes[0].tolist() == [1] * 10 + [3], codes  # 4 / 1.16 = 3.45 -> 3
    assert codes[1].tolist() == [0, 1, 2, 3] + [0] * 7, codes


@test
def test_mse_keeps_first_minimum():
    # symmetric 2 bits of [1, -1]: scale a, codes +-1 for every a > 0.5, error 2 (1 - a)^2
    # strictly smallest at a = 1; and for [0.5]: scale a * 0.5, code 1, error
    # (0.5 - 0.5 a)^2, again a = 1. An all-zero group errs 0 at every ratio: a = 1, scale 1.
    for w in (arr(1, -1), arr(0.5), arr(0, 0)):
        _, smse = qr.quantize(w, 2, False, scales="mse")
        _, smax = qr.quantize(w, 2, False)
        assert smse.tolist() == smax.tolist(), (w, smse, smax)


@test
def test_error_summed_sequentially():
    # err is the sequential float64 sum in the group's order (np.sum would sum pairwise)
    rng = np.random.default_rng(5)
    g = (rng.standard_normal((2, 1000)) * 0.1).astype(f32)
    scale, lo, hi = arr(0.03, 0.04), arr(-3, -3), arr(3, 3)
    got = qr._group_errors(g, scale, lo, hi)
    for r in range(2):
        e = 0.0
        for x in g[r]:
            code = min(max(float(np.rint(x / scale[r])), -3.0), 3.0)
            d = float(x) - code * float(scale[r])
            e += d * d
        assert got[r] == e, (r, got[r], e)


@test
def test_group_order_per_channel_axis1():
    # convtranspose2d: the output channel is axis 1; each group is w[:, c] row-major
    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 2, 2, 2)).astype(f32)
    w[:, 1] *= 10
    codes, scales, code_min = qr.quantize_grid(w, 3, True, 1, "asymmetric", "mse")
    for c in range(2):
        cc, sc, lc = qr.quantize_grid(w[:, c].copy(), 3, False, 0, "asymmetric", "mse")
        assert scales[c] == sc[0] and code_min[c] == lc[0], c
        assert np.array_equal(codes[:, c], cc), c


@test
def test_bad_options_refused():
    w = arr(1, 2)
    for kwargs, word in (({"grid": "asym"}, "grid"), ({"scales": "minmax"}, "scales"),
                         ({"grid": None}, "grid")):
        try:
            qr.quantize_grid(w, 3, False, **kwargs)
        except ValueError as e:
            assert word in str(e) and repr(list(kwargs.values())[0]) in str(e), str(e)
        else:
            raise AssertionError(f"{kwargs} accepted")
    for bits in (1, 9, 4.0, True):
        try:
            qr.quantize_grid(w, bits, False, grid="asymmetric")
        except ValueError:
            continue
        raise AssertionError(f"bits={bits!r} accepted")


# ----------------------------------------------------------------- independent reference

def scalar_grid(ws, bits, grid, search):
    """FORMAT.md one float32 scalar at a time: (scale, lo, hi) of the group ws."""
    wmin = wmax = amax = f32(0)
    for w in ws:
        wmin = w if w < wmin else wmin
        wmax = w if w > wmax else wmax
        amax = abs(w) if abs(w) > amax else amax

    def at(a):
        if grid == "symmetric":
            qmax = 2 ** (bits - 1) - 1
            s = f32(f32(a * amax) / f32(qmax))
            return (f32(1) if s == 0 else s), -qmax, qmax
        levels = 2 ** bits - 1
        zmin, zmax = max(0, levels - 127), min(levels, 128)
        mn, mx = f32(a * wmin), f32(a * wmax)
        s = f32(f32(mx - mn) / f32(levels))
        if s == 0:
            return f32(1), -zmin, levels - zmin
        zf = float(np.rint(f32(-mn / s)))
        z = int(min(max(zf, zmin), zmax))
        if z != zf:
            up, down = f32(mx / f32(levels - z)), f32(-mn / f32(z))
            s = up if up > down else down
            s = f32(1) if s == 0 else s
        return s, -z, levels - z

    def err(s, lo, hi):
        e = 0.0
        for w in ws:
            code = min(max(float(np.rint(f32(w / s))), lo), hi)
            d = float(w) - code * float(s)
            e += d * d
        return e

    best = at(f32(1))
    if search == "mse":
        best_err = err(*best)
        for k in range(1, 100):
            cand = at(f32(f32(100 - k) / f32(100)))
            e = err(*cand)
            if e < best_err:
                best, best_err = cand, e
    return best


@test
def test_matches_scalar_reference():
    rng = np.random.default_rng(11)
    w = (rng.standard_normal((4, 3, 5)) * 0.3).astype(f32)
    w[0] = 0                                  # all-zero channel
    w[1] = np.abs(w[1])                       # all positive
    w[2] = -np.abs(w[2]) * 7                  # all negative
    w[3, 0, 0] = 2.5                          # one outlier
    cases = []
    for axis in (0, 1):
        wa = w if axis == 0 else np.ascontiguousarray(np.moveaxis(w, 0, 1))
        groups = [[wa[i, c, j] for i in range(wa.shape[0]) for j in range(wa.shape[2])]
                  for c in range(wa.shape[1])] if axis == 1 else \
            [list(wa[c].reshape(-1)) for c in range(wa.shape[0])]
        cases.append((wa, True, axis, groups))
    cases.append((w, False, 0, [list(w.reshape(-1))]))
    for bits in range(2, 9):
        for grid in qr.GRIDS:
            for search in qr.SCALE_SEARCHES:
                for wa, per_channel, axis, groups in cases:
                    codes, scales, code_min = qr.quantize_grid(wa, bits, per_channel, axis,
                                                               grid, search)
                    what = (bits, grid, search, per_channel, axis)
                    for c, g in enumerate(groups):
                        s, lo, hi = scalar_grid(g, bits, grid, search)
                        assert scales[c].tobytes() == s.tobytes(), (what, c, scales[c], s)
                        assert code_min[c] == lo, (what, c, code_min[c], lo)
                        gc = np.moveaxis(codes, axis, 0)[c].reshape(-1) if per_channel \
                            else codes.reshape(-1)
                        want = [int(min(max(float(np.rint(f32(x / s))), lo), hi)) for x in g]
                        assert gc.tolist() == want, (what, c)
                        assert lo >= -128 and hi <= 127 and hi - lo == (
                            2 ** bits - 1 if grid == "asymmetric" else 2 ** bits - 2), what


# ----------------------------------------------------------------- files

class TinyNet(nn.Module):
    """conv+BN+relu, conv-transpose, relu, pool, linear: all three quantized ops."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(4)
        self.t1 = nn.ConvTranspose2d(4, 3, 2, stride=2)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(3 * 7 * 7, 5)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = self.pool(torch.relu(self.t1(x)))
        return self.fc(x.flatten(1))


def tiny_model():
    path = tmp("tiny.safetensors")
    if not os.path.exists(path):
        torch.manual_seed(4)
        m = TinyNet().eval()
        with torch.no_grad():
            m.b1.running_mean.uniform_(-0.3, 0.3)
            m.b1.running_var.uniform_(0.5, 2.0)
            m.t1.weight[:, 1] += 0.5          # a channel far from symmetric
            m.fc.weight[2, 7] = 3.0           # an outlier in one channel
        qx.export(m, (1, 14, 14), path, mean=[0.5], std=[0.25], description="tiny")
    return path


def rewrite(src, dst, edit):
    """Copies a quantized file, letting edit(tensors, quant) change it."""
    tensors, meta = qx.read_safetensors(src)
    tensors = {k: v.copy() for k, v in tensors.items()}
    quant = json.loads(meta["qevo.quant"])
    edit(tensors, quant)
    qx.write_safetensors(dst, tensors, dict(meta, **{"qevo.quant": json.dumps(quant)}))
    return dst


@test
def test_asymmetric_file_layout():
    path = tiny_model()
    qpath = tmp("tiny.asym.safetensors")
    qr.write_quantized(path, qpath, 3, True, first_bits=8, grid="asymmetric", scales="mse")
    assert not qr.check_quantized_file(qpath, path), qr.check_quantized_file(qpath, path)
    tensors, meta = qx.read_safetensors(qpath)
    quant = json.loads(meta["qevo.quant"])
    assert quant["grid"] == "asymmetric" and quant["scales"] == "mse", quant
    for name, e in quant["layers"].items():
        assert e["code_min"] == f"{name}.code_min", e
        cm = tensors[e["code_min"]]
        assert cm.dtype == np.int8 and cm.shape == tensors[e["scales"]].shape, name
    assert qx.load(qpath).quant["grid"] == "asymmetric"
    # the symmetric file names no code_min and records its grid and scales
    spath = tmp("tiny.sym.safetensors")
    qr.write_quantized(path, spath, 3, False, scales="mse")
    tensors, meta = qx.read_safetensors(spath)
    quant = json.loads(meta["qevo.quant"])
    assert (quant["grid"], quant["scales"]) == ("symmetric", "mse"), quant
    assert not any(k.endswith(".code_min") for k in tensors)
    assert not any("code_min" in e for e in quant["layers"].values())
    assert not qr.check_quantized_file(spath, path)


@test
def test_file_without_grid_keys_is_symmetric_max():
    path = tiny_model()
    qpath = tmp("tiny.old.safetensors")
    qr.write_quantized(path, qpath, 4, True)

    def drop(tensors, quant):
        del quant["grid"], quant["scales"]
    old = rewrite(qpath, tmp("tiny.old2.safetensors"), drop)
    assert not qr.check_quantized_file(old, path)
    # the same file claiming mse scales no longer matches the reference
    claim = rewrite(old, tmp("tiny.old3.safetensors"),
                    lambda t, q: q.update(scales="mse"))
    problems = qr.check_quantized_file(claim, path)
    assert problems and any("scales differ" in p for p in problems), problems


@test
def test_check_detects_bad_asymmetric_files():
    path = tiny_model()
    qpath = tmp("tiny.a2.safetensors")
    qr.write_quantized(path, qpath, 2, True, grid="asymmetric", scales="mse")
    tensors, meta = qx.read_safetensors(qpath)
    name = "fc"
    lo = int(tensors[f"{name}.code_min"][0])

    def below_range(t, q):     # a code under its group's lo (weight kept = code * scale)
        t[f"{name}.codes"][0, 0] = lo - 1
        t[f"{name}.weight"][0, 0] = f32(lo - 1) * t[f"{name}.scales"][0]
    problems = qr.check_quantized_file(rewrite(qpath, tmp("b1.safetensors"), below_range))
    assert problems and "outside its range" in problems[0], problems

    def above_range(t, q):     # lo + 4 is one past lo + 2^2 - 1
        t[f"{name}.codes"][1, 0] = int(t[f"{name}.code_min"][1]) + 4
        t[f"{name}.weight"][1, 0] = f32(t[f"{name}.codes"][1, 0]) * t[f"{name}.scales"][1]
    problems = qr.check_quantized_file(rewrite(qpath, tmp("b2.safetensors"), above_range))
    assert problems and "outside its range" in problems[0], problems

    def shift_min(t, q):       # code_min one lower: its group's top code leaves the range
        t[f"{name}.code_min"][0] -= 1
    problems = qr.check_quantized_file(rewrite(qpath, tmp("b3.safetensors"), shift_min))
    assert problems and "outside its range" in problems[0], problems
    # and the comparison with the reference compares code_min bit for bit
    graph = qx.parse_graph(meta)
    entries = json.loads(meta["qevo.quant"])["layers"]
    assert not qr._compare_with_reference(graph, tensors, entries, "per_channel", path,
                                          "asymmetric", "mse")
    changed = dict(tensors, **{f"{name}.code_min": tensors[f"{name}.code_min"].copy()})
    changed[f"{name}.code_min"][0] -= 1
    problems = qr._compare_with_reference(graph, changed, entries, "per_channel", path,
                                          "asymmetric", "mse")
    assert problems == [f"{name}: code_min differ from the reference in 1 of "
                        f"{len(changed[f'{name}.code_min'])} values; first at [0]: file "
                        f"{lo - 1!r}, reference {lo!r}"], problems

    def bad_zero_point(t, q):  # lo = 1: zero not on the grid (z = -1 < zmin)
        t[f"{name}.code_min"][0] = 1
    problems = qr.check_quantized_file(rewrite(qpath, tmp("b4.safetensors"), bad_zero_point))
    assert problems and "zero point" in problems[0], problems

    def no_code_min(t, q):
        del q["layers"][name]["code_min"]
    problems = qr.check_quantized_file(rewrite(qpath, tmp("b5.safetensors"), no_code_min))
    assert problems and "code_min" in problems[0], problems

    def wrong_shape(t, q):
        t[f"{name}.code_min"] = t[f"{name}.code_min"][:1].copy()
    problems = qr.check_quantized_file(rewrite(qpath, tmp("b6.safetensors"), wrong_shape))
    assert problems and "code_min" in problems[0], problems

    def scale_ulp(t, q):       # one scale one ulp up, weights made consistent again
        s = t[f"{name}.scales"]
        s[0] = np.nextafter(s[0], f32(np.inf))
        t[f"{name}.weight"] = qr.dequantize(t[f"{name}.codes"], s, 0)
    bad = rewrite(qpath, tmp("b7.safetensors"), scale_ulp)
    assert not qr.check_quantized_file(bad)
    problems = qr.check_quantized_file(bad, path)
    assert problems and any("scales differ" in p for p in problems), problems

    problems = qr.check_quantized_file(
        rewrite(qpath, tmp("b8.safetensors"), lambda t, q: q.update(grid="affine")))
    assert problems and "grid" in problems[0], problems
    problems = qr.check_quantized_file(
        rewrite(qpath, tmp("b9.safetensors"), lambda t, q: q.update(grid="symmetric")))
    assert problems, "an asymmetric file read as symmetric passed"


@test
def test_symmetric_range_still_checked():
    path = tiny_model()
    qpath = tmp("tiny.s3.safetensors")
    qr.write_quantized(path, qpath, 3, True, scales="mse")

    def past_qmax(t, q):
        t["fc.codes"][0, 0] = -4
        t["fc.weight"][0, 0] = f32(-4) * t["fc.scales"][0]
    problems = qr.check_quantized_file(rewrite(qpath, tmp("s1.safetensors"), past_qmax))
    assert problems and "outside its range" in problems[0], problems


@test
def test_command_line():
    path = tiny_model()
    out = tmp("cli.safetensors")
    script = os.path.join(SCRIPTS, "qevo_ref.py")
    r = subprocess.run([sys.executable, script, "quantize", path, out, "--bits", "2",
                        "--grid", "asymmetric", "--scales", "mse", "--per-tensor"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, script, "check", out, "--float", path],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, (r.stdout, r.stderr)
    quant = json.loads(qx.read_safetensors(out)[1]["qevo.quant"])
    assert (quant["granularity"], quant["grid"], quant["scales"]) == \
        ("per_tensor", "asymmetric", "mse"), quant
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            qr.main(["quantize", path, out, "--bits", "2", "--grid", "asym"])
        except SystemExit as e:
            assert e.code != 0
        else:
            raise AssertionError("--grid asym accepted")


@test
def test_qevo_quantize_every_bit_width():
    """build/qevo quantize is bit-identical to the reference at 2..8 bits, both grids
    and scale searches, per channel (and per tensor at 8 bits)."""
    if not os.access(QEVO, os.X_OK):
        print(f"  (skipped: {QEVO} not built)")
        return
    path = tiny_model()
    out = tmp("qevo.safetensors")
    runs = [(b, "per-channel", g, s) for b in range(2, 9) for g in qr.GRIDS
            for s in qr.SCALE_SEARCHES]
    runs += [(8, "per-tensor", "asymmetric", s) for s in qr.SCALE_SEARCHES]
    bad = []
    for bits, gran, grid, search in runs:
        r = subprocess.run([QEVO, "quantize", path, "--out", out, "--bits", str(bits),
                            "--" + gran, "--grid", grid, "--scales", search],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            bad.append((bits, gran, grid, search, r.stderr.strip()))
            continue
        problems = qr.check_quantized_file(out, float_path=path)
        if problems:
            bad.append((bits, gran, grid, search, problems[:3]))
    assert not bad, bad


def main():
    global TMP
    TMP = tempfile.mkdtemp(prefix="qevo_test_ref_quant.")
    passed, failed = 0, 0
    try:
        for fn in TESTS:
            try:
                fn()
            except Exception:  # report and go on
                failed += 1
                print(f"FAIL {fn.__name__}:\n{traceback.format_exc()}", flush=True)
            else:
                passed += 1
                print(f"ok   {fn.__name__}", flush=True)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    print(f"test_ref_quant: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
