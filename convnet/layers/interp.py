"""Interp: DeepLab's bilinear interpolation layer, with a nearest mode for label maps."""

import numbers

import numpy as np

from convnet import shapes
from convnet.errors import ConfigError, ShapeError, fail
from convnet.layers.base import Layer, check_blob_size, check_choice, shape_str


def bilinear_table(in_size, out_size, align_corners, dtype, offset=0):
    """The two source taps of every output position along one axis.

    Returns ``index`` (out_size, 2) intp, absolute positions ``offset + i0`` and
    ``offset + i0 + p``, and ``weight`` (out_size, 2) of ``dtype``, (1 - lambda, lambda):

    - align_corners=True (DeepLab's caffe_cpu_interp2): src = r * dst with
      r = (in - 1) / (out - 1) (0 when out == 1); i0 = int(src); lambda = src - i0.
    - align_corners=False (ATen's upsample_bilinear2d): src = max((dst + 0.5) in / out - 0.5, 0);
      i0 = min(floor(src), in - 1); lambda = clamp(src - i0, 0, 1).

    p = 1 while i0 < in - 1, else 0 (DeepLab's h1p).
    """
    dtype = np.dtype(dtype)
    dst = np.arange(out_size, dtype=np.float64)
    scale = shapes.interp_scale(in_size, out_size, align_corners)
    src = scale * dst if align_corners else np.maximum(scale * (dst + 0.5) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.intp), in_size - 1)
    lam = np.clip(src - i0, 0.0, 1.0).astype(dtype)
    step = (i0 < in_size - 1).astype(np.intp)
    index = np.stack([i0, i0 + step], axis=1) + offset
    weight = np.stack([dtype.type(1) - lam, lam], axis=1).astype(dtype)
    return np.ascontiguousarray(index, dtype=np.intp), np.ascontiguousarray(weight)


def nearest_table(in_size, out_size, align_corners, offset=0):
    """The source position of every output position along one axis, (out_size,) intp.

    - align_corners=True: the pixel nearest to src = dst (in - 1) / (out - 1) (0 when
      out == 1), halves rounded up, computed exactly in integers.
    - align_corners=False: PyTorch's ``nearest`` mode, floor(dst * in / out) clamped to in - 1,
      in float32 arithmetic exactly as ATen (and dst // 2 when out == 2 in, dst when equal), so
      the same pixels are picked.
    """
    dst = np.arange(out_size, dtype=np.int64)
    if align_corners:
        if out_size > 1:
            src = (2 * dst * (in_size - 1) + (out_size - 1)) // (2 * (out_size - 1))
        else:
            src = np.zeros(out_size, dtype=np.int64)
    elif out_size == in_size:
        src = dst
    elif out_size == 2 * in_size:
        src = dst >> 1
    else:
        scale = np.float32(in_size) / np.float32(out_size)
        src = np.floor(dst.astype(np.float32) * scale).astype(np.int64)
    src = np.minimum(src, in_size - 1)
    return np.ascontiguousarray(src + offset, dtype=np.intp)


def _flag(value, param, owner):
    if not isinstance(value, (bool, np.bool_)):
        fail(owner, f"{param} must be True or False, got {value!r}")
    return bool(value)


def _dtype_of(x):
    dt = getattr(x, "dtype", None)
    return np.dtype(dt) if dt is not None else np.asarray(x).dtype


