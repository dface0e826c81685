"""Naive float64 reference for batch normalization, channel by channel."""

import math

import numpy as np


def _channel_values(x, c):
    """All values of channel c of x (N, C, ...) as a flat list."""
    values = []
    for n in range(x.shape[0]):
        for idx in np.ndindex(x.shape[2:]):
            values.append(float(x[(n, c) + idx]))
    return values


def batch_norm_forward(x, scale, bias, running_mean, running_var, eps, fraction,
                       use_batch_stats):
    """Return (y, new_running_mean, new_running_var).

    Batch statistics: mean and biased variance over N and the spatial axes for normalising;
    running = fraction * running + (1 - fraction) * batch, with the unbiased batch variance.
    Global statistics: normalise with the running values, which stay unchanged.
    scale / bias None means no affine step.
    """
    x = np.asarray(x, dtype=np.float64)
    channels = x.shape[1]
    y = np.empty_like(x)
    new_mean = np.array(running_mean, dtype=np.float64)
    new_var = np.array(running_var, dtype=np.float64)
    for c in range(channels):
        values = _channel_values(x, c)
        m = len(values)
        if use_batch_stats:
            mean = sum(values) / m
            var = sum((v - mean) ** 2 for v in values) / m
            new_mean[c] = fraction * running_mean[c] + (1 - fraction) * mean
            new_var[c] = fraction * running_var[c] + (1 - fraction) * var * m / (m - 1)
        else:
            mean, var = float(running_mean[c]), float(running_var[c])
        g = 1.0 if scale is None else float(scale[c])
        b = 0.0 if bias is None else float(bias[c])
        for n in range(x.shape[0]):
            for idx in np.ndindex(x.shape[2:]):
                at = (n, c) + idx
                y[at] = g * (x[at] - mean) / math.sqrt(var + eps) + b
    return y, new_mean, new_var


def batch_norm_backward(dy, x, scale, running_mean, running_var, eps, use_batch_stats):
    """Return (dx, dscale, dbias) from the textbook formulas.

    With batch statistics: dx = g / sigma * (dy - mean(dy) - xhat * mean(dy * xhat));
    with global statistics: dx = g / sigma * dy. dscale = sum(dy * xhat), dbias = sum(dy).
    """
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    channels = x.shape[1]
    dx = np.empty_like(x)
    dscale = np.zeros(channels)
    dbias = np.zeros(channels)
    for c in range(channels):
        values = _channel_values(x, c)
        grads = _channel_values(dy, c)
        m = len(values)
        if use_batch_stats:
            mean = sum(values) / m
            var = sum((v - mean) ** 2 for v in values) / m
        else:
            mean, var = float(running_mean[c]), float(running_var[c])
        sigma = math.sqrt(var + eps)
        xhat = [(v - mean) / sigma for v in values]
        dbias[c] = sum(grads)
        dscale[c] = sum(g * h for g, h in zip(grads, xhat))
        g = 1.0 if scale is None else float(scale[c])
        mean_dy = dbias[c] / m
        mean_dy_xhat = dscale[c] / m
        for n in range(x.shape[0]):
            for idx in np.ndindex(x.shape[2:]):
                at = (n, c) + idx
                h = (x[at] - mean) / sigma
                if use_batch_stats:
                    dx[at] = g / sigma * (dy[at] - mean_dy - h * mean_dy_xhat)
                else:
                    dx[at] = g / sigma * dy[at]
    return dx, dscale, dbias
