"""ONNX export (opset 22) checked with onnxruntime to 1e-4: the default segmentation net, a
DeconvNet and an FCN with Crop and bilinear Deconvolution, and each exported layer type in
its awkward cases (ceil-mode pooling with padding, masks, align-corners, crops)."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from convnet import Net, layers  # noqa: E402
from convnet import onnx as cx  # noqa: E402
from convnet.errors import ConfigError, StateError  # noqa: E402
from convnet.layers import Layer  # noqa: E402
from convnet.models import deconvnet  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
from conftest import CONVNET_PATH  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def randomise_statistics(net, seed=0):
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if "mean" in layer.buffers:
            c = layer.buffers["mean"].shape
            layer.buffers["mean"][...] = 0.1 * rng.standard_normal(c)
            layer.buffers["var"][...] = rng.uniform(0.5, 2.0, c)


def compare(net, inputs, tmp_path=None, rtol=1e-4):
    """Export, run with onnxruntime and compare every graph output with the Net's."""
    net.eval()
    expected = net.forward(**inputs)
    path = None if tmp_path is None else tmp_path / "net.onnx"
    model = cx.export(net, path)
    assert model.opset_import[0].version == 22
    if path is not None:
        model = onnx.load(str(path))
    got = cx.run(model, inputs)
    outputs = [o.name for o in model.graph.output]
    for name in outputs:
        want = np.asarray(net.blobs[name])
        scale = max(float(np.abs(want).max()), 1e-3)
        np.testing.assert_allclose(got[name], want, rtol=rtol, atol=rtol * scale, err_msg=name)
    return expected, got, model


def test_default_segmentation_net(tmp_path):
    net = deconvnet(5, width=8)
    net.setup(data=(2, 3, 32, 32), label=(2, 32, 32))
    randomise_statistics(net)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    _, got, model = compare(net, {"data": x, "label": np.zeros((2, 32, 32), np.int64)},
                            tmp_path)
    assert [i.name for i in model.graph.input] == ["data"]          # the label is dropped
    assert [o.name for o in model.graph.output] == ["score"]       # the loss is left out
    ops = {n.op_type for n in model.graph.node}
    assert {"MaxPool", "MaxUnpool", "BatchNormalization", "Conv", "Relu"} <= ops


def test_deconvnet_definition():
    from convnet import caffe
    net = caffe.load_net(os.path.join(FIXTURES, "deconvnet_v1.prototxt"))
    randomise_statistics(net, 2)
    x = np.random.default_rng(3).standard_normal((1, 3, 64, 64)).astype(np.float32)
    compare(net, {"data": x})


def test_fcn_with_crop_and_bilinear_deconvolution():
    from convnet import caffe
    net = caffe.load_net(os.path.join(FIXTURES, "fcn8s_v2.prototxt"))
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)
    _, _, model = compare(net, {"data": x})
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Slice") == 3 and ops.count("ConvTranspose") == 3


def test_pooling_masks_interp_and_combinations():
    net = Net("ops")
    net.add(layers.Convolution(num_output=4, kernel_size=3, pad=2, dilation=2, name="conv"),
            bottom=["x"], top=["conv"])
    net.add(layers.Pooling(kernel_size=3, stride=2, pad=1, return_mask=True, name="maxpool"),
            bottom=["conv"], top=["pooled", "mask"])
    net.add(layers.Pooling(kernel_size=3, stride=2, pad=1, pool="AVE", name="avepool"),
            bottom=["conv"], top=["ave"])
    net.add(layers.Pooling(kernel_size=2, stride=2, pool="AVE", name="ave_nopad"),
            bottom=["conv"], top=["ave2"])
    net.add(layers.Pooling(kernel_size=2, stride=2, return_mask=True, name="maxpool2"),
            bottom=["conv"], top=["p2", "mask2"])
    net.add(layers.Pooling(global_pooling=True, pool="AVE", name="gap"), bottom=["conv"],
            top=["gap"])
    net.add(layers.Unpooling(kernel_size=3, stride=2, pad=1, out_size=(9, 11), name="unpool"),
            bottom=["pooled", "mask"], top=["unpooled"])
    net.add(layers.Interp(zoom_factor=2, name="zoom"), bottom=["pooled"], top=["zoom"])
    net.add(layers.Interp(height=7, width=5, align_corners=False, name="half"),
            bottom=["pooled"], top=["half"])
    net.add(layers.Interp(shrink_factor=2, pad_beg=-1, pad_end=-1, name="crop_shrink"),
            bottom=["conv"], top=["shrunk"])
    net.add(layers.Interp(mode="nearest", zoom_factor=3, name="nearest"), bottom=["pooled"],
            top=["nearest"])
    net.add(layers.Interp(name="to_size"), bottom=["pooled", "conv"], top=["to_size"])
    net.add(layers.Eltwise("SUM", coeff=[0.5, -2.0], name="sum"),
            bottom=["unpooled", "conv"], top=["sum"])
    net.add(layers.Eltwise("PROD", name="prod"), bottom=["sum", "conv", "unpooled"],
            top=["prod"])
    net.add(layers.Eltwise("MAX", name="max"), bottom=["sum", "prod"], top=["max"])
    net.add(layers.ReLU(negative_slope=0.2, name="leaky"), bottom=["max"], top=["max"])
    net.add(layers.Concat(axis=1, name="cat"), bottom=["max", "to_size"], top=["cat"])
    net.add(layers.Crop(axis=2, offset=(1, 2), name="crop"), bottom=["cat", "ave"],
            top=["crop"])
    net.add(layers.Deconvolution(num_output=4, kernel_size=3, stride=2, pad=1, group=2,
                                 name="up"), bottom=["crop"], top=["up"])
    net.add(layers.Dropout(name="drop"), bottom=["up"], top=["up"])
    net.add(layers.Flatten(axis=2, name="flat"), bottom=["up"], top=["flat"])
    x = np.random.default_rng(5).standard_normal((2, 3, 9, 11)).astype(np.float32)
    net.setup(x=x.shape)
    layer = net.layer("up")
    assert layer.top_shapes[0] == (2, 4, 9, 11)
    expected, got, model = compare(net, {"x": x})
    np.testing.assert_array_equal(got["mask2"], net.blobs["mask2"])    # Caffe's plane index
    assert net.blobs["mask2"].max() > 11                          # not the index in a row
    outputs = {o.name for o in model.graph.output}
    assert {"mask2", "gap", "ave2", "zoom", "half", "shrunk", "nearest", "flat"} <= outputs


