"""A Caffe-style network: layers wired by named blobs.

>>> from convnet import Net
>>> from convnet.layers import Convolution, ReLU, SoftmaxWithLoss
>>> net = Net("tiny")
>>> net.add(Convolution(num_output=8, kernel_size=3, pad=1), bottom=["data"], top=["conv1"])
>>> net.add(ReLU(), bottom=["conv1"], top=["conv1"])             # in place
>>> net.add(Convolution(num_output=3, kernel_size=1), bottom=["conv1"], top=["score"])
>>> net.add(SoftmaxWithLoss(), bottom=["score", "label"], top=["loss"])
>>> out = net.forward(data=x, label=y)        # {"loss": 1.09...}; net.loss is the total
>>> net.backward()                            # param diffs accumulate; net.diffs per blob

Every bottom that no earlier layer produces is a net input, supplied to ``forward`` by name.
A layer may write its top over its bottom (``top == bottom``) when it has an ``in_place``
attribute (ReLU, Dropout); the Net switches it on. Internally each write of a name is a new
blob *version*, so a blob read by several layers receives the sum of their diffs and an
in-place layer's bottom diff never mixes with its top diff.

Backward follows Caffe's need-backward analysis: a blob gets a diff only when it lies on a
path from a learnable param (lr_mult > 0) to a loss with non-zero weight; input blobs get none
unless ``force_backward=True`` (Caffe's ``force_backward``).
"""

import difflib
import json
import warnings

import numpy as np

from convnet import backend as _backend
from convnet import shapes as _shapes
from convnet.errors import (ConfigError, FileFormatError, ShapeError, StateError, fail,
                            shown)
from convnet.layers.base import Layer, _restore_state, _snapshot_state, check_dtype, shape_str

WEIGHTS_FORMAT = "convnet-weights"
WEIGHTS_VERSION = 1
META_KEY = "__format__"

# short Caffe-like prefixes for automatic layer names ("conv3", "relu2")
_PREFIX = {
    "Convolution": "conv", "Deconvolution": "deconv", "Pooling": "pool",
    "Unpooling": "unpool", "ReLU": "relu", "Dropout": "drop", "BatchNorm": "bn",
    "SoftmaxWithLoss": "loss", "EuclideanLoss": "loss", "Interp": "interp",
    "Concat": "concat", "Crop": "crop", "Eltwise": "eltwise",
}


class NonFiniteWeightsWarning(UserWarning):
    """A loaded weights file or snapshot holds NaN or Inf values."""


class _Node:
    """One layer in the graph: its bottom and top blob versions (indices into Net._versions)."""

    __slots__ = ("layer", "bottoms", "tops", "in_place")

    def __init__(self, layer, bottoms, tops, in_place):
        self.layer = layer
        self.bottoms = bottoms
        self.tops = tops
        self.in_place = in_place


class _Version:
    """One write of a blob name: who produced it (None for an input) and who reads it."""

    __slots__ = ("name", "producer", "readers")

    def __init__(self, name, producer):
        self.name = name
        self.producer = producer
        self.readers = []


class LoadReport:
    """What :meth:`Net.load` did: ``matched`` (loaded), ``skipped`` (in the file, not in the
    net) and ``missing`` (in the net, not in the file: left as initialised), as lists of keys
    ``"layer/param"`` or ``"layer/buffer:key"``."""

    def __init__(self, path, matched, skipped, missing):
        self.path = path
        self.matched = matched
        self.skipped = skipped
        self.missing = missing

    def __repr__(self):
        def names(keys):
            return ", ".join(keys) if keys else "none"
        return (f"LoadReport({self.path!r}: loaded {len(self.matched)} arrays; "
                f"skipped (in file, not in net): {names(self.skipped)}; "
                f"missing (in net, not in file, left as initialised): {names(self.missing)})")

    __str__ = __repr__


