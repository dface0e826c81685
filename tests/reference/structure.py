"""Naive float64 references for Crop, Concat and Eltwise, index by index."""

import numpy as np


def crop_forward(x, ref_shape, axis, offsets):
    """offsets: one per axis from ``axis`` on (axis already non-negative)."""
    x = np.asarray(x, dtype=np.float64)
    top_shape = tuple(x.shape[:axis]) + tuple(ref_shape[axis:])
    full = [0] * axis + list(offsets)
    y = np.empty(top_shape)
    for idx in np.ndindex(top_shape):
        y[idx] = x[tuple(i + o for i, o in zip(idx, full))]
    return y


def crop_backward(dy, x_shape, axis, offsets):
    dy = np.asarray(dy, dtype=np.float64)
    full = [0] * axis + list(offsets)
    dx = np.zeros(x_shape)
    for idx in np.ndindex(dy.shape):
        dx[tuple(i + o for i, o in zip(idx, full))] += dy[idx]
    return dx


def concat_forward(xs, axis):
    xs = [np.asarray(x, dtype=np.float64) for x in xs]
    axis = axis % xs[0].ndim
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    y = np.empty(shape)
    start = 0
    for x in xs:
        for idx in np.ndindex(x.shape):
            out = list(idx)
            out[axis] += start
            y[tuple(out)] = x[idx]
        start += x.shape[axis]
    return y


def concat_backward(dy, shapes, axis):
    dy = np.asarray(dy, dtype=np.float64)
    axis = axis % dy.ndim
    dxs = []
    start = 0
    for shape in shapes:
        dx = np.empty(shape)
        for idx in np.ndindex(shape):
            src = list(idx)
            src[axis] += start
            dx[idx] = dy[tuple(src)]
        dxs.append(dx)
        start += shape[axis]
    return dxs


def eltwise_forward(xs, operation, coeff=None):
    xs = [np.asarray(x, dtype=np.float64) for x in xs]
    coeff = [1.0] * len(xs) if coeff is None else coeff
    y = np.empty(xs[0].shape)
    for idx in np.ndindex(y.shape):
        values = [x[idx] for x in xs]
        if operation == "SUM":
            y[idx] = sum(c * v for c, v in zip(coeff, values))
        elif operation == "PROD":
            p = 1.0
            for v in values:
                p *= v
            y[idx] = p
        else:
            y[idx] = max(values)
    return y


def eltwise_backward(dy, xs, operation, coeff=None):
    """MAX: the first bottom holding the maximum gets dy; PROD: product of the others."""
    xs = [np.asarray(x, dtype=np.float64) for x in xs]
    dy = np.asarray(dy, dtype=np.float64)
    coeff = [1.0] * len(xs) if coeff is None else coeff
    dxs = [np.zeros(dy.shape) for _ in xs]
    for idx in np.ndindex(dy.shape):
        values = [x[idx] for x in xs]
        for i in range(len(xs)):
            if operation == "SUM":
                dxs[i][idx] = coeff[i] * dy[idx]
            elif operation == "PROD":
                p = dy[idx]
                for j, v in enumerate(values):
                    if j != i:
                        p *= v
                dxs[i][idx] = p
        if operation == "MAX":
            winner = values.index(max(values))
            dxs[winner][idx] = dy[idx]
    return dxs
