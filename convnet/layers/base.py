"""The layer lifecycle shared by every layer (Caffe's LayerSetUp -> Reshape -> Forward/Backward).

A subclass implements four hooks:

- ``_check_params()``        (from ``__init__``) parameter-only validation
- ``_reshape(shapes)``       validate the bottom shapes, create params on the first call
                             (``self._add_param``), return the top shape(s)
- ``_forward(bottoms)``      compute the tops (a list), cache what backward needs
- ``_backward(top_diffs, propagate_down)``   return one diff (or ``None``) per bottom and
                             ADD into ``param.diff`` (only the solver zeroes diffs)

The base class converts inputs, re-runs setup when bottom shapes change, checks top diff
shapes, handles ``propagate_down`` and applies ``loss_weight`` exactly once.
"""

import numbers

import numpy as np

from convnet import backend as _backend
from convnet import fillers, shapes
from convnet.errors import ConfigError, DataError, ShapeError, StateError, fail

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: dtype kinds a bottom or top diff may have: bool, signed, unsigned, float
NUMERIC_KINDS = "biuf"


class Param:
    """A learnable blob: ``data``, ``diff`` (its gradient accumulator), ``lr_mult`` and
    ``decay_mult`` (Caffe's per-param multipliers of the solver's lr and weight decay)."""

    def __init__(self, data, lr_mult=1.0, decay_mult=1.0, name=""):
        self.data = data
        be = _backend.get(_backend.device_of(data))
        self.diff = be.zeros(tuple(data.shape), data.dtype)
        self.lr_mult = float(lr_mult)
        self.decay_mult = float(decay_mult)
        self.name = name

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self):
        return _backend.device_of(self.data)

    def zero_diff(self):
        self.diff[...] = 0

    def to(self, device):
        """Move data and diff to ``device`` ('cpu' or 'cuda') in place; returns self."""
        device = _backend.normalize_device(device)
        if device == self.device:
            return self
        if device == "cpu":
            self.data = self.data.get()
            self.diff = self.diff.get()
        else:
            be = _backend.get("cuda")
            self.data = be.from_numpy(self.data)
            self.diff = be.from_numpy(self.diff)
        return self

    def __repr__(self):
        return (f"Param({self.name!r}, shape={self.shape}, dtype={np.dtype(self.dtype).name}, "
                f"lr_mult={self.lr_mult}, decay_mult={self.decay_mult})")


def check_dtype(dtype, owner):
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        fail(owner, f"dtype must be float32 or float64, got {dtype!r:.40}")
    if dt not in FLOAT_DTYPES:
        fail(owner, f"dtype must be float32 or float64, got {dt.name}")
    return dt


def check_number(value, param, owner, *, minimum=None, maximum=None, integer=False,
                 strict_min=False):
    """Validate a scalar parameter and return it (int or float)."""
    ok_types = numbers.Integral if integer else numbers.Real
    if not isinstance(value, ok_types) or isinstance(value, bool):
        kind = "an int" if integer else "a number"
        fail(owner, f"{param} must be {kind}, got {value!r}")
    value = int(value) if integer else float(value)
    if not integer and not np.isfinite(value):
        fail(owner, f"{param} must be finite, got {value}")
    if minimum is not None:
        if strict_min and not value > minimum:
            fail(owner, f"{param} must be > {minimum}, got {value}")
        if not strict_min and not value >= minimum:
            fail(owner, f"{param} must be >= {minimum}, got {value}")
    if maximum is not None and not value <= maximum:
        fail(owner, f"{param} must be <= {maximum}, got {value}")
    return value


def check_choice(value, param, choices, owner):
    if not isinstance(value, str) or value.upper() not in choices:
        fail(owner, f"{param} must be one of {', '.join(choices)}, got {value!r}")
    return value.upper()


def shape_str(shape):
    return "x".join(str(int(d)) for d in shape)


#: blob bounds (see convnet.shapes): no axis past 2**31 - 1, no blob past 2**40 elements
MAX_EXTENT = shapes.MAX_EXTENT
MAX_ELEMENTS = shapes.MAX_ELEMENTS


