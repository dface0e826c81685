"""Crop, Concat and Eltwise: random configurations vs naive references, finite differences,
PyTorch, tie and zero handling, and every bad parameter or shape."""

import numpy as np
import pytest

import convnet
from convnet.errors import ConfigError, ShapeError
from convnet.layers import Concat, Crop, Eltwise
from convnet.testing import check_gradients
from conftest import assert_close, at_threads
from reference import structure as ref


# ---------------------------------------------------------------------------- Crop

def crop_config(seed):
    """Random ndim (2-5), axis (maybe negative), reference shape and fitting offsets."""
    r = np.random.default_rng(seed)
    ndim = int(r.integers(2, 6))
    axis = int(r.integers(0, ndim))
    big = [int(s) for s in r.integers(1, 6, size=ndim)]
    ref_shape = list(big)
    offsets = []
    for a in range(axis, ndim):
        ref_shape[a] = int(r.integers(1, big[a] + 1))
        offsets.append(int(r.integers(0, big[a] - ref_shape[a] + 1)))
    for a in range(axis):
        ref_shape[a] = int(r.integers(1, 4))      # axes before `axis` are not compared
    if seed % 2:
        axis -= ndim
    if seed % 5 == 0 and len(set(offsets)) == 1:
        offset = offsets[0]
    elif seed % 7 == 0 and len(set(offsets)) == 1:
        offset = [offsets[0]]
    else:
        offset = offsets
    return r.standard_normal(big), tuple(ref_shape), axis, offset, offsets


@pytest.mark.parametrize("seed", range(40))
def test_crop_matches_reference_forward_and_backward(seed, dtype):
    x, ref_shape, axis, offset, offsets = crop_config(seed)
    x = x.astype(dtype)
    crop = Crop(axis=axis, offset=offset, dtype=dtype)
    y = crop.forward(x, np.zeros(ref_shape))
    canon = axis % x.ndim
    want = ref.crop_forward(x, ref_shape, canon, offsets)
    assert y.shape == want.shape and y.dtype == dtype
    assert_close(y, want, dtype)
    dy = np.random.default_rng(seed).standard_normal(y.shape).astype(dtype)
    dx, dref = crop.backward(dy)
    assert dref is None
    assert_close(dx, ref.crop_backward(dy, x.shape, canon, offsets), dtype)


@pytest.mark.parametrize("seed", range(0, 40, 5))
def test_crop_gradient_matches_finite_differences(seed):
    x, ref_shape, axis, offset, _ = crop_config(seed)
    check_gradients(Crop(axis=axis, offset=offset, dtype=np.float64), x, np.zeros(ref_shape),
                    exhaustive=x.size <= 60)


def test_crop_fcn_style_score_alignment():
    x = np.arange(2 * 3 * 8 * 9, dtype=np.float64).reshape(2, 3, 8, 9)
    y = Crop(offset=(1, 2), dtype=np.float64).forward(x, np.zeros((7, 1, 5, 6)))
    np.testing.assert_array_equal(y, x[:, :, 1:6, 2:8])


def test_crop_reference_bottom_gets_no_diff():
    crop = Crop(name="c")
    crop.forward(np.ones((1, 1, 4, 4)), np.ones((1, 1, 2, 2)))
    with pytest.raises(ConfigError, match="cannot propagate_down to bottom 1"):
        crop.backward(np.ones((1, 1, 2, 2)), propagate_down=[True, True])
    assert crop.backward(np.ones((1, 1, 2, 2)), propagate_down=[False, False]) == (None, None)


@pytest.mark.parametrize("kwargs,match", [
    (dict(offset=-1), "offset must be >= 0, got -1"),
    (dict(offset=[1, -2]), "offset must be >= 0, got -2"),
    (dict(offset=[]), "offset must be an int or a non-empty list of ints"),
    (dict(offset=1.5), "offset must be an int, got 1.5"),
    (dict(axis="2"), "axis must be an int, got '2'"),
])
def test_crop_bad_parameters_raise(kwargs, match):
    with pytest.raises(ConfigError, match="Crop 'score_crop': " + match):
        Crop(name="score_crop", **kwargs)


