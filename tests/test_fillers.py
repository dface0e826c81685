"""Fillers follow Caffe's conventions: names, fan sizes, scales and the bilinear kernel."""

import numpy as np
import pytest

from convnet import fillers
from convnet.errors import ConfigError
from convnet.layers import Deconvolution


def test_bilinear_kernel_has_caffes_values():
    # Caffe's BilinearFiller (fixed in PR #5713): f = ceil(k/2), c = (k - 1) / (2f),
    # w(x) = 1 - |x/f - c|
    np.testing.assert_allclose(fillers.bilinear_kernel(4, 4)[0], [0.0625, 0.1875, 0.1875, 0.0625])
    np.testing.assert_allclose(fillers.bilinear_kernel(4, 4),
                               np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25]))
    np.testing.assert_allclose(fillers.bilinear_kernel(3, 1), [[0.5], [1.0], [0.5]])
    np.testing.assert_allclose(fillers.bilinear_kernel(7, 1)[:, 0],
                               [.25, .5, .75, 1, .75, .5, .25])
    np.testing.assert_allclose(fillers.bilinear_kernel(6, 1)[:, 0],
                               np.array([1, 3, 5, 5, 3, 1]) / 6)
    axis16 = fillers.bilinear_kernel(16, 1)[:, 0]
    np.testing.assert_allclose(axis16[:8], (np.arange(8) * 2 + 1) / 16)
    np.testing.assert_allclose(axis16, axis16[::-1])


