"""Convolution and Deconvolution: im2col + gemm on the CPU, Caffe's parameters and layouts.

Both layers run on the three primitives of the backend's ``conv`` family (forward,
backward-data, backward-weight, plus the bias sum); Deconvolution is Convolution with the
roles swapped, exactly as Caffe's DeconvolutionLayer reuses BaseConvolutionLayer.
"""

import threading

import numpy as np

from convnet import fillers, shapes
from convnet.errors import ShapeError, fail
from convnet.layers import conv_algorithms
from convnet.layers.base import Layer, shape_str

_scratch = threading.local()


def _workspace(device):
    """The scratch buffers (im2col columns, partial sums) of every convolution run by this
    Python thread on ``device``. Nothing in them outlives a call, so the layers of a net share
    one set (grown to the largest need) instead of holding one each; per thread, so layers
    called concurrently from several threads never share a buffer."""
    spaces = getattr(_scratch, "spaces", None)
    if spaces is None:
        spaces = _scratch.spaces = {}
    return spaces.setdefault(device, {})


def _show(p):
    """An (h, w) pair as the user most likely typed it: ``3`` or ``(3, 5)``."""
    return str(p[0]) if p[0] == p[1] else f"({p[0]}, {p[1]})"


def _paren(p):
    """An (h, w) pair in parentheses: ``(3)`` or ``(3, 5)``."""
    return f"({p[0]})" if p[0] == p[1] else f"({p[0]}, {p[1]})"


