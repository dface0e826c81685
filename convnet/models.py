"""Network builders used by the scripts.

:func:`deconvnet` builds a small DeconvNet-style encoder-decoder (Noh et al. 2015): stages of
Convolution + BatchNorm + ReLU separated by max Pooling that records its argmax masks, then
Unpooling with those masks (which puts every activation back where its maximum came from,
so boundaries stay sharp without skip connections) followed by Convolution + BatchNorm + ReLU,
and a 1x1 Convolution to per-class scores.
"""

import numpy as np

from convnet.errors import ConfigError, ConvnetError, FileFormatError, ShapeError
from convnet.net import Net


class DeconvNet(Net):
    """A :class:`Net` whose input H and W must be multiples of ``2**levels``: each Unpooling
    restores exactly twice its input, so any other size would fail deep inside the decoder."""

    def __init__(self, name, levels, keep_diffs=True):
        super().__init__(name, keep_diffs=keep_diffs)
        self.levels = levels

    def _check_data_shape(self, shape):
        multiple = 2 ** self.levels
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


def _int(value, name, minimum):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"deconvnet: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


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
    from convnet.layers import (BatchNorm, Convolution, Pooling, ReLU, SoftmaxWithLoss,
                                Unpooling)
    num_classes = _int(num_classes, "num_classes", 2)
    width = _int(width, "width", 1)
    levels = _int(levels, "levels", 1)
    net = DeconvNet("deconvnet", levels, keep_diffs=keep_diffs)

    def uniform(fan_in):
        bound = 1.0 / np.sqrt(fan_in)
        return dict(type="uniform", min=-bound, max=bound)

    channels_of = {"data": 3}

    def cbr(name, bottom, channels):
        net.add(Convolution(num_output=channels, kernel_size=3, pad=1, bias_term=False,
                            weight_filler=uniform(9 * channels_of[bottom]), name=name,
                            dtype=dtype), bottom=[bottom], top=[name])
        bn = name + "_bn"
        net.add(BatchNorm(moving_average_fraction=bn_fraction, name=bn, dtype=dtype),
                bottom=[name], top=[bn])
        net.add(ReLU(name=name + "_relu", dtype=dtype), bottom=[bn], top=[bn])
        channels_of[bn] = channels
        return bn

    widths = [width * 2 ** min(i, 2) for i in range(levels)]
    x = cbr("conv1_1", "data", widths[0])
    x = cbr("conv1_2", x, widths[0])
    for i in range(levels):
        pool = f"pool{i + 1}"
        net.add(Pooling(kernel_size=2, stride=2, pool="MAX", return_mask=True, name=pool,
                        dtype=dtype), bottom=[x], top=[pool, pool + "_mask"])
        last = i == levels - 1
        channels_of[pool] = channels_of[x]
        x = cbr("center" if last else f"conv{i + 2}", pool, widths[i if last else i + 1])
    for i in reversed(range(levels)):
        unpool = f"unpool{i + 1}"
        net.add(Unpooling(kernel_size=2, stride=2, name=unpool, dtype=dtype),
                bottom=[x, f"pool{i + 1}_mask"], top=[unpool])
        channels_of[unpool] = channels_of[x]
        x = cbr(f"deconv{i + 1}", unpool, widths[max(i - 1, 0)])
    net.add(Convolution(num_output=num_classes, kernel_size=1, name="score", dtype=dtype,
                        weight_filler=uniform(channels_of[x]),
                        bias_filler=uniform(channels_of[x])), bottom=[x], top=["score"])
    if loss:
        net.add(SoftmaxWithLoss(ignore_label=ignore_label, name="loss", dtype=dtype),
                bottom=["score", "label"], top=["loss"])
    return net


def _leading_dim(arrays, key, path):
    """The first dimension of the 4-d array ``key`` of a weights file (KeyError if absent)."""
    shape = arrays[key].shape
    if len(shape) != 4:
        raise FileFormatError(f"{path}: not the weights of a deconvnet ('{key}' has shape "
                              f"{'x'.join(map(str, shape)) or '()'}, expected 4-d)")
    return int(shape[0])


def deconvnet_from_weights(path, data_shape=None, dtype=np.float32, loss=False,
                           ignore_label=255):
    """Rebuild the :func:`deconvnet` whose weights :meth:`Net.save` wrote to ``path`` (its
    num_classes, width and levels read from the param shapes), set it up for inputs of
    ``data_shape`` (N, 3, H, W) (default: the shape it was saved with), load the weights and
    switch to the test phase. Returns ``(net, num_classes)``."""
    import json

    from convnet.net import META_KEY
    from convnet.snapshot import read_npz
    arrays = read_npz(path, "weights file")
    try:
        num_classes = _leading_dim(arrays, "score/weight", path)
        width = _leading_dim(arrays, "conv1_1/weight", path)
    except KeyError as exc:
        raise FileFormatError(f"{path}: not the weights of a deconvnet (no {exc.args[0]!r})")
    if num_classes < 1 or width < 1 or num_classes > 2 ** 16 or width > 2 ** 16:
        raise FileFormatError(f"{path}: not the weights of a deconvnet ({num_classes} classes, "
                              f"width {width})")
    levels = sum(1 for k in arrays if k.startswith("unpool") or (
        k.startswith("deconv") and k.endswith("/weight")))
    net = deconvnet(num_classes, width=width, levels=max(levels, 1), dtype=dtype, loss=loss,
                    ignore_label=ignore_label)
    recorded = data_shape is None
    if recorded:
        from convnet.net import parse_json
        entry = arrays.get(META_KEY)
        meta = None if entry is None or entry.shape != () else parse_json(
            entry[()], str(path), f"'{META_KEY}' entry")
        shapes_meta = meta.get("input_shapes") if isinstance(meta, dict) else None
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
                              f"fit a deconvnet of these weights ({exc})")
    net.load(path)
    net.eval()
    return net, num_classes
