#!/usr/bin/python3
"""Tests of scripts/adaround.py (plain asserts, no pytest).

    /usr/bin/python3 tests/python/test_adaround.py

Small randomly initialised networks (random batch-norm statistics, so folding is
exercised) exported to a temporary folder, a few hundred Fashion-MNIST training images
and few iterations. Checks that the output is a consistent qevo quantized file, that
AdaRound only chooses between floor and ceil of W/s, that it lowers the per-layer
reconstruction error, that first/last bits are honoured, that the asymmetric grid and mse
scales keep every code in its group's range, and that the calibration images are exactly
those of a SPLITS.json file (or of --calibration-size with a seed).
The last line is "test_adaround: N passed, M failed"; the exit status is non-zero on failure.
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
import adaround  # noqa: E402
import fmnist  # noqa: E402
import qevo_export as qx  # noqa: E402
import qevo_ref as qr  # noqa: E402

torch.set_num_threads(1)
QEVO = os.path.join(ROOT, os.environ.get("BUILD", "build"), "qevo")
TMP = None
TESTS = []
RUNS = {}  # cached runs: key -> (result, stdout, out path, model path)


def test(fn):
    TESTS.append(fn)
    return fn


def tmp(name):
    return os.path.join(TMP, name)


def randomize(model, seed):
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.25)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.3)
    return model.eval()


class SmallNet(nn.Module):
    """conv+BN+relu, pool, conv+BN+relu, pool, linear, relu, linear: 4 quantized layers."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.b2 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 7 * 7, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.b1(self.c1(x))))
        x = self.pool(torch.relu(self.b2(self.c2(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class TinyAE(nn.Module):
    """conv (stride 2) + BN + relu, conv-transpose back up, sigmoid: reconstruct task."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(1, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dec = nn.ConvTranspose2d(8, 1, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x):
        return torch.sigmoid(self.dec(torch.relu(self.bn(self.enc(x)))))


def exported(name):
    path = tmp(f"{name}.safetensors")
    if not os.path.exists(path):
        torch.manual_seed(7)
        if name == "small":
            qx.export(randomize(SmallNet(), 7), (1, 28, 28), path, mean=[0.286],
                      std=[0.353], description="test small")
        else:
            qx.export(randomize(TinyAE(), 7), (1, 28, 28), path, mean=[0.0], std=[1.0],
                      task="reconstruct", description="test ae")
    return path


SPLITS = {"dataset": "fashion-mnist:train",
          "fitness": [list(range(1000, 1100)), [5, 170, 1000, 59999, 3], list(range(40, 140))],
          "validation": list(range(200, 260))}
SPLITS_UNION = list(range(1000, 1100)) + [5, 170, 59999, 3] + list(range(40, 140))


def splits_file():
    path = tmp("splits.json")
    with open(path, "w") as f:
        json.dump(SPLITS, f)
    return path


def run(key, argv):
    """adaround.run(argv) in this process, once per key; returns (result, stdout, out)."""
    if key not in RUNS:
        out = tmp(f"{key}.out.safetensors")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            result = adaround.run(argv + ["--out", out, "--threads", "1"])
        RUNS[key] = (result, buf.getvalue(), out)
    return RUNS[key]


def run_small():
    return run("small", ["--model", exported("small"), "--bits", "3", "--first-bits", "8",
                         "--last-bits", "8", "--calibration", splits_file(),
                         "--iterations", "300"])


def run_ae():
    return run("ae", ["--model", exported("ae"), "--bits", "4", "--per-tensor",
                      "--calibration-size", "160", "--seed", "3", "--iterations", "300"])


def run_asym():
    return run("asym", ["--model", exported("small"), "--bits", "2", "--first-bits", "8",
                        "--grid", "asymmetric", "--scales", "mse", "--calibration-size", "64",
                        "--iterations", "20", "--batch", "16"])


def check_codes(model, out, bits, per_channel, first_bits=None, last_bits=None,
                grid="symmetric", scales="max"):
    """Codes in their group's range, within one of nearest, and only floor(W/s) or
    ceil(W/s) (each clipped to the range); scales and code_min those of the reference."""
    ref = qr.quantize_model(model, bits, per_channel, first_bits, last_bits, grid=grid,
                            scales=scales)
    _, ref_tensors, _ = qr.quantized_model(model, bits, per_channel, first_bits, last_bits,
                                           grid=grid, scales=scales)
    tensors, meta = qx.read_safetensors(out)
    quant = json.loads(meta["qevo.quant"])
    graph = qx.parse_graph(meta)
    fgraph, ftensors = qr.fold_model(qx.parse_graph(qx.read_safetensors(model)[1]),
                                     qx.read_safetensors(model)[0])
    fl = {l["name"]: l for l in fgraph["layers"]}
    ops = {l["name"]: l["op"] for l in graph["layers"]}
    assert list(quant["layers"]) == list(ref), (list(quant["layers"]), list(ref))
    for name, (near, scales, _) in ref.items():
        codes = tensors[quant["layers"][name]["codes"]]
        b = quant["layers"][name]["bits"]
        qmax = 2 ** (b - 1) - 1
        if grid == "asymmetric":
            code_min = tensors[quant["layers"][name]["code_min"]]
            assert np.array_equal(code_min, ref_tensors[f"{name}.code_min"]), \
                f"{name}: code_min changed"
            width = 2 ** b - 1
        else:
            assert "code_min" not in quant["layers"][name], quant["layers"][name]
            code_min, width = np.full(scales.shape, -qmax, np.int8), 2 * qmax
        assert codes.dtype == np.int8 and codes.shape == near.shape, name
        assert np.array_equal(tensors[f"{name}.scales"], scales), f"{name}: scales changed"
        w = qx.layer_tensor(fl[name], "weight", ftensors)
        axis = qr.out_axis(ops[name])
        shape = (1,) * w.ndim if scales.shape == (1,) else qr._channel_shape(w.ndim, axis)
        s = scales.reshape(shape)
        c_lo = code_min.astype(int).reshape(shape)
        c_hi = c_lo + width
        assert ((codes >= c_lo) & (codes <= c_hi)).all(), f"{name}: codes out of range"
        assert np.abs(codes.astype(int) - near).max() <= 1, f"{name}: moved by more than 1"
        ws = (w / s).astype(np.float32)
        lo = np.clip(np.floor(ws), c_lo, c_hi)
        hi = np.clip(np.ceil(ws), c_lo, c_hi)
        ok = (codes == lo) | (codes == hi)
        assert ok.all(), f"{name}: {int((~ok).sum())} codes are neither floor nor ceil"
        fixed = lo == hi
        assert np.array_equal(codes[fixed], near[fixed]), \
            f"{name}: a weight with floor == ceil changed"
    return ref, tensors, quant


# ----------------------------------------------------------------- tests

@test
def test_splits_indices():
    result, out_text, _ = run_small()
    got = [int(i) for i in result["indices"]]
    assert got == SPLITS_UNION, f"calibration indices {got[:8]}... != the fitness union"
    assert not set(got) & set(SPLITS["validation"]), "validation images used"
    assert result["dataset"] == "fashion-mnist:train"
    _, idx = adaround.read_splits(splits_file())
    assert idx.tolist() == SPLITS_UNION
    assert f"{len(SPLITS_UNION)} images of fashion-mnist:train" in out_text, out_text[:300]


@test
def test_calibration_size_indices():
    result, _, _ = run_ae()
    want = np.random.default_rng(3).permutation(60000)[:160]
    assert np.array_equal(result["indices"], want), "not default_rng(seed).permutation[:N]"


@test
def test_file_is_consistent():
    for result, _, out in (run_small(), run_ae()):
        problems = qr.check_quantized_file(out)
        assert not problems, problems
        leftovers = [n for n in os.listdir(TMP) if n.endswith(".tmp")]
        assert not leftovers, leftovers
        module = qx.load(out)
        assert module.quant is not None
        with torch.no_grad():
            y = module(torch.zeros((2, 1, 28, 28)))
        assert torch.isfinite(y).all()
        _, meta = qx.read_safetensors(out)
        assert meta["qevo.description"].startswith("AdaRound (scripts/adaround.py "), meta


@test
def test_same_as_nearest_except_codes():
    """Graph, biases and scales are the reference quantizer's; weights = codes * scales."""
    _, _, out = run_small()
    graph, tensors, quant = qr.quantized_model(exported("small"), 3, True, 8, 8)
    got, meta = qx.read_safetensors(out)
    assert set(got) == set(tensors), (sorted(got), sorted(tensors))
    assert qx.parse_graph(meta)["layers"] == graph["layers"]
    for name in quant["layers"]:
        if f"{name}.bias" in tensors:
            assert np.array_equal(got[f"{name}.bias"], tensors[f"{name}.bias"]), name
        deq = qr.dequantize(got[f"{name}.codes"], got[f"{name}.scales"],
                            qr.out_axis(next(l["op"] for l in graph["layers"]
                                             if l["name"] == name)))
        assert deq.tobytes() == got[f"{name}.weight"].tobytes(), name
    # floats first, codes last, as qevo's quant_save lays the file out
    kinds = [got[k].dtype == np.int8 for k in got]
    assert kinds == sorted(kinds), "int8 codes are not after every float tensor"


@test
def test_codes_floor_or_ceil():
    _, _, out = run_small()
    _, tensors, _ = check_codes(exported("small"), out, 3, True, 8, 8)
    _, _, out = run_ae()
    check_codes(exported("ae"), out, 4, False)


@test
def test_asymmetric_grid():
    """--grid asymmetric --scales mse: codes within each group's [code_min,
    code_min + 2^b - 1], the reference's scales and code_min, grid and scales recorded."""
    result, text, out = run_asym()
    problems = qr.check_quantized_file(out)
    assert not problems, problems
    ref, tensors, quant = check_codes(exported("small"), out, 2, True, 8, None,
                                      grid="asymmetric", scales="mse")
    assert (quant["grid"], quant["scales"]) == ("asymmetric", "mse"), quant
    assert [e["bits"] for e in quant["layers"].values()] == [8, 2, 2, 2], quant
    assert tensors["c1.code_min"].tolist() == [-128] * 8, tensors["c1.code_min"]  # z = 128
    # some channel of a 2-bit layer uses all four states of the asymmetric grid
    groups = [g for n in list(ref)[1:] for g in
              tensors[f"{n}.codes"].reshape(tensors[f"{n}.codes"].shape[0], -1)]
    assert any(len(np.unique(g)) == 4 for g in groups), \
        sorted({len(np.unique(g)) for g in groups})
    assert "asymmetric grid, mse scales" in text, text[:300]
    assert max(l["changed"] for l in result["layers"]) > 0, result["layers"]


@test
def test_some_codes_change():
    for result, _, _ in (run_small(), run_ae()):
        changed = [l["changed"] for l in result["layers"]]
        assert max(changed) > 0, f"AdaRound kept nearest rounding everywhere: {changed}"
        assert max(changed) < 0.5, f"implausibly many changes: {changed}"


@test
def test_reconstruction_improves():
    layers = run_small()[0]["layers"] + run_ae()[0]["layers"]
    better = [l["mse_adaround"] <= l["mse_nearest"] for l in layers]
    summary = [(l["name"], round(l["mse_nearest"], 6), round(l["mse_adaround"], 6))
               for l in layers]
    assert sum(better) > len(better) / 2, f"AdaRound worse than nearest in most: {summary}"
    assert all(l["mse_adaround"] <= 1.5 * l["mse_nearest"] for l in layers), summary


@test
def test_activation_and_bits():
    result, text, out = run_small()
    acts = {l["name"]: l["activation"] for l in result["layers"]}
    assert list(acts.values()) == ["relu", "relu", "relu", None], acts
    bits = {l["name"]: l["bits"] for l in result["layers"]}
    assert list(bits.values()) == [8, 3, 3, 8], bits
    _, meta = qx.read_safetensors(out)
    quant = json.loads(meta["qevo.quant"])
    assert quant["bits"] == 3 and quant["granularity"] == "per_channel", quant
    assert quant["first_bits"] == 8 and quant["last_bits"] == 8, quant
    assert [e["bits"] for e in quant["layers"].values()] == [8, 3, 3, 8], quant
    for name in bits:
        assert any(line.split()[:3] == [name, str(bits[name]), "300"]
                   for line in text.splitlines()), f"no result line for {name}:\n{text}"
    result, _, out = run_ae()
    assert [l["activation"] for l in result["layers"]] == ["relu", "sigmoid"], result
    quant = json.loads(qx.read_safetensors(out)[1]["qevo.quant"])
    assert quant["granularity"] == "per_tensor" and quant["first_bits"] == 0, quant
    assert [e["bits"] for e in quant["layers"].values()] == [4, 4], quant
    assert all(qx.read_safetensors(out)[0][f"{n}.scales"].shape == (1,)
               for n in quant["layers"])


@test
def test_calibration_scores_printed():
    result, text, _ = run_small()
    for label in ("float", "nearest", "adaround"):
        assert set(result["scores"][label]) == {"cross-entropy", "accuracy"}, result["scores"]
        assert f"calibration set ({len(SPLITS_UNION)} images) {label}" in text, text
    assert "mse" in run_ae()[0]["scores"]["adaround"]
    assert "total wall time" in text


@test
def test_qevo_eval_loads_it():
    if not os.access(QEVO, os.X_OK):
        print(f"  (skipped: {QEVO} not built)")
        return
    result, _, out = run_small()
    n = 300
    proc = subprocess.run([QEVO, "eval", out, "--data", "fashion-mnist:train", "--limit",
                           str(n), "--json", "--threads", "1"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    images, labels = fmnist.load("train")
    module = qx.load(out)
    with torch.no_grad():
        y = module(adaround.normalise(images[:n], module.mean, module.std))
    acc = (y.argmax(1).numpy() == labels[:n]).mean()
    ce = torch.nn.functional.cross_entropy(y, torch.from_numpy(labels[:n])).item()
    assert abs(got["accuracy"] - acc) <= 2 / n, (got, acc)
    assert abs(got["cross_entropy"] - ce) <= 1e-4 * max(1.0, ce), (got, ce)


@test
def test_bad_input_refused():
    model = exported("small")
    base = ["--model", model, "--bits", "3", "--iterations", "2", "--out", tmp("bad.out")]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = adaround.main(base + ["--calibration-size", "10", "--data",
                                   "fashion-mnist:test"])
    assert rc == 1 and "fashion-mnist:test" in err.getvalue(), err.getvalue()
    bad = tmp("bad_splits.json")
    for content, expect in (({"fitness": [[1, 2], [60000]]}, "60000"),
                            ({"fitness": [[1, "x"]]}, "fitness"),
                            ({"dataset": "fashion-mnist:test", "fitness": [[1]]}, "test")):
        with open(bad, "w") as f:
            json.dump(content, f)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = adaround.main(base + ["--calibration", bad])
        assert rc == 1 and expect in err.getvalue(), (content, err.getvalue())
    assert not os.path.exists(tmp("bad.out")), "output written despite the error"
    for extra in (["--calibration-size", "10", "--bits", "9"], [],
                  ["--calibration-size", "10", "--grid", "affine"],
                  ["--calibration-size", "10", "--scales", "minmax"]):
        with contextlib.redirect_stderr(io.StringIO()):
            try:
                adaround.parse_args(base + extra)
            except SystemExit as e:
                assert e.code != 0
            else:
                raise AssertionError(f"accepted {extra}")


@test
def test_command_line():
    """The script runs as a program and writes a file that passes qevo_ref's check."""
    out = tmp("cli.safetensors")
    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, "adaround.py"), "--model",
                           exported("ae"), "--bits", "3", "--calibration-size", "64",
                           "--iterations", "20", "--batch", "16", "--out", out,
                           "--threads", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not qr.check_quantized_file(out)
    assert "total wall time" in proc.stdout, proc.stdout


def main():
    global TMP
    TMP = tempfile.mkdtemp(prefix="qevo_test_adaround.")
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
    print(f"test_adaround: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
