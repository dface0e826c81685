"""ReLU and Dropout: forward / backward vs naive references, finite differences, PyTorch,
in-place behaviour, Dropout's statistics and random-stream state, and bad parameters.
Sigmoid, TanH and Softmax's compiled kernels: float64 references with extreme values (ulps),
in place, streamed against cached passes, Softmax's shapes and NaN / inf, one against two
threads, PyTorch (the layers' own tests are in test_sequence_layers.py)."""

import numpy as np
import pytest

import convnet
from convnet.errors import ConfigError, ShapeError, StateError
from convnet.layers import Dropout, ReLU
from convnet.testing import check_gradients
from conftest import assert_close, at_threads
from reference import activation as ref

SLOPES = [0.0, 0.1, 0.5, 1.0, 1.7, -0.3]


def relu_config(seed):
    """A random shape (1 to 4 axes, odd sizes) and slope, away from x = 0."""
    r = np.random.default_rng(seed)
    ndim = int(r.integers(1, 5))
    shape = tuple(int(s) for s in r.integers(1, 7, size=ndim))
    x = r.standard_normal(shape)
    x += np.where(x >= 0, 0.05, -0.05)
    return x, SLOPES[seed % len(SLOPES)]


# ---------------------------------------------------------------------------- ReLU

@pytest.mark.parametrize("seed", range(30))
def test_relu_forward_backward_match_reference(seed, dtype):
    x, slope = relu_config(seed)
    x = x.astype(dtype)
    relu = ReLU(negative_slope=slope, dtype=dtype)
    y = relu.forward(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, ref.relu_forward(x, slope), dtype)
    dy = np.random.default_rng(seed + 100).standard_normal(x.shape).astype(dtype)
    assert_close(relu.backward(dy), ref.relu_backward(dy, x, slope), dtype)


@pytest.mark.parametrize("seed", range(0, 30, 3))
def test_relu_gradient_matches_finite_differences(seed):
    x, slope = relu_config(seed)
    check_gradients(ReLU(negative_slope=slope, dtype=np.float64), x, exhaustive=x.size <= 60)


@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_relu_gradient_at_zero_is_negative_slope_as_in_caffe(slope):
    relu = ReLU(negative_slope=slope, dtype=np.float64)
    relu.forward(np.zeros((2, 3)))
    np.testing.assert_array_equal(relu.backward(np.full((2, 3), 2.0)), 2.0 * slope)


@pytest.mark.parametrize("slope", [0.0, 0.1, 2.0])
def test_relu_in_place_overwrites_bottom_and_top_diff_with_same_values(slope, dtype):
    x, _ = relu_config(7)
    x = x.astype(dtype)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    plain = ReLU(negative_slope=slope, dtype=dtype)
    want_y = plain.forward(x.copy())
    want_dx = plain.backward(dy.copy())

    bottom, top_diff = x.copy(), dy.copy()
    relu = ReLU(negative_slope=slope, in_place=True, dtype=dtype)
    y = relu.forward(bottom)
    assert y is bottom
    np.testing.assert_array_equal(bottom, want_y)
    dx = relu.backward(top_diff)
    assert dx is top_diff
    np.testing.assert_array_equal(top_diff, want_dx)


def test_relu_not_in_place_leaves_bottom_and_top_diff_untouched():
    x, _ = relu_config(3)
    dy = np.ones_like(x)
    x0, dy0 = x.copy(), dy.copy()
    relu = ReLU(negative_slope=0.1, dtype=np.float64)
    relu.forward(x)
    relu.backward(dy)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)


def test_relu_in_place_with_negative_slope_is_refused():
    with pytest.raises(ConfigError, match=r"ReLU 'r': in_place=True needs negative_slope >= 0"):
        ReLU(negative_slope=-0.5, in_place=True, name="r")
    relu = ReLU(negative_slope=-0.5, name="r")
    relu.in_place = True     # as a Net would set it for top == bottom
    with pytest.raises(ConfigError, match="negative_slope >= 0.*got -0.5"):
        relu.forward(np.ones((2, 2)))