@pytest.mark.parametrize("kwargs,big,small,exc,match", [
    (dict(offset=2), (1, 3, 5, 5), (1, 1, 4, 4), ShapeError,
     r"crop does not fit on axis 2: offset 2 \+ size 4 \(bottom 1, 1x1x4x4\) > 5 "
     r"\(bottom 0, 1x3x5x5\)"),
    (dict(offset=[0, 3]), (1, 3, 5, 5), (1, 1, 2, 3), ShapeError,
     r"crop does not fit on axis 3: offset 3 \+ size 3"),
    (dict(axis=4), (1, 3, 5, 5), (1, 1, 2, 2), ConfigError,
     "axis 4 is out of range for 4-d bottoms"),
    (dict(axis=-5), (1, 3, 5, 5), (1, 1, 2, 2), ConfigError, "axis -5 is out of range"),
    (dict(axis=1, offset=[0, 1]), (1, 3, 5, 5), (1, 1, 2, 2), ConfigError,
     r"offset needs one value or one per cropped axis \(3: axes 1 to 3\), got 2"),
    (dict(), (1, 3, 5, 5), (1, 3, 5), ShapeError, "bottoms must have the same number of axes"),
    (dict(), (1, 3, 5, 5), (1, 3, 0, 5), ShapeError,
     "bottom 1 has size 0 on axis 2 .*the crop would remove everything"),
])
def test_crop_bad_shapes_raise(kwargs, big, small, exc, match):
    with pytest.raises(exc, match="Crop 'score_crop': " + match):
        Crop(name="score_crop", **kwargs).setup(big, small)


def test_crop_needs_two_bottoms():
    with pytest.raises(ShapeError, match="Crop 'c': expects 2 bottoms, got 1"):
        Crop(name="c").forward(np.ones((1, 1, 3, 3)))


# ---------------------------------------------------------------------------- Concat

def concat_config(seed):
    r = np.random.default_rng(seed)
    ndim = int(r.integers(1, 5))
    axis = int(r.integers(-ndim, ndim))
    base = [int(s) for s in r.integers(1, 5, size=ndim)]
    xs = []
    for _ in range(int(r.integers(1, 5))):
        shape = list(base)
        shape[axis] = int(r.integers(1, 5))
        xs.append(r.standard_normal(shape))
    return xs, axis


@pytest.mark.parametrize("seed", range(40))
def test_concat_matches_reference_forward_and_backward(seed, dtype):
    xs, axis = concat_config(seed)
    xs = [x.astype(dtype) for x in xs]
    concat = Concat(axis=axis, dtype=dtype)
    y = concat.forward(*xs)
    assert_close(y, ref.concat_forward(xs, axis), dtype)
    dy = np.random.default_rng(seed).standard_normal(y.shape).astype(dtype)
    dxs = concat.backward(dy)
    dxs = dxs if isinstance(dxs, tuple) else (dxs,)
    for dx, want in zip(dxs, ref.concat_backward(dy, [x.shape for x in xs], axis)):
        assert dx.flags.c_contiguous
        assert_close(dx, want, dtype)


@pytest.mark.parametrize("seed", range(0, 40, 8))
def test_concat_gradient_matches_finite_differences(seed):
    xs, axis = concat_config(seed)
    check_gradients(Concat(axis=axis, dtype=np.float64), *xs)


def test_concat_matches_torch_cat():
    torch = pytest.importorskip("torch")
    for seed in range(10):
        xs, axis = concat_config(seed)
        y = Concat(axis=axis, dtype=np.float64).forward(*xs)
        np.testing.assert_array_equal(y, torch.cat([torch.tensor(x) for x in xs], axis).numpy())


def test_concat_propagate_down_skips_bottoms():
    a, b, c = np.ones((2, 1, 3)), 2 * np.ones((2, 2, 3)), 3 * np.ones((2, 3, 3))
    concat = Concat(dtype=np.float64)
    y = concat.forward(a, b, c)
    da, db, dc = concat.backward(y, propagate_down=[False, True, False])
    assert da is None and dc is None
    np.testing.assert_array_equal(db, b)


