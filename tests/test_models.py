"""The model zoo: every model's layout, shapes, gradients and weight files."""

import numpy as np
import pytest

import convnet
from convnet import fillers, models
from convnet.errors import FileFormatError, ShapeError
from convnet.layers import Crop, Deconvolution, Eltwise, Interp, Pooling, Unpooling

NAMES = sorted(models.MODELS)


def batch(h, w, n=2, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 3, h, w)).astype(np.float32),
            rng.integers(0, classes, (n, h, w)))


@pytest.mark.parametrize("name", NAMES)
def test_every_model_scores_each_pixel_and_trains_every_param(name):
    convnet.seed(0)
    net = models.build(name, 3, width=2)
    m = net.multiple
    x, y = batch(2 * m, 3 * m)
    net.forward(data=x, label=y)
    assert net.blobs["score"].shape == (2, 3, 2 * m, 3 * m)
    assert np.isfinite(net.loss) and net.loss > 0
    net.backward()
    for p in net.learnable_params:
        assert np.any(p.diff != 0), p.name


@pytest.mark.parametrize("name", NAMES)
def test_inputs_off_the_multiple_are_a_shape_error_naming_it(name):
    net = models.build(name, 3, width=2)
    if net.multiple == 1:
        pytest.skip("any size")
    x, y = batch(net.multiple + 2, net.multiple)
    with pytest.raises(ShapeError, match=rf"divisible by {net.multiple}"):
        net.forward(data=x, label=y)


def layer_types(net):
    return [type(layer) for layer in net.layers]


def test_fcn8s_fuses_three_scales_with_bilinear_deconvolutions_and_crops():
    net = models.fcn8s(4, width=2)
    assert net.multiple == 32
    ups = {lyr.name: lyr for lyr in net.layers if isinstance(lyr, Deconvolution)}
    assert sorted(ups) == ["upscore2", "upscore8", "upscore_pool4"]
    sums = [lyr for lyr in net.layers if isinstance(lyr, Eltwise)]
    assert [s.name for s in sums] == ["fuse_pool4", "fuse_pool3"]
    assert sum(isinstance(lyr, Crop) for lyr in net.layers) == 3
    x, y = batch(64, 32, classes=4)
    net.forward(data=x, label=y)
    w = ups["upscore8"].weight.data
    assert w.shape == (4, 1, 16, 16)
    np.testing.assert_allclose(w[0, 0], fillers.bilinear_kernel(16, 16), rtol=1e-6)
    assert net.blobs["score_pool4"].shape[2:] == (4, 2)
    assert net.blobs["score_pool3"].shape[2:] == (8, 4)


def test_deeplab_sums_dilated_aspp_branches_and_interpolates_to_the_input():
    net = models.deeplab(3, width=2, rates=(1, 3))
    x, y = batch(20, 12)
    net.forward(data=x, label=y)
    branches = [lyr for lyr in net.layers if lyr.name.startswith("aspp_r")]
    assert [b._raw["dilation"] for b in branches] == [1, 3]
    assert net.blobs["aspp"].shape[2:] == (5, 3)                       # output stride 4
    np.testing.assert_allclose(net.blobs["aspp"], sum(net.blobs[b.name] for b in branches),
                               rtol=1e-5, atol=1e-5)
    assert isinstance(net.layers[-2], Interp) and net.blobs["score"].shape[2:] == (20, 12)
    assert sum(isinstance(lyr, Pooling) for lyr in net.layers) == 2


def test_segnet_mirrors_its_encoder_with_pooling_indices():
    net = models.segnet(3, width=2, levels=3)
    convs = [lyr.name for lyr in net.layers if lyr.name.startswith("conv")
             and not lyr.name.endswith(("_bn", "_relu"))]
    enc = [c for c in convs if not c.endswith("_D")]
    dec = [c for c in convs if c.endswith("_D")]
    assert len(enc) == len(dec) == 7                       # blocks of 2, 2, 3
    assert sum(isinstance(lyr, Unpooling) for lyr in net.layers) == 3
    assert all(lyr.return_mask for lyr in net.layers if isinstance(lyr, Pooling))


@pytest.mark.parametrize("name", NAMES)
def test_from_weights_rebuilds_the_same_model(name, tmp_path):
    convnet.seed(1)
    net = models.build(name, 3, width=2, loss=False)
    m = net.multiple
    x, _ = batch(m * 2, m * 2)
    net.eval()
    net.forward(data=x)
    path = str(tmp_path / "w.npz")
    net.save(path)
    again, classes = models.from_weights(path)
    assert classes == 3 and again.name == name
    again.forward(data=x)
    np.testing.assert_array_equal(again.blobs["score"], net.blobs["score"])


def test_from_weights_explains_a_snapshot(tmp_path):
    net = models.deconvnet(3, width=2)
    x, y = batch(8, 8)
    solver = convnet.AdamSolver(net, base_lr=0.001)
    solver.step(data=x, label=y)
    solver.snapshot(str(tmp_path / "snap.npz"))
    with pytest.raises(FileFormatError, match="solver snapshot .* not a weights file"):
        models.from_weights(str(tmp_path / "snap.npz"))
