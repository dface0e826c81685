"""ONNX export of a convnet Net (opset 22), the only module that imports onnx.

>>> from convnet.onnx import export
>>> model = export(net, "net.onnx")            # or net.export_onnx("net.onnx")

The graph is the Net in its TEST phase (BatchNorm with its moving averages, Dropout the
identity) for the input shapes the Net was set up with (``input_shapes=`` sets it up). Loss
layers are left out: the blobs they read become graph outputs, and inputs only they read
(labels) are dropped. ``EXPORTERS[type_name](ctx, layer, inputs, outputs)`` writes the ONNX
nodes of one layer:

========================  =================================================================
Convolution               Conv (pads, strides, dilations, group)
Deconvolution             ConvTranspose (output_padding from the top's size)
Pooling                   MaxPool / AveragePool, ``ceil_mode`` for Caffe's rule (opset >= 19
                          ignores windows that start in the right padding, as Caffe); the
                          mask top is MaxPool's Indices modulo H*W (ONNX counts across the
                          whole tensor, Caffe within a plane), as a float blob like Caffe's
Unpooling                 MaxUnpool, the plane index plus each plane's offset (n*C + c)*OH*OW
Interp                    Slice (pad_beg / pad_end crop) + Resize (linear; align_corners or
                          half_pixel as the layer says; nearest for mode="nearest")
Crop                      Slice
BatchNorm                 BatchNormalization (test mode)
Concat, Eltwise           Concat; Sum (Mul by coeff) / Mul / Max
ReLU, Dropout             Relu or LeakyRelu; Identity
Softmax, Sigmoid, TanH    Softmax (axis), Sigmoid, Tanh
Flatten, Reshape, Split   Reshape to the top's shape; Identity per top
Scale                     Mul (+ Add) with the scale reshaped to broadcast from ``axis``
InnerProduct              Reshape + Gemm + Reshape
========================  =================================================================
"""

import numpy as np

from convnet import backend as _backend
from convnet.errors import ConfigError, StateError

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError as exc:      # pragma: no cover - exercised by the import test
    raise ImportError("convnet.onnx needs the onnx package: pip install \".[onnx]\" "
                      f"(or pip install onnx onnxruntime) ({exc})") from exc

OPSET = 22
EXPORTERS = {}


def exporter(*types):
    def register(fn):
        for t in types:
            EXPORTERS[t] = fn
        return fn
    return register


