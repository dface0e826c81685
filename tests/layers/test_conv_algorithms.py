"""Every convolution algorithm (im2col, Winograd, direct, kn2row, sub-pixel, space-to-depth)
against the naive
float64 loops,
finite differences and PyTorch, on random configurations of the shapes it applies to; the
auto rule; forced algorithms that do not apply; accuracy on large shapes."""

import numpy as np
import pytest

import convnet
from convnet import shapes
from convnet.errors import ConfigError
from convnet.layers import Convolution, Deconvolution, conv_algorithms
from convnet.testing import check_gradients
from conftest import assert_close
from reference import conv as ref

N_CONFIGS = 16


def _winograd_config(seed):
    """3x3 at stride 1: random pads (also beyond 2: the adjoint then crops), per-axis
    dilation, groups, odd sizes, batches."""
    r = np.random.default_rng(3000 + seed)
    while True:
        group = int(r.choice([1, 1, 2, 3]))
        cfg = dict(n=int(r.integers(1, 4)), c=group * int(r.integers(1, 5)),
                   m=group * int(r.integers(1, 5)), group=group, kernel=(3, 3), stride=(1, 1),
                   pad=(int(r.integers(0, 5)), int(r.integers(0, 4))),
                   dilation=(int(r.integers(1, 4)), int(r.integers(1, 3))),
                   size=(int(r.integers(1, 19)), int(r.integers(1, 14))), output_padding=(0, 0))
        out = [shapes.conv_out(cfg["size"][a], 3, 1, cfg["pad"][a], cfg["dilation"][a])
               for a in range(2)]
        dout = [shapes.deconv_out(cfg["size"][a], 3, 1, cfg["pad"][a], cfg["dilation"][a])
                for a in range(2)]
        if min(out) >= 1 and min(dout) >= 1:
            return cfg


def _subpixel_config(seed):
    """Strided Deconvolutions: kernels smaller and larger than the stride, pads, output
    padding, groups."""
    r = np.random.default_rng(4000 + seed)
    while True:
        group = int(r.choice([1, 1, 2]))
        stride = (int(r.integers(1, 5)), int(r.integers(2, 5)))
        cfg = dict(n=int(r.integers(1, 3)), c=group * int(r.integers(1, 4)),
                   m=group * int(r.integers(1, 4)), group=group,
                   kernel=(int(r.integers(1, 9)), int(r.integers(1, 9))), stride=stride,
                   pad=(int(r.integers(0, 4)), int(r.integers(0, 4))), dilation=(1, 1),
                   size=(int(r.integers(1, 7)), int(r.integers(1, 8))))
        cfg["output_padding"] = tuple(int(r.integers(0, stride[a])) for a in range(2))
        out = [shapes.deconv_out(cfg["size"][a], cfg["kernel"][a], stride[a], cfg["pad"][a], 1,
                                 cfg["output_padding"][a]) for a in range(2)]
        if min(out) >= 1:
            return cfg


def _strided_config(seed):
    """Strided Convolutions: kernels smaller than, equal to and larger than the stride (per
    axis), pads, groups, sizes that leave rows and columns unread."""
    r = np.random.default_rng(7000 + seed)
    while True:
        group = int(r.choice([1, 1, 2]))
        stride = (int(r.integers(1, 5)), int(r.integers(2, 5)))
        kernel = (int(r.integers(1, 9)), int(r.integers(1, 9)))
        cfg = dict(n=int(r.integers(1, 3)), c=group * int(r.integers(1, 4)),
                   m=group * int(r.integers(1, 8)), group=group, kernel=kernel, stride=stride,
                   pad=(int(r.integers(0, kernel[0])), int(r.integers(0, kernel[1]))),
                   dilation=(1, 1), size=(int(r.integers(1, 20)), int(r.integers(1, 20))),
                   output_padding=(0, 0))
        out = [shapes.conv_out(cfg["size"][a], kernel[a], stride[a], cfg["pad"][a], 1)
               for a in range(2)]
        if min(out) >= 1:
            return cfg


