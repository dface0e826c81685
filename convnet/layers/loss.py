"""Loss layers: SoftmaxWithLoss (per-pixel softmax cross-entropy) and EuclideanLoss."""

import math
import numbers

import numpy as np

from convnet.errors import DataError, ShapeError, fail
from convnet.layers.base import Layer, check_choice, check_number, shape_str

#: label dtypes the kernels read as they are; other integer types are widened
_LABEL_DTYPES = tuple(np.dtype(t) for t in (np.int32, np.int64, np.float32, np.float64))


def _reuse(backend, buffer, shape, dtype):
    """``buffer`` when it has this shape and dtype, else a new one: a loss keeps its
    forward state between calls (fresh large arrays cost a page fault per 4 KiB)."""
    if buffer is not None and tuple(buffer.shape) == shape and buffer.dtype == dtype:
        return buffer
    return backend.empty(shape, dtype)


class SoftmaxWithLoss(Layer):
    """Softmax over the channel axis followed by the multinomial logistic loss (Caffe's
    SoftmaxWithLoss), per pixel.

    Bottoms: ``scores`` (N, C, H, W) (or (N, C), or (N, C, *spatial)) and ``labels`` of shape
    (N, H, W) or Caffe's (N, 1, H, W) ((N,) or (N, 1) for (N, C) scores). Labels are class
    ids in [0, C): integers, or floats holding integer values (Caffe stores labels as floats);
    they are read as given, never rounded, and never receive a diff. Top: the scalar loss::

        p[n, c, s] = exp(x[n, c, s] - m) / sum_c' exp(x[n, c', s] - m),  m = max_c x[n, c, s]
        loss = -sum_{valid (n, s)} log p[n, label[n, s], s] / normalizer
        d loss / d x[n, c, s] = (p[n, c, s] - [c == label[n, s]]) / normalizer * top_diff

    with log p computed as (x_label - m) - log sum_c exp(x - m): stable for any logits (no
    overflow or NaN at +/-1e4) and exact where Caffe clamps p at FLT_MIN. Pixels whose label is
    ``ignore_label`` add no loss and get a zero gradient. A label that is neither a class id
    nor ``ignore_label`` is a DataError naming its value and position (Caffe reads out of
    bounds there in release builds).

    Parameters (Caffe's SoftmaxWithLoss / LossParameter names):
      ignore_label   None (default: every pixel counts) or the int label to skip
      normalization  "VALID" (default: the number of non-ignored pixels), "FULL" (N*H*W),
                     "BATCH_SIZE" (N) or "NONE" (1); the normalizer is at least 1, as in Caffe,
                     so a batch with every pixel ignored has loss 0 and a zero gradient
      axis           1 (the softmax axis; the only one supported)
      loss_weight    1.0

    >>> loss = SoftmaxWithLoss(ignore_label=255)
    >>> value = loss.forward(scores, labels)     # scores (2, 21, 64, 64), labels (2, 64, 64)
    >>> dscores, _ = loss.backward()             # labels get None
    """

    min_bottoms = max_bottoms = 2
    is_loss = True
    nondiff_bottoms = (1,)
    NORMALIZATIONS = ("VALID", "FULL", "BATCH_SIZE", "NONE")

    def __init__(self, ignore_label=None, normalization="VALID", axis=1, loss_weight=1.0,
                 name=None, dtype=np.float32):
        self.ignore_label = ignore_label
        self.normalization = normalization
        self.axis = axis
        self._prob = None
        self._label_index = None
        self._inv_sum = None
        self._normalizer = 1.0
        super().__init__(name=name, dtype=dtype, loss_weight=loss_weight)

    def _check_params(self):
        if self.ignore_label is not None:
            self.ignore_label = check_number(self.ignore_label, "ignore_label", self,
                                             integer=True, minimum=-2 ** 63,
                                             maximum=2 ** 63 - 1)
        self.normalization = check_choice(self.normalization, "normalization",
                                          self.NORMALIZATIONS, self)
        if not isinstance(self.axis, numbers.Integral) or isinstance(self.axis, bool) \
                or self.axis != 1:
            fail(self, f"axis must be 1 (softmax over the channel axis; no other axis is "
                       f"supported), got {self.axis!r}")

    def _convert_bottom(self, index, x):
        if index == 0:
            return super()._convert_bottom(index, x)
        dt = getattr(x, "dtype", None)
        dt = np.asarray(x).dtype if dt is None else np.dtype(dt)
        if dt in _LABEL_DTYPES:
            target = dt
        elif dt.kind in "iub":
            # uint64 ids above 2**63 only fit a float (they are out of range anyway)
            target = np.dtype(np.int32 if dt.itemsize < 4 else
                              np.float64 if dt == np.uint64 else np.int64)
        elif dt.kind == "f":
            target = np.dtype(np.float32) if dt.itemsize < 4 else np.dtype(np.float64)
        else:
            fail(self, f"labels must be integers or floats holding integer class ids, got "
                       f"dtype {dt.name}", DataError)
        return self.backend.asarray(x, target)

    def _reshape(self, shapes):
        scores, labels = shapes
        if len(scores) < 2:
            fail(self, f"scores (bottom 0) must have shape (N, C, ...) with a class axis 1, "
                       f"got {shape_str(scores) or 'a scalar'}", ShapeError)
        if scores[1] < 1:
            fail(self, f"scores (bottom 0) need at least one class (C >= 1), got shape "
                       f"{shape_str(scores)}", ShapeError)
        n, spatial = scores[0], scores[2:]
        allowed = [(n,) + spatial, (n, 1) + spatial]
        if tuple(labels) not in allowed:
            want = " or ".join(shape_str(s) for s in allowed)
            fail(self, f"labels (bottom 1) must have shape {want} for scores "
                       f"{shape_str(scores)}, got {shape_str(labels) or 'a scalar'}",
                 ShapeError)
        return ()

    def _count_for(self, n, pixels, valid):
        """The normalisation's count for this batch (0 for NONE: the normaliser stays 1)."""
        return {"VALID": valid, "FULL": n * pixels, "BATCH_SIZE": n, "NONE": 0}[
            self.normalization]

    def _forward(self, bottoms):
        scores, labels = bottoms
        n, c = scores.shape[0], scores.shape[1]
        pixels = math.prod(scores.shape[2:])
        be = self.backend
        prob = _reuse(be, self._prob, (n, c, pixels), self.dtype)
        label_index = _reuse(be, self._label_index, (n, pixels), np.int32)
        extra = {}
        inv_sum = None
        if getattr(be, "SOFTMAX_INV_SUM", False):
            # the exponentials and 1 / their sum instead of the softmax: forward saves its
            # normalising pass and backward applies the scale in its per-pixel weight
            inv_sum = _reuse(be, self._inv_sum, (n, pixels), self.dtype)
            extra = {"inv_sum": inv_sum}
        loss_sum, valid, bad = be.loss_softmax_forward(
            scores.reshape(n, c, pixels), labels.reshape(n, pixels), self.ignore_label,
            prob, label_index, **extra)
        if bad >= 0:
            self._raise_bad_label(labels, bad, c)
        self._prob, self._label_index, self._inv_sum = prob, label_index, inv_sum
        # data-parallel ranks sum both: every rank returns the whole batch's loss and
        # scales its gradient by the whole batch's normaliser
        loss_sum, count = self._reduce_stats(np.array(
            [loss_sum, self._count_for(n, pixels, valid)], dtype=np.float64))
        self._normalizer = max(1.0, float(count))
        return float(loss_sum) / self._normalizer

    def _raise_bad_label(self, labels, flat, classes):
        host = np.asarray(self.backend.to_numpy(labels))
        position = tuple(int(i) for i in np.unravel_index(flat, host.shape))
        value = host[position].item()
        if host.dtype.kind == "f" and not (math.isfinite(value) and value == math.floor(value)):
            fail(self, f"label {value} at position {position} of labels "
                       f"{shape_str(host.shape)} is not an integer class id", DataError)
        ignore = ("no ignore_label is set" if self.ignore_label is None
                  else f"ignore_label is {self.ignore_label}")
        # a float label too large for an int64 prints as 1e+300, not as 301 digits
        shown = int(value) if abs(value) < 2 ** 63 else f"{value:g}"
        fail(self, f"label {shown} at position {position} of labels {shape_str(host.shape)} "
                   f"is outside [0, {classes}) and {ignore}", DataError)

    def _backward(self, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None, None]
        scores_shape = self.bottom_shapes[0]
        grad = self.backend.empty(self._prob.shape, self.dtype)
        extra = {} if self._inv_sum is None else {"inv_sum": self._inv_sum}
        self.backend.loss_softmax_backward(self._prob, self._label_index,
                                           top_diffs[0] / self._normalizer, grad, **extra)
        return [grad.reshape(scores_shape), None]


