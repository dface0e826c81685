""".caffemodel weights: files written here byte by byte from Caffe's wire format (not through
convnet's schema), V1 and V2 blobs, old 4-d shapes, BatchNorm's scale factor, the fork's BN,
the load report, the round trip caffemodel -> Net -> npz -> caffemodel, and bad files."""

import os
import struct
import warnings

import numpy as np
import pytest

pytest.importorskip("google.protobuf")

from convnet import caffe  # noqa: E402
from convnet.errors import FileFormatError, ShapeError, StateError  # noqa: E402


# ---------------------------------------------------------------------- a wire encoder
def varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, wire, payload):
    key = varint(number << 3 | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def string(number, text):
    return field(number, 2, text.encode())


def integer(number, value):
    return field(number, 0, varint(value))


def blob(array, legacy=False, packed=True, double=False):
    """BlobProto: shape (7) or num/channels/height/width (1-4); data (5) or double_data (8)."""
    array = np.asarray(array)
    out = b""
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape
        for number, d in zip((1, 2, 3, 4), dims):
            out += integer(number, d)
    else:
        out += field(7, 2, field(1, 2, b"".join(varint(d) for d in array.shape)))
    flat = array.reshape(-1)
    if double:
        out += field(8, 2, struct.pack(f"<{flat.size}d", *flat))
    elif packed:
        out += field(5, 2, struct.pack(f"<{flat.size}f", *flat))
    else:
        out += b"".join(field(5, 5, struct.pack("<f", v)) for v in flat)
    return out


def v2_layer(name, kind, blobs, extra=b""):
    return field(100, 2, string(1, name) + string(2, kind) + extra +
                 b"".join(field(7, 2, b) for b in blobs))


def v1_layer(name, kind, blobs):
    return field(2, 2, string(4, name) + integer(5, kind) + b"".join(field(6, 2, b)
                                                                     for b in blobs))


def write(path, *layers):
    with open(path, "wb") as f:
        f.write(string(1, "model") + b"".join(layers))
    return str(path)


V1_NET = """
name: "small"
input: "data" input_dim: 1 input_dim: 3 input_dim: 6 input_dim: 6
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layers { name: "bn1" type: BN bottom: "conv1" top: "conv1" bn_param { bn_mode: INFERENCE } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "up" type: DECONVOLUTION bottom: "conv1" top: "up"
  convolution_param { num_output: 2 kernel_size: 2 stride: 2 } }
"""

V2_NET = """
name: "bvlc"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 bias_term: false } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "score" type: "Convolution" bottom: "conv" top: "score"
  convolution_param { num_output: 2 kernel_size: 1 } }
"""


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", caffe.CaffeLoadNote)
        return fn(*args, **kwargs)


def test_v1_caffemodel_with_legacy_shapes_and_fork_bn(tmp_path):
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    scale, shift = rng.standard_normal(4), rng.standard_normal(4)
    w2, b2 = rng.standard_normal((4, 2, 2, 2)), rng.standard_normal(2)
    path = write(tmp_path / "v1.caffemodel",
                 v1_layer("conv1", 4, [blob(w1, legacy=True), blob(b1, legacy=True,
                                                                   packed=False)]),
                 v1_layer("bn1", 43, [blob(scale.reshape(1, 4, 1, 1), legacy=True),
                                      blob(shift.reshape(1, 4, 1, 1), legacy=True)]),
                 v1_layer("relu1", 18, []),
                 v1_layer("up", 39, [blob(w2, legacy=True), blob(b2, legacy=True)]),
                 v1_layer("fc8", 14, [blob(np.ones((1, 1, 2, 3)), legacy=True)]))
    layers = caffe.read_caffemodel(path)
    assert [(entry.name, entry.type) for entry in layers] == [
        ("conv1", "Convolution"), ("bn1", "BN"), ("relu1", "ReLU"), ("up", "Deconvolution"),
        ("fc8", "InnerProduct")]
    net = quiet(caffe.load_net, V1_NET)
    report = caffe.load_weights(net, path)
    assert sorted(report.matched) == ["bn1/bias", "bn1/scale", "conv1/bias", "conv1/weight",
                                      "up/bias", "up/weight"]
    assert report.skipped == ["fc8/blob0"]
    assert report.missing == ["bn1/buffer:mean", "bn1/buffer:var"]
    np.testing.assert_allclose(net.layer("conv1").weight.data, w1, rtol=1e-6)
    np.testing.assert_allclose(net.layer("conv1").bias.data, b1, rtol=1e-6)
    np.testing.assert_allclose(net.layer("bn1").params[0].data, scale, rtol=1e-6)
    np.testing.assert_allclose(net.layer("up").weight.data, w2, rtol=1e-6)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    out = net.forward(data=x)["up"]
    # the same computation written out with the loaded numbers
    import convnet.layers as L
    conv = L.Convolution(num_output=4, kernel_size=3, pad=1)
    conv.setup(x.shape)
    conv.weight.data[...] = w1
    conv.bias.data[...] = b1
    h = np.maximum(conv.forward(x) * scale.reshape(1, 4, 1, 1) + shift.reshape(1, 4, 1, 1), 0)
    up = L.Deconvolution(num_output=2, kernel_size=2, stride=2)
    up.setup(h.shape)
    up.weight.data[...] = w2
    up.bias.data[...] = b2
    np.testing.assert_allclose(out, up.forward(h), rtol=1e-4, atol=1e-5)


def test_v2_batchnorm_scale_factor_and_folded_scale(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 3, 3))
    mean, var, factor = rng.standard_normal(4), rng.uniform(1, 2, 4), 0.5
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    ws, bs = rng.standard_normal((2, 4, 1, 1)), rng.standard_normal(2)
    # unknown fields in a layer (a DeepLab interp_param at 143, a transform_param) are skipped
    extra = field(143, 2, integer(3, 8)) + field(100, 2, field(1, 5, struct.pack("<f", 1.0)))
    path = write(tmp_path / "v2.caffemodel",
                 v2_layer("conv", "Convolution", [blob(w, double=True)], extra),
                 v2_layer("bn", "BatchNorm", [blob(mean * factor), blob(var * factor),
                                              blob(np.array([factor]))]),
                 v2_layer("sc", "Scale", [blob(gamma), blob(beta)]),
                 v2_layer("score", "Convolution", [blob(ws), blob(bs)]))
    net = quiet(caffe.load_net, V2_NET)
    report = caffe.load_weights(net, path, strict=True)
    assert report.skipped == [] and report.missing == []
    bn = net.layer("bn")
    np.testing.assert_allclose(bn.buffers["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(bn.buffers["var"], var, rtol=1e-6)
    np.testing.assert_allclose(bn.params[0].data, gamma, rtol=1e-6)
    np.testing.assert_allclose(bn.params[1].data, beta, rtol=1e-6)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    got = net.forward(data=x)["score"]
    conv = np.einsum("nchw,kc->nkhw", np.lib.stride_tricks.sliding_window_view(
        x, (3, 3), axis=(2, 3)).transpose(0, 1, 4, 5, 2, 3).reshape(2, 27, 3, 3),
        w.reshape(4, 27))
    h = (conv - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
    h = h * gamma[:, None, None] + beta[:, None, None]
    want = np.einsum("nchw,kc->nkhw", h, ws.reshape(2, 4)) + bs[:, None, None]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_zero_factor_reads_as_zero_statistics(tmp_path):
    path = write(tmp_path / "z.caffemodel",
                 v2_layer("bn", "BatchNorm", [blob(np.ones(4)), blob(np.ones(4)),
                                              blob(np.zeros(1))]))
    net = quiet(caffe.load_net, V2_NET)
    caffe.load_weights(net, path)
    np.testing.assert_array_equal(net.layer("bn").buffers["mean"], np.zeros(4))


def test_round_trip_caffemodel_net_npz_caffemodel(tmp_path):
    rng = np.random.default_rng(2)
    original = write(tmp_path / "a.caffemodel",
                     v2_layer("conv", "Convolution", [blob(rng.standard_normal((4, 3, 3, 3)))]),
                     v2_layer("bn", "BatchNorm", [blob(rng.standard_normal(4)),
                                                  blob(rng.uniform(1, 2, 4)),
                                                  blob(np.ones(1))]),
                     v2_layer("sc", "Scale", [blob(rng.standard_normal(4)),
                                              blob(rng.standard_normal(4))]),
                     v2_layer("score", "Convolution", [blob(rng.standard_normal((2, 4, 1, 1))),
                                                       blob(rng.standard_normal(2))]))
    net = quiet(caffe.load_net, V2_NET)
    caffe.load_weights(net, original, strict=True)
    net.save(tmp_path / "w.npz")
    other = quiet(caffe.load_net, V2_NET)
    other.load(tmp_path / "w.npz")
    caffe.save_caffemodel(other, tmp_path / "b.caffemodel")
    a = caffe.read_caffemodel(original)
    b = caffe.read_caffemodel(tmp_path / "b.caffemodel")
    assert [(x.name, x.type) for x in a] == [(x.name, x.type) for x in b]
    for x, y in zip(a, b):
        assert len(x.blobs) == len(y.blobs)
        for u, v in zip(x.blobs, y.blobs):
            assert u.shape == v.shape
            np.testing.assert_array_equal(u.astype(np.float32), v)


def test_round_trip_of_fork_bn_keeps_its_layout(tmp_path):
    rng = np.random.default_rng(3)
    blobs = [rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)]
    bn = [rng.standard_normal((1, 4, 1, 1)), rng.standard_normal((1, 4, 1, 1))]
    up = [rng.standard_normal((4, 2, 2, 2)), rng.standard_normal(2)]
    path = write(tmp_path / "a.caffemodel",
                 v2_layer("conv1", "Convolution", [blob(b) for b in blobs]),
                 v2_layer("bn1", "BN", [blob(b) for b in bn]),
                 v2_layer("up", "Deconvolution", [blob(b) for b in up]))
    net = quiet(caffe.load_net, V1_NET)
    caffe.load_weights(net, path)
    caffe.save_caffemodel(net, tmp_path / "b.caffemodel")
    back = caffe.read_caffemodel(tmp_path / "b.caffemodel")
    assert [(x.name, x.type, [b.shape for b in x.blobs]) for x in back] == [
        ("conv1", "Convolution", [(4, 3, 3, 3), (4,)]), ("bn1", "BN", [(1, 4, 1, 1)] * 2),
        ("up", "Deconvolution", [(4, 2, 2, 2), (2,)])]
    for want, got in zip(bn, back[1].blobs):
        np.testing.assert_array_equal(got, want.astype(np.float32))


def test_bad_caffemodels(tmp_path):
    net = quiet(caffe.load_net, V2_NET)
    garbage = tmp_path / "g.caffemodel"
    garbage.write_bytes(b"\xff\xff\xff\xff\x0f not a caffemodel")
    with pytest.raises(FileFormatError, match="g.caffemodel: is not a binary caffemodel"):
        caffe.load_weights(net, garbage)
    empty = write(tmp_path / "e.caffemodel")
    with pytest.raises(FileFormatError, match="holds no layers"):
        caffe.load_weights(net, empty)
    with pytest.raises(FileFormatError, match="no such caffemodel"):
        caffe.load_weights(net, tmp_path / "missing.caffemodel")
    short = write(tmp_path / "s.caffemodel",
                  v2_layer("conv", "Convolution", [field(7, 2, field(1, 2, varint(4) + varint(3)))
                                                   + field(5, 2, struct.pack("<3f", 1, 2, 3))]))
    with pytest.raises(FileFormatError, match="layer 'conv' blob 0: has 3 values but its shape "
                                              "4x3 needs 12"):
        caffe.load_weights(net, short)
    wrong = write(tmp_path / "w.caffemodel",
                  v2_layer("conv", "Convolution", [blob(np.ones((5, 3, 3, 3)))]))
    with pytest.raises(FileFormatError, match="'conv/weight' has shape 5x3x3x3 in the file but "
                                              "4x3x3x3"):
        caffe.load_weights(net, wrong)
    partial = write(tmp_path / "p.caffemodel",
                    v2_layer("conv", "Convolution", [blob(np.ones((4, 3, 3, 3)))]))
    with pytest.raises(FileFormatError, match="missing from the file: bn/scale"):
        caffe.load_weights(net, partial, strict=True)
    bad_bn = write(tmp_path / "b.caffemodel", v2_layer("bn", "BatchNorm", [blob(np.ones(4))]))
    with pytest.raises(FileFormatError, match="BatchNorm layer 'bn' has 1 blobs, expected 3"):
        caffe.load_weights(net, bad_bn)
    both = tmp_path / "both.caffemodel"
    both.write_bytes(v2_layer("a", "ReLU", []) + v1_layer("b", 18, []))
    with pytest.raises(FileFormatError, match="both V1"):
        caffe.read_caffemodel(both)


def test_weights_need_shapes(tmp_path):
    net = quiet(caffe.load_net, 'input: "x" '
                'layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
                'convolution_param { num_output: 2 kernel_size: 1 } }')
    path = write(tmp_path / "c.caffemodel", v2_layer("c", "Convolution", []))
    with pytest.raises(StateError, match=r"input shapes are unknown for \['x'\]"):
        caffe.load_weights(net, path)
    net.setup(x=(1, 3, 4, 4))
    assert caffe.load_weights(net, path).missing == ["c/weight", "c/bias"]
    assert os.path.getsize(path) > 0


def test_net_built_by_hand_takes_batchnorm_and_its_scale(tmp_path):
    from convnet import Net, layers
    net = Net("hand")
    net.add(layers.Convolution(num_output=4, kernel_size=1, bias_term=False, name="conv"),
            bottom=["x"], top=["c"])
    net.add(layers.BatchNorm(name="bn"), bottom=["c"], top=["b"])
    net.setup(x=(1, 2, 3, 3))
    rng = np.random.default_rng(4)
    gamma, beta, mean = rng.standard_normal(4), rng.standard_normal(4), rng.standard_normal(4)
    path = write(tmp_path / "h.caffemodel",
                 v2_layer("conv", "Convolution", [blob(np.ones((4, 2, 1, 1)))]),
                 v2_layer("bn", "BatchNorm", [blob(mean * 2), blob(np.full(4, 2.0)),
                                              blob(np.array([2.0]))]),
                 v2_layer("scale_bn", "Scale", [blob(gamma), blob(beta)]))
    report = caffe.load_weights(net, path, strict=True)
    assert report.skipped == []
    bn = net.layer("bn")
    np.testing.assert_allclose(bn.params[0].data, gamma, rtol=1e-6)
    np.testing.assert_allclose(bn.params[1].data, beta, rtol=1e-6)
    np.testing.assert_allclose(bn.buffers["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(bn.buffers["var"], np.ones(4), rtol=1e-6)
    caffe.save_caffemodel(net, tmp_path / "out.caffemodel")
    written = caffe.read_caffemodel(tmp_path / "out.caffemodel")
    assert [(x.name, x.type, len(x.blobs)) for x in written] == [
        ("conv", "Convolution", 1), ("bn", "BatchNorm", 3), ("bn_scale", "Scale", 2)]
    again = Net("hand")
    again.add(layers.Convolution(num_output=4, kernel_size=1, bias_term=False, name="conv"),
              bottom=["x"], top=["c"])
    again.add(layers.BatchNorm(name="bn"), bottom=["c"], top=["b"])
    again.setup(x=(1, 2, 3, 3))
    caffe.load_weights(again, tmp_path / "out.caffemodel", strict=True)
    np.testing.assert_allclose(again.layer("bn").params[0].data, gamma, rtol=1e-6)
