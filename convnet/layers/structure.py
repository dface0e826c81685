"""Layers that cut, join, combine and reshape blobs: Crop, Concat, Eltwise, Silence, Flatten,
Split, Slice, Reshape (Caffe semantics)."""

import numbers

import numpy as np

from convnet.errors import ConfigError, ShapeError, fail
from convnet.layers.base import Layer, check_choice, check_number, shape_str


def _check_axis(axis, ndim, owner, param="axis"):
    """Canonical (non-negative) axis; negative counts from the end as in Python."""
    if not -ndim <= axis < ndim:
        fail(owner, f"{param} {axis} is out of range for {ndim}-d bottoms (expected "
                    f"{-ndim} to {ndim - 1})", ConfigError)
    return axis % ndim


def _check_int(value, param, owner):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        fail(owner, f"{param} must be an int, got {value!r}", ConfigError)
    return int(value)


class Crop(Layer):
    """Crop bottom 0 to bottom 1's shape, Caffe's Crop layer (FCN's score alignment).

    For every axis a >= ``axis``: top size = bottom 1's size and
    top[..., i, ...] = bottom0[..., i + offset_a, ...]; axes before ``axis`` keep bottom 0's
    sizes. Bottom 1 only supplies the shape and gets no diff. Backward pads the top diff back
    with zeros to bottom 0's shape.

    Parameters (Caffe ``crop_param``): ``axis`` (default 2, i.e. crop H and W of NCHW blobs;
    negative counts from the end), ``offset`` (default 0: an int used for every cropped axis,
    or a list with one int per cropped axis; a one-element list counts as an int).

    >>> crop = Crop(axis=2, offset=(1, 2))
    >>> crop.forward(np.zeros((1, 3, 8, 9)), np.zeros((1, 1, 5, 5))).shape
    (1, 3, 5, 5)
    """

    min_bottoms = 2
    max_bottoms = 2
    nondiff_bottoms = (1,)

    def __init__(self, axis=2, offset=0, **kwargs):
        self.axis = axis
        self.offset = offset
        super().__init__(**kwargs)

    def _check_params(self):
        self.axis = _check_int(self.axis, "axis", self)
        if isinstance(self.offset, (list, tuple)):
            offsets = [_check_int(o, "offset", self) for o in self.offset]
            if not offsets:
                fail(self, "offset must be an int or a non-empty list of ints, got []")
        else:
            offsets = [_check_int(self.offset, "offset", self)]
        bad = [o for o in offsets if o < 0]
        if bad:
            fail(self, f"offset must be >= 0, got {bad[0]}")
        self._offsets = offsets

    def _reshape(self, shapes):
        big, ref = shapes
        if len(big) != len(ref):
            fail(self, f"bottoms must have the same number of axes, got {shape_str(big)} "
                       f"({len(big)}-d) and {shape_str(ref)} ({len(ref)}-d)", ShapeError)
        ndim = len(big)
        axis = _check_axis(self.axis, ndim, self)
        cropped = ndim - axis
        if len(self._offsets) == 1:
            offsets = self._offsets * cropped
        elif len(self._offsets) == cropped:
            offsets = list(self._offsets)
        else:
            fail(self, f"offset needs one value or one per cropped axis ({cropped}: axes {axis} "
                       f"to {ndim - 1}), got {len(self._offsets)}")
        top = list(big[:axis])
        for a, o in zip(range(axis, ndim), offsets):
            if ref[a] == 0:
                fail(self, f"bottom 1 has size 0 on axis {a} (shape {shape_str(ref)}): the "
                           f"crop would remove everything", ShapeError)
            if o + ref[a] > big[a]:
                fail(self, f"crop does not fit on axis {a}: offset {o} + size {ref[a]} (bottom "
                           f"1, {shape_str(ref)}) > {big[a]} (bottom 0, {shape_str(big)})",
                     ShapeError)
            top.append(ref[a])
        self._full_offsets = (0,) * axis + tuple(offsets)
        return tuple(top)

    def _forward(self, bottoms):
        y = self.backend.empty(self.top_shapes[0], self.dtype)
        self.backend.structure_crop_forward(bottoms[0], self._full_offsets, y)
        return [y]

    def _backward(self, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None, None]
        dx = self.backend.empty(self.bottom_shapes[0], self.dtype)
        self.backend.structure_crop_backward(top_diffs[0], self._full_offsets, dx)
        return [dx, None]


