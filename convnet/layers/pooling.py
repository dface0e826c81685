"""Pooling (MAX / AVE, with Caffe's argmax mask top) and Unpooling (DeconvNet's max unpooling)."""

import numpy as np

from convnet import shapes
from convnet.errors import ConfigError, DataError, ShapeError, fail
from convnet.layers.base import Layer, check_choice, shape_str

# float32 holds every integer up to 2**24 exactly: the largest plane a float32 mask can index
_FLOAT32_EXACT = 2 ** 24


def _flag(value, param, owner):
    if not isinstance(value, (bool, np.bool_)):
        fail(owner, f"{param} must be True or False, got {value!r}", ConfigError)
    return bool(value)


def _show(pair):
    """A pair as the user would have typed it: 3 for (3, 3), (3, 2) otherwise."""
    return str(pair[0]) if pair[0] == pair[1] else f"({pair[0]}, {pair[1]})"


def _check_4d(owner, shape, what):
    if len(shape) != 4:
        fail(owner, f"{what} must be 4-D (N, C, H, W), got shape {shape_str(shape) or '()'} "
                    f"({len(shape)}-D)", ShapeError)


def _check_pad(owner, pad, kernel):
    # Caffe: CHECK_LT(pad, kernel); a larger pad makes windows that lie wholly in the padding
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        fail(owner, f"pad ({_show(pad)}) must be smaller than kernel_size ({_show(kernel)})")


