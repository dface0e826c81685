"""Naive float64 references for ReLU and Dropout, element by element."""

import numpy as np


def relu_forward(x, negative_slope):
    x = np.asarray(x, dtype=np.float64)
    y = np.empty_like(x)
    flat_x, flat_y = x.reshape(-1), y.reshape(-1)
    for i in range(flat_x.size):
        v = flat_x[i]
        flat_y[i] = max(v, 0.0) + negative_slope * min(v, 0.0)
    return y


def relu_backward(dy, x, negative_slope):
    """Caffe's rule: slope 1 where x > 0, negative_slope where x <= 0."""
    dy = np.asarray(dy, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    dx = np.empty_like(dy)
    flat_dy, flat_x, flat_dx = dy.reshape(-1), x.reshape(-1), dx.reshape(-1)
    for i in range(flat_dy.size):
        flat_dx[i] = flat_dy[i] if flat_x[i] > 0 else negative_slope * flat_dy[i]
    return dx


def dropout_forward(x, keep, ratio):
    """Inverted dropout with a given boolean keep mask."""
    x = np.asarray(x, dtype=np.float64)
    y = np.zeros_like(x)
    scale = 1.0 / (1.0 - ratio)
    flat_x, flat_keep, flat_y = x.reshape(-1), np.asarray(keep).reshape(-1), y.reshape(-1)
    for i in range(flat_x.size):
        if flat_keep[i]:
            flat_y[i] = flat_x[i] * scale
    return y