@pytest.mark.parametrize("kwargs,shapes,exc,match", [
    (dict(), [(2, 3, 4, 5), (2, 3, 4, 6)], ShapeError,
     r"bottom 1 has shape 2x3x4x6 but bottom 0 has 2x3x4x5: all axes but the concat axis 1 "
     r"must match \(axis 3: 6 vs 5\)"),
    (dict(axis=-1), [(2, 3), (2, 3), (4, 3)], ShapeError,
     r"bottom 2 has shape 4x3 .*\(axis 0: 4 vs 2\)"),
    (dict(), [(2, 3, 4), (2, 3)], ShapeError, "bottom 1 has 2 axes \\(shape 2x3\\) but bottom 0 "
                                              "has 3"),
    (dict(axis=3), [(2, 3, 4), (2, 3, 4)], ConfigError, "axis 3 is out of range for 3-d"),
    (dict(axis=-4), [(2, 3, 4)], ConfigError, "axis -4 is out of range"),
])
def test_concat_bad_shapes_raise(kwargs, shapes, exc, match):
    with pytest.raises(exc, match="Concat 'cat': " + match):
        Concat(name="cat", **kwargs).setup(*shapes)


def test_concat_bad_parameters_raise():
    with pytest.raises(ConfigError, match="Concat 'cat': axis must be an int, got 1.0"):
        Concat(axis=1.0, name="cat")
    with pytest.raises(ShapeError, match="Concat 'cat': expects 1 to 65536 bottoms, got 0"):
        Concat(name="cat").forward()


# ---------------------------------------------------------------------------- Eltwise

def eltwise_config(seed):
    """Random op, 2-4 bottoms, shape; MAX inputs on a coarse grid shuffled without ties."""
    r = np.random.default_rng(seed)
    op = ("SUM", "PROD", "MAX")[seed % 3]
    k = int(r.integers(2, 5))
    shape = tuple(int(s) for s in r.integers(1, 5, size=int(r.integers(1, 5))))
    if op == "MAX":
        # distinct values spaced by 0.1: no ties, and finite differences cannot cross one
        count = k * int(np.prod(shape))
        values = r.permutation(count) * 0.1 - count * 0.05
        xs = list(values.reshape((k,) + shape))
    else:
        xs = [r.standard_normal(shape) for _ in range(k)]
    coeff = list(r.uniform(-2, 2, size=k)) if op == "SUM" and seed % 2 else None
    return xs, op, coeff


@pytest.mark.parametrize("seed", range(45))
def test_eltwise_matches_reference_forward_and_backward(seed, dtype):
    xs, op, coeff = eltwise_config(seed)
    xs = [x.astype(dtype) for x in xs]
    layer = Eltwise(operation=op, coeff=coeff, dtype=dtype)
    y = layer.forward(*xs)
    assert_close(y, ref.eltwise_forward(xs, op, coeff), dtype)
    dy = np.random.default_rng(seed).standard_normal(y.shape).astype(dtype)
    for dx, want in zip(layer.backward(dy), ref.eltwise_backward(dy, xs, op, coeff)):
        assert_close(dx, want, dtype, scale=10)


@pytest.mark.parametrize("seed", range(0, 45, 4))
def test_eltwise_gradient_matches_finite_differences(seed):
    xs, op, coeff = eltwise_config(seed)
    check_gradients(Eltwise(operation=op, coeff=coeff, dtype=np.float64), *xs,
                    exhaustive=xs[0].size <= 12)


def test_eltwise_prod_gradient_is_exact_at_zeros():
    a = np.array([0.0, 0.0, 2.0, 3.0])
    b = np.array([0.0, 5.0, 0.0, 4.0])
    c = np.array([7.0, 6.0, 1.0, 0.0])
    layer = Eltwise("PROD", dtype=np.float64)
    layer.forward(a, b, c)
    da, db, dc = layer.backward(np.ones(4))
    np.testing.assert_array_equal(da, b * c)
    np.testing.assert_array_equal(db, a * c)
    np.testing.assert_array_equal(dc, a * b)
    assert np.isfinite(da).all()


def test_eltwise_max_ties_go_to_the_lowest_bottom_index():
    a = np.array([1.0, 2.0, 5.0, 0.0])
    b = np.array([1.0, 3.0, 5.0, 4.0])
    c = np.array([1.0, 3.0, 4.0, 4.0])
    layer = Eltwise("MAX", dtype=np.float64)
    np.testing.assert_array_equal(layer.forward(a, b, c), [1, 3, 5, 4])
    da, db, dc = layer.backward(np.array([10.0, 20.0, 30.0, 40.0]))
    np.testing.assert_array_equal(da, [10, 0, 30, 0])
    np.testing.assert_array_equal(db, [0, 20, 0, 40])
    np.testing.assert_array_equal(dc, [0, 0, 0, 0])


