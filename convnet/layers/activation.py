"""Element-wise activation layers: ReLU (with Caffe's negative_slope) and Dropout."""

import copy

import numpy as np

from convnet import fillers
from convnet.errors import ConfigError, fail
from convnet.layers.base import Layer, check_number


def _check_flag(value, param, owner):
    if not isinstance(value, (bool, np.bool_)):
        fail(owner, f"{param} must be True or False, got {value!r}", ConfigError)
    return bool(value)


class ReLU(Layer):
    """Rectified linear unit, Caffe's ReLU layer.

    y = max(x, 0) + negative_slope * min(x, 0), element-wise; any shape in, the same shape out.
    Backward: dx = dy where x > 0, negative_slope * dy elsewhere (Caffe's rule: the gradient
    at x = 0 is negative_slope * dy).

    Parameters (Caffe ``relu_param``): ``negative_slope`` (default 0.0; leaky ReLU when > 0).
    ``in_place`` (default False; the Net sets it when top == bottom): forward writes y into the
    bottom array it was given (after conversion to the layer's dtype, which copies only when the
    dtype or layout differ) and returns it; backward writes dx into the top diff it was given.
    Backward then reads the sign of the top instead of the bottom, which is the same sign for
    negative_slope >= 0; in-place with a negative slope is therefore refused.

    >>> relu = ReLU(negative_slope=0.1)
    >>> relu.forward(np.array([[-2.0, 3.0]]))
    array([[-0.2,  3. ]], dtype=float32)
    """

    def __init__(self, negative_slope=0.0, in_place=False, **kwargs):
        self.negative_slope = negative_slope
        self.in_place = in_place
        #: the BatchNorm a Net fused this ReLU into (see BatchNorm), or None
        self.fused_into = None
        self._fused_run = False
        super().__init__(**kwargs)

    def _check_params(self):
        self.negative_slope = check_number(self.negative_slope, "negative_slope", self)
        self.in_place = _check_flag(self.in_place, "in_place", self)
        self._check_in_place()

    def _check_in_place(self):
        if self.in_place and self.negative_slope < 0:
            fail(self, f"in_place=True needs negative_slope >= 0 (backward reads the sign of the "
                       f"top, which a negative slope flips), got {self.negative_slope}")

    def _reshape(self, shapes):
        return shapes[0]

    def _forward(self, bottoms):
        x = bottoms[0]
        # in_place may have been switched on by the Net after construction
        self._check_in_place()
        owner = self.fused_into
        self._fused_run = (self.in_place and owner is not None
                           and getattr(owner, "_fused_top", None) is x)
        if self._fused_run:
            # the BatchNorm before it already wrote max(y, 0) into this array
            return [x]
        if self.in_place:
            self._check_writeable(x, "bottom")
        y = x if self.in_place else self.backend.empty(x.shape, self.dtype)
        self.backend.activation_relu_forward(x, self.negative_slope, y)
        # the top has the bottom's sign for slope >= 0, so in place it serves as the mask
        self._sign_source = y if self.in_place else x
        self._in_place_run = self.in_place
        return [y]

    def _backward(self, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None]
        dy = top_diffs[0]
        if self._fused_run:
            return [dy]             # the BatchNorm applies the mask in its backward
        if self._in_place_run:
            self._check_writeable(dy, "top diff")
        dx = dy if self._in_place_run else self.backend.empty(dy.shape, self.dtype)
        self.backend.activation_relu_backward(dy, self._sign_source, self.negative_slope, dx)
        return [dx]


class Dropout(Layer):
    """Dropout with inverted scaling, Caffe's Dropout layer.

    Train phase: each element is kept with probability 1 - dropout_ratio and scaled by
    1 / (1 - dropout_ratio), else set to 0; y = x * keep / (1 - r), dx = dy * keep / (1 - r)
    with the mask of the last forward. Test phase (``layer.eval()``): y = x (a copy), dx = dy.
    Any shape in, the same shape out.

    Parameters: ``dropout_ratio`` (Caffe ``dropout_param``, default 0.5, in [0, 1)),
    ``seed`` (an int seeding this layer's own numpy Generator; None draws the seed from
    convnet's global generator, so ``convnet.seed(s)`` makes a program reproducible),
    ``in_place`` (default False; forward overwrites the bottom, backward the top diff, as for
    ReLU; always safe since backward needs only the mask). ``get_rng_state()`` /
    ``set_rng_state()`` save and restore the mask stream exactly (solver snapshots).

    >>> drop = Dropout(dropout_ratio=0.5, seed=0)
    >>> y = drop.forward(np.ones((2, 4)))              # entries are 0 or 2
    >>> y_test = drop.eval().forward(np.ones((2, 4)))  # all ones: identity at test
    """

    def __init__(self, dropout_ratio=0.5, seed=None, in_place=False, **kwargs):
        self.dropout_ratio = dropout_ratio
        self.seed = seed
        self.in_place = in_place
        super().__init__(**kwargs)
        if self.seed is None:
            self.seed = int(fillers.global_rng().integers(2 ** 63))
        self.generator = np.random.default_rng(self.seed)

    def _check_params(self):
        self.dropout_ratio = check_number(self.dropout_ratio, "dropout_ratio", self, minimum=0.0)
        if not self.dropout_ratio < 1.0:
            fail(self, f"dropout_ratio must be in [0, 1) (the kept fraction 1 - ratio scales "
                       f"the output), got {self.dropout_ratio}")
        if self.seed is not None:
            self.seed = check_number(self.seed, "seed", self, minimum=0, integer=True)
        self.in_place = _check_flag(self.in_place, "in_place", self)

    @property
    def scale(self):
        """The train-time factor 1 / (1 - dropout_ratio) applied to kept elements."""
        return 1.0 / (1.0 - self.dropout_ratio)

    def get_rng_state(self):
        return copy.deepcopy(self.generator.bit_generator.state)

    def set_rng_state(self, state):
        if not isinstance(state, dict):
            fail(self, f"rng state must be the dict get_rng_state() returned, got "
                       f"{type(state).__name__} {state!r:.60}")
        # validated on a fresh bit generator first: a bad state leaves the stream unchanged
        trial = type(self.generator.bit_generator)()
        try:
            trial.state = copy.deepcopy(state)
        except (TypeError, ValueError, KeyError) as exc:
            fail(self, f"rng state is not a {type(trial).__name__} state from "
                       f"get_rng_state(): {exc}")
        self.generator.bit_generator.state = trial.state

    def _reshape(self, shapes):
        return shapes[0]

    def _forward(self, bottoms):
        x = bottoms[0]
        if self.in_place:
            self._check_writeable(x, "bottom")
        self._in_place_run = self.in_place
        y = x if self.in_place else self.backend.empty(x.shape, self.dtype)
        self._keep = None
        if self.phase == "TRAIN" and self.dropout_ratio > 0.0:
            # draws in float32: the mask stream does not depend on the layer's dtype
            keep = self.generator.random(x.shape, dtype=np.float32) >= np.float32(
                self.dropout_ratio)
            self._keep = self.backend.asarray(keep)
            self.backend.activation_dropout_forward(x, self._keep, self.scale, y)
        elif y is not x:
            y[...] = x
        return [y]

    def _backward(self, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None]
        dy = top_diffs[0]
        if self._in_place_run:
            self._check_writeable(dy, "top diff")
        dx = dy if self._in_place_run else self.backend.empty(dy.shape, self.dtype)
        if self._keep is not None:
            self.backend.activation_dropout_backward(dy, self._keep, self.scale, dx)
        elif dx is not dy:
            dx[...] = dy
        return [dx]


