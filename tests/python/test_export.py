#!/usr/bin/python3
"""Tests of scripts/qevo_export.py and scripts/qevo_ref.py (plain asserts, no pytest).

    /usr/bin/python3 tests/python/test_export.py

Exports the reference models with random weights and random batch-norm statistics,
loads them back and compares outputs; checks the reference quantizer and folding;
checks that unsupported modules and damaged files are refused with clear errors.
The last line is "test_export: N passed, M failed"; the exit status is non-zero on failure.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(ROOT, "scripts")
sys.path.insert(0, SCRIPTS)
import models  # noqa: E402
import qevo_export as qx  # noqa: E402
import qevo_ref as qr  # noqa: E402

torch.set_num_threads(1)
SHAPE = (1, 28, 28)
TMP = None  # a temporary directory, set by main()
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def tmp(name):
    return os.path.join(TMP, name)


def randomize(model, seed):
    """Random batch-norm statistics (and affine parameters), so folding is exercised."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.25)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=gen) * 0.3)
    return model.eval()


def seeded(factory, seed):
    """factory() with weights drawn from torch's RNG seeded with seed."""
    torch.manual_seed(seed)
    return randomize(factory(), seed)


REFERENCE_MODELS = {
    "vgg": lambda: models.VGG(),
    "resnet20": lambda: models.ResNet20(shortcut="projection"),
    "resnet20A": lambda: models.ResNet20(shortcut="A"),
    "autoencoder": lambda: models.AutoEncoder(),
}


EXPORTED = {}


def export_reference(name, seed=1):
    """Exports one reference model (random weights) once; returns (model, path)."""
    path = tmp(f"{name}.safetensors")
    if name in EXPORTED:
        return EXPORTED[name], path
    model = EXPORTED[name] = seeded(REFERENCE_MODELS[name], seed)
    task = "reconstruct" if name == "autoencoder" else "classify"
    qx.export(model, SHAPE, path, mean=[0.286], std=[0.353], task=task,
              description=f"test {name}")
    return model, path


def max_diff(a, b):
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    return (a - b).abs().max().item()


def outputs(modules, x):
    with torch.no_grad():
        return [m(x.clone()) for m in modules]


def random_input(n=4, seed=0):
    return torch.randn((n,) + SHAPE, generator=torch.Generator().manual_seed(seed))


def assert_close(got, want, rel, what):
    d, scale = max_diff(got, want), want.abs().max().item()
    assert d <= rel * scale, f"{what}: max |diff| {d:g} > {rel:g} * max|out| {scale:g}"


# ----------------------------------------------------------------- export / load

def _roundtrip(name):
    model, path = export_reference(name)
    loaded = qx.load(path)
    x = random_input()
    want, got = outputs([model, loaded], x)
    assert_close(got, want, 1e-5, f"{name}: loaded vs original")
    tensors, meta = qx.read_safetensors(path)
    graph = json.loads(meta["qevo.graph"])
    assert graph["version"] == 1 and graph["input"]["shape"] == list(SHAPE), graph["input"]
    assert meta["qevo.description"] == f"test {name}", meta.get("qevo.description")
    state = model.state_dict()
    for tname, t in tensors.items():
        assert tname in state, f"{name}: tensor '{tname}' is not a state_dict name"
        assert t.dtype == np.float32, f"{name}: tensor '{tname}' is {t.dtype}"
        assert np.array_equal(t, state[tname].numpy()), f"{name}: '{tname}' values differ"
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    ops = [l["op"] for l in graph["layers"]]
    assert ops.count("batchnorm") == n_bn, f"{name}: {ops.count('batchnorm')} batchnorm " \
                                           f"layers for {n_bn} BatchNorm2d modules"
    return graph


@test
def test_vgg_roundtrip():
    graph = _roundtrip("vgg")
    assert [l["op"] for l in graph["layers"]].count("maxpool") == 3
    assert graph["output"] == graph["layers"][-1]["name"]


@test
def test_resnet20_projection_roundtrip():
    graph = _roundtrip("resnet20")
    ops = [l["op"] for l in graph["layers"]]
    assert ops.count("add") == 9 and "global_avgpool" in ops and "flatten" in ops, ops
    assert all("inputs" in l for l in graph["layers"] if l["op"] == "add")


