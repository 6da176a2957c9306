#!/usr/bin/python3
"""Tests of scripts/paired.py's statistics on outputs made by hand (no model runs).

    /usr/bin/python3 tests/python/test_paired.py

The last line is "test_paired: N passed, M failed"; the exit status is non-zero on
failure.
"""
import math
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import paired  # noqa: E402

passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}")


def one_hot(pred, classes=10):
    out = np.zeros((len(pred), classes), dtype=np.float32)
    out[np.arange(len(pred)), pred] = 1.0
    return out


def test_classifier():
    # 100 images of label 0: A right on 0..59, B right on 0..39 and 60..69, so only A is
    # right on 40..59 (20 images) and only B on 60..69 (10): chi2 = (|20 - 10| - 1)^2 / 30.
    labels = np.zeros(100, dtype=np.int64)
    images = np.zeros((100, 1, 28, 28), dtype=np.uint8)
    a = one_hot(np.where(np.arange(100) < 60, 0, 1))
    b = one_hot(np.where((np.arange(100) < 40) | ((np.arange(100) >= 60) &
                                                  (np.arange(100) < 70)), 0, 1))
    r = paired.compare(a, b, images, labels)
    check(r["only_a_right"] == 20 and r["only_b_right"] == 10, f"discordant counts {r}")
    check(abs(r["mcnemar_chi2"] - 81 / 30) < 1e-12, f"chi2 {r['mcnemar_chi2']}")
    check(abs(r["p_value"] - math.erfc(math.sqrt(81 / 60))) < 1e-12, f"p {r['p_value']}")
    check(r["accuracy_a"] == 0.6 and r["accuracy_b"] == 0.5, f"accuracies {r}")
    same = paired.compare(a, a, images, labels)
    check(same["mcnemar_chi2"] == 0.0 and same["p_value"] == 1.0, f"identical models {same}")


def test_autoencoder():
    # Targets all 0; A's error per image is 0.01, B's 0.04 on half the images and 0.02
    # on the other half: A is better on every image.
    images = np.zeros((4, 1, 28, 28), dtype=np.uint8)
    labels = np.zeros(4, dtype=np.int64)
    a = np.full((4, 784), 0.1, dtype=np.float32)
    b = np.array([[0.2], [0.2], [math.sqrt(0.02)], [math.sqrt(0.02)]],
                 dtype=np.float32) * np.ones((4, 784), dtype=np.float32)
    r = paired.compare(a, b, images, labels)
    d = np.array([0.01 - 0.04, 0.01 - 0.04, 0.01 - 0.02, 0.01 - 0.02])
    want_t = d.mean() / (d.std(ddof=1) / 2)
    check(r["a_better_images"] == 4, f"better images {r}")
    check(abs(r["mean_difference"] - d.mean()) < 1e-6, f"mean difference {r}")
    check(abs(r["paired_t"] - want_t) < 1e-3 * abs(want_t), f"t {r['paired_t']} vs {want_t}")


test_classifier()
test_autoencoder()
print(f"test_paired: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
