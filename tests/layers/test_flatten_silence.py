"""Flatten and Silence: naive references, finite differences, PyTorch, Net use, bad input."""

import itertools

import numpy as np
import pytest

from convnet import Net
from convnet.errors import ConfigError
from convnet.layers import Flatten, ReLU, Silence
from convnet.testing import check_gradients


def naive_flatten(x, axis, end_axis):
    """Element by element: top index = (outer..., merged index, inner...)."""
    shape = x.shape
    ndim = len(shape)
    a, e = axis % ndim, end_axis % ndim
    merged = 1
    for d in shape[a:e + 1]:
        merged *= d
    out = np.zeros(shape[:a] + (merged,) + shape[e + 1:])
    for index in itertools.product(*(range(d) for d in shape)):
        flat = 0
        for i in range(a, e + 1):
            flat = flat * shape[i] + index[i]
        out[index[:a] + (flat,) + index[e + 1:]] = x[index]
    return out


CASES = [((2, 3, 4, 5), 1, -1), ((2, 3, 4, 5), 1, 2), ((3, 2, 5), 0, 1), ((2, 3, 4, 5), -2, -1),
         ((4, 3), 1, 1), ((2, 1, 3, 1, 2), 2, 3)]


@pytest.mark.parametrize("shape,axis,end_axis", CASES)
def test_flatten_matches_naive_reference(shape, axis, end_axis):
    x = np.random.default_rng(0).standard_normal(shape)
    layer = Flatten(axis=axis, end_axis=end_axis, dtype=np.float64)
    y = layer.forward(x)
    np.testing.assert_array_equal(y, naive_flatten(x, axis, end_axis))
    assert not np.shares_memory(y, x)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    np.testing.assert_array_equal(layer.backward(dy), dy.reshape(shape))


@pytest.mark.parametrize("shape,axis,end_axis", CASES[:3])
def test_flatten_gradients(shape, axis, end_axis):
    x = np.random.default_rng(2).standard_normal(shape)
    check_gradients(Flatten(axis=axis, end_axis=end_axis, dtype=np.float64), x)


def test_flatten_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5)).astype(np.float32)
    for axis, end in ((1, -1), (1, 2), (0, 2)):
        want = torch.flatten(torch.from_numpy(x), axis, end).numpy()
        np.testing.assert_array_equal(Flatten(axis=axis, end_axis=end).forward(x), want)


def test_flatten_bad_parameters():
    with pytest.raises(ConfigError, match="axis must be an int"):
        Flatten(axis=1.5)
    with pytest.raises(ConfigError, match="end_axis must be an int"):
        Flatten(end_axis="x")
    with pytest.raises(ConfigError, match=r"axis 4 is out of range for 4-d"):
        Flatten(axis=4).forward(np.zeros((1, 2, 3, 4)))
    with pytest.raises(ConfigError, match="end_axis .* must not come before axis"):
        Flatten(axis=2, end_axis=1, name="f").forward(np.zeros((1, 2, 3, 4)))
    with pytest.raises(ConfigError, match=r"axis 1 is out of range for 1-d"):
        Flatten().forward(np.zeros(3))


def test_silence_consumes_and_gives_zero_diffs():
    layer = Silence()
    assert layer.forward(np.ones((2, 3)), np.ones(4)) == ()
    da, db = layer.backward()
    np.testing.assert_array_equal(da, np.zeros((2, 3)))
    np.testing.assert_array_equal(db, np.zeros(4))
    assert layer.backward(propagate_down=[False, True])[0] is None


def test_silence_in_a_net_keeps_a_blob_from_the_outputs():
    net = Net()
    net.add(ReLU(name="relu"), bottom=["x"], top=["a"])
    net.add(ReLU(name="relu2"), bottom=["x"], top=["b"])
    net.add(Silence(name="silence"), bottom=["b"], top=[])
    assert net.outputs == ["a"]
    out = net.forward(x=np.array([[-1.0, 2.0]]))
    assert list(out) == ["a"]
    np.testing.assert_array_equal(out["a"], [[0.0, 2.0]])