def test_relu_matches_torch_relu_and_leaky_relu():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    r = np.random.default_rng(5)
    for slope in (0.0, 0.01, 0.3):
        x = r.standard_normal((3, 4, 5, 7))
        dy = r.standard_normal(x.shape)
        relu = ReLU(negative_slope=slope, dtype=np.float64)
        y = relu.forward(x)
        dx = relu.backward(dy)
        tx = torch.tensor(x, requires_grad=True)
        ty = F.relu(tx) if slope == 0 else F.leaky_relu(tx, slope)
        ty.backward(torch.tensor(dy))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=0)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=0)


def test_relu_propagate_down_false_gives_none():
    relu = ReLU()
    relu.forward(np.ones((2, 3)))
    assert relu.backward(np.ones((2, 3)), propagate_down=[False]) is None


def test_relu_float64_bottom_converts_to_layer_dtype():
    y = ReLU(dtype=np.float32).forward(np.array([-1.0, 2.0]))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [0.0, 2.0])


@pytest.mark.parametrize("kwargs,match", [
    (dict(negative_slope="0.1"), "negative_slope must be a number, got '0.1'"),
    (dict(negative_slope=float("nan")), "negative_slope must be finite"),
    (dict(in_place=1), "in_place must be True or False, got 1"),
    (dict(dtype=np.int32), "dtype must be float32 or float64, got int32"),
])
def test_relu_bad_parameters_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ReLU(name="relu1", **kwargs)


def test_relu_bad_calls_raise():
    relu = ReLU(name="relu1")
    with pytest.raises(StateError, match="ReLU 'relu1': backward called before forward"):
        relu.backward(np.ones(3))
    relu.forward(np.ones((2, 3)))
    with pytest.raises(ShapeError, match="top diff 0 must have the top's shape 2x3, got 3x2"):
        relu.backward(np.ones((3, 2)))
    with pytest.raises(ShapeError, match="expects 1 bottoms, got 2"):
        relu.forward(np.ones(3), np.ones(3))


# ---------------------------------------------------------------------------- Dropout

def test_dropout_keeps_expected_fraction_and_scales_exactly(dtype):
    ratio = 0.3
    x = np.random.default_rng(0).uniform(0.5, 2.0, size=(20, 10, 30, 40)).astype(dtype)
    drop = Dropout(dropout_ratio=ratio, seed=1, dtype=dtype)
    y = drop.forward(x)
    kept = y != 0
    n = x.size
    # binomial: 6 standard deviations around the kept probability 1 - ratio
    assert abs(kept.mean() - (1 - ratio)) < 6 * np.sqrt(ratio * (1 - ratio) / n)
    scale = dtype.type(1.0 / (1.0 - ratio))
    np.testing.assert_array_equal(y[kept], x[kept] * scale)
    dy = np.random.default_rng(2).standard_normal(x.shape).astype(dtype)
    dx = drop.backward(dy)
    np.testing.assert_array_equal(dx[kept], dy[kept] * scale)
    np.testing.assert_array_equal(dx[~kept], 0)


@pytest.mark.parametrize("seed", range(30))
def test_dropout_matches_reference_for_its_mask(seed, dtype):
    r = np.random.default_rng(seed)
    shape = tuple(int(s) for s in r.integers(1, 6, size=int(r.integers(1, 5))))
    ratio = float(r.choice([0.0, 0.1, 0.5, 0.9]))
    x = r.standard_normal(shape).astype(dtype)
    drop = Dropout(dropout_ratio=ratio, seed=seed, dtype=dtype)
    y = drop.forward(x)
    keep = (y != 0) | (x == 0)
    assert_close(y, ref.dropout_forward(x, keep, ratio), dtype)
    dy = r.standard_normal(shape).astype(dtype)
    assert_close(drop.backward(dy), ref.dropout_forward(dy, keep, ratio), dtype)