def _stride1_config(seed, channels, width):
    """Any kernel at stride 1: 1xk, kx1, even and odd sizes, pads, dilation, groups; up to
    ``channels`` input and output channels per group, rows up to ``width`` wide."""
    r = np.random.default_rng(seed)
    while True:
        group = int(r.choice([1, 1, 2, 3]))
        cfg = dict(n=int(r.integers(1, 4)), c=group * int(r.integers(1, channels[0])),
                   m=group * int(r.integers(1, channels[1])), group=group,
                   kernel=(int(r.integers(1, 6)), int(r.integers(1, 6))), stride=(1, 1),
                   pad=(int(r.integers(0, 4)), int(r.integers(0, 3))),
                   dilation=(int(r.integers(1, 3)), int(r.integers(1, 4))),
                   size=(int(r.integers(1, 15)), int(r.integers(1, width))),
                   output_padding=(0, 0))
        out = [shapes.conv_out(cfg["size"][a], cfg["kernel"][a], 1, cfg["pad"][a],
                               cfg["dilation"][a]) for a in range(2)]
        dout = [shapes.deconv_out(cfg["size"][a], cfg["kernel"][a], 1, cfg["pad"][a],
                                  cfg["dilation"][a]) for a in range(2)]
        if min(out) >= 1 and min(dout) >= 1:
            return cfg


def _kn2row_config(seed):
    return _stride1_config(5000 + seed, (4, 4), 12)


def _direct_config(seed):
    """Channel counts around the register blocks (6 and 4 output channels) and rows around
    the vector steps (8 to 32 columns)."""
    return _stride1_config(6000 + seed, (9, 14), 40)


def _valid_config(c, m, group, kernel, dilation, size, n):
    return dict(n=n, c=c, m=m, group=group, kernel=kernel, stride=(1, 1), pad=(0, 0),
                dilation=dilation, size=size, output_padding=(0, 0))


#: no padding, where the direct loops read x itself: 1x1s whose pixels end inside, at and
#: past the pointwise forward's 96-pixel steps and 768-pixel tasks, and a dilated 3x3
DIRECT_VALID = [_valid_config(5, 7, 1, (1, 1), (1, 1), (10, 10), 2),
                _valid_config(4, 6, 2, (1, 1), (1, 1), (1, 95), 3),
                _valid_config(3, 20, 1, (1, 1), (1, 1), (28, 28), 1),
                _valid_config(6, 9, 1, (3, 3), (2, 1), (9, 12), 2),
                _valid_config(6, 4, 2, (1, 3), (1, 2), (5, 40), 1)]
WINOGRAD = [_winograd_config(i) for i in range(N_CONFIGS)]
DIRECT = [_direct_config(i) for i in range(N_CONFIGS)] + DIRECT_VALID
KN2ROW = [_kn2row_config(i) for i in range(N_CONFIGS)]
SUBPIXEL = [_subpixel_config(i) for i in range(N_CONFIGS)]
STRIDED = [_strided_config(i) for i in range(N_CONFIGS)]
#: (layer type, algorithm, configuration)
CASES = ([("conv", "winograd", c) for c in WINOGRAD] + [("deconv", "winograd", c) for c in WINOGRAD]
         + [("deconv", "subpixel", c) for c in SUBPIXEL]
         + [("conv", "s2d", c) for c in STRIDED] + [("deconv", "s2d", c) for c in SUBPIXEL]
         + [("conv", "kn2row", c) for c in KN2ROW] + [("deconv", "kn2row", c) for c in KN2ROW]
         + [("conv", "direct", c) for c in DIRECT] + [("deconv", "direct", c) for c in DIRECT]
         + [("conv", "im2col", c) for c in WINOGRAD[:6]]
         + [("deconv", "im2col", c) for c in SUBPIXEL[:6]])
IDS = [f"{kind}-{alg}-{i}" for i, (kind, alg, _) in enumerate(CASES)]


