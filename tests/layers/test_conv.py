"""Convolution and Deconvolution against naive loops, finite differences and PyTorch."""

import numpy as np
import pytest

import convnet
from convnet import shapes
from convnet.backend import cpu
from convnet.errors import ConfigError, ShapeError, StateError
from convnet.layers import Convolution, Deconvolution
from convnet.testing import check_gradients
from conftest import assert_close
from reference import conv as ref

N_CONFIGS = 32


def _conv_config(seed):
    """Random Convolution settings: odd, non-square, per-axis; every 8th is the 1x1 path."""
    r = np.random.default_rng(1000 + seed)
    group = int(r.choice([1, 1, 2, 3]))
    cfg = dict(n=int(r.integers(1, 4)), c=group * int(r.integers(1, 4)),
               m=group * int(r.integers(1, 4)), group=group,
               kernel=(int(r.integers(1, 4)), int(r.integers(1, 5))),
               stride=(int(r.integers(1, 4)), int(r.integers(1, 3))),
               pad=(int(r.integers(0, 3)), int(r.integers(0, 2))),
               dilation=(int(r.integers(1, 3)), int(r.integers(1, 4))))
    if seed % 8 == 0:
        cfg.update(kernel=(1, 1), stride=(1, 1), pad=(0, 0))
    size = []
    for a in range(2):
        extent = cfg["dilation"][a] * (cfg["kernel"][a] - 1) + 1
        size.append(max(1, extent - 2 * cfg["pad"][a] + int(r.integers(0, 5))))
    cfg["size"] = tuple(size)
    return cfg


def _deconv_config(seed):
    """Random Deconvolution settings, output_padding included."""
    r = np.random.default_rng(2000 + seed)
    while True:
        group = int(r.choice([1, 1, 2, 3]))
        cfg = dict(n=int(r.integers(1, 4)), c=group * int(r.integers(1, 3)),
                   m=group * int(r.integers(1, 4)), group=group,
                   kernel=(int(r.integers(1, 5)), int(r.integers(1, 4))),
                   stride=(int(r.integers(1, 4)), int(r.integers(1, 3))),
                   pad=(int(r.integers(0, 3)), int(r.integers(0, 2))),
                   dilation=(int(r.integers(1, 3)), int(r.integers(1, 3))),
                   size=(int(r.integers(1, 6)), int(r.integers(1, 7))))
        if seed % 8 == 0:
            cfg.update(kernel=(1, 1), stride=(1, 1), pad=(0, 0), dilation=(1, 1))
        cfg["output_padding"] = tuple(int(r.integers(0, max(cfg["stride"][a],
                                                               cfg["dilation"][a])))
                                      for a in range(2))
        out = [shapes.deconv_out(cfg["size"][a], cfg["kernel"][a], cfg["stride"][a],
                                 cfg["pad"][a], cfg["dilation"][a], cfg["output_padding"][a])
               for a in range(2)]
        if min(out) >= 1:
            return cfg


CONV_CONFIGS = [_conv_config(i) for i in range(N_CONFIGS)]
DECONV_CONFIGS = [_deconv_config(i) for i in range(N_CONFIGS)]


def _make_conv(cfg, dtype, **kw):
    layer = Convolution(cfg["m"], cfg["kernel"], stride=cfg["stride"], pad=cfg["pad"],
                        dilation=cfg["dilation"], group=cfg["group"], dtype=dtype,
                        weight_filler="gaussian", bias_filler=dict(type="uniform", min=-1, max=1),
                        **kw)
    layer.rng = np.random.default_rng(7)
    return layer


def _make_deconv(cfg, dtype, **kw):
    layer = Deconvolution(cfg["m"], cfg["kernel"], stride=cfg["stride"], pad=cfg["pad"],
                          dilation=cfg["dilation"], group=cfg["group"],
                          output_padding=cfg["output_padding"], dtype=dtype,
                          weight_filler=dict(type="gaussian", std=0.5),
                          bias_filler=dict(type="uniform", min=-1, max=1), **kw)
    layer.rng = np.random.default_rng(7)
    return layer


