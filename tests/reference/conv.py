"""Naive float64 convolution and transposed convolution, written from the definitions.

Convolution (cross-correlation): every output pixel gathers over channels and kernel taps;
its gradients scatter the same products back. Deconvolution is the scatter definition: every
input pixel adds weight * value into the output pixels its kernel taps land on.
"""

import numpy as np

from convnet import shapes


def _taps(out_size, in_size, k, s, p, d):
    """(output index, tap, input index) triples whose input index lies inside [0, in_size)."""
    return [(o, t, o * s - p + t * d) for o in range(out_size) for t in range(k)
            if 0 <= o * s - p + t * d < in_size]


def conv2d(x, weight, bias, stride, pad, dilation, group):
    """y[n, m, oh, ow] = bias[m] + sum_{c, i, j} weight[m, c, i, j] * x[n, cin, ih, iw]."""
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    n_img, channels, h, w = x.shape
    m_out, cg, kh, kw = weight.shape
    mg = m_out // group
    oh = shapes.conv_out(h, kh, stride[0], pad[0], dilation[0])
    ow = shapes.conv_out(w, kw, stride[1], pad[1], dilation[1])
    rows = _taps(oh, h, kh, stride[0], pad[0], dilation[0])
    cols = _taps(ow, w, kw, stride[1], pad[1], dilation[1])
    y = np.zeros((n_img, m_out, oh, ow))
    for n in range(n_img):
        for m in range(m_out):
            g = m // mg
            for c in range(cg):
                cin = g * cg + c
                for o_h, i, ih in rows:
                    for o_w, j, iw in cols:
                        y[n, m, o_h, o_w] += weight[m, c, i, j] * x[n, cin, ih, iw]
            if bias is not None:
                y[n, m] += bias[m]
    return y


def conv2d_grads(x, weight, dy, stride, pad, dilation, group):
    """(dx, dweight, dbias) of conv2d for the top diff dy, by scattering the same products."""
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    dy = np.asarray(dy, np.float64)
    n_img, channels, h, w = x.shape
    m_out, cg, kh, kw = weight.shape
    mg = m_out // group
    oh, ow = dy.shape[2:]
    rows = _taps(oh, h, kh, stride[0], pad[0], dilation[0])
    cols = _taps(ow, w, kw, stride[1], pad[1], dilation[1])
    dx = np.zeros_like(x)
    dw = np.zeros_like(weight)
    for n in range(n_img):
        for m in range(m_out):
            g = m // mg
            for c in range(cg):
                cin = g * cg + c
                for o_h, i, ih in rows:
                    for o_w, j, iw in cols:
                        dx[n, cin, ih, iw] += weight[m, c, i, j] * dy[n, m, o_h, o_w]
                        dw[m, c, i, j] += x[n, cin, ih, iw] * dy[n, m, o_h, o_w]
    db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db


def deconv2d(x, weight, bias, stride, pad, dilation, group, output_padding):
    """Scatter: y[n, g*Mg + m, h*s - p + i*d, w*s - p + j*d] += x[n, c, h, w] * weight[c, m, i, j]
    for every input pixel and tap landing inside the output; plus bias[m]."""
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    n_img, channels, h, w = x.shape
    _, mg, kh, kw = weight.shape
    cg = channels // group
    m_out = mg * group
    oh = shapes.deconv_out(h, kh, stride[0], pad[0], dilation[0], output_padding[0])
    ow = shapes.deconv_out(w, kw, stride[1], pad[1], dilation[1], output_padding[1])
    y = np.zeros((n_img, m_out, oh, ow))
    for n in range(n_img):
        for c in range(channels):
            g = c // cg
            for ih in range(h):
                for iw in range(w):
                    for m in range(mg):
                        for i in range(kh):
                            for j in range(kw):
                                o_h = ih * stride[0] - pad[0] + i * dilation[0]
                                o_w = iw * stride[1] - pad[1] + j * dilation[1]
                                if 0 <= o_h < oh and 0 <= o_w < ow:
                                    y[n, g * mg + m, o_h, o_w] += x[n, c, ih, iw] * weight[c, m, i, j]
    if bias is not None:
        y += np.asarray(bias, np.float64)[None, :, None, None]
    return y


def deconv2d_grads(x, weight, dy, stride, pad, dilation, group):
    """(dx, dweight, dbias) of deconv2d: the scatter read backwards (a gather)."""
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    dy = np.asarray(dy, np.float64)
    n_img, channels, h, w = x.shape
    _, mg, kh, kw = weight.shape
    cg = channels // group
    oh, ow = dy.shape[2:]
    dx = np.zeros_like(x)
    dw = np.zeros_like(weight)
    for n in range(n_img):
        for c in range(channels):
            g = c // cg
            for ih in range(h):
                for iw in range(w):
                    for m in range(mg):
                        for i in range(kh):
                            for j in range(kw):
                                o_h = ih * stride[0] - pad[0] + i * dilation[0]
                                o_w = iw * stride[1] - pad[1] + j * dilation[1]
                                if 0 <= o_h < oh and 0 <= o_w < ow:
                                    top = dy[n, g * mg + m, o_h, o_w]
                                    dx[n, c, ih, iw] += weight[c, m, i, j] * top
                                    dw[c, m, i, j] += x[n, c, ih, iw] * top
    db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db


def im2col(x, kernel, stride, pad, dilation, out_size):
    """col[(c*kh + i)*kw + j, oh*OW + ow] = x[c, oh*s - p + i*d, ow*s - p + j*d] (0 outside)."""
    channels, h, w = x.shape
    kh, kw = kernel
    oh, ow = out_size
    col = np.zeros((channels * kh * kw, oh * ow))
    for c in range(channels):
        for i in range(kh):
            for j in range(kw):
                for a in range(oh):
                    for b in range(ow):
                        ih = a * stride[0] - pad[0] + i * dilation[0]
                        iw = b * stride[1] - pad[1] + j * dilation[1]
                        if 0 <= ih < h and 0 <= iw < w:
                            col[(c * kh + i) * kw + j, a * ow + b] = x[c, ih, iw]
    return col
