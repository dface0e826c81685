"""Caffe net definition -> convnet Net: one translator function per Caffe layer type.

``TRANSLATORS[type](lp, ctx)`` turns one V2 LayerParameter into a convnet layer (or None for a
layer that only feeds or only consumes files, which the loader leaves out and names). The
loader then wires the layers through ``Net.add`` with Caffe's blob names, honouring
``include`` / ``exclude`` rules, ``param`` multipliers, ``loss_weight`` and
``propagate_down``.

Two rewrites keep Caffe's meaning where the Net's rules differ:

- A BatchNorm whose top is read first by a Scale layer (the BVLC BatchNorm + Scale pair)
  becomes one convnet BatchNorm with ``affine=True``; the Scale layer's fillers and ``param``
  multipliers go to BatchNorm's scale and bias (``net.caffe.folded`` maps the BatchNorm's name
  to the Scale's, which weight files use).
- A layer that writes its top over its bottom where the Net cannot run it in place (a layer
  type without in-place support, or a blob that another layer has already read: Caffe inserts
  a Split there) writes a new blob ``<blob>/<layer>`` instead, and later readers of ``<blob>``
  read that; ``net.caffe.aliases`` lists these renames.
"""

import difflib
import inspect
import warnings

from convnet import layers
from convnet.errors import ConfigError, ConvnetError, FileFormatError

#: layers whose tops are read from a dataset: their tops become net inputs
DATA_LAYERS = ("Data", "ImageData", "ImageSegData", "DenseImageData", "Python", "MemoryData",
               "HDF5Data", "DummyData", "WindowData", "MatRead")
#: layers that only write files or report metrics: left out
OUTPUT_LAYERS = ("MatWrite", "HDF5Output", "Accuracy", "SegAccuracy")

TRANSLATORS = {}


class CaffeLoadNote(UserWarning):
    """The loader left a layer out or made it a net input (one line per layer)."""


class CaffeInfo:
    """What the loader knew about the Caffe definition, kept as ``net.caffe``.

    ``dialect``, ``source``, ``phase``, ``upgraded`` (the file was V1), ``inputs`` (the
    blobs Input and dataset layers declare), ``input_shapes`` (blob -> shape, where the file
    gives one), ``data_layers`` (one dict per dataset layer:
    name, type, tops, batch_size, source, crop_size, ...), ``left_out`` ((name, type, why)),
    ``aliases`` (Caffe blob -> convnet blob of an in-place write that got its own name),
    ``caffe_types`` (layer -> Caffe type), ``folded`` (BatchNorm name -> Scale name),
    ``scale_bias`` (BatchNorm name -> whether the folded Scale had a bias term).
    """

    def __init__(self, dialect, source, phase, upgraded):
        self.dialect = dialect
        self.source = source
        self.phase = phase
        self.upgraded = upgraded
        self.input_shapes = {}
        self.inputs = []
        self.data_layers = []
        self.left_out = []
        self.aliases = {}
        self.caffe_types = {}
        self.folded = {}
        self.scale_bias = {}

    def __repr__(self):
        return (f"<CaffeInfo {self.source} ({self.dialect}{', V1' if self.upgraded else ''}, "
                f"{self.phase})>")


def translator(*types):
    """Register ``fn(lp, ctx) -> Layer | None`` for Caffe layer ``types``."""
    def register(fn):
        for t in types:
            TRANSLATORS[t] = fn
        return fn
    return register


def supported_types():
    return sorted(set(TRANSLATORS) | set(DATA_LAYERS) | set(OUTPUT_LAYERS) | {"Input"})


