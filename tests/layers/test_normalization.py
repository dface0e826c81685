"""BatchNorm: train / test forward and moving averages vs a naive reference and PyTorch,
gradients through the batch statistics, param-diff accumulation, and bad input."""

import numpy as np
import pytest

import convnet
from convnet.errors import ConfigError, ShapeError
from convnet.layers import BatchNorm
from convnet.testing import check_gradients
from conftest import assert_close
from reference import normalization as ref


def bn_config(seed):
    """Random (N, C) or (N, C, H, W) bottom, eps, fraction, affine values and running stats."""
    r = np.random.default_rng(seed)
    n, c = int(r.integers(1, 4)), int(r.integers(1, 5))
    if seed % 3 == 0:
        shape = (max(n, 2), c)
    else:
        shape = (n, c, int(r.integers(1, 5)), int(r.integers(2, 6)))
    x = r.standard_normal(shape) * r.uniform(0.5, 3.0) + r.uniform(-2, 2)
    return dict(
        x=x,
        eps=float(r.choice([1e-5, 1e-3, 0.1])),
        fraction=float(r.choice([0.0, 0.5, 0.9, 0.999, 1.0])),
        affine=bool(seed % 4 != 1),
        scale=r.uniform(0.5, 2.0, c) * r.choice([-1, 1], c),
        bias=r.standard_normal(c),
        running_mean=r.standard_normal(c),
        running_var=r.uniform(0.5, 2.0, c),
    )


def make_bn(cfg, dtype, **kwargs):
    bn = BatchNorm(eps=cfg["eps"], moving_average_fraction=cfg["fraction"],
                   affine=cfg["affine"], dtype=dtype, **kwargs)
    bn.setup(cfg["x"].shape)
    if cfg["affine"]:
        bn.params[0].data[...] = cfg["scale"]
        bn.params[1].data[...] = cfg["bias"]
    bn.buffers["mean"][...] = cfg["running_mean"]
    bn.buffers["var"][...] = cfg["running_var"]
    return bn


def affine(cfg):
    return (cfg["scale"], cfg["bias"]) if cfg["affine"] else (None, None)


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_batch_norm_matches_reference_forward_backward_and_moving_averages(seed, phase, dtype):
    cfg = bn_config(seed)
    bn = make_bn(cfg, dtype)
    bn.train(phase == "TRAIN")
    batch = phase == "TRAIN"
    x = cfg["x"].astype(dtype)
    scale, bias = affine(cfg)
    y = bn.forward(x)
    want_y, want_mean, want_var = ref.batch_norm_forward(
        x, scale, bias, cfg["running_mean"], cfg["running_var"], cfg["eps"], cfg["fraction"],
        batch)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, want_y, dtype, scale=10)
    assert_close(bn.buffers["mean"], want_mean, dtype)
    assert_close(bn.buffers["var"], want_var, dtype)

    dy = np.random.default_rng(seed + 50).standard_normal(x.shape).astype(dtype)
    dx = bn.backward(dy)
    want_dx, want_dscale, want_dbias = ref.batch_norm_backward(
        dy, x, scale, cfg["running_mean"], cfg["running_var"], cfg["eps"], batch)
    # gradients through the batch statistics cancel terms; tolerance scales with 1/sigma
    assert_close(dx, want_dx, dtype, scale=100)
    if cfg["affine"]:
        assert_close(bn.params[0].diff, want_dscale, dtype, scale=100)
        assert_close(bn.params[1].diff, want_dbias, dtype, scale=100)


@pytest.mark.parametrize("seed", range(12))
def test_batch_norm_train_gradient_through_batch_statistics_matches_finite_differences(seed):
    cfg = bn_config(seed)
    bn = make_bn(cfg, np.float64)
    check_gradients(bn, cfg["x"], exhaustive=cfg["x"].size <= 40)


@pytest.mark.parametrize("seed", range(0, 12, 2))
def test_batch_norm_global_stats_gradient_matches_finite_differences(seed):
    cfg = bn_config(seed)
    bn = make_bn(cfg, np.float64).eval()
    check_gradients(bn, cfg["x"], exhaustive=cfg["x"].size <= 40)


def test_batch_norm_train_normalises_each_channel():
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 7)) * 5 + 3
    y = BatchNorm(eps=1e-12, dtype=np.float64).forward(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-9)