class Concat(Layer):
    """Concatenate bottoms along one axis, Caffe's Concat layer.

    Bottoms x_0 .. x_{K-1} (K >= 1) agree on every axis but ``axis``; the top's size there is
    the sum of theirs, x_0 first. Backward hands each bottom its slice of the top diff.

    Parameters (Caffe ``concat_param``): ``axis`` (default 1, channels; negative counts from
    the end).

    >>> Concat(axis=1).forward(np.zeros((2, 3, 4, 4)), np.zeros((2, 5, 4, 4))).shape
    (2, 8, 4, 4)
    """

    min_bottoms = 1
    max_bottoms = 1 << 16

    def __init__(self, axis=1, **kwargs):
        self.axis = axis
        super().__init__(**kwargs)

    def _check_params(self):
        self.axis = _check_int(self.axis, "axis", self)

    def _reshape(self, shapes):
        first = shapes[0]
        ndim = len(first)
        if ndim == 0:
            fail(self, "bottoms must have at least one axis, got a 0-d bottom 0", ShapeError)
        axis = _check_axis(self.axis, ndim, self)
        for i, s in enumerate(shapes[1:], start=1):
            if len(s) != ndim:
                fail(self, f"bottom {i} has {len(s)} axes (shape {shape_str(s)}) but bottom 0 "
                           f"has {ndim} ({shape_str(first)})", ShapeError)
            for a in range(ndim):
                if a != axis and s[a] != first[a]:
                    fail(self, f"bottom {i} has shape {shape_str(s)} but bottom 0 has "
                               f"{shape_str(first)}: all axes but the concat axis {axis} must "
                               f"match (axis {a}: {s[a]} vs {first[a]})", ShapeError)
        self._axis = axis
        self._sizes = [s[axis] for s in shapes]
        top = list(first)
        top[axis] = sum(self._sizes)
        return tuple(top)

    def _forward(self, bottoms):
        y = self.backend.empty(self.top_shapes[0], self.dtype)
        self.backend.structure_concat_forward(bottoms, self._axis, y)
        return [y]

    def _backward(self, top_diffs, propagate_down):
        dxs = [self.backend.empty(s, self.dtype) if f else None
               for s, f in zip(self.bottom_shapes, propagate_down)]
        if any(d is not None for d in dxs):
            self.backend.structure_concat_backward(top_diffs[0], self._axis, self._sizes, dxs)
        return dxs


