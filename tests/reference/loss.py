"""Naive float64 references for the loss layers, written from the formulas with plain loops.

Scores are (N, C, *spatial) and labels (N, *spatial) (a Caffe (N, 1, ...) label is squeezed by
the caller). Each pixel's softmax uses Python's math module, one pixel at a time.
"""

import math

import numpy as np


def normalizer(mode, n, pixels, valid):
    """Caffe's LossLayer::GetNormalizer, floored at 1."""
    count = {"VALID": valid, "FULL": n * pixels, "BATCH_SIZE": n, "NONE": 1}[mode]
    return max(1.0, float(count))


def softmax_loss(scores, labels, ignore_label=None, normalization="VALID"):
    """Return (loss, dscores) for a top diff of 1."""
    scores = np.asarray(scores, dtype=np.float64)
    n, c = scores.shape[:2]
    flat_scores = scores.reshape(n, c, -1)
    flat_labels = np.asarray(labels).reshape(n, -1)
    pixels = flat_scores.shape[2]
    total = 0.0
    valid = 0
    grad = np.zeros_like(flat_scores)
    for i in range(n):
        for s in range(pixels):
            label = flat_labels[i, s]
            if ignore_label is not None and label == ignore_label:
                continue
            label = int(label)
            column = [float(flat_scores[i, k, s]) for k in range(c)]
            top = max(column)
            log_sum = math.log(sum(math.exp(v - top) for v in column))
            total -= (column[label] - top) - log_sum
            valid += 1
            for k in range(c):
                grad[i, k, s] = math.exp(column[k] - top - log_sum) - (1.0 if k == label else 0.0)
    norm = normalizer(normalization, n, pixels, valid)
    return total / norm, (grad / norm).reshape(scores.shape)


def euclidean_loss(a, b):
    """Return (loss, da, db) for a top diff of 1: loss = sum (a - b)^2 / (2 N)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n = a.shape[0]
    total = 0.0
    da = np.zeros_like(a)
    for index in np.ndindex(a.shape):
        d = a[index] - b[index]
        total += d * d
        da[index] = d / n
    return total / (2 * n), da, -da
