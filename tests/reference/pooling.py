"""Naive float64 pooling and unpooling, written from Caffe's formulas with plain loops.

Window of output (oh, ow): rows [oh*sh - ph, oh*sh - ph + kh) and columns likewise, clipped to
the image. MAX takes the first maximum in row-major order; AVE divides the sum by the window
size clipped to the padded extent [-p, size + p) only (Caffe's pool_size).
"""

import numpy as np

from convnet.shapes import pool_out


def _window(o, size, kernel, stride, pad):
    """(start, end) clipped to the image, and Caffe's pool_size length along one axis."""
    start = o * stride - pad
    end = min(start + kernel, size + pad)
    length = end - start
    return max(start, 0), min(end, size), length


def max_pool(x, kernel, stride, pad, ceil_mode=True):
    """Return (y, argmax) for x (N, C, H, W); argmax holds flat indices h*W + w."""
    n_, c_, h_, w_ = x.shape
    oh_ = pool_out(h_, kernel[0], stride[0], pad[0], ceil_mode)
    ow_ = pool_out(w_, kernel[1], stride[1], pad[1], ceil_mode)
    y = np.zeros((n_, c_, oh_, ow_))
    argmax = np.zeros((n_, c_, oh_, ow_), dtype=np.int64)
    for n in range(n_):
        for c in range(c_):
            for oh in range(oh_):
                h0, h1, _ = _window(oh, h_, kernel[0], stride[0], pad[0])
                for ow in range(ow_):
                    w0, w1, _ = _window(ow, w_, kernel[1], stride[1], pad[1])
                    best, best_index = -np.inf, None
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            if best_index is None or x[n, c, h, w] > best:
                                best, best_index = x[n, c, h, w], h * w_ + w
                    y[n, c, oh, ow] = best
                    argmax[n, c, oh, ow] = best_index
    return y, argmax


def max_pool_backward(dy, argmax, x_shape):
    dx = np.zeros(x_shape)
    n_, c_, oh_, ow_ = dy.shape
    w_ = x_shape[3]
    for n in range(n_):
        for c in range(c_):
            for oh in range(oh_):
                for ow in range(ow_):
                    i = argmax[n, c, oh, ow]
                    dx[n, c, i // w_, i % w_] += dy[n, c, oh, ow]
    return dx


def ave_pool(x, kernel, stride, pad, ceil_mode=True):
    n_, c_, h_, w_ = x.shape
    oh_ = pool_out(h_, kernel[0], stride[0], pad[0], ceil_mode)
    ow_ = pool_out(w_, kernel[1], stride[1], pad[1], ceil_mode)
    y = np.zeros((n_, c_, oh_, ow_))
    for n in range(n_):
        for c in range(c_):
            for oh in range(oh_):
                h0, h1, hl = _window(oh, h_, kernel[0], stride[0], pad[0])
                for ow in range(ow_):
                    w0, w1, wl = _window(ow, w_, kernel[1], stride[1], pad[1])
                    total = 0.0
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            total += x[n, c, h, w]
                    y[n, c, oh, ow] = total / (hl * wl)
    return y


def ave_pool_backward(dy, x_shape, kernel, stride, pad):
    dx = np.zeros(x_shape)
    n_, c_, oh_, ow_ = dy.shape
    h_, w_ = x_shape[2:]
    for n in range(n_):
        for c in range(c_):
            for oh in range(oh_):
                h0, h1, hl = _window(oh, h_, kernel[0], stride[0], pad[0])
                for ow in range(ow_):
                    w0, w1, wl = _window(ow, w_, kernel[1], stride[1], pad[1])
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            dx[n, c, h, w] += dy[n, c, oh, ow] / (hl * wl)
    return dx


def unpool(x, mask, out_hw):
    """y[n, c].flat[mask[n, c, h, w]] = x[n, c, h, w], later positions winning."""
    n_, c_, h_, w_ = x.shape
    y = np.zeros((n_, c_) + tuple(out_hw))
    ow_ = out_hw[1]
    for n in range(n_):
        for c in range(c_):
            for h in range(h_):
                for w in range(w_):
                    i = int(mask[n, c, h, w])
                    y[n, c, i // ow_, i % ow_] = x[n, c, h, w]
    return y


def unpool_backward(dy, mask):
    n_, c_, h_, w_ = mask.shape
    ow_ = dy.shape[3]
    dx = np.zeros(mask.shape)
    for n in range(n_):
        for c in range(c_):
            for h in range(h_):
                for w in range(w_):
                    i = int(mask[n, c, h, w])
                    dx[n, c, h, w] = dy[n, c, i // ow_, i % ow_]
    return dx
