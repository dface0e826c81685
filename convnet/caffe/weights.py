"""``.caffemodel`` files (binary NetParameter) in and out of a convnet Net.

Reading uses the weights-only schema (layer names, types and blobs, which every dialect
numbers alike), so a caffemodel of any fork reads without its schema. Blobs are matched to
the Net by layer name and position:

- Convolution, Deconvolution, InnerProduct, Scale, Embed, ...: blob i -> the layer's param i
  (an old 4-d num/channels/height/width blob of the same size, e.g. a V1 bias 1x1x1xC, is
  reshaped to the param's shape).
- BVLC BatchNorm: blobs (mean, variance, factor) -> buffers mean = blob0 / factor and
  var = blob1 / factor (factor 0 reads as 0, as Caffe); the Scale layer folded into it
  (``net.caffe.folded``) supplies scale (and bias).
- DeconvNet's / SegNet's BN: blobs (scale, shift[, mean, variance]), each 1xCx1x1.

Writing produces what Caffe reads back: V2 layers with ``BlobShape`` shapes; a convnet
BatchNorm is written as Caffe's BatchNorm (mean, var, factor 1) plus its Scale layer, or as BN
when the net came from a BN layer.
"""

import os
import tempfile

import numpy as np

from convnet.errors import FileFormatError, ShapeError, StateError
from convnet.caffe import schema
from convnet.caffe.prototxt import V1_TYPES

from google.protobuf import message as _message


class CaffeLayerBlobs:
    """One layer of a caffemodel: ``name``, ``type`` (V2 string) and ``blobs`` (arrays)."""

    def __init__(self, name, type_name, blobs):
        self.name = name
        self.type = type_name
        self.blobs = blobs

    def __repr__(self):
        shapes = ", ".join("x".join(map(str, b.shape)) for b in self.blobs)
        return f"<{self.type} '{self.name}': {shapes}>"


def _v1_type_names():
    enum = schema.message_class("deconvnet", "V1LayerParameter").DESCRIPTOR.fields_by_name[
        "type"].enum_type
    return {v.number: V1_TYPES.get(v.name, v.name) for v in enum.values}


def blob_to_array(blob, where):
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    elif blob.num or blob.channels or blob.height or blob.width:
        shape = (int(blob.num), int(blob.channels), int(blob.height), int(blob.width))
    else:
        shape = (len(blob.data) or len(blob.double_data),)
    if len(blob.double_data):
        values = np.asarray(blob.double_data, dtype=np.float64)
    else:
        values = np.asarray(blob.data, dtype=np.float32)
    count = int(np.prod(shape)) if shape else 1
    if values.size != count:
        raise FileFormatError(f"{where}: has {values.size} values but its shape "
                              f"{'x'.join(map(str, shape))} needs {count}")
    return values.reshape(shape)


def read_caffemodel(path):
    """The layers of a binary caffemodel with their blobs, V1 or V2, in file order."""
    if not os.path.exists(str(path)):
        raise FileFormatError(f"{path}: no such caffemodel file")
    with open(path, "rb") as f:
        data = f.read()
    msg = schema.message_class("weights", "NetParameter")()
    try:
        msg.ParseFromString(data)
    except _message.DecodeError as exc:
        raise FileFormatError(f"{path}: is not a binary caffemodel (NetParameter): {exc}; a "
                              f"text .prototxt holds no weights") from None
    if msg.layer and msg.layers:
        raise FileFormatError(f"{path}: has both V1 'layers' and V2 'layer' entries")
    if not msg.layer and not msg.layers:
        raise FileFormatError(f"{path}: holds no layers (not a caffemodel, or an empty one)")
    v1_names = _v1_type_names()
    out = []
    for lp in msg.layer:
        out.append(CaffeLayerBlobs(lp.name, lp.type, [
            blob_to_array(b, f"{path}: layer '{lp.name}' blob {i}")
            for i, b in enumerate(lp.blobs)]))
    for lp in msg.layers:
        out.append(CaffeLayerBlobs(lp.name, v1_names.get(lp.type, str(lp.type)), [
            blob_to_array(b, f"{path}: layer '{lp.name}' blob {i}")
            for i, b in enumerate(lp.blobs)]))
    return out