# Sigmoid, TanH and Softmax (the cells' nonlinearities)
from convnet.errors import ShapeError  # noqa: E402


class _Smooth(Layer):
    """Sigmoid and TanH: y = f(x) element-wise; backward reads only the top (so running in
    place is safe): dx = dy * f'(x) written through y."""

    def __init__(self, in_place=False, **kwargs):
        self.in_place = in_place
        super().__init__(**kwargs)

    def _check_params(self):
        self.in_place = _check_flag(self.in_place, "in_place", self)

    def _reshape(self, shapes):
        return shapes[0]

    def _forward(self, bottoms):
        x = bottoms[0]
        y = x if self.in_place else self.backend.empty(x.shape, self.dtype)
        getattr(self.backend, f"activation_{self._kernel}_forward")(x, y)
        self._y = y
        self._in_place_run = self.in_place
        return [y]

    def _backward(self, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None]
        dy = top_diffs[0]
        dx = dy if self._in_place_run else self.backend.empty(dy.shape, self.dtype)
        getattr(self.backend, f"activation_{self._kernel}_backward")(dy, self._y, dx)
        return [dx]


class Sigmoid(_Smooth):
    """Logistic sigmoid, Caffe's Sigmoid layer: y = 1 / (1 + exp(-x)); dx = dy y (1 - y).

    Any shape in, the same shape out; ``in_place`` (default False; the Net sets it when
    top == bottom). No overflow at any x (computed from exp(-|x|), exactly 0 or 1 at the
    extremes).

    >>> Sigmoid().forward(np.array([0.0]))
    array([0.5], dtype=float32)
    """

    _kernel = "sigmoid"


class TanH(_Smooth):
    """Hyperbolic tangent, Caffe's TanH layer: y = tanh(x); dx = dy (1 - y^2).

    Any shape in, the same shape out; ``in_place`` as for Sigmoid.

    >>> TanH().forward(np.array([0.0]))
    array([0.], dtype=float32)
    """

    _kernel = "tanh"


class Softmax(Layer):
    """Softmax over one axis, Caffe's Softmax layer (no loss).

    y = exp(x - max) / sum(exp(x - max)) along ``axis``, for every position of the other
    axes; backward dx = y (dy - sum_axis(dy y)).

    Parameters (Caffe ``softmax_param``): ``axis`` (default 1; negative counts from the end).

    >>> Softmax(axis=1).forward(np.zeros((2, 4))).sum(axis=1)
    array([1., 1.], dtype=float32)
    """

    def __init__(self, axis=1, **kwargs):
        self.axis = axis
        super().__init__(**kwargs)

    def _check_params(self):
        self.axis = check_number(self.axis, "axis", self, integer=True)

    def _reshape(self, shapes):
        shape = shapes[0]
        ndim = len(shape)
        if not -ndim <= self.axis < ndim:
            fail(self, f"axis {self.axis} is out of range for a {ndim}-d bottom (expected "
                       f"{-ndim} to {ndim - 1})", ShapeError)
        axis = self.axis % ndim
        outer = int(np.prod(shape[:axis], dtype=np.int64))
        inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
        self._view = (outer, shape[axis], inner)
        return shape

    def _forward(self, bottoms):
        y = self.backend.empty(self._view, self.dtype)
        self.backend.activation_softmax_forward(bottoms[0].reshape(self._view), y)
        self._y = y
        return [y.reshape(self.top_shapes[0])]

    def _backward(self, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None]
        dx = self.backend.empty(self._view, self.dtype)
        self.backend.activation_softmax_backward(top_diffs[0].reshape(self._view), self._y, dx)
        return [dx.reshape(self.bottom_shapes[0])]
