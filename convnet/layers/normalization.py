"""Normalization layers: BatchNorm (with the affine step of Caffe's companion Scale layer)."""

import numpy as np

from convnet import fillers
from convnet.errors import ShapeError, fail
from convnet.layers.base import Layer, check_number, shape_str


class BatchNorm(Layer):
    """Batch normalization per channel, Caffe's BatchNorm (+ Scale) layer.

    Bottom (N, C, H, W), (N, C) or any (N, C, *spatial); the top has the same shape.
    Statistics run per channel c over the N and spatial axes (m = N * H * W values):

        xhat = (x - mean_c) / sqrt(var_c + eps)
        y    = scale_c * xhat + bias_c                    (affine=True; y = xhat otherwise)

    With batch statistics (train phase) mean_c and var_c are the batch mean and the biased
    batch variance, and the moving averages are updated (Caffe and PyTorch alike):

        running_mean = f * running_mean + (1 - f) * mean_c
        running_var  = f * running_var  + (1 - f) * var_c * m / (m - 1)

    with f = ``moving_average_fraction`` (PyTorch's momentum is 1 - f). With global statistics
    (test phase) the moving averages replace mean_c and var_c and are left unchanged. Backward
    goes through the batch statistics when they were used (the full batch-norm gradient), else
    it is the affine map's gradient; scale and bias diffs are ADDED.

    Parameters: ``eps`` (default 1e-5, > 0), ``moving_average_fraction`` (default 0.999, in
    [0, 1]), ``use_global_stats`` (default None: follow the phase; True / False force moving
    averages / batch statistics), ``affine`` (default True: params [scale (C,), bias (C,)], in
    that order), ``scale_filler`` (default 1.0), ``bias_filler`` (default 0.0), ``sync``
    (default False; True: in a data-parallel run, batch statistics and their gradient span
    every rank's part of the batch, see :mod:`convnet.distributed`).
    ``buffers["mean"]`` and ``buffers["var"]`` hold running_mean (initially 0) and
    running_var (initially 1), shape (C,); the Net saves them with the weights.
    ``in_place`` (default False; the Net sets it when top == bottom, as Caffe's definitions
    do everywhere): allowed, with the same results; the layer still keeps its input for
    backward, so it saves no memory.

    In a Net, a BatchNorm whose top is read by an in-place ReLU (negative_slope 0) right
    after it runs fused with it: one pass computes max(y, 0), and backward applies the ReLU's
    mask (its top > 0) inside the batch-norm gradient; results are identical to the pair.

    >>> bn = BatchNorm(moving_average_fraction=0.9)
    >>> y = bn.forward(np.random.randn(8, 3, 5, 5))    # per-channel zero mean, unit variance
    >>> bn.buffers["mean"].shape
    (3,)
    """

    def __init__(self, eps=1e-5, moving_average_fraction=0.999, use_global_stats=None,
                 affine=True, scale_filler=1.0, bias_filler=0.0, in_place=False, sync=False,
                 **kwargs):
        self.eps = eps
        self.in_place = in_place
        #: the ReLU a Net fused into this layer (an in-place ReLU reading its top), or None
        self.fused_relu = None
        self._fused_top = None
        self.moving_average_fraction = moving_average_fraction
        self.use_global_stats = use_global_stats
        self.affine = affine
        self.scale_filler = scale_filler
        self.bias_filler = bias_filler
        self.sync = sync
        super().__init__(**kwargs)

    def _check_params(self):
        self.eps = check_number(self.eps, "eps", self, minimum=0.0, strict_min=True)
        self.moving_average_fraction = check_number(
            self.moving_average_fraction, "moving_average_fraction", self, minimum=0.0,
            maximum=1.0)
        if self.use_global_stats is not None and not isinstance(self.use_global_stats,
                                                                (bool, np.bool_)):
            fail(self, f"use_global_stats must be None, True or False, got "
                       f"{self.use_global_stats!r}")
        if not isinstance(self.affine, (bool, np.bool_)):
            fail(self, f"affine must be True or False, got {self.affine!r}")
        self.affine = bool(self.affine)
        if not isinstance(self.sync, (bool, np.bool_)):
            fail(self, f"sync must be True or False, got {self.sync!r}")
        self.sync = bool(self.sync)
        self.scale_filler = fillers.normalize(self.scale_filler, "scale_filler", self)
        self.bias_filler = fillers.normalize(self.bias_filler, "bias_filler", self)

    @property
    def channels(self):
        """C, fixed by the first setup (None before)."""
        mean = self.buffers.get("mean")
        return None if mean is None else int(mean.shape[0])

    @property
    def uses_global_stats(self):
        """Whether the next forward normalises with the moving averages."""
        if self.use_global_stats is None:
            return self.phase != "TRAIN"
        return bool(self.use_global_stats)

    def _reshape(self, shapes):
        shape = shapes[0]
        if len(shape) < 2:
            fail(self, f"bottom must be (N, C, ...) with at least 2 axes, got shape "
                       f"{shape_str(shape) or '()'}", ShapeError)
        channels = shape[1]
        if channels < 1:
            fail(self, f"bottom needs at least one channel, got shape {shape_str(shape)}",
                 ShapeError)
        if self.channels is None:
            be = self.backend
            self.buffers["mean"] = be.zeros((channels,), self.dtype)
            var = np.ones((channels,), self.dtype)
            self.buffers["var"] = be.asarray(var, self.dtype)
            if self.affine:
                rng = self.rng
                self._add_param("scale", be.asarray(fillers.fill(
                    self.scale_filler, (channels,), self.dtype, rng, "scale_filler", self),
                    self.dtype))
                self._add_param("bias", be.asarray(fillers.fill(
                    self.bias_filler, (channels,), self.dtype, rng, "bias_filler", self),
                    self.dtype))
        elif channels != self.channels:
            fail(self, f"bottom has {channels} channels (shape {shape_str(shape)}) but the "
                       f"layer was set up for {self.channels}; the channel count is fixed "
                       f"after setup", ShapeError)
        for key in ("mean", "var"):
            if tuple(self.buffers[key].shape) != (channels,):
                fail(self, f"buffers[{key!r}] has shape {shape_str(self.buffers[key].shape)}, "
                           f"expected ({channels},)", ShapeError)
        for p in self.params:
            self._check_param_shape(p, (channels,), "one value per channel")
        return shape

    def _as3d(self, a):
        """(N, C, S) view, S = product of the spatial sizes (1 for (N, C) bottoms)."""
        return a.reshape(a.shape[0], a.shape[1], int(np.prod(a.shape[2:], dtype=np.int64)))

    def _forward(self, bottoms):
        x = bottoms[0]
        be = self.backend
        x3 = self._as3d(x)
        count = x3.shape[0] * x3.shape[2]
        batch_stats = not self.uses_global_stats
        if batch_stats and self.sync:
            count, mean, var = self._synced_stats(x3)
        if batch_stats:
            if count < 2:
                fail(self, f"batch statistics need more than one value per channel, got bottom "
                           f"shape {shape_str(x.shape)}; use more samples or "
                           f"use_global_stats=True", ShapeError)
        scale, bias = (self.params[0].data, self.params[1].data) if self.affine else (None, None)
        y = be.empty(x.shape, self.dtype)
        relu = self.fused_relu is not None and self.fused_relu.negative_slope == 0
        if batch_stats and not self.sync:
            # the statistics and the normalisation in one pass per channel
            mean = be.empty((x3.shape[1],), self.dtype)
            var = be.empty((x3.shape[1],), self.dtype)
            be.normalization_batch_norm_train_forward(x3, self.eps, scale, bias, mean, var,
                                                      self._as3d(y), relu=relu)
        else:
            if not batch_stats:
                # copies: backward must see the statistics this forward used
                mean = self.buffers["mean"].copy()
                var = self.buffers["var"].copy()
            be.normalization_batch_norm_forward(x3, mean, var, self.eps, scale, bias,
                                                self._as3d(y), relu=relu)
        if batch_stats:
            be.normalization_batch_norm_update(self.buffers["mean"], self.buffers["var"],
                                               mean, var, self.moving_average_fraction,
                                               count / (count - 1))
        # the fused ReLU recognises this exact array as already rectified
        self._fused_top = y if relu else None
        self._cache = (x3, mean, var, batch_stats, self._as3d(y) if relu else None)
        self._count = count
        return [y]

    def _synced_stats(self, x3):
        """(count, mean, var) over every rank's batch: the per-channel stats
        [count, sum x, sum x^2] (float64, shape (3, C)) summed by _reduce_stats."""
        x = np.asarray(self.backend.to_numpy(x3))
        stats = np.empty((3, x.shape[1]), np.float64)
        stats[0] = x.shape[0] * x.shape[2]
        stats[1] = x.sum(axis=(0, 2), dtype=np.float64)
        stats[2] = np.einsum("ncs,ncs->c", x, x, dtype=np.float64)
        count, total, squares = self._reduce_stats(stats)
        mean = total / count
        var = np.maximum(squares / count - mean * mean, 0.0)
        be = self.backend
        return int(count[0]), be.asarray(mean, self.dtype), be.asarray(var, self.dtype)

    def _synced_backward(self, dy3, x3, mean, var, dx3, dscale, dbias, top):
        """Backward through statistics that span every rank: the per-channel sums
        [sum dy, sum dy * xhat] (float64, shape (2, C)) of this rank go into the param diffs
        (the gradient allreduce sums them over ranks) and, summed by _reduce_stats, into dx.
        ``top``: the fused ReLU's output (its mask applies to dy first), or None."""
        be = self.backend
        dy = np.asarray(be.to_numpy(dy3), np.float64)
        if top is not None:
            dy = dy * (np.asarray(be.to_numpy(top)) > 0)
        inv_std = 1.0 / np.sqrt(np.asarray(be.to_numpy(var), np.float64) + self.eps)
        xhat = np.asarray(be.to_numpy(x3), np.float64) - np.asarray(
            be.to_numpy(mean), np.float64)[:, None]
        xhat *= inv_std[:, None]
        sums = np.stack([dy.sum(axis=(0, 2)), np.einsum("ncs,ncs->c", dy, xhat)])
        if dscale is not None:
            be.net_accumulate(dscale, be.asarray(sums[1], self.dtype))
        if dbias is not None:
            be.net_accumulate(dbias, be.asarray(sums[0], self.dtype))
        if dx3 is None:
            return
        sums = self._reduce_stats(sums) / self._count
        gain = inv_std if not self.affine else inv_std * np.asarray(
            be.to_numpy(self.params[0].data), np.float64)
        dx = (dy - sums[0][:, None] - xhat * sums[1][:, None]) * gain[:, None]
        dx3[...] = dx.astype(self.dtype)

    def _backward(self, top_diffs, propagate_down):
        x3, mean, var, batch_stats, top = self._cache
        be = self.backend
        dy3 = self._as3d(top_diffs[0])
        dx = be.empty(self.bottom_shapes[0], self.dtype) if propagate_down[0] else None
        if self.affine:
            scale, dscale, dbias = self.params[0].data, self.params[0].diff, self.params[1].diff
        else:
            scale = dscale = dbias = None
        if batch_stats and self.sync:
            self._synced_backward(dy3, x3, mean, var, None if dx is None else self._as3d(dx),
                                  dscale, dbias, top)
            return [dx]
        be.normalization_batch_norm_backward(dy3, x3, mean, var, self.eps, scale,
                                             None if dx is None else self._as3d(dx),
                                             dscale, dbias, batch_stats, top=top)
        return [dx]


