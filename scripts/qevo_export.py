#!/usr/bin/python3
"""Export PyTorch CNNs to qevo's model format, and load qevo files back into PyTorch.

The format is described in docs/FORMAT.md: a safetensors file whose
``__metadata__["qevo.graph"]`` holds a JSON layer graph.

    export(module, (1, 28, 28), "model.safetensors", mean=[0.286], std=[0.353])
    model = load("model.safetensors")          # a torch.nn.Module, normalised input
    tensors, metadata = read_safetensors(path)  # numpy arrays, metadata strings
    write_safetensors(path, tensors, metadata)  # atomic

The exporter is generic: it traces the module with torch.fx and maps every node onto
one of qevo's ops (or onto nothing, for identities such as Dropout); anything it cannot
map exactly is refused with an error naming the fx node and the operation.

Command line:  /usr/bin/python3 scripts/qevo_export.py --inspect FILE
"""
import argparse
import functools
import json
import math
import operator
import os
import struct
import sys
import tempfile

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

GRAPH_VERSION = 1
TASKS = ("classify", "reconstruct")
WEIGHTED_OPS = ("conv2d", "convtranspose2d", "linear")
MAX_HEADER = 100_000_000  # the reference safetensors implementation's limit

SUPPORTED = ("nn.Conv2d / nn.ConvTranspose2d (groups 1, dilation 1, zero padding), "
             "nn.Linear, nn.BatchNorm2d (running statistics) after a conv, ReLU, "
             "Sigmoid, max/avg pooling (no ceil_mode, no dilation), "
             "adaptive_avg_pool2d(x, 1) or mean over dims (2, 3), flatten / view(N, -1), "
             "tensor + tensor (same shape), x[:, :, ::s, ::s], "
             "F.pad(x, (0, 0, 0, 0, a, b)) with value 0, Dropout / Identity")


class FormatError(ValueError):
    """A file that is not a valid safetensors file or qevo model."""


class ExportError(ValueError):
    """A module that cannot be expressed exactly with qevo's ops."""


# ----------------------------------------------------------------- safetensors

_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # decoded to float32 by read_safetensors
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_DTYPE_NAMES = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items() if k != "BF16"}


