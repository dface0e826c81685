"""Naive float64 Interp, written from DeepLab's caffe_cpu_interp2 (align_corners=True) and ATen's
upsample_bilinear2d / upsample_nearest2d (align_corners=False): plain loops over the output
pixels (vectorised over N and C only). The crop (pad_beg, pad_end <= 0) is applied first."""

from fractions import Fraction
import math

import numpy as np


def _crop(x, pad_beg, pad_end):
    h, w = x.shape[2], x.shape[3]
    return x[:, :, -pad_beg:h + pad_end, -pad_beg:w + pad_end]


def bilinear_tap(dst, in_size, out_size, align_corners):
    """(i, p, lam): source index, step to the second tap (0 or 1), weight of the second tap."""
    if align_corners:
        # DeepLab: rheight = (H1 - 1) / (H2 - 1), 0 when H2 == 1; h1 = int(h1r)
        r = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = r * dst
        i = int(src)
        lam = src - i
    else:
        # ATen: area_pixel_compute_source_index + guard_index_and_lambda
        scale = in_size / out_size
        src = max(scale * (dst + 0.5) - 0.5, 0.0)
        i = min(int(math.floor(src)), in_size - 1)
        lam = min(max(src - i, 0.0), 1.0)
    p = 1 if i < in_size - 1 else 0
    return i, p, lam


def nearest_tap(dst, in_size, out_size, align_corners):
    if align_corners:
        # nearest to dst (in - 1) / (out - 1), halves rounded up (exact rational arithmetic)
        if out_size == 1:
            return 0
        return math.floor(Fraction(dst * (in_size - 1), out_size - 1) + Fraction(1, 2))
    # ATen's nearest_idx: float32 scale = in / out, floor(dst * scale) in float32
    if out_size == in_size:
        return dst
    if out_size == 2 * in_size:
        return dst >> 1
    scale = np.float32(in_size) / np.float32(out_size)
    return min(int(np.floor(np.float32(dst) * scale)), in_size - 1)


def interp_forward(x, out_h, out_w, pad_beg=0, pad_end=0, align_corners=True, mode="bilinear"):
    x = np.asarray(x)
    x1 = _crop(x, pad_beg, pad_end)
    n, c, h1_size, w1_size = x1.shape
    if mode == "nearest":
        y = np.zeros((n, c, out_h, out_w), dtype=x.dtype)
        for h2 in range(out_h):
            hs = nearest_tap(h2, h1_size, out_h, align_corners)
            for w2 in range(out_w):
                ws = nearest_tap(w2, w1_size, out_w, align_corners)
                y[:, :, h2, w2] = x1[:, :, hs, ws]
        return y
    x1 = x1.astype(np.float64)
    y = np.zeros((n, c, out_h, out_w))
    for h2 in range(out_h):
        h1, h1p, h1l = bilinear_tap(h2, h1_size, out_h, align_corners)
        h0l = 1.0 - h1l
        for w2 in range(out_w):
            w1, w1p, w1l = bilinear_tap(w2, w1_size, out_w, align_corners)
            w0l = 1.0 - w1l
            y[:, :, h2, w2] = (
                h0l * (w0l * x1[:, :, h1, w1] + w1l * x1[:, :, h1, w1 + w1p])
                + h1l * (w0l * x1[:, :, h1 + h1p, w1] + w1l * x1[:, :, h1 + h1p, w1 + w1p]))
    return y


def interp_backward(dy, in_shape, pad_beg=0, pad_end=0, align_corners=True, mode="bilinear"):
    """DeepLab's caffe_cpu_interp2_backward: scatter every top diff onto its source taps."""
    dy = np.asarray(dy, dtype=np.float64)
    dx = np.zeros(in_shape)
    dx1 = _crop(dx, pad_beg, pad_end)          # a view: writes land in dx
    h1_size, w1_size = dx1.shape[2], dx1.shape[3]
    out_h, out_w = dy.shape[2], dy.shape[3]
    for h2 in range(out_h):
        for w2 in range(out_w):
            g = dy[:, :, h2, w2]
            if mode == "nearest":
                hs = nearest_tap(h2, h1_size, out_h, align_corners)
                ws = nearest_tap(w2, w1_size, out_w, align_corners)
                dx1[:, :, hs, ws] += g
                continue
            h1, h1p, h1l = bilinear_tap(h2, h1_size, out_h, align_corners)
            w1, w1p, w1l = bilinear_tap(w2, w1_size, out_w, align_corners)
            h0l, w0l = 1.0 - h1l, 1.0 - w1l
            dx1[:, :, h1, w1] += h0l * w0l * g
            dx1[:, :, h1, w1 + w1p] += h0l * w1l * g
            dx1[:, :, h1 + h1p, w1] += h1l * w0l * g
            dx1[:, :, h1 + h1p, w1 + w1p] += h1l * w1l * g
    return dx