def check_blob_size(owner, shape, what):
    """Refuse, before anything is allocated, a blob no machine can hold."""
    shape = tuple(int(d) for d in shape)
    if any(d > MAX_EXTENT for d in shape):
        fail(owner, f"{what} would be {shape_str(shape)}: an axis of 2**31 or more elements "
                    f"cannot be allocated", ShapeError)
    count = 1
    for d in shape:
        count *= d
    if count > MAX_ELEMENTS:
        fail(owner, f"{what} would be {shape_str(shape)} ({count:.3g} elements): more than "
                    f"2**40 elements cannot be allocated", ShapeError)


def _snapshot_state(layer):
    """What a refused setup or load must put back: the layer's attributes (a shallow copy,
    with its params list and buffers dict copied) and its filler streams' states."""
    return (dict(layer.__dict__), list(layer.params), dict(layer.buffers),
            fillers.stream_state(layer.rng))


def _restore_state(layer, saved):
    attrs, params, buffers, streams = saved
    layer.__dict__.clear()
    layer.__dict__.update(attrs)
    layer.params[:] = params
    layer.buffers.clear()
    layer.buffers.update(buffers)
    fillers.set_stream_state(layer.rng, streams)


_sync_threads = None


class Layer:
    """Base class of every layer.

    Parameters (every layer): ``name`` (used in messages and weight files), ``dtype``
    (float32 default; float64 on the CPU), ``loss_weight`` (1 for loss layers, else 0),
    ``param`` (Caffe's per-param specs, e.g. ``[dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)]``).
    """

    min_bottoms = 1
    max_bottoms = 1
    num_tops = 1
    is_loss = False
    #: indices of bottoms that never receive a diff (labels, masks)
    nondiff_bottoms = ()

    def __new__(cls, *args, **kwargs):
        layer = super().__new__(cls)
        # a Net(dtype=...) gives its dtype to the layers added without one
        layer.dtype_given = "dtype" in kwargs
        return layer

    def __init__(self, *, name=None, dtype=np.float32, loss_weight=None, param=None):
        self.name = name
        self.dtype = check_dtype(dtype, self)
        default_weight = 1.0 if self.is_loss else 0.0
        self.loss_weight = check_number(default_weight if loss_weight is None else loss_weight,
                                        "loss_weight", self)
        if param is not None and not (isinstance(param, (list, tuple))
                                      and all(isinstance(p, dict) for p in param)):
            fail(self, f"param must be a list of dicts like dict(lr_mult=1, decay_mult=1), "
                       f"got {param!r}")
        self._param_specs = [dict(spec) for spec in param or []]
        for i, spec in enumerate(self._param_specs):
            unknown = set(spec) - {"lr_mult", "decay_mult", "name"}
            if unknown:
                fail(self, f"param entries take lr_mult and decay_mult, got {sorted(unknown)}")
            for key in ("lr_mult", "decay_mult"):
                if key in spec:
                    spec[key] = check_number(spec[key], f"param[{i}] {key}", self,
                                             minimum=0.0)
        self.params = []
        self.device = "cpu"
        self.phase = "TRAIN"
        self.bottom_shapes = None
        self.top_shapes = None
        self._forwarded = False
        #: numpy Generator for fillers (None: convnet.fillers' global one, see convnet.seed)
        self.rng = None
        #: non-learnable state saved with the weights (BatchNorm's moving averages), by name
        self.buffers = {}
        self._check_params()

    # ------------------------------------------------------------------ identity
    @property
    def type_name(self):
        return type(self).__name__

    def __repr__(self):
        return f"<{self.type_name} {self.name!r}>" if self.name else f"<{self.type_name}>"

    @property
    def backend(self):
        return _backend.get(self.device)

    # ------------------------------------------------------------------ phase / device
    def train(self, mode=True):
        """Training phase (Dropout drops, BatchNorm uses batch statistics). Returns self."""
        if not isinstance(mode, (bool, np.bool_)):
            fail(self, f"train() takes True or False, got {mode!r:.40}")
        self.phase = "TRAIN" if mode else "TEST"
        return self

    def eval(self):
        """Test phase (Dropout is the identity, BatchNorm uses its moving averages)."""
        return self.train(False)

    def to(self, device):
        """Move the params to ``device`` ('cpu' or 'cuda'); later bottoms must live there too."""
        device = _backend.normalize_device(device, self)
        if device == "cuda":
            from convnet import cuda
            if not cuda.is_available():
                fail(self, f"CUDA is not available: {cuda.unavailable_reason()}",
                     _backend.DeviceError)
            if self.dtype != np.float32:
                fail(self, f"the GPU computes in float32; this layer has dtype "
                           f"{self.dtype.name} (build it with dtype=np.float32)",
                     _backend.DeviceError)
        for p in self.params:
            p.to(device)
        self._move_state(device)
        self.device = device
        self._forwarded = False
        return self

    def _move_state(self, device):
        """Move ``self.buffers`` to ``device``; layers with other device state extend this."""
        for key, value in self.buffers.items():
            if device == "cpu":
                self.buffers[key] = value.get() if hasattr(value, "get") else value
            else:
                # asarray: a buffer already on the GPU (a second .to("cuda")) stays as it is
                self.buffers[key] = _backend.get("cuda").asarray(value)

    def get_rng_state(self):
        """The state of this layer's own random stream (Dropout), for snapshots; None if
        the layer draws no random numbers at run time."""
        return None

    def set_rng_state(self, state):
        """Restore what :meth:`get_rng_state` returned."""

    # ------------------------------------------------------------------ data parallelism
    #: None, or a function returning the element-wise sum of a float64 array over every rank
    #: of a data-parallel run; convnet.distributed installs it on loss layers and on
    #: BatchNorm(sync=True)
    stats_reducer = None

    def _reduce_stats(self, stats):
        """Sum per-batch statistics (a float64 array: BatchNorm's per-channel count and
        moments, a loss's sum and normaliser) over the ranks of a data-parallel run, so the
        layer computes what one process would on the whole batch; ``stats`` unchanged in
        one process."""
        reducer = self.stats_reducer
        return stats if reducer is None else reducer(stats)

    # ------------------------------------------------------------------ hooks
    def _check_params(self):
        """Validate the constructor's parameters (no shapes known yet)."""

    def _reshape(self, shapes):
        raise NotImplementedError

    def _forward(self, bottoms):
        raise NotImplementedError

    def _backward(self, top_diffs, propagate_down):
        raise NotImplementedError

    # ------------------------------------------------------------------ params
    def _add_param(self, name, data):
        """Create the next param (in order), applying this layer's ``param=`` specs; ``data``
        (filled on the host) moves to the layer's device."""
        if self.device != "cpu" and isinstance(data, np.ndarray):
            data = self.backend.from_numpy(np.ascontiguousarray(data, dtype=self.dtype))
        index = len(self.params)
        spec = self._param_specs[index] if index < len(self._param_specs) else {}
        p = Param(data, spec.get("lr_mult", 1.0), spec.get("decay_mult", 1.0), name)
        self.params.append(p)
        return p

    def _check_param_shape(self, param, expected, what):
        if tuple(param.shape) != tuple(expected):
            fail(self, f"{param.name} has shape {shape_str(param.shape)} but the bottom needs "
                       f"{shape_str(expected)} ({what}); the bottom changed after setup",
                 ShapeError)

    # ------------------------------------------------------------------ lifecycle
    def _check_count(self, n, what="bottoms"):
        lo, hi = self.min_bottoms, self.max_bottoms
        if not lo <= n <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            fail(self, f"expects {want} {what}, got {n}", ShapeError)

    def setup(self, *bottom_shapes):
        """Validate the bottom shapes, create the params (once) and return the top shape
        (a tuple of tuples when the layer has several tops). Idempotent. A refused setup
        changes nothing: the layer (params, cached geometry) and the filler streams are as
        they were."""
        self._check_count(len(bottom_shapes))
        shapes_in = tuple([shapes.shape(s, f"bottom {i}", self)
                           for i, s in enumerate(bottom_shapes)])
        if shapes_in != self.bottom_shapes:
            saved = _snapshot_state(self)
            try:
                self._setup(shapes_in)
            except BaseException:
                _restore_state(self, saved)
                raise
        return self.top_shapes[0] if len(self.top_shapes) == 1 else tuple(self.top_shapes)

    def _setup(self, shapes_in):
        try:
            tops = self._reshape(shapes_in)
        except MemoryError:
            fail(self, f"out of memory setting up for bottoms "
                       f"{', '.join(shape_str(s) or '()' for s in shapes_in)}", ShapeError)
        if len(self._param_specs) > len(self.params):
            # Caffe: "Too many params specified for layer"
            fail(self, f"{len(self._param_specs)} param specs given (param=[...]) but the "
                       f"layer has {len(self.params)} param(s) "
                       f"{[p.name for p in self.params]}")
        tops = [tuple(int(d) for d in t) for t in (tops if isinstance(tops, list) else [tops])]
        for i, t in enumerate(tops):
            check_blob_size(self, t, f"top {i}" if len(tops) > 1 else "the top")
        self.bottom_shapes = shapes_in
        self.top_shapes = tops
        self._forwarded = False

    def _convert_bottom(self, index, x):
        """Bottoms become C-contiguous arrays of the layer's dtype on the layer's device.
        Layers with integer bottoms (labels, masks) override this."""
        return self.backend.asarray(x, self.dtype)

    def _check_numeric(self, x, what, index, check_kind=True):
        """``x`` unchanged, or a list/scalar made an array; a ragged nested list raises
        ShapeError and (with ``check_kind``) a complex, object or string dtype DataError
        instead of being cast silently or failing inside NumPy. ``what index`` names ``x``
        in messages ("bottom 0", "top diff 1")."""
        dt = getattr(x, "dtype", None)
        if dt is None:
            try:
                x = np.asarray(x)
            except (ValueError, TypeError) as exc:
                fail(self, f"{what} {index} is not a rectangular array (a ragged nested list?): "
                           f"{exc}", ShapeError)
            dt = x.dtype
        if check_kind and getattr(dt, "kind", "f") not in NUMERIC_KINDS:
            fail(self, f"{what} {index} must hold real numbers (bool, int or float), got dtype "
                       f"{np.dtype(dt).name}", DataError)
        return x

    def _prepared_bottoms(self, bottoms):
        """What forward does before computing: the bottoms checked and converted (a list),
        the layer set up for their shapes, its thread count synced; the old cache is gone."""
        self._forwarded = False
        self._check_count(len(bottoms))
        # the kind check covers every bottom but the declared label / mask ones (the class
        # attribute: what an earlier call saw never switches a check off); those check their
        # dtype in _convert_bottom
        labels = type(self).nondiff_bottoms
        bottoms = [self._convert_bottom(i, self._check_numeric(x, "bottom", i, i not in labels))
                   for i, x in enumerate(bottoms)]
        self.setup(*(b.shape for b in bottoms))
        self._sync_threads()
        return bottoms

    def forward(self, *bottoms):
        """Compute the top(s): one array, a tuple for several tops, a float for a loss.
        A forward that fails leaves no cache behind: backward then raises StateError."""
        bottoms = self._prepared_bottoms(bottoms)
        try:
            tops = self._forward(bottoms)
        except MemoryError:
            fail(self, f"out of memory in forward (bottoms "
                       f"{', '.join(shape_str(b.shape) or '()' for b in bottoms)}, top "
                       f"{', '.join(shape_str(t) or '()' for t in self.top_shapes)})",
                 ShapeError)
        self._forwarded = True
        if self.is_loss:
            return float(tops) * self.loss_weight
        return tops[0] if len(tops) == 1 else tuple(tops)

    @staticmethod
    def _sync_threads():
        # the thread count is host state on either device (cpu.sync_threads is cheap)
        global _sync_threads
        if _sync_threads is None:
            from convnet.backend.cpu import sync_threads as _sync_threads
        _sync_threads()

    def _check_writeable(self, x, what):
        """An in-place layer writes into ``x``: refuse a read-only array up front."""
        flags = getattr(x, "flags", None)
        if flags is not None and not flags.writeable:
            fail(self, f"in_place=True writes into the {what}, but it is a read-only array; "
                       f"pass a writeable array (x.copy()) or use in_place=False", DataError)

    def __call__(self, *bottoms, **kwargs):
        return self.forward(*bottoms, **kwargs)

    def _propagate_flags(self, propagate_down, n):
        if propagate_down is None:
            return [i not in self.nondiff_bottoms for i in range(n)]
        if isinstance(propagate_down, (bool, np.bool_)):
            flags = [bool(propagate_down) and i not in self.nondiff_bottoms for i in range(n)]
            return flags
        if not isinstance(propagate_down, (list, tuple)) or not all(
                isinstance(f, (bool, np.bool_)) or (isinstance(f, numbers.Integral)
                                                    and f in (0, 1)) for f in propagate_down):
            fail(self, f"propagate_down must be a bool or a list of one bool per bottom, got "
                       f"{propagate_down!r:.60}")
        flags = [bool(f) for f in propagate_down]
        if len(flags) != n:
            fail(self, f"propagate_down needs one flag per bottom ({n}), got {len(flags)}")
        for i in self.nondiff_bottoms:
            if i < n and flags[i]:
                fail(self, f"cannot propagate_down to bottom {i} (it holds labels or indices)")
        return flags

    def backward(self, *top_diffs, propagate_down=None):
        """Return the bottom diff(s) given the top diff(s); ADDS into each ``param.diff``.

        ``propagate_down`` is a bool or one bool per bottom; a bottom not propagated gets
        ``None``. Loss layers take an optional scalar top diff (default ``loss_weight``).
        """
        if not self._forwarded:
            fail(self, "backward called before forward (or after the bottoms were reshaped)",
                 StateError)
        n = len(self.bottom_shapes)
        flags = self._propagate_flags(propagate_down, n)
        if self.is_loss:
            if len(top_diffs) > 1:
                fail(self, f"a loss takes at most one (scalar) top diff, got {len(top_diffs)}",
                     ShapeError)
            if top_diffs:
                scale = self.backend.to_numpy(self._check_numeric(top_diffs[0], "top diff", 0))
                scale = np.asarray(scale, dtype=np.float64)
                if scale.size != 1:
                    fail(self, f"the top diff of a loss must be a scalar, got shape "
                               f"{shape_str(scale.shape)}", ShapeError)
                scale = float(scale.reshape(()))
            else:
                scale = self.loss_weight
            self._sync_threads()
            diffs = self._backward([scale], flags)
        else:
            if len(top_diffs) != len(self.top_shapes):
                fail(self, f"backward expects {len(self.top_shapes)} top diff(s), got "
                           f"{len(top_diffs)}", ShapeError)
            converted = []
            for i, (d, want) in enumerate(zip(top_diffs, self.top_shapes)):
                d = self.backend.asarray(self._check_numeric(d, "top diff", i), self.dtype)
                if tuple(d.shape) != tuple(want):
                    fail(self, f"top diff {i} must have the top's shape {shape_str(want)}, got "
                               f"{shape_str(d.shape)}", ShapeError)
                converted.append(d)
            self._sync_threads()
            try:
                diffs = self._backward(converted, flags)
            except MemoryError:
                fail(self, f"out of memory in backward (bottoms "
                           f"{', '.join(shape_str(b) or '()' for b in self.bottom_shapes)})",
                     ShapeError)
        diffs = [d if f else None for d, f in zip(diffs, flags)]
        return diffs[0] if n == 1 else tuple(diffs)


def require(condition, owner, message, exc=ConfigError):
    """Raise ``exc`` naming ``owner`` when ``condition`` is false."""
    if not condition:
        fail(owner, message, exc)
