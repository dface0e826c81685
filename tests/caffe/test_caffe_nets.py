"""The public segmentation architectures as Caffe definitions (written for these tests at
narrow widths): DeconvNet (V1), FCN-8s (V2, pad 100 + Crop), DeepLab v2 (dilation, ASPP,
Interp) and SegNet (BN, Upsample). They load, give the shapes Caffe gives, train, and match
the same network built through the layer API; in-place layers equal the out-of-place net."""

import os
import warnings

import numpy as np
import pytest

pytest.importorskip("google.protobuf")

import convnet  # noqa: E402
from convnet import Net, SGDSolver, caffe, layers  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def load(name, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", caffe.CaffeLoadNote)
        return caffe.load_net(os.path.join(FIXTURES, name), **kwargs)


def inputs(shapes, seed=0, classes=5):
    rng = np.random.default_rng(seed)
    return {k: (rng.integers(0, classes, s).astype(np.float32) if k == "label"
                else rng.standard_normal(s).astype(np.float32)) for k, s in shapes.items()}


# Caffe's sizes, by its formulas: conv (H + 2p - d(k-1) - 1)/s + 1, pooling ceil,
# deconvolution s(H-1) + k - 2p, Interp zoom H + (H-1)(z-1) / shrink (H-1)/s + 1
SHAPES = {
    "deconvnet_v1.prototxt": ("TEST", {"data": (1, 3, 64, 64)}, {
        "pool5": (1, 32, 2, 2), "pool5_mask": (1, 32, 2, 2), "fc6": (1, 64, 1, 1),
        "fc6-deconv": (1, 32, 2, 2), "unpool5": (1, 32, 4, 4), "unpool1": (1, 8, 64, 64),
        "seg-score": (1, 5, 64, 64)}),
    "fcn8s_v2.prototxt": ("TEST", {"data": (1, 3, 32, 32)}, {
        "conv1_1": (1, 8, 230, 230), "pool1": (1, 8, 115, 115), "pool2": (1, 16, 58, 58),
        "pool3": (1, 16, 29, 29), "pool4": (1, 32, 15, 15), "pool5": (1, 32, 8, 8),
        "fc6": (1, 64, 2, 2), "upscore2": (1, 5, 6, 6), "score_pool4c": (1, 5, 6, 6),
        "upscore_pool4": (1, 5, 14, 14), "score_pool3c": (1, 5, 14, 14),
        "upscore8": (1, 5, 120, 120), "score": (1, 5, 32, 32)}),
    "deeplab_v2.prototxt": ("TRAIN", {"data": (2, 3, 41, 41), "label": (2, 1, 41, 41)}, {
        "pool1": (2, 8, 21, 21), "pool2": (2, 8, 11, 11), "pool3": (2, 16, 6, 6),
        "pool4": (2, 16, 6, 6), "conv5_3": (2, 16, 6, 6), "pool5": (2, 16, 6, 6),
        "fc6_4": (2, 32, 6, 6), "fc8_voc12": (2, 5, 6, 6), "label_shrink": (2, 1, 6, 6)}),
    "segnet.prototxt": ("TRAIN", {"data": (2, 3, 32, 40), "label": (2, 1, 32, 40)}, {
        "pool1": (2, 8, 16, 20), "pool3": (2, 8, 4, 5), "pool4": (2, 8, 2, 3),
        "upsample4": (2, 8, 4, 5), "upsample1": (2, 8, 32, 40),
        "conv_classifier": (2, 5, 32, 40)}),
}


LR = {"fcn8s_v2.prototxt": 1e-4, "deconvnet_v1.prototxt": 0.05}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_forward_gives_caffe_shapes_and_training_lowers_the_loss(name):
    phase, shapes, expected = SHAPES[name]
    convnet.seed(0)                 # fillers and Dropout's streams
    net = load(name, phase=phase)
    batch = inputs(shapes)
    if phase == "TEST":
        net.forward(**batch)
        for blob, shape in expected.items():
            assert net.blobs[blob].shape == shape, blob
        net = load(name, phase="TRAIN")
        batch["label"] = inputs({"label": (shapes["data"][0], 1) + shapes["data"][2:]})["label"]
    def test_loss():                # Dropout off: the loss of the weights, not of the noise
        net.eval()
        value = net.forward(**batch)["loss"]
        net.train()
        return value

    before = test_loss()
    solver = SGDSolver(net, base_lr=LR.get(name, 0.01), momentum=0.9)
    losses = [solver.step(**batch) for _ in range(4)]
    if phase == "TRAIN":
        for blob, shape in expected.items():
            assert net.blobs[blob].shape == shape, blob
    assert np.all(np.isfinite(losses)) and test_loss() < before


def test_deeplab_test_phase_interp_and_matwrite_left_out():
    net = load("deeplab_v2.prototxt")
    assert net.outputs == ["fc8_interp"]
    assert [x[0] for x in net.caffe.left_out] == ["fc8_mat"]
    out = net.forward(data=np.zeros((1, 3, 41, 41), np.float32),
                      label=np.zeros((1, 1, 41, 41), np.float32),
                      data_dim=np.zeros((1, 1, 1, 2), np.float32))
    assert out["fc8_interp"].shape == (1, 5, 41, 41)       # 6 + 5 * 7
    assert [net.layer(f"fc6_{i}").dilation for i in range(1, 5)] == [
        (6, 6), (12, 12), (18, 18), (24, 24)]
    assert net.layer("conv5_1").dilation == (2, 2)


@pytest.mark.skipif(not hasattr(layers, "Softmax"), reason="needs convnet.layers.Softmax")
def test_segnet_test_phase_softmax():
    net = load("segnet.prototxt")
    out = net.forward(data=np.zeros((1, 3, 32, 40), np.float32))
    np.testing.assert_allclose(out["prob"].sum(axis=1), 1.0, rtol=1e-5)


def hand_built_deconvnet():
    """The DeconvNet fixture through the layer API, every top a new blob (no in-place)."""
    W = {1: 8, 2: 16, 3: 16, 4: 32, 5: 32}
    N = {1: 2, 2: 2, 3: 3, 4: 3, 5: 3}
    net = Net("hand")
    spec = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]
    last = ["data"]

    def conv(name, n, k=3, pad=1, cls=layers.Convolution, bn=True):
        net.add(cls(num_output=n, kernel_size=k, pad=pad, name=name, param=spec,
                    weight_filler=dict(type="gaussian", std=0.1)), bottom=last, top=[name])
        last[0] = name
        if bn:
            bn_name = {"fc6-deconv": "fc6-deconv"}.get(name, name[4:] if name.startswith(
                "conv") else name)
            bn_name = name if name.startswith("fc") else bn_name
            suffix = (bn_name if name.startswith("fc") else
                      (name[4:] if name.startswith("conv") else name[6:] + "_d"))
            net.add(layers.BatchNorm(eps=1e-9, use_global_stats=True, name=f"bn{suffix}",
                                     scale_filler=1.0, bias_filler=0.001),
                    bottom=last, top=[f"{name}_bn"])
            net.add(layers.ReLU(name=f"relu{suffix}"), bottom=[f"{name}_bn"],
                    top=[f"{name}_relu"])
            last[0] = f"{name}_relu"

    for s in range(1, 6):
        for i in range(1, N[s] + 1):
            conv(f"conv{s}_{i}", W[s])
        net.add(layers.Pooling(kernel_size=2, stride=2, return_mask=True, name=f"pool{s}"),
                bottom=last, top=[f"pool{s}", f"pool{s}_mask"])
        last[0] = f"pool{s}"
    conv("fc6", 64, k=2, pad=0)
    conv("fc7", 64, k=1, pad=0)
    conv("fc6-deconv", 32, k=2, pad=0, cls=layers.Deconvolution)
    size = {5: 4, 4: 8, 3: 16, 2: 32, 1: 64}
    for s in range(5, 0, -1):
        net.add(layers.Unpooling(kernel_size=2, stride=2, out_size=size[s], name=f"unpool{s}"),
                bottom=[last[0], f"pool{s}_mask"], top=[f"unpool{s}"])
        last[0] = f"unpool{s}"
        for i in range(N[s], 0, -1):
            conv(f"deconv{s}_{i}", W[s - 1] if (i == 1 and s > 1) else W[s],
                 cls=layers.Deconvolution)
    conv("seg-score", 5, k=1, pad=0, cls=layers.Deconvolution, bn=False)
    net.add(layers.SoftmaxWithLoss(ignore_label=255, name="loss"),
            bottom=["seg-score", "label"], top=["loss"])
    return net