class EuclideanLoss(Layer):
    """Half the summed squared difference of two bottoms per example (Caffe's EuclideanLoss).

    Bottoms ``a`` and ``b`` of identical shape (N, ...); top the scalar::

        loss = sum (a - b)^2 / (2 N)             N = a.shape[0], the batch size
        d loss / d a = +(a - b) / N * top_diff
        d loss / d b = -(a - b) / N * top_diff

    each gradient computed only for a bottom with propagate_down. An empty batch (N = 0)
    has loss 0. On the CPU the layer keeps references to a and b (as Convolution keeps its
    input) and backward recomputes a - b from them: forward only reads its bottoms.

    Parameters: ``loss_weight`` (1.0).

    >>> loss = EuclideanLoss()
    >>> value = loss.forward(prediction, target)       # both (8, 3, 32, 32)
    >>> dpred, _ = loss.backward(propagate_down=(True, False))
    """

    min_bottoms = max_bottoms = 2
    is_loss = True

    def __init__(self, loss_weight=1.0, name=None, dtype=np.float32):
        self._bottoms = None
        self._batch = 0.0
        super().__init__(name=name, dtype=dtype, loss_weight=loss_weight)

    def _reshape(self, shapes):
        a, b = shapes
        if len(a) < 1:
            fail(self, "bottoms must have a batch axis (N, ...), got scalars", ShapeError)
        if a != b:
            fail(self, f"bottoms must have the same shape, got {shape_str(a)} (bottom 0) and "
                       f"{shape_str(b)} (bottom 1)", ShapeError)
        return ()

    def _forward(self, bottoms):
        a, b = bottoms
        # forward only reads; backward recomputes a - b from the kept bottoms (as
        # Convolution keeps x), which saves writing and re-reading a stored difference
        total = self.backend.loss_euclidean_sum(a.reshape(-1), b.reshape(-1))
        self._bottoms = (a.reshape(-1), b.reshape(-1))
        # data-parallel ranks sum both (see SoftmaxWithLoss)
        total, batch = self._reduce_stats(np.array([total, a.shape[0]], dtype=np.float64))
        self._batch = float(batch)
        return float(total) / (2 * self._batch) if self._batch else 0.0

    def _backward(self, top_diffs, propagate_down):
        shape = self.bottom_shapes[0]
        be = self.backend
        size = math.prod(shape)
        grads = [be.empty((size,), self.dtype) if flag else None for flag in propagate_down]
        if any(propagate_down) and shape[0]:
            alpha = top_diffs[0] / self._batch
            be.loss_euclidean_grad(*self._bottoms, alpha, *grads)
        return [g.reshape(shape) if g is not None else None for g in grads]