def test_dropout_is_identity_copy_at_test_phase(dtype):
    x = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(dtype)
    drop = Dropout(dropout_ratio=0.7, seed=0, dtype=dtype).eval()
    assert drop.phase == "TEST"
    y = drop.forward(x)
    assert y is not x
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(drop.backward(2 * x), 2 * x)
    drop.train()
    assert (drop.forward(x) == 0).any()


def test_dropout_same_seed_same_masks_different_seed_different():
    x = np.ones((50, 40))
    a, b, c = Dropout(seed=3), Dropout(seed=3), Dropout(seed=4)
    for _ in range(3):
        ya, yb, yc = a.forward(x), b.forward(x), c.forward(x)
        np.testing.assert_array_equal(ya, yb)
        assert (ya != yc).any()


def test_dropout_rng_state_restore_reproduces_the_stream():
    x = np.ones((30, 30))
    drop = Dropout(dropout_ratio=0.4, seed=11)
    drop.forward(x)
    state = drop.get_rng_state()
    expected = [drop.forward(x) for _ in range(3)]
    drop.forward(x)
    drop.set_rng_state(state)
    for want in expected:
        np.testing.assert_array_equal(drop.forward(x), want)
    # the saved state is a snapshot, not a live view of the generator
    other = Dropout(dropout_ratio=0.4, seed=99)
    other.set_rng_state(state)
    np.testing.assert_array_equal(other.forward(x), expected[0])


def test_dropout_without_seed_follows_convnet_seed():
    x = np.ones((20, 20))
    convnet.seed(123)
    first = Dropout().forward(x)
    convnet.seed(123)
    np.testing.assert_array_equal(Dropout().forward(x), first)


def test_dropout_ratio_zero_is_identity_at_train():
    x = np.random.default_rng(0).standard_normal((3, 4))
    drop = Dropout(dropout_ratio=0.0, dtype=np.float64)
    np.testing.assert_array_equal(drop.forward(x), x)
    np.testing.assert_array_equal(drop.backward(x), x)


def test_dropout_in_place_overwrites_bottom_and_top_diff():
    x = np.random.default_rng(0).standard_normal((6, 7))
    want_y = Dropout(seed=5, dtype=np.float64).forward(x)
    bottom = x.copy()
    drop = Dropout(seed=5, in_place=True, dtype=np.float64)
    assert drop.forward(bottom) is bottom
    np.testing.assert_array_equal(bottom, want_y)
    dy = np.ones_like(x)
    assert drop.backward(dy) is dy
    np.testing.assert_array_equal(dy, np.where(want_y != 0, 2.0, 0.0))


def test_dropout_backward_uses_the_mask_of_the_last_forward_and_propagate_down():
    drop = Dropout(seed=0, dtype=np.float64)
    x = np.ones((40, 40))
    drop.forward(x)
    y2 = drop.forward(x)
    np.testing.assert_array_equal(drop.backward(np.ones_like(x)), y2)
    assert drop.backward(np.ones_like(x), propagate_down=False) is None


@pytest.mark.parametrize("kwargs,match", [
    (dict(dropout_ratio=1.0), r"dropout_ratio must be in \[0, 1\).*got 1.0"),
    (dict(dropout_ratio=-0.1), "dropout_ratio must be >= 0.0, got -0.1"),
    (dict(dropout_ratio="half"), "dropout_ratio must be a number"),
    (dict(seed=-1), "seed must be >= 0, got -1"),
    (dict(seed=1.5), "seed must be an int, got 1.5"),
    (dict(in_place="yes"), "in_place must be True or False"),
])
def test_dropout_bad_parameters_raise(kwargs, match):
    with pytest.raises(ConfigError, match="Dropout 'drop6': " + match):
        Dropout(name="drop6", **kwargs)