def test_batch_norm_matches_torch_training_eval_running_stats_and_gradients():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    r = np.random.default_rng(3)
    for shape in [(4, 3, 5, 6), (6, 5)]:
        c = shape[1]
        bn = BatchNorm(eps=1e-4, moving_average_fraction=0.8, dtype=np.float64)
        bn.setup(shape)
        bn.params[0].data[...] = r.uniform(0.5, 2, c)
        bn.params[1].data[...] = r.standard_normal(c)
        t_mean = torch.zeros(c, dtype=torch.float64)
        t_var = torch.ones(c, dtype=torch.float64)
        for step in range(3):
            x = r.standard_normal(shape) * 2 + 1
            dy = r.standard_normal(shape)
            for p in bn.params:
                p.zero_diff()
            y = bn.forward(x)
            dx = bn.backward(dy)
            tx = torch.tensor(x, requires_grad=True)
            tw = torch.tensor(bn.params[0].data, requires_grad=True)
            tb = torch.tensor(bn.params[1].data, requires_grad=True)
            ty = F.batch_norm(tx, t_mean, t_var, tw, tb, training=True, momentum=0.2,
                              eps=1e-4)
            ty.backward(torch.tensor(dy))
            np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(bn.buffers["mean"], t_mean.numpy(), rtol=1e-12)
            np.testing.assert_allclose(bn.buffers["var"], t_var.numpy(), rtol=1e-12)
            np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(bn.params[0].diff, tw.grad.numpy(), rtol=1e-10)
            np.testing.assert_allclose(bn.params[1].diff, tb.grad.numpy(), rtol=1e-10)
        bn.eval()
        x = r.standard_normal(shape)
        dy = r.standard_normal(shape)
        y = bn.forward(x)
        dx = bn.backward(dy)
        tx = torch.tensor(x, requires_grad=True)
        ty = F.batch_norm(tx, t_mean, t_var, torch.tensor(bn.params[0].data),
                          torch.tensor(bn.params[1].data), training=False, eps=1e-4)
        ty.backward(torch.tensor(dy))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(bn.buffers["mean"], t_mean.numpy(), rtol=1e-12)


def test_batch_norm_use_global_stats_overrides_the_phase():
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 4)) + 5
    forced_global = BatchNorm(use_global_stats=True, dtype=np.float64)
    np.testing.assert_allclose(forced_global.forward(x), x / np.sqrt(1 + 1e-5), rtol=1e-12)
    np.testing.assert_array_equal(forced_global.buffers["mean"], 0)
    np.testing.assert_array_equal(forced_global.buffers["var"], 1)

    forced_batch = BatchNorm(use_global_stats=False, moving_average_fraction=0.5,
                             dtype=np.float64).eval()
    y = forced_batch.forward(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-10)
    np.testing.assert_allclose(forced_batch.buffers["mean"], 0.5 * x.mean(axis=(0, 2, 3)),
                               rtol=1e-12)


def test_batch_norm_param_diffs_accumulate_over_two_backward_calls():
    cfg = bn_config(2)
    bn = make_bn(cfg, np.float64)
    dy = np.random.default_rng(1).standard_normal(cfg["x"].shape)
    bn.forward(cfg["x"])
    bn.backward(dy)
    once = [p.diff.copy() for p in bn.params]
    assert all(np.abs(d).sum() > 0 for d in once)
    bn.backward(dy)
    for p, d in zip(bn.params, once):
        np.testing.assert_allclose(p.diff, 2 * d, rtol=1e-12)


def test_batch_norm_propagate_down_false_still_fills_param_diffs():
    cfg = bn_config(4)
    bn = make_bn(cfg, np.float64)
    bn.forward(cfg["x"])
    dy = np.random.default_rng(1).standard_normal(cfg["x"].shape)
    assert bn.backward(dy, propagate_down=[False]) is None
    _, want_dscale, want_dbias = ref.batch_norm_backward(
        dy, cfg["x"], cfg["scale"], None, None, cfg["eps"], True)
    np.testing.assert_allclose(bn.params[0].diff, want_dscale, rtol=1e-10)
    np.testing.assert_allclose(bn.params[1].diff, want_dbias, rtol=1e-10)


def test_batch_norm_params_buffers_and_fillers():
    bn = BatchNorm(scale_filler=dict(type="constant", value=2.0), bias_filler=0.5,
                   param=[dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)])
    assert bn.setup((2, 4, 3, 3)) == (2, 4, 3, 3)
    assert [p.name for p in bn.params] == ["scale", "bias"]
    np.testing.assert_array_equal(bn.params[0].data, 2.0)
    np.testing.assert_array_equal(bn.params[1].data, 0.5)
    assert bn.params[1].lr_mult == 2 and bn.params[1].decay_mult == 0
    assert bn.buffers["mean"].dtype == np.float32 and bn.buffers["mean"].shape == (4,)
    np.testing.assert_array_equal(bn.buffers["var"], 1)
    assert BatchNorm(affine=False).setup((2, 4)) == (2, 4)
    assert BatchNorm(affine=False).params == []
    # a later batch size or spatial size is fine; only the channel count is fixed
    bn.forward(np.ones((5, 4, 2, 7)))