class Net:
    """A directed acyclic graph of layers connected by named blobs (Caffe's Net).

    ``Net(name="net", debug=False, force_backward=False, keep_diffs=True, dtype=None)``. ``debug=True``
    checks every top for non-finite values during forward and records the first offender in
    ``net.first_nonfinite`` (the solver names it when the loss goes NaN). ``keep_diffs=False``
    frees each blob's diff as soon as backward has used it (as PyTorch frees the gradients of
    intermediate tensors): ``net.diffs`` then holds only the input blobs' diffs, and a
    training step's peak memory drops by about the size of all intermediate blobs.
    ``dtype=np.float64`` (or float32) is the net-wide dtype: every layer added without a
    ``dtype=`` of its own takes it (layers keep an explicit dtype). A float32 layer that reads
    a float64 blob computed by another layer warns once, naming the layer, and computes in
    float32; net inputs are converted to the dtype of the layers that read them, silently.

    Attributes: ``layers`` (insertion order), ``blobs`` (name -> array, or float for a loss,
    of the last forward), ``diffs`` (name -> diff array of the last backward, for blobs that
    received a gradient; an in-place name shows the diff of its first write, as Caffe's
    shared buffer does), ``loss`` (total loss of the last forward), ``params`` (layer name ->
    list of Param, for layers with params), ``learnable_params`` (flat list).
    """

    def __init__(self, name="net", debug=False, force_backward=False, keep_diffs=True,
                 dtype=None):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"Net: name must be a non-empty string, got {shown(name)}")
        self.name = name
        for flag, value in (("debug", debug), ("force_backward", force_backward),
                            ("keep_diffs", keep_diffs)):
            if not isinstance(value, (bool, np.bool_)):
                fail(self, f"{flag} must be True or False, got {value!r:.40}")
        self.dtype = None if dtype is None else check_dtype(dtype, self)
        self._dtype_warned = set()
        self.debug = bool(debug)
        self.force_backward = bool(force_backward)
        self.keep_diffs = bool(keep_diffs)
        self.layers = []
        self.blobs = {}
        self.diffs = {}
        self.loss = None
        self.first_nonfinite = None
        self.input_shapes = {}
        self.setup_failed_layer = None
        self.device = "cpu"
        self._nodes = []
        self._versions = []
        self._latest = {}          # blob name -> index of its latest version
        self._by_name = {}         # layer name -> node
        self._forwarded = False
        #: functions called as hook(layer) after each layer's backward (its param diffs are
        #: then complete) and hook(None) when backward is done; convnet.distributed starts
        #: and waits its gradient reductions there
        self.backward_hooks = []

    type_name = "Net"

    def __repr__(self):
        return f"<Net {self.name!r}: {len(self.layers)} layers>"

    # ------------------------------------------------------------------ building
    def _auto_name(self, layer):
        prefix = _PREFIX.get(layer.type_name, layer.type_name.lower())
        count = sum(1 for lyr in self.layers if type(lyr) is type(layer)) + 1
        while f"{prefix}{count}" in self._by_name:
            count += 1
        return f"{prefix}{count}"

    def _blob_list(self, names, what, layer):
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, (list, tuple)) or not all(
                isinstance(n, str) and n for n in names):
            fail(self, f"{what} of layer '{layer.name}' must be a list of non-empty blob "
                       f"names, got {names!r}")
        return list(names)

    def add(self, layer, bottom=None, top=None):
        """Append ``layer`` reading blobs ``bottom`` and writing blobs ``top``; returns it.

        ``bottom`` defaults to the previous layer's first top; ``top`` defaults to the layer's
        name (``name_1``, ``name_2``... for further tops). A layer without a name gets one
        ("conv3"). A top equal to a bottom runs the layer in place.
        """
        if not isinstance(layer, Layer):
            fail(self, f"add() takes a convnet Layer, got {type(layer).__name__}")
        if any(lyr is layer for lyr in self.layers):
            fail(self, f"layer '{layer.name}' was already added (a layer object belongs to one "
                       f"place in one net)")
        if layer.name is None:
            layer.name = self._auto_name(layer)
        elif not isinstance(layer.name, str) or not layer.name:
            fail(self, f"layer names must be non-empty strings, got {layer.name!r}")
        if self.dtype is not None and not layer.dtype_given and layer.dtype != self.dtype:
            if layer.params:
                fail(self, f"layer '{layer.name}' was set up as {layer.dtype.name} before it "
                           f"was added to a {self.dtype.name} net; add it before setup() or "
                           f"give it dtype={self.dtype.name}")
            layer.dtype = self.dtype
        if layer.name in self._by_name:
            fail(self, f"duplicate layer name '{layer.name}' (already used by a "
                       f"{self._by_name[layer.name].layer.type_name} layer)")
        if bottom is None:
            if not self._nodes:
                fail(self, f"layer '{layer.name}' needs bottom=[...] (it is the first layer)")
            bottom = [self._versions[self._nodes[-1].tops[0]].name]
        bottom = self._blob_list(bottom, "bottom", layer)
        layer._check_count(len(bottom))
        if top is None:
            n = int(getattr(layer, "num_tops", 1))
            top = [layer.name] + [f"{layer.name}_{i}" for i in range(1, n)]
        top = self._blob_list(top, "top", layer)
        if len(set(top)) != len(top):
            fail(self, f"layer '{layer.name}' lists a top twice: {top}")

        in_place = [t for t in top if t in bottom]
        if in_place:
            self._check_in_place(layer, bottom, top)
        for t in top:
            if t in self._latest and t not in bottom:
                producer = self._versions[self._latest[t]].producer
                source = ("a net input" if producer is None
                          else f"the top of layer '{self._nodes[producer].layer.name}'")
                fail(self, f"layer '{layer.name}' writes blob '{t}', which is already {source}; "
                           f"give the top a new name (only an in-place layer, top == bottom, "
                           f"may rewrite a blob)")
        if any(self._versions[self._latest[b]].producer is not None and
               self._nodes[self._versions[self._latest[b]].producer].layer.is_loss
               for b in bottom if b in self._latest):
            fail(self, f"layer '{layer.name}' reads a loss top (a scalar) as a bottom: {bottom}")

        index = len(self._nodes)
        bottoms = []
        for b in bottom:
            if b not in self._latest:
                self._latest[b] = len(self._versions)
                self._versions.append(_Version(b, None))
            v = self._latest[b]
            self._versions[v].readers.append(index)
            bottoms.append(v)
        tops = []
        for t in top:
            self._latest[t] = len(self._versions)
            self._versions.append(_Version(t, index))
            tops.append(self._latest[t])
        if in_place:
            layer.in_place = True
        self._fuse_batch_norm_relu(layer, bottoms)
        node = _Node(layer, bottoms, tops, bool(in_place))
        self._nodes.append(node)
        self._by_name[layer.name] = node
        self.layers.append(layer)
        self._forwarded = False
        return layer

    def _fuse_batch_norm_relu(self, layer, bottoms):
        """An in-place ReLU (negative_slope 0) on the top of the BatchNorm just added runs
        inside it (one pass; see BatchNorm). The in-place check guarantees that nothing else
        reads the BatchNorm's own output, so the fusion is invisible."""
        from convnet.layers.activation import ReLU
        from convnet.layers.normalization import BatchNorm
        if not (isinstance(layer, ReLU) and layer.in_place and layer.negative_slope == 0
                and self._nodes and isinstance(self._nodes[-1].layer, BatchNorm)):
            return
        previous = self._nodes[-1]
        if len(bottoms) == 1 and previous.tops[0] == bottoms[0]:
            previous.layer.fused_relu = layer
            layer.fused_into = previous.layer

    def _check_in_place(self, layer, bottom, top):
        for j, t in enumerate(top):
            if t not in bottom:
                continue
            if j >= len(bottom) or bottom[j] != t:
                fail(self, f"{layer.type_name} '{layer.name}': top '{t}' must be bottom {j} to "
                           f"run in place (top i overwrites bottom i)", ConfigError)
        if not hasattr(layer, "in_place"):
            fail(self, f"{layer.type_name} '{layer.name}' cannot run in place (top == bottom "
                       f"{[t for t in top if t in bottom]}); give its top a new name")
        for t in top:
            if t in bottom and t in self._latest:
                readers = self._versions[self._latest[t]].readers
                others = [self._nodes[r].layer.name for r in readers]
                if others:
                    fail(self, f"{layer.type_name} '{layer.name}' cannot run in place on blob "
                               f"'{t}': layer(s) {others} also read it and would see (or have "
                               f"cached) the overwritten values; give the top a new name")

    # ------------------------------------------------------------------ lookup
    def layer(self, name):
        """The layer called ``name``."""
        if not isinstance(name, str):
            fail(self, f"layer names are strings, got {name!r:.40}")
        node = self._by_name.get(name)
        if node is None:
            fail(self, f"no layer named {name!r}{self._suggest(name, self._by_name)}")
        return node.layer

    @property
    def params(self):
        """Layer name -> list of its Params, for layers that have params (insertion order)."""
        return {n.layer.name: list(n.layer.params) for n in self._nodes if n.layer.params}

    @property
    def learnable_params(self):
        """Every Param of every layer, in layer order (lr_mult 0 ones included, as Caffe)."""
        return [p for n in self._nodes for p in n.layer.params]

    def named_params(self):
        """[("layer/param", Param), ...] in layer order: the keys of weight files."""
        out = []
        for node in self._nodes:
            for key, p in _param_keys(node.layer):
                out.append((f"{node.layer.name}/{key}", p))
        return out

    def named_buffers(self):
        """[("layer/buffer:key", array), ...]: non-learnable state (BatchNorm averages)."""
        return [(f"{n.layer.name}/buffer:{k}", v)
                for n in self._nodes for k, v in n.layer.buffers.items()]

    @property
    def inputs(self):
        """Names of the blobs ``forward`` needs (bottoms no earlier layer produces)."""
        return [v.name for v in self._versions if v.producer is None]

    @property
    def outputs(self):
        """Names of the blobs ``forward`` returns (tops no later layer reads)."""
        return [v.name for v in self._versions if v.producer is not None and not v.readers]

    @staticmethod
    def _suggest(name, candidates):
        close = difflib.get_close_matches(str(name), list(candidates), n=1)
        return f" (did you mean '{close[0]}'?)" if close else ""

    # ------------------------------------------------------------------ phase / device
    def zero_diffs(self):
        """Set every param diff to zero (the solver calls this before each iteration)."""
        for p in self.learnable_params:
            p.zero_diff()

    def train(self, mode=True):
        """Put every layer in the TRAIN phase (or TEST with ``mode=False``). Returns self."""
        if not isinstance(mode, (bool, np.bool_)):
            fail(self, f"train() takes True or False, got {mode!r:.40}")
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self):
        """Put every layer in the TEST phase (Dropout off, BatchNorm moving averages)."""
        return self.train(False)

    def to(self, device):
        """Move every layer's params and state to ``device`` ('cpu' or 'cuda'). Returns self."""
        device = _backend.normalize_device(device, self)
        for layer in self.layers:
            layer.to(device)
        self.device = device
        self._forwarded = False
        return self

    # ------------------------------------------------------------------ forward / backward
    def _check_inputs(self, given, what):
        needed = self.inputs
        if not self._nodes:
            fail(self, "the net has no layers", StateError)
        unknown = [k for k in given if k not in needed]
        if unknown:
            k = unknown[0]
            fail(self, f"{what} got unknown input blob '{k}'{self._suggest(k, needed)}; the "
                       f"net's inputs are: {', '.join(needed)}")
        missing = [k for k in needed if k not in given]
        if missing:
            k = missing[0]
            v = next(v for v in self._versions if v.producer is None and v.name == k)
            readers = ", ".join(f"'{self._nodes[r].layer.name}'" for r in v.readers)
            produced = [x.name for x in self._versions if x.producer is not None]
            fail(self, f"{what} is missing input blob '{k}' (read by layer {readers}; a bottom "
                       f"that no earlier layer produces is a net input)"
                       f"{self._suggest(k, produced)}; the net's inputs are: "
                       f"{', '.join(needed)}")

    def setup(self, **input_shapes):
        """Set every layer up from the input shapes (creating the params) without running
        forward; returns blob name -> shape. ``net.setup(data=(2, 3, 64, 64), label=(2, 64,
        64))``."""
        self._check_inputs(input_shapes, "setup()")
        given = {k: _shapes.shape(s, f"input '{k}'", self) for k, s in input_shapes.items()}
        shapes = {}
        for v, version in enumerate(self._versions):
            if version.producer is None:
                shapes[v] = given[version.name]
        # all or nothing: a layer that refuses its shapes leaves every layer as it was
        checkpoint = self._checkpoint()
        #: the name of the layer whose setup refused its shapes in the last setup() (None:
        #: it succeeded), for loaders that point at the layer's place in a file
        self.setup_failed_layer = None
        try:
            for node in self._nodes:
                self.setup_failed_layer = node.layer.name
                try:
                    node.layer.setup(*(shapes[b] for b in node.bottoms))
                except ShapeError as exc:
                    hint = _nhwc_hint(node.layer, [shapes[b] for b in node.bottoms])
                    if not hint:
                        raise
                    raise ShapeError(f"{exc}{hint}") from None
                outs = node.layer.top_shapes
                if len(outs) != len(node.tops):
                    self._top_count_error(node, len(outs))
                for t, s in zip(node.tops, outs):
                    shapes[t] = tuple(s)
        except BaseException:
            self._rollback(checkpoint)
            raise
        self.setup_failed_layer = None
        self.input_shapes = given
        return {self._versions[v].name: s for v, s in shapes.items()}

    def _top_count_error(self, node, produced):
        names = [self._versions[t].name for t in node.tops]
        fail(self, f"{node.layer.type_name} '{node.layer.name}' produces {produced} top(s) but "
                   f"was added with {len(names)} top name(s) {names}", ShapeError)

    def forward(self, **inputs):
        """Run every layer in order on the named input arrays; return {name: top} for the
        output blobs (tops no later layer reads), losses included as floats (loss_weight
        applied). ``net.loss`` is the sum of the losses."""
        self._check_inputs(inputs, "forward()")
        self._forwarded = False
        shapes = {k: _shape(x, k, self) for k, x in inputs.items()}
        self.first_nonfinite = None
        values = {}
        in_place_inputs = self._in_place_inputs()
        for v, version in enumerate(self._versions):
            if version.producer is None:
                x = inputs[version.name]
                # an in-place layer would overwrite the caller's array
                values[v] = _copy(x) if version.name in in_place_inputs else x
        self.input_shapes = shapes
        loss = 0.0
        for node in self._nodes:
            layer = node.layer
            if layer.dtype == np.float32 and layer.name not in self._dtype_warned:
                self._warn_float64_bottom(node, values)
            try:
                out = layer.forward(*(values[b] for b in node.bottoms))
            except ShapeError as exc:
                hint = _nhwc_hint(layer, [getattr(values[b], "shape", None) for b in node.bottoms])
                if not hint:
                    raise
                raise ShapeError(f"{exc}{hint}") from None
            outs = [out] if (layer.is_loss or not isinstance(out, tuple)) else list(out)
            if len(outs) != len(node.tops):
                self._top_count_error(node, len(outs))
            for t, y in zip(node.tops, outs):
                values[t] = y
            if layer.is_loss:
                loss += outs[0]
            if self.debug and self.first_nonfinite is None:
                self._check_finite(node, outs)
        self.loss = float(loss)
        self.blobs = {self._versions[v].name: y for v, y in sorted(values.items())}
        self._forwarded = True
        return {v.name: values[i] for i, v in enumerate(self._versions)
                if v.producer is not None and not v.readers}

    def _warn_float64_bottom(self, node, values):
        """Warn once per layer when a float32 layer reads a float64 blob of another layer (it
        computes in float32, so the precision would be lost silently)."""
        layer = node.layer
        for i, b in enumerate(node.bottoms):
            # net inputs are converted to the reading layer's dtype (documented); a float64
            # blob another layer computed losing its precision is what deserves a warning
            if i in layer.nondiff_bottoms or self._versions[b].producer is None:
                continue
            if getattr(values[b], "dtype", None) == np.float64:
                self._dtype_warned.add(layer.name)
                warnings.warn(f"{self.name}: {layer.type_name} '{layer.name}' is float32 but its "
                              f"bottom '{self._versions[b].name}' is float64; it computes in "
                              f"float32 (build the net with Net(dtype=np.float64) or give the "
                              f"layer dtype=np.float64)", stacklevel=3)
                return

    def _in_place_inputs(self):
        names = set()
        for node in self._nodes:
            if node.in_place:
                for b in node.bottoms:
                    if self._versions[b].producer is None and any(
                            self._versions[t].name == self._versions[b].name for t in node.tops):
                        names.add(self._versions[b].name)
        return names

    def _check_finite(self, node, outs):
        for t, y in zip(node.tops, outs):
            if not np.all(np.isfinite(node.layer.backend.to_numpy(y))):
                self.first_nonfinite = (f"{node.layer.type_name} '{node.layer.name}' "
                                        f"(top '{self._versions[t].name}')")
                return

    def _backward_plan(self):
        """Caffe's need-backward analysis: (layer runs?, propagate_down flags) per node."""
        n_versions = len(self._versions)
        needs = [False] * n_versions
        layer_needs = []
        for node in self._nodes:
            learnable = any(p.lr_mult != 0 for p in node.layer.params)
            nd = learnable or any(needs[b] for b in node.bottoms)
            layer_needs.append(nd)
            for t in node.tops:
                needs[t] = nd
        if self.force_backward:
            needs = [True] * n_versions
            layer_needs = [True] * len(self._nodes)
        # which versions feed a loss with non-zero weight through differentiable bottoms
        reaches = [False] * n_versions
        layer_reaches = [False] * len(self._nodes)
        for i in range(len(self._nodes) - 1, -1, -1):
            node = self._nodes[i]
            layer = node.layer
            r = (layer.is_loss and layer.loss_weight != 0) or any(reaches[t] for t in node.tops)
            layer_reaches[i] = r
            if r:
                for k, b in enumerate(node.bottoms):
                    if k not in layer.nondiff_bottoms:
                        reaches[b] = True
        plan = []
        for i, node in enumerate(self._nodes):
            flags = [needs[b] and reaches[b] and k not in node.layer.nondiff_bottoms
                     for k, b in enumerate(node.bottoms)]
            plan.append((layer_reaches[i] and layer_needs[i], flags))
        return plan

    def backward(self):
        """Backpropagate from the losses of the last forward (each loss layer's top diff is
        its loss_weight), in reverse layer order. ADDS into param diffs (call
        ``zero_diffs()`` first, as the solver does); fills ``net.diffs``."""
        if not self._forwarded:
            fail(self, "backward() called before forward() (or after the net changed)",
                 StateError)
        plan = self._backward_plan()
        diffs = {}
        # diff arrays the net allocated (safe to add into), by id; holding them keeps their ids
        # from being reused by other arrays once keep_diffs=False frees diffs on the way
        owned = {}
        for i in range(len(self._nodes) - 1, -1, -1):
            run, flags = plan[i]
            if not run:
                continue
            node = self._nodes[i]
            layer = node.layer
            if layer.is_loss:
                got = layer.backward(propagate_down=flags)
            else:
                top_diffs = []
                for t, shape in zip(node.tops, layer.top_shapes):
                    d = diffs.get(t)
                    if d is None:
                        d = layer.backend.zeros(shape, layer.dtype)
                    top_diffs.append(d)
                got = layer.backward(*top_diffs, propagate_down=flags)
            got = got if isinstance(got, tuple) else (got,)
            shared_ok = {id(diffs[t]) for t in node.tops if node.in_place and t in diffs}
            be = layer.backend
            for b, d, f in zip(node.bottoms, got, flags):
                if not f or d is None:
                    continue
                if b in diffs:
                    if id(diffs[b]) not in owned:
                        diffs[b] = self._copy(be, diffs[b], owned)
                    be.net_accumulate(diffs[b], d)
                    continue
                if id(d) in {id(x) for x in diffs.values()} and id(d) not in shared_ok:
                    # one array returned for two blobs (Eltwise SUM): later in-place
                    # layers or accumulation must not write through to the other blob
                    d = self._copy(be, d, owned)
                diffs[b] = d
            if not self.keep_diffs:
                # this layer produced its tops: nothing upstream reads their diffs again
                for t in node.tops:
                    diffs.pop(t, None)
            for hook in self.backward_hooks:
                hook(layer)
        for hook in self.backward_hooks:
            hook(None)
        self.diffs = {}
        for v in sorted(diffs):
            self.diffs.setdefault(self._versions[v].name, diffs[v])
        if self.debug:
            self._check_diffs(diffs)

    @staticmethod
    def _copy(be, x, owned):
        out = x.copy()
        owned[id(out)] = out
        return out

    def _check_diffs(self, diffs):
        for v in sorted(diffs):
            d = diffs[v]
            if not np.all(np.isfinite(_backend.get(_backend.device_of(d)).to_numpy(d))):
                if self.first_nonfinite is None:
                    self.first_nonfinite = f"the diff of blob '{self._versions[v].name}'"
                return

    # ------------------------------------------------------------------ weights
    def _require_setup(self, what):
        not_set = [n.layer.name for n in self._nodes if n.layer.bottom_shapes is None]
        if not_set:
            fail(self, f"{what}: layer(s) {not_set} have not been set up yet (their params do "
                       f"not exist): run a forward() or net.setup(**input_shapes) first",
                 StateError)

    def state_arrays(self):
        """{"layer/param": array, "layer/buffer:key": array} as host NumPy arrays."""
        self._require_setup("saving")
        out = {}
        for key, p in self.named_params():
            out[key] = np.asarray(_backend.get(p.device).to_numpy(p.data))
        for key, b in self.named_buffers():
            out[key] = np.asarray(_backend.get(_backend.device_of(b)).to_numpy(b))
        return out

    def save(self, path):
        """Write params and buffers to ``path`` (.npz keyed "layer/param" and
        "layer/buffer:key", plus a format entry), atomically: a crash leaves the old file."""
        from convnet.snapshot import write_npz_atomic
        arrays = self.state_arrays()
        meta = {"format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION, "net": self.name,
                "input_shapes": {k: list(s) for k, s in self.input_shapes.items()}}
        arrays[META_KEY] = np.array(json.dumps(meta))
        write_npz_atomic(path, arrays)

    def load(self, path, strict=True):
        """Load params and buffers saved by :meth:`save`; returns a :class:`LoadReport`.

        ``strict=True``: every param and buffer of the net must be in the file and nothing
        else (FileFormatError naming the keys otherwise). ``strict=False`` (fine-tuning) loads
        the names that match and reports the rest. A shape mismatch is always a FileFormatError
        naming the param. Nothing is modified unless the whole load succeeds.
        """
        from convnet.snapshot import _setup_from_meta, read_npz
        arrays = read_npz(path, "weights file")
        meta = _read_meta(arrays, path, WEIGHTS_FORMAT, WEIGHTS_VERSION)
        checkpoint = self._checkpoint()
        try:
            if any(n.layer.bottom_shapes is None for n in self._nodes) and \
                    meta.get("input_shapes"):
                _setup_from_meta(self, meta["input_shapes"], str(path))
            self._require_setup("loading")
            return self.load_arrays(arrays, str(path), strict)
        except BaseException:
            self._rollback(checkpoint)
            raise

    def _checkpoint(self):
        """What a refused load puts back: every layer's state (params, buffers, geometry),
        the filler streams and the net's own setup state."""
        return ([(layer, _snapshot_state(layer)) for layer in self.layers],
                dict(self.input_shapes), self._forwarded)

    def _rollback(self, checkpoint):
        layers, input_shapes, forwarded = checkpoint
        for layer, saved in layers:
            _restore_state(layer, saved)
        self.input_shapes = input_shapes
        self._forwarded = forwarded

    def load_arrays(self, arrays, source, strict=True):
        """Load {"layer/param": array, ...} (see :meth:`load`); ``source`` names the origin.
        Everything is checked before the first array is copied in."""
        report, apply = self.check_arrays(arrays, source, strict)
        apply()
        return report

    def check_arrays(self, arrays, source, strict=True):
        """Validate {"layer/param": array, ...} against the net without changing anything;
        returns (LoadReport, apply) where ``apply()`` copies the arrays in (and cannot fail
        on the data: every name, shape and dtype was checked)."""
        targets = self._targets()
        file_keys = [k for k in arrays if k != META_KEY]
        skipped = [k for k in file_keys if k not in targets]
        missing = [k for k in targets if k not in arrays]
        if strict and (skipped or missing):
            parts = []
            if missing:
                parts.append(f"missing from the file: {', '.join(missing)}")
            if skipped:
                parts.append(f"in the file but not in the net: {', '.join(skipped)}")
            fail(source, f"does not match net '{self.name}' ({'; '.join(parts)}); use "
                         f"load(path, strict=False) to load only the matching names",
                 FileFormatError)
        matched = [k for k in targets if k in arrays]
        for key in matched:
            want, _ = targets[key]
            value = arrays[key]
            if not isinstance(value, np.ndarray):
                fail(source, f"'{key}' is a {type(value).__name__}, expected an array",
                     FileFormatError)
            if tuple(value.shape) != tuple(want):
                fail(source, f"'{key}' has shape {_shape_text(value.shape)} in the file but "
                             f"{_shape_text(want)} in net '{self.name}' (rename the layer to "
                             f"leave it out of the load)", FileFormatError)
            if value.dtype.kind != "f" and value.size:
                fail(source, f"'{key}' holds {value.dtype} values, expected floats",
                     FileFormatError)
        nonfinite = [k for k in matched
                     if arrays[k].dtype.kind == "f" and not np.all(np.isfinite(arrays[k]))]
        report = LoadReport(source, matched, skipped, missing)

        def apply():
            if nonfinite:
                warnings.warn(f"{source}: non-finite (NaN or Inf) values in "
                              f"{', '.join(nonfinite)}; the net will output NaN",
                              NonFiniteWeightsWarning, stacklevel=4)
            with np.errstate(over="ignore"):
                for key in matched:
                    targets[key][1](arrays[key])
        return report, apply

    def _targets(self):
        """"key" -> (shape, setter) for every param and buffer of the net."""
        targets = {}
        for key, p in self.named_params():
            targets[key] = (p.shape, _param_setter(p))
        for node in self._nodes:
            for k in node.layer.buffers:
                value = node.layer.buffers[k]
                targets[f"{node.layer.name}/buffer:{k}"] = (
                    tuple(np.shape(value)) if _backend.device_of(value) == "cpu"
                    else tuple(value.shape), _buffer_setter(node.layer, k))
        return targets

    # ------------------------------------------------------------------ other formats
    @classmethod
    def from_prototxt(cls, path, phase="TEST", **kwargs):
        """A Net from a Caffe ``.prototxt`` (see :func:`convnet.caffe.load_net`)."""
        from convnet.caffe import load_net
        return load_net(path, phase=phase, **kwargs)

    def export_onnx(self, path, **kwargs):
        """Write the net as an ONNX model (see :func:`convnet.onnx.export`)."""
        from convnet.onnx import export
        return export(self, path, **kwargs)

    # ------------------------------------------------------------------ random state
    def get_rng_state(self):
        """{layer name: state} for the layers with a random stream of their own (Dropout)."""
        out = {}
        for node in self._nodes:
            state = node.layer.get_rng_state()
            if state is not None:
                out[node.layer.name] = state
        return out

    def set_rng_state(self, state):
        """Restore what :meth:`get_rng_state` returned; all or nothing (a bad state for one
        layer leaves every layer's stream as it was)."""
        if not isinstance(state, dict):
            fail(self, f"rng state must be the dict get_rng_state() returned (layer name -> "
                       f"state), got {type(state).__name__}")
        for name in state:
            if name not in self._by_name:
                fail(self, f"random state for unknown layer '{name}'"
                           f"{self._suggest(name, self._by_name)}")
        previous = self.get_rng_state()
        try:
            for name, s in state.items():
                self._by_name[name].layer.set_rng_state(s)
        except BaseException:
            for name, s in previous.items():
                self._by_name[name].layer.set_rng_state(s)
            raise