class _Context:
    """Per-layer state for translators: where the layer is and how to complain."""

    def __init__(self, definition, info, dtype):
        self.definition = definition
        self.info = info
        self.dtype = dtype
        self.index = 0          # in the file's layer list (for line numbers)
        self.k = 0              # in the phase's selected layers
        self.lp = None
        self.fold = {}          # BatchNorm index -> Scale LayerParameter
        self.param_names = {}

    @property
    def where(self):
        return self.definition.where(self.index)

    def error(self, message, exc=ConfigError):
        raise exc(f"{self.where}: layer '{self.lp.name}' (type {self.lp.type}): {message}")

    def sub(self, name):
        """The layer's ``name`` submessage, or None when absent (or unknown to the dialect)."""
        lp = self.lp
        if name not in lp.DESCRIPTOR.fields_by_name or not lp.HasField(name):
            return None
        return getattr(lp, name)

    def param(self, name):
        """The ``name`` submessage with its defaults when absent."""
        lp = self.lp
        if name not in lp.DESCRIPTOR.fields_by_name:
            self.error(f"the {self.definition.dialect} dialect has no {name}")
        return getattr(lp, name)

    def common(self, param_lp=None):
        """name, dtype and param multipliers (from ``param_lp``, default the layer)."""
        lp = self.lp if param_lp is None else param_lp
        out = {"name": self.lp.name, "dtype": self.dtype}
        specs = []
        for spec in lp.param:
            if spec.name:
                other = self.param_names.setdefault(spec.name, self.lp.name)
                if other != self.lp.name:
                    self.error(f"param name '{spec.name}' is also used by layer '{other}': "
                               f"weight sharing between layers is not supported")
            specs.append({"lr_mult": float(spec.lr_mult), "decay_mult": float(spec.decay_mult)})
        if specs:
            out["param"] = specs
        return out


def _field(msg, name, default=None):
    return getattr(msg, name) if msg is not None and msg.HasField(name) else default


def filler(msg, default):
    """A FillerParameter -> convnet filler spec (``default`` when absent)."""
    if msg is None:
        return default
    kind = msg.type.lower()
    if kind == "constant":
        return {"type": "constant", "value": float(msg.value)}
    if kind == "gaussian":
        if msg.sparse not in (-1, 0):
            raise ConfigError(f"gaussian filler with sparse {msg.sparse} is not supported")
        return {"type": "gaussian", "mean": float(msg.mean), "std": float(msg.std)}
    if kind == "uniform":
        return {"type": "uniform", "min": float(msg.min), "max": float(msg.max)}
    if kind in ("xavier", "msra"):
        norm = msg.DESCRIPTOR.fields_by_name["variance_norm"].enum_type.values_by_number[
            msg.variance_norm].name
        return {"type": kind, "variance_norm": norm}
    if kind == "bilinear":
        return {"type": "bilinear"}
    raise ConfigError(f"filler type '{msg.type}' is not supported (convnet has constant, "
                      f"gaussian, uniform, xavier, msra, bilinear)")


def _filler(ctx, msg, param, default):
    try:
        return filler(msg, default)
    except ConfigError as exc:
        ctx.error(f"{param}: {exc}")


def _enum_name(msg, field):
    return msg.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number[
        getattr(msg, field)].name


def _spatial(ctx, p, base, default, repeated):
    """Caffe's (h, w) for kernel / stride / pad: ``<base>_h`` + ``<base>_w``, else ``<base>``
    or ``<base>_size`` (one value for both or, when repeated, one per axis)."""
    field = "kernel_size" if base == "kernel" else base
    has_h, has_w = p.HasField(f"{base}_h"), p.HasField(f"{base}_w")
    values = list(getattr(p, field)) if repeated else (
        [getattr(p, field)] if p.HasField(field) else [])
    if has_h or has_w:
        if not (has_h and has_w):
            ctx.error(f"{base}_h and {base}_w must be given together")
        if values:
            ctx.error(f"give either {field} or {base}_h and {base}_w, not both")
        return (int(getattr(p, f"{base}_h")), int(getattr(p, f"{base}_w")))
    if not values:
        if default is None:
            ctx.error(f"{field} (or {base}_h and {base}_w) is required")
        return default
    if len(values) == 1:
        return int(values[0])
    if len(values) == 2:
        return (int(values[0]), int(values[1]))
    ctx.error(f"{field} has {len(values)} values; convnet layers are 2-d (1 or 2 values)")


def _construct(ctx, type_name, *, optional=None, **kwargs):
    """``convnet.layers.<type_name>(**kwargs)``; ``optional`` kwargs are passed only where the
    class names them, and a non-default one it cannot take is an error."""
    cls = getattr(layers, type_name, None)
    if cls is None:
        ctx.error(f"this convnet has no layer {type_name} (convnet.layers.{type_name})")
    accepted = inspect.signature(cls.__init__).parameters
    for key, (value, default) in (optional or {}).items():
        if key in accepted:
            kwargs[key] = value
        elif value != default:
            ctx.error(f"convnet.layers.{type_name} takes no '{key}' (got {value!r})")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        ctx.error(f"convnet.layers.{type_name} does not take these parameters: {exc}")


