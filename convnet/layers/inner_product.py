"""Fully connected layers: InnerProduct and Embed (Caffe semantics)."""

import numbers

import numpy as np

from convnet import fillers
from convnet.errors import ConfigError, DataError, ShapeError, StateError, fail
from convnet.layers.base import Layer, check_number, shape_str


def _flag(value, param, owner):
    if not isinstance(value, (bool, np.bool_)):
        fail(owner, f"{param} must be True or False, got {value!r}", ConfigError)
    return bool(value)


def _axis(axis, ndim, owner):
    if not isinstance(axis, numbers.Integral) or isinstance(axis, bool):
        fail(owner, f"axis must be an int, got {axis!r}", ConfigError)
    if not -ndim <= axis < max(ndim, 1):
        fail(owner, f"axis {axis} is out of range for a {ndim}-d bottom (expected {-ndim} to "
                    f"{ndim - 1})", ShapeError)
    return int(axis) % max(ndim, 1)


def _count(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


class InnerProduct(Layer):
    """Fully connected layer, Caffe's InnerProduct.

    The bottom is viewed as (M, K) with M = product of the axes before ``axis`` and K the
    product of the rest; y = x W^T + b with W of shape (num_output, K) (or (K, num_output)
    with ``transpose=True``, y = x W + b), b of shape (num_output,). Top shape: the bottom's
    axes before ``axis`` followed by num_output.

    Parameters (Caffe ``inner_product_param``): ``num_output`` (required), ``bias_term``
    (True), ``weight_filler`` ("xavier"), ``bias_filler`` (0.0), ``axis`` (1; negative counts
    from the end), ``transpose`` (False).

    >>> ip = InnerProduct(num_output=10)
    >>> ip.forward(np.zeros((4, 3, 5, 5))).shape
    (4, 10)
    """

    def __init__(self, num_output, bias_term=True, weight_filler="xavier", bias_filler=0.0,
                 axis=1, transpose=False, **kwargs):
        self.num_output = num_output
        self.bias_term = bias_term
        self.weight_filler = weight_filler
        self.bias_filler = bias_filler
        self.axis = axis
        self.transpose = transpose
        super().__init__(**kwargs)

    def _check_params(self):
        self.num_output = check_number(self.num_output, "num_output", self, minimum=1,
                                       integer=True)
        self.bias_term = _flag(self.bias_term, "bias_term", self)
        self.transpose = _flag(self.transpose, "transpose", self)
        if not isinstance(self.axis, numbers.Integral) or isinstance(self.axis, bool):
            fail(self, f"axis must be an int, got {self.axis!r}")
        self.weight_filler = fillers.normalize(self.weight_filler, "weight_filler", self)
        self.bias_filler = fillers.normalize(self.bias_filler, "bias_filler", self)

    def _reshape(self, shapes):
        shape = shapes[0]
        axis = _axis(self.axis, len(shape), self)
        m, k = _count(shape[:axis]), _count(shape[axis:])
        if k == 0:
            fail(self, f"bottom {shape_str(shape)} has no inputs per row from axis {axis} "
                       f"(K = 0)", ShapeError)
        wshape = (k, self.num_output) if self.transpose else (self.num_output, k)
        if not self.params:
            self._add_param("weight", fillers.fill(self.weight_filler, wshape, self.dtype,
                                                   self.rng, "weight_filler", self))
            if self.bias_term:
                self._add_param("bias", fillers.fill(self.bias_filler, (self.num_output,),
                                                     self.dtype, self.rng, "bias_filler", self))
        elif self.params[0].shape != wshape:
            fail(self, f"weight has shape {shape_str(self.params[0].shape)} but bottom "
                       f"{shape_str(shape)} with axis {axis} needs {shape_str(wshape)} (K = {k} "
                       f"inputs per row); the bottom changed after setup", ShapeError)
        self._mk = (m, k)
        return tuple(shape[:axis]) + (self.num_output,)

    def _forward(self, bottoms):
        x = bottoms[0].reshape(self._mk)
        self._x = x
        y = self.backend.empty((self._mk[0], self.num_output), self.dtype)
        bias = self.params[1].data if self.bias_term else None
        self.backend.inner_product_forward(x, self.params[0].data, bias, y, self.transpose)
        return [y.reshape(self.top_shapes[0])]

    def forward_streamed(self, bottom):
        """``forward(bottom)`` with the top's rows left to the caller: returns (top, rows)
        once the bottom is checked and the layer set up, where ``rows(lo, hi)`` writes rows
        lo:hi of the (M, num_output) view of the top, as one gemm on the calling thread
        (CPU; any thread, blocks of disjoint rows). The caller runs ``rows`` over every row
        before it reads the top or calls backward (convnet.rnn's CellRunner computes an input
        projection this way, step block by step block, beside the time loop)."""
        x = self._prepared_bottoms([bottom])[0].reshape(self._mk)
        self._x = x
        be = self.backend
        y = be.empty((self._mk[0], self.num_output), self.dtype)
        weight = self.params[0].data
        bias = self.params[1].data if self.bias_term else None
        transpose = self.transpose

        def rows(lo, hi):
            be.inner_product_forward(x[lo:hi], weight, bias, y[lo:hi], transpose, split=False)
        self._forwarded = True
        return y.reshape(self.top_shapes[0]), rows

    def backward_streamed(self, top_diff, propagate_down=True):
        """``backward(top_diff)`` with the rows left to the caller: returns (bottom diff or
        None, rows) where ``rows(lo, hi)`` reads rows lo:hi of the (M, num_output) view of
        ``top_diff``, writes those rows of the bottom diff and ADDS their share of the param
        diffs, as gemms on the calling thread (CPU). The caller runs ``rows`` once over every
        row, one block at a time (the param diffs accumulate), in an order that does not
        depend on the thread count; the bottom diff is complete after the last block."""
        if not self._forwarded:
            fail(self, "backward_streamed() called before forward()", StateError)
        m, k = self._mk
        if not (isinstance(top_diff, np.ndarray) and top_diff.dtype == self.dtype
                and top_diff.flags.c_contiguous
                and tuple(top_diff.shape) == tuple(self.top_shapes[0])):
            fail(self, f"backward_streamed takes a C-contiguous {np.dtype(self.dtype).name} "
                       f"top diff of shape {shape_str(self.top_shapes[0])}, got "
                       f"{shape_str(getattr(top_diff, 'shape', ()))}", ShapeError)
        dy = top_diff.reshape((m, self.num_output))
        be = self.backend
        dx = be.empty((m, k), self.dtype) if propagate_down else None
        x, weight, transpose = self._x, self.params[0], self.transpose
        bias = self.params[1] if self.bias_term else None

        def rows(lo, hi):
            d = dy[lo:hi]
            if weight.lr_mult != 0:
                be.inner_product_backward_weight(x[lo:hi], d, weight.diff, transpose,
                                                 split=False)
            if bias is not None and bias.lr_mult != 0:
                be.inner_product_backward_bias(d, bias.diff)
            if dx is not None:
                be.inner_product_backward_data(d, weight.data, dx[lo:hi], transpose,
                                               split=False)
        return (dx.reshape(self.bottom_shapes[0]) if dx is not None else None), rows

    #: when True, backward computes the bottom diff only and leaves the param diffs to one
    #: later :meth:`accumulate_param_diffs` call (set by convnet.rnn's engine for its time loop)
    param_diffs_deferred = False

    def _backward(self, top_diffs, propagate_down):
        be = self.backend
        dy = top_diffs[0].reshape((self._mk[0], self.num_output))
        if not self.param_diffs_deferred:
            self._param_diffs(self._x, dy)
        if not propagate_down[0]:
            return [None]
        dx = be.empty(self._mk, self.dtype)
        be.inner_product_backward_data(dy, self.params[0].data, dx, self.transpose)
        return [dx.reshape(self.bottom_shapes[0])]

    def _param_diffs(self, x, dy):
        """ADD dW (dy^T x, or x^T dy with transpose) and db (the column sums of dy) for the
        rows x (M, K), dy (M, num_output)."""
        be = self.backend
        weight = self.params[0]
        if weight.lr_mult != 0:
            be.inner_product_backward_weight(x, dy, weight.diff, self.transpose)
        if self.bias_term and self.params[1].lr_mult != 0:
            be.inner_product_backward_bias(dy, self.params[1].diff)

    def accumulate_param_diffs(self, bottoms, top_diffs):
        """ADD the param diffs of S forward calls at once, equal (up to summation order) to
        what S backward calls add: ``bottoms`` (S, *bottom shape) and ``top_diffs``
        (S, *top shape) stack the calls' bottoms and top diffs (any S >= 1, e.g. the T steps
        of a recurrent net: one gemm of S x M rows instead of S gemms of M rows)."""
        bottom, top = tuple(self.bottom_shapes[0]), tuple(self.top_shapes[0])
        if tuple(bottoms.shape[1:]) != bottom or tuple(top_diffs.shape) != (
                bottoms.shape[:1] + top):
            fail(self, f"accumulate_param_diffs takes bottoms S x {shape_str(bottom)} and top "
                       f"diffs S x {shape_str(top)}, got {shape_str(bottoms.shape)} and "
                       f"{shape_str(top_diffs.shape)}", ShapeError)
        rows = bottoms.shape[0] * self._mk[0]
        self._param_diffs(bottoms.reshape((rows, self._mk[1])),
                          top_diffs.reshape((rows, self.num_output)))


class Embed(Layer):
    """A lookup table, Caffe's Embed layer: y[..., :] = W[index[...], :] (+ b).

    The bottom holds row ids (integers, or integral floats as Caffe stores them) of any
    shape; the top has that shape plus ``num_output``. W has shape (input_dim, num_output),
    b (num_output,). An id outside [0, input_dim) or not an integer is a DataError naming its
    position and value. The bottom gets no diff; W's rows receive the summed top diffs.

    Parameters (Caffe ``embed_param``): ``input_dim`` (the vocabulary size, required),
    ``num_output`` (required), ``bias_term`` (True), ``weight_filler`` ("xavier"),
    ``bias_filler`` (0.0).

    >>> emb = Embed(input_dim=10, num_output=4)
    >>> emb.forward(np.array([[1, 2, 3]])).shape
    (1, 3, 4)
    """

    nondiff_bottoms = (0,)

    def __init__(self, input_dim, num_output, bias_term=True, weight_filler="xavier",
                 bias_filler=0.0, **kwargs):
        self.input_dim = input_dim
        self.num_output = num_output
        self.bias_term = bias_term
        self.weight_filler = weight_filler
        self.bias_filler = bias_filler
        super().__init__(**kwargs)

    def _check_params(self):
        self.input_dim = check_number(self.input_dim, "input_dim", self, minimum=1,
                                      integer=True)
        self.num_output = check_number(self.num_output, "num_output", self, minimum=1,
                                       integer=True)
        self.bias_term = _flag(self.bias_term, "bias_term", self)
        self.weight_filler = fillers.normalize(self.weight_filler, "weight_filler", self)
        self.bias_filler = fillers.normalize(self.bias_filler, "bias_filler", self)

    def _convert_bottom(self, index, x):
        dt = getattr(x, "dtype", None)
        if dt is None or np.dtype(dt).kind not in "iuf":
            x = np.asarray(x)
            if x.dtype.kind not in "iuf":
                fail(self, f"bottom 0 must hold row ids (integers), got dtype {x.dtype.name}",
                     DataError)
        if np.dtype(x.dtype).kind == "u":
            x = np.asarray(x).astype(np.int64)
        return self.backend.asarray(x)

    def _reshape(self, shapes):
        if not self.params:
            self._add_param("weight", fillers.fill(
                self.weight_filler, (self.input_dim, self.num_output), self.dtype, self.rng,
                "weight_filler", self))
            if self.bias_term:
                self._add_param("bias", fillers.fill(self.bias_filler, (self.num_output,),
                                                     self.dtype, self.rng, "bias_filler", self))
        return tuple(shapes[0]) + (self.num_output,)

    def _forward(self, bottoms):
        index = bottoms[0]
        be = self.backend
        y = be.empty((_count(index.shape), self.num_output), self.dtype)
        bias = self.params[1].data if self.bias_term else None
        bad = be.inner_product_embed_forward(index, self.params[0].data, bias, y)
        if bad >= 0:
            where = np.unravel_index(bad, index.shape) if index.ndim else ()
            value = be.to_numpy(index).reshape(-1)[bad].item()
            fail(self, f"bottom 0 index {value!r} at position {tuple(int(i) for i in where)} "
                       f"is not a row id in [0, input_dim = {self.input_dim})", DataError)
        self._index = index
        return [y.reshape(self.top_shapes[0])]

    def _backward(self, top_diffs, propagate_down):
        dy = top_diffs[0].reshape((_count(self._index.shape), self.num_output))
        if self.params[0].lr_mult != 0:
            self.backend.inner_product_embed_backward(self._index, dy, self.params[0].diff)
        if self.bias_term and self.params[1].lr_mult != 0:
            self.backend.inner_product_backward_bias(dy, self.params[1].diff)
        return [None]