def _expected_channels(layer):
    """The input channels a set-up layer's params fix, or None."""
    params = getattr(layer, "params", None)
    if not params:
        return None
    w = params[0].data
    kind = layer.type_name
    if kind == "Convolution" and len(w.shape) == 4:
        return int(w.shape[1]) * int(getattr(layer, "group", 1))
    if kind == "Deconvolution" and len(w.shape) == 4:
        return int(w.shape[0])
    if kind in ("BatchNorm", "Scale") and len(w.shape) == 1:
        return int(w.shape[0])
    return None


def _nhwc_hint(layer, bottom_shapes):
    """A hint when a 4-d bottom looks channels-last: its last axis is the channel count the
    layer expects and axis 1 is not (convnet, like Caffe, is NCHW)."""
    if not bottom_shapes or bottom_shapes[0] is None or len(bottom_shapes[0]) != 4:
        return ""
    n, c, h, w = bottom_shapes[0]
    expected = _expected_channels(layer)
    if expected is None or c == expected or w != expected:
        return ""
    return (f" (the bottom {n}x{c}x{h}x{w} looks channels-last, NHWC: convnet takes NCHW "
            f"arrays, x.transpose(0, 3, 1, 2))")


def _param_keys(layer):
    """(key, Param) per param: its name, or its index when unnamed or repeated."""
    names = [p.name or str(i) for i, p in enumerate(layer.params)]
    out = []
    for i, (name, p) in enumerate(zip(names, layer.params)):
        out.append((name if names.count(name) == 1 else f"{name}{i}", p))
    return out