def test_batch_norm_results_are_identical_at_one_and_two_threads():
    cfg = bn_config(6)
    assert cfg["affine"]
    dy = np.random.default_rng(1).standard_normal(cfg["x"].shape)
    before = convnet.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            convnet.set_num_threads(n)
            bn = make_bn(cfg, np.float32)
            results.append([bn.forward(cfg["x"]), bn.backward(dy), bn.params[0].diff.copy(),
                            bn.buffers["var"].copy()])
    finally:
        convnet.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs,match", [
    (dict(eps=0.0), "eps must be > 0.0, got 0.0"),
    (dict(eps=-1e-5), "eps must be > 0.0"),
    (dict(moving_average_fraction=1.5), "moving_average_fraction must be <= 1.0, got 1.5"),
    (dict(moving_average_fraction=-0.1), "moving_average_fraction must be >= 0.0"),
    (dict(use_global_stats="yes"), "use_global_stats must be None, True or False"),
    (dict(affine=None), "affine must be True or False"),
    (dict(scale_filler="nope"), "scale_filler type must be one of"),
])
def test_batch_norm_bad_parameters_raise(kwargs, match):
    with pytest.raises(ConfigError, match="BatchNorm 'bn1': " + match):
        BatchNorm(name="bn1", **kwargs)


def test_batch_norm_bad_shapes_raise():
    bn = BatchNorm(name="bn1")
    with pytest.raises(ShapeError, match="bottom must be \\(N, C, ...\\) with at least 2 axes, "
                                         "got shape 5"):
        bn.setup((5,))
    with pytest.raises(ShapeError, match="at least one channel, got shape 2x0x3"):
        bn.setup((2, 0, 3))
    bn.setup((2, 3, 4, 4))
    with pytest.raises(ShapeError, match="bottom has 5 channels \\(shape 2x5x4x4\\) but the "
                                         "layer was set up for 3"):
        bn.forward(np.ones((2, 5, 4, 4)))
    with pytest.raises(ShapeError, match="more than one value per channel, got bottom shape "
                                         "1x3x1x1"):
        bn.forward(np.ones((1, 3, 1, 1)))
    # with moving averages a single value per channel is fine
    bn.eval().forward(np.ones((1, 3, 1, 1)))


# ---------------------------------------------------------------- in place and fused with ReLU

def _bn_relu_net(in_place_bn, in_place_relu, dtype, slope=0.0):
    net = convnet.Net()
    net.add(convnet.layers.Convolution(6, 3, pad=1, name="conv", dtype=dtype,
                                       bias_filler=dict(type="gaussian", std=1.0)),
            bottom=["data"], top=["conv"])
    bn_top = "conv" if in_place_bn else "bn"
    net.add(BatchNorm(name="bn", dtype=dtype, moving_average_fraction=0.9),
            bottom=["conv"], top=[bn_top])
    relu_top = bn_top if in_place_relu else "relu"
    net.add(convnet.layers.ReLU(name="relu", dtype=dtype, negative_slope=slope),
            bottom=[bn_top], top=[relu_top])
    net.add(convnet.layers.EuclideanLoss(name="loss", dtype=dtype),
            bottom=[relu_top, "target"], top=["loss"])
    for layer in net.layers:
        layer.rng = np.random.default_rng(5)
    return net


def _run(net, x, target, phase="TRAIN"):
    if phase == "TEST":
        net.eval()
    loss = net.forward(data=x, target=target)["loss"]
    net.backward()
    return [loss] + [p.diff.copy() for p in net.learnable_params] + [
        net.layer("bn").buffers["mean"].copy(), net.layer("bn").buffers["var"].copy()]


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_batchnorm_relu_pair_runs_fused_with_results_identical_to_the_pair(phase, dtype, rng):
    x = rng.standard_normal((3, 4, 7, 9)).astype(dtype)
    target = rng.standard_normal((3, 6, 7, 9)).astype(dtype)
    fused = _bn_relu_net(in_place_bn=False, in_place_relu=True, dtype=dtype)
    plain = _bn_relu_net(in_place_bn=False, in_place_relu=False, dtype=dtype)
    assert fused.layer("bn").fused_relu is fused.layer("relu")
    assert plain.layer("bn").fused_relu is None
    for a, b in zip(_run(fused, x, target, phase), _run(plain, x, target, phase)):
        np.testing.assert_array_equal(a, b)