class Eltwise(Layer):
    """Element-wise combination of K >= 2 bottoms of one shape, Caffe's Eltwise layer.

    - ``SUM``:  y = sum_i c_i x_i (c_i = ``coeff[i]``, default 1); dx_i = c_i dy, returned
      as dy itself (no copy, as PyTorch's add) where c_i is 1: copy it before writing to it
    - ``PROD``: y = prod_i x_i; dx_i = dy * prod_{j != i} x_j, computed from prefix and
      suffix products (no division by x_i, so exact at zeros; Caffe's stable_prod_grad)
    - ``MAX``:  y = max_i x_i; dx_i = dy where bottom i held the maximum, else 0. On ties the
      lowest bottom index wins (Caffe picks bottom 1 over bottom 0 on a tie between those two,
      then keeps the earlier bottom; convnet is consistent). The argmax indices of the last
      forward are kept for backward.

    Parameters (Caffe ``eltwise_param``): ``operation`` (default "SUM"; "PROD", "MAX"),
    ``coeff`` (default None: all 1; one number per bottom, SUM only).

    >>> Eltwise("SUM", coeff=[1, -1]).forward(np.ones((2, 3)), np.ones((2, 3)))
    array([[0., 0., 0.],
           [0., 0., 0.]], dtype=float32)
    """

    min_bottoms = 2
    max_bottoms = 1 << 16
    OPERATIONS = ("SUM", "PROD", "MAX")

    def __init__(self, operation="SUM", coeff=None, **kwargs):
        self.operation = operation
        self.coeff = coeff
        super().__init__(**kwargs)

    def _check_params(self):
        self.operation = check_choice(self.operation, "operation", self.OPERATIONS, self)
        if self.coeff is not None:
            if self.operation != "SUM":
                fail(self, f"coeff applies only to operation SUM, got operation "
                           f"{self.operation} with coeff {self.coeff!r}")
            if not isinstance(self.coeff, (list, tuple, np.ndarray)):
                fail(self, f"coeff must be a list of numbers (one per bottom), got "
                           f"{self.coeff!r}")
            self.coeff = [check_number(c, "coeff", self) for c in self.coeff]

    def _reshape(self, shapes):
        first = shapes[0]
        for i, s in enumerate(shapes[1:], start=1):
            if s != first:
                fail(self, f"all bottoms must have the same shape: bottom {i} is "
                           f"{shape_str(s) or '()'}, bottom 0 is {shape_str(first) or '()'}",
                     ShapeError)
        if self.coeff is not None and len(self.coeff) != len(shapes):
            fail(self, f"coeff needs one value per bottom ({len(shapes)}), got "
                       f"{len(self.coeff)}")
        return first

    def _forward(self, bottoms):
        be = self.backend
        y = be.empty(bottoms[0].shape, self.dtype)
        if self.operation == "SUM":
            coeffs = self.coeff or [1.0] * len(bottoms)
            be.structure_eltwise_sum(bottoms, coeffs, y)
        elif self.operation == "PROD":
            be.structure_eltwise_prod(bottoms, y)
            self._bottoms = bottoms
        else:
            self._argmax = be.empty(y.shape, np.int32)
            be.structure_eltwise_max(bottoms, y, self._argmax)
        return [y]

    def _backward(self, top_diffs, propagate_down):
        be = self.backend
        dy = top_diffs[0]
        if self.operation == "SUM":
            # dx_i = c_i dy: dy itself where c_i is 1 (no copy, as PyTorch's add; the Net
            # copies where two blobs would share it), a scaled copy elsewhere
            coeffs = self.coeff or [1.0] * len(propagate_down)
            dxs = []
            for f, c in zip(propagate_down, coeffs):
                dx = None
                if f and c == 1.0 and dy.dtype == self.dtype:
                    dx = dy
                elif f:
                    dx = be.empty(dy.shape, self.dtype)
                    be.structure_eltwise_sum_backward(dy, c, dx)
                dxs.append(dx)
            return dxs
        dxs = [be.empty(dy.shape, self.dtype) if f else None for f in propagate_down]
        if self.operation == "PROD":
            if any(d is not None for d in dxs):
                be.structure_eltwise_prod_backward(dy, self._bottoms, dxs)
        else:
            for i, dx in enumerate(dxs):
                if dx is not None:
                    be.structure_eltwise_max_backward(dy, self._argmax, i, dx)
        return dxs


class Silence(Layer):
    """Consume blobs and produce nothing, Caffe's Silence layer (it keeps unused tops from
    becoming net outputs). Any number of bottoms (at least one), no tops; backward gives each
    bottom a zero diff (the Net never asks: nothing downstream of it reaches a loss).

    >>> Silence().forward(np.zeros((2, 3)), np.zeros(4))
    ()
    """

    min_bottoms = 1
    max_bottoms = 1 << 16
    num_tops = 0

    def _reshape(self, shapes):
        return []

    def _forward(self, bottoms):
        return []

    def _backward(self, top_diffs, propagate_down):
        return [self.backend.zeros(s, self.dtype) if f else None
                for s, f in zip(self.bottom_shapes, propagate_down)]


class Flatten(Layer):
    """Merge axes ``axis`` .. ``end_axis`` into one, Caffe's Flatten layer.

    top shape = shape[:axis] + (prod(shape[axis:end_axis + 1]),) + shape[end_axis + 1:]; the
    values keep their C order, so forward and backward are reshapes (copies: the top never
    aliases the bottom). Negative axes count from the end (``end_axis=-1``: the last axis).

    Parameters (Caffe ``flatten_param``): ``axis`` (default 1), ``end_axis`` (default -1).

    >>> Flatten().forward(np.zeros((2, 3, 4, 5))).shape
    (2, 60)
    """

    def __init__(self, axis=1, end_axis=-1, **kwargs):
        self.axis = axis
        self.end_axis = end_axis
        super().__init__(**kwargs)

    def _check_params(self):
        self.axis = _check_int(self.axis, "axis", self)
        self.end_axis = _check_int(self.end_axis, "end_axis", self)

    def _reshape(self, shapes):
        shape = shapes[0]
        ndim = len(shape)
        if ndim == 0:
            fail(self, "the bottom must have at least one axis, got a 0-d bottom", ShapeError)
        start = _check_axis(self.axis, ndim, self, "axis")
        end = _check_axis(self.end_axis, ndim, self, "end_axis")
        if end < start:
            fail(self, f"end_axis ({self.end_axis}, axis {end} of the {ndim}-d bottom "
                       f"{shape_str(shape)}) must not come before axis ({self.axis}, axis "
                       f"{start})")
        merged = 1
        for d in shape[start:end + 1]:
            merged *= d
        return tuple(shape[:start]) + (merged,) + tuple(shape[end + 1:])

    def _forward(self, bottoms):
        return [bottoms[0].reshape(self.top_shapes[0]).copy()]

    def _backward(self, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None]
        return [top_diffs[0].reshape(self.bottom_shapes[0]).copy()]


