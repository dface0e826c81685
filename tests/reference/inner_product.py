"""Naive float64 references for InnerProduct, Embed, Sigmoid/TanH/Softmax, Scale, Slice,
Reshape and Caffe's LSTMUnit: plain loops written to be read."""

import math

import numpy as np


def inner_product(x, w, b, axis, transpose):
    x = np.asarray(x, dtype=np.float64)
    m = int(np.prod(x.shape[:axis]))
    k = int(np.prod(x.shape[axis:]))
    rows = x.reshape(m, k)
    n = w.shape[1] if transpose else w.shape[0]
    y = np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            s = 0.0 if b is None else float(b[j])
            for q in range(k):
                s += rows[i, q] * (w[q, j] if transpose else w[j, q])
            y[i, j] = s
    return y.reshape(tuple(x.shape[:axis]) + (n,))


def embed(index, w, b):
    index = np.asarray(index)
    out = np.zeros(index.shape + (w.shape[1],))
    for pos in np.ndindex(index.shape):
        row = int(index[pos])
        for j in range(w.shape[1]):
            out[pos + (j,)] = w[row, j] + (0.0 if b is None else b[j])
    return out


def sigmoid(x):
    return np.vectorize(lambda v: 1.0 / (1.0 + math.exp(-v)) if v >= 0
                        else math.exp(v) / (1.0 + math.exp(v)))(np.asarray(x, np.float64))


def softmax(x, axis):
    x = np.asarray(x, dtype=np.float64)
    axis = axis % x.ndim
    out = np.empty_like(x)
    moved = np.moveaxis(x, axis, -1)
    res = np.moveaxis(out, axis, -1)
    for pos in np.ndindex(moved.shape[:-1]):
        row = moved[pos]
        m = max(row)
        e = [math.exp(v - m) for v in row]
        s = sum(e)
        res[pos] = [v / s for v in e]
    return out


def scale(x, s, b, axis):
    x = np.asarray(x, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    y = np.empty_like(x)
    for pos in np.ndindex(x.shape):
        key = pos[axis:axis + s.ndim]
        y[pos] = x[pos] * s[key] + (0.0 if b is None else b[key])
    return y


def lstm_unit(c_prev, gates, cont, forget_bias=0.0):
    """Caffe's LSTMUnit on rows: gates (R, 4D) in order i, f, o, g."""
    c_prev = np.asarray(c_prev, np.float64)
    gates = np.asarray(gates, np.float64)
    r, d = c_prev.shape
    c = np.zeros((r, d))
    h = np.zeros((r, d))
    for row in range(r):
        for k in range(d):
            i = 1 / (1 + math.exp(-gates[row, k]))
            f = 1 / (1 + math.exp(-(gates[row, d + k] + forget_bias)))
            o = 1 / (1 + math.exp(-gates[row, 2 * d + k]))
            g = math.tanh(gates[row, 3 * d + k])
            c[row, k] = cont[row] * f * c_prev[row, k] + i * g
            h[row, k] = o * math.tanh(c[row, k])
    return c, h