# ---------------------------------------------------------------------- translators
@translator("Convolution", "Deconvolution")
def _convolution(lp, ctx):
    p = ctx.param("convolution_param")
    if p.axis != 1:
        ctx.error(f"convolution_param axis must be 1 (channels of NCHW blobs), got {p.axis}")
    if not p.HasField("num_output"):
        ctx.error("convolution_param num_output is required")
    dilation = list(p.dilation)
    if "hole" in p.DESCRIPTOR.fields_by_name and (p.HasField("hole") or p.HasField("hole_h")):
        # DeepLab v1's atrous convolution: hole = dilation
        if dilation:
            ctx.error("give either dilation or hole, not both")
        dilation = ([p.hole_h, p.hole_w] if p.HasField("hole_h") else [p.hole])
    if len(dilation) > 2:
        ctx.error(f"dilation has {len(dilation)} values; convnet layers are 2-d")
    cls = layers.Convolution if lp.type == "Convolution" else layers.Deconvolution
    return cls(num_output=int(p.num_output),
               kernel_size=_spatial(ctx, p, "kernel", None, True),
               stride=_spatial(ctx, p, "stride", 1, True),
               pad=_spatial(ctx, p, "pad", 0, True),
               dilation=int(dilation[0]) if len(dilation) == 1 else (
                   tuple(int(d) for d in dilation) if dilation else 1),
               group=int(p.group), bias_term=bool(p.bias_term),
               # Caffe's default filler is constant 0
               weight_filler=_filler(ctx, _field(p, "weight_filler"), "weight_filler", 0.0),
               bias_filler=_filler(ctx, _field(p, "bias_filler"), "bias_filler", 0.0),
               **ctx.common())


@translator("Pooling")
def _pooling(lp, ctx):
    p = ctx.param("pooling_param")
    pool = _enum_name(p, "pool")
    if pool == "STOCHASTIC":
        ctx.error("pool STOCHASTIC is not supported (convnet has MAX and AVE)")
    kwargs = dict(pool=pool, return_mask=len(lp.top) == 2, **ctx.common())
    if len(lp.top) == 2 and pool != "MAX":
        ctx.error(f"a second top (the mask) needs pool MAX, got {pool}")
    if p.HasField("round_mode"):
        kwargs["round_mode"] = _enum_name(p, "round_mode")
    if p.global_pooling:
        return layers.Pooling(global_pooling=True, **kwargs)
    return layers.Pooling(kernel_size=_spatial(ctx, p, "kernel", None, False),
                          stride=_spatial(ctx, p, "stride", 1, False),
                          pad=_spatial(ctx, p, "pad", 0, False), **kwargs)


@translator("Unpooling")
def _unpooling(lp, ctx):
    p = ctx.param("unpooling_param")
    if _enum_name(p, "unpool") != "MAX":
        ctx.error(f"unpool {_enum_name(p, 'unpool')} is not supported (convnet's Unpooling "
                  f"is max unpooling with the mask of a max Pooling)")
    if len(lp.bottom) != 2:
        ctx.error(f"needs two bottoms (the pooled blob and its mask), got {list(lp.bottom)}")
    out_size = None
    if p.HasField("unpool_size"):
        out_size = int(p.unpool_size)
    elif p.HasField("unpool_h") or p.HasField("unpool_w"):
        out_size = (int(p.unpool_h), int(p.unpool_w))
    return layers.Unpooling(kernel_size=_spatial(ctx, p, "kernel", None, False),
                            stride=_spatial(ctx, p, "stride", 1, False),
                            pad=_spatial(ctx, p, "pad", 0, False), out_size=out_size,
                            **ctx.common())