def test_in_place_deconvnet_equals_the_layer_api_net_out_of_place():
    loaded = load("deconvnet_v1.prototxt", phase="TRAIN", dtype=np.float64)
    hand = hand_built_deconvnet()
    for layer in hand.layers:
        layer.dtype = np.dtype(np.float64)
    shapes = {"data": (1, 3, 64, 64), "label": (1, 1, 64, 64)}
    loaded.setup(**shapes)
    hand.setup(**shapes)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in hand.layers]
    # every BN and ReLU of the file runs in place, on Caffe's blob names
    assert loaded.caffe.aliases == {}
    assert all(layer.in_place for layer in loaded.layers
               if layer.type_name in ("BatchNorm", "ReLU"))
    rng = np.random.default_rng(3)
    arrays = {k: (np.abs(rng.standard_normal(v.shape)) + 0.5 if k.endswith("var") else
                  rng.standard_normal(v.shape) * (0.1 if "weight" in k else 0.2) +
                  (1.0 if k.endswith("/scale") else 0.0))
              for k, v in hand.state_arrays().items()}
    hand.load_arrays(arrays, "test")
    loaded.load_arrays(arrays, "test")
    batch = inputs(shapes, seed=4)
    out_hand = hand.forward(**batch)
    out_loaded = loaded.forward(**batch)
    # equal up to BLAS rounding (buffers of other alignment may take other kernels)
    assert out_loaded["loss"] == pytest.approx(out_hand["loss"], rel=1e-10)
    scale = np.abs(hand.blobs["seg-score"]).max()
    np.testing.assert_allclose(loaded.blobs["seg-score"], hand.blobs["seg-score"], rtol=1e-9,
                               atol=1e-12 * scale)
    hand.backward()
    loaded.backward()
    for (key, p), (key2, q) in zip(hand.named_params(), loaded.named_params()):
        assert key == key2
        np.testing.assert_allclose(q.diff, p.diff, rtol=1e-8,
                                   atol=1e-10 * np.abs(p.diff).max(), err_msg=key)


