"""The segmentation model zoo used by the scripts (``--model``), one builder each:

- :func:`deconvnet`: a small DeconvNet-style encoder-decoder (Noh et al. 2015): stages of
  Convolution + BatchNorm + ReLU separated by max Pooling that records its argmax masks, then
  Unpooling with those masks (which puts every activation back where its maximum came from,
  so boundaries stay sharp without skip connections) followed by Convolution + BatchNorm +
  ReLU, and a 1x1 Convolution to per-class scores.
- :func:`fcn8s`: FCN-8s (Long et al. 2015) on a small VGG-style encoder: class scores at 1/32,
  1/16 and 1/8 of the input fused by bilinear-initialised Deconvolution (x2, x2) + Crop +
  Eltwise SUM, then a x8 bilinear Deconvolution and a Crop back to the input.
- :func:`deeplab`: DeepLab v2 style (Chen et al. 2016): an encoder of output stride 4 whose
  last stage uses dilated convolutions instead of pooling, ASPP (parallel 3x3 class-score
  convolutions at several dilations, summed by Eltwise SUM) and Interp back to the input.
- :func:`segnet`: SegNet (Badrinarayanan et al. 2015): VGG-style encoder blocks (2, 2, 3
  convolutions), each pooling keeping its indices; a mirrored decoder that unpools with them
  and runs as many convolutions per block; a 1x1 score.

Every builder returns a :class:`SegmentationNet` (its input sides must be multiples of
``net.multiple``) with blobs ``data`` -> ``score`` (N, num_classes, H, W) and, with
``loss=True``, ``label`` -> ``loss`` (SoftmaxWithLoss, VALID normalisation, ignore 255).
:func:`build` picks a builder by name; :func:`from_weights` rebuilds a model from the file
:meth:`Net.save` wrote (the net's name says which model it is).
"""

import numpy as np

from convnet.errors import ConfigError, ConvnetError, FileFormatError, ShapeError
from convnet.net import Net


class SegmentationNet(Net):
    """A :class:`Net` whose input H and W must be multiples of ``multiple`` (``2**levels`` for
    ``levels`` poolings): each Unpooling or x2 Deconvolution restores exactly twice its input,
    so any other size would fail deep inside the decoder."""

    def __init__(self, name, levels, keep_diffs=True, multiple=None, config=None):
        super().__init__(name, keep_diffs=keep_diffs)
        self.levels = levels
        self.multiple = 2 ** levels if multiple is None else int(multiple)
        #: the builder's arguments (width, levels, ...), as :func:`from_weights` needs them
        self.config = dict(config or {})

    def _check_data_shape(self, shape):
        multiple = self.multiple
        if shape is None or len(shape) != 4:
            return
        h, w = int(shape[2]), int(shape[3])
        if h % multiple or w % multiple:
            raise ShapeError(f"{self.name}: input data {h}x{w} must have a height and width "
                             f"divisible by {multiple} (2**levels, levels={self.levels}); "
                             f"pad or crop the images to a multiple of {multiple}")

    def setup(self, **input_shapes):
        self._check_data_shape(input_shapes.get("data"))
        return super().setup(**input_shapes)

    def forward(self, **inputs):
        data = inputs.get("data")
        self._check_data_shape(getattr(data, "shape", None))
        return super().forward(**inputs)


#: today's name of the deconvnet's class
DeconvNet = SegmentationNet


def _int(value, name, minimum, model="deconvnet"):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{model}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _uniform(fan_in):
    """PyTorch's default init, uniform in +-1/sqrt(fan_in) (see :func:`deconvnet`)."""
    bound = 1.0 / np.sqrt(fan_in)
    return dict(type="uniform", min=-bound, max=bound)