@translator("Upsample")
def _upsample(lp, ctx):
    p = ctx.param("upsample_param")
    if len(lp.bottom) != 2:
        ctx.error(f"needs two bottoms (the pooled blob and its pooling mask), got "
                  f"{list(lp.bottom)}")
    sh = int(p.scale_h) if p.HasField("scale_h") else int(p.scale)
    sw = int(p.scale_w) if p.HasField("scale_w") else int(p.scale)
    out_size = None
    if p.HasField("upsample_h") or p.HasField("upsample_w"):
        if not (p.HasField("upsample_h") and p.HasField("upsample_w")):
            ctx.error("upsample_h and upsample_w must be given together")
        out_size = (int(p.upsample_h), int(p.upsample_w))
    elif p.pad_out_h or p.pad_out_w:
        ctx.error("pad_out_h / pad_out_w are not supported; give upsample_h and upsample_w "
                  "(the size of the pooling layer's input)")
    return layers.Unpooling(kernel_size=(sh, sw), stride=(sh, sw), out_size=out_size,
                            **ctx.common())


@translator("Interp")
def _interp(lp, ctx):
    p = ctx.sub("interp_param")
    kwargs = {}
    if p is not None:
        for key in ("zoom_factor", "shrink_factor", "pad_beg", "pad_end"):
            if p.HasField(key):
                kwargs[key] = int(getattr(p, key))
        if p.HasField("height") or p.HasField("width"):
            kwargs["height"], kwargs["width"] = int(p.height), int(p.width)
    if len(lp.bottom) == 1 and not any(k in kwargs for k in ("zoom_factor", "shrink_factor",
                                                             "height")):
        ctx.error("interp_param needs zoom_factor, shrink_factor or height and width (or a "
                  "second bottom that gives the size)")
    return layers.Interp(**kwargs, **ctx.common())


@translator("Crop")
def _crop(lp, ctx):
    p = ctx.param("crop_param")
    offsets = [int(o) for o in p.offset]
    return layers.Crop(axis=int(p.axis), offset=offsets if offsets else 0, **ctx.common())


@translator("Concat")
def _concat(lp, ctx):
    p = ctx.param("concat_param")
    axis = p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim
    return layers.Concat(axis=int(axis), **ctx.common())


@translator("Eltwise")
def _eltwise(lp, ctx):
    p = ctx.param("eltwise_param")
    coeff = [float(c) for c in p.coeff] or None
    return layers.Eltwise(operation=_enum_name(p, "operation"), coeff=coeff, **ctx.common())


@translator("ReLU")
def _relu(lp, ctx):
    p = ctx.param("relu_param")
    return layers.ReLU(negative_slope=float(p.negative_slope), **ctx.common())


@translator("Dropout")
def _dropout(lp, ctx):
    p = ctx.param("dropout_param")
    if not p.scale_train:
        ctx.error("dropout_param scale_train: false is not supported (convnet scales at "
                  "train time, Caffe's default)")
    if "sample_weights_test" in p.DESCRIPTOR.fields_by_name and p.sample_weights_test:
        _note(ctx, f"layer '{lp.name}': sample_weights_test (Monte Carlo dropout at test "
                   f"time) is not supported; Dropout is the identity in the TEST phase")
    return layers.Dropout(dropout_ratio=float(p.dropout_ratio), **ctx.common())


def _scale_fold(ctx, kwargs):
    """BatchNorm kwargs for the Scale layer folded into it (if any)."""
    scale = ctx.fold.get(ctx.k)
    if scale is None:
        kwargs["affine"] = False
        return kwargs
    sp = scale.scale_param if scale.HasField("scale_param") else None
    if sp is not None and (sp.axis != 1 or sp.num_axes != 1):
        ctx.error(f"the Scale layer '{scale.name}' after it has axis {sp.axis}, num_axes "
                  f"{sp.num_axes}; only a per-channel Scale (axis 1, num_axes 1) folds into "
                  f"BatchNorm")
    bias = bool(sp.bias_term) if sp is not None else False
    kwargs["affine"] = True
    kwargs["scale_filler"] = _filler(ctx, _field(sp, "filler"), "scale filler", 1.0)
    kwargs["bias_filler"] = _filler(ctx, _field(sp, "bias_filler"), "bias_filler", 0.0)
    specs = ctx.common(scale).get("param", [])
    if not bias:
        # no bias in Caffe: BatchNorm's shift stays 0
        specs = (specs + [{"lr_mult": 1.0, "decay_mult": 1.0}])[:1] + [
            {"lr_mult": 0.0, "decay_mult": 0.0}]
    if specs:
        kwargs["param"] = specs
    ctx.info.folded[ctx.lp.name] = scale.name
    ctx.info.scale_bias[ctx.lp.name] = bias
    return kwargs