def test_segnet_with_odd_sizes():
    from convnet import caffe
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", caffe.CaffeLoadNote)
        net = caffe.load_net(os.path.join(FIXTURES, "segnet.prototxt"), phase="TRAIN")
    net.setup(data=(2, 3, 32, 40), label=(2, 1, 32, 40))
    randomise_statistics(net, 7)
    x = np.random.default_rng(8).standard_normal((2, 3, 32, 40)).astype(np.float32)
    compare(net, {"data": x, "label": np.zeros((2, 1, 32, 40), np.float32)})
    assert net.blobs["pool4"].shape[2:] == (2, 3)          # 4 x 5 pooled with ceil
    assert net.blobs["upsample4"].shape[2:] == (4, 5)      # MaxUnpool to an odd size


def test_pooling_output_padding_deconvolution():
    net = Net("op")
    net.add(layers.Deconvolution(num_output=3, kernel_size=3, stride=3, name="up"),
            bottom=["x"], top=["up"])
    net.add(layers.Pooling(kernel_size=2, stride=2, name="p"), bottom=["up"], top=["p"])
    x = np.random.default_rng(6).standard_normal((1, 2, 5, 3)).astype(np.float32)
    compare(net, {"x": x})
    assert net.blobs["p"].shape == (1, 3, 8, 5)      # ceil: 15 x 9 -> 8 x 5


class Opaque(Layer):
    def _reshape(self, shapes):
        return shapes[0]

    def _forward(self, bottoms):
        return [bottoms[0]]


def test_export_errors():
    net = Net()
    net.add(layers.ReLU(name="r"), bottom=["x"], top=["y"])
    with pytest.raises(StateError, match="not set up"):
        cx.export(net)
    net.setup(x=(1, 2))
    with pytest.raises(ConfigError, match="opset must be >= 19"):
        cx.export(net, opset=13)
    other = Net()
    other.add(Opaque(name="odd"), bottom=["x"], top=["y"])
    with pytest.raises(ConfigError, match="Opaque 'odd': no ONNX export.*Convolution"):
        cx.export(other, input_shapes={"x": (1, 2)})
    bn = Net()
    bn.add(layers.BatchNorm(use_global_stats=False, name="bn"), bottom=["x"], top=["y"])
    with pytest.raises(ConfigError, match="use_global_stats=False"):
        cx.export(bn, input_shapes={"x": (2, 3)})


def test_net_method(tmp_path):
    net = Net()
    net.add(layers.ReLU(name="r"), bottom=["x"], top=["y"])
    net.setup(x=(1, 3))
    net.export_onnx(tmp_path / "r.onnx")
    out = cx.run(str(tmp_path / "r.onnx"), {"x": np.array([[-1.0, 0.0, 2.0]], np.float32)})
    np.testing.assert_array_equal(out["y"], [[0.0, 0.0, 2.0]])


def test_missing_onnx_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['onnx'] = None\n"
            "try:\n    import convnet.onnx\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=str(tmp_path),
                         env={**os.environ, "PYTHONPATH": CONVNET_PATH})
    assert 'pip install ".[onnx]"' in out.stdout


def test_missing_protobuf_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['google.protobuf'] = None\n"
            "import convnet, convnet.layers\n"
            "try:\n    import convnet.caffe\nexcept ImportError as e:\n    print(e)")
    with warnings.catch_warnings():
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, cwd=str(tmp_path),
                             env={**os.environ, "PYTHONPATH": CONVNET_PATH})
    assert 'pip install ".[caffe]"' in out.stdout, out.stderr


@pytest.mark.parametrize("h,k,s,p,pool", [
    (2, 3, 2, 2, "MAX"), (2, 3, 2, 2, "AVE"), (7, 3, 3, 2, "MAX"), (7, 3, 3, 2, "AVE"),
    (6, 2, 2, 1, "AVE"), (5, 4, 3, 3, "AVE"), (5, 2, 2, 0, "MAX")])
def test_ceil_pooling_edges_agree(h, k, s, p, pool):
    # windows that would start in the padding are dropped (Caffe's rule with pad > 0); AVE
    # divides by the window clipped to the padded extent
    net = Net()
    net.add(layers.Pooling(kernel_size=k, stride=s, pad=p, pool=pool, name="p"),
            bottom=["x"], top=["y"])
    x = np.random.default_rng(h * k + s).standard_normal((1, 2, h, h + 1)).astype(np.float32)
    compare(net, {"x": x})
