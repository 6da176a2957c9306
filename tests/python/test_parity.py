#!/usr/bin/python3
"""qevo against PyTorch on the same weights and images (the 10,000 Fashion-MNIST test images).

- float: qevo's outputs match PyTorch's within 1e-4 x max|output|;
- at 8, 4, 3 and 2 bits, per channel and per tensor: the codes, scales, folded weights
  and biases qevo writes are bit-identical to scripts/qevo_ref.py's, and the test
  accuracies agree within 2 of 10,000 images, every disagreement being a near-tie (the
  top-2 logit gap is within the two implementations' output difference on that image);
  an autoencoder's MSE agrees within 1e-4 relative;
- 2 bits with the first and last layers at 8 bits gives those layers 8 bits;
- the asymmetric grid and the mse scale search (2 and 3 bits per channel for every
  combination but symmetric/max, 2 bits per tensor and 2 bits with the first and last
  layers at 8 bits, asymmetric/mse): codes, scales, code_min, weights and biases
  bit-identical to the reference; VGG at 2 bits per channel, asymmetric/mse: test
  accuracies agree as above;
- the CIFAR "option A" ResNet shortcut (subsample + zero channels) runs as in PyTorch.

Needs Debian's python3-torch (scripts/install-deps.sh installs it). Without torch this
test fails and says so; it never passes silently.
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

NAME = "test_parity"
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {what}")
    else:
        failed += 1
        print(f"FAIL {what}")


def finish():
    print(f"{NAME}: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


try:
    import numpy as np
    import torch
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"{NAME}: cannot import torch/numpy ({e}). Install Debian's python3-torch and "
          "python3-numpy: scripts/install-deps.sh (or apt-get install python3-torch "
          "python3-numpy), and run this test with /usr/bin/python3.")
    failed = 1
    finish()

import fmnist  # noqa: E402
import qevo_export  # noqa: E402
import qevo_ref  # noqa: E402
import models  # noqa: E402

BUILD = os.environ.get("BUILD", "build")
QEVO = os.path.join(ROOT, BUILD, "qevo")
MODELS = os.environ.get("QEVO_MODELS_DIR", os.path.join(ROOT, "examples", "models"))
SHIPPED = ("vgg", "resnet20", "autoencoder")
torch.set_num_threads(int(os.environ.get("OPENBLAS_NUM_THREADS", "1")))


def run_qevo(args):
    r = subprocess.run([QEVO] + args, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"qevo {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


def qevo_outputs(model, tmp, data="fashion-mnist:test", quant=()):
    """(outputs (N, D), the eval JSON) from qevo eval --dump-outputs."""
    out = os.path.join(tmp, "out.npy")
    text = run_qevo(["eval", model, "--data", data, "--json", "--dump-outputs", out,
                     "--batch", "500"] + list(quant))
    return np.load(out), json.loads(text)


def torch_outputs(module, x, batch=500):
    module.eval()
    with torch.no_grad():
        return torch.cat([module(x[i:i + batch]) for i in range(0, len(x), batch)]) \
            .reshape(len(x), -1).numpy()


def compare_float(name, path, tmp, x, labels):
    got, _ = qevo_outputs(path, tmp)
    want = torch_outputs(qevo_export.load(path), x)
    diff = np.abs(got - want).max()
    scale = np.abs(want).max()
    check(diff <= 1e-4 * scale,
          f"{name} float: max |qevo - torch| = {diff:.3g} <= 1e-4 x {scale:.3g}")


def compare_predictions(what, got, want, labels):
    """Accuracies within 2 images; each disagreement a near-tie."""
    pg, pw = got.argmax(1), want.argmax(1)
    cg, cw = int((pg == labels).sum()), int((pw == labels).sum())
    check(abs(cg - cw) <= 2, f"{what}: accuracy qevo {cg}/10000, torch {cw}/10000")
    for i in np.nonzero(pg != pw)[0]:
        gap = abs(want[i, pg[i]] - want[i, pw[i]])
        noise = np.abs(got[i] - want[i]).max()
        check(gap <= 2 * noise + 1e-6,
              f"{what}: image {i} predicted {pg[i]} by qevo, {pw[i]} by torch: top-2 gap "
              f"{gap:.3g} within 2 x output difference {noise:.3g} (a near-tie)")


def compare_quantized(name, path, tmp, x, labels, task):
    for bits in (8, 4, 3, 2):
        for per_channel in (True, False):
            gran = "per-channel" if per_channel else "per-tensor"
            what = f"{name} {bits}-bit {gran}"
            flags = ["--bits", str(bits), "--" + gran]
            qfile = os.path.join(tmp, "q.safetensors")
            run_qevo(["quantize", path, "--out", qfile] + flags)
            problems = qevo_ref.check_quantized_file(qfile, float_path=path)
            check(not problems, f"{what}: codes, scales, weights, biases bit-identical to "
                                f"the reference" + ("" if not problems else f": {problems[:3]}"))
            got, result = qevo_outputs(path, tmp, quant=flags)
            ref = qevo_ref.build_quantized_module(path, bits, per_channel)
            want = torch_outputs(ref, x)
            if task == "classify":
                compare_predictions(what, got, want, labels)
            else:
                target = x.reshape(len(x), -1).numpy()
                mse_q = float(((got - target) ** 2).mean())
                mse_t = float(((want - target) ** 2).mean())
                check(abs(mse_q - mse_t) <= 1e-4 * mse_t,
                      f"{what}: MSE qevo {mse_q:.6g}, torch {mse_t:.6g}")


def check_first_last(name, path, tmp):
    qfile = os.path.join(tmp, "q.safetensors")
    run_qevo(["quantize", path, "--out", qfile, "--bits", "2", "--first-bits", "8",
              "--last-bits", "8"])
    problems = qevo_ref.check_quantized_file(qfile, float_path=path)
    _, meta = qevo_export.read_safetensors(qfile)
    layers = json.loads(meta["qevo.quant"])["layers"]
    bits = [e["bits"] for e in layers.values()]
    want = qevo_ref.quantize_model(path, 2, True, first_bits=8, last_bits=8)
    check(not problems and bits[0] == 8 and bits[-1] == 8 and set(bits[1:-1]) <= {2}
          and len(want) == len(bits),
          f"{name} 2-bit, first and last at 8: layer bits {bits} match the reference")


GRID_COMBOS = (("asymmetric", "max"), ("symmetric", "mse"), ("asymmetric", "mse"))


def grid_flags(bits, gran, grid, scales, first_last=None):
    flags = ["--bits", str(bits), "--" + gran, "--grid", grid, "--scales", scales]
    if first_last:
        flags += ["--first-bits", str(first_last), "--last-bits", str(first_last)]
    return flags


def check_grids(name, path, tmp):
    """qevo quantize with the other grids and scale searches: codes, scales, code_min,
    weights and biases bit-identical to the reference; grid and scales recorded."""
    runs = [(bits, "per-channel", g, s, None) for bits in (2, 3) for g, s in GRID_COMBOS]
    runs += [(2, "per-tensor", "asymmetric", "mse", None),
             (2, "per-channel", "asymmetric", "mse", 8)]  # 8 bits: z = 128, rescaled
    for bits, gran, grid, scales, first_last in runs:
        what = (f"{name} {bits}-bit {gran} {grid}/{scales}"
                + (f", first and last at {first_last}" if first_last else ""))
        qfile = os.path.join(tmp, "q.safetensors")
        try:
            run_qevo(["quantize", path, "--out", qfile]
                     + grid_flags(bits, gran, grid, scales, first_last))
        except RuntimeError as e:
            check(False, f"{what}: {e}")
            continue
        problems = qevo_ref.check_quantized_file(qfile, float_path=path)
        _, meta = qevo_export.read_safetensors(qfile)
        quant = json.loads(meta["qevo.quant"])
        recorded = (quant.get("grid"), quant.get("scales")) == (grid, scales)
        bits_ok = True
        if first_last:
            layer_bits = [e["bits"] for e in quant["layers"].values()]
            bits_ok = layer_bits[0] == layer_bits[-1] == first_last and \
                set(layer_bits[1:-1]) <= {bits}
        check(not problems and recorded and bits_ok,
              f"{what}: codes, scales, code_min, weights, biases bit-identical to the "
              f"reference, grid and scales recorded"
              + ("" if not problems else f": {problems[:3]}")
              + ("" if recorded else f": qevo.quant has grid {quant.get('grid')!r}, "
                                     f"scales {quant.get('scales')!r}")
              + ("" if bits_ok else f": layer bits {layer_bits}"))


def compare_grid_accuracy(name, path, tmp, x, labels):
    """qevo eval with --grid asymmetric --scales mse against torch on the reference."""
    what = f"{name} 2-bit per-channel asymmetric/mse"
    got, _ = qevo_outputs(path, tmp, quant=grid_flags(2, "per-channel", "asymmetric", "mse"))
    ref = qevo_ref.build_quantized_module(path, 2, True, grid="asymmetric", scales="mse")
    compare_predictions(what, got, torch_outputs(ref, x), labels)


def check_option_a(tmp, x):
    torch.manual_seed(3)
    m = models.build("resnet20", shortcut="A")
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    m.eval()
    path = os.path.join(tmp, "resnet20_a.safetensors")
    qevo_export.export(m, (1, 28, 28), path, mean=[fmnist.MEAN], std=[fmnist.STD])
    got, _ = qevo_outputs(path, tmp, data="fashion-mnist:test")
    want = torch_outputs(m, x)
    diff, scale = np.abs(got - want).max(), np.abs(want).max()
    check(diff <= 1e-4 * scale, f"ResNet-20 option A shortcuts: max |qevo - torch| = "
                                f"{diff:.3g} <= 1e-4 x {scale:.3g}")


def main():
    if not os.access(QEVO, os.X_OK):
        check(False, f"{QEVO} is built (run make)")
        finish()
    images, labels = fmnist.load("test")
    with tempfile.TemporaryDirectory(prefix="qevo-parity-") as tmp:
        for name in SHIPPED:
            path = os.path.join(MODELS, f"{name}.safetensors")
            if not os.path.exists(path):
                check(False, f"{path} exists")
                continue
            net = qevo_export.load(path)
            x = fmnist.to_float(images, net.mean[0], net.std[0])
            compare_float(name, path, tmp, x, labels)
            compare_quantized(name, path, tmp, x, labels, net.task)
            check_grids(name, path, tmp)
            if name == "vgg":
                compare_grid_accuracy(name, path, tmp, x, labels)
        check_first_last("vgg", os.path.join(MODELS, "vgg.safetensors"), tmp)
        check_option_a(tmp, fmnist.to_float(images, fmnist.MEAN, fmnist.STD))
    finish()


if __name__ == "__main__":
    main()