@translator("BatchNorm")
def _batch_norm(lp, ctx):
    p = ctx.param("batch_norm_param")
    kwargs = dict(eps=float(p.eps), moving_average_fraction=float(p.moving_average_fraction),
                  use_global_stats=bool(p.use_global_stats) if p.HasField("use_global_stats")
                  else None, name=lp.name, dtype=ctx.dtype)
    return layers.BatchNorm(**_scale_fold(ctx, kwargs))


@translator("BN")
def _bn(lp, ctx):
    # DeconvNet's and SegNet's BN: y = scale * (x - mean) / sqrt(var + eps) + shift; in
    # INFERENCE mode the statistics are the stored ones (mean 0, var 1 when the released
    # model folded them into scale and shift)
    p = ctx.sub("bn_param")
    mode = _enum_name(p, "bn_mode") if p is not None else "LEARN"
    eps = float(p.var_eps) if p is not None and "var_eps" in p.DESCRIPTOR.fields_by_name \
        else 1e-9
    return layers.BatchNorm(
        eps=eps, use_global_stats=True if mode == "INFERENCE" else None, affine=True,
        scale_filler=_filler(ctx, _field(p, "scale_filler"), "scale_filler", 1.0),
        bias_filler=_filler(ctx, _field(p, "shift_filler"), "shift_filler", 0.0),
        **ctx.common())


@translator("Scale")
def _scale(lp, ctx):
    p = ctx.param("scale_param")
    return _construct(ctx, "Scale", axis=int(p.axis), num_axes=int(p.num_axes),
                      bias_term=bool(p.bias_term),
                      optional={"filler": (_filler(ctx, _field(p, "filler"), "filler", 1.0),
                                           {"type": "constant", "value": 1.0}),
                                "bias_filler": (_filler(ctx, _field(p, "bias_filler"),
                                                        "bias_filler", 0.0),
                                                {"type": "constant", "value": 0.0})},
                      **ctx.common())


@translator("SoftmaxWithLoss")
def _softmax_loss(lp, ctx):
    p = ctx.param("loss_param")
    kwargs = {}
    if p.HasField("ignore_label"):
        kwargs["ignore_label"] = int(p.ignore_label)
    if p.HasField("normalization"):
        kwargs["normalization"] = _enum_name(p, "normalization")
    elif p.HasField("normalize"):
        kwargs["normalization"] = "VALID" if p.normalize else "BATCH_SIZE"
    if "class_weighting" in p.DESCRIPTOR.fields_by_name and (
            p.weight_by_label_freqs or len(p.class_weighting)):
        _note(ctx, f"layer '{lp.name}': class_weighting / weight_by_label_freqs are not "
                   f"supported; the loss is unweighted")
    axis = ctx.param("softmax_param").axis
    return layers.SoftmaxWithLoss(axis=int(axis), **_loss_kwargs(ctx), **kwargs)


def _loss_kwargs(ctx):
    out = {"name": ctx.lp.name, "dtype": ctx.dtype}
    if ctx.lp.loss_weight:
        out["loss_weight"] = float(ctx.lp.loss_weight[0])
    return out


@translator("EuclideanLoss")
def _euclidean(lp, ctx):
    return layers.EuclideanLoss(**_loss_kwargs(ctx))


@translator("Softmax")
def _softmax(lp, ctx):
    return _construct(ctx, "Softmax", axis=int(ctx.param("softmax_param").axis),
                      **ctx.common())


@translator("Split")
def _split(lp, ctx):
    return _construct(ctx, "Split", optional={"num_tops": (len(lp.top), None)},
                      **ctx.common())


@translator("Silence")
def _silence(lp, ctx):
    return layers.Silence(**ctx.common())


@translator("Flatten")
def _flatten(lp, ctx):
    p = ctx.param("flatten_param")
    return layers.Flatten(axis=int(p.axis), end_axis=int(p.end_axis), **ctx.common())


@translator("Reshape")
def _reshape(lp, ctx):
    p = ctx.param("reshape_param")
    return _construct(ctx, "Reshape", shape=[int(d) for d in p.shape.dim], axis=int(p.axis),
                      num_axes=int(p.num_axes), **ctx.common())