def _input(cfg, rng):
    return rng.standard_normal((cfg["n"], cfg["c"]) + cfg["size"])


def _geom(cfg):
    return cfg["stride"], cfg["pad"], cfg["dilation"], cfg["group"]


# ---------------------------------------------------------------- Convolution vs reference

@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=range(N_CONFIGS))
def test_conv_forward_matches_naive_loops(cfg, dtype, rng):
    layer = _make_conv(cfg, dtype)
    x = _input(cfg, rng)
    y = layer.forward(x.astype(dtype))
    assert y.dtype == dtype
    expected = ref.conv2d(x.astype(dtype), layer.weight.data, layer.bias.data, *_geom(cfg))
    assert y.shape == expected.shape
    assert_close(y, expected, dtype, scale=np.sqrt(expected.size))


@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=range(N_CONFIGS))
def test_conv_gradients_match_naive_loops_and_accumulate(cfg, rng):
    layer = _make_conv(cfg, np.float64)
    x = _input(cfg, rng)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx_ref, dw_ref, db_ref = ref.conv2d_grads(x, layer.weight.data, dy, *_geom(cfg))
    start_w = rng.standard_normal(layer.weight.shape)
    start_b = rng.standard_normal(layer.bias.shape)
    layer.weight.diff[...] = start_w
    layer.bias.diff[...] = start_b
    dx = layer.backward(dy)
    dx_again = layer.backward(dy)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(dx, dx_again)
    np.testing.assert_allclose(layer.weight.diff, start_w + 2 * dw_ref, rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(layer.bias.diff, start_b + 2 * db_ref, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("cfg", CONV_CONFIGS[::6], ids=range(0, N_CONFIGS, 6))
def test_conv_gradients_pass_finite_differences(cfg, rng):
    layer = _make_conv(cfg, np.float64)
    check_gradients(layer, _input(cfg, rng), exhaustive=cfg["n"] * cfg["c"] * np.prod(
        cfg["size"]) <= 40)


# ---------------------------------------------------------------- Deconvolution vs reference

@pytest.mark.parametrize("cfg", DECONV_CONFIGS, ids=range(N_CONFIGS))
def test_deconv_forward_matches_scatter_definition(cfg, dtype, rng):
    layer = _make_deconv(cfg, dtype)
    x = _input(cfg, rng)
    y = layer.forward(x.astype(dtype))
    expected = ref.deconv2d(x.astype(dtype), layer.weight.data, layer.bias.data, *_geom(cfg),
                            cfg["output_padding"])
    assert layer.weight.shape == (cfg["c"], cfg["m"] // cfg["group"]) + cfg["kernel"]
    assert y.shape == expected.shape
    assert_close(y, expected, dtype, scale=np.sqrt(expected.size))


@pytest.mark.parametrize("cfg", DECONV_CONFIGS, ids=range(N_CONFIGS))
def test_deconv_gradients_match_scatter_definition_and_accumulate(cfg, rng):
    layer = _make_deconv(cfg, np.float64)
    x = _input(cfg, rng)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx_ref, dw_ref, db_ref = ref.deconv2d_grads(x, layer.weight.data, dy, *_geom(cfg))
    start_w = rng.standard_normal(layer.weight.shape)
    layer.weight.diff[...] = start_w
    dx = layer.backward(dy)
    layer.backward(dy)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.weight.diff, start_w + 2 * dw_ref, rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(layer.bias.diff, 2 * db_ref, rtol=1e-10, atol=1e-11)


SHARED_COL_CASES = [
    # (batch, channels, size, num_output, kernel, stride, pad, group, dilation): batches of
    # CONV_MIN_ITEMS and more, where a Deconvolution's backward shares one im2col per image
    (4, 3, (5, 4), 2, (4, 3), (2, 3), (1, 0), 1, (1, 1)),
    (5, 4, (3, 6), 6, (3, 3), (2, 2), (1, 1), 2, (1, 2)),
    (9, 2, (4, 4), 3, (2, 5), (3, 1), (0, 2), 1, (2, 1)),
]


@pytest.mark.parametrize("case", SHARED_COL_CASES)
def test_deconv_backward_with_shared_columns_matches_the_definition(case, rng, monkeypatch):
    n, c, size, m, kernel, stride, pad, group, dil = case
    # im2col forced: auto runs case 0's backward on space-to-depth (kernel a multiple of the
    # stride, few channels)
    layer = Deconvolution(m, kernel, stride=stride, pad=pad, group=group, dilation=dil,
                          dtype=np.float64, algorithm="im2col")
    x = rng.standard_normal((n, c) + size)
    y = layer.forward(x)
    assert layer.algorithm_used == "im2col"
    dy = rng.standard_normal(y.shape)
    dx_ref, dw_ref, db_ref = ref.deconv2d_grads(x, layer.weight.data, dy, stride, pad, dil,
                                                group)
    start = rng.standard_normal(layer.weight.shape)
    layer.weight.diff[...] = start
    _forbid(monkeypatch, "conv_backward_weight")       # the shared-column kernel runs instead
    _forbid(monkeypatch, "conv_forward")
    dx = layer.backward(dy)
    monkeypatch.undo()
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.weight.diff, start + dw_ref, rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(layer.bias.diff, db_ref, rtol=1e-10, atol=1e-11)
    # one gradient only: the separate kernels
    layer.weight.diff[...] = 0
    layer.backward(dy, propagate_down=[False])
    np.testing.assert_allclose(layer.weight.diff, dw_ref, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("case", SHARED_COL_CASES[:2])
def test_deconv_backward_with_shared_columns_is_bit_identical_at_1_and_2_threads(case, rng):
    n, c, size, m, kernel, stride, pad, group, dil = case
    x = rng.standard_normal((n, c) + size).astype(np.float32)
    results = []
    before = convnet.get_num_threads()
    for threads in (1, 2):
        convnet.set_num_threads(threads)
        try:
            convnet.seed(5)
            layer = Deconvolution(m, kernel, stride=stride, pad=pad, group=group,
                                  dilation=dil, algorithm="im2col")
            y = layer.forward(x)
            dx = layer.backward(np.linspace(-1, 1, y.size, dtype=np.float32).reshape(y.shape))
            results.append((dx, layer.weight.diff.copy()))
        finally:
            convnet.set_num_threads(before)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("cfg", DECONV_CONFIGS[1::6], ids=range(1, N_CONFIGS, 6))
def test_deconv_gradients_pass_finite_differences(cfg, rng):
    check_gradients(_make_deconv(cfg, np.float64), _input(cfg, rng))


# ---------------------------------------------------------------- PyTorch

@pytest.fixture
def torch1():
    """torch on one thread: its OpenMP pool and ours would otherwise spin against each other."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(before)


def _torch_check(layer, x, dy, fn, dtype, **kw):
    torch = pytest.importorskip("torch")
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(layer.weight.data.copy(), requires_grad=True)
    tb = torch.tensor(layer.bias.data.copy(), requires_grad=True)
    out = fn(tx, tw, tb, stride=layer.stride, padding=layer.pad, dilation=layer.dilation,
             groups=layer.group, **kw)
    out.backward(torch.tensor(dy))
    y = layer.forward(x)
    for p in layer.params:
        p.zero_diff()
    dx = layer.backward(dy)
    # float32 sums of a few hundred terms: scale the absolute tolerance with the fan-in
    scale = 1.0 if dtype == np.float64 else 10.0
    assert_close(y, out.detach().numpy(), dtype, scale=scale)
    assert_close(dx, tx.grad.numpy(), dtype, scale=scale)
    assert_close(layer.weight.diff, tw.grad.numpy(), dtype, scale=scale * 10)
    assert_close(layer.bias.diff, tb.grad.numpy(), dtype, scale=scale * 10)


@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=range(N_CONFIGS))
def test_conv_matches_torch(cfg, dtype, rng, torch1):
    torch = torch1
    layer = _make_conv(cfg, dtype)
    x = _input(cfg, rng).astype(dtype)
    dy = rng.standard_normal(layer.setup(x.shape)).astype(dtype)
    _torch_check(layer, x, dy, torch.nn.functional.conv2d, dtype)


@pytest.mark.parametrize("cfg", DECONV_CONFIGS, ids=range(N_CONFIGS))
def test_deconv_matches_torch(cfg, dtype, rng, torch1):
    torch = torch1
    layer = _make_deconv(cfg, dtype)
    x = _input(cfg, rng).astype(dtype)
    dy = rng.standard_normal(layer.setup(x.shape)).astype(dtype)
    _torch_check(layer, x, dy, torch.nn.functional.conv_transpose2d, dtype,
                 output_padding=layer.output_padding)


def test_larger_shapes_match_torch_with_one_and_several_images(dtype, rng, torch1):
    """One image is split into row tiles and channel blocks; five are split by image."""
    torch = torch1
    F = torch.nn.functional
    for n in (1, 5):
        conv = Convolution(16, 3, stride=(1, 2), pad=(1, 2), dilation=(2, 1), group=2,
                           dtype=dtype, bias_filler=dict(type="gaussian", std=1.0))
        x = rng.standard_normal((n, 6, 17, 23)).astype(dtype)
        dy = rng.standard_normal(conv.setup(x.shape)).astype(dtype)
        _torch_check(conv, x, dy, F.conv2d, dtype)
        up = Deconvolution(8, 4, stride=2, pad=1, dtype=dtype,
                           bias_filler=dict(type="gaussian", std=1.0))
        x = rng.standard_normal((n, 6, 9, 11)).astype(dtype)
        dy = rng.standard_normal(up.setup(x.shape)).astype(dtype)
        _torch_check(up, x, dy, F.conv_transpose2d, dtype)


# ---------------------------------------------------------------- duality and structure

@pytest.mark.parametrize("cfg", CONV_CONFIGS[:12], ids=range(12))
def test_deconv_is_the_adjoint_of_conv(cfg, rng):
    """<conv(x), y> = <x, deconv(y)> with the same weight and no bias."""
    conv = _make_conv(cfg, np.float64, bias_term=False)
    x = _input(cfg, rng)
    cx = conv.forward(x)
    y = rng.standard_normal(cx.shape)
    deconv = Deconvolution(cfg["c"], cfg["kernel"], stride=cfg["stride"], pad=cfg["pad"],
                           dilation=cfg["dilation"], group=cfg["group"], bias_term=False,
                           dtype=np.float64)
    deconv.forward(y, output_size=x.shape[2:])
    deconv.weight.data[...] = conv.weight.data
    dy = deconv.forward(y, output_size=x.shape[2:])
    assert dy.shape == x.shape
    np.testing.assert_allclose(np.vdot(cx, y), np.vdot(x, dy), rtol=1e-11)


def test_im2col_twin_matches_definition_and_col2im_is_its_adjoint(rng):
    from convnet._cpu import conv as kernels
    for kernel, stride, pad, dil, size in [((3, 2), (2, 1), (1, 2), (1, 2), (7, 6)),
                                          ((1, 4), (3, 3), (0, 1), (2, 1), (8, 9)),
                                          ((2, 2), (1, 1), (3, 0), (1, 1), (3, 5))]:
        out = tuple(shapes.conv_out(size[a], kernel[a], stride[a], pad[a], dil[a])
                    for a in range(2))
        x = rng.standard_normal((3,) + size)
        col = np.full((3 * kernel[0] * kernel[1], out[0] * out[1]), np.nan)
        args = (*kernel, *stride, *pad, *dil, *out)
        kernels.im2col(x, col, *args)
        np.testing.assert_array_equal(col, ref.im2col(x, kernel, stride, pad, dil, out))
        c = rng.standard_normal(col.shape)
        back = np.full(x.shape, np.nan)
        kernels.col2im(c, back, *args)
        np.testing.assert_allclose(np.vdot(col, c), np.vdot(x, back), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stride_2_rows_gather_and_scatter_exactly(dtype, rng):
    """im2col's stride-2 gather and col2im's paired stride-2 scatter (two taps interleaved)
    for every kernel width, pad and output width, against the definition."""
    from convnet._cpu import conv as kernels
    for kw in range(1, 8):
        for pw in range(0, 4):
            for dw in (1, 2):
                for width in (1, 2, 3, 5, 8, 13):
                    out_w = shapes.conv_out(width, kw, 2, pw, dw)
                    if out_w < 1:
                        continue
                    size, kernel, stride = (3, width), (2, kw), (1, 2)
                    pad, dil, out = (1, pw), (1, dw), (shapes.conv_out(3, 2, 1, 1, 1), out_w)
                    x = rng.standard_normal((2,) + size).astype(dtype)
                    col = np.full((2 * kernel[0] * kw, out[0] * out_w), np.nan, dtype)
                    args = (*kernel, *stride, *pad, *dil, *out)
                    kernels.im2col(x, col, *args)
                    np.testing.assert_array_equal(col, ref.im2col(x, kernel, stride, pad, dil,
                                                                  out))
                    c = rng.standard_normal(col.shape).astype(dtype)
                    back = np.full(x.shape, np.nan, dtype)
                    kernels.col2im(c, back, *args)
                    want = np.zeros(x.shape)
                    for p in range(x.size):
                        unit = np.zeros(x.shape)
                        unit.flat[p] = 1.0
                        want.flat[p] = np.vdot(ref.im2col(unit, kernel, stride, pad, dil, out),
                                               c.astype(np.float64))
                    assert_close(back, want, dtype)


def test_params_follow_caffe_shapes_and_order():
    conv = Convolution(8, (3, 5), group=2)
    conv.setup((2, 6, 9, 9))
    assert conv.params == [conv.weight, conv.bias]
    assert conv.weight.shape == (8, 3, 3, 5) and conv.bias.shape == (8,)
    assert conv.weight.dtype == np.float32
    up = Deconvolution(4, 2, stride=2, group=2, bias_term=False)
    assert up.setup((1, 6, 3, 3)) == (1, 4, 6, 6)
    assert up.params == [up.weight] and up.bias is None
    assert up.weight.shape == (6, 2, 2, 2)


def test_setup_is_idempotent_and_keeps_params():
    conv = Convolution(4, 3, pad=1)
    assert conv.setup((1, 2, 5, 6)) == (1, 4, 5, 6)
    w = conv.weight
    assert conv.setup((1, 2, 5, 6)) == (1, 4, 5, 6)
    assert conv.setup((3, 2, 7, 4)) == (3, 4, 7, 4)
    assert conv.weight is w


def test_deconv_output_size_picks_output_padding_like_torch(rng, torch1):
    torch = torch1
    up = Deconvolution(3, 3, stride=(3, 2), pad=1, dtype=np.float64)
    x = rng.standard_normal((2, 2, 4, 5))
    for size in [(10, 9), (11, 10), (12, 9)]:
        y = up.forward(x, output_size=size)
        assert y.shape == (2, 3) + size
        expected = torch.nn.functional.conv_transpose2d(
            torch.tensor(x), torch.tensor(up.weight.data), torch.tensor(up.bias.data),
            stride=(3, 2), padding=1, output_padding=(size[0] - 10, size[1] - 9))
        np.testing.assert_allclose(y, expected.numpy(), rtol=1e-12, atol=1e-12)
        assert up.backward(np.ones(y.shape)).shape == x.shape
    assert up.forward(x).shape == (2, 3, 10, 9)
    assert up.forward(x, output_size=(2, 3, 11, 9)).shape == (2, 3, 11, 9)


# ---------------------------------------------------------------- doing only needed work

def _forbid(monkeypatch, name):
    def boom(*args, **kwargs):
        raise AssertionError(f"{name} must not run")
    monkeypatch.setattr(cpu, name, boom)


@pytest.mark.parametrize("layer_type", [Convolution, Deconvolution])
def test_propagate_down_false_skips_the_bottom_diff(layer_type, monkeypatch, rng):
    layer = layer_type(4, 3, stride=2, dtype=np.float64)
    y = layer.forward(rng.standard_normal((2, 3, 7, 8)))
    bottom_diff = "conv_backward_data" if layer_type is Convolution else "conv_forward"
    _forbid(monkeypatch, bottom_diff)
    assert layer.backward(np.ones(y.shape), propagate_down=[False]) is None
    assert np.any(layer.weight.diff != 0) and np.any(layer.bias.diff != 0)


@pytest.mark.parametrize("layer_type", [Convolution, Deconvolution])
def test_lr_mult_zero_skips_that_gradient_and_leaves_its_diff(layer_type, monkeypatch, rng):
    layer = layer_type(4, 3, dtype=np.float64, param=[dict(lr_mult=0), dict(lr_mult=0)])
    y = layer.forward(rng.standard_normal((2, 3, 6, 5)))
    layer.weight.diff[...] = 5.0
    layer.bias.diff[...] = 7.0
    _forbid(monkeypatch, "conv_backward_weight")
    _forbid(monkeypatch, "conv_backward_bias")
    dx = layer.backward(np.ones(y.shape))
    assert dx.shape == (2, 3, 6, 5)
    assert np.all(layer.weight.diff == 5.0) and np.all(layer.bias.diff == 7.0)


def test_bias_lr_mult_zero_still_learns_the_weight(rng):
    conv = Convolution(3, 1, dtype=np.float64, param=[dict(lr_mult=1), dict(lr_mult=0)])
    y = conv.forward(rng.standard_normal((1, 2, 3, 3)))
    conv.backward(np.ones(y.shape))
    assert np.any(conv.weight.diff != 0) and np.all(conv.bias.diff == 0)


THREAD_CASES = [
    # (batch, channels, size, num_output, kernel, stride, pad, group, dilation)
    (1, 4, (19, 13), 6, 3, (2, 1), 1, 2, (1, 2)),     # one image: tiles and channel blocks
    (2, 4, (19, 13), 6, 3, (2, 1), 1, 2, (1, 2)),     # few weight blocks: image classes
    (5, 4, (19, 13), 6, 3, (2, 1), 1, 2, (1, 2)),
    (3, 40, (33, 30), 8, 5, (1, 1), 2, 1, (1, 1)),    # many channel blocks and row tiles
    (3, 16, (12, 11), 24, 1, (1, 1), 0, 1, (1, 1)),   # the 1x1 path
    (1, 8, (3, 9), 70, 3, (1, 1), 0, 1, (1, 1)),      # one output row: output-channel blocks
    (1, 96, (9, 9), 192, 1, (1, 1), 0, 1, (1, 1)),    # one image under a large weight:
    (1, 40, (8, 10), 176, 3, (1, 1), 1, 1, (1, 1)),   # output-channel halves (1x1, 3x3)
]


@pytest.mark.parametrize("case", THREAD_CASES, ids=range(len(THREAD_CASES)))
@pytest.mark.parametrize("layer_type", [Convolution, Deconvolution])
def test_one_and_two_threads_are_bit_identical(layer_type, case, rng):
    n, c, size, m, k, s, p, g, d = case
    x = rng.standard_normal((n, c) + size).astype(np.float32)
    results = []
    before = convnet.get_num_threads()
    try:
        for threads in (1, 2):
            convnet.set_num_threads(threads)
            layer = layer_type(m, k, stride=s, pad=p, group=g, dilation=d)
            layer.rng = np.random.default_rng(3)
            y = layer.forward(x)
            dx = layer.backward(np.cos(np.arange(y.size, dtype=np.float32)).reshape(y.shape))
            results.append((y, dx, layer.weight.diff.copy(), layer.bias.diff.copy()))
    finally:
        convnet.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_many_blocks_match_torch(dtype, rng, torch1):
    """Shapes that split into row tiles, channel blocks and image classes."""
    F = torch1.nn.functional
    for n, c, size, m, k, s, p, g, d in THREAD_CASES:
        conv = Convolution(m, k, stride=s, pad=p, group=g, dilation=d, dtype=dtype,
                           bias_filler=dict(type="gaussian", std=1.0))
        x = rng.standard_normal((n, c) + size).astype(dtype)
        dy = rng.standard_normal(conv.setup(x.shape)).astype(dtype)
        _torch_check(conv, x, dy, F.conv2d, dtype)


def test_float32_bottoms_are_converted_for_float64_layer(rng):
    conv = Convolution(2, 3, dtype=np.float64)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    y = conv.forward(x[:, :, :, ::-1])
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, ref.conv2d(x[:, :, :, ::-1].astype(np.float64),
                                             conv.weight.data, conv.bias.data, (1, 1), (0, 0),
                                             (1, 1), 1), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs,match", [
    (dict(num_output=0, kernel_size=3), r"Convolution 'c1': num_output must be >= 1, got 0"),
    (dict(num_output=4, kernel_size=0), r"Convolution 'c1': kernel_size must be >= 1, got 0"),
    (dict(num_output=4, kernel_size=(3, -1)), r"kernel_size must be >= 1, got \(3, -1\)"),
    (dict(num_output=4, kernel_size=3, stride=0), r"stride must be >= 1, got 0"),
    (dict(num_output=4, kernel_size=3, dilation=(1, 0)), r"dilation must be >= 1"),
    (dict(num_output=4, kernel_size=3, pad=-1), r"pad must be >= 0, got -1"),
    (dict(num_output=4, kernel_size=3, group=0), r"group must be >= 1, got 0"),
    (dict(num_output=5, kernel_size=3, group=2),
     r"num_output \(5\) must be divisible by group \(2\)"),
    (dict(num_output=4, kernel_size=2.5), r"kernel_size must be an int or an \(h, w\) pair"),
    (dict(num_output=4, kernel_size=3, bias_term="yes"), r"bias_term must be True or False"),
    (dict(num_output=4, kernel_size=3, weight_filler="nope"), r"weight_filler type must be"),
])
@pytest.mark.parametrize("layer_type", [Convolution, Deconvolution])
def test_bad_parameters_are_named(layer_type, kwargs, match):
    match = match.replace("Convolution", layer_type.__name__)
    with pytest.raises(ConfigError, match=match):
        layer_type(name="c1", **kwargs)


def test_bad_output_padding_is_named():
    with pytest.raises(ConfigError, match=r"Deconvolution 'up1': output_padding \(2\) must be "
                                          r"smaller than stride \(2\) or dilation \(1\)"):
        Deconvolution(4, 4, stride=2, output_padding=2, name="up1")
    with pytest.raises(ConfigError, match=r"output_padding must be >= 0"):
        Deconvolution(4, 4, stride=2, output_padding=-1)
    Deconvolution(4, 3, stride=1, dilation=2, output_padding=1)


def test_unreachable_output_size_lists_the_range(rng):
    up = Deconvolution(2, 4, stride=2, pad=1, name="up")
    x = rng.standard_normal((1, 2, 5, 5))
    with pytest.raises(ShapeError, match=r"Deconvolution 'up': output_size 12x10 is "
                                         r"unreachable from input 5x5: the output height must "
                                         r"be in \[10, 11\], got 12"):
        up.forward(x, output_size=(12, 10))
    with pytest.raises(ShapeError, match=r"width must be in \[10, 11\], got 9"):
        up.forward(x, output_size=(10, 9))
    with pytest.raises(ConfigError, match=r"output_size must be an int or an \(h, w\) pair"):
        up.forward(x, output_size="big")


def test_bad_bottoms_are_named(rng):
    conv = Convolution(4, 3, group=2, name="c")
    with pytest.raises(ShapeError, match=r"Convolution 'c': bottom must be 4-D \(N, C, H, W\), "
                                         r"got shape 2x4x5 \(3-D\)"):
        conv.setup((2, 4, 5))
    with pytest.raises(ShapeError, match=r"input channels \(3\) must be divisible by group "
                                         r"\(2\)"):
        conv.setup((1, 3, 5, 5))
    with pytest.raises(ShapeError, match=r"Convolution 'c': input 2x5 with kernel_size 3, "
                                         r"stride 1, pad 0, dilation 1 gives an empty output "
                                         r"\(0x3\)"):
        conv.setup((1, 4, 2, 5))
    dil = Convolution(4, 3, pad=(0, 1), dilation=(3, 1), name="d")
    with pytest.raises(ShapeError, match=r"input 6x6 with kernel_size 3, stride 1, pad "
                                         r"\(0, 1\), dilation \(3, 1\) gives an empty output"):
        dil.setup((1, 1, 6, 6))
    with pytest.raises(ShapeError, match=r"at least one channel"):
        conv.setup((1, 0, 5, 5))
    up = Deconvolution(2, 3, pad=3, name="u")
    with pytest.raises(ShapeError, match=r"Deconvolution 'u': input 1x1 .* gives an empty "
                                         r"output"):
        up.setup((1, 1, 1, 1))


@pytest.mark.parametrize("layer_type", [Convolution, Deconvolution])
def test_channel_count_change_after_setup_is_named(layer_type):
    layer = layer_type(4, 3, name="c")
    layer.setup((1, 2, 6, 6))
    with pytest.raises(ShapeError, match=rf"{layer_type.__name__} 'c': weight has shape "
                                         r"[0-9x]+ but the bottom needs [0-9x]+"):
        layer.setup((1, 3, 6, 6))
    assert layer.forward(np.ones((1, 2, 6, 6))).shape[1] == 4   # the layer still works


@pytest.mark.parametrize("layer_type", [Convolution, Deconvolution])
def test_backward_before_forward_and_wrong_top_diff_are_named(layer_type, rng):
    layer = layer_type(4, 3, name="c")
    layer.setup((1, 2, 6, 6))
    with pytest.raises(StateError, match=rf"{layer_type.__name__} 'c': backward called before "
                                         r"forward"):
        layer.backward(np.zeros((1, 4, 4, 4)))
    y = layer.forward(rng.standard_normal((1, 2, 6, 6)))
    with pytest.raises(ShapeError, match=rf"top diff 0 must have the top's shape "
                                         rf"{'x'.join(map(str, y.shape))}, got 1x4x3x3"):
        layer.backward(np.zeros((1, 4, 3, 3)))


def test_dimensions_beyond_32_bit_blas_are_refused():
    conv = Convolution(2, 1, name="big")
    with pytest.raises(ShapeError, match=r"Convolution 'big': .* does not fit the 32-bit ints "
                                         r"of BLAS"):
        conv.setup((1, 1, 2 ** 16, 2 ** 16))


@pytest.mark.parametrize("layer_type", [Convolution, Deconvolution])
def test_params_replaced_after_setup_are_refused_not_read_out_of_bounds(layer_type, rng):
    layer = layer_type(4, 3, name="c")
    x = rng.standard_normal((1, 2, 6, 6))
    y = layer.forward(x)
    good = layer.weight.data
    layer.weight.data = np.zeros((2, 2, 2, 2), np.float32)
    with pytest.raises(ShapeError, match=r"'c': weight data must be a C-contiguous float32 "
                                         r"array of shape [0-9x]+, got float32 2x2x2x2"):
        layer.forward(x)
    layer.weight.data = good.astype(np.float64)
    with pytest.raises(ShapeError, match=r"weight data must be a C-contiguous float32"):
        layer.forward(x)
    layer.weight.data = good
    layer.forward(x)
    layer.bias.diff = np.zeros(3, np.float32)
    with pytest.raises(ShapeError, match=r"bias diff must be .* of shape 4, got float32 3"):
        layer.backward(np.ones(y.shape))


def test_empty_batch_gives_empty_outputs():
    conv = Convolution(3, 3, pad=1, dtype=np.float64)
    x = np.zeros((0, 2, 5, 4))
    y = conv.forward(x)
    assert y.shape == (0, 3, 5, 4)
    assert conv.backward(y).shape == x.shape
    assert np.all(conv.weight.diff == 0) and np.all(conv.bias.diff == 0)