def _make(kind, algorithm, cfg, dtype):
    kw = dict(stride=cfg["stride"], pad=cfg["pad"], dilation=cfg["dilation"], group=cfg["group"],
              dtype=dtype, algorithm=algorithm, bias_filler=dict(type="uniform", min=-1, max=1))
    if kind == "conv":
        layer = Convolution(cfg["m"], cfg["kernel"], weight_filler="gaussian", **kw)
    else:
        layer = Deconvolution(cfg["m"], cfg["kernel"], output_padding=cfg["output_padding"],
                              weight_filler=dict(type="gaussian", std=0.5), **kw)
    layer.rng = np.random.default_rng(7)
    return layer


def _reference(kind, layer, x, cfg):
    geom = (cfg["stride"], cfg["pad"], cfg["dilation"], cfg["group"])
    if kind == "conv":
        return ref.conv2d(x, layer.weight.data, layer.bias.data, *geom)
    return ref.deconv2d(x, layer.weight.data, layer.bias.data, *geom, cfg["output_padding"])


def _reference_grads(kind, layer, x, dy, cfg):
    geom = (cfg["stride"], cfg["pad"], cfg["dilation"], cfg["group"])
    fn = ref.conv2d_grads if kind == "conv" else ref.deconv2d_grads
    return fn(x, layer.weight.data, dy, *geom)


def _input(cfg, rng):
    return rng.standard_normal((cfg["n"], cfg["c"]) + cfg["size"])


@pytest.mark.parametrize("kind,algorithm,cfg", CASES, ids=IDS)
def test_forward_matches_naive_loops(kind, algorithm, cfg, dtype, rng):
    layer = _make(kind, algorithm, cfg, dtype)
    x = _input(cfg, rng).astype(dtype)
    y = layer.forward(x)
    assert layer.algorithm_used == algorithm
    expected = _reference(kind, layer, x, cfg)
    assert y.shape == expected.shape
    assert_close(y, expected, dtype, scale=np.sqrt(expected.size))