@translator("InnerProduct")
def _inner_product(lp, ctx):
    p = ctx.param("inner_product_param")
    return _construct(
        ctx, "InnerProduct", num_output=int(p.num_output), axis=int(p.axis),
        transpose=bool(p.transpose),
        optional={"bias_term": (bool(p.bias_term), True),
                  "weight_filler": (_filler(ctx, _field(p, "weight_filler"), "weight_filler",
                                            0.0), None),
                  "bias_filler": (_filler(ctx, _field(p, "bias_filler"), "bias_filler", 0.0),
                                  None)},
        **ctx.common())


@translator("Sigmoid", "TanH")
def _pointwise(lp, ctx):
    return _construct(ctx, lp.type, **ctx.common())


@translator("Slice")
def _slice(lp, ctx):
    p = ctx.param("slice_param")
    axis = p.axis if p.HasField("axis") or not p.HasField("slice_dim") else p.slice_dim
    return _construct(ctx, "Slice", axis=int(axis),
                      optional={"slice_point": ([int(s) for s in p.slice_point], [])},
                      **ctx.common())


@translator("Embed")
def _embed(lp, ctx):
    p = ctx.param("embed_param")
    return _construct(
        ctx, "Embed", num_output=int(p.num_output), input_dim=int(p.input_dim),
        optional={"bias_term": (bool(p.bias_term), True),
                  "weight_filler": (_filler(ctx, _field(p, "weight_filler"), "weight_filler",
                                            0.0), None),
                  "bias_filler": (_filler(ctx, _field(p, "bias_filler"), "bias_filler", 0.0),
                                  None)},
        **ctx.common())


# ---------------------------------------------------------------------- data layers
def _data_record(lp, ctx):
    """A dataset layer: its tops, and what the file says about their shapes."""
    rec = {"name": lp.name, "type": lp.type, "tops": list(lp.top)}
    for field in ("data_param", "image_data_param", "dense_image_data_param",
                  "hdf5_data_param", "memory_data_param", "window_data_param",
                  "python_param", "mat_read_param"):
        p = ctx.sub(field)
        if p is None:
            continue
        for f, value in p.ListFields():
            if not f.is_repeated and f.message_type is None:
                rec[f.name] = value
    t = ctx.sub("transform_param")
    if t is not None:
        rec["crop_size"] = int(t.crop_size)
        rec["mean_value"] = [float(v) for v in t.mean_value]
        rec["scale"] = float(t.scale)
        rec["mirror"] = bool(t.mirror)
    shapes = {}
    if lp.type == "MemoryData":
        b, c, h, w = (int(rec.get(k, 0)) for k in ("batch_size", "channels", "height", "width"))
        shapes = {lp.top[0]: (b, c, h, w)}
        if len(lp.top) > 1:
            shapes[lp.top[1]] = (b, 1, 1, 1)
    elif lp.type == "DummyData":
        p = ctx.param("dummy_data_param")
        if p.shape:
            dims = [tuple(int(d) for d in s.dim) for s in p.shape]
        else:
            dims = [tuple(int(x) for x in v) for v in zip(p.num, p.channels, p.height, p.width)]
        if len(dims) == 1:
            dims = dims * len(lp.top)
        shapes = dict(zip(lp.top, dims))
    elif rec.get("crop_size") or rec.get("crop_height"):
        h = int(rec.get("crop_height") or rec["crop_size"])
        w = int(rec.get("crop_width") or rec["crop_size"])
        b = int(rec.get("batch_size", 1))
        channels = 3 if rec.get("is_color", True) else 1
        shapes = {lp.top[0]: (b, channels, h, w)}
        if len(lp.top) > 1:
            shapes[lp.top[1]] = (b, 1, h, w)
        if lp.type == "ImageSegData" and len(lp.top) > 2:
            shapes[lp.top[2]] = (b, 1, 1, 2)        # DeepLab's data_dim: each image's H, W
    return rec, shapes


def _input_shapes(lp, ctx):
    p = ctx.sub("input_param")
    if p is None or not p.shape:
        return {}
    shapes = [tuple(int(d) for d in s.dim) for s in p.shape]
    if len(shapes) == 1:
        shapes = shapes * len(lp.top)
    if len(shapes) != len(lp.top):
        ctx.error(f"input_param has {len(shapes)} shapes for {len(lp.top)} tops "
                  f"(one shape, or one per top)")
    return dict(zip(lp.top, shapes))