class Pooling(Layer):
    """Max or average pooling over kh x kw windows, Caffe's Pooling layer.

    Shapes: x (N, C, H, W) -> y (N, C, OH, OW), with (Caffe's ceil rule, the default)
    OH = ceil((H + 2 ph - kh) / sh) + 1, minus 1 when the last window would start at or past
    H + ph, so that no window lies wholly in the padding; ``round_mode="FLOOR"`` gives
    OH = floor((H + 2 ph - kh) / sh) + 1 (likewise OW). Caffe applies the last-window correction
    only when pad > 0: with pad 0 and stride > kernel it keeps a window wholly past the image
    (output -FLT_MAX, mask -1). convnet drops that window, as PyTorch's ceil_mode does, so such
    a layer has one output row/column fewer than in Caffe.

    MAX: y = the window maximum (a NaN wins, as in PyTorch); backward routes dy to the argmax,
    the first maximum in row-major window order. AVE: y = window sum / pool_size with
    pool_size = (hend - hstart)(wend - wstart) for the window clipped to the padded extent
    [-p, H + p) but not to the image (Caffe; PyTorch's avg_pool2d with count_include_pad=True
    and ceil_mode=True); backward spreads dy / pool_size over the window's image part.

    Parameters (Caffe ``pooling_param``): ``kernel_size`` (int or (h, w); required unless
    global_pooling), ``stride`` (1), ``pad`` (0; must be < kernel_size), ``pool`` ("MAX" or
    "AVE"), ``round_mode`` ("CEIL" or "FLOOR"), ``global_pooling`` (False; the kernel becomes
    H x W, stride 1, pad 0). ``return_mask`` (False, MAX only) adds Caffe's second top: the
    argmax as the flat index h*W + w in the unpadded input plane (PyTorch's indices), stored in
    the layer's dtype as Caffe stores its mask blob; float32 holds it exactly for planes of up to
    2**24 pixels, and larger planes are refused. The layer keeps its own integer argmax for
    backward either way; the mask top gets no gradient, and ``backward(dy)`` may omit its diff.

    >>> pool = Pooling(kernel_size=2, stride=2, return_mask=True)
    >>> y, mask = pool.forward(np.arange(16.0).reshape(1, 1, 4, 4))
    >>> y[0, 0].tolist(), mask[0, 0].tolist()
    ([[5.0, 7.0], [13.0, 15.0]], [[5.0, 7.0], [13.0, 15.0]])
    """

    def __init__(self, kernel_size=None, stride=1, pad=0, pool="MAX", round_mode="CEIL",
                 return_mask=False, global_pooling=False, **kwargs):
        self.kernel_size = kernel_size
        self.stride = stride
        self.pad = pad
        self.pool = pool
        self.round_mode = round_mode
        self.return_mask = return_mask
        self.global_pooling = global_pooling
        super().__init__(**kwargs)

    def _check_params(self):
        self.pool = check_choice(self.pool, "pool", ("MAX", "AVE"), self)
        self.round_mode = check_choice(self.round_mode, "round_mode", ("CEIL", "FLOOR"), self)
        self.return_mask = _flag(self.return_mask, "return_mask", self)
        self.global_pooling = _flag(self.global_pooling, "global_pooling", self)
        self.stride = shapes.pair(self.stride, "stride", self, minimum=1)
        self.pad = shapes.pair(self.pad, "pad", self, minimum=0)
        if self.global_pooling:
            if self.kernel_size is not None:
                fail(self, f"kernel_size cannot be given with global_pooling=True (the kernel is "
                           f"the whole input plane), got {self.kernel_size!r}")
            if self.stride != (1, 1) or self.pad != (0, 0):
                fail(self, f"global_pooling=True needs stride 1 and pad 0, got stride "
                           f"{_show(self.stride)}, pad {_show(self.pad)}")
        else:
            if self.kernel_size is None:
                fail(self, "kernel_size is required (or global_pooling=True)")
            self.kernel_size = shapes.pair(self.kernel_size, "kernel_size", self, minimum=1)
            _check_pad(self, self.pad, self.kernel_size)
        if self.return_mask and self.pool != "MAX":
            fail(self, f"return_mask=True needs pool='MAX' (the mask is the argmax), got "
                       f"pool={self.pool!r}")
        self.num_tops = 2 if self.return_mask else 1
        self._argmax = None
        self._mask_top = None

    def _reshape(self, shapes_in):
        shape = shapes_in[0]
        _check_4d(self, shape, "bottom")
        n, c, h, w = shape
        kernel = (h, w) if self.global_pooling else self.kernel_size
        ceil = self.round_mode == "CEIL"
        oh = shapes.pool_out(h, kernel[0], self.stride[0], self.pad[0], ceil)
        ow = shapes.pool_out(w, kernel[1], self.stride[1], self.pad[1], ceil)
        if oh <= 0 or ow <= 0:
            fail(self, f"input {h}x{w} with kernel_size {_show(kernel)}, stride "
                       f"{_show(self.stride)}, pad {_show(self.pad)} gives an empty output "
                       f"({max(oh, 0)}x{max(ow, 0)})", ShapeError)
        for axis, (size, out) in enumerate(((h, oh), (w, ow))):
            shapes.check_window(self, ("height", "width")[axis], size, out, kernel[axis],
                                self.stride[axis], self.pad[axis])
        if self.pool == "AVE":
            # the kernel sums each window from one zero-padded row per thread
            row = max(self.pad[1] + w, (ow - 1) * self.stride[1] + kernel[1])
            if row > shapes.MAX_EXTENT:
                fail(self, f"AVE pooling of width {w} with kernel_size {_show(kernel)}, stride "
                           f"{_show(self.stride)}, pad {_show(self.pad)} sums padded rows of "
                           f"{row} values, more than {shapes.bound_text(shapes.MAX_EXTENT)}",
                     ShapeError)
        if self.return_mask and self.dtype == np.float32 and h * w > _FLOAT32_EXACT:
            fail(self, f"return_mask=True with dtype float32 holds indices exactly only for "
                       f"planes of up to 2**24 pixels, got {h}x{w}; use dtype=np.float64",
                 ShapeError)
        self._kernel = kernel
        self._index_dtype = np.dtype(np.int32 if h * w < 2 ** 31 else np.int64)
        top = (n, c, oh, ow)
        return [top, top] if self.return_mask else top

    def _forward(self, bottoms):
        x = bottoms[0]
        be = self.backend
        top = self.top_shapes[0]
        y = be.empty(top, self.dtype)
        if self.pool == "AVE":
            be.pooling_ave_forward(x, y, self._kernel, self.stride, self.pad)
            return [y]
        # the argmax is private, so its buffer is reused from one forward to the next
        a = self._argmax
        if a is None or tuple(a.shape) != top or a.dtype != self._index_dtype:
            a = be.empty(top, self._index_dtype)
            self._argmax = a
        mask = be.empty(top, self.dtype) if self.return_mask else None
        be.pooling_max_forward(x, y, a, mask, self._kernel, self.stride, self.pad)
        if self.return_mask:
            self._mask_top = mask
            return [y, mask]
        return [y]

    def backward(self, *top_diffs, propagate_down=None):
        if self.return_mask and len(top_diffs) == 1 and self._forwarded:
            # the mask top has no gradient; the mask itself (right shape and dtype, so no
            # copy) stands in for its diff
            top_diffs = (top_diffs[0], self._mask_top)
        return super().backward(*top_diffs, propagate_down=propagate_down)

    def _backward(self, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None]
        be = self.backend
        dy = top_diffs[0]
        dx = be.empty(self.bottom_shapes[0], self.dtype)
        if self.pool == "AVE":
            be.pooling_ave_backward(dy, dx, self._kernel, self.stride, self.pad)
        else:
            be.pooling_max_backward(dy, self._argmax, dx, self._kernel, self.stride, self.pad)
        return [dx]

    def _move_state(self, device):
        super()._move_state(device)
        self._argmax = None