@pytest.mark.parametrize("k", range(2, 17))
def test_bilinear_kernel_is_symmetric_and_a_partition_of_unity(k):
    def formula(k):
        f = -(-k // 2)
        return 1.0 - np.abs(np.arange(k) / f - (k - 1) / (2.0 * f))

    f = -(-k // 2)
    axis = formula(k)
    np.testing.assert_allclose(fillers.bilinear_kernel(k, k + 1), np.outer(axis, formula(k + 1)))
    np.testing.assert_allclose(axis, axis[::-1])
    # the k/f taps that land on one output pixel when upsampling by f add up to 1
    phases = [axis[p::f].sum() for p in range(f)]
    np.testing.assert_allclose(phases, 1.0)


@pytest.mark.parametrize("k", [3, 4, 5, 7, 8, 9, 11, 12, 13, 15, 16])
def test_bilinear_deconvolution_matches_torch_upsampling(k):
    """Odd k = 2f - 1 with pad f - 1 is align-corners upsampling by f; even k = 2f (f even)
    with pad f / 2 is PyTorch's default (half-pixel) bilinear upsampling, away from the
    border (where PyTorch clamps)."""
    torch = pytest.importorskip("torch")
    f = -(-k // 2)
    rng = np.random.default_rng(k)
    x = rng.standard_normal((1, 1, 5, 6))
    odd = k % 2 == 1
    pad = f - 1 if odd else f // 2
    up = Deconvolution(1, k, stride=f, pad=pad, bias_term=False, weight_filler="bilinear",
                       dtype=np.float64)
    y = up.forward(x)
    if odd:
        ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=y.shape[2:],
                                              mode="bilinear", align_corners=True).numpy()
        np.testing.assert_allclose(y, ref, atol=1e-12)
    else:
        ref = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=f,
                                              mode="bilinear", align_corners=False).numpy()
        assert y.shape == ref.shape
        inner = (slice(None), slice(None), slice(f, -f), slice(f, -f))
        np.testing.assert_allclose(y[inner], ref[inner], atol=1e-12)


def test_bilinear_fills_every_channel_pair():
    w = fillers.fill("bilinear", (3, 2, 4, 6), np.float32)
    assert w.dtype == np.float32 and w.flags.c_contiguous
    for c in range(3):
        for m in range(2):
            np.testing.assert_allclose(w[c, m], fillers.bilinear_kernel(4, 6))


def test_bilinear_deconvolution_upsamples_constants_and_ramps_exactly():
    """FCN's fixed upsampling: k = 2f, s = f, pad = ceil((f - 1) / 2), group = C."""
    for f in (2, 3, 4):
        up = Deconvolution(2, 2 * f, stride=f, pad=int(np.ceil((f - 1) / 2)), group=2,
                           bias_term=False, weight_filler="bilinear", dtype=np.float64,
                           param=[dict(lr_mult=0)])
        x = np.ones((1, 2, 6, 7))
        x[0, 1] = np.arange(7.0)[None, :]          # a ramp along the width
        y = up.forward(x)
        pad = int(np.ceil((f - 1) / 2))
        assert y.shape == (1, 2, f * 5 + 2 * f - 2 * pad, f * 6 + 2 * f - 2 * pad)
        inner = (slice(f, -f), slice(f, -f))
        np.testing.assert_allclose(y[0, 0][inner], 1.0, atol=1e-12)
        row = y[0, 1, 2 * f]
        steps = np.diff(row[f:-f])
        np.testing.assert_allclose(steps, 1.0 / f, atol=1e-12)


def test_constant_filler_and_numbers():
    np.testing.assert_array_equal(fillers.fill(0.5, (2, 3), np.float64), 0.5)
    np.testing.assert_array_equal(fillers.fill("constant", (4,), np.float32), 0.0)
    c = fillers.fill(dict(type="constant", value=-2.0), (3, 1), np.float32)
    assert c.dtype == np.float32
    np.testing.assert_array_equal(c, -2.0)


@pytest.mark.parametrize("norm,fan", [("FAN_IN", 64 * 9), ("FAN_OUT", 128 * 9),
                                      ("AVERAGE", (64 * 9 + 128 * 9) / 2)])
def test_xavier_is_uniform_with_caffes_scale(norm, fan):
    rng = np.random.default_rng(0)
    w = fillers.fill(dict(type="xavier", variance_norm=norm), (128, 64, 3, 3), np.float64, rng)
    scale = np.sqrt(3.0 / fan)
    assert np.abs(w).max() <= scale
    assert np.abs(w).max() > 0.99 * scale
    np.testing.assert_allclose(w.std(), scale / np.sqrt(3.0), rtol=0.02)


@pytest.mark.parametrize("norm,fan", [("FAN_IN", 32 * 25), ("FAN_OUT", 16 * 25)])
def test_msra_is_gaussian_with_caffes_std(norm, fan):
    rng = np.random.default_rng(1)
    w = fillers.fill(dict(type="msra", variance_norm=norm), (16, 32, 5, 5), np.float64, rng)
    np.testing.assert_allclose(w.std(), np.sqrt(2.0 / fan), rtol=0.03)
    assert abs(w.mean()) < 0.1 * w.std()


def test_convolution_default_weight_is_msra_over_fan_in():
    from convnet.layers import Convolution
    conv = Convolution(64, 3, dtype=np.float64)
    conv.rng = np.random.default_rng(2)
    conv.setup((1, 48, 8, 8))
    np.testing.assert_allclose(conv.weight.data.std(), np.sqrt(2.0 / (48 * 9)), rtol=0.05)
    np.testing.assert_array_equal(conv.bias.data, 0.0)


def test_gaussian_and_uniform_take_caffes_fields():
    rng = np.random.default_rng(3)
    g = fillers.fill(dict(type="gaussian", mean=1.0, std=0.5), (20000,), np.float64, rng)
    np.testing.assert_allclose([g.mean(), g.std()], [1.0, 0.5], atol=0.02)
    u = fillers.fill(dict(type="uniform", min=-3, max=-1), (20000,), np.float64, rng)
    assert u.min() >= -3 and u.max() < -1
    np.testing.assert_allclose(u.mean(), -2.0, atol=0.03)


def test_same_seed_same_values():
    a = fillers.fill("msra", (4, 3, 3, 3), np.float32, np.random.default_rng(5))
    b = fillers.fill("msra", (4, 3, 3, 3), np.float32, np.random.default_rng(5))
    c = fillers.fill("msra", (4, 3, 3, 3), np.float32, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_callable_filler_and_its_shape_check():
    w = fillers.fill(lambda shape, rng: np.arange(np.prod(shape)).reshape(shape), (2, 3),
                     np.float32)
    np.testing.assert_array_equal(w, [[0, 1, 2], [3, 4, 5]])
    with pytest.raises(ConfigError, match=r"callable returned shape \(3,\), expected \(2, 3\)"):
        fillers.fill(lambda shape, rng: np.zeros(3), (2, 3), np.float32)


@pytest.mark.parametrize("spec,match", [
    ("nope", r"weight_filler type must be one of constant, gaussian"),
    (dict(type="gaussian", std=-1), r"weight_filler std must be >= 0, got -1"),
    (dict(type="uniform", min=2, max=1), r"weight_filler min \(2\) must be <= max \(1\)"),
    (dict(type="xavier", variance_norm="SIDEWAYS"), r"variance_norm must be FAN_IN, FAN_OUT"),
    (dict(type="msra", scale=2), r"weight_filler has unknown fields \['scale'\]"),
    ([1, 2], r"weight_filler must be a number, one of"),
])
def test_bad_filler_specs_are_named(spec, match):
    with pytest.raises(ConfigError, match=match):
        fillers.normalize(spec, "weight_filler")


def test_bilinear_needs_a_4d_weight():
    with pytest.raises(ConfigError, match=r"'bilinear' needs a 4-d weight"):
        fillers.fill("bilinear", (3, 3), np.float32, param="weight_filler")