# ---------------------------------------------------------------------- rules
def _meets(rule, phase, level, stages):
    """Caffe's StateMeetsRule."""
    if rule.HasField("phase") and _enum_name(rule, "phase") != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def _included(lp, phase, level, stages):
    if lp.include:
        return any(_meets(r, phase, level, stages) for r in lp.include)
    return not any(_meets(r, phase, level, stages) for r in lp.exclude)


def _find_folds(selected):
    """BatchNorm index -> the Scale LayerParameter that folds into it, for every BatchNorm
    whose top is first read by a Scale layer (in place, or the Scale being its only reader);
    returns (folds, indices of the folded Scale layers)."""
    folds, skip = {}, set()
    for i, lp in enumerate(selected):
        if lp.type != "BatchNorm" or len(lp.top) != 1:
            continue
        top = lp.top[0]
        readers = []
        for j in range(i + 1, len(selected)):
            if top in selected[j].bottom:
                readers.append(j)
            if j > i and top in selected[j].top and top not in selected[j].bottom:
                break
            if readers and top in selected[readers[0]].top:
                break
        if not readers or selected[readers[0]].type != "Scale":
            continue
        j = readers[0]
        scale = selected[j]
        if len(scale.bottom) != 1 or len(scale.top) != 1:
            continue
        in_place = scale.top[0] == top
        if not in_place and len(readers) > 1:
            continue
        folds[i] = scale
        skip.add(j)
    return folds, skip


# ---------------------------------------------------------------------- build
def build_net(definition, phase="TEST", level=0, stages=(), dtype=None, name=None,
              input_shapes=None):
    """A convnet Net from a NetDefinition (see :func:`convnet.caffe.load_net`)."""
    import numpy as np
    from convnet.net import Net

    phase = str(phase).upper()
    if phase not in ("TRAIN", "TEST"):
        raise ConfigError(f"{definition.source}: phase must be 'TRAIN' or 'TEST', got {phase!r}")
    msg = definition.message
    info = CaffeInfo(definition.dialect, definition.source, phase, definition.upgraded)
    ctx = _Context(definition, info, np.dtype(np.float32 if dtype is None else dtype))
    state = msg.state if msg.HasField("state") else None
    if state is not None:
        level = level or state.level
        stages = tuple(stages) + tuple(state.stage)
    selected, where = [], []
    for i, lp in enumerate(msg.layer):
        if _included(lp, phase, level, stages):
            selected.append(lp)
            where.append(i)
    ctx.fold, folded_scales = _find_folds(selected)
    net = Net(name or msg.name or "net", force_backward=bool(msg.force_backward))
    net.caffe = info
    specs = []
    for k, lp in enumerate(selected):
        ctx.index, ctx.lp, ctx.k = where[k], lp, k
        if k in folded_scales:
            info.caffe_types[lp.name] = "Scale"
            continue
        layer = _translate(lp, ctx, k)
        if layer is None:
            continue
        specs.append((layer, list(lp.bottom), _tops(lp, k, selected, folded_scales), ctx.index,
                      lp))
    _wire(net, specs, definition, info)
    index_of = {lp.name: index for _, _, _, index, lp in specs}
    net.train(phase == "TRAIN")
    for key, shape in (input_shapes or {}).items():
        if key not in net.inputs:
            raise ConfigError(f"{definition.source}: input_shapes names '{key}', which is not "
                              f"an input of the net (its inputs: {', '.join(net.inputs)})")
        info.input_shapes[key] = tuple(int(d) for d in shape)
    shapes = {k: v for k, v in info.input_shapes.items() if k in net.inputs}
    if net.layers and shapes and set(shapes) == set(net.inputs):
        try:
            net.setup(**shapes)
        except ConvnetError as exc:
            failed = getattr(net, "setup_failed_layer", None)
            where = definition.source
            if failed in index_of:
                where = definition.where(index_of[failed])
            raise type(exc)(f"{where}: setting the net up from its input shapes {shapes}: "
                            f"{exc}") from None
    return net