class Scale(Layer):
    """Multiply by a per-position scale (and add a bias), Caffe's Scale layer.

    y = x * s + b, where s and b have the shape of the bottom's axes [axis, axis + num_axes)
    and broadcast over the others. With one bottom, s is a learned param (``filler``); with
    two bottoms, bottom 1 is s itself (its shape must equal x's axes from ``axis`` on, for
    its length; ``num_axes`` is then ignored) and receives dscale = sum(dy * x).

    Parameters (Caffe ``scale_param``): ``axis`` (default 1; negative counts from the end),
    ``num_axes`` (default 1; -1: every axis from ``axis`` on; 0: one scalar), ``filler``
    (default 1.0), ``bias_term`` (False), ``bias_filler`` (0.0).

    >>> Scale(bias_term=True).forward(np.ones((2, 3, 4, 4))).shape
    (2, 3, 4, 4)
    """

    min_bottoms = 1
    max_bottoms = 2

    def __init__(self, axis=1, num_axes=1, filler=1.0, bias_term=False, bias_filler=0.0,
                 **kwargs):
        self.axis = axis
        self.num_axes = num_axes
        self.filler = filler
        self.bias_term = bias_term
        self.bias_filler = bias_filler
        super().__init__(**kwargs)

    def _check_params(self):
        self.axis = check_number(self.axis, "axis", self, integer=True)
        self.num_axes = check_number(self.num_axes, "num_axes", self, integer=True,
                                     minimum=-1)
        if not isinstance(self.bias_term, (bool, np.bool_)):
            fail(self, f"bias_term must be True or False, got {self.bias_term!r}")
        self.bias_term = bool(self.bias_term)
        self.filler = fillers.normalize(self.filler, "filler", self)
        self.bias_filler = fillers.normalize(self.bias_filler, "bias_filler", self)

    def _reshape(self, shapes):
        x = shapes[0]
        ndim = len(x)
        if not -ndim <= self.axis < max(ndim, 1) and not (ndim == 0 and self.axis == 0):
            fail(self, f"axis {self.axis} is out of range for a {ndim}-d bottom 0 (expected "
                       f"{-ndim} to {ndim - 1})", ShapeError)
        axis = self.axis % ndim if ndim else 0
        if len(shapes) == 2:
            sshape = tuple(shapes[1])
            if tuple(x[axis:axis + len(sshape)]) != sshape:
                fail(self, f"bottom 1 (the scale) has shape {shape_str(sshape) or '()'} but "
                           f"must equal bottom 0's axes from axis {axis} "
                           f"({shape_str(x[axis:axis + len(sshape)]) or '()'}; bottom 0 is "
                           f"{shape_str(x)})", ShapeError)
        else:
            end = ndim if self.num_axes == -1 else axis + self.num_axes
            if end > ndim:
                fail(self, f"axis {axis} + num_axes {self.num_axes} exceeds bottom 0's {ndim} "
                           f"axes ({shape_str(x)})", ShapeError)
            sshape = tuple(x[axis:end])
        # num_axes=0: one scalar, stored as a 1-element param
        pshape = sshape or (1,)
        if len(shapes) == 1 and not self.params:
            self._add_param("scale", fillers.fill(self.filler, pshape, self.dtype, self.rng,
                                                  "filler", self))
        if self.bias_term and len(self.params) == (1 if len(shapes) == 1 else 0):
            self._add_param("bias", fillers.fill(self.bias_filler, pshape, self.dtype,
                                                 self.rng, "bias_filler", self))
        for p in self.params:
            self._check_param_shape(p, pshape, f"axes {axis} to {axis + len(sshape) - 1}")
        outer = int(np.prod(x[:axis], dtype=np.int64))
        size = int(np.prod(sshape, dtype=np.int64))
        inner = int(np.prod(x[axis + len(sshape):], dtype=np.int64))
        self._view = (outer, size, inner)
        return x

    def _parts(self, bottoms=None):
        """(scale as (S,), bias Param or None)."""
        two = len(self.bottom_shapes) == 2
        bias = self.params[-1] if self.bias_term else None
        if two:
            scale = bottoms[1] if bottoms is not None else self._scale
        else:
            scale = self.params[0].data
        return scale.reshape((self._view[1],)), bias

    def _forward(self, bottoms):
        scale, bias = self._parts(bottoms)
        x = bottoms[0].reshape(self._view)
        self._x, self._scale = x, scale
        y = self.backend.empty(self._view, self.dtype)
        self.backend.normalization_scale_forward(x, scale, None if bias is None else
                                                 bias.data.reshape((self._view[1],)), y)
        return [y.reshape(self.top_shapes[0])]

    def _backward(self, top_diffs, propagate_down):
        be = self.backend
        two = len(self.bottom_shapes) == 2
        dy = top_diffs[0].reshape(self._view)
        size = (self._view[1],)
        bias = self.params[-1] if self.bias_term else None
        dbias = bias.diff.reshape(size) if bias is not None and bias.lr_mult != 0 else None
        if two:
            dscale = be.zeros(size, self.dtype) if propagate_down[1] else None
        else:
            dscale = (self.params[0].diff.reshape(size) if self.params[0].lr_mult != 0
                      else None)
        dx = be.empty(self._view, self.dtype) if propagate_down[0] else None
        be.normalization_scale_backward(dy, self._x, self._scale, dx, dscale, dbias)
        out = [None if dx is None else dx.reshape(self.bottom_shapes[0])]
        if two:
            out.append(None if dscale is None else dscale.reshape(self.bottom_shapes[1]))
        return out