def test_activation_results_are_identical_at_one_and_two_threads():
    x, _ = relu_config(4)
    dy = np.random.default_rng(9).standard_normal(x.shape)
    before = convnet.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            convnet.set_num_threads(n)
            relu = ReLU(negative_slope=0.1, dtype=np.float32)
            drop = Dropout(seed=2, dtype=np.float32)
            results.append([relu.forward(x), relu.backward(dy), drop.forward(x),
                            drop.backward(dy)])
    finally:
        convnet.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------- Sigmoid, TanH, Softmax kernels
# The compiled kernels (pyx/activation.pyx) through the cpu backend, against float64 NumPy
# references: float32 within a few ulp (its own vectorised exp), float64 as libm.

from convnet.backend import cpu as cpu_backend  # noqa: E402
from convnet.layers import Sigmoid, Softmax, TanH  # noqa: E402

F32_TINY = float(np.finfo(np.float32).smallest_subnormal)


def smooth_input(seed, n, dtype):
    """Normal values, wide ones (|x| up to 1e4), the overflow / underflow edges of exp,
    tiny and subnormal values, signed zeros, +-inf and NaN, shuffled."""
    r = np.random.default_rng(seed)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e4, -1e4, 88.0, -88.0, 87.4,
               -87.4, 103.9, -103.9, 104.0, -104.0, 700.0, -745.0, 9.0, -9.01, 10.0, 20.0,
               1e-30, -1e-30, 1e-40, -1e-40, 5e-324, F32_TINY, -F32_TINY]
    parts = [4 * r.standard_normal(n), r.uniform(-1e4, 1e4, n // 4),
             r.uniform(-120, 120, n // 4), np.ldexp(r.uniform(-1, 1, n // 8),
                                                    r.integers(-160, 0, n // 8)),
             np.array(special)]
    x = np.concatenate(parts).astype(dtype)
    r.shuffle(x)
    return x


def sigmoid64(x):
    """The float64 reference, computed in long double (x86's 80 bits: a float64 reference
    of its own would carry an ulp or two of error)."""
    x = np.asarray(x, np.float64).astype(np.longdouble)
    e = np.exp(-np.abs(x))
    return (np.where(np.signbit(x), e, 1.0) / (1.0 + e)).astype(np.float64)


def tanh64(x):
    return np.tanh(np.asarray(x, np.float64).astype(np.longdouble)).astype(np.float64)


def assert_smooth_backward(kind, dx, dy, y, dtype):
    """dx against dy f'(y) in float64 from the same top y, to an error relative to |dy|
    (1 - y^2 cancels near |y| = 1)."""
    y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
    dref = dy64 * (1 - y64) * y64 if kind == "sigmoid" else dy64 * (1 - y64 * y64)
    eps = 2.0 ** -22 if dtype == np.float32 else 2.0 ** -51
    nan = np.isnan(dref)                                    # where x (so y) is NaN
    np.testing.assert_array_equal(np.isnan(dx), nan)
    err = np.abs(dx - dref)[~nan]
    assert np.all(err <= eps * (np.abs(dref) + np.abs(dy64))[~nan]), err.max()


def assert_ulps(actual, expected, dtype, ulps):
    """|actual - expected| <= ulps units in the last place of expected rounded to dtype;
    NaN exactly where expected is NaN."""
    actual = np.asarray(actual)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(actual), nan)
    a, e = actual[~nan].astype(np.float64), expected[~nan]
    unit = np.spacing(np.abs(e).astype(dtype)).astype(np.float64)
    err = np.abs(a - e) / unit
    assert err.max(initial=0) <= ulps, (err.max(), a[err.argmax()], e[err.argmax()])


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_smooth_kernels_match_float64_reference_with_extremes(kind, dtype):
    x = smooth_input(3, 40000, dtype)
    ref = sigmoid64(x) if kind == "sigmoid" else tanh64(x)
    y = np.empty_like(x)
    getattr(cpu_backend, f"activation_{kind}_forward")(x, y)
    assert y.dtype == dtype
    assert_ulps(y, ref, dtype, 4 if dtype == np.float32 else 2)
    # exact limits, never an overflow
    big = np.array([-1e4, -800, -2000, 2000, 800, 1e4, -np.inf, np.inf], dtype)
    yb = np.empty_like(big)
    getattr(cpu_backend, f"activation_{kind}_forward")(big, yb)
    lo = 0.0 if kind == "sigmoid" else -1.0
    np.testing.assert_array_equal(yb, [lo, lo, lo, 1, 1, 1, lo, 1])
    # backward from the kernel's top, against the same formula in float64
    dy = np.random.default_rng(4).standard_normal(x.shape).astype(dtype)
    dx = np.empty_like(x)
    getattr(cpu_backend, f"activation_{kind}_backward")(dy, y, dx)
    assert_smooth_backward(kind, dx, dy, y, dtype)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
@pytest.mark.parametrize("n", [1, 7, 16384, 16385, 3_000_001])   # the last streams its output
def test_smooth_kernels_in_place_equal_out_of_place(kind, n, dtype):
    big = smooth_input(n, n, dtype)
    x = big[1:n + 1]                       # an odd start: unaligned for the streaming stores
    fwd = getattr(cpu_backend, f"activation_{kind}_forward")
    bwd = getattr(cpu_backend, f"activation_{kind}_backward")
    y = np.empty_like(x)
    fwd(x, y)
    ref = sigmoid64(x) if kind == "sigmoid" else tanh64(x)
    assert_ulps(y, ref, dtype, 4 if dtype == np.float32 else 2)
    x2 = x.copy()
    fwd(x2, x2)
    np.testing.assert_array_equal(x2, y)
    dy = np.random.default_rng(n).standard_normal(x.size).astype(dtype)
    dx = np.empty_like(dy)
    bwd(dy, y, dx)
    dy2 = dy.copy()
    bwd(dy2, y, dy2)
    np.testing.assert_array_equal(dy2, dx)
    assert_smooth_backward(kind, dx, dy, y, dtype)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_smooth_streamed_and_cached_passes_agree_bit_for_bit(kind, dtype):
    """A pass large enough to stream its output (STREAM_BYTES in the kernel) gives each
    element the value a small, cached pass gives it, wherever the vectors start."""
    n = 3_000_003
    x = smooth_input(5, n, dtype)[:n]
    dy = np.random.default_rng(6).standard_normal(n).astype(dtype)
    fwd = getattr(cpu_backend, f"activation_{kind}_forward")
    bwd = getattr(cpu_backend, f"activation_{kind}_backward")
    y, dx = np.empty_like(x), np.empty_like(x)
    fwd(x, y)
    bwd(dy, y, dx)
    for start in (0, 1, 5, 1_000_003):
        part = slice(start, start + 4099)
        ys, dxs = np.empty(4099, dtype), np.empty(4099, dtype)
        fwd(x[part], ys)
        bwd(dy[part], y[part], dxs)
        np.testing.assert_array_equal(ys, y[part])
        np.testing.assert_array_equal(dxs, dx[part])


def softmax64(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


SOFTMAX_SHAPES = [(1, 1, 1), (3, 1, 5), (4, 1, 1), (5, 7, 1), (2, 37, 1), (3, 1000, 1),
                  (7, 3, 2), (5, 3, 17), (3, 16, 33), (2, 21, 512), (2, 5, 513),
                  (2, 21, 1100), (1, 2, 4099)]


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES)
def test_softmax_kernels_match_float64_reference(shape, dtype):
    r = np.random.default_rng(sum(shape))
    x = (6 * r.standard_normal(shape)).astype(dtype)
    x.reshape(-1)[r.random(x.size) < 0.02] *= 300           # wide spreads: exp underflows
    if shape[1] > 1:                                         # masked entries, never all
        x[:, 1:][r.random(x[:, 1:].shape) < 0.05] = -np.inf
    # the reference from x - max as rounded to dtype (as the kernel has it: for x - max
    # = -60, its rounding alone is 60 ulps of exp's result); then exp and the sum in float64
    e = np.exp((x - x.max(axis=1, keepdims=True)).astype(np.float64))
    ref = e / e.sum(axis=1, keepdims=True)
    y = np.empty_like(x)
    cpu_backend.activation_softmax_forward(x, y)
    eps, tiny = np.finfo(dtype).eps, np.finfo(dtype).smallest_subnormal
    assert np.all(np.abs(y - ref) <= 4 * eps * max(1, shape[1] / 16) * ref + 2 * tiny)
    x2 = x.copy()
    cpu_backend.activation_softmax_forward(x2, x2)          # y may be x
    np.testing.assert_array_equal(x2, y)
    dy = r.standard_normal(shape).astype(dtype)
    dx = np.empty_like(x)
    cpu_backend.activation_softmax_backward(dy, y, dx)
    y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
    dref = y64 * (dy64 - (dy64 * y64).sum(axis=1, keepdims=True))
    scale = (np.abs(dy64) + np.abs(dy64 * y64).sum(axis=1, keepdims=True)) * y64
    assert np.all(np.abs(dx - dref) <= 4 * eps * max(1, shape[1] / 16) * scale + 2 * tiny)
    dy2 = dy.copy()
    cpu_backend.activation_softmax_backward(dy2, y, dy2)    # dx may be dy
    np.testing.assert_array_equal(dy2, dx)


@pytest.mark.parametrize("inner", [1, 3, 600])
def test_softmax_nan_and_inf_as_numpy(inner, dtype):
    """A NaN or +inf along C, or all -inf, gives NaN at that position (as NumPy's
    max-subtracted exp does); -inf among finite values gives exactly 0."""
    x = np.random.default_rng(1).standard_normal((6, 5, inner)).astype(dtype)
    x[0, 2] = np.nan
    x[1, 0] = np.inf
    x[2, :] = -np.inf
    x[3, 1] = -np.inf
    x[4, 3] = 1e4
    x[5, :] = np.inf
    with np.errstate(invalid="ignore"):
        ref = softmax64(x)
    y = np.empty_like(x)
    cpu_backend.activation_softmax_forward(x, y)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    assert np.isnan(y[[0, 1, 2, 5]]).all() and not np.isnan(y[[3, 4]]).any()
    np.testing.assert_array_equal(y[3, 1], 0)
    np.testing.assert_array_equal(y[4, 3], 1)
    np.testing.assert_allclose(y[3:5], ref[3:5], rtol=1e-5 if dtype == np.float32 else 1e-14)


def test_softmax_backward_streamed_output_matches():
    """A backward large enough to stream its output (the kernel's STREAM_BYTES), with an
    inner size that is no multiple of the block or of a cache line."""
    r = np.random.default_rng(2)
    shape = (1, 21, 70001)
    y = softmax64(3 * r.standard_normal(shape)).astype(np.float32)
    dy = r.standard_normal(shape).astype(np.float32)
    dx = np.empty_like(dy)
    cpu_backend.activation_softmax_backward(dy, y, dx)
    y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
    dref = y64 * (dy64 - (dy64 * y64).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(dx, dref, rtol=1e-4, atol=1e-6)
    dy2 = dy.copy()
    cpu_backend.activation_softmax_backward(dy2, y, dy2)
    np.testing.assert_array_equal(dy2, dx)
    small = np.empty((1, 21, 4099), np.float32)              # cached: the same values
    cpu_backend.activation_softmax_backward(np.ascontiguousarray(dy[..., 1000:5099]),
                                            np.ascontiguousarray(y[..., 1000:5099]), small)
    np.testing.assert_array_equal(small, dx[..., 1000:5099])


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_smooth_and_softmax_identical_at_one_and_two_threads(dt):
    r = np.random.default_rng(8)
    x = smooth_input(8, 150000, np.float64)[:240000].reshape(8, 6, 50, 100)   # 15 chunks
    dy = r.standard_normal(x.size)
    xs = 5 * r.standard_normal((3, 7, 40, 30))
    xr = 5 * r.standard_normal((5000, 10))

    def run():
        out = []
        for layer, bottom in [(Sigmoid(dtype=dt), x), (TanH(dtype=dt), x),
                              (Softmax(axis=1, dtype=dt), xs),
                              (Softmax(axis=1, dtype=dt), xr)]:
            out.append(layer.forward(bottom).copy())
            out.append(layer.backward(dy[:bottom.size].reshape(bottom.shape)).copy())
        return out

    for a, b in zip(at_threads(1, run), at_threads(2, run)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_smooth_and_softmax_match_torch(dt):
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(11)
    x = np.concatenate([4 * r.standard_normal(5000), r.uniform(-150, 150, 1000),
                        [0.0, -0.0, 1e4, -1e4, np.inf, -np.inf, np.nan]]).astype(dt)
    dy = r.standard_normal(x.shape).astype(dt)
    f32 = dt == np.float32
    for layer, fn in [(Sigmoid, torch.sigmoid), (TanH, torch.tanh)]:
        lyr = layer(dtype=dt)
        y = lyr.forward(x)
        tx = torch.tensor(x, requires_grad=True)
        ty = fn(tx)
        ty.backward(torch.tensor(dy))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-6 if f32 else 1e-14,
                                   atol=1e-37 if f32 else 1e-300)
        # from tops an ulp apart, f'(y) differs by about an ulp of 1 (1 - y^2 cancels)
        dx, dxt = lyr.backward(dy).astype(np.float64), tx.grad.numpy().astype(np.float64)
        np.testing.assert_array_equal(np.isnan(dx), np.isnan(dxt))
        ok = ~np.isnan(dx)
        eps = np.finfo(dt).eps
        assert np.all(np.abs(dx - dxt)[ok] <= 4 * eps * (np.abs(dy) + np.abs(dxt))[ok])
    for shape, axis in [((4, 21, 9, 13), 1), ((64, 10), 1), ((3, 5, 700), 1), ((2, 3, 4), 2)]:
        xs = (5 * r.standard_normal(shape)).astype(dt)
        dys = r.standard_normal(shape).astype(dt)
        sm = Softmax(axis=axis, dtype=dt)
        y = sm.forward(xs)
        tx = torch.tensor(xs, requires_grad=True)
        ty = torch.softmax(tx, dim=axis)
        ty.backward(torch.tensor(dys))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5 if f32 else 1e-13,
                                   atol=1e-30 if f32 else 1e-300)
        np.testing.assert_allclose(sm.backward(dys), tx.grad.numpy(),
                                   rtol=1e-4 if f32 else 1e-12, atol=1e-6 if f32 else 1e-15)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_dropout_mask_pass_equals_numpys_at_one_and_two_threads(dt):
    from convnet.backend import cpu as cpu_backend
    r = np.random.default_rng(12)
    x = r.standard_normal((4, 8, 70, 90)).astype(dt)          # past one work item
    x.reshape(-1)[::997] = np.nan
    keep = r.random(x.shape) >= 0.3
    want = np.multiply(x, keep) * dt(1 / 0.7)

    def run():
        y = np.empty_like(x)
        cpu_backend.activation_dropout_forward(x, keep, 1 / 0.7, y)
        dx = x.copy()
        cpu_backend.activation_dropout_backward(dx, keep, 1 / 0.7, dx)   # in place
        return y, dx

    for got in (*at_threads(1, run), *at_threads(2, run)):
        np.testing.assert_array_equal(got, want)