# ---------------------------------------------------------------- Split, Slice, Reshape

def _check_count_param(value, param, owner, minimum):
    value = _check_int(value, param, owner)
    if value < minimum:
        fail(owner, f"{param} must be >= {minimum}, got {value}", ConfigError)
    return value


class Split(Layer):
    """Copy one bottom to ``num_tops`` tops, Caffe's Split layer; backward sums the top diffs.

    (convnet's Net already sums the diffs of a blob read by several layers, so Split exists
    for Caffe definitions that spell it out.) Each top is its own copy, so a later in-place
    layer on one top never changes another.

    Parameters: ``num_tops`` (default 2; Caffe takes it from the number of top blobs).

    >>> a, b = Split(num_tops=2).forward(np.ones((2, 3)))
    """

    def __init__(self, num_tops=2, **kwargs):
        self.num_tops = num_tops
        super().__init__(**kwargs)

    def _check_params(self):
        self.num_tops = _check_count_param(self.num_tops, "num_tops", self, 1)

    def _reshape(self, shapes):
        return [shapes[0]] * self.num_tops

    def _forward(self, bottoms):
        be = self.backend
        tops = []
        for _ in range(self.num_tops):
            y = be.zeros(bottoms[0].shape, self.dtype)
            be.net_accumulate(y, bottoms[0])
            tops.append(y)
        return tops

    def _backward(self, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None]
        be = self.backend
        dx = be.zeros(self.bottom_shapes[0], self.dtype)
        for d in top_diffs:
            be.net_accumulate(dx, d)
        return [dx]


