#!/usr/bin/python3
"""Writes a tiny copy of each shipped example model (examples/models/*.safetensors) as a
seed for the graph fuzzer: the same layer graph (names, ops, parameters, inputs,
output), with every channel count divided by 8, 8x8 input images and seeded random
weights, so that a forward pass takes microseconds instead of milliseconds.

usage: shrink_models.py MODELS_DIR OUT_DIR"""
import json
import os
import random
import struct
import sys

SIDE = 8     # input height and width
SHRINK = 8   # channel divisor


def header_of(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        return json.loads(f.read(n))


def sc(c):
    return max(1, c // SHRINK)


def shrink(graph, tensors, rng):
    """Returns the tiny graph and its tensors {name: (shape, floats)}."""
    g = json.loads(json.dumps(graph))
    c0 = g['input']['shape'][0]
    g['input']['shape'] = [c0, SIDE, SIDE]
    dims = {}
    prev = 'input'
    dims['input'] = (c0, SIDE, SIDE)
    out = {}
    layers = g['layers']
    weighted = [i for i, l in enumerate(layers) if l['op'] in ('conv2d', 'convtranspose2d', 'linear')]
    last = weighted[-1] if weighted else -1

    def pair(v, default):
        if v is None:
            return [default, default]
        return [v, v] if isinstance(v, int) else list(v)

    def add(name, shape, lo, hi):
        n = 1
        for d in shape:
            n *= d
        out[name] = (shape, [rng.uniform(lo, hi) for _ in range(n)])

    for i, l in enumerate(layers):
        ins = l.get('inputs', [prev])
        c, h, w = dims[ins[0]]
        op = l['op']
        if op in ('conv2d', 'convtranspose2d'):
            ws = tensors[l['weight']]['shape']
            kh, kw = ws[2], ws[3]
            sh, sw = pair(l.get('stride'), 1)
            ph, pw = pair(l.get('padding'), 0)
            if op == 'conv2d':
                co = ws[0] if i == last else sc(ws[0])
                add(l['weight'], [co, c, kh, kw], -0.5, 0.5)
                h, w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
            else:
                co = ws[1] if i == last else sc(ws[1])
                oh, ow = pair(l.get('output_padding'), 0)
                add(l['weight'], [c, co, kh, kw], -0.5, 0.5)
                h, w = (h - 1) * sh - 2 * ph + kh + oh, (w - 1) * sw - 2 * pw + kw + ow
            if l.get('bias'):
                add(l['bias'], [co], -0.1, 0.1)
            c = co
        elif op == 'linear':
            ws = tensors[l['weight']]['shape']
            co = ws[0] if i == last else sc(ws[0])
            add(l['weight'], [co, c * h * w], -0.3, 0.3)
            if l.get('bias'):
                add(l['bias'], [co], -0.1, 0.1)
            c, h, w = co, 1, 1
        elif op == 'batchnorm':
            add(l['weight'], [c], 0.5, 1.5)
            add(l['bias'], [c], -0.2, 0.2)
            add(l['mean'], [c], -0.2, 0.2)
            add(l['var'], [c], 0.5, 1.5)
        elif op in ('maxpool', 'avgpool'):
            kh, kw = pair(l.get('kernel'), 1)
            sh, sw = pair(l.get('stride'), kh)
            ph, pw = pair(l.get('padding'), 0)
            h, w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        elif op == 'global_avgpool':
            h, w = 1, 1
        elif op == 'flatten':
            c, h, w = c * h * w, 1, 1
        elif op == 'subsample':
            sh, sw = pair(l.get('stride'), 1)
            h, w = (h + sh - 1) // sh, (w + sw - 1) // sw
        elif op == 'pad_channels':
            l['before'], l['after'] = sc(l['before']), sc(l['after'])
            c = c + l['before'] + l['after']
        elif op in ('relu', 'sigmoid', 'add'):
            pass
        else:
            raise SystemExit('shrink_models.py: unknown op %s' % op)
        assert h >= 1 and w >= 1, (l['name'], h, w)
        dims[l['name']] = (c, h, w)
        prev = l['name']
    return g, out


def write(path, graph, description, tensors):
    header = {'__metadata__': {'qevo.graph': json.dumps(graph, separators=(',', ':')),
                               'qevo.description': description}}
    offset = 0
    blobs = []
    for name, (shape, values) in tensors.items():
        data = struct.pack('<%df' % len(values), *values)
        header[name] = {'dtype': 'F32', 'shape': shape, 'data_offsets': [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(',', ':')).encode()
    text += b' ' * (-len(text) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(text)) + text + b''.join(blobs))


def main():
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
    for k, name in enumerate(sorted(os.listdir(src))):
        if not name.endswith('.safetensors'):
            continue
        h = header_of(os.path.join(src, name))
        graph = json.loads(h['__metadata__']['qevo.graph'])
        tensors = {k2: v for k2, v in h.items() if k2 != '__metadata__'}
        g, out = shrink(graph, tensors, random.Random(1000 + k))
        write(os.path.join(dst, 'tiny-' + name), g,
              'examples/models/%s with channels / %d and %dx%d inputs (fuzz seed)' %
              (name, SHRINK, SIDE, SIDE), out)


if __name__ == '__main__':
    main()