@test
def test_resnet20_option_a_roundtrip():
    graph = _roundtrip("resnet20A")
    sub = [l for l in graph["layers"] if l["op"] == "subsample"]
    pad = [l for l in graph["layers"] if l["op"] == "pad_channels"]
    assert len(sub) == 2 and all(l["stride"] == [2, 2] for l in sub), sub
    assert [(l["before"], l["after"]) for l in pad] == [(8, 8), (16, 16)], pad


@test
def test_autoencoder_roundtrip():
    graph = _roundtrip("autoencoder")
    convt = [l for l in graph["layers"] if l["op"] == "convtranspose2d"]
    assert len(convt) == 2 and all(l["output_padding"] == [1, 1] for l in convt), convt
    assert graph["task"] == "reconstruct"


@test
def test_file_layout():
    _, path = export_reference("vgg")
    with open(path, "rb") as f:
        blob = f.read()
    (hlen,) = struct.unpack("<Q", blob[:8])
    assert hlen % 8 == 0, f"header length {hlen} is not a multiple of 8"
    header = json.loads(blob[8:8 + hlen])
    ends = sorted(e["data_offsets"] for k, e in header.items() if k != "__metadata__")
    assert ends[0][0] == 0 and ends[-1][1] == len(blob) - 8 - hlen, "data area not tiled"
    assert all(a[1] == b[0] for a, b in zip(ends, ends[1:])), "gaps between tensors"
    leftovers = [n for n in os.listdir(TMP) if n.endswith(".tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


class Variety(nn.Module):
    """Many spellings of the supported ops in one module."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding="same")
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, (3, 1), stride=(1, 2), padding=(1, 0), bias=False)
        self.bn2 = nn.BatchNorm2d(8, affine=False)
        self.ct = nn.ConvTranspose2d(8, 8, 2, stride=2, bias=False)
        self.bn3 = nn.BatchNorm2d(8, eps=1e-3)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.drop = nn.Dropout2d(0.5)
        self.ident = nn.Identity()
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.c1(x)))                    # 8x28x28
        y = F.relu(self.bn2(self.c2(x)), inplace=True)          # 8x28x14
        y = self.bn3(self.ct(y)).sigmoid()                      # 8x56x28
        y = F.max_pool2d(y, 2, 2)                                # 8x28x14
        z = torch.add(x[:, :, :, ::2], y)                       # 8x28x14
        z = F.avg_pool2d(self.pool(z), kernel_size=(2, 1))      # 8x7x7
        z = F.pad(self.drop(z), (0, 0, 0, 0, 4, 4), value=0.0)  # 16x7x7
        z = self.ident(F.max_pool2d(z, 2, padding=1))           # 16x4x4
        a = z.view(z.size(0), -1).relu()
        b = torch.flatten(z, 1)
        h = F.dropout(a + b, 0.2, self.training)
        return self.fc2(F.relu(self.fc1(h)))


@test
def test_variety_of_spellings():
    model = seeded(Variety, 3)
    path = tmp("variety.safetensors")
    graph = qx.export(model, SHAPE, path, 0.5, 0.5)
    x = random_input()
    want, got = outputs([model, qx.load(path)], x)
    assert_close(got, want, 1e-5, "variety model")
    ops = {l["op"] for l in graph["layers"]}
    want_ops = {"conv2d", "convtranspose2d", "batchnorm", "relu", "sigmoid", "maxpool",
                "avgpool", "add", "subsample", "pad_channels", "flatten", "linear"}
    assert want_ops <= ops, f"missing ops {want_ops - ops}"
    bn2 = next(l for l in graph["layers"] if l["name"] == "bn2")
    assert bn2["weight"] == "bn2.weight" and bn2["bias"] == "bn2.bias", bn2
    c1 = next(l for l in graph["layers"] if l["name"] == "c1")
    assert c1["padding"] == [1, 1], c1
    # the folded float model is close to the original too
    folded = qr.build_folded_module(path)
    assert_close(outputs([folded], x)[0], want, 1e-4, "variety folded")


class MeanPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.conv(x).mean([2, 3]))


@test
def test_mean_as_global_pool():
    model = seeded(MeanPool, 4)
    path = tmp("meanpool.safetensors")
    graph = qx.export(model, SHAPE, path, [0.0], [1.0])
    assert [l["op"] for l in graph["layers"]] == ["conv2d", "global_avgpool", "flatten",
                                                 "linear"], graph["layers"]
    x = random_input()
    want, got = outputs([model, qx.load(path)], x)
    assert_close(got, want, 1e-5, "mean pool model")


# ----------------------------------------------------------------- refused modules

class Wrap(nn.Module):
    """conv -> body -> flatten -> linear, the body being the op under test."""

    def __init__(self, body, channels=4):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.body = body

    def forward(self, x):
        return self.body(self.conv(x)).flatten(1)


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class ScaleParam(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.scale


class BnOnInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(1)
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return self.conv(self.bn(x)).flatten(1)


class SharedInplace(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        y = self.conv(x)
        z = F.relu(y, inplace=True)
        return (y + z).flatten(1)


class FixedBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return self.conv(x).view(2, -1)


class Reused(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        return self.conv(self.conv(x)).flatten(1)


REFUSED = {  # name -> (module, words the error message must contain)
    "GELU module": (Wrap(nn.GELU()), ["GELU", "body"]),
    "F.gelu": (Wrap(Fn(F.gelu)), ["gelu"]),
    "grouped conv": (Wrap(nn.Conv2d(4, 4, 3, groups=2)), ["Conv2d", "groups=2"]),
    "dilated conv": (Wrap(nn.Conv2d(4, 4, 3, dilation=2)), ["Conv2d", "dilation"]),
    "reflect padding": (Wrap(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")),
                        ["Conv2d", "padding_mode"]),
    "maxpool ceil_mode": (Wrap(nn.MaxPool2d(3, 2, ceil_mode=True)), ["MaxPool2d",
                                                                      "ceil_mode"]),
    "F.max_pool2d ceil_mode": (Wrap(Fn(lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True))),
                               ["max_pool2d", "ceil_mode"]),
    "maxpool dilation": (Wrap(nn.MaxPool2d(2, dilation=2)), ["MaxPool2d", "dilation"]),
    "avgpool no pad count": (Wrap(nn.AvgPool2d(3, 1, 1, count_include_pad=False)),
                             ["AvgPool2d", "count_include_pad"]),
    "adaptive pool 2x2": (Wrap(nn.AdaptiveAvgPool2d(2)), ["AdaptiveAvgPool2d"]),
    "grouped conv transpose": (Wrap(nn.ConvTranspose2d(4, 4, 3, groups=4)),
                               ["ConvTranspose2d", "groups"]),
    "leaky relu": (Wrap(nn.LeakyReLU()), ["LeakyReLU"]),
    "parameter used directly": (Wrap(ScaleParam()), ["body.scale", "mul"]),
    "cat": (Wrap(Fn(lambda x: torch.cat([x, x], 1))), ["cat"]),
    "broadcast add": (Wrap(Fn(lambda x: x + F.adaptive_avg_pool2d(x, 1))), ["add", "shapes"]),
    "add a constant": (Wrap(Fn(lambda x: x + 1)), ["add", "constant"]),
    "crop": (Wrap(Fn(lambda x: x[:, :, 1:, 1:])), ["getitem", "index"]),
    "negative pad": (Wrap(Fn(lambda x: F.pad(x, (0, 0, 0, 0, -1, 0)))), ["pad"]),
    "spatial pad": (Wrap(Fn(lambda x: F.pad(x, (1, 1, 0, 0)))), ["pad"]),
    "batchnorm on input": (BnOnInput(), ["BatchNorm2d", "bn", "follow"]),
    "in-place relu on a shared tensor": (SharedInplace(), ["relu", "in place"]),
    "fixed batch view": (FixedBatch(), ["view", "batch"]),
    "module called twice": (Reused(), ["conv", "more than once"]),
    "batchnorm1d": (Wrap(nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4 * 28 * 28))),
                    ["BatchNorm1d"]),
    "linear on 4-d": (Wrap(nn.Linear(28, 5)), ["Linear", "flatten"]),
    "training dropout": (Wrap(Fn(lambda x: F.dropout(x, 0.5))), ["dropout", "training"]),
}


@test
def test_refused_modules():
    failures = []
    for name, (module, words) in REFUSED.items():
        path = tmp("refused.safetensors")
        try:
            qx.export(module, SHAPE, path, [0.0], [1.0])
            failures.append(f"{name}: exported without error")
        except qx.ExportError as e:
            missing = [w for w in words if w.lower() not in str(e).lower()]
            if missing:
                failures.append(f"{name}: message lacks {missing}: {e}")
        if os.path.exists(path):
            failures.append(f"{name}: a file was written")
            os.unlink(path)
    assert not failures, "\n  ".join([""] + failures)


@test
def test_bad_export_arguments():
    model = seeded(models.AutoEncoder, 0)
    for kw, word in (({"task": "segment"}, "task"), ({"mean": [0.1, 0.2]}, "mean"),
                     ({"std": [0.0]}, "std"), ({"task": "classify", "mean": [float("nan")]},
                                               "mean")):
        args = dict(mean=[0.0], std=[1.0])
        args.update(kw)
        try:
            qx.export(model, SHAPE, tmp("bad.safetensors"), **args)
        except qx.ExportError as e:
            assert word in str(e), f"{kw}: {e}"
        else:
            raise AssertionError(f"export accepted {kw}")
    try:  # a classifier cannot be a reconstruction model
        qx.export(models.VGG(), SHAPE, tmp("bad.safetensors"), [0.0], [1.0],
                  task="reconstruct")
    except qx.ExportError as e:
        assert "reconstruct" in str(e), str(e)
    else:
        raise AssertionError("VGG exported as a reconstruction model")
    assert model.training is False and not os.path.exists(tmp("bad.safetensors"))
    model.train()
    qx.export(model, SHAPE, tmp("ae_train_mode.safetensors"), [0.0], [1.0],
              task="reconstruct")
    assert model.training, "export did not restore training mode"


# ----------------------------------------------------------------- hostile files

def expect_format_error(path, words, what):
    try:
        qx.load(path)
    except qx.FormatError as e:
        missing = [w for w in words if w.lower() not in str(e).lower()]
        assert not missing, f"{what}: message lacks {missing}: {e}"
        return
    raise AssertionError(f"{what}: loaded without error")


@test
def test_truncated_files():
    _, path = export_reference("resnet20A")
    with open(path, "rb") as f:
        blob = f.read()
    (hlen,) = struct.unpack("<Q", blob[:8])
    for cut in (0, 5, 8, 8 + hlen // 2, 8 + hlen, 8 + hlen + 100, len(blob) - 1):
        bad = tmp("truncated.safetensors")
        with open(bad, "wb") as f:
            f.write(blob[:cut])
        expect_format_error(bad, ["truncated", bad], f"file cut at {cut} of {len(blob)} bytes")


def write_variant(name, blob_fn=None, meta_fn=None, tensors_fn=None):
    """A copy of the exported AutoEncoder with its header, graph or tensors changed."""
    _, path = export_reference("autoencoder")
    tensors, meta = qx.read_safetensors(path)
    if meta_fn:
        graph = json.loads(meta["qevo.graph"])
        meta = meta_fn(meta, graph)
    if tensors_fn:
        tensors_fn(tensors)
    out = tmp(name)
    qx.write_safetensors(out, tensors, meta)
    if blob_fn:
        with open(out, "rb") as f:
            blob = f.read()
        with open(out, "wb") as f:
            f.write(blob_fn(blob))
    return out


def with_graph(change):
    def meta_fn(meta, graph):
        change(graph)
        return dict(meta, **{"qevo.graph": json.dumps(graph)})
    return meta_fn


@test
def test_hostile_files():
    cases = [
        ("huge header length", dict(blob_fn=lambda b: struct.pack("<Q", 2 ** 62) + b[8:]),
         ["header length"]),
        ("invalid JSON", dict(blob_fn=lambda b: b[:8] + b"[" + b[9:]), ["JSON"]),
        ("no graph", dict(meta_fn=lambda m, g: {"qevo.description": "x"}), ["qevo.graph"]),
        ("graph not JSON", dict(meta_fn=lambda m, g: {"qevo.graph": "[oops"}), ["JSON"]),
        ("unknown op", dict(meta_fn=with_graph(lambda g: g["layers"][1].update(op="gelu"))),
         ["gelu", "encoder_1"]),
        ("version 2", dict(meta_fn=with_graph(lambda g: g.update(version=2))), ["version"]),
        ("forward reference", dict(meta_fn=with_graph(
            lambda g: g["layers"][0].update(inputs=["decoder_5"]))), ["decoder_5"]),
        ("missing tensor", dict(tensors_fn=lambda t: t.pop("encoder.2.weight")),
         ["encoder.2.weight", "not in the file"]),
        ("wrong dtype", dict(tensors_fn=lambda t: t.update(
            {"encoder.0.bias": t["encoder.0.bias"].astype(np.float64)})), ["float32"]),
        ("channel mismatch", dict(tensors_fn=lambda t: t.update(
            {"encoder.2.weight": np.zeros((64, 31, 3, 3), np.float32)})), ["encoder_2"]),
        ("bad stride", dict(meta_fn=with_graph(lambda g: g["layers"][0].update(stride=[0, 1]))),
         ["stride"]),
        ("bad output", dict(meta_fn=with_graph(lambda g: g.update(output="nope"))),
         ["output"]),
        ("duplicate name", dict(meta_fn=with_graph(
            lambda g: g["layers"][1].update(name="encoder_0"))), ["duplicate"]),
    ]
    for name, kw, words in cases:
        path = write_variant(name.replace(" ", "_") + ".safetensors", **kw)
        expect_format_error(path, words, name)


@test
def test_overlapping_tensors():
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = tmp("overlap.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + bytes(12))
    try:
        qx.read_safetensors(path)
    except qx.FormatError as e:
        assert "overlap" in str(e), str(e)
    else:
        raise AssertionError("overlapping tensors accepted")


@test
def test_safetensors_roundtrip():
    tensors = {"f32": np.arange(6, dtype=np.float32).reshape(2, 3),
               "i8": np.array([-128, 0, 127], np.int8), "empty": np.zeros((0, 3), np.float32),
               "f64": np.array([1.5]), "u8": np.array([[255]], np.uint8),
               "i64": np.array([2 ** 40], np.int64), "scalar": np.float32(3.0),
               "big_endian": np.array([1.0, 2.0], ">f4")}
    meta = {"qevo.description": "snowman \u2603", "k": "{\"json\": [1]}"}
    path = tmp("roundtrip.safetensors")
    qx.write_safetensors(path, tensors, meta)
    got, got_meta = qx.read_safetensors(path)
    assert got_meta == meta, got_meta
    assert list(got) == list(tensors), list(got)
    for k, v in tensors.items():
        v = np.asarray(v)
        assert got[k].shape == v.shape and np.array_equal(got[k], v), k
        assert got[k].dtype == v.dtype.newbyteorder("="), (k, got[k].dtype)
    with open(path, "rb") as f:
        assert struct.unpack("<Q", f.read(8))[0] % 8 == 0


# ----------------------------------------------------------------- quantizer

@test
def test_quantize_codes_in_range():
    rng = np.random.default_rng(0)
    for bits in range(2, 9):
        qmax = 2 ** (bits - 1) - 1
        for per_channel in (True, False):
            for axis, shape in ((0, (6, 3, 3, 3)), (1, (3, 6, 3, 3)), (0, (5, 7))):
                w = (rng.standard_normal(shape) * rng.uniform(0.01, 3)).astype(np.float32)
                codes, scales = qr.quantize(w, bits, per_channel, axis)
                assert codes.dtype == np.int8 and codes.shape == w.shape
                assert np.abs(codes.astype(int)).max() <= qmax, (bits, per_channel)
                assert scales.dtype == np.float32
                assert scales.shape == ((shape[axis],) if per_channel else (1,))
                if per_channel:
                    m = np.abs(np.moveaxis(w, axis, 0)).reshape(shape[axis], -1).max(1)
                else:
                    m = np.abs(w).max(keepdims=True).reshape(1)
                assert np.array_equal(scales, m / np.float32(qmax)), "scale != max/qmax"
                # the largest weight of each channel maps to +-qmax
                assert np.abs(codes.astype(int)).max() == qmax
                deq = qr.dequantize(codes, scales, axis)
                bound = scales.max() / 2 * 1.0001
                assert np.abs(deq - w).max() <= bound, "error above scale / 2"


@test
def test_quantize_ties_round_to_even():
    w = np.array([7, 2.5, 3.5, -2.5, -3.5, 0.5, 1.5, -0.5], np.float32)
    codes, scales = qr.quantize(w, 4, False)  # qmax 7, scale exactly 1
    assert scales.tolist() == [1.0], scales
    assert codes.tolist() == [7, 2, 4, -2, -4, 0, 2, 0], codes.tolist()


@test
def test_quantize_divides():
    # W / scale is exactly 2.5 here, but W * (1 / scale) rounds to 2.5000002 (code 3)
    w = np.array([np.float32("0.8243063"), np.float32("0.68692195")], np.float32)
    s = w[0] / np.float32(3)
    assert w[1] / s == np.float32(2.5) and w[1] * (np.float32(1) / s) != np.float32(2.5)
    codes, scales = qr.quantize(w, 3, False)
    assert scales[0] == s and codes.tolist() == [3, 2], codes.tolist()


@test
def test_quantize_zero_channel():
    w = np.array([[0, 0, 0], [1, -2, 0.5], [-0.0, 0.0, 0.0]], np.float32)
    codes, scales = qr.quantize(w, 3, True, 0)
    assert scales.tolist() == [1.0, float(np.float32(2) / np.float32(3)), 1.0], scales
    assert codes[0].tolist() == [0, 0, 0] and codes[2].tolist() == [0, 0, 0], codes
    codes, scales = qr.quantize(np.zeros((2, 3), np.float32), 8, False)
    assert scales.tolist() == [1.0] and not codes.any()
    # a max so small that max / qmax underflows to 0 is treated like 0: scale 1
    tiny = np.array([np.float32(1e-45), 0], np.float32)
    codes, scales = qr.quantize(tiny, 8, False)
    assert scales.tolist() == [1.0] and codes.tolist() == [0, 0], (scales, codes)


@test
def test_quantize_rejects_bad_input():
    for bits in (1, 9, 4.0):
        try:
            qr.quantize(np.ones(3, np.float32), bits, False)
        except ValueError:
            continue
        raise AssertionError(f"bits={bits!r} accepted")
    try:
        qr.quantize(np.array([1, np.nan], np.float32), 4, False)
    except ValueError:
        pass
    else:
        raise AssertionError("NaN weight accepted")


@test
def test_fold_exact_float32():
    _, path = export_reference("resnet20")
    tensors, meta = qx.read_safetensors(path)
    graph = qx.parse_graph(meta)
    layers, folded = qr.fold_graph(graph, tensors)
    assert not any(l["op"] == "batchnorm" for l in layers)
    assert len(tensors) < len(folded) and "conv1.weight" in tensors
    f32 = np.float32
    g, b = tensors["bn1.weight"], tensors["bn1.bias"]
    mu, var = tensors["bn1.running_mean"], tensors["bn1.running_var"]
    k = np.empty_like(g)
    for c in range(len(g)):  # element by element, one float32 op at a time
        k[c] = f32(g[c] / f32(np.sqrt(f32(var[c] + f32(1e-5)))))
    conv1 = next(l for l in layers if l["name"] == "conv1")
    w = folded[conv1["weight"]]
    assert np.array_equal(w, tensors["conv1.weight"] * k[:, None, None, None])
    assert np.array_equal(folded[conv1["bias"]], b + (f32(0) - mu) * k)
    relu = next(l for l in layers if l["name"] == "relu")
    assert relu["inputs"] == ["conv1"], relu
    add = next(l for l in layers if l["name"] == "add")
    assert add["inputs"] == ["layers_0_conv2", "relu"], add


@test
def test_fold_refuses_unfoldable():
    graph = {"version": 1, "task": "classify",
             "input": {"shape": [1, 4, 4], "mean": [0.0], "std": [1.0]},
             "layers": [{"name": "c", "op": "conv2d", "weight": "w", "bias": None,
                         "stride": [1, 1], "padding": [0, 0]},
                        {"name": "r", "op": "relu"},
                        {"name": "bn", "op": "batchnorm", "weight": "g", "bias": "b",
                         "mean": "m", "var": "v", "eps": 1e-5}]}
    ones = np.ones(2, np.float32)
    tensors = {"w": np.ones((2, 1, 1, 1), np.float32), "g": ones, "b": ones, "m": ones,
               "v": ones}
    try:
        qr.fold_graph(graph, tensors)
    except qr.FoldError as e:
        assert "'bn'" in str(e), str(e)
    else:
        raise AssertionError("a batchnorm after relu was folded")
    graph["layers"][1:] = [graph["layers"][2], {"name": "a", "op": "add", "inputs": ["c", "bn"]}]
    try:
        qr.fold_graph(graph, tensors)
    except qr.FoldError as e:
        assert "also used" in str(e), str(e)
    else:
        raise AssertionError("a batchnorm whose conv has another user was folded")


@test
def test_quantized_files_load_like_reference():
    for name, bits, per_channel in (("vgg", 4, True), ("resnet20A", 3, False),
                                    ("resnet20", 2, True), ("autoencoder", 5, True)):
        _, path = export_reference(name)
        qpath = tmp(f"{name}.q{bits}.safetensors")
        qr.write_quantized(path, qpath, bits, per_channel, first_bits=8, last_bits=8)
        problems = qr.check_quantized_file(qpath, path)
        assert not problems, f"{name}: {problems}"
        loaded = qx.load(qpath)
        assert loaded.quant["granularity"] == ("per_channel" if per_channel else "per_tensor")
        assert not any(op == "batchnorm" for op in loaded.ops), f"{name}: batchnorm left"
        ref = qr.build_quantized_module(path, bits, per_channel, first_bits=8, last_bits=8)
        x = random_input(3)
        got, want = outputs([loaded, ref], x)
        assert_close(got, want, 1e-6, f"{name} quantized file vs build_quantized_module")
        # the reference's layers, bits and dequantized weights agree with quantize_model
        q = qr.quantize_model(path, bits, per_channel, first_bits=8, last_bits=8)
        names = list(q)
        assert [loaded.quant["layers"][n]["bits"] for n in names] == \
            [8] + [bits] * (len(names) - 2) + [8], f"{name}: per-layer bits"
        tensors, _ = qx.read_safetensors(qpath)
        for n, (codes, scales, deq) in q.items():
            assert np.array_equal(tensors[f"{n}.codes"], codes), n
            assert np.array_equal(tensors[f"{n}.weight"], deq), n


@test
def test_quantized_close_to_float_at_8_bits():
    model, path = export_reference("vgg")
    ref = qr.build_quantized_module(path, 8, True)
    x = random_input(8)
    want, got = outputs([model, ref], x)
    assert_close(got, want, 0.05, "8-bit per-channel VGG vs float")


@test
def test_check_detects_tampering():
    _, path = export_reference("autoencoder")
    qpath = tmp("ae.q4.safetensors")
    qr.write_quantized(path, qpath, 4, True)
    tensors, meta = qx.read_safetensors(qpath)
    tensors["encoder_2.codes"] = tensors["encoder_2.codes"].copy()
    tensors["encoder_2.codes"].flat[0] ^= 1
    bad = tmp("ae.q4.bad.safetensors")
    qx.write_safetensors(bad, tensors, meta)
    problems = qr.check_quantized_file(bad)
    assert problems and "encoder_2" in problems[0], problems


@test
def test_inspect_command():
    _, path = export_reference("resnet20A")
    run = subprocess.run([sys.executable, os.path.join(SCRIPTS, "qevo_export.py"),
                          "--inspect", path], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "pad_channels" in run.stdout and "layers_3_conv1" in run.stdout, run.stdout[:500]
    bad = tmp("garbage.safetensors")
    with open(bad, "wb") as f:
        f.write(b"not a model")
    run = subprocess.run([sys.executable, os.path.join(SCRIPTS, "qevo_export.py"),
                          "--inspect", bad], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "garbage.safetensors" in run.stderr, run.stderr


def main():
    global TMP
    TMP = tempfile.mkdtemp(prefix="qevo_test_export.")
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
    print(f"test_export: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