def _param_setter(p):
    def assign(value):
        if p.device == "cpu":
            np.copyto(p.data, value, casting="unsafe")
        else:
            p.data = _backend.get(p.device).from_numpy(np.ascontiguousarray(value, p.dtype))
    return assign


def _buffer_setter(layer, key):
    def assign(value):
        current = layer.buffers[key]
        if _backend.device_of(current) == "cpu" and isinstance(current, np.ndarray):
            np.copyto(current, value, casting="unsafe")
        else:
            layer.buffers[key] = _backend.get("cuda").from_numpy(
                np.ascontiguousarray(value, current.dtype))
    return assign


def _read_meta(arrays, path, expected_format, max_version):
    """Parse the JSON format entry of a weights or snapshot file."""
    if META_KEY not in arrays:
        fail(str(path), f"is not a convnet {expected_format} file (no '{META_KEY}' entry)",
             FileFormatError)
    entry = arrays[META_KEY]
    if entry.shape != () or entry.dtype.kind not in "US":
        fail(str(path), f"has a corrupted '{META_KEY}' entry (expected a JSON string, got "
                        f"{entry.dtype} of shape {_shape_text(entry.shape)})", FileFormatError)
    meta = parse_json(entry[()], str(path), f"'{META_KEY}' entry")
    if not isinstance(meta, dict) or meta.get("format") != expected_format:
        got = meta.get("format") if isinstance(meta, dict) else meta
        fail(str(path), f"is a {got!r} file, expected a {expected_format!r} file",
             FileFormatError)
    version = meta.get("version")
    if (isinstance(version, bool) or not isinstance(version, int)
            or not 1 <= version <= max_version):
        fail(str(path), f"has {expected_format} format version {version!r}; this convnet "
                        f"reads versions up to {max_version}", FileFormatError)
    return meta