class _ConvolutionBase(Layer):
    """Parameters and checks shared by Convolution and Deconvolution."""

    def __init__(self, num_output, kernel_size, stride=1, pad=0, dilation=1, group=1,
                 bias_term=True, weight_filler="msra", bias_filler=0.0, name=None,
                 dtype=np.float32, param=None, algorithm="auto"):
        self._raw = dict(num_output=num_output, kernel_size=kernel_size, stride=stride, pad=pad,
                         dilation=dilation, group=group, bias_term=bias_term,
                         weight_filler=weight_filler, bias_filler=bias_filler,
                         algorithm=algorithm)
        self._x = None
        #: the algorithm setup chose for the current bottom shape and device (None before):
        #: one name, or "forward/backward-data/backward-weight" when the passes differ
        self.algorithm_used = None
        #: the algorithm of each pass in convolution roles (a conv_algorithms.Plan)
        self.algorithm_plan = None
        super().__init__(name=name, dtype=dtype, param=param)

    def _check_params(self):
        raw = self._raw
        self.num_output = shapes.size(raw["num_output"], "num_output", self)
        self.kernel_size = shapes.pair(raw["kernel_size"], "kernel_size", self, minimum=1)
        self.stride = shapes.pair(raw["stride"], "stride", self, minimum=1)
        self.pad = shapes.pair(raw["pad"], "pad", self, minimum=0)
        self.dilation = shapes.pair(raw["dilation"], "dilation", self, minimum=1)
        self.group = shapes.size(raw["group"], "group", self)
        if not isinstance(raw["bias_term"], (bool, np.bool_)):
            fail(self, f"bias_term must be True or False, got {raw['bias_term']!r}")
        self.bias_term = bool(raw["bias_term"])
        if self.num_output % self.group:
            fail(self, f"num_output ({self.num_output}) must be divisible by group "
                       f"({self.group})")
        self.weight_filler = fillers.normalize(raw["weight_filler"], "weight_filler", self)
        self.bias_filler = fillers.normalize(raw["bias_filler"], "bias_filler", self)
        self.algorithm = conv_algorithms.check_name(raw["algorithm"], self)

    # ------------------------------------------------------------------ params
    @property
    def weight(self):
        """The weight Param (created by setup / the first forward)."""
        return self.params[0] if self.params else None

    @property
    def bias(self):
        """The bias Param, or None when ``bias_term=False``."""
        return self.params[1] if self.bias_term and len(self.params) > 1 else None

    def _make_params(self, weight_shape, bias_len):
        if not self.params:
            self._add_param("weight", fillers.fill(self.weight_filler, weight_shape, self.dtype,
                                                   self.rng, "weight_filler", self))
            if self.bias_term:
                self._add_param("bias", fillers.fill(self.bias_filler, (bias_len,), self.dtype,
                                                     self.rng, "bias_filler", self))
        else:
            self._check_param_shape(self.params[0], weight_shape, "weight")
            if self.bias_term:
                self._check_param_shape(self.params[1], (bias_len,), "bias")
        self._param_shapes = [weight_shape, (bias_len,)]

    def _params_intact(self, diffs=False):
        """The kernels index the params by the bottom's shape: refuse params that were
        replaced since setup by arrays of another shape, dtype or layout."""
        for p, shape in zip(self.params, self._param_shapes):
            for what, a in (("data", p.data), ("diff", p.diff)) if diffs else (("data", p.data),):
                contiguous = getattr(getattr(a, "flags", None), "c_contiguous", True)
                if tuple(a.shape) != tuple(shape) or a.dtype != self.dtype or not contiguous:
                    fail(self, f"{p.name} {what} must be a C-contiguous {self.dtype.name} array "
                               f"of shape {shape_str(shape)}, got {a.dtype} "
                               f"{shape_str(a.shape)}; it was replaced after setup",
                         ShapeError)

    # ------------------------------------------------------------------ shapes
    def _check_bottom(self, shape):
        if len(shape) != 4:
            fail(self, f"bottom must be 4-D (N, C, H, W), got shape {shape_str(shape)} "
                       f"({len(shape)}-D)", ShapeError)
        n, c, h, w = shape
        if c < 1 or h < 1 or w < 1:
            fail(self, f"bottom {shape_str(shape)} must have at least one channel and pixel",
                 ShapeError)
        if c % self.group:
            fail(self, f"input channels ({c}) must be divisible by group ({self.group})",
                 ShapeError)
        return n, c, h, w

    def _check_blas(self, *dims):
        if not shapes.fits_int32(*dims):
            fail(self, f"a dimension of this layer's matrix products ({max(dims)}) does not fit "
                       f"the 32-bit ints of BLAS (at most {shapes.bound_text(2 ** 31 - 1)}); "
                       f"use smaller images or fewer channels", ShapeError)

    def _check_windows(self, image, out):
        """The index maths of the windows over ``image`` that give ``out`` fits 64 bits."""
        for axis in range(2):
            shapes.check_window(self, ("height", "width")[axis], image[axis], out[axis],
                                self.kernel_size[axis], self.stride[axis], self.pad[axis],
                                self.dilation[axis])

    def _choose_algorithm(self, shape, device=None):
        self.algorithm_plan = conv_algorithms.choose(self, shape, device or self.device)
        self.algorithm_used = conv_algorithms.describe(self, self.algorithm_plan)

    def _move_state(self, device):
        super()._move_state(device)
        self._x = None
        if self.bottom_shapes:
            self._choose_algorithm(self.bottom_shapes[0], device)

    def _geometry(self, conv_pass=None):
        """The backend's conv arguments, with the algorithm of one pass in convolution roles
        ("forward", "backward_data", "backward_weight": a Deconvolution's forward is
        "backward_data"); without a pass, no algorithm (conv_backward takes two)."""
        geometry = dict(kernel=self.kernel_size, stride=self.stride, pad=self.pad,
                        dilation=self.dilation, group=self.group,
                        workspace=_workspace(self.device))
        if conv_pass is not None:
            geometry["algorithm"] = getattr(self.algorithm_plan, conv_pass)
        return geometry

    def _learns(self, index):
        return len(self.params) > index and self.params[index].lr_mult != 0