def _tops(lp, k, selected, folded_scales):
    """A BatchNorm with a folded, not-in-place Scale writes the Scale's top."""
    if lp.type == "BatchNorm":
        for j in sorted(folded_scales):
            if j > k and selected[j].bottom[0] == lp.top[0]:
                return list(selected[j].top)
    return list(lp.top)


def _translate(lp, ctx, k):
    info = ctx.info
    kind = lp.type
    if kind == "Input":
        info.input_shapes.update(_input_shapes(lp, ctx))
        info.inputs.extend(t for t in lp.top if t not in info.inputs)
        return None
    if kind in DATA_LAYERS:
        if lp.bottom:
            ctx.error(f"a {kind} layer with bottoms {list(lp.bottom)} is not supported "
                      f"(convnet reads {kind} layers as net inputs)")
        rec, shapes = _data_record(lp, ctx)
        info.data_layers.append(rec)
        info.inputs.extend(t for t in lp.top if t not in info.inputs)
        info.input_shapes.update(shapes)
        _note(ctx, f"{kind} layer '{lp.name}' reads a dataset: its tops "
                   f"{list(lp.top)} become net inputs")
        return None
    if kind in OUTPUT_LAYERS:
        info.left_out.append((lp.name, kind, "writes files or reports a metric"))
        _note(ctx, f"{kind} layer '{lp.name}' only writes files or reports a metric: left out")
        return None
    fn = TRANSLATORS.get(kind)
    if fn is None:
        ctx.error(f"layer type '{kind}' is not supported; supported types: "
                  f"{', '.join(supported_types())}")
    if lp.loss_weight and not kind.endswith("Loss") and any(w != 0 for w in lp.loss_weight):
        ctx.error(f"loss_weight {list(lp.loss_weight)} on a layer that is not a loss is not "
                  f"supported")
    try:
        layer = fn(lp, ctx)
    except ConvnetError as exc:
        if str(exc).startswith(ctx.where):
            raise
        raise type(exc)(f"{ctx.where}: layer '{lp.name}' (type {kind}): {exc}") from None
    info.caffe_types[lp.name] = kind
    if lp.propagate_down:
        if len(lp.propagate_down) != len(lp.bottom):
            ctx.error(f"propagate_down has {len(lp.propagate_down)} values for "
                      f"{len(lp.bottom)} bottoms (one per bottom)")
        layer.nondiff_bottoms = tuple(sorted(set(layer.nondiff_bottoms) | {
            i for i, f in enumerate(lp.propagate_down) if not f}))
    return layer


def _note(ctx, text):
    warnings.warn(f"{ctx.where}: {text}", CaffeLoadNote, stacklevel=5)


def _wire(net, specs, definition, info):
    """Net.add each layer with Caffe's blob names, renaming in-place writes the Net cannot
    run in place (see the module docstring)."""
    alias = {}
    readers = {}
    known = set(info.inputs)
    for layer, bottoms, tops, index, lp in specs:
        for b in bottoms:
            if b not in known:
                close = difflib.get_close_matches(b, sorted(known), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"{definition.where(index)}: layer '{lp.name}' (type "
                                  f"{lp.type}): unknown bottom blob '{b}'{hint}: no earlier "
                                  f"layer of this phase writes it and no Input or data layer "
                                  f"declares it")
        known.update(tops)
        actual_bottoms = [alias.get(b, b) for b in bottoms]
        actual_tops = []
        for j, t in enumerate(tops):
            current = alias.get(t, t)
            if j < len(bottoms) and bottoms[j] == t:
                if hasattr(layer, "in_place") and readers.get(current, 0) == 0:
                    actual_tops.append(current)
                    continue
                new = f"{t}/{layer.name}"
                alias[t] = new
                info.aliases[new] = t
                actual_tops.append(new)
            else:
                alias.pop(t, None)
                actual_tops.append(t)
        for b in actual_bottoms:
            readers[b] = readers.get(b, 0) + 1
        for t in actual_tops:
            readers[t] = 0
        try:
            net.add(layer, bottom=actual_bottoms, top=actual_tops)
        except ConvnetError as exc:
            raise type(exc)(f"{definition.where(index)}: layer '{lp.name}' (type {lp.type}): "
                            f"{exc}") from None
    if not net.layers:
        raise FileFormatError(f"{definition.source}: no layer of the net is included in this "
                              f"phase (or every layer is a data or output layer)")