class Interp(Layer):
    """Resize the H x W planes of x, DeepLab's Interp layer (bilinear), with a nearest mode.

    Shapes: x (N, C, H, W) -> y (N, C, H2, W2). The input is first cropped by ``pad_beg``
    (top, left) and ``pad_end`` (bottom, right), both <= 0, to He = H + pad_beg + pad_end
    (likewise We); the output size comes from exactly one of:

    - ``zoom_factor`` z:          H2 = He + (He - 1)(z - 1)
    - ``shrink_factor`` s:        H2 = (He - 1) // s + 1
    - both:                       shrink first, then zoom
    - ``height`` and ``width``:   H2 = height, W2 = width
    - a second bottom (N, C', H2, W2) (or (N, H2, W2), a label map): its H x W; it must have
      x's batch size, only its shape is read, and it never gets a diff.

    Mapping (per axis, see :func:`bilinear_table`): ``align_corners=True`` (default, DeepLab)
    src = dst (He - 1) / (H2 - 1), 0 when H2 == 1; ``align_corners=False`` src = (dst + 0.5)
    He / H2 - 0.5 clamped at 0 (PyTorch's ``F.interpolate(mode="bilinear")`` default).
    Bilinear: y = (1 - b)[(1 - a) x(i, j) + a x(i, j + 1)] + b[(1 - a) x(i + 1, j) + a x(i + 1,
    j + 1)] with i, j the integer parts of src and a, b the fractions, taps clamped at the last
    row / column. ``mode="nearest"`` takes the nearest source pixel (see
    :func:`nearest_table`: halves round up with align-corners; PyTorch's ``nearest``,
    floor(dst He / H2), otherwise); it is meant for label maps and keeps an integer bottom's
    dtype and values. Bilinear on an integer bottom is refused: it would blend class ids.
    When He x We equals the output size the layer is a copy of the cropped input.

    Backward is the exact adjoint of forward (the transposed scatter, or a copy-add), returned
    as a fresh array; input pixels the crop removed get 0. Integer bottoms get no diff.

    Parameters (Caffe ``interp_param``): ``zoom_factor`` (None, int >= 1), ``shrink_factor``
    (None, int >= 1), ``height`` and ``width`` (None, ints >= 1, together), ``pad_beg`` (0,
    <= 0), ``pad_end`` (0, <= 0); convnet's own: ``align_corners`` (True), ``mode``
    ("bilinear" or "nearest").

    >>> up = Interp(zoom_factor=2)
    >>> up.forward(np.array([[[[0.0, 1.0], [2.0, 3.0]]]]))[0, 0].tolist()
    [[0.0, 0.5, 1.0], [1.0, 1.5, 2.0], [2.0, 2.5, 3.0]]
    """

    min_bottoms = 1
    max_bottoms = 2
    nondiff_bottoms = (1,)

    def __init__(self, zoom_factor=None, shrink_factor=None, height=None, width=None,
                 pad_beg=0, pad_end=0, align_corners=True, mode="bilinear", name=None,
                 dtype=np.float32, **kwargs):
        self.zoom_factor = zoom_factor
        self.shrink_factor = shrink_factor
        self.height = height
        self.width = width
        self.pad_beg = pad_beg
        self.pad_end = pad_end
        self.align_corners = align_corners
        self.mode = mode
        self._tables = None
        self._device_tables = None
        super().__init__(name=name, dtype=dtype, **kwargs)

    # ------------------------------------------------------------------ checks
    def _check_params(self):
        self.mode = check_choice(self.mode, "mode", ("BILINEAR", "NEAREST"), self).lower()
        self.align_corners = _flag(self.align_corners, "align_corners", self)
        if self.zoom_factor is not None:
            self.zoom_factor = shapes.size(self.zoom_factor, "zoom_factor", self)
        if self.shrink_factor is not None:
            self.shrink_factor = shapes.size(self.shrink_factor, "shrink_factor", self)
        if (self.height is None) != (self.width is None):
            fail(self, f"height and width must be given together, got height={self.height!r} "
                       f"and width={self.width!r}")
        if self.height is not None:
            self.height = shapes.size(self.height, "height", self)
            self.width = shapes.size(self.width, "width", self)
            if self.zoom_factor is not None or self.shrink_factor is not None:
                fail(self, f"give the output size one way: height and width "
                           f"({self.height}x{self.width}) cannot be combined with zoom_factor "
                           f"({self.zoom_factor}) or shrink_factor ({self.shrink_factor})")
        for param in ("pad_beg", "pad_end"):
            value = getattr(self, param)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                fail(self, f"{param} must be an int, got {value!r}")
            if value < -shapes.MAX_EXTENT:
                fail(self, f"{param} must be >= -{shapes.bound_text(shapes.MAX_EXTENT)}, got "
                           f"{value}")
            if value > 0:
                fail(self, f"{param} must be <= 0: only cropping (pad <= 0) is supported, "
                           f"as in DeepLab; got {value}")
            setattr(self, param, int(value))

    @property
    def _size_params(self):
        given = [f"{p}={getattr(self, p)}" for p in ("zoom_factor", "shrink_factor", "height",
                                                      "width") if getattr(self, p) is not None]
        return ", ".join(given)

    def _convert_bottom(self, index, x):
        if index == 1:
            return self.backend.asarray(x)      # only its shape is read
        dt = _dtype_of(x)
        if dt.kind in "iub":
            if self.mode == "bilinear":
                fail(self, f"mode='bilinear' on an integer ({dt.name}) bottom would blend "
                           f"class ids (halfway between labels 3 and 7 is 5, an unrelated "
                           f"class); use mode='nearest' for label maps, or pass a float array")
            return self.backend.asarray(x)      # labels keep their dtype
        return self.backend.asarray(x, self.dtype)

    # ------------------------------------------------------------------ lifecycle
    def _reshape(self, bottom_shapes):
        x_shape = bottom_shapes[0]
        if len(x_shape) != 4:
            fail(self, f"bottom 0 must be 4-D (N, C, H, W), got shape "
                       f"{shape_str(x_shape) or '()'} ({len(x_shape)}-D)", ShapeError)
        n, _, h, w = x_shape
        h_eff = h + self.pad_beg + self.pad_end
        w_eff = w + self.pad_beg + self.pad_end
        if h_eff < 1 or w_eff < 1:
            fail(self, f"input {h}x{w} cropped by pad_beg {self.pad_beg} and pad_end "
                       f"{self.pad_end} leaves {max(h_eff, 0)}x{max(w_eff, 0)}: the crop "
                       f"removes everything", ShapeError)
        if len(bottom_shapes) == 2:
            ref = bottom_shapes[1]
            if self._size_params:
                fail(self, f"a second bottom sets the output size; do not also give "
                           f"{self._size_params}")
            if len(ref) not in (3, 4):
                fail(self, f"bottom 1 (the size reference) must be (N, C, H, W) or (N, H, W), "
                           f"got shape {shape_str(ref) or '()'}", ShapeError)
            if ref[0] != n:
                fail(self, f"bottom 1 (the size reference, {shape_str(ref)}) must have the "
                           f"batch size of bottom 0 ({shape_str(x_shape)}): {ref[0]} != {n}",
                     ShapeError)
            out_h, out_w = ref[-2], ref[-1]
            if out_h < 1 or out_w < 1:
                fail(self, f"bottom 1 (the size reference) gives an empty output "
                           f"{out_h}x{out_w}", ShapeError)
        else:
            if not self._size_params:
                fail(self, "no output size: give zoom_factor, shrink_factor (or both), "
                           "height and width, or a second bottom whose H x W is the target",
                     ConfigError)
            out_h, out_w = shapes.interp_out(
                h, w, zoom_factor=self.zoom_factor, shrink_factor=self.shrink_factor,
                out_height=self.height, out_width=self.width, pad_beg=self.pad_beg,
                pad_end=self.pad_end)
        # the interpolation tables below are as long as the output's sides
        check_blob_size(self, (x_shape[0], x_shape[1], out_h, out_w), "the top")
        off = -self.pad_beg
        if (h_eff, w_eff) == (out_h, out_w):
            self._tables = ("copy", off, off)
        elif self.mode == "nearest":
            self._tables = ("nearest",
                            nearest_table(h_eff, out_h, self.align_corners, off),
                            nearest_table(w_eff, out_w, self.align_corners, off))
        else:
            self._tables = ("bilinear",
                            *bilinear_table(h_eff, out_h, self.align_corners, self.dtype, off),
                            *bilinear_table(w_eff, out_w, self.align_corners, self.dtype, off))
        self._device_tables = None
        self.out_height, self.out_width = int(out_h), int(out_w)
        return (x_shape[0], x_shape[1], out_h, out_w)

    def _move_state(self, device):
        super()._move_state(device)
        self._device_tables = None

    def _on_device(self):
        """The mapping tables as arrays of the layer's device (converted once)."""
        if self._device_tables is None:
            kind, *arrays = self._tables
            if kind != "copy":
                arrays = [self.backend.asarray(a, a.dtype) for a in arrays]
            self._device_tables = (kind, *arrays)
        return self._device_tables

    def _forward(self, bottoms):
        x = bottoms[0]
        integer = np.dtype(x.dtype).kind in "iub"
        self.nondiff_bottoms = (0, 1) if integer else (1,)
        y = self.backend.empty(self.top_shapes[0], x.dtype)
        kind, *tables = self._on_device()
        be = self.backend
        if kind == "copy":
            be.interp_copy_forward(x, y, *tables)
        elif kind == "nearest":
            be.interp_nearest_forward(x, y, *tables)
        else:
            be.interp_bilinear_forward(x, y, *tables)
        return [y]

    def _backward(self, top_diffs, propagate_down):
        diffs = [None] * len(self.bottom_shapes)
        if not propagate_down[0] or 0 in self.nondiff_bottoms:
            return diffs
        dy = top_diffs[0]
        dx = self.backend.empty(self.bottom_shapes[0], self.dtype)
        kind, *tables = self._on_device()
        be = self.backend
        if kind == "copy":
            be.interp_copy_backward(dy, dx, *tables)
        elif kind == "nearest":
            be.interp_nearest_backward(dy, dx, *tables)
        else:
            be.interp_bilinear_backward(dy, dx, *tables)
        diffs[0] = dx
        return diffs


__all__ = ["Interp", "bilinear_table", "nearest_table"]