def test_leaky_relu_after_batchnorm_is_not_fused_and_still_correct(rng):
    x = rng.standard_normal((2, 4, 5, 5))
    target = rng.standard_normal((2, 6, 5, 5))
    leaky = _bn_relu_net(in_place_bn=False, in_place_relu=True, dtype=np.float64, slope=0.1)
    plain = _bn_relu_net(in_place_bn=False, in_place_relu=False, dtype=np.float64, slope=0.1)
    assert leaky.layer("bn").fused_relu is None
    for a, b in zip(_run(leaky, x, target), _run(plain, x, target)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_in_place_batchnorm_equals_out_of_place(phase, rng):
    """Caffe definitions (DeconvNet, SegNet, ResNet) run BatchNorm and ReLU in place."""
    x = rng.standard_normal((3, 4, 6, 5))
    target = rng.standard_normal((3, 6, 6, 5))
    in_place = _bn_relu_net(in_place_bn=True, in_place_relu=True, dtype=np.float64)
    out_of_place = _bn_relu_net(in_place_bn=False, in_place_relu=False, dtype=np.float64)
    assert in_place.layer("bn").in_place
    for a, b in zip(_run(in_place, x, target, phase), _run(out_of_place, x, target, phase)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_a_relu_fed_another_array_after_fusion_computes_normally(rng):
    net = _bn_relu_net(in_place_bn=False, in_place_relu=True, dtype=np.float64)
    net.forward(data=rng.standard_normal((2, 4, 5, 5)), target=np.zeros((2, 6, 5, 5)))
    relu = net.layer("relu")
    x = np.array([[-1.0, 2.0, np.nan]])
    np.testing.assert_array_equal(relu.forward(x), [[0.0, 2.0, np.nan]])


def test_batchnorm_and_relu_are_bit_identical_at_one_and_two_threads(rng):
    x = rng.standard_normal((5, 7, 33, 17)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    before = convnet.get_num_threads()
    try:
        for threads in (1, 2):
            convnet.set_num_threads(threads)
            bn = BatchNorm(name="bn")
            y = bn.forward(x)
            dx = bn.backward(dy)
            relu = convnet.layers.ReLU(name="relu")
            z = relu.forward(y)
            dz = relu.backward(dy)
            results.append((y, dx, z, dz, bn.params[0].diff.copy(), bn.buffers["var"].copy()))
    finally:
        convnet.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_statistics_stay_exact_when_the_mean_dwarfs_the_spread(rng):
    x = 1e4 + rng.standard_normal((4, 3, 8, 8))
    bn = BatchNorm(name="bn", dtype=np.float64)
    y = bn.forward(x)
    xr = x.transpose(1, 0, 2, 3).reshape(3, -1)
    expected = (x - xr.mean(1)[None, :, None, None]) / np.sqrt(
        xr.var(1)[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)


def test_only_the_channels_whose_mean_dwarfs_the_spread_take_the_centred_pass(rng):
    # channel 0 needs the second, centred pass of the statistics, channel 1 does not: each
    # is exact in float32 (the one-pass variance of channel 0 would have lost every bit)
    x = rng.standard_normal((4, 2, 8, 8))
    x[:, 0] += 3e3
    bn = BatchNorm(name="bn", dtype=np.float32)
    y = bn.forward(x.astype(np.float32))
    xr = x.transpose(1, 0, 2, 3).reshape(2, -1)
    expected = (x - xr.mean(1)[None, :, None, None]) / np.sqrt(
        xr.var(1)[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=0, atol=2e-3)
    np.testing.assert_allclose(y[:, 1], expected[:, 1], rtol=0, atol=1e-5)


def test_the_fused_train_kernels_refuse_arrays_that_do_not_match():
    from convnet._cpu import normalization as kernels
    x = np.ones((2, 3, 4), np.float32)
    c = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="y's shape"):
        kernels.batch_norm_train_forward(x, c, c, 1e-5, c.copy(), c.copy(),
                                         np.empty((2, 3, 3), np.float32), False)
    with pytest.raises(ValueError, match="per-channel"):
        kernels.batch_norm_train_forward(x, c[:2], c, 1e-5, c.copy(), c.copy(),
                                         np.empty_like(x), False)
    with pytest.raises(ValueError, match="x's shape"):
        kernels.batch_norm_train_backward(x, x, np.empty((0, 0, 0), np.float32), c, c, c, 1e-5,
                                          np.empty((2, 3)), np.empty((2, 3, 5), np.float32))