class _Builder:
    """Conv-BN-ReLU blocks on a net, tracking each blob's channels."""

    def __init__(self, net, dtype, bn_fraction):
        self.net, self.dtype, self.bn_fraction = net, dtype, bn_fraction
        self.channels = {"data": 3}

    def cbr(self, name, bottom, channels, dilation=1):
        from convnet.layers import BatchNorm, Convolution, ReLU
        net, dtype = self.net, self.dtype
        net.add(Convolution(num_output=channels, kernel_size=3, pad=dilation, dilation=dilation,
                            bias_term=False, weight_filler=_uniform(9 * self.channels[bottom]),
                            name=name, dtype=dtype), bottom=[bottom], top=[name])
        bn = name + "_bn"
        net.add(BatchNorm(moving_average_fraction=self.bn_fraction, name=bn, dtype=dtype),
                bottom=[name], top=[bn])
        net.add(ReLU(name=name + "_relu", dtype=dtype), bottom=[bn], top=[bn])
        self.channels[bn] = channels
        return bn

    def pool(self, name, bottom, mask=False):
        from convnet.layers import Pooling
        tops = [name, name + "_mask"] if mask else [name]
        self.net.add(Pooling(kernel_size=2, stride=2, pool="MAX", return_mask=mask, name=name,
                             dtype=self.dtype), bottom=[bottom], top=tops)
        self.channels[name] = self.channels[bottom]
        return name

    def score(self, name, bottom, num_classes, kernel_size=1, dilation=1):
        from convnet.layers import Convolution
        fan = kernel_size * kernel_size * self.channels[bottom]
        self.net.add(Convolution(num_output=num_classes, kernel_size=kernel_size,
                                 dilation=dilation, pad=dilation * (kernel_size // 2),
                                 name=name, dtype=self.dtype, weight_filler=_uniform(fan),
                                 bias_filler=_uniform(fan)), bottom=[bottom], top=[name])
        self.channels[name] = num_classes
        return name

    def loss(self, bottom, ignore_label):
        from convnet.layers import SoftmaxWithLoss
        self.net.add(SoftmaxWithLoss(ignore_label=ignore_label, name="loss", dtype=self.dtype),
                     bottom=[bottom, "label"], top=["loss"])


def deconvnet(num_classes, width=16, levels=3, dtype=np.float32, loss=True,
              ignore_label=255, bn_fraction=0.9, keep_diffs=True):
    """A DeconvNet-style segmentation :class:`~convnet.Net`.

    Blobs: input ``data`` (N, 3, H, W) with H and W divisible by 2**levels (the Unpooling
    layers restore twice their input size), ``label`` (N, H, W) when ``loss=True``; ``score`` (N, num_classes, H, W) and the ``loss`` top.

    Encoder stage i (0-based, width w_i = width * 2**min(i, 2)): Convolution 3x3 pad 1 (no
    bias: BatchNorm's shift replaces it) -> BatchNorm -> ReLU (in place), two of them in the
    first stage, then Pooling MAX 2x2 stride 2 with ``return_mask=True``. A bottleneck
    Conv-BN-ReLU at the coarsest scale (BatchNorm writes a new blob ``<conv>_bn``, ReLU runs
    in place on it). Decoder: for each stage in reverse, Unpooling with that
    stage's mask and input size, Conv-BN-ReLU to the previous stage's width; then a 1x1
    Convolution ``score`` and SoftmaxWithLoss (``ignore_label``, VALID normalisation).

    ``bn_fraction`` is BatchNorm's ``moving_average_fraction`` (0.9: short training runs).
    ``keep_diffs=False`` frees each blob's diff once backward has used it (see :class:`Net`).
    Weights start as PyTorch's default, uniform in +-1/sqrt(fan_in) (the score layer's bias
    too): under BatchNorm a convolution's output does not depend on its weights' scale, but an
    Adam step's size relative to the weights does, so this matches the training dynamics of
    the same network written in PyTorch (msra's scale is sqrt(6) times larger).

    >>> net = deconvnet(5, width=8)
    >>> out = net.forward(data=x, label=y)      # {"loss": ...}; net.blobs["score"]
    """
    from convnet.layers import Unpooling
    num_classes = _int(num_classes, "num_classes", 2)
    width = _int(width, "width", 1)
    levels = _int(levels, "levels", 1)
    net = SegmentationNet("deconvnet", levels, keep_diffs=keep_diffs,
                          config=dict(width=width, levels=levels))
    b = _Builder(net, dtype, bn_fraction)
    widths = [width * 2 ** min(i, 2) for i in range(levels)]
    x = b.cbr("conv1_1", "data", widths[0])
    x = b.cbr("conv1_2", x, widths[0])
    for i in range(levels):
        pool = b.pool(f"pool{i + 1}", x, mask=True)
        last = i == levels - 1
        x = b.cbr("center" if last else f"conv{i + 2}", pool, widths[i if last else i + 1])
    for i in reversed(range(levels)):
        unpool = f"unpool{i + 1}"
        net.add(Unpooling(kernel_size=2, stride=2, name=unpool, dtype=dtype),
                bottom=[x, f"pool{i + 1}_mask"], top=[unpool])
        b.channels[unpool] = b.channels[x]
        x = b.cbr(f"deconv{i + 1}", unpool, widths[max(i - 1, 0)])
    b.score("score", x, num_classes)
    if loss:
        b.loss("score", ignore_label)
    return net


def _upsample(b, name, bottom, factor, num_classes):
    """A Deconvolution that upsamples class scores by ``factor`` (kernel 2 factor, stride
    factor, pad factor / 2: exactly factor x the input), bilinear-initialised and learnable,
    one group per class as FCN's upscore layers."""
    from convnet.layers import Deconvolution
    b.net.add(Deconvolution(num_classes, 2 * factor, stride=factor, pad=factor // 2,
                            group=num_classes, bias_term=False, weight_filler="bilinear",
                            name=name, dtype=b.dtype), bottom=[bottom], top=[name])
    b.channels[name] = num_classes
    return name


def fcn8s(num_classes, width=16, dtype=np.float32, loss=True, ignore_label=255,
          bn_fraction=0.9, keep_diffs=True):
    """FCN-8s on a small VGG-style encoder (input sides multiples of 32).

    Encoder: five stages of Conv-BN-ReLU (two in each of the first two stages, then three;
    widths w, 2w, 4w, 4w, 4w) each followed by 2x2 max Pooling (pool1 ... pool5 at 1/2 ...
    1/32), then ``fc6`` / ``fc7`` (3x3 and 1x1 at 1/32, width 8w, as FCN's convolutionalised
    fully connected layers). Scores: ``score_fr`` (1/32), ``score_pool4`` (1/16),
    ``score_pool3`` (1/8), 1x1 convolutions. Fusion as FCN-8s: ``upscore2`` (Deconvolution x2,
    bilinear-initialised) -> Crop to score_pool4 -> Eltwise SUM ``fuse_pool4`` -> ``upscore_pool4``
    (x2) -> Crop -> SUM ``fuse_pool3`` -> ``upscore8`` (x8) -> Crop to ``data`` -> ``score``.
    BatchNorm after every convolution of the encoder lets it train from scratch in a few
    thousand iterations (FCN fine-tuned ImageNet VGG16 instead).
    """
    from convnet.layers import BatchNorm, Convolution, Crop, Eltwise, ReLU
    num_classes = _int(num_classes, "num_classes", 2, "fcn8s")
    width = _int(width, "width", 1, "fcn8s")
    net = SegmentationNet("fcn8s", 5, keep_diffs=keep_diffs, config=dict(width=width))
    b = _Builder(net, dtype, bn_fraction)
    x = "data"
    widths = [width, 2 * width, 4 * width, 4 * width, 4 * width]
    for stage, (w, n) in enumerate(zip(widths, (2, 2, 3, 3, 3)), 1):
        for k in range(1, n + 1):
            x = b.cbr(f"conv{stage}_{k}", x, w)
        x = b.pool(f"pool{stage}", x)
    x = b.cbr("fc6", x, 8 * width)
    net.add(Convolution(num_output=8 * width, kernel_size=1, bias_term=False, name="fc7",
                        weight_filler=_uniform(8 * width), dtype=dtype), bottom=[x],
            top=["fc7"])
    net.add(BatchNorm(moving_average_fraction=bn_fraction, name="fc7_bn", dtype=dtype),
            bottom=["fc7"], top=["fc7_bn"])
    net.add(ReLU(name="fc7_relu", dtype=dtype), bottom=["fc7_bn"], top=["fc7_bn"])
    b.channels["fc7_bn"] = 8 * width
    b.score("score_fr", "fc7_bn", num_classes)
    b.score("score_pool4", "pool4", num_classes)
    b.score("score_pool3", "pool3", num_classes)

    def fuse(up, skip, name):
        net.add(Crop(axis=2, offset=0, name=up + "_crop", dtype=dtype), bottom=[up, skip],
                top=[up + "_crop"])
        net.add(Eltwise(operation="SUM", name=name, dtype=dtype),
                bottom=[up + "_crop", skip], top=[name])
        b.channels[name] = num_classes
        return name

    x = fuse(_upsample(b, "upscore2", "score_fr", 2, num_classes), "score_pool4", "fuse_pool4")
    x = fuse(_upsample(b, "upscore_pool4", x, 2, num_classes), "score_pool3", "fuse_pool3")
    x = _upsample(b, "upscore8", x, 8, num_classes)
    net.add(Crop(axis=2, offset=0, name="score", dtype=dtype), bottom=[x, "data"],
            top=["score"])
    if loss:
        b.loss("score", ignore_label)
    return net


def deeplab(num_classes, width=16, rates=(1, 2, 4, 6), dtype=np.float32, loss=True,
            ignore_label=255, bn_fraction=0.9, keep_diffs=True):
    """DeepLab v2 style with ASPP (input sides multiples of 4).

    Encoder: stage 1 (two Conv-BN-ReLU, width w) -> pool1 (1/2) -> stage 2 (two, 2w) -> pool2
    (1/4), then two dilated stages at 1/4 instead of further pooling (DeepLab's atrous
    convolution keeps the resolution): ``conv3_*`` (dilation 2, 4w) and ``conv4_*``
    (dilation 4, 4w). ASPP: one 3x3 class-score convolution per rate in ``rates`` (dilation =
    rate; DeepLab-LargeFOV's 6, 12, 18, 24 scaled to small inputs), summed by Eltwise SUM
    ``aspp``; ``score`` is an Interp of it to the input's size (bilinear, align corners, as
    DeepLab's Interp layer; a second bottom ``data`` gives the size).
    """
    from convnet.layers import Eltwise, Interp
    num_classes = _int(num_classes, "num_classes", 2, "deeplab")
    width = _int(width, "width", 1, "deeplab")
    rates = tuple(_int(r, "rates", 1, "deeplab") for r in rates)
    net = SegmentationNet("deeplab", 2, keep_diffs=keep_diffs,
                          config=dict(width=width, rates=list(rates)))
    b = _Builder(net, dtype, bn_fraction)
    x = b.cbr("conv1_1", "data", width)
    x = b.cbr("conv1_2", x, width)
    x = b.pool("pool1", x)
    x = b.cbr("conv2_1", x, 2 * width)
    x = b.cbr("conv2_2", x, 2 * width)
    x = b.pool("pool2", x)
    for stage, dilation in ((3, 2), (4, 4)):
        for k in (1, 2):
            x = b.cbr(f"conv{stage}_{k}", x, 4 * width, dilation=dilation)
    branches = [b.score(f"aspp_r{r}", x, num_classes, kernel_size=3, dilation=r)
                for r in rates]
    net.add(Eltwise(operation="SUM", name="aspp", dtype=dtype), bottom=branches, top=["aspp"])
    net.add(Interp(name="score", dtype=dtype), bottom=["aspp", "data"], top=["score"])
    if loss:
        b.loss("score", ignore_label)
    return net


def segnet(num_classes, width=16, levels=3, dtype=np.float32, loss=True, ignore_label=255,
           bn_fraction=0.9, keep_diffs=True):
    """SegNet (input sides multiples of 2**levels).

    Encoder block i (widths w * 2**min(i, 2)): 2, 2, 3, 3, ... Conv-BN-ReLU (VGG16's layout),
    then 2x2 max Pooling keeping its indices. Decoder block i, mirrored: Unpooling with
    block i's indices, then as many Conv-BN-ReLU as the encoder block had, the last one going
    to the width of block i - 1 (SegNet's decoder is the encoder's mirror image, with no
    bottleneck layer between them, unlike :func:`deconvnet`); a 1x1 ``score``.
    """
    from convnet.layers import Unpooling
    num_classes = _int(num_classes, "num_classes", 2, "segnet")
    width = _int(width, "width", 1, "segnet")
    levels = _int(levels, "levels", 1, "segnet")
    net = SegmentationNet("segnet", levels, keep_diffs=keep_diffs,
                          config=dict(width=width, levels=levels))
    b = _Builder(net, dtype, bn_fraction)
    widths = [width * 2 ** min(i, 2) for i in range(levels)]
    depth = [2 if i < 2 else 3 for i in range(levels)]
    x = "data"
    for i in range(levels):
        for k in range(1, depth[i] + 1):
            x = b.cbr(f"conv{i + 1}_{k}", x, widths[i])
        x = b.pool(f"pool{i + 1}", x, mask=True)
    for i in reversed(range(levels)):
        unpool = f"unpool{i + 1}"
        net.add(Unpooling(kernel_size=2, stride=2, name=unpool, dtype=dtype),
                bottom=[x, f"pool{i + 1}_mask"], top=[unpool])
        b.channels[unpool] = b.channels[x]
        x = unpool
        for k in range(depth[i], 0, -1):
            out = widths[max(i - 1, 0)] if k == 1 else widths[i]
            x = b.cbr(f"conv{i + 1}_{k}_D", x, out)
    b.score("score", x, num_classes)
    if loss:
        b.loss("score", ignore_label)
    return net


#: ``--model`` name -> builder
MODELS = {"deconvnet": deconvnet, "fcn8s": fcn8s, "deeplab": deeplab, "segnet": segnet}


def build(name, num_classes, **kwargs):
    """The zoo model ``name`` (see :data:`MODELS`) built with ``kwargs``."""
    if name not in MODELS:
        raise ConfigError(f"models: unknown model {name!r}; choose one of "
                          f"{', '.join(MODELS)}")
    return MODELS[name](num_classes, **kwargs)


def _leading_dim(arrays, key, path, model):
    """The first dimension of the 4-d array ``key`` of a weights file (KeyError if absent)."""
    shape = arrays[key].shape
    if len(shape) != 4:
        raise FileFormatError(f"{path}: not the weights of a {model} ('{key}' has shape "
                              f"{'x'.join(map(str, shape)) or '()'}, expected 4-d)")
    return int(shape[0])


def from_weights(path, data_shape=None, dtype=np.float32, loss=False, ignore_label=255):
    """Rebuild the zoo model whose weights :meth:`Net.save` wrote to ``path`` (the model from
    the net's recorded name, num_classes and width from the param shapes, levels / rates
    from the param names), set it up for inputs of ``data_shape`` (N, 3, H, W) (default: the
    shape it was saved with), load the weights and switch to the test phase. Returns
    ``(net, num_classes)``. A solver snapshot or another file is a FileFormatError saying
    which file to give."""
    from convnet.net import META_KEY, parse_json
    from convnet.snapshot import SNAPSHOT_FORMAT, read_npz
    arrays = read_npz(path, "weights file")
    entry = arrays.get(META_KEY)
    meta = None if entry is None or entry.shape != () else parse_json(
        entry[()], str(path), f"'{META_KEY}' entry")
    if not isinstance(meta, dict):
        meta = {}
    if meta.get("format") == SNAPSHOT_FORMAT:
        raise FileFormatError(f"{path}: this is a solver snapshot (for --resume), not a weights "
                              f"file; give the weights.npz (or best.npz) written beside it")
    name = meta.get("net", "deconvnet")
    if not isinstance(name, str) or name not in MODELS:
        raise FileFormatError(f"{path}: the weights of a net named {name!r:.60}, not one of the "
                              f"model zoo's {', '.join(MODELS)}")
    try:
        width = _leading_dim(arrays, "conv1_1/weight", path, name)
        if name == "deeplab":
            num_classes = _leading_dim(arrays, [k for k in arrays if k.startswith("aspp_r")][0],
                                       path, name)
        else:
            num_classes = _leading_dim(arrays, ("score_fr" if name == "fcn8s" else "score")
                                       + "/weight", path, name)
    except (KeyError, IndexError) as exc:
        missing = exc.args[0] if exc.args else "aspp_r*"
        raise FileFormatError(f"{path}: not the weights of a {name} (no {missing!r})")
    if not (2 <= num_classes <= 2 ** 16 and 1 <= width <= 2 ** 16):
        raise FileFormatError(f"{path}: not the weights of a {name} ({num_classes} classes, "
                              f"width {width})")
    kwargs = dict(width=width, dtype=dtype, loss=loss, ignore_label=ignore_label)
    try:
        if name == "deconvnet":
            kwargs["levels"] = max(1, sum(1 for k in arrays if k.startswith("deconv")
                                          and k.endswith("/weight")))
        elif name == "segnet":
            kwargs["levels"] = max(1, sum(1 for k in arrays if k.endswith("_1_D/weight")))
        elif name == "deeplab":
            kwargs["rates"] = sorted(int(k.split("/")[0][len("aspp_r"):]) for k in arrays
                                     if k.startswith("aspp_r") and k.endswith("/weight"))
        net = MODELS[name](num_classes, **kwargs)
    except (ValueError, ConvnetError) as exc:
        raise FileFormatError(f"{path}: not the weights of a {name} ({exc})") from None
    recorded = data_shape is None
    if recorded:
        shapes_meta = meta.get("input_shapes")
        data_shape = shapes_meta.get("data") if isinstance(shapes_meta, dict) else None
        if data_shape is None:
            raise FileFormatError(f"{path}: no input shape recorded; pass data_shape")
    try:
        shapes = {"data": tuple(data_shape)}
        if loss:
            shapes["label"] = (shapes["data"][0],) + tuple(shapes["data"][2:])
        net.setup(**shapes)
    except (TypeError, IndexError, ConvnetError) as exc:
        if not recorded:
            raise
        raise FileFormatError(f"{path}: the recorded input shape {data_shape!r:.60} does not "
                              f"fit a {name} of these weights ({exc})") from None
    net.load(path)
    net.eval()
    return net, num_classes


def deconvnet_from_weights(path, data_shape=None, dtype=np.float32, loss=False,
                           ignore_label=255):
    """:func:`from_weights` (kept for the scripts written before the zoo)."""
    return from_weights(path, data_shape=data_shape, dtype=dtype, loss=loss,
                        ignore_label=ignore_label)