def _fit(array, shape):
    """``array`` reshaped to ``shape`` when only the layout differs (an old 4-d blob, or
    leading / trailing 1s); unchanged otherwise (the Net's load then names the mismatch)."""
    shape = tuple(shape)
    if array.shape == shape or array.size != int(np.prod(shape)):
        return array
    squeeze = tuple(d for d in array.shape if d != 1)
    if squeeze == tuple(d for d in shape if d != 1):
        return array.reshape(shape)
    return array


def _ensure_setup(net, what):
    if all(layer.bottom_shapes is not None for layer in net.layers):
        return
    info = getattr(net, "caffe", None)
    shapes = dict(getattr(info, "input_shapes", {}) or {})
    shapes.update(net.input_shapes)
    if set(net.inputs) <= set(shapes):
        net.setup(**{k: shapes[k] for k in net.inputs})
        return
    raise StateError(f"{what}: the net's params do not exist yet and its input shapes are "
                     f"unknown for {sorted(set(net.inputs) - set(shapes))}: call "
                     f"net.setup(name=shape, ...) or run a forward first")


def load_weights(net, path, strict=False):
    """Load a ``.caffemodel`` into ``net`` by layer name; returns the Net's LoadReport
    (matched / skipped / missing, as :meth:`Net.load`). ``strict=True`` requires every param
    and buffer of the net to be in the file and nothing else."""
    _ensure_setup(net, str(path))
    file_layers = read_caffemodel(path)
    info = getattr(net, "caffe", None)
    folded = dict(getattr(info, "folded", {}) or {})
    scale_of = {v: k for k, v in folded.items()}
    by_name = {layer.name: layer for layer in net.layers}
    arrays = {}
    previous = None
    for entry in file_layers:
        layer = by_name.get(entry.name)
        target = scale_of.get(entry.name)
        if layer is None and target is None and entry.type == "Scale" and previous is not None \
                and previous.type_name == "BatchNorm" and previous.affine \
                and previous.name not in folded:
            target = previous.name        # a net built by hand: Scale follows its BatchNorm
        if layer is None and target in by_name:
            # the Scale of a BatchNorm + Scale pair: BatchNorm's scale (and bias)
            _param_arrays(by_name[target], entry, arrays)
            previous = None
            continue
        if layer is None:
            for i, blob in enumerate(entry.blobs):
                arrays[f"{entry.name}/blob{i}"] = blob
            previous = None
            continue
        previous = layer
        if layer.type_name == "BatchNorm":
            _batch_norm_arrays(layer, entry, arrays, path)
        else:
            _param_arrays(layer, entry, arrays)
    report = net.load_arrays(arrays, str(path), strict)
    return report


def _param_arrays(layer, entry, arrays):
    """Blob i of ``entry`` -> param i of ``layer``; extra blobs are left for the report."""
    from convnet.net import _param_keys
    params = _param_keys(layer)
    for i, blob in enumerate(entry.blobs):
        if i < len(params):
            key, p = params[i]
            arrays[f"{layer.name}/{key}"] = _fit(blob, p.shape)
        else:
            arrays[f"{entry.name}/blob{i}"] = blob


