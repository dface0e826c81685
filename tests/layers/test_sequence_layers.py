"""The layers cells are made of, appended to their families: Sigmoid, TanH, Softmax
(activation), Scale (normalization), Split, Slice, Reshape (structure). Naive references,
finite differences, PyTorch, bad parameters and shapes."""

import numpy as np
import pytest

from convnet.errors import ConfigError, ShapeError
from convnet.layers import Reshape, Scale, Sigmoid, Slice, Softmax, Split, TanH
from convnet.testing import check_gradients
from conftest import assert_close, at_threads
from reference import inner_product as ref


def test_sigmoid_and_tanh_match_reference_and_never_overflow(dtype):
    x = np.array([[-800.0, -30.0, -1.0, 0.0, 0.5, 30.0, 800.0]], dtype)
    assert_close(Sigmoid(dtype=dtype).forward(x), ref.sigmoid(x), dtype)
    assert_close(TanH(dtype=dtype).forward(x), np.tanh(x.astype(np.float64)), dtype)


@pytest.mark.parametrize("layer", [Sigmoid, TanH])
def test_smooth_gradients_and_in_place(layer):
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    check_gradients(layer(dtype=np.float64), x, exhaustive=True)
    a, b = layer(dtype=np.float64), layer(in_place=True, dtype=np.float64)
    y = a.forward(x)
    xc = x.copy()
    y2 = b.forward(xc)
    assert y2 is xc
    np.testing.assert_array_equal(y, y2)
    dy = np.ones_like(y)
    np.testing.assert_array_equal(a.backward(dy), b.backward(dy.copy()))


