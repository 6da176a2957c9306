"""Fashion-MNIST from Debian's dataset-fashion-mnist package, as numpy arrays.

Reads the gzipped IDX files the same way qevo's C reader does (big-endian header,
uint8 pixels), so both sides see identical images.
"""
import gzip
import os
import struct

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530  # per-channel statistics of the training split


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {np.prod(dims)} values, found {arr.size}")
    return arr.reshape(dims)


def load(split, root=FASHION_MNIST_DIR):
    """Returns (images uint8 (N,1,28,28), labels int64 (N,)) for 'train' or 'test'."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"))
    return images[:, None, :, :].copy(), labels.astype(np.int64)


def to_float(images_u8, mean=MEAN, std=STD):
    """uint8 -> float32 normalised exactly as qevo does: (x / 255 - mean) / std."""
    import torch
    x = torch.from_numpy(images_u8).float() / 255.0
    return (x - mean) / std