@pytest.mark.parametrize("kind,algorithm,cfg", CASES, ids=IDS)
def test_gradients_match_naive_loops_and_accumulate(kind, algorithm, cfg, rng):
    layer = _make(kind, algorithm, cfg, np.float64)
    x = _input(cfg, rng)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx_ref, dw_ref, db_ref = _reference_grads(kind, layer, x, dy, cfg)
    start_w = rng.standard_normal(layer.weight.shape)
    layer.weight.diff[...] = start_w
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dx, layer.backward(dy))
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.weight.diff, start_w + 2 * dw_ref, rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(layer.bias.diff, 2 * db_ref, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("kind,algorithm,cfg", CASES[::5], ids=IDS[::5])
def test_gradients_pass_finite_differences(kind, algorithm, cfg, rng):
    check_gradients(_make(kind, algorithm, cfg, np.float64), _input(cfg, rng))


@pytest.mark.parametrize("kind,algorithm,cfg", CASES[::3], ids=IDS[::3])
def test_matches_torch(kind, algorithm, cfg, dtype, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    layer = _make(kind, algorithm, cfg, dtype)
    x = _input(cfg, rng).astype(dtype)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(layer.weight.data.copy(), requires_grad=True)
    tb = torch.tensor(layer.bias.data.copy(), requires_grad=True)
    kw = dict(stride=layer.stride, padding=layer.pad, dilation=layer.dilation,
              groups=layer.group)
    if kind == "conv":
        out = F.conv2d(tx, tw, tb, **kw)
    else:
        out = F.conv_transpose2d(tx, tw, tb, output_padding=cfg["output_padding"], **kw)
    out.backward(torch.tensor(dy))
    scale = 1.0 if dtype == np.float64 else 10.0
    assert_close(y, out.detach().numpy(), dtype, scale=scale)
    assert_close(dx, tx.grad.numpy(), dtype, scale=scale)
    assert_close(layer.weight.diff, tw.grad.numpy(), dtype, scale=scale * 10)


@pytest.mark.parametrize("m,group", [(3, 1), (16, 1), (24, 1), (40, 1), (10, 2), (48, 3)])
def test_direct_weight_gradient_register_blocks(m, group, dtype, rng):
    """Output channels per group that fill 1, 2 or 3 vectors of the weight gradient's register
    block, and counts that leave its last item or vector part empty (zero-padded channels,
    taps past the last): every weight against the float64 loops."""
    cfg = dict(n=2, c=group * 5, m=m, group=group, kernel=(3, 2), stride=(1, 1), pad=(1, 0),
               dilation=(2, 1), size=(9, 13), output_padding=(0, 0))
    layer = _make("conv", "direct", cfg, dtype)
    x = _input(cfg, rng)
    y = layer.forward(x.astype(dtype))
    dy = rng.standard_normal(y.shape)
    layer.backward(dy.astype(dtype))
    _, dw_ref, _ = _reference_grads("conv", layer, x, dy, cfg)
    assert_close(layer.weight.diff, dw_ref, dtype, scale=10.0)
    if dtype == np.float64:
        np.testing.assert_allclose(layer.weight.diff, dw_ref, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("kind,algorithm,cfg",
                         [("conv", "winograd", dict(WINOGRAD[3], n=3, c=12, m=10,
                                                    size=(37, 29), group=1)),
                          ("deconv", "winograd", dict(WINOGRAD[5], n=1, c=9, m=20,
                                                      size=(23, 41), group=1)),
                          ("deconv", "subpixel", dict(SUBPIXEL[2], n=3, c=6, m=5,
                                                      size=(17, 13))),
                          ("conv", "kn2row", dict(KN2ROW[1], n=3, c=6, m=4, size=(19, 23))),
                          ("conv", "direct", dict(DIRECT[2], n=3, c=7, m=11, size=(21, 37),
                                                  group=1)),
                          ("deconv", "direct", dict(DIRECT[5], n=2, c=9, m=5, size=(17, 26),
                                                    group=1)),
                          ("conv", "direct", dict(DIRECT_VALID[2], n=4, size=(41, 43))),
                          ("deconv", "s2d", dict(SUBPIXEL[2], n=3, c=6, m=5, size=(17, 13))),
                          ("conv", "s2d", dict(STRIDED[1], n=3, c=5, m=9, size=(37, 29),
                                               group=1))],
                         ids=["conv-winograd", "deconv-winograd", "deconv-subpixel", "kn2row",
                              "conv-direct", "deconv-direct", "conv-direct-1x1", "deconv-s2d",
                              "conv-s2d"])
def test_one_and_two_threads_are_bit_identical(kind, algorithm, cfg, rng):
    x = _input(cfg, rng).astype(np.float32)
    results = []
    before = convnet.get_num_threads()
    try:
        for threads in (1, 2):
            convnet.set_num_threads(threads)
            layer = _make(kind, algorithm, cfg, np.float32)
            y = layer.forward(x)
            dx = layer.backward(np.cos(np.arange(y.size, dtype=np.float32)).reshape(y.shape))
            results.append((y, dx, layer.weight.diff.copy(), layer.bias.diff.copy()))
    finally:
        convnet.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- large shapes, float32

def _relative_error(actual, expected):
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("algorithm", ["im2col", "winograd", "kn2row", "direct"])
@pytest.mark.parametrize("n,c,m,size,pad,dilation", [
    (1, 512, 512, (10, 9), 1, 1),        # 512 channels (VGG's conv4/conv5)
    (1, 3, 8, (224, 224), 1, 1),         # a 224x224 input
    (2, 64, 64, (30, 34), 2, 2),         # dilated (DeepLab)
], ids=["512ch", "224x224", "dilated"])
def test_float32_stays_within_the_conformance_bound_on_large_shapes(algorithm, n, c, m, size,
                                                                    pad, dilation, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.standard_normal((n, c) + size).astype(np.float32)
    layer = Convolution(m, 3, pad=pad, dilation=dilation, algorithm=algorithm,
                        weight_filler="msra")
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(layer.weight.data, dtype=torch.float64, requires_grad=True)
    out = F.conv2d(tx, tw, torch.tensor(layer.bias.data, dtype=torch.float64), padding=pad,
                   dilation=dilation)
    out.backward(torch.tensor(dy, dtype=torch.float64))
    assert _relative_error(y, out.detach().numpy()) <= 2e-4
    assert _relative_error(dx, tx.grad.numpy()) <= 2e-4
    assert _relative_error(layer.weight.diff, tw.grad.numpy()) <= 2e-4


@pytest.mark.parametrize("algorithm", ["subpixel", "s2d"])
def test_float32_strided_deconvolution_large_shape(algorithm, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.standard_normal((2, 21, 28, 28)).astype(np.float32)
    layer = Deconvolution(21, 16, stride=8, pad=4, algorithm=algorithm, bias_term=False)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(layer.weight.data, dtype=torch.float64, requires_grad=True)
    out = F.conv_transpose2d(tx, tw, stride=8, padding=4)
    out.backward(torch.tensor(dy, dtype=torch.float64))
    assert _relative_error(y, out.detach().numpy()) <= 2e-4
    assert _relative_error(dx, tx.grad.numpy()) <= 2e-4
    assert _relative_error(layer.weight.diff, tw.grad.numpy()) <= 2e-4


# ---------------------------------------------------------------- choice

def _auto(layer, shape):
    layer.setup(shape)
    return layer.algorithm_used


def _plan(layer, shape):
    layer.setup(shape)
    return tuple(layer.algorithm_plan)


#: channels above the direct loops' range, where the Winograd / im2col rule decides alone
WIDE = 2 * conv_algorithms.DIRECT_MAX_CHANNELS_SMALL


def test_auto_picks_winograd_for_wide_3x3_stride_1_and_im2col_otherwise():
    assert _auto(Convolution(WIDE, 3, pad=1), (2, WIDE, 32, 32)) == "winograd"
    assert _auto(Convolution(WIDE, 3, stride=2), (2, WIDE, 32, 32)) == "im2col"
    assert _auto(Convolution(WIDE, 5, pad=2), (2, WIDE, 32, 32)) == "im2col"
    # too few channels on one side for Winograd (and too many on the other for direct)
    narrow = (2, conv_algorithms.WINOGRAD_MIN_CHANNELS - 1, 32, 32)
    assert _auto(Convolution(WIDE, 3, pad=1), narrow) == "im2col"
    assert _auto(Convolution(conv_algorithms.WINOGRAD_MIN_CHANNELS - 1, 3, pad=1),
                 (2, WIDE, 32, 32)) == "im2col"


def test_auto_keeps_im2col_where_the_filter_transforms_outweigh_the_gemm_savings():
    minimum = conv_algorithms.WINOGRAD_MIN_PIXELS
    wide = conv_algorithms.WINOGRAD_WIDE_CHANNELS
    # the conv output's pixels count: pad 1 keeps 32x32, pad 0 makes it 30x30
    assert _auto(Convolution(WIDE, 3, pad=1), (1, WIDE, 32, 32)) == (
        "winograd" if 32 * 32 >= minimum else "im2col")
    assert _auto(Convolution(WIDE, 3), (1, WIDE, 32, 32)) == (
        "winograd" if 30 * 30 >= minimum else "im2col")
    assert _auto(Convolution(WIDE, 3, pad=1), (1, WIDE, 16, 16)) == "im2col"
    assert _auto(Convolution(WIDE, 3, pad=2, dilation=2), (4, WIDE, 16, 16)) == "winograd"
    # wide layers repay the transforms from fewer pixels (VGG's 512-channel 14x14 does not)
    assert _auto(Convolution(wide, 3, pad=1), (1, wide, 20, 20)) == "winograd"
    assert _auto(Convolution(wide, 3, pad=1), (1, wide, 14, 14)) == "im2col"
    assert _auto(Convolution(wide - 1, 3, pad=1), (1, wide, 20, 20)) == "im2col"
    # a Deconvolution's conv output is its bottom
    assert _auto(Deconvolution(WIDE, 3, pad=1), (1, WIDE, 32, 32)) == "winograd"
    assert _auto(Deconvolution(WIDE, 3, pad=1), (1, WIDE, 16, 16)) == "im2col"
    # grouped: the channels per group count
    assert _auto(Convolution(4 * WIDE, 3, pad=1, group=4), (2, 4 * WIDE, 32, 32)) == "winograd"


def test_auto_picks_the_direct_loops_for_few_channels_pass_by_pass():
    top = conv_algorithms.DIRECT_MAX_CHANNELS
    # the default segmentation network's 16-channel 64x64 layer: direct in every pass
    assert _auto(Convolution(16, 3, pad=1), (16, 16, 64, 64)) == "direct"
    assert _auto(Convolution(top, 3, pad=1), (2, top, 64, 64)) == "direct"
    # an RGB input: a backward-data into 3 channels keeps im2col
    assert _plan(Convolution(32, 3, pad=1), (8, 3, 128, 128)) == ("direct", "im2col", "direct")
    # a first layer with more outputs than the loops' range (VGG's conv1_1): im2col's K is
    # 27, so forward and weight gradient stay direct; wider inputs or outputs do not
    narrow = conv_algorithms.DIRECT_NARROW_INPUTS
    most = conv_algorithms.DIRECT_NARROW_MAX_OUTPUTS
    assert _plan(Convolution(64, 3, pad=1), (1, 3, 224, 224)) == ("direct", "im2col", "direct")
    assert _plan(Convolution(most, 3, pad=1), (1, narrow, 32, 32)) == (
        "direct", "im2col", "direct")
    assert _auto(Convolution(2 * most, 3, pad=1), (1, narrow, 32, 32)) == "im2col"
    assert _auto(Convolution(64, 5, pad=2), (1, narrow + 1, 32, 32)) == "im2col"
    # narrow outputs too: the weight gradient's loop runs over pixels, not along rows
    assert _auto(Convolution(16, 3, pad=1), (16, 16, 8, 8)) == "direct"
    # more channels than the loops' range, on either side
    assert _auto(Convolution(2 * top, 3, pad=1), (2, top, 64, 64)) == "winograd"
    assert _auto(Convolution(top, 3, pad=1), (2, 2 * top, 64, 64)) == "winograd"
    # small images take the loops' forward and backward-data up to DIRECT_MAX_CHANNELS_SMALL
    small = conv_algorithms.DIRECT_MAX_CHANNELS_SMALL
    side = int(conv_algorithms.DIRECT_SMALL_OUTPUT ** 0.5)
    assert _auto(Convolution(small, 3, pad=1), (16, small, side, side)) == "direct"
    assert _auto(Convolution(small, 3, pad=1), (16, small, 2 * side, 2 * side)) == "winograd"
    assert _auto(Convolution(2 * small, 3, pad=1), (16, 2 * small, side, side)) == "winograd"
    # grouped: the channels per group count
    assert _auto(Convolution(4 * top, 3, pad=1, group=4), (2, 4 * top, 64, 64)) == "direct"
    # other filters, every pass; stride 2 does not apply
    assert _auto(Convolution(16, 5, pad=2), (2, 16, 64, 64)) == "direct"
    assert _auto(Convolution(16, (1, 5), pad=(0, 2)), (2, 16, 64, 64)) == "direct"
    # a 1x1 reads x itself up to DIRECT_MAX_CHANNELS channels (the default network's
    # scores), wider ones are one good GEMM; padded, it would copy bands
    assert _auto(Convolution(5, 1), (16, 16, 64, 64)) == "direct"
    assert _auto(Convolution(top, 1), (2, top, 64, 64)) == "direct"
    assert _auto(Convolution(2 * top, 1), (2, top, 16, 16)) == "im2col"
    assert _auto(Convolution(16, 1, pad=1), (2, 16, 64, 64)) == "im2col"
    assert _auto(Convolution(16, 3, stride=2, pad=1), (2, 16, 64, 64)) == "im2col"
    assert _auto(Convolution(WIDE, 5, pad=2), (2, WIDE, 16, 16)) == "im2col"
    # a Deconvolution: its forward is the convolution's backward-data (into its top)
    assert _plan(Deconvolution(3, 3, pad=1), (8, 32, 128, 128)) == (
        "direct", "im2col", "direct")
    assert _auto(Deconvolution(3, 3, pad=1), (8, 32, 128, 128)) == "im2col/direct/direct"


def test_auto_rule_for_strided_layers_and_subpixel_is_a_choice():
    # measured (conv_algorithms): a Deconvolution whose kernel is a multiple of its stride
    # and whose bottom has at most 32 channels runs its backward on space-to-depth, its
    # forward on im2col; wider ones, zero taps and strided Convolutions stay on im2col
    assert _auto(Deconvolution(8, 4, stride=2, pad=1), (1, 8, 5, 5)) == "im2col/s2d/s2d"
    assert _auto(Deconvolution(21, 16, stride=8, pad=4), (2, 21, 6, 6)) == "im2col/s2d/s2d"
    assert _auto(Deconvolution(32, 4, stride=2, pad=1), (1, 64, 5, 5)) == "im2col"
    assert _auto(Deconvolution(8, 3, stride=2, pad=1), (1, 8, 5, 5)) == "im2col"
    assert _auto(Convolution(8, 2, stride=2), (1, 8, 16, 16)) == "im2col"
    forced = Deconvolution(8, 4, stride=2, pad=1, algorithm="subpixel")
    forced.setup((1, 8, 5, 5))
    assert forced.algorithm_used == "subpixel"
    three = Deconvolution(WIDE, 3, pad=1)
    three.setup((1, WIDE, 32, 32))
    assert three.algorithm_used == "winograd"


@pytest.mark.parametrize("layer,algorithm,match", [
    (lambda a: Convolution(4, 5, algorithm=a), "winograd",
     "it needs a 3x3 kernel, got kernel_size 5"),
    (lambda a: Convolution(4, 3, stride=2, algorithm=a), "winograd",
     "it needs stride 1, got stride 2"),
    (lambda a: Convolution(4, 3, algorithm=a), "subpixel", "it is the strided Deconvolution's"),
    (lambda a: Deconvolution(4, 3, algorithm=a), "subpixel", "it needs stride > 1"),
    (lambda a: Convolution(4, 3, stride=(1, 2), algorithm=a), "kn2row",
     r"it needs stride 1, got stride \(1, 2\)"),
    (lambda a: Deconvolution(4, 3, stride=2, algorithm=a), "direct",
     "it needs stride 1, got stride 2"),
    (lambda a: Convolution(4, 3, pad=2 ** 20, dilation=2 ** 20, algorithm=a), "direct",
     r"its band of zero-padded input rows would hold \d+ values, more than 2147483648"),
    (lambda a: Deconvolution(4, 4, stride=2, dilation=(1, 2), algorithm=a), "subpixel",
     r"it needs dilation 1, got dilation \(1, 2\)"),
    (lambda a: Convolution(4, 3, algorithm=a), "s2d", "it needs stride > 1"),
    (lambda a: Deconvolution(4, 4, stride=2, dilation=(1, 2), algorithm=a), "s2d",
     r"it needs dilation 1, got dilation \(1, 2\)"),
])
def test_a_forced_algorithm_that_does_not_apply_is_a_config_error(layer, algorithm, match):
    with pytest.raises(ConfigError, match=f"algorithm '{algorithm}' does not apply: {match}"):
        layer(algorithm).setup((1, 4, 8, 8))


def test_unknown_algorithm_is_named():
    with pytest.raises(ConfigError, match="algorithm must be one of 'auto', 'im2col', "
                                          "'winograd', 'direct', 'kn2row', 'subpixel', "
                                          "'s2d', got 'fft'"):
        Convolution(4, 3, algorithm="fft")


@pytest.mark.parametrize("algorithm", ["winograd", "direct"])
def test_an_empty_batch_gives_empty_outputs(algorithm):
    conv = Convolution(16, 3, pad=1, algorithm=algorithm)
    y = conv.forward(np.zeros((0, 16, 9, 9), np.float32))
    assert y.shape == (0, 16, 9, 9)
    dx = conv.backward(y)
    assert dx.shape == (0, 16, 9, 9) and np.all(conv.weight.diff == 0)


@pytest.mark.parametrize("kind", ["conv", "deconv"])
def test_auto_plans_with_different_passes_match_the_naive_loops(kind, rng):
    """A plan that mixes algorithms (direct forward, im2col backward-data) gives the naive
    results in every pass; a Deconvolution's backward then runs its two passes apart."""
    cfg = dict(n=2, c=3, m=32, group=1, kernel=(3, 3), stride=(1, 1), pad=(1, 1),
               dilation=(1, 1), size=(9, 50), output_padding=(0, 0))
    if kind == "deconv":
        cfg.update(c=32, m=3)
    layer = _make(kind, "auto", cfg, np.float64)
    x = _input(cfg, rng)
    y = layer.forward(x)
    assert len(set(layer.algorithm_plan)) == 2
    np.testing.assert_allclose(y, _reference(kind, layer, x, cfg), rtol=1e-10, atol=1e-11)
    dy = rng.standard_normal(y.shape)
    dx_ref, dw_ref, db_ref = _reference_grads(kind, layer, x, dy, cfg)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.weight.diff, dw_ref, rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(layer.bias.diff, db_ref, rtol=1e-10, atol=1e-11)


def test_the_direct_rule_sizes_bands_as_the_kernels_do():
    from convnet._cpu import direct
    assert conv_algorithms._DIRECT_TASK_ROWS == direct.TASK_ROWS


def test_the_direct_kernels_refuse_scratch_too_small_instead_of_overrunning():
    from convnet._cpu import direct
    from convnet.backend import cpu
    x = np.ones((2, 4, 5, 6), np.float32)
    dy = np.ones((2, 8, 5, 6), np.float32)
    dweight = np.zeros((8, 4, 1, 1), np.float32)
    w = cpu._direct_filters(np.ones((8, 4, 1, 1), np.float32), 1, False)
    b = cpu._direct_bias(None, 8, 1, np.float32)
    y = np.empty((2, 8, 30), np.float32)
    with pytest.raises(ValueError, match="tails is too small"):
        direct.direct_pointwise_forward(x.reshape(2, 4, 30), w, b, y,
                                        np.empty((1, 4 * direct.POINT_TAIL - 1), np.float32), 1, 1)
    nv, taps, mgp, lanes = direct.weight_blocking(8, False)
    offsets = direct.weight_offsets(4, 1, 1, 1, 1, 1, 30, 6, taps)
    acc = np.empty((2 * 2, nv * taps * lanes), np.float32)
    with pytest.raises(ValueError, match="band scratch is too small"):
        direct.direct_backward_weight(x, dy, offsets, acc, np.empty((1, 0), np.float32),
                                      np.empty((1, 5 * 6 * mgp - 1), np.float32), dweight,
                                      1, 1, 0, 0, 6, 1, 5, nv, mgp, True, 1)
    with pytest.raises(ValueError, match="needs an unpadded convolution"):
        direct.direct_backward_weight(x, dy, offsets, acc, np.empty((1, 0), np.float32),
                                      np.empty((1, 5 * 6 * mgp), np.float32), dweight,
                                      1, 1, 1, 0, 6, 1, 5, nv, mgp, True, 1)