class _Graph:
    """Nodes, initializers and unique names while one Net is exported."""

    def __init__(self, net, dtype):
        self.net = net
        self.dtype = dtype
        self.nodes = []
        self.initializers = []
        self.used = set()
        self.shapes = {}

    def name(self, hint):
        base = hint.replace("/", "_")
        name, k = base, 1
        while name in self.used:
            name = f"{base}_{k}"
            k += 1
        self.used.add(name)
        return name

    def const(self, hint, array, dtype=None):
        array = np.asarray(array, dtype=dtype or self.dtype)
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op, inputs, outputs, **attrs):
        self.nodes.append(helper.make_node(op, inputs, outputs, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def tmp(self, hint):
        return self.name(hint)


def _host(x):
    return np.asarray(_backend.get(_backend.device_of(x)).to_numpy(x))


def _pads(pad):
    return [int(pad[0]), int(pad[1]), int(pad[0]), int(pad[1])]


@exporter("Convolution")
def _convolution(g, layer, ins, outs):
    inputs = [ins[0], g.const(f"{layer.name}_weight", _host(layer.weight.data))]
    if layer.bias is not None:
        inputs.append(g.const(f"{layer.name}_bias", _host(layer.bias.data)))
    g.node("Conv", inputs, [outs[0]], kernel_shape=list(layer.kernel_size),
           strides=list(layer.stride), pads=_pads(layer.pad), dilations=list(layer.dilation),
           group=int(layer.group))


@exporter("Deconvolution")
def _deconvolution(g, layer, ins, outs):
    inputs = [ins[0], g.const(f"{layer.name}_weight", _host(layer.weight.data))]
    if layer.bias is not None:
        inputs.append(g.const(f"{layer.name}_bias", _host(layer.bias.data)))
    h, w = layer.bottom_shapes[0][2:]
    top = layer.top_shapes[0][2:]
    padding = []
    for size, out, k, s, p, d in zip((h, w), top, layer.kernel_size, layer.stride, layer.pad,
                                     layer.dilation):
        padding.append(int(out - (s * (size - 1) + d * (k - 1) + 1 - 2 * p)))
    g.node("ConvTranspose", inputs, [outs[0]], kernel_shape=list(layer.kernel_size),
           strides=list(layer.stride), pads=_pads(layer.pad), dilations=list(layer.dilation),
           group=int(layer.group), output_padding=padding)


@exporter("Pooling")
def _pooling(g, layer, ins, outs):
    n, c, h, w = layer.bottom_shapes[0]
    if layer.global_pooling:
        kernel, stride, pad = (h, w), (1, 1), (0, 0)
    else:
        kernel, stride, pad = layer.kernel_size, layer.stride, layer.pad
    attrs = dict(kernel_shape=list(kernel), strides=list(stride), pads=_pads(pad),
                 ceil_mode=1 if layer.round_mode == "CEIL" else 0)
    if layer.pool == "AVE":
        g.node("AveragePool", [ins[0]], [outs[0]], count_include_pad=1, **attrs)
        return
    if len(outs) == 1:
        g.node("MaxPool", [ins[0]], [outs[0]], **attrs)
        return
    indices = g.tmp(f"{layer.name}_indices")
    g.node("MaxPool", [ins[0]], [outs[0], indices], **attrs)
    plane = g.node("Mod", [indices, g.const(f"{layer.name}_plane", np.int64(h * w),
                                            np.int64)], [g.tmp(f"{layer.name}_plane_index")])
    g.node("Cast", [plane], [outs[1]], to=helper.np_dtype_to_tensor_dtype(np.dtype(g.dtype)))


@exporter("Unpooling")
def _unpooling(g, layer, ins, outs):
    n, c = layer.bottom_shapes[0][:2]
    oh, ow = layer.top_shapes[0][2:]
    index = g.node("Cast", [ins[1]], [g.tmp(f"{layer.name}_mask_int")], to=TensorProto.INT64)
    offsets = (np.arange(n * c, dtype=np.int64) * (oh * ow)).reshape(n, c, 1, 1)
    full = g.node("Add", [index, g.const(f"{layer.name}_offsets", offsets, np.int64)],
                  [g.tmp(f"{layer.name}_indices")])
    shape = g.const(f"{layer.name}_shape", np.array(layer.top_shapes[0], np.int64), np.int64)
    # onnxruntime refuses an output_shape below (H - 1)s - 2p + k (an odd size that a ceil
    # pooling rounded up, SegNet's upsample_h 45); pads only shape that bound, not the scatter
    h, w = layer.bottom_shapes[0][2:]
    extra = [max(0, (size - 1) * s - 2 * p + k - out) for size, s, p, k, out in zip(
        (h, w), layer.stride, layer.pad, layer.kernel_size, (oh, ow))]
    pads = [int(layer.pad[0]), int(layer.pad[1]), int(layer.pad[0] + extra[0]),
            int(layer.pad[1] + extra[1])]
    g.node("MaxUnpool", [ins[0], full, shape], [outs[0]], kernel_shape=list(layer.kernel_size),
           strides=list(layer.stride), pads=pads)


@exporter("Interp")
def _interp(g, layer, ins, outs):
    shape = layer.bottom_shapes[0]
    x = ins[0]
    h, w = shape[2], shape[3]
    if layer.pad_beg or layer.pad_end:
        b, e = -layer.pad_beg, -layer.pad_end
        x = g.node("Slice", [x, g.const(f"{layer.name}_starts", [b, b], np.int64),
                             g.const(f"{layer.name}_ends", [h - e, w - e], np.int64),
                             g.const(f"{layer.name}_axes", [2, 3], np.int64)],
                   [g.tmp(f"{layer.name}_cropped")])
        h, w = h - b - e, w - b - e
    top = layer.top_shapes[0]
    if (h, w) == tuple(top[2:]):
        g.node("Identity", [x], [outs[0]])
        return
    sizes = g.const(f"{layer.name}_sizes", np.array(top, np.int64), np.int64)
    if layer.mode == "nearest":
        attrs = (dict(coordinate_transformation_mode="align_corners",
                      nearest_mode="round_prefer_ceil") if layer.align_corners else
                 dict(coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
        g.node("Resize", [x, "", "", sizes], [outs[0]], mode="nearest", **attrs)
        return
    g.node("Resize", [x, "", "", sizes], [outs[0]], mode="linear",
           coordinate_transformation_mode="align_corners" if layer.align_corners
           else "half_pixel")


@exporter("Crop")
def _crop(g, layer, ins, outs):
    top = layer.top_shapes[0]
    axes = list(range(layer.axis % len(top), len(top)))
    starts = [layer._full_offsets[a] for a in axes]
    ends = [layer._full_offsets[a] + top[a] for a in axes]
    g.node("Slice", [ins[0], g.const(f"{layer.name}_starts", starts, np.int64),
                     g.const(f"{layer.name}_ends", ends, np.int64),
                     g.const(f"{layer.name}_axes", axes, np.int64)], [outs[0]])


@exporter("BatchNorm")
def _batch_norm(g, layer, ins, outs):
    if layer.use_global_stats is False:
        raise ConfigError(f"BatchNorm '{layer.name}': use_global_stats=False normalises with "
                          f"batch statistics even at test time, which ONNX's test-mode "
                          f"BatchNormalization cannot express")
    c = layer.channels
    if layer.affine:
        scale, bias = _host(layer.params[0].data), _host(layer.params[1].data)
    else:
        scale, bias = np.ones(c), np.zeros(c)
    g.node("BatchNormalization",
           [ins[0], g.const(f"{layer.name}_scale", scale), g.const(f"{layer.name}_bias", bias),
            g.const(f"{layer.name}_mean", _host(layer.buffers["mean"])),
            g.const(f"{layer.name}_var", _host(layer.buffers["var"]))],
           [outs[0]], epsilon=float(layer.eps))


@exporter("Concat")
def _concat(g, layer, ins, outs):
    g.node("Concat", list(ins), [outs[0]], axis=int(layer._axis))


@exporter("Eltwise")
def _eltwise(g, layer, ins, outs):
    if layer.operation == "PROD":
        prev = ins[0]
        for i, x in enumerate(ins[1:], start=1):
            out = outs[0] if i == len(ins) - 1 else g.tmp(f"{layer.name}_prod")
            prev = g.node("Mul", [prev, x], [out])
        return
    if layer.operation == "MAX":
        g.node("Max", list(ins), [outs[0]])
        return
    terms = list(ins)
    if layer.coeff is not None:
        terms = [x if c == 1 else g.node("Mul", [x, g.const(f"{layer.name}_coeff{i}",
                                                             np.array(c))],
                                         [g.tmp(f"{layer.name}_term{i}")])
                 for i, (x, c) in enumerate(zip(ins, layer.coeff))]
    g.node("Sum", terms, [outs[0]])


@exporter("ReLU")
def _relu(g, layer, ins, outs):
    if layer.negative_slope:
        g.node("LeakyRelu", [ins[0]], [outs[0]], alpha=float(layer.negative_slope))
    else:
        g.node("Relu", [ins[0]], [outs[0]])


@exporter("Dropout")
def _identity(g, layer, ins, outs):
    g.node("Identity", [ins[0]], [outs[0]])


@exporter("Split")
def _split(g, layer, ins, outs):
    for out in outs:
        g.node("Identity", [ins[0]], [out])


@exporter("Softmax")
def _softmax(g, layer, ins, outs):
    g.node("Softmax", [ins[0]], [outs[0]], axis=int(getattr(layer, "axis", 1)))


@exporter("Sigmoid", "TanH")
def _pointwise(g, layer, ins, outs):
    g.node({"Sigmoid": "Sigmoid", "TanH": "Tanh"}[layer.type_name], [ins[0]], [outs[0]])


@exporter("Flatten", "Reshape")
def _reshape(g, layer, ins, outs):
    shape = g.const(f"{layer.name}_shape", np.array(layer.top_shapes[0], np.int64), np.int64)
    g.node("Reshape", [ins[0], shape], [outs[0]])


@exporter("Scale")
def _scale(g, layer, ins, outs):
    bottom = layer.bottom_shapes[0]
    axis = layer.axis % len(bottom)
    if len(ins) == 2:
        sshape = layer.bottom_shapes[1]
        factor = ins[1]
    else:
        data = _host(layer.params[0].data)
        sshape = data.shape
        factor = g.const(f"{layer.name}_scale", data)
    target = [1] * axis + list(sshape) + [1] * (len(bottom) - axis - len(sshape))
    shape = g.const(f"{layer.name}_bshape", np.array(target, np.int64), np.int64)
    factor = g.node("Reshape", [factor, shape], [g.tmp(f"{layer.name}_factor")])
    bias_param = layer.params[-1] if getattr(layer, "bias_term", False) else None
    if bias_param is None:
        g.node("Mul", [ins[0], factor], [outs[0]])
        return
    scaled = g.node("Mul", [ins[0], factor], [g.tmp(f"{layer.name}_scaled")])
    bias = g.node("Reshape", [g.const(f"{layer.name}_bias", _host(bias_param.data)), shape],
                  [g.tmp(f"{layer.name}_bias_b")])
    g.node("Add", [scaled, bias], [outs[0]])


@exporter("InnerProduct")
def _inner_product(g, layer, ins, outs):
    bottom = layer.bottom_shapes[0]
    axis = layer.axis % len(bottom)
    m = int(np.prod(bottom[:axis]))
    k = int(np.prod(bottom[axis:]))
    x = g.node("Reshape", [ins[0], g.const(f"{layer.name}_in", np.array([m, k], np.int64),
                                           np.int64)], [g.tmp(f"{layer.name}_2d")])
    weight = _host(layer.params[0].data)
    inputs = [x, g.const(f"{layer.name}_weight", weight)]
    if len(layer.params) > 1:
        inputs.append(g.const(f"{layer.name}_bias", _host(layer.params[1].data)))
    trans_b = 0 if getattr(layer, "transpose", False) else 1
    y = g.node("Gemm", inputs, [g.tmp(f"{layer.name}_gemm")], transB=trans_b)
    g.node("Reshape", [y, g.const(f"{layer.name}_out", np.array(layer.top_shapes[0],
                                                                np.int64), np.int64)],
           [outs[0]])


def export(net, path=None, input_shapes=None, opset=OPSET, check=True):
    """Write ``net`` as an ONNX model (see the module docstring) and return the ModelProto.

    ``input_shapes`` (name -> shape) sets the Net up first; otherwise the shapes of its last
    setup or forward are used. ``path=None`` only returns the model.
    """
    from convnet.net import Net
    if not isinstance(net, Net):
        raise ConfigError(f"convnet.onnx.export: expected a convnet.Net, got "
                          f"{type(net).__name__}")
    if opset < 19:
        raise ConfigError(f"convnet.onnx.export: opset must be >= 19 (ceil-mode pooling "
                          f"shapes agree with Caffe from opset 19), got {opset}")
    if input_shapes:
        net.setup(**input_shapes)
    not_set = [layer.name for layer in net.layers if layer.bottom_shapes is None]
    if not_set:
        raise StateError(f"convnet.onnx.export: layer(s) {not_set} are not set up; pass "
                         f"input_shapes={{name: shape}} or run a forward first")
    dtypes = {layer.dtype for layer in net.layers}
    if len(dtypes) != 1:
        raise ConfigError(f"convnet.onnx.export: the layers mix dtypes {sorted(map(str, dtypes))}")
    dtype = dtypes.pop()
    g = _Graph(net, dtype)
    versions = net._versions
    skipped = {i for i, node in enumerate(net._nodes) if node.layer.is_loss or
               node.layer.type_name == "Silence"}
    names = {}
    latest = {}
    for v, version in enumerate(versions):
        latest[version.name] = v
    for v, version in enumerate(versions):
        names[v] = g.name(version.name if latest[version.name] == v else
                          f"{version.name}__{v}")
    used = set()
    for i, node in enumerate(net._nodes):
        if i in skipped:
            continue
        layer = node.layer
        fn = EXPORTERS.get(layer.type_name)
        if fn is None:
            raise ConfigError(f"{layer.type_name} '{layer.name}': no ONNX export for this layer "
                              f"type; exportable types: {', '.join(sorted(EXPORTERS))}")
        fn(g, layer, [names[b] for b in node.bottoms], [names[t] for t in node.tops])
        used.update(node.bottoms)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inputs = []
    for v, version in enumerate(versions):
        if version.producer is None and v in used:
            shape = _version_shape(net, v)
            inputs.append(helper.make_tensor_value_info(names[v], elem, list(shape)))
    outputs = []
    for v, version in enumerate(versions):
        if version.producer is None or version.producer in skipped:
            continue
        readers = [r for r in version.readers if r not in skipped]
        if readers:
            continue
        node = net._nodes[version.producer]
        shape = node.layer.top_shapes[node.tops.index(v)]
        outputs.append(helper.make_tensor_value_info(names[v], elem, list(shape)))
    graph = helper.make_graph(g.nodes, net.name, inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", int(opset))],
                              producer_name="convnet")
    model.ir_version = min(model.ir_version, 10)
    if check:
        onnx.checker.check_model(model, full_check=True)     # with shape inference
    if path is not None:
        onnx.save(model, str(path))
    return model


def _version_shape(net, v):
    for node in net._nodes:
        if v in node.bottoms:
            return node.layer.bottom_shapes[node.bottoms.index(v)]
    return ()


def run(model, inputs):
    """Run an exported model with onnxruntime (CPU): {output name: array}."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError("running ONNX models needs onnxruntime: pip install \".[onnx]\" "
                          f"({exc})") from exc
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = {i.name: np.asarray(inputs[i.name]) for i in session.get_inputs()}
    return dict(zip(names, session.run(names, feeds)))