def test_eltwise_matches_torch():
    torch = pytest.importorskip("torch")
    for seed in range(9):
        xs, op, coeff = eltwise_config(seed)
        dy = np.random.default_rng(seed).standard_normal(xs[0].shape)
        layer = Eltwise(operation=op, coeff=coeff, dtype=np.float64)
        y = layer.forward(*xs)
        dxs = layer.backward(dy)
        txs = [torch.tensor(x, requires_grad=True) for x in xs]
        stacked = torch.stack(txs)
        if op == "SUM":
            w = torch.tensor(coeff or [1.0] * len(xs), dtype=torch.float64)
            ty = (stacked * w.reshape((-1,) + (1,) * xs[0].ndim)).sum(0)
        elif op == "PROD":
            ty = stacked.prod(0)
        else:
            ty = stacked.max(0).values
        ty.backward(torch.tensor(dy))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-14)
        for dx, tx in zip(dxs, txs):
            np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_eltwise_propagate_down_skips_bottoms():
    for op in Eltwise.OPERATIONS:
        xs, _, _ = eltwise_config(4)
        layer = Eltwise(op, dtype=np.float64)
        layer.forward(*xs[:3], xs[0] + 1)
        dxs = layer.backward(np.ones(xs[0].shape), propagate_down=[False, True, False, True])
        assert dxs[0] is None and dxs[2] is None
        assert dxs[1].shape == xs[0].shape and dxs[3].shape == xs[0].shape


@pytest.mark.parametrize("kwargs,match", [
    (dict(operation="MIN"), "operation must be one of SUM, PROD, MAX, got 'MIN'"),
    (dict(operation="PROD", coeff=[1, 2]), "coeff applies only to operation SUM, got "
                                           "operation PROD"),
    (dict(operation="MAX", coeff=[1, 2]), "coeff applies only to operation SUM"),
    (dict(coeff=2.0), "coeff must be a list of numbers \\(one per bottom\\), got 2.0"),
    (dict(coeff=[1, "a"]), "coeff must be a number, got 'a'"),
])
def test_eltwise_bad_parameters_raise(kwargs, match):
    with pytest.raises(ConfigError, match="Eltwise 'fuse': " + match):
        Eltwise(name="fuse", **kwargs)


def test_eltwise_bad_shapes_raise():
    with pytest.raises(ShapeError, match="Eltwise 'fuse': all bottoms must have the same shape: "
                                         "bottom 2 is 2x4, bottom 0 is 2x3"):
        Eltwise(name="fuse").setup((2, 3), (2, 3), (2, 4))
    with pytest.raises(ConfigError, match="Eltwise 'fuse': coeff needs one value per bottom "
                                          "\\(3\\), got 2"):
        Eltwise(name="fuse", coeff=[1, 1]).setup((2, 3), (2, 3), (2, 3))
    with pytest.raises(ShapeError, match="Eltwise 'fuse': expects 2 to 65536 bottoms, got 1"):
        Eltwise(name="fuse").forward(np.ones(3))


def test_eltwise_lowercase_operation_is_accepted():
    assert Eltwise("max").operation == "MAX"