@pytest.mark.parametrize("axis", [0, 1, -1, 2])
def test_softmax_matches_reference_and_torch(axis):
    r = np.random.default_rng(axis + 5)
    x = 10 * r.standard_normal((2, 3, 4))
    sm = Softmax(axis=axis, dtype=np.float64)
    y = sm.forward(x)
    np.testing.assert_allclose(y, ref.softmax(x, axis), rtol=1e-12, atol=1e-15)
    check_gradients(Softmax(axis=axis, dtype=np.float64), x)
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.softmax(xt, dim=axis)
    dy = r.standard_normal(x.shape)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(sm.backward(dy), xt.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_softmax_bad_axis():
    with pytest.raises(ShapeError, match="Softmax 'p': axis 3 is out of range"):
        Softmax(axis=3, name="p").forward(np.zeros((2, 3)))


@pytest.mark.parametrize("axis,num_axes,bias", [(1, 1, True), (0, 2, False), (1, -1, True),
                                                (2, 0, True), (-1, 1, False)])
def test_scale_with_learned_param(axis, num_axes, bias):
    r = np.random.default_rng(7)
    x = r.standard_normal((2, 3, 4))
    sc = Scale(axis=axis, num_axes=num_axes, bias_term=bias, filler="gaussian",
               bias_filler="gaussian", dtype=np.float64)
    y = sc.forward(x)
    s = sc.params[0].data
    b = sc.params[1].data if bias else None
    if num_axes == 0:     # one scalar, stored as a 1-element param
        s, b = s.reshape(()), None if b is None else b.reshape(())
    np.testing.assert_allclose(y, ref.scale(x, s, b, axis % 3), rtol=1e-12)
    check_gradients(Scale(axis=axis, num_axes=num_axes, bias_term=bias, filler="gaussian",
                          dtype=np.float64), x, exhaustive=True)


def test_scale_with_the_scale_as_a_second_bottom():
    r = np.random.default_rng(8)
    x, s = r.standard_normal((4, 3, 2)), r.standard_normal((4, 3))
    sc = Scale(axis=0, bias_term=True, bias_filler="gaussian", dtype=np.float64)
    y = sc.forward(x, s)
    np.testing.assert_allclose(y, ref.scale(x, s, sc.params[0].data, 0), rtol=1e-12)
    check_gradients(Scale(axis=0, dtype=np.float64), x, s, exhaustive=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scale_on_a_large_blob_matches_numpy_at_one_and_two_threads(dtype):
    # past the kernels' one-thread grain: the per-channel passes split over the threads
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 24, 50, 60)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    s, b = rng.standard_normal(24), rng.standard_normal(24)

    def run():
        layer = Scale(axis=1, bias_term=True, dtype=dtype)
        layer.forward(x)
        layer.params[0].data[...] = s
        layer.params[1].data[...] = b
        y = layer.forward(x)
        for p in layer.params:
            p.diff[...] = 0
        dx = layer.backward(dy)
        return y, dx, layer.params[0].diff.copy(), layer.params[1].diff.copy()

    one, two = at_threads(1, run), at_threads(2, run)
    for a, c in zip(one, two):
        np.testing.assert_array_equal(a, c)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    y, dx, ds, db = one
    assert_close(y, x64 * s[:, None, None] + b[:, None, None], dtype)
    assert_close(dx, dy64 * s[:, None, None], dtype)
    assert_close(ds, (dy64 * x64).sum(axis=(0, 2, 3)), dtype, scale=x.size ** 0.5)
    assert_close(db, dy64.sum(axis=(0, 2, 3)), dtype, scale=x.size ** 0.5)


def test_scale_bad_shapes():
    with pytest.raises(ShapeError, match=r"Scale 's': bottom 1 \(the scale\) has shape 3 but "
                                         r"must equal bottom 0's axes from axis 1 "
                                         r"\(4; bottom 0 is 2x4\)"):
        Scale(name="s").forward(np.zeros((2, 4)), np.zeros(3))
    with pytest.raises(ShapeError, match="axis 1 \\+ num_axes 3 exceeds"):
        Scale(num_axes=3, name="s").forward(np.zeros((2, 4)))


def test_split_copies_and_sums_diffs():
    x = np.arange(6.0).reshape(2, 3)
    sp = Split(num_tops=3, dtype=np.float64)
    tops = sp.forward(x)
    assert len(tops) == 3 and all(t is not x for t in tops)
    for t in tops:
        np.testing.assert_array_equal(t, x)
    tops[0][0, 0] = 99.0
    assert tops[1][0, 0] == 0.0
    dx = sp.backward(np.ones((2, 3)), 2 * np.ones((2, 3)), 3 * np.ones((2, 3)))
    np.testing.assert_array_equal(dx, 6 * np.ones((2, 3)))
    check_gradients(Split(num_tops=2, dtype=np.float64), x)


@pytest.mark.parametrize("kwargs,sizes", [(dict(axis=1, slice_point=[1, 3]), [1, 2, 2]),
                                          (dict(axis=-1, num_tops=2), [3, 3]),
                                          (dict(axis=0, slice_point=2), [2, 2])])
def test_slice_cuts_like_caffe(kwargs, sizes):
    r = np.random.default_rng(9)
    shape = {1: (4, 5, 6), -1: (4, 5, 6), 0: (4, 5, 6)}[kwargs["axis"]]
    x = r.standard_normal(shape)
    tops = Slice(dtype=np.float64, **kwargs).forward(x)
    axis = kwargs["axis"] % 3
    assert [t.shape[axis] for t in tops] == sizes
    np.testing.assert_array_equal(np.concatenate(tops, axis=axis), x)
    check_gradients(Slice(dtype=np.float64, **kwargs), x)


def test_slice_bad_input():
    with pytest.raises(ConfigError, match="slice_point must be strictly increasing"):
        Slice(slice_point=[2, 2])
    with pytest.raises(ShapeError, match="Slice 'c': slice_point \\[5\\] must lie inside axis 1"
                                         " of size 5"):
        Slice(slice_point=[5], name="c").forward(np.zeros((2, 5)))
    with pytest.raises(ShapeError, match="does not divide into 3 equal tops"):
        Slice(num_tops=3).forward(np.zeros((2, 5)))


@pytest.mark.parametrize("kwargs,bottom,top", [
    (dict(shape=[0, -1]), (2, 3, 4), (2, 12)),
    (dict(shape=[-1]), (2, 3, 4), (24,)),
    (dict(shape=[1], axis=0, num_axes=0), (2, 3), (1, 2, 3)),
    (dict(shape=[2, 2], axis=1, num_axes=1), (3, 4, 5), (3, 2, 2, 5)),
    (dict(shape=[0, 0, -1, 1], axis=0), (2, 3, 4), (2, 3, 4, 1)),
    (dict(shape=[1], axis=-1, num_axes=0), (2, 3), (2, 3, 1)),
])
def test_reshape_follows_caffe(kwargs, bottom, top):
    x = np.arange(np.prod(bottom), dtype=np.float64).reshape(bottom)
    rs = Reshape(dtype=np.float64, **kwargs)
    y = rs.forward(x)
    assert y.shape == top
    np.testing.assert_array_equal(y.ravel(), x.ravel())
    assert rs.backward(np.ones(top)).shape == bottom


def test_reshape_bad_input():
    with pytest.raises(ConfigError, match="at most one axis"):
        Reshape(shape=[-1, -1])
    with pytest.raises(ShapeError, match="Reshape 'r': shape \\[5, -1\\] cannot hold the 12"):
        Reshape(shape=[5, -1], name="r").forward(np.zeros((3, 4)))
    with pytest.raises(ShapeError, match="gives 5x2 \\(10 elements\\) but bottom 3x4 has 12"):
        Reshape(shape=[5, 2], name="r").forward(np.zeros((3, 4)))


@pytest.mark.parametrize("layer,fn", [(Sigmoid, "sigmoid"), (TanH, "tanh")])
def test_smooth_matches_torch(layer, fn):
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(12)
    x = 4 * r.standard_normal((3, 5))
    lyr = layer(dtype=np.float64)
    y = lyr.forward(x)
    dy = r.standard_normal(x.shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = getattr(torch, fn)(xt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(lyr.backward(dy), xt.grad.numpy(), rtol=1e-10, atol=1e-15)