class Slice(Layer):
    """Cut one bottom into pieces along ``axis``, Caffe's Slice layer (the inverse of
    Concat; backward concatenates the top diffs).

    Parameters (Caffe ``slice_param``): ``axis`` (default 1; negative counts from the end),
    ``slice_point`` (increasing cut indices; K points give K + 1 tops), or, without
    slice_point, ``num_tops`` equal pieces (the axis must divide evenly; Caffe takes the
    count from the number of top blobs; default 2).

    >>> a, b, c = Slice(axis=1, slice_point=[1, 3]).forward(np.zeros((2, 5)))
    >>> a.shape, b.shape, c.shape
    ((2, 1), (2, 2), (2, 2))
    """

    def __init__(self, axis=1, slice_point=None, num_tops=None, **kwargs):
        self.axis = axis
        self.slice_point = slice_point
        self.num_tops = num_tops
        super().__init__(**kwargs)

    def _check_params(self):
        self.axis = _check_int(self.axis, "axis", self)
        if self.slice_point is not None:
            if isinstance(self.slice_point, numbers.Integral):
                self.slice_point = [self.slice_point]
            if not isinstance(self.slice_point, (list, tuple)) or not self.slice_point:
                fail(self, f"slice_point must be a non-empty list of ints, got "
                           f"{self.slice_point!r}")
            points = [_check_int(p, "slice_point", self) for p in self.slice_point]
            prev = 0
            for p in points:
                if p <= prev:
                    fail(self, f"slice_point must be strictly increasing and > 0, got "
                               f"{points}")
                prev = p
            self.slice_point = points
            n = len(points) + 1
            if self.num_tops is not None and _check_int(self.num_tops, "num_tops", self) != n:
                fail(self, f"num_tops ({self.num_tops}) must be len(slice_point) + 1 = {n}")
            self.num_tops = n
        else:
            self.num_tops = _check_count_param(
                2 if self.num_tops is None else self.num_tops, "num_tops", self, 1)

    def _reshape(self, shapes):
        shape = shapes[0]
        if not shape:
            fail(self, "bottom must have at least one axis, got a 0-d bottom", ShapeError)
        axis = _check_axis(self.axis, len(shape), self)
        size = shape[axis]
        if self.slice_point is not None:
            if self.slice_point[-1] >= size:
                fail(self, f"slice_point {self.slice_point} must lie inside axis {axis} of "
                           f"size {size} (bottom {shape_str(shape)}): the last point is "
                           f"{self.slice_point[-1]}", ShapeError)
            cuts = [0] + self.slice_point + [size]
            sizes = [b - a for a, b in zip(cuts, cuts[1:])]
        else:
            if size % self.num_tops:
                fail(self, f"axis {axis} of size {size} (bottom {shape_str(shape)}) does not "
                           f"divide into {self.num_tops} equal tops", ShapeError)
            sizes = [size // self.num_tops] * self.num_tops
        self._axis, self._sizes = axis, sizes
        tops = []
        for s in sizes:
            t = list(shape)
            t[axis] = s
            tops.append(tuple(t))
        return tops

    def _forward(self, bottoms):
        tops = [self.backend.empty(s, self.dtype) for s in self.top_shapes]
        self.backend.structure_concat_backward(bottoms[0], self._axis, self._sizes, tops)
        return tops

    def _backward(self, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None]
        dx = self.backend.empty(self.bottom_shapes[0], self.dtype)
        self.backend.structure_concat_forward(list(top_diffs), self._axis, dx)
        return [dx]


class Reshape(Layer):
    """Change a blob's shape without touching its data, Caffe's Reshape layer.

    ``shape`` replaces the bottom axes [axis, axis + num_axes): a 0 copies the bottom's
    size at that position, one -1 is inferred from the element count. ``axis`` (default 0;
    negative counts from the end, -1 meaning after the last axis, as in Caffe), ``num_axes``
    (default -1: every axis from ``axis`` on). The top is a view of the bottom (Caffe shares
    the data); backward reshapes the top diff.

    >>> Reshape(shape=[0, -1]).forward(np.zeros((2, 3, 4))).shape
    (2, 12)
    """

    def __init__(self, shape, axis=0, num_axes=-1, **kwargs):
        self.shape = shape
        self.axis = axis
        self.num_axes = num_axes
        super().__init__(**kwargs)

    def _check_params(self):
        if not isinstance(self.shape, (list, tuple)):
            fail(self, f"shape must be a list of ints (0 copies, -1 infers), got "
                       f"{self.shape!r}")
        self.shape = [_check_int(d, "shape", self) for d in self.shape]
        if any(d < -1 for d in self.shape):
            fail(self, f"shape entries must be >= -1, got {self.shape}")
        if self.shape.count(-1) > 1:
            fail(self, f"shape may infer (-1) at most one axis, got {self.shape}")
        self.axis = _check_int(self.axis, "axis", self)
        self.num_axes = _check_int(self.num_axes, "num_axes", self)
        if self.num_axes < -1:
            fail(self, f"num_axes must be >= -1 (-1: every axis from axis on), got "
                       f"{self.num_axes}")

    def _reshape(self, shapes):
        bottom = shapes[0]
        ndim = len(bottom)
        start = self.axis if self.axis >= 0 else ndim + self.axis + 1
        if not 0 <= start <= ndim:
            fail(self, f"axis {self.axis} is out of range for a {ndim}-d bottom "
                       f"({shape_str(bottom)})", ShapeError)
        end = ndim if self.num_axes == -1 else start + self.num_axes
        if end > ndim:
            fail(self, f"axis {self.axis} + num_axes {self.num_axes} exceeds the bottom's "
                       f"{ndim} axes ({shape_str(bottom)})", ShapeError)
        middle = []
        for i, d in enumerate(self.shape):
            if d == 0:
                if start + i >= ndim:
                    fail(self, f"shape[{i}] = 0 copies bottom axis {start + i}, which a "
                               f"{ndim}-d bottom ({shape_str(bottom)}) lacks", ShapeError)
                d = bottom[start + i]
            middle.append(d)
        top = list(bottom[:start]) + middle + list(bottom[end:])
        total = int(np.prod(bottom, dtype=np.int64))
        if -1 in top:
            known = int(np.prod([d for d in top if d != -1], dtype=np.int64))
            if known == 0 or total % known:
                fail(self, f"shape {self.shape} cannot hold the {total} elements of bottom "
                           f"{shape_str(bottom)} (the -1 axis would not be an integer)",
                     ShapeError)
            top[top.index(-1)] = total // known
        if int(np.prod(top, dtype=np.int64)) != total:
            fail(self, f"shape {self.shape} gives {shape_str(top)} "
                       f"({int(np.prod(top, dtype=np.int64))} elements) but bottom "
                       f"{shape_str(bottom)} has {total}", ShapeError)
        return tuple(top)

    def _forward(self, bottoms):
        return [bottoms[0].reshape(self.top_shapes[0])]

    def _backward(self, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None]
        return [top_diffs[0].reshape(self.bottom_shapes[0])]
