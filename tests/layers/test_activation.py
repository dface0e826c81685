"""ReLU and Dropout: forward / backward vs naive references, finite differences, PyTorch,
in-place behaviour, Dropout's statistics and random-stream state, and bad parameters."""

import numpy as np
import pytest

import convnet
from convnet.errors import ConfigError, ShapeError, StateError
from convnet.layers import Dropout, ReLU
from convnet.testing import check_gradients
from conftest import assert_close
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