def _batch_norm_arrays(layer, entry, arrays, path):
    from convnet.net import _param_keys
    blobs = entry.blobs
    c = layer.channels
    keys = dict(_param_keys(layer))
    if entry.type == "BatchNorm" or (len(blobs) == 3 and entry.type != "BN"):
        if len(blobs) != 3:
            raise FileFormatError(f"{path}: BatchNorm layer '{entry.name}' has {len(blobs)} "
                                  f"blobs, expected 3 (mean, variance, scale factor)")
        factor = float(np.asarray(blobs[2]).reshape(-1)[0]) if blobs[2].size else 1.0
        scale = 0.0 if factor == 0 else 1.0 / factor
        arrays[f"{layer.name}/buffer:mean"] = _fit(blobs[0] * scale, (c,))
        arrays[f"{layer.name}/buffer:var"] = _fit(blobs[1] * scale, (c,))
        return
    # DeconvNet / SegNet BN: scale, shift[, mean, variance]
    if len(blobs) not in (2, 4):
        raise FileFormatError(f"{path}: BN layer '{entry.name}' has {len(blobs)} blobs, "
                              f"expected 2 (scale, shift) or 4 (scale, shift, mean, variance)")
    if not layer.affine:
        raise ShapeError(f"{path}: BN layer '{entry.name}' has scale and shift blobs but the "
                         f"net's BatchNorm '{layer.name}' has affine=False")
    arrays[f"{layer.name}/scale"] = _fit(blobs[0], keys["scale"].shape)
    arrays[f"{layer.name}/bias"] = _fit(blobs[1], keys["bias"].shape)
    if len(blobs) == 4:
        arrays[f"{layer.name}/buffer:mean"] = _fit(blobs[2], (c,))
        arrays[f"{layer.name}/buffer:var"] = _fit(blobs[3], (c,))


def _blob(blob_msg, array):
    array = np.asarray(array)
    blob_msg.shape.dim.extend(int(d) for d in array.shape)
    if array.dtype == np.float64:
        blob_msg.double_data.extend(array.reshape(-1).tolist())
    else:
        blob_msg.data.extend(np.asarray(array, np.float32).reshape(-1).tolist())


def caffemodel_layers(net):
    """[(name, type, [arrays])] as :func:`save_caffemodel` writes them."""
    from convnet import backend as _backend
    _ensure_setup(net, "save_caffemodel")
    info = getattr(net, "caffe", None)
    caffe_types = dict(getattr(info, "caffe_types", {}) or {})
    folded = dict(getattr(info, "folded", {}) or {})
    scale_bias = dict(getattr(info, "scale_bias", {}) or {})
    out = []
    for layer in net.layers:
        params = [np.asarray(_backend.get(p.device).to_numpy(p.data)) for p in layer.params]
        buffers = {k: np.asarray(_backend.get(_backend.device_of(v)).to_numpy(v))
                   for k, v in layer.buffers.items()}
        kind = caffe_types.get(layer.name, layer.type_name)
        if layer.type_name == "BatchNorm":
            mean, var = buffers["mean"], buffers["var"]
            c = mean.shape[0]
            if kind == "BN":
                blobs = [p.reshape(1, c, 1, 1) for p in params]
                if np.any(mean != 0) or np.any(var != 1):
                    blobs += [mean.reshape(1, c, 1, 1), var.reshape(1, c, 1, 1)]
                out.append((layer.name, "BN", blobs))
                continue
            out.append((layer.name, "BatchNorm", [mean, var, np.ones(1, mean.dtype)]))
            if layer.affine:
                name = folded.get(layer.name, f"{layer.name}_scale")
                blobs = params if scale_bias.get(layer.name, True) else params[:1]
                out.append((name, "Scale", blobs))
            continue
        if params:
            out.append((layer.name, kind, params))
    return out


def save_caffemodel(net, path):
    """Write ``net``'s params (and BatchNorm statistics) as a binary V2 caffemodel, atomically
    (a temporary file renamed over ``path``)."""
    cls = schema.message_class("bvlc", "NetParameter")
    msg = cls(name=net.name)
    for name, kind, blobs in caffemodel_layers(net):
        lp = msg.layer.add(name=name, type=kind)
        for array in blobs:
            _blob(lp.blobs.add(), array)
    data = msg.SerializeToString()
    directory = os.path.dirname(os.path.abspath(str(path)))
    fd, tmp = tempfile.mkstemp(prefix=".caffemodel-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, str(path))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