def _check_entry(path, name, entry, data_len):
    """Validates one header entry; returns (dtype name, shape, begin, end)."""
    where = f"{path}: tensor '{name}'"
    if not isinstance(entry, dict):
        raise FormatError(f"{where}: header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _DTYPES:
        raise FormatError(f"{where}: unknown dtype {dtype!r}")
    if (not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise FormatError(f"{where}: shape {shape!r} is not a list of non-negative ints")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise FormatError(f"{where}: data_offsets {offsets!r} is not [begin, end] with "
                          f"0 <= begin <= end")
    begin, end = offsets
    nbytes = math.prod(shape) * _DTYPES[dtype].itemsize
    if end - begin != nbytes:
        raise FormatError(f"{where}: shape {shape} of {dtype} needs {nbytes} bytes but "
                          f"data_offsets span {end - begin}")
    if end > data_len:
        raise FormatError(f"{where}: data ends at byte {end} of the data area but the "
                          f"file holds only {data_len} data bytes (truncated file?)")
    return dtype, shape, begin, end


def read_safetensors(path):
    """Reads a safetensors file; returns (tensors: dict name -> numpy array, metadata dict).

    Every structural property is checked (header length, JSON, dtypes, shapes against
    byte ranges, ranges inside the file and not overlapping); any violation raises
    FormatError naming the file and the problem. BF16 tensors are returned as float32.
    """
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise FormatError(f"{path}: {len(blob)} bytes, too short for the 8-byte header "
                          f"length (truncated file?)")
    (hlen,) = struct.unpack("<Q", blob[:8])
    if hlen > MAX_HEADER:
        raise FormatError(f"{path}: header length {hlen} exceeds the {MAX_HEADER} byte limit")
    if 8 + hlen > len(blob):
        raise FormatError(f"{path}: header length {hlen} but only {len(blob) - 8} bytes "
                          f"follow (truncated file?)")
    try:
        header = json.loads(blob[8:8 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise FormatError(f"{path}: header is not valid UTF-8 JSON: {e}") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise FormatError(f"{path}: __metadata__ must map strings to strings")
    data = memoryview(blob)[8 + hlen:]
    entries = {name: _check_entry(path, name, e, len(data)) for name, e in header.items()}
    spans = sorted((b, e, n) for n, (_, _, b, e) in entries.items() if e > b)
    for (b0, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise FormatError(f"{path}: tensors '{n0}' and '{n1}' overlap in the data area")
    tensors = {}
    for name, (dtype, shape, begin, end) in entries.items():
        arr = np.frombuffer(data[begin:end], dtype=_DTYPES[dtype]).reshape(shape)
        if dtype == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = arr.astype(arr.dtype.newbyteorder("="), copy=True)
    return tensors, metadata


def _atomic_write(path, chunks):
    """Writes byte chunks to path via a temporary file in the same directory."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_safetensors(path, tensors, metadata=None):
    """Writes numpy arrays (dict name -> array) and string metadata as safetensors.

    Tensors are stored little-endian and contiguous in the order given; the JSON header
    is padded with spaces to a multiple of 8 bytes. The write is atomic.
    """
    header, chunks, offset = {}, [], 0
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    for name, value in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        arr = np.asarray(value)
        dtype = _DTYPE_NAMES.get(arr.dtype.newbyteorder("="))
        if dtype is None:
            raise TypeError(f"tensor '{name}': unsupported dtype {arr.dtype}")
        raw = np.ascontiguousarray(arr, dtype=_DTYPES[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    _atomic_write(path, [struct.pack("<Q", len(text)), text] + chunks)


# ----------------------------------------------------------------- graph JSON

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _check_pair(layer, key, minimum):
    v = layer.get(key)
    if not (isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x >= minimum for x in v)):
        raise FormatError(f"layer '{layer['name']}' ({layer['op']}): '{key}' must be a list "
                          f"of two ints >= {minimum}, got {v!r}")


_PARAMS = {  # op -> ((key, minimum) of [a, b] int pairs, ...)
    "conv2d": (("stride", 1), ("padding", 0)),
    "convtranspose2d": (("stride", 1), ("padding", 0), ("output_padding", 0)),
    "maxpool": (("kernel", 1), ("stride", 1), ("padding", 0)),
    "avgpool": (("kernel", 1), ("stride", 1), ("padding", 0)),
    "subsample": (("stride", 1),),
}
_TENSORS = {  # op -> (required tensor keys, optional tensor keys)
    "conv2d": (("weight",), ("bias",)),
    "convtranspose2d": (("weight",), ("bias",)),
    "linear": (("weight",), ("bias",)),
    "batchnorm": (("weight", "bias", "mean", "var"), ()),
}
OPS = ("conv2d", "convtranspose2d", "linear", "batchnorm", "relu", "sigmoid", "maxpool",
       "avgpool", "global_avgpool", "flatten", "add", "subsample", "pad_channels")


def _check_layer(layer, index, known):
    """Validates one layer dict; returns a copy with an explicit 'inputs' list."""
    if not isinstance(layer, dict):
        raise FormatError(f"layer {index} is not an object")
    name, op = layer.get("name"), layer.get("op")
    if not isinstance(name, str) or not name or name == "input":
        raise FormatError(f"layer {index}: invalid name {name!r}")
    if name in known:
        raise FormatError(f"layer {index}: duplicate name '{name}'")
    if op not in OPS:
        raise FormatError(f"layer '{name}': unknown op {op!r} (known: {', '.join(OPS)})")
    out = dict(layer)
    inputs = layer.get("inputs", [known[-1] if known else "input"])
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or len(inputs) != (2 if op == "add" else 1):
        raise FormatError(f"layer '{name}' ({op}): 'inputs' must list "
                          f"{2 if op == 'add' else 1} layer(s), got {inputs!r}")
    for src in inputs:
        if src != "input" and src not in known:
            raise FormatError(f"layer '{name}': input {src!r} is not an earlier layer or "
                              f"'input'")
    out["inputs"] = list(inputs)
    for key, minimum in _PARAMS.get(op, ()):
        _check_pair(out, key, minimum)
    if op == "pad_channels":
        for key in ("before", "after"):
            if not (_is_int(out.get(key)) and out[key] >= 0):
                raise FormatError(f"layer '{name}' (pad_channels): '{key}' must be an int "
                                  f">= 0, got {out.get(key)!r}")
    if op == "batchnorm":
        eps = out.get("eps")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not (
                math.isfinite(eps) and eps >= 0):
            raise FormatError(f"layer '{name}' (batchnorm): 'eps' must be a number >= 0, "
                              f"got {eps!r}")
    required, optional = _TENSORS.get(op, ((), ()))
    for key in required + optional:
        ref = out.get(key)
        if ref is None and key in optional:
            continue
        if not isinstance(ref, str):
            raise FormatError(f"layer '{name}' ({op}): '{key}' must name a tensor, "
                              f"got {ref!r}")
    return out


def _check_input(spec):
    if not isinstance(spec, dict):
        raise FormatError("graph 'input' must be an object")
    shape, mean, std = spec.get("shape"), spec.get("mean"), spec.get("std")
    if not (isinstance(shape, list) and len(shape) == 3 and all(
            _is_int(d) and d > 0 for d in shape)):
        raise FormatError(f"input.shape must be [C, H, W] of positive ints, got {shape!r}")
    for key, vals in (("mean", mean), ("std", std)):
        if not (isinstance(vals, list) and len(vals) == shape[0] and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in vals)):
            raise FormatError(f"input.{key} must list {shape[0]} finite numbers, got {vals!r}")
    if not all(v > 0 for v in std):
        raise FormatError(f"input.std must be positive, got {std!r}")


def parse_graph(metadata):
    """Parses and validates metadata['qevo.graph'].

    Returns a copy of the graph in which every layer has an explicit 'inputs' list and
    'output' is set. Raises FormatError on any violation of docs/FORMAT.md.
    """
    text = metadata.get("qevo.graph")
    if text is None:
        raise FormatError("no 'qevo.graph' in the metadata: not a qevo model")
    try:
        graph = json.loads(text)
    except ValueError as e:
        raise FormatError(f"qevo.graph is not valid JSON: {e}") from None
    if not isinstance(graph, dict):
        raise FormatError("qevo.graph is not a JSON object")
    if graph.get("version") != GRAPH_VERSION:
        raise FormatError(f"qevo.graph version {graph.get('version')!r} is not supported "
                          f"(expected {GRAPH_VERSION})")
    if graph.get("task") not in TASKS:
        raise FormatError(f"qevo.graph task {graph.get('task')!r} is not one of {TASKS}")
    _check_input(graph.get("input"))
    layers = graph.get("layers")
    if not isinstance(layers, list) or not layers:
        raise FormatError("qevo.graph 'layers' must be a non-empty list")
    known, checked = [], []
    for i, layer in enumerate(layers):
        checked.append(_check_layer(layer, i, known))
        known.append(checked[-1]["name"])
    output = graph.get("output", known[-1])
    if output not in known:
        raise FormatError(f"qevo.graph output {output!r} is not a layer")
    return dict(graph, layers=checked, output=output)


def compact_graph(graph):
    """Returns a copy of graph with 'inputs' omitted where it is just the previous layer."""
    layers, prev = [], "input"
    for layer in graph["layers"]:
        layer = dict(layer)
        if layer.get("inputs") == [prev]:
            del layer["inputs"]
        layers.append(layer)
        prev = layer["name"]
    return dict(graph, layers=layers)


def layer_tensor(layer, key, tensors, ndim=None):
    """The float32 tensor a layer references under key (None if the reference is null)."""
    ref = layer.get(key)
    if ref is None:
        return None
    where = f"layer '{layer['name']}' ({layer['op']}): {key} tensor '{ref}'"
    if ref not in tensors:
        raise FormatError(f"{where} is not in the file")
    arr = tensors[ref]
    if arr.dtype != np.float32:
        raise FormatError(f"{where} is {arr.dtype}, expected float32 (F32)")
    if ndim is not None and arr.ndim != ndim:
        raise FormatError(f"{where} has shape {list(arr.shape)}, expected {ndim} dims")
    return arr


# ----------------------------------------------------------------- export

def _describe(node, gm):
    """A human-readable name for the operation an fx node performs."""
    if node.op == "call_module":
        return f"module '{node.target}' ({type(gm.get_submodule(node.target)).__name__})"
    if node.op == "call_function":
        mod = getattr(node.target, "__module__", None) or "torch"
        return f"function {mod}.{getattr(node.target, '__name__', node.target)}"
    if node.op == "call_method":
        return f"method Tensor.{node.target}"
    return f"{node.op} '{node.target}'"


def _has_node(value):
    found = []
    torch.fx.node.map_arg(value, found.append)
    return bool(found)


def _pair(ctx, what, value, default=None):
    """An int or a pair of ints as [a, b]; None / [] (PyTorch's 'same as kernel') -> default."""
    if (value is None or value == []) and default is not None:
        return list(default)
    if _is_int(value):
        return [value, value]
    if isinstance(value, (tuple, list)) and len(value) in (1, 2) and all(map(_is_int, value)):
        return [value[0], value[-1]]
    raise ExportError(f"{ctx}: {what} must be an int or a pair of ints, got {value!r}")


def _bind(ctx, node, args, names, defaults, tensors=("input",)):
    """Binds positional args / node.kwargs to parameter names (like a call signature).

    Every argument except those named in tensors must be a constant.
    """
    if len(args) > len(names):
        raise ExportError(f"{ctx}: too many arguments")
    bound = dict(zip(names, args))
    for key, value in node.kwargs.items():
        if key not in names or key in bound:
            raise ExportError(f"{ctx}: unsupported argument '{key}'")
        bound[key] = value
    for key in names:
        if key not in bound:
            if key not in defaults:
                raise ExportError(f"{ctx}: missing argument '{key}'")
            bound[key] = defaults[key]
    for key, value in bound.items():
        if key not in tensors and _has_node(value):
            raise ExportError(f"{ctx}: argument '{key}' must be a constant, not computed "
                              f"in forward()")
    return bound


class _Exporter:
    """Maps one fx-traced module onto a qevo layer list (see export())."""

    def __init__(self, module, input_shape):
        self.input_shape = tuple(input_shape)
        self.gm = torch.fx.symbolic_trace(module)
        self.names = {}        # tensor fx node -> qevo name ("input" or a layer name)
        self.view_of = {}      # fx node -> node it may alias (identity, view, slice)
        self.layers = []       # qevo layers, explicit "inputs"
        self.tensors = {}      # tensor name -> float32 numpy array
        self.weighted = set()  # module targets already emitted (no weight sharing)
        self.taken = {n.name for n in self.gm.graph.nodes} | {"input"}
        self.output = None
        self.batch3 = {}
        self.seen_input = False

    # -- shapes

    def propagate(self):
        """Shape propagation at batch 3 then batch 2 (kept in node.meta)."""
        for batch in (3, 2):
            x = torch.zeros((batch,) + self.input_shape)
            try:
                with torch.no_grad():
                    ShapeProp(self.gm).propagate(x)
            except Exception as e:
                raise ExportError(f"running the traced module on a zero input of shape "
                                  f"{tuple(x.shape)} failed: {e}") from e
            if batch == 3:
                self.batch3 = {n: tuple(n.meta["tensor_meta"].shape)
                               for n in self.gm.graph.nodes if self.is_tensor(n)}

    @staticmethod
    def is_tensor(node):
        return isinstance(node, torch.fx.Node) and isinstance(
            node.meta.get("tensor_meta"), TensorMetadata)

    @staticmethod
    def shape(node):
        return tuple(node.meta["tensor_meta"].shape)

    def ctx(self, node):
        return f"{_describe(node, self.gm)} at fx node '{node.name}'"

    def check_batch(self, node):
        """A tensor must keep the batch dimension first: qevo runs one image at a time."""
        s2, s3 = self.shape(node), self.batch3.get(node)
        if s3 is None or s2[:1] != (2,) or s3[:1] != (3,) or s2[1:] != s3[1:]:
            raise ExportError(f"{self.ctx(node)}: output shape {s2} for a batch of 2 and "
                              f"{s3} for a batch of 3; qevo needs ops that keep the batch "
                              f"dimension first and treat each image independently")
        if node.meta["tensor_meta"].dtype != torch.float32:
            raise ExportError(f"{self.ctx(node)}: produces "
                              f"{node.meta['tensor_meta'].dtype}, qevo computes in float32")

    # -- emitting

    def tensor_arg(self, node, x, what="input"):
        if not self.is_tensor(x) or x not in self.names:
            raise ExportError(f"{self.ctx(node)}: {what} must be a tensor computed by a "
                              f"supported op, got {x!r}")
        return x

    def emit(self, node, op, inputs, **params):
        name = node.name if node.name != "input" else self.fresh(node.name)
        layer = {"name": name, "op": op,
                 "inputs": [self.names[self.tensor_arg(node, x)] for x in inputs]}
        layer.update(params)
        self.layers.append(layer)
        self.names[node] = name
        return name

    def fresh(self, base):
        i = 1
        while f"{base}_{i}" in self.taken:
            i += 1
        self.taken.add(f"{base}_{i}")
        return f"{base}_{i}"

    def alias(self, node, x, view=True):
        """node computes the same values as x: no layer."""
        self.names[node] = self.names[self.tensor_arg(node, x)]
        if view:
            self.view_of[node] = x

    def param(self, target, pname, value):
        name = f"{target}.{pname}" if target else pname
        self.tensors[name] = value.detach().cpu().to(torch.float32).contiguous().numpy().copy()
        return name

    def check_inplace(self, node, x):
        """An in-place op is exact only if nothing else sees the tensor it overwrites.

        Walks back through identities, views and slices (which share storage): each
        tensor on the way must have exactly one user.
        """
        cur = x
        while True:
            if len(cur.users) > 1:
                users = ", ".join(u.name for u in cur.users)
                raise ExportError(f"{self.ctx(node)}: modifies '{cur.name}' in place, but "
                                  f"'{cur.name}' is also used by {users}; qevo's layers "
                                  f"do not alias, use the out-of-place op")
            if cur not in self.view_of:
                return
            cur = self.view_of[cur]

    # -- walking the graph

    def run(self):
        self.propagate()
        for node in self.gm.graph.nodes:
            self.visit(node)
        if self.output == "input":
            raise ExportError("the module returns its input unchanged: nothing to export")
        self.prune()
        self.check_batchnorms()
        return self.layers, self.output

    def visit(self, node):
        if node.op == "placeholder":
            if not self.seen_input:
                self.seen_input = True
                self.names[node] = "input"
            elif node.users:
                raise ExportError(f"forward() uses a second input '{node.target}'; qevo "
                                  f"models take one image tensor")
            return
        if node.op == "get_attr":
            users = ", ".join(f"{_describe(u, self.gm)} ('{u.name}')" for u in node.users)
            raise ExportError(f"parameter or buffer '{node.target}' (fx node '{node.name}') "
                              f"is used directly by {users or 'nothing'}; qevo only takes "
                              f"tensors as weights of nn.Conv2d, nn.ConvTranspose2d, "
                              f"nn.Linear and nn.BatchNorm2d modules")
        if node.op == "output":
            out = node.args[0]
            if not self.is_tensor(out) or out not in self.names:
                raise ExportError(f"forward() must return one tensor, got {out!r}")
            self.output = self.names[out]
            return
        if not self.is_tensor(node):
            self.visit_non_tensor(node)
            return
        handler = self.handler(node)
        self.check_batch(node)
        handler(node)

    def visit_non_tensor(self, node):
        """Python values such as x.size(0) are fine as long as no tensor is lost."""
        if not any(self.is_tensor(n) for n in node.all_input_nodes):
            return
        if node.op == "call_method" and node.target in ("size", "dim"):
            return
        if node.op == "call_function" and node.target is getattr and node.args[1] in (
                "shape", "ndim"):
            return
        raise ExportError(f"unsupported operation: {self.ctx(node)} (it does not return "
                          f"a single tensor). qevo supports: {SUPPORTED}")

    def handler(self, node):
        if node.op == "call_module":
            m = self.gm.get_submodule(node.target)
            fn = _MODULES.get(type(m))
        elif node.op == "call_function":
            fn = _FUNCTIONS.get(node.target)
        else:
            fn = _METHODS.get(node.target)
        if fn is None:
            raise ExportError(f"unsupported operation: {self.ctx(node)}. qevo supports: "
                              f"{SUPPORTED}")
        return functools.partial(fn, self)

    # -- finishing

    def uses(self):
        count = {}
        for layer in self.layers:
            for src in layer["inputs"]:
                count[src] = count.get(src, 0) + 1
        count[self.output] = count.get(self.output, 0) + 1
        return count

    def prune(self):
        """Drops layers the output does not depend on."""
        need = {self.output}
        for layer in reversed(self.layers):
            if layer["name"] in need:
                need.update(layer["inputs"])
        self.layers = [l for l in self.layers if l["name"] in need]

    def check_batchnorms(self):
        """qevo folds every batchnorm into the conv before it, so refuse any other."""
        by_name, uses = {l["name"]: l for l in self.layers}, self.uses()
        for layer in self.layers:
            if layer["op"] != "batchnorm":
                continue
            src = by_name.get(layer["inputs"][0])
            if src is None or src["op"] not in ("conv2d", "convtranspose2d"):
                raise ExportError(f"BatchNorm2d at fx node '{layer['name']}' does not directly "
                                  f"follow a Conv2d/ConvTranspose2d; qevo folds batchnorm "
                                  f"into the conv before it and supports no other")
            if uses[src["name"]] != 1:
                raise ExportError(f"BatchNorm2d at fx node '{layer['name']}': its conv "
                                  f"'{src['name']}' is also used elsewhere, so it cannot be "
                                  f"folded")

    def referenced_tensors(self):
        out = {}
        for layer in self.layers:
            for key in ("weight", "bias", "mean", "var"):
                if layer.get(key) is not None:
                    out[layer[key]] = self.tensors[layer[key]]
        return out


# -- module handlers (called as fn(exporter, node))

def _module(ex, node):
    """The called module, after checking it is called as module(x)."""
    m = ex.gm.get_submodule(node.target)
    if len(node.args) != 1 or node.kwargs:
        raise ExportError(f"{ex.ctx(node)}: called with extra arguments (only module(x) "
                          f"is supported)")
    if m._forward_hooks or m._forward_pre_hooks:
        raise ExportError(f"{ex.ctx(node)}: the module has forward hooks (e.g. weight_norm); "
                          f"remove them before exporting")
    return m, node.args[0]


def _weighted(ex, node):
    m, x = _module(ex, node)
    if node.target in ex.weighted:
        raise ExportError(f"{ex.ctx(node)}: the module is called more than once; qevo layers "
                          f"cannot share weights")
    ex.weighted.add(node.target)
    return m, x


def _conv_padding(ctx, m):
    if m.padding == "valid":
        return [0, 0]
    if m.padding == "same":
        if any(k % 2 == 0 for k in m.kernel_size):
            raise ExportError(f"{ctx}: padding='same' with an even kernel "
                              f"{tuple(m.kernel_size)} pads asymmetrically, which qevo "
                              f"does not support")
        return [(k - 1) // 2 for k in m.kernel_size]
    return _pair(ctx, "padding", tuple(m.padding))


def _conv(ex, node):
    m, x = _weighted(ex, node)
    ctx = ex.ctx(node)
    if m.groups != 1:
        raise ExportError(f"{ctx}: groups={m.groups} is not supported (only groups=1)")
    if tuple(m.dilation) != (1, 1):
        raise ExportError(f"{ctx}: dilation={tuple(m.dilation)} is not supported "
                          f"(only dilation 1)")
    if m.padding_mode != "zeros":
        raise ExportError(f"{ctx}: padding_mode='{m.padding_mode}' is not supported "
                          f"(only 'zeros')")
    transpose = isinstance(m, nn.ConvTranspose2d)
    params = {"weight": ex.param(node.target, "weight", m.weight),
              "bias": None if m.bias is None else ex.param(node.target, "bias", m.bias),
              "stride": list(m.stride), "padding": _conv_padding(ctx, m)}
    if transpose:
        params["output_padding"] = list(m.output_padding)
    ex.emit(node, "convtranspose2d" if transpose else "conv2d", [x], **params)


def _linear(ex, node):
    m, x = _weighted(ex, node)
    if ex.is_tensor(x) and len(ex.shape(x)) != 2:
        raise ExportError(f"{ex.ctx(node)}: input has shape {ex.shape(x)}; qevo's linear "
                          f"takes a flattened (N, features) input (add nn.Flatten)")
    ex.emit(node, "linear", [x], weight=ex.param(node.target, "weight", m.weight),
            bias=None if m.bias is None else ex.param(node.target, "bias", m.bias))


def _batchnorm(ex, node):
    m, x = _weighted(ex, node)
    if not m.track_running_stats or m.running_mean is None or m.running_var is None:
        raise ExportError(f"{ex.ctx(node)}: BatchNorm2d without running statistics "
                          f"(track_running_stats=False) is not supported")
    c = m.num_features
    weight = m.weight if m.affine else torch.ones(c)
    bias = m.bias if m.affine else torch.zeros(c)
    ex.emit(node, "batchnorm", [x],
            weight=ex.param(node.target, "weight", weight),
            bias=ex.param(node.target, "bias", bias),
            mean=ex.param(node.target, "running_mean", m.running_mean),
            var=ex.param(node.target, "running_var", m.running_var),
            eps=float(m.eps))


def _relu_module(ex, node):
    m, x = _module(ex, node)
    if m.inplace:
        ex.check_inplace(node, x)
    ex.emit(node, "relu", [x])


def _sigmoid_module(ex, node):
    _, x = _module(ex, node)
    ex.emit(node, "sigmoid", [x])


def _identity_module(ex, node):
    _, x = _module(ex, node)
    ex.alias(node, x)


def _flatten_module(ex, node):
    _, x = _module(ex, node)
    _flatten_like(ex, node, x)


def _maxpool(ex, node, p):
    ctx = ex.ctx(node)
    if p["ceil_mode"]:
        raise ExportError(f"{ctx}: ceil_mode=True is not supported")
    if _pair(ctx, "dilation", p["dilation"]) != [1, 1]:
        raise ExportError(f"{ctx}: dilation={p['dilation']} is not supported (only 1)")
    if p["return_indices"]:
        raise ExportError(f"{ctx}: return_indices=True is not supported")
    kernel = _pair(ctx, "kernel_size", p["kernel_size"])
    ex.emit(node, "maxpool", [p["input"]], kernel=kernel,
            stride=_pair(ctx, "stride", p["stride"], kernel),
            padding=_pair(ctx, "padding", p["padding"]))


def _avgpool(ex, node, p):
    ctx = ex.ctx(node)
    if p["ceil_mode"]:
        raise ExportError(f"{ctx}: ceil_mode=True is not supported")
    if not p["count_include_pad"]:
        raise ExportError(f"{ctx}: count_include_pad=False is not supported")
    if p["divisor_override"] is not None:
        raise ExportError(f"{ctx}: divisor_override is not supported")
    kernel = _pair(ctx, "kernel_size", p["kernel_size"])
    ex.emit(node, "avgpool", [p["input"]], kernel=kernel,
            stride=_pair(ctx, "stride", p["stride"], kernel),
            padding=_pair(ctx, "padding", p["padding"]))


def _adaptive_pool(ex, node, x, output_size):
    if output_size not in (1, (1, 1), [1, 1], (1,), [1]):
        raise ExportError(f"{ex.ctx(node)}: adaptive average pooling to {output_size!r} is "
                          f"not supported (only output size 1, i.e. global average pooling)")
    ex.emit(node, "global_avgpool", [x])


def _maxpool_module(ex, node):
    m, x = _module(ex, node)
    _maxpool(ex, node, dict(input=x, kernel_size=m.kernel_size, stride=m.stride,
                            padding=m.padding, dilation=m.dilation, ceil_mode=m.ceil_mode,
                            return_indices=m.return_indices))


def _avgpool_module(ex, node):
    m, x = _module(ex, node)
    _avgpool(ex, node, dict(input=x, kernel_size=m.kernel_size, stride=m.stride,
                            padding=m.padding, ceil_mode=m.ceil_mode,
                            count_include_pad=m.count_include_pad,
                            divisor_override=m.divisor_override))


def _adaptive_module(ex, node):
    m, x = _module(ex, node)
    _adaptive_pool(ex, node, x, m.output_size)


_DROPOUTS = tuple(getattr(nn, n) for n in ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
                                           "AlphaDropout", "FeatureAlphaDropout")
                  if hasattr(nn, n))
_MODULES = {nn.Conv2d: _conv, nn.ConvTranspose2d: _conv, nn.Linear: _linear,
            nn.BatchNorm2d: _batchnorm, nn.ReLU: _relu_module, nn.Sigmoid: _sigmoid_module,
            nn.MaxPool2d: _maxpool_module, nn.AvgPool2d: _avgpool_module,
            nn.AdaptiveAvgPool2d: _adaptive_module, nn.Flatten: _flatten_module,
            nn.Identity: _identity_module}
_MODULES.update({d: _identity_module for d in _DROPOUTS})


# -- function and method handlers

def _fn_relu(ex, node, inplace=None):
    p = _bind(ex.ctx(node), node, node.args, ["input", "inplace"], {"inplace": False})
    if inplace or p["inplace"]:
        ex.check_inplace(node, p["input"])
    ex.emit(node, "relu", [p["input"]])


def _fn_sigmoid(ex, node, inplace=False):
    p = _bind(ex.ctx(node), node, node.args, ["input"], {})
    if inplace:
        ex.check_inplace(node, p["input"])
    ex.emit(node, "sigmoid", [p["input"]])


def _fn_maxpool(ex, node):
    _maxpool(ex, node, _bind(ex.ctx(node), node, node.args,
                             ["input", "kernel_size", "stride", "padding", "dilation",
                              "ceil_mode", "return_indices"],
                             {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
                              "return_indices": False}))


def _fn_avgpool(ex, node):
    _avgpool(ex, node, _bind(ex.ctx(node), node, node.args,
                             ["input", "kernel_size", "stride", "padding", "ceil_mode",
                              "count_include_pad", "divisor_override"],
                             {"stride": None, "padding": 0, "ceil_mode": False,
                              "count_include_pad": True, "divisor_override": None}))


def _fn_adaptive(ex, node):
    p = _bind(ex.ctx(node), node, node.args, ["input", "output_size"], {})
    _adaptive_pool(ex, node, p["input"], p["output_size"])


def _fn_mean(ex, node):
    """x.mean((2, 3), keepdim=...) over the spatial dims is a global average pool."""
    p = _bind(ex.ctx(node), node, node.args, ["input", "dim", "keepdim", "dtype"],
              {"keepdim": False, "dtype": None})
    x = ex.tensor_arg(node, p["input"])
    dims = p["dim"] if isinstance(p["dim"], (tuple, list)) else [p["dim"]]
    rank = len(ex.shape(x))
    if rank != 4 or sorted(d % 4 for d in dims if _is_int(d)) != [2, 3] or p["dtype"]:
        raise ExportError(f"{ex.ctx(node)}: only a mean over dims (2, 3) of an (N, C, H, W) "
                          f"tensor is supported, got dim={p['dim']!r}")
    if p["keepdim"]:
        ex.emit(node, "global_avgpool", [x])
        return
    pool = ex.fresh(node.name + "_pool")
    ex.layers.append({"name": pool, "op": "global_avgpool", "inputs": [ex.names[x]]})
    ex.layers.append({"name": node.name, "op": "flatten", "inputs": [pool]})
    ex.names[node] = node.name


def _flatten_like(ex, node, x):
    """flatten / view / reshape: exact only as (N, C, H, W) -> (N, C*H*W) or no-op."""
    x = ex.tensor_arg(node, x)
    src, dst = ex.shape(x), ex.shape(node)
    if dst == src:
        ex.alias(node, x)
    elif dst == (src[0], math.prod(src[1:])):
        if len(src) == 2:
            ex.alias(node, x)
        else:
            ex.emit(node, "flatten", [x])
            ex.view_of[node] = x
    else:
        raise ExportError(f"{ex.ctx(node)}: reshapes {src} to {dst}; only flattening "
                          f"each sample to (N, C*H*W) is supported")


def _fn_flatten(ex, node):
    _flatten_like(ex, node, node.args[0] if node.args else node.kwargs.get("input"))


def _fn_add(ex, node, inplace=False):
    names = ["input", "other", "alpha"]
    p = _bind(ex.ctx(node), node, node.args, names, {"alpha": 1}, ("input", "other"))
    a, b = p["input"], p["other"]
    if not (ex.is_tensor(a) and ex.is_tensor(b)):
        raise ExportError(f"{ex.ctx(node)}: add of a tensor and a constant ({a!r} + {b!r}) "
                          f"is not supported; only tensor + tensor")
    if p["alpha"] != 1:
        raise ExportError(f"{ex.ctx(node)}: add with alpha={p['alpha']} is not supported")
    if ex.shape(a) != ex.shape(b):
        raise ExportError(f"{ex.ctx(node)}: adds shapes {ex.shape(a)} and {ex.shape(b)}; "
                          f"qevo's add needs equal shapes (no broadcasting)")
    if inplace:
        ex.check_inplace(node, a)
    ex.emit(node, "add", [a, b])


def _subsample_strides(ctx, index, shape):
    """(sh, sw) for an index of the form [:, :, ::sh, ::sw] (also with ...)."""
    index = index if isinstance(index, tuple) else (index,)
    if index.count(Ellipsis) > 1:
        raise ExportError(f"{ctx}: index {index!r} is not supported")
    if Ellipsis in index:
        i = index.index(Ellipsis)
        index = index[:i] + (slice(None),) * (len(shape) - len(index) + 1) + index[i + 1:]
    index = index + (slice(None),) * (len(shape) - len(index))
    ok = len(shape) == 4 and len(index) == 4 and all(isinstance(s, slice) for s in index)
    steps = []
    for dim, s in zip(shape, index if ok else ()):
        step = 1 if s.step is None else s.step
        ok = ok and s.start in (None, 0) and (s.stop is None or (
            _is_int(s.stop) and s.stop >= dim)) and _is_int(step) and step > 0
        steps.append(step)
    if not ok or steps[:2] != [1, 1]:
        raise ExportError(f"{ctx}: index {index!r} is not supported; only x[:, :, ::sh, ::sw] "
                          f"on an (N, C, H, W) tensor")
    return steps[2:]


def _fn_getitem(ex, node):
    x, index = node.args
    if not ex.is_tensor(x):
        raise ExportError(f"unsupported operation: {ex.ctx(node)} on a non-tensor "
                          f"(e.g. a tuple of tensors)")
    if _has_node(index):
        raise ExportError(f"{ex.ctx(node)}: the index must be a constant")
    stride = _subsample_strides(ex.ctx(node), index, ex.shape(x))
    if stride == [1, 1]:
        ex.alias(node, x)
    else:
        ex.emit(node, "subsample", [x], stride=stride)
        ex.view_of[node] = x


def _fn_pad(ex, node):
    ctx = ex.ctx(node)
    p = _bind(ctx, node, node.args, ["input", "pad", "mode", "value"],
              {"mode": "constant", "value": None})
    pad = p["pad"]
    ok = (isinstance(pad, (tuple, list)) and len(pad) in (6, 8) and all(map(_is_int, pad))
          and list(pad[:4]) == [0, 0, 0, 0] and list(pad[6:]) in ([], [0, 0])
          and min(pad) >= 0)
    if not ok or len(ex.shape(ex.tensor_arg(node, p["input"]))) != 4:
        raise ExportError(f"{ctx}: pad={pad!r} is not supported; only zero channel padding "
                          f"(0, 0, 0, 0, before, after) of an (N, C, H, W) tensor")
    if p["mode"] != "constant" or p["value"] not in (None, 0):
        raise ExportError(f"{ctx}: mode={p['mode']!r}, value={p['value']!r} is not supported; "
                          f"only constant zero padding")
    if pad[4] == pad[5] == 0:
        ex.alias(node, p["input"], view=False)
    else:
        ex.emit(node, "pad_channels", [p["input"]], before=pad[4], after=pad[5])


def _fn_dropout(ex, node):
    p = _bind(ex.ctx(node), node, node.args, ["input", "p", "training", "inplace"],
              {"p": 0.5, "training": True, "inplace": False})
    if p["training"]:
        raise ExportError(f"{ex.ctx(node)}: training=True makes dropout random; pass "
                          f"training=self.training")
    ex.alias(node, p["input"])


def _method_identity(ex, node, view=True):
    ex.alias(node, node.args[0], view=view)


_FUNCTIONS = {
    F.relu: _fn_relu, torch.relu: _fn_relu,
    torch.relu_: functools.partial(_fn_relu, inplace=True),
    F.relu_: functools.partial(_fn_relu, inplace=True),
    torch.sigmoid: _fn_sigmoid, torch.sigmoid_: functools.partial(_fn_sigmoid, inplace=True),
    F.max_pool2d: _fn_maxpool, F.avg_pool2d: _fn_avgpool,
    F.adaptive_avg_pool2d: _fn_adaptive, torch.mean: _fn_mean,
    torch.flatten: _fn_flatten, torch.reshape: _fn_flatten,
    operator.add: _fn_add, torch.add: _fn_add,
    operator.iadd: functools.partial(_fn_add, inplace=True),
    operator.getitem: _fn_getitem, F.pad: _fn_pad,
}
_FUNCTIONS.update({getattr(F, n): _fn_dropout for n in (
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout") if hasattr(F, n)})
_METHODS = {
    "relu": _fn_relu, "relu_": functools.partial(_fn_relu, inplace=True),
    "sigmoid": _fn_sigmoid, "sigmoid_": functools.partial(_fn_sigmoid, inplace=True),
    "add": _fn_add, "add_": functools.partial(_fn_add, inplace=True),
    "mean": _fn_mean,
    "view": lambda ex, node: _flatten_like(ex, node, node.args[0]),
    "reshape": lambda ex, node: _flatten_like(ex, node, node.args[0]),
    "flatten": lambda ex, node: _flatten_like(ex, node, node.args[0]),
    "contiguous": _method_identity,
    "clone": functools.partial(_method_identity, view=False),
}


def _channels_list(values, channels, what):
    values = [values] * channels if isinstance(values, (int, float)) else list(values)
    if len(values) != channels or not all(math.isfinite(float(v)) for v in values):
        raise ExportError(f"{what} must give {channels} finite values, got {values!r}")
    return [float(v) for v in values]


def _build_graph(layers, output, input_shape, mean, std, task):
    c = input_shape[0]
    mean = _channels_list(mean, c, "mean")
    std = _channels_list(std, c, "std")
    if min(std) <= 0:
        raise ExportError(f"std must be positive, got {std}")
    return compact_graph({"version": GRAPH_VERSION, "task": task,
                          "input": {"shape": list(input_shape), "mean": mean, "std": std},
                          "layers": layers, "output": output})


def _verify(module, graph, tensors, input_shape):
    """The exported graph, rebuilt in PyTorch, must reproduce the module's output."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2,) + tuple(input_shape), generator=gen)
    with torch.no_grad():
        want = module(x.clone())
        got = build_module(parse_graph({"qevo.graph": json.dumps(graph)}), tensors)(x.clone())
    if got.shape != want.shape:
        raise ExportError(f"internal check failed: the exported graph returns shape "
                          f"{tuple(got.shape)}, the module {tuple(want.shape)}")
    err = (got - want).abs().max().item()
    if not err <= 1e-4 * max(want.abs().max().item(), 1e-6):
        raise ExportError(f"internal check failed: the exported graph differs from the "
                          f"module by up to {err:g}")


def export(module, input_shape, path, mean, std, task="classify", description="",
           verify=True):
    """Exports an nn.Module to a qevo model file; returns the graph dict written.

    module:      the model; traced with torch.fx in eval mode (its mode is restored).
    input_shape: (C, H, W) of one image.
    mean, std:   per-channel normalisation (a list of C floats, or one float for all).
    task:        "classify" or "reconstruct" (output shaped like the input).
    verify:      rebuild the graph in PyTorch and check it reproduces the module.
    Raises ExportError naming the fx node for anything qevo cannot run exactly.
    """
    if task not in TASKS:
        raise ExportError(f"task must be one of {TASKS}, got {task!r}")
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3 or min(input_shape) <= 0:
        raise ExportError(f"input_shape must be (C, H, W), got {input_shape}")
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_floating_point() and t.dtype != torch.float32:
            raise ExportError(f"'{name}' is {t.dtype}; convert the module with .float()")
    if type(module) in _MODULES:
        raise ExportError(f"the module is a bare {type(module).__name__}; wrap it, e.g. in "
                          f"nn.Sequential, so that it is traced as a layer")
    was_training = module.training
    module.eval()
    try:
        ex = _Exporter(module, input_shape)
        layers, output = ex.run()
        out_shape = ex.shape(next(n for n in ex.gm.graph.nodes if n.op == "output").args[0])
        if task == "reconstruct" and out_shape[1:] != input_shape:
            raise ExportError(f"task 'reconstruct' needs an output shaped like the input "
                              f"{input_shape}, got {out_shape[1:]}")
        graph = _build_graph(layers, output, input_shape, mean, std, task)
        tensors = ex.referenced_tensors()
        if verify:
            _verify(module, graph, tensors, input_shape)
    finally:
        module.train(was_training)
    write_safetensors(path, tensors, {"qevo.graph": json.dumps(graph),
                                      "qevo.description": str(description)})
    return graph


# ----------------------------------------------------------------- load

def _as4d(x):
    """qevo holds every activation as (C, H, W): a flat (N, F) tensor is (N, F, 1, 1)."""
    return x if x.dim() == 4 else x.reshape(x.shape[0], -1, 1, 1)


class Spatial(nn.Module):
    """Runs a 2-d op, viewing a flat (N, F) input as (N, F, 1, 1) as qevo does."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(_as4d(x))


class Lambda(nn.Module):
    """A stateless op: fn(*inputs), fn a picklable function or functools.partial."""

    def __init__(self, fn, desc):
        super().__init__()
        self.fn, self.desc = fn, desc

    def forward(self, *xs):
        return self.fn(*xs)

    def extra_repr(self):
        return self.desc


class BatchNorm(nn.Module):
    """Inference batch norm of an (N, C, ...) tensor with fixed statistics."""

    def __init__(self, weight, bias, mean, var, eps):
        super().__init__()
        for key, value in (("weight", weight), ("bias", bias), ("running_mean", mean),
                           ("running_var", var)):
            self.register_buffer(key, torch.from_numpy(value.copy()))
        self.eps = eps

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            False, 0.0, self.eps)


def _flatten(x):
    return x.flatten(1)


def _add(a, b):
    if a.shape != b.shape:
        a, b = _as4d(a), _as4d(b)
    return a + b


def _subsample(sh, sw, x):
    return _as4d(x)[:, :, ::sh, ::sw]


def _pad_channels(before, after, x):
    return F.pad(_as4d(x), (0, 0, 0, 0, before, after))


def _global_avgpool(x):
    return F.adaptive_avg_pool2d(_as4d(x), 1)


def _set(param, value, where):
    if tuple(param.shape) != value.shape:
        raise FormatError(f"{where}: shape {list(value.shape)}, expected {list(param.shape)}")
    with torch.no_grad():
        param.copy_(torch.from_numpy(value.copy()))


def _bias(layer, tensors, channels):
    bias = layer_tensor(layer, "bias", tensors)
    if bias is not None and bias.shape != (channels,):
        raise FormatError(f"layer '{layer['name']}': bias '{layer['bias']}' has shape "
                          f"{list(bias.shape)}, expected [{channels}]")
    return bias


def _conv_module(layer, tensors):
    w = layer_tensor(layer, "weight", tensors, ndim=4)
    transpose = layer["op"] == "convtranspose2d"
    cin, cout = (w.shape[0], w.shape[1]) if transpose else (w.shape[1], w.shape[0])
    bias = _bias(layer, tensors, cout)
    kw = dict(stride=tuple(layer["stride"]), padding=tuple(layer["padding"]),
              bias=bias is not None)
    if transpose:
        m = nn.ConvTranspose2d(cin, cout, w.shape[2:], output_padding=tuple(
            layer["output_padding"]), **kw)
    else:
        m = nn.Conv2d(cin, cout, w.shape[2:], **kw)
    _set(m.weight, w, f"layer '{layer['name']}'")
    if bias is not None:
        _set(m.bias, bias, f"layer '{layer['name']}'")
    return Spatial(m)


def _linear_module(layer, tensors):
    w = layer_tensor(layer, "weight", tensors, ndim=2)
    bias = _bias(layer, tensors, w.shape[0])
    m = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    _set(m.weight, w, f"layer '{layer['name']}'")
    if bias is not None:
        _set(m.bias, bias, f"layer '{layer['name']}'")
    return _Linear(m)


class _Linear(nn.Module):
    """nn.Linear applied to the input flattened per sample (qevo's linear)."""

    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return self.linear(x.flatten(1))


def _batchnorm_module(layer, tensors):
    parts = [layer_tensor(layer, k, tensors, ndim=1) for k in ("weight", "bias", "mean", "var")]
    if len({p.shape for p in parts}) != 1:
        raise FormatError(f"layer '{layer['name']}' (batchnorm): weight, bias, mean and var "
                          f"have different shapes {[list(p.shape) for p in parts]}")
    return BatchNorm(*parts, float(layer["eps"]))


def _op_module(layer, tensors):
    """The torch module computing one qevo layer."""
    op = layer["op"]
    if op in ("conv2d", "convtranspose2d"):
        return _conv_module(layer, tensors)
    if op == "linear":
        return _linear_module(layer, tensors)
    if op == "batchnorm":
        return _batchnorm_module(layer, tensors)
    if op == "relu":
        return nn.ReLU()
    if op == "sigmoid":
        return nn.Sigmoid()
    if op in ("maxpool", "avgpool"):
        cls = nn.MaxPool2d if op == "maxpool" else nn.AvgPool2d
        return Spatial(cls(tuple(layer["kernel"]), tuple(layer["stride"]),
                           tuple(layer["padding"])))
    if op == "global_avgpool":
        return Lambda(_global_avgpool, "global_avgpool")
    if op == "flatten":
        return Lambda(_flatten, "flatten")
    if op == "add":
        return Lambda(_add, "add")
    if op == "subsample":
        return Lambda(functools.partial(_subsample, *layer["stride"]),
                      f"subsample stride={layer['stride']}")
    if op == "pad_channels":
        return Lambda(functools.partial(_pad_channels, layer["before"], layer["after"]),
                      f"pad_channels before={layer['before']} after={layer['after']}")
    raise FormatError(f"layer '{layer['name']}': unknown op {op!r}")


class QevoModule(nn.Module):
    """A qevo layer graph as a PyTorch module: normalised (N, C, H, W) in, output out.

    Attributes: graph (parsed, explicit inputs), task, input_shape, mean, std,
    description, quant (the parsed qevo.quant dict of a quantized file, else None).
    """

    def __init__(self, graph, tensors, metadata=None):
        super().__init__()
        metadata = metadata or {}
        self.graph = graph
        self.task = graph["task"]
        self.input_shape = tuple(graph["input"]["shape"])
        self.mean, self.std = graph["input"]["mean"], graph["input"]["std"]
        self.description = metadata.get("qevo.description", "")
        self.quant = json.loads(metadata["qevo.quant"]) if "qevo.quant" in metadata else None
        self.names = [l["name"] for l in graph["layers"]]
        self.ops = [l["op"] for l in graph["layers"]]
        self.sources = [l["inputs"] for l in graph["layers"]]
        self.output = graph["output"]
        self.layers = nn.ModuleList(_op_module(l, tensors) for l in graph["layers"])
        last = {}
        for i, srcs in enumerate(self.sources):
            for s in srcs:
                last[s] = i
        self.free_after = [[s for s in set(srcs) if last[s] == i and s != self.output]
                           for i, srcs in enumerate(self.sources)]

    def forward(self, x):
        env = {"input": x}
        for i, layer in enumerate(self.layers):
            try:
                env[self.names[i]] = layer(*[env[s] for s in self.sources[i]])
            except RuntimeError as e:
                raise RuntimeError(f"qevo layer '{self.names[i]}' ({self.ops[i]}): {e}") from e
            for s in self.free_after[i]:
                del env[s]
        return env[self.output]


def build_module(graph, tensors, metadata=None):
    """A QevoModule (eval mode) for a parsed graph and its tensors; checks it runs."""
    try:
        module = QevoModule(graph, tensors, metadata).eval()
    except (TypeError, ValueError) as e:  # e.g. a ConvTranspose2d output_padding >= stride
        raise FormatError(str(e)) from e
    x = torch.zeros((1,) + module.input_shape)
    try:
        with torch.no_grad():
            y = module(x)
    except RuntimeError as e:
        raise FormatError(f"the graph does not run on a {list(module.input_shape)} input: "
                          f"{e}") from e
    if module.task == "reconstruct" and y.numel() != x.numel():
        raise FormatError(f"task 'reconstruct' but the output has shape {list(y.shape[1:])}, "
                          f"the input {list(module.input_shape)}")
    return module


def load(path):
    """Rebuilds a runnable torch module (QevoModule) from any qevo model file.

    Batch-norm layers are applied as inference batch norm (not folded); quantized files
    run with their dequantized F32 weights, and their qevo.quant settings are exposed as
    module.quant. Raises FormatError (naming the file) for an invalid file.
    """
    tensors, metadata = read_safetensors(path)
    try:
        graph = parse_graph(metadata)
        if "qevo.quant" in metadata:
            json.loads(metadata["qevo.quant"])
        return build_module(graph, tensors, metadata)
    except FormatError as e:
        raise FormatError(f"{path}: {e}") from None
    except ValueError as e:  # qevo.quant JSON
        raise FormatError(f"{path}: qevo.quant is not valid JSON: {e}") from None


# ----------------------------------------------------------------- inspect

def _layer_summary(layer, tensors):
    skip = {"name", "op", "inputs", "weight", "bias", "mean", "var"}
    params = [f"{k}={v}" for k, v in layer.items() if k not in skip]
    refs = []
    for key in ("weight", "bias", "mean", "var"):
        ref = layer.get(key)
        if ref is not None:
            shape = list(tensors[ref].shape) if ref in tensors else "MISSING"
            refs.append(f"{key}={ref}{shape}")
    return " ".join(params + refs)


def inspect(path, out=sys.stdout):
    """Prints a qevo file's graph, one layer a line."""
    tensors, metadata = read_safetensors(path)
    graph = parse_graph(metadata)
    print(f"{path}: task {graph['task']}, input {graph['input']}", file=out)
    if metadata.get("qevo.description"):
        print(f"description: {metadata['qevo.description']}", file=out)
    quant = json.loads(metadata["qevo.quant"]) if "qevo.quant" in metadata else None
    if quant:
        print(f"quantized: {quant.get('granularity')}, {quant.get('bits')} bits", file=out)
    for layer in graph["layers"]:
        bits = (quant or {}).get("layers", {}).get(layer["name"], {}).get("bits")
        print(f"  {layer['name']:<24} {layer['op']:<16} <- {','.join(layer['inputs']):<24} "
              f"{_layer_summary(layer, tensors)}{f' bits={bits}' if bits else ''}", file=out)
    params = sum(t.size for t in tensors.values() if t.dtype == np.float32)
    print(f"output: {graph['output']}; {len(graph['layers'])} layers, {len(tensors)} tensors, "
          f"{params} float32 values", file=out)


def main(argv=None):
    ap = argparse.ArgumentParser(description="qevo model files: inspect a file's graph.")
    ap.add_argument("--inspect", metavar="FILE", required=True, help="print FILE's graph")
    args = ap.parse_args(argv)
    try:
        inspect(args.inspect)
    except BrokenPipeError:  # e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, FormatError) as e:
        print(f"qevo_export: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
