#!/usr/bin/python3
"""Copies a run folder whose newest checkpoint is then made hostile in one way, with
every blob's CRC recomputed so that only the lengths, counts and values inside lie.

    hostile_checkpoint.py RUN_DIR OUT_DIR VARIANT

Island blob (see src/run_internal.h): a 56-byte header (version u32, island u32, ...,
nmig u32 at byte 48), nmig pairs of int32, then the evolution state: mu u32, n u64, ...,
and mu members at the end, each id u64, born u64, 7 doubles of scores, n int8 codes."""
import json
import os
import shutil
import struct
import sys
import zlib

MAGIC = b"QEVOCKP1"
MEMBER_HEAD = 16 + 7 * 8


def load(path):
    raw = open(path, "rb").read()
    assert raw[:8] == MAGIC, path
    return bytearray(raw[20:])


def save(path, payload):
    payload = bytes(payload)
    head = MAGIC + struct.pack("<QI", len(payload), zlib.crc32(payload) & 0xFFFFFFFF)
    open(path, "wb").write(head + payload)


def state_offset(b):
    return 56 + 8 * struct.unpack_from("<I", b, 48)[0]


def members(b):
    """(mu, n, offset of the first member)."""
    off = state_offset(b)
    mu, n = struct.unpack_from("<IQ", b, off)
    return mu, n, len(b) - mu * (MEMBER_HEAD + n)


def short(b):
    return b[:10]


def nmig(b, count=1 << 28):
    struct.pack_into("<I", b, 48, count)
    return b


def nmig_wrap(b):
    return nmig(b, 0xFFFFFFFF)


def version(b):
    struct.pack_into("<I", b, 0, 7)
    return b


def island(b):
    struct.pack_into("<I", b, 4, 5)
    return b


def mu0(b):
    mu, _, first = members(b)
    struct.pack_into("<I", b, state_offset(b), 0)
    return b[:first]


def weights(b):
    off = state_offset(b)
    n = struct.unpack_from("<Q", b, off + 4)[0]
    struct.pack_into("<Q", b, off + 4, n + 1)
    return b


def code(b):
    mu, n, first = members(b)
    b[first + MEMBER_HEAD + n // 2] = 100  # no 3-bit grid holds code 100
    return b


def nan_score(b):
    _, _, first = members(b)
    struct.pack_into("<d", b, first + 16, float("nan"))
    return b


def run_island_val(j):
    j["island_val"] = j["island_val"][:1]
    return j


def run_generation(j):
    j["generation"] = -3
    return j


def best_code(b):
    b[len(b) // 2] = 100
    return b


# variant -> (file in the checkpoint, what to do to its payload)
ISLAND1 = "island-00001.bin"  # read by rank 1 only: the failing rank is not rank 0
VARIANTS = {
    "short": (ISLAND1, short),
    "nmig": (ISLAND1, nmig),
    "nmig_wrap": (ISLAND1, nmig_wrap),
    "version": (ISLAND1, version),
    "island": (ISLAND1, island),
    "mu0": (ISLAND1, mu0),
    "weights": (ISLAND1, weights),
    "code": (ISLAND1, code),
    "nan_score": ("island-00000.bin", nan_score),
    "run_island_val": ("run.json", run_island_val),
    "run_generation": ("run.json", run_generation),
    "best_code": ("best.bin", best_code),
}


def main():
    src, out, name = sys.argv[1:]
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src, out)
    root = os.path.join(out, "checkpoints")
    gens = sorted(g for g in os.listdir(root) if g.startswith("gen-"))
    for g in gens[:-1]:
        shutil.rmtree(os.path.join(root, g))
    file, change = VARIANTS[name]
    path = os.path.join(root, gens[-1], file)
    payload = load(path)
    if file.endswith(".json"):
        payload = json.dumps(change(json.loads(payload))).encode()
    else:
        payload = change(payload)
    save(path, payload)


if __name__ == "__main__":
    main()