#: the deepest nesting of lists and dicts a file's JSON metadata may have
MAX_JSON_DEPTH = 64


def _no_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text):
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(f"{text} overflows a float")
    return value


def _depth(value, limit):
    """The nesting depth of ``value``, iteratively (no recursion on crafted input); stops
    counting past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict)
                                                  else item))
    return deepest


def parse_json(text, path, what):
    """Parse a file's JSON metadata: strict JSON (no NaN, Infinity or float overflow), at
    most MAX_JSON_DEPTH levels deep; FileFormatError naming ``path`` and ``what``
    otherwise."""
    try:
        value = json.loads(str(text), parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, TypeError, RecursionError) as exc:
        fail(path, f"has a corrupted {what} ({type(exc).__name__}: {str(exc)[:160]})",
             FileFormatError)
    if _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        fail(path, f"has a corrupted {what} (nested more than {MAX_JSON_DEPTH} levels deep)",
             FileFormatError)
    return value


def _shape_text(shape):
    """``2x3`` for a shape, ``() (a scalar)`` for a 0-d one."""
    return shape_str(shape) or "() (a scalar)"


def _copy(x):
    """A private copy of an input array, NumPy or DeviceArray."""
    return x.copy() if hasattr(x, "__cuda_array_interface__") else np.array(x, copy=True)


def _shape(x, name, owner):
    """The shape of input ``name`` (ShapeError naming it for a ragged nested list)."""
    if hasattr(x, "shape"):
        return tuple(int(d) for d in x.shape)
    try:
        return tuple(int(d) for d in np.shape(x))
    except (ValueError, TypeError) as exc:
        fail(owner, f"input '{name}' is not a rectangular array (a ragged nested list?): "
                    f"{exc}", ShapeError)