def test_structure_results_are_identical_at_one_and_two_threads():
    before = convnet.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            convnet.set_num_threads(n)
            out = []
            for seed in range(3):
                xs, op, coeff = eltwise_config(seed)
                layer = Eltwise(op, coeff=coeff)
                out += [layer.forward(*xs), *layer.backward(np.ones(xs[0].shape))]
            x, ref_shape, axis, offset, _ = crop_config(1)
            crop = Crop(axis=axis, offset=offset)
            y = crop.forward(x, np.zeros(ref_shape))
            out += [y, crop.backward(y)[0]]
            results.append(out)
    finally:
        convnet.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------- the compiled kernels, large blobs

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_structure_kernels_on_large_blobs_match_numpy_at_one_and_two_threads(dtype):
    # blobs past the kernels' one-thread grain (2**19 elements touched), so both threads
    # copy
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 8, 130, 130)).astype(dtype)
    crops = [(2, [3, 5], (4, 8, 121, 120)), (1, [2, 0, 0], (4, 5, 130, 130)),
             (0, [1, 1, 4, 9], (3, 7, 124, 117)), (3, [11], (4, 8, 130, 119))]

    def run():
        out = []
        for axis, offset, shape in crops:
            crop = Crop(axis=axis, offset=offset, dtype=dtype)
            y = crop.forward(x, np.zeros(shape))
            full = [0] * axis + offset
            want = x[tuple(slice(o, o + n) for o, n in zip(full, shape))]
            np.testing.assert_array_equal(y, want)
            dx = crop.backward(y + 1)[0]
            back = np.zeros_like(x)
            back[tuple(slice(o, o + n) for o, n in zip(full, shape))] = want + 1
            np.testing.assert_array_equal(dx, back)
            out += [y, dx]
        for axis in range(4):
            parts = np.split(x, [1, 3] if x.shape[axis] > 3 else [1], axis=axis)
            cat = Concat(axis=axis, dtype=dtype)
            y = cat.forward(*parts)
            np.testing.assert_array_equal(y, x)
            for got, want in zip(cat.backward(y * 2), np.split(x * 2, [1, 3], axis=axis)):
                np.testing.assert_array_equal(got, want)
            out.append(y)
        xs = [x, x[::-1].copy(), (x * 3).astype(dtype)]
        for coeff in (None, [1.0, -0.5, 2.0], [0.25, 1.0, 1.0]):
            add = Eltwise("SUM", coeff=coeff, dtype=dtype)
            y = add.forward(*xs)
            c = coeff or [1.0, 1.0, 1.0]
            assert_close(y, sum(ci * xi.astype(np.float64) for ci, xi in zip(c, xs)), dtype)
            if coeff is None:
                np.testing.assert_array_equal(y, (xs[0] + xs[1]) + xs[2])
            dxs = add.backward(y)
            for ci, dx in zip(c, dxs):
                assert_close(dx, ci * y.astype(np.float64), dtype)
            out += [y, *dxs]
        for k in (2, 3):
            prod = Eltwise("PROD", dtype=dtype)
            y = prod.forward(*xs[:k])
            np.testing.assert_array_equal(y, np.prod(np.stack(xs[:k]), axis=0, dtype=dtype))
            dxs = prod.backward(x)
            for i, dx in enumerate(dxs):
                others = [xs[j] for j in range(k) if j != i]
                assert_close(dx, x.astype(np.float64) * np.prod(np.stack(others), axis=0,
                                                                dtype=np.float64), dtype)
            big = Eltwise("MAX", dtype=dtype)
            y = big.forward(*xs[:k])
            np.testing.assert_array_equal(y, np.max(np.stack(xs[:k]), axis=0))
            first = np.argmax(np.stack(xs[:k]), axis=0)
            for i, dx in enumerate(big.backward(x)):
                np.testing.assert_array_equal(dx, np.where(first == i, x, 0))
            out += [y, *dxs]
        return out

    one, two = at_threads(1, run), at_threads(2, run)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_structure_layers_take_non_contiguous_bottoms():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((70, 40, 6, 4)).astype(np.float32).transpose(3, 2, 1, 0)
    assert not x.flags.c_contiguous
    y = Crop(axis=2, offset=[3, 5]).forward(x, np.zeros((4, 6, 31, 60)))
    np.testing.assert_array_equal(y, x[:, :, 3:34, 5:65])
    np.testing.assert_array_equal(Concat(axis=1).forward(x, x), np.concatenate([x, x], 1))
    np.testing.assert_array_equal(Eltwise("SUM").forward(x, x), x + x)


def test_eltwise_sum_backward_hands_back_dy_where_the_coefficient_is_one():
    dy = np.random.default_rng(5).standard_normal((2, 3, 4)).astype(np.float32)
    add = Eltwise("SUM", coeff=[1.0, -2.0, 1.0])
    add.forward(dy, dy, dy)
    dxs = add.backward(dy)
    assert dxs[0] is dy and dxs[2] is dy
    np.testing.assert_array_equal(dxs[1], -2 * dy)