class Convolution(_ConvolutionBase):
    """2-D convolution (cross-correlation, as in Caffe and PyTorch), with groups and dilation.

    ``y[n, m, oh, ow] = bias[m] + sum_{c, i, j} weight[m, c, i, j]
    * x[n, g*C/group + c, oh*s_h - p_h + i*d_h, ow*s_w - p_w + j*d_w]`` (zero outside x),
    g = m // (num_output / group). Output size per axis (``convnet.shapes.conv_out``):
    ``floor((H + 2p - (d(k-1) + 1)) / s) + 1``.

    Shapes: bottom (N, C, H, W) -> top (N, num_output, OH, OW); weight
    (num_output, C/group, kh, kw); bias (num_output,).

    Caffe parameters (defaults): num_output, kernel_size, stride (1), pad (0), dilation (1),
    group (1), bias_term (True), weight_filler ("msra"), bias_filler (0.0); kernel_size,
    stride, pad and dilation take an int or an (h, w) pair. ``param=[dict(lr_mult=...), ...]``
    sets the weight's and bias's multipliers; lr_mult 0 skips that gradient entirely.
    ``algorithm`` ("auto"): "im2col", "winograd" for 3x3 kernels at stride 1 (any pad and
    dilation), "direct" (any kernel at stride 1: register-blocked loops, for few channels),
    "kn2row" (any kernel at stride 1, no im2col buffer) or "s2d" (stride > 1, dilation 1:
    space-to-depth, a stride-1 convolution on the direct loops); "auto" picks for each pass
    (forward, backward-data, backward-weight) by the rule in
    :mod:`convnet.layers.conv_algorithms`, and ``algorithm_used`` says what setup chose: one
    name, or the three joined by "/" when the passes differ (e.g. "direct/im2col/direct").

    >>> conv = Convolution(num_output=8, kernel_size=3, pad=1)
    >>> conv.forward(np.zeros((2, 3, 5, 7), np.float32)).shape
    (2, 8, 5, 7)
    """

    def _reshape(self, shapes_):
        n, c, h, w = self._check_bottom(shapes_[0])
        kh, kw = self.kernel_size
        oh = shapes.conv_out(h, kh, self.stride[0], self.pad[0], self.dilation[0])
        ow = shapes.conv_out(w, kw, self.stride[1], self.pad[1], self.dilation[1])
        if oh < 1 or ow < 1:
            fail(self, f"input {h}x{w} with kernel_size {_show(self.kernel_size)}, stride "
                       f"{_show(self.stride)}, pad {_show(self.pad)}, dilation "
                       f"{_show(self.dilation)} gives an empty output "
                       f"({max(oh, 0)}x{max(ow, 0)})", ShapeError)
        self._check_windows((h, w), (oh, ow))
        self._check_blas(c * kh * kw, oh * ow, self.num_output, n)
        self._choose_algorithm(shapes_[0])
        self._make_params((self.num_output, c // self.group, kh, kw), self.num_output)
        return (n, self.num_output, oh, ow)

    def _forward(self, bottoms):
        self._params_intact()
        x = bottoms[0]
        y = self.backend.empty(self.top_shapes[0], self.dtype)
        bias = self.params[1].data if self.bias_term else None
        self.backend.conv_forward(x, self.params[0].data, bias, y, **self._geometry("forward"))
        self._x = x
        return [y]

    def _backward(self, top_diffs, propagate_down):
        self._params_intact(diffs=True)
        dy = top_diffs[0]
        be = self.backend
        if self.bias_term and self._learns(1):
            be.conv_backward_bias(dy, self.params[1].diff)
        dx = be.empty(self.bottom_shapes[0], self.dtype) if propagate_down[0] else None
        if self._learns(0) and dx is not None:
            # both passes: the backend may run them as one (the direct loops do)
            be.conv_backward(self._x, dy, self.params[0].data, dx, self.params[0].diff,
                             **self._geometry(),
                             data_algorithm=self.algorithm_plan.backward_data,
                             weight_algorithm=self.algorithm_plan.backward_weight)
        elif self._learns(0):
            be.conv_backward_weight(self._x, dy, self.params[0].diff,
                                    **self._geometry("backward_weight"))
        elif dx is not None:
            be.conv_backward_data(dy, self.params[0].data, None, dx,
                                  **self._geometry("backward_data"))
        return [dx]


class Deconvolution(_ConvolutionBase):
    """Transposed convolution: the exact adjoint of Convolution's linear part, plus a bias.

    Each input pixel scatters ``x[n, c, h, w] * weight[c, m, i, j]`` to output pixel
    ``(h*s_h - p_h + i*d_h, w*s_w - p_w + j*d_w)`` of channel g*num_output/group + m. Output
    size per axis (``convnet.shapes.deconv_out``):
    ``s(H - 1) + d(k - 1) + 1 - 2p + output_padding``, with ``output_padding <
    max(stride, dilation)``. ``forward(x, output_size=(h, w))`` picks the output_padding that
    gives that size (PyTorch's ``output_size`` argument).

    Shapes: bottom (N, C, H, W) -> top (N, num_output, OH, OW); weight
    (C, num_output/group, kh, kw) as in Caffe (and torch's conv_transpose2d); bias
    (num_output,).

    Caffe parameters (defaults): num_output, kernel_size, stride (1), pad (0), dilation (1),
    group (1), bias_term (True), weight_filler ("msra"), bias_filler (0.0), plus
    output_padding (0). For FCN's fixed upsampling use ``weight_filler="bilinear"``,
    ``group=C`` and ``param=[dict(lr_mult=0)]``. ``algorithm`` ("auto"): "im2col",
    "winograd" (3x3, stride 1), "direct" (stride 1), "kn2row" (stride 1), "subpixel"
    (stride > 1, dilation 1: the forward as stride**2 stride-1 convolutions, no col2im
    scatter) or "s2d" (stride > 1, dilation 1: space-to-depth, the strided convolution of
    its backward as a stride-1 one on the direct loops); "auto" picks for each pass, and
    ``algorithm_used`` names them as for Convolution (the layer's own passes: its forward is
    the convolution's backward-data); see :mod:`convnet.layers.conv_algorithms`.

    >>> up = Deconvolution(num_output=4, kernel_size=4, stride=2, pad=1)
    >>> up.forward(np.zeros((1, 4, 5, 6), np.float32)).shape
    (1, 4, 10, 12)
    """

    def __init__(self, num_output, kernel_size, stride=1, pad=0, dilation=1, group=1,
                 output_padding=0, bias_term=True, weight_filler="msra", bias_filler=0.0,
                 name=None, dtype=np.float32, param=None, algorithm="auto"):
        self._raw_output_padding = output_padding
        super().__init__(num_output, kernel_size, stride, pad, dilation, group, bias_term,
                         weight_filler, bias_filler, name, dtype, param, algorithm)

    def _check_params(self):
        super()._check_params()
        self.output_padding = shapes.pair(self._raw_output_padding, "output_padding", self,
                                          minimum=0)
        for axis in range(2):
            if self.output_padding[axis] >= max(self.stride[axis], self.dilation[axis]):
                fail(self, f"output_padding {_paren(self.output_padding)} must be smaller "
                           f"than stride {_paren(self.stride)} or dilation "
                           f"{_paren(self.dilation)}")
        self._active_padding = self.output_padding

    def forward(self, *bottoms, output_size=None):
        """The top; ``output_size=(h, w)`` (or a full (N, C, h, w) shape) picks the
        output_padding per axis, as PyTorch's ``output_size`` argument does."""
        padding = self.output_padding
        self._forwarded = False        # a refused call leaves no cache for backward
        if output_size is not None:
            padding = self._padding_for(bottoms, output_size)
        if padding != self._active_padding:
            previous = self._active_padding
            self._active_padding = padding
            self.bottom_shapes = None      # the top shape changes: set up again
            try:
                return super().forward(*bottoms)
            except BaseException:
                # the next call sets up again, for the padding it asks for
                self._active_padding, self.bottom_shapes = previous, None
                raise
        return super().forward(*bottoms)

    def _padding_for(self, bottoms, output_size):
        if isinstance(output_size, (tuple, list)) and len(output_size) == 4:
            output_size = tuple(output_size[2:])
        want = shapes.pair(output_size, "output_size", self, minimum=1)
        self._check_count(len(bottoms))
        shape = np.shape(self._check_numeric(bottoms[0], "bottom", 0))
        _, _, h, w = self._check_bottom(shapes.shape(shape, "bottom 0", self))
        padding = []
        for axis, size in enumerate((h, w)):
            base = shapes.deconv_out(size, self.kernel_size[axis], self.stride[axis],
                                     self.pad[axis], self.dilation[axis], 0)
            top = base + max(self.stride[axis], self.dilation[axis]) - 1
            if not base <= want[axis] <= top:
                fail(self, f"output_size {want[0]}x{want[1]} is unreachable from input "
                           f"{h}x{w}: the output {'height' if axis == 0 else 'width'} must be "
                           f"in [{base}, {top}], got {want[axis]}", ShapeError)
            padding.append(want[axis] - base)
        return tuple(padding)

    def _reshape(self, shapes_):
        n, c, h, w = self._check_bottom(shapes_[0])
        kh, kw = self.kernel_size
        op = self._active_padding
        oh = shapes.deconv_out(h, kh, self.stride[0], self.pad[0], self.dilation[0], op[0])
        ow = shapes.deconv_out(w, kw, self.stride[1], self.pad[1], self.dilation[1], op[1])
        if oh < 1 or ow < 1:
            fail(self, f"input {h}x{w} with kernel_size {_show(self.kernel_size)}, stride "
                       f"{_show(self.stride)}, pad {_show(self.pad)}, dilation "
                       f"{_show(self.dilation)}, output_padding {_show(op)} gives an empty "
                       f"output ({max(oh, 0)}x{max(ow, 0)})", ShapeError)
        self._check_windows((oh, ow), (h, w))      # the conv roles: top in, bottom out
        self._check_blas(self.num_output * kh * kw, h * w, c, n, oh * ow)
        self._choose_algorithm(shapes_[0])
        self._make_params((c, self.num_output // self.group, kh, kw), self.num_output)
        return (n, self.num_output, oh, ow)

    def _forward(self, bottoms):
        self._params_intact()
        x = bottoms[0]
        y = self.backend.empty(self.top_shapes[0], self.dtype)
        bias = self.params[1].data if self.bias_term else None
        self.backend.conv_backward_data(x, self.params[0].data, bias, y,
                                        **self._geometry("backward_data"))
        self._x = x
        return [y]

    def _backward(self, top_diffs, propagate_down):
        self._params_intact(diffs=True)
        dy = top_diffs[0]
        be = self.backend
        # conv roles: the conv "input" is this layer's top, its "output" our bottom
        dx = be.empty(self.bottom_shapes[0], self.dtype) if propagate_down[0] else None
        shared = self.algorithm_plan.forward == self.algorithm_plan.backward_weight
        if self._learns(0) and dx is not None and shared:
            be.conv_forward_backward_weight(dy, self.params[0].data, dx, self._x,
                                            self.params[0].diff, **self._geometry("forward"))
        else:
            if self._learns(0):
                be.conv_backward_weight(dy, self._x, self.params[0].diff,
                                        **self._geometry("backward_weight"))
            if dx is not None:
                be.conv_forward(dy, self.params[0].data, None, dx, **self._geometry("forward"))
        if self.bias_term and self._learns(1):
            be.conv_backward_bias(dy, self.params[1].diff)
        return [dx]


__all__ = ["Convolution", "Deconvolution"]