def test_in_place_relu_after_a_shared_blob_keeps_caffe_semantics():
    # conv's top is read by 'branch' before 'relu' rewrites it in place: Caffe gives 'branch'
    # the value before the ReLU (its automatic Split); the loader renames the ReLU's top
    net = caffe.load_net("""
input: "x" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 4
layer { name: "branch" type: "Eltwise" bottom: "x" bottom: "x" top: "twice" }
layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }
layer { name: "sum" type: "Eltwise" bottom: "x" bottom: "twice" top: "out" }
""")
    x = np.array([[[[-1.0, 2.0, -3.0, 4.0]]]], np.float32)
    out = net.forward(x=x)
    np.testing.assert_array_equal(out["out"], np.maximum(x, 0) + 2 * x)
    assert net.caffe.aliases == {"x/relu": "x"}


@pytest.mark.skipif(not hasattr(layers, "Scale"), reason="needs convnet.layers.Scale")
def test_fcn_standalone_scale_layers():
    net = caffe.load_net("""
input: "x" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4
layer { name: "scale_pool4" type: "Scale" bottom: "x" top: "scaled" param { lr_mult: 0 }
  scale_param { filler { type: "constant" value: 0.01 } } }
""")
    x = np.ones((1, 3, 4, 4), np.float32)
    np.testing.assert_allclose(net.forward(x=x)["scaled"], 0.01 * x, rtol=1e-6)
    assert net.layer("scale_pool4").params[0].lr_mult == 0


@pytest.mark.skipif(not all(hasattr(layers, n) for n in ("Softmax", "InnerProduct", "Reshape",
                                                         "Split")),
                    reason="needs Softmax, InnerProduct, Reshape and Split")
def test_classifier_layers():
    net = caffe.load_net("""
input: "x" input_dim: 2 input_dim: 3 input_dim: 2 input_dim: 2
layer { name: "split" type: "Split" bottom: "x" top: "x1" top: "x2" }
layer { name: "ip" type: "InnerProduct" bottom: "x1" top: "ip"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
layer { name: "reshape" type: "Reshape" bottom: "x2" top: "r"
  reshape_param { shape { dim: 0 dim: -1 } } }
""")
    out = net.forward(x=np.random.default_rng(0).standard_normal((2, 3, 2, 2)))
    assert out["prob"].shape == (2, 4) and out["r"].shape == (2, 12)
    np.testing.assert_allclose(out["prob"].sum(1), 1.0, rtol=1e-5)