def min_unpool_size(pooled, kernel, stride, pad):
    """The smallest plane length whose pooling (ceil rule) gives ``pooled`` outputs: the least
    out_size an Unpooling of a ``pooled``-long input accepts."""
    lo, hi = 1, max(shapes.unpool_out(pooled, kernel, stride, pad), 1)
    while shapes.pool_out(hi, kernel, stride, pad, True) < pooled:
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if shapes.pool_out(mid, kernel, stride, pad, True) >= pooled:
            hi = mid
        else:
            lo = mid + 1
    return lo


class Unpooling(Layer):
    """Max unpooling (DeconvNet's Unpooling layer): the inverse of a max Pooling with masks.

    Bottoms: x (N, C, H, W) and mask (N, C, H, W), the argmax top of a Pooling layer (flat
    indices oh*OW + ow into the output plane; float or int arrays; non-integer, NaN or
    out-of-range values are a DataError naming the value, its position and the output size).
    Top: y (N, C, OH, OW), zero except y[n, c].flat[mask[n, c, h, w]] = x[n, c, h, w]; when two
    inputs map to one position the later one in row-major scan order wins (as
    torch.nn.functional.max_unpool2d). Backward gathers: dx = dy[n, c].flat[mask], through the
    mask as forward read it (the layer keeps the validated indices); the mask gets no gradient.

    Output size: ``out_size=(OH, OW)`` (the pooled layer's input size, e.g. odd sizes that a
    ceil-mode pooling rounded up), else OH = (H - 1) sh - 2 ph + kh (likewise OW). An out_size
    smaller than a pooling with these parameters could have come from is refused.

    Parameters: ``kernel_size`` (int or (h, w)), ``stride`` (1), ``pad`` (0; < kernel_size),
    ``out_size`` (None or int or (h, w)): those of the matching Pooling layer.

    >>> pool = Pooling(kernel_size=2, stride=2, return_mask=True)
    >>> unpool = Unpooling(kernel_size=2, stride=2, out_size=(5, 5))
    >>> x = np.random.rand(1, 1, 5, 5)
    >>> y = unpool.forward(*pool.forward(x))          # x's maxima in place, zeros elsewhere
    """

    min_bottoms = 2
    max_bottoms = 2
    nondiff_bottoms = (1,)

    def __init__(self, kernel_size, stride=1, pad=0, out_size=None, **kwargs):
        self.kernel_size = kernel_size
        self.stride = stride
        self.pad = pad
        self.out_size = out_size
        super().__init__(**kwargs)

    def _check_params(self):
        self.kernel_size = shapes.pair(self.kernel_size, "kernel_size", self, minimum=1)
        self.stride = shapes.pair(self.stride, "stride", self, minimum=1)
        self.pad = shapes.pair(self.pad, "pad", self, minimum=0)
        _check_pad(self, self.pad, self.kernel_size)
        if self.out_size is not None:
            self.out_size = shapes.pair(self.out_size, "out_size", self, minimum=1)
        self._index = None

    def _convert_bottom(self, index, x):
        if index == 0:
            return self.backend.asarray(x, self.dtype)
        # masks keep their integer or float type: a float32 copy of a large int index would
        # round it, and the kernel validates every value anyway
        if not isinstance(x, np.ndarray) and getattr(x, "__cuda_array_interface__", None) is None:
            x = np.asarray(x)
        dt = np.dtype(x.dtype)
        self._mask_source = None
        if dt in (np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.float32),
                  np.dtype(np.float64)):
            return self.backend.asarray(x, dt)
        if dt == np.dtype(np.uint64):
            # values past int64 are out of range for any plane: clip them so the kernel
            # reports them, and keep the original for the message
            self._mask_source = x
            return self.backend.asarray(np.minimum(x, np.iinfo(np.int64).max), np.int64)
        if dt.kind in "iub":
            return self.backend.asarray(x, np.int64)
        if dt.kind == "f":
            return self.backend.asarray(x, np.float64)
        fail(self, f"mask must hold integer indices (an int or float array), got dtype "
                   f"{dt}", DataError)

    def _reshape(self, shapes_in):
        xs, ms = shapes_in
        _check_4d(self, xs, "bottom 0 (x)")
        _check_4d(self, ms, "bottom 1 (mask)")
        if xs != ms:
            fail(self, f"mask must have x's shape {shape_str(xs)}, got {shape_str(ms)}",
                 ShapeError)
        n, c, h, w = xs
        k, s, p = self.kernel_size, self.stride, self.pad
        if self.out_size is not None:
            oh, ow = self.out_size
            need = (min_unpool_size(h, k[0], s[0], p[0]) if h else 0,
                    min_unpool_size(w, k[1], s[1], p[1]) if w else 0)
            if oh < need[0] or ow < need[1]:
                fail(self, f"out_size ({oh}, {ow}) is smaller than a {h}x{w} input needs with "
                           f"kernel_size {_show(k)}, stride {_show(s)}, pad {_show(p)}: at least "
                           f"({need[0]}, {need[1]})", ShapeError)
        else:
            oh = shapes.unpool_out(h, k[0], s[0], p[0])
            ow = shapes.unpool_out(w, k[1], s[1], p[1])
            for axis, (size, out) in enumerate(((oh, h), (ow, w))):
                shapes.check_window(self, ("height", "width")[axis], size, out, k[axis],
                                    s[axis], p[axis])
            if oh <= 0 or ow <= 0:
                fail(self, f"input {h}x{w} with kernel_size {_show(k)}, stride {_show(s)}, pad "
                           f"{_show(p)} gives an empty output ({max(oh, 0)}x{max(ow, 0)}); "
                           f"give out_size", ShapeError)
        return (n, c, oh, ow)

    def _bad_index(self, mask, position):
        source = mask if self._mask_source is None else self._mask_source
        flat = np.asarray(self.backend.to_numpy(source)).reshape(-1)
        value = flat[position]
        where = tuple(int(i) for i in np.unravel_index(position, mask.shape))
        oh, ow = self.top_shapes[0][2:]
        if np.issubdtype(flat.dtype, np.floating) and np.isfinite(value) and value == int(value):
            shown = str(int(value))
        else:
            shown = str(value)
        why = ""
        if np.issubdtype(flat.dtype, np.floating) and np.isfinite(value) \
                and value != np.floor(value):
            why = " (not an integer)"
        fail(self, f"invalid max index {shown} at {where} for a {oh}x{ow} output{why}",
             DataError)

    def _forward(self, bottoms):
        x, mask = bottoms
        be = self.backend
        top = self.top_shapes[0]
        index_dtype = np.dtype(np.int32 if top[2] * top[3] < 2 ** 31 else np.int64)
        # the validated indices are private: backward gathers through exactly what forward
        # scattered through, and the buffer is reused from one forward to the next
        index = self._index
        if index is None or tuple(index.shape) != tuple(x.shape) or index.dtype != index_dtype:
            index = be.empty(x.shape, index_dtype)
            self._index = index
        y = be.empty(top, self.dtype)
        bad = be.pooling_unpool_forward(x, mask, y, index)
        if bad >= 0:
            self._bad_index(mask, bad)
        return [y]

    def _backward(self, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None, None]
        dx = self.backend.empty(self.bottom_shapes[0], self.dtype)
        self.backend.pooling_unpool_backward(top_diffs[0], self._index, dx)
        return [dx, None]

    def _move_state(self, device):
        super()._move_state(device)
        self._index = None
