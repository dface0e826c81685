"""Interp: output sizes of every DeepLab mode, forward / backward vs naive references (DeepLab's
and ATen's formulas), the adjoint identity, finite differences, PyTorch's F.interpolate, the
nearest mode on label maps, thread-count independence, and bad inputs."""

import numpy as np
import pytest

import convnet
from convnet.errors import ConfigError, ShapeError
from convnet.layers import Interp
from convnet.layers.interp import bilinear_table
from convnet.testing import check_gradients
from conftest import assert_close
from reference import interp as ref

KINDS = ["zoom", "shrink", "both", "size", "reference"]


def expected_size(h, w, params):
    """DeepLab's interp_layer.cpp Reshape, on the cropped size h x w."""
    if "height" in params:
        return params["height"], params["width"]
    if "shrink_factor" in params:
        s = params["shrink_factor"]
        h, w = (h - 1) // s + 1, (w - 1) // s + 1
    if "zoom_factor" in params:
        z = params["zoom_factor"]
        h, w = h + (h - 1) * (z - 1), w + (w - 1) * (z - 1)
    return h, w


def interp_config(seed):
    """A random small Interp case: every size mode, crops, both mappings, some nearest."""
    r = np.random.default_rng(seed)
    kind = KINDS[seed % len(KINDS)]
    n, c = int(r.integers(1, 3)), int(r.integers(1, 4))
    h, w = int(r.integers(1, 10)), int(r.integers(1, 10))
    pad_beg = -int(r.integers(0, 2)) if min(h, w) > 2 else 0
    pad_end = -int(r.integers(0, 3)) if min(h, w) + pad_beg > 2 else 0
    params = dict(pad_beg=pad_beg, pad_end=pad_end, align_corners=bool((seed // 5) % 2 == 0),
                  mode="nearest" if seed % 4 == 3 else "bilinear")
    ref_shape = None
    if kind == "zoom":
        params["zoom_factor"] = int(r.integers(1, 4))
    elif kind == "shrink":
        params["shrink_factor"] = int(r.integers(1, 4))
    elif kind == "both":
        params["shrink_factor"] = int(r.integers(1, 3))
        params["zoom_factor"] = int(r.integers(2, 4))
    elif kind == "size":
        params["height"], params["width"] = int(r.integers(1, 12)), int(r.integers(1, 12))
    else:
        ref_shape = (n, int(r.integers(1, 4)), int(r.integers(1, 12)), int(r.integers(1, 12)))
    he, we = h + pad_beg + pad_end, w + pad_beg + pad_end
    out = ref_shape[2:] if ref_shape else expected_size(he, we, params)
    x = r.standard_normal((n, c, h, w))
    return params, x, ref_shape, tuple(int(o) for o in out)


SEEDS = range(40)


def run(params, x, ref_shape, dtype=np.float64):
    layer = Interp(dtype=dtype, **params)
    bottoms = [x.astype(dtype)] + ([np.zeros(ref_shape, dtype)] if ref_shape else [])
    return layer, bottoms


def reference_kwargs(params):
    return dict(pad_beg=params["pad_beg"], pad_end=params["pad_end"],
                align_corners=params["align_corners"], mode=params["mode"])


# ---------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("params,in_hw,out_hw", [
    (dict(zoom_factor=8), (32, 32), (249, 249)),
    (dict(zoom_factor=8), (65, 41), (513, 321)),
    (dict(shrink_factor=8), (513, 513), (65, 65)),
    (dict(shrink_factor=2), (128, 127), (64, 64)),
    (dict(shrink_factor=2, zoom_factor=3), (9, 7), (13, 10)),
    (dict(height=65, width=17), (128, 128), (65, 17)),
    (dict(zoom_factor=2, pad_beg=-1, pad_end=-2), (10, 8), (13, 9)),
    (dict(zoom_factor=1), (5, 3), (5, 3)),
])
def test_output_size_follows_deeplab_formulas(params, in_hw, out_hw):
    layer = Interp(**params)
    assert layer.setup((2, 3, *in_hw)) == (2, 3, *out_hw)


def test_second_bottom_sets_the_output_size():
    layer = Interp()
    assert layer.setup((2, 3, 5, 7), (2, 21, 11, 4)) == (2, 3, 11, 4)
    assert layer.setup((2, 3, 5, 7), (2, 9, 13)) == (2, 3, 9, 13)   # a label map (N, H, W)


# ---------------------------------------------------------------------------- references

@pytest.mark.parametrize("seed", SEEDS)
def test_forward_matches_reference(seed, dtype):
    params, x, ref_shape, out = interp_config(seed)
    layer, bottoms = run(params, x, ref_shape, dtype)
    y = layer.forward(*bottoms)
    assert y.shape == x.shape[:2] + out and y.dtype == dtype
    expected = ref.interp_forward(bottoms[0].astype(np.float64), *out, **reference_kwargs(params))
    assert_close(y, expected, dtype)


@pytest.mark.parametrize("seed", SEEDS)
def test_backward_matches_reference(seed, dtype):
    params, x, ref_shape, out = interp_config(seed)
    layer, bottoms = run(params, x, ref_shape, dtype)
    layer.forward(*bottoms)
    dy = np.random.default_rng(seed + 1000).standard_normal(x.shape[:2] + out).astype(dtype)
    dx = layer.backward(dy)
    if ref_shape:
        dx, dref = dx
        assert dref is None
    assert dx.shape == x.shape and dx.dtype == dtype
    expected = ref.interp_backward(dy, x.shape, **reference_kwargs(params))
    assert_close(dx, expected, dtype, scale=4.0)


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("seed", [s for s in SEEDS if s % 4 != 3][:10])
def test_both_backward_programs_match_reference(seed, order, dtype):
    # the kernel picks columns-first or rows-first by work count; check each one forced
    from convnet._cpu import interp as kernels
    params, x, _, out = interp_config(seed)
    he = x.shape[2] + params["pad_beg"] + params["pad_end"]
    we = x.shape[3] + params["pad_beg"] + params["pad_end"]
    ac, off = params["align_corners"], -params["pad_beg"]
    rows, rw = bilinear_table(he, out[0], ac, dtype, off)
    cols, cw = bilinear_table(we, out[1], ac, dtype, off)
    dy = np.random.default_rng(seed + 3000).standard_normal(x.shape[:2] + out).astype(dtype)
    dx = np.full(x.shape, np.nan, dtype)
    kernels.bilinear_backward(dy, dx, rows, rw, cols, cw, order)
    expected = ref.interp_backward(dy, x.shape, **reference_kwargs(params))
    assert_close(dx, expected, dtype, scale=4.0)


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("seed", [s for s in SEEDS if s % 4 != 3][:10])
def test_both_forward_programs_match_reference(seed, order, dtype):
    # likewise for forward: columns first (DeepLab's order) or rows first, each forced
    from convnet._cpu import interp as kernels
    params, x, _, out = interp_config(seed)
    x = x.astype(dtype)
    he = x.shape[2] + params["pad_beg"] + params["pad_end"]
    we = x.shape[3] + params["pad_beg"] + params["pad_end"]
    ac, off = params["align_corners"], -params["pad_beg"]
    rows, rw = bilinear_table(he, out[0], ac, dtype, off)
    cols, cw = bilinear_table(we, out[1], ac, dtype, off)
    y = np.full(x.shape[:2] + out, np.nan, dtype)
    kernels.bilinear_forward(x, y, rows, rw, cols, cw, order)
    expected = ref.interp_forward(x.astype(np.float64), *out, **reference_kwargs(params))
    assert_close(y, expected, dtype)


@pytest.mark.parametrize("seed", SEEDS)
def test_backward_is_the_adjoint_of_forward(seed):
    params, x, ref_shape, out = interp_config(seed)
    layer, bottoms = run(params, x, ref_shape)
    dy = np.random.default_rng(seed + 2000).standard_normal(x.shape[:2] + out)
    lhs = np.vdot(layer.forward(*bottoms), dy)
    dx = layer.backward(dy, propagate_down=(True,) + ((False,) if ref_shape else ()))
    dx = dx[0] if ref_shape else dx
    rhs = np.vdot(x, dx)
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, np.abs(x).sum() * np.abs(dy).sum())


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 14])
def test_gradients_match_finite_differences(seed):
    params, x, ref_shape, _ = interp_config(seed)
    layer, bottoms = run(params, x, ref_shape)
    check_gradients(layer, *bottoms, exhaustive=x.size <= 40)


def test_zoom_with_align_corners_reproduces_every_source_pixel():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    y = Interp(zoom_factor=3, dtype=np.float64).forward(x)
    np.testing.assert_array_equal(y[:, :, ::3, ::3], x)


# ---------------------------------------------------------------------------- special sizes

@pytest.mark.parametrize("align_corners", [True, False])
def test_same_size_is_a_copy_and_backward_a_copy_add(align_corners, dtype):
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 5)).astype(dtype)
    x[0, 0, 0, 0] = np.nan
    layer = Interp(height=6, width=5, align_corners=align_corners, dtype=dtype)
    y = layer.forward(x)
    np.testing.assert_array_equal(y, x)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(dtype)
    np.testing.assert_array_equal(layer.backward(dy), dy)


def test_same_size_after_cropping_copies_the_window():
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 8))
    layer = Interp(height=6, width=5, pad_beg=-1, pad_end=-2, dtype=np.float64)
    np.testing.assert_array_equal(layer.forward(x), x[:, :, 1:7, 1:6])
    dy = np.random.default_rng(2).standard_normal((2, 3, 6, 5))
    expected = np.zeros_like(x)
    expected[:, :, 1:7, 1:6] = dy
    np.testing.assert_array_equal(layer.backward(dy), expected)


def test_single_output_row_and_column_take_the_first_pixel_with_align_corners():
    x = np.random.default_rng(3).standard_normal((1, 2, 5, 4))
    y = Interp(height=1, width=1, dtype=np.float64).forward(x)
    np.testing.assert_array_equal(y[:, :, 0, 0], x[:, :, 0, 0])
    y = Interp(height=1, width=3, align_corners=False, dtype=np.float64).forward(x)
    expected = ref.interp_forward(x, 1, 3, align_corners=False)
    assert_close(y, expected, np.float64)


def test_float64_bottom_is_converted_for_a_float32_layer():
    x = np.random.default_rng(4).standard_normal((1, 2, 3, 4))
    y = Interp(zoom_factor=2).forward(x[:, :, :, ::-1])
    assert y.dtype == np.float32
    assert_close(y, ref.interp_forward(x[:, :, :, ::-1], 5, 7), np.float32)


def test_backward_returns_a_fresh_array_each_call():
    x = np.random.default_rng(5).standard_normal((1, 2, 3, 4))
    layer = Interp(zoom_factor=2, dtype=np.float64)
    layer.forward(x)
    dy = np.ones((1, 2, 5, 7))
    first = layer.backward(dy)
    second = layer.backward(dy)
    assert first is not second
    np.testing.assert_array_equal(first, second)


def test_reference_bottom_gets_no_diff_and_may_be_a_label_map():
    x = np.random.default_rng(6).standard_normal((2, 3, 4, 5))
    labels = np.zeros((2, 7, 9), dtype=np.int64)
    layer = Interp(dtype=np.float64)
    y = layer.forward(x, labels)
    assert y.shape == (2, 3, 7, 9)
    dx, dlabels = layer.backward(np.ones(y.shape))
    assert dlabels is None and dx.shape == x.shape
    with pytest.raises(ValueError, match="cannot propagate_down to bottom 1"):
        layer.backward(np.ones(y.shape), propagate_down=(True, True))


# ---------------------------------------------------------------------------- nearest

def test_nearest_with_align_corners_rounds_halves_up():
    x = np.arange(3.0).reshape(1, 1, 3, 1)
    y = Interp(height=5, width=1, mode="nearest", dtype=np.float64).forward(x)
    assert y[0, 0, :, 0].tolist() == [0.0, 1.0, 1.0, 2.0, 2.0]


@pytest.mark.parametrize("label_dtype", [np.uint8, np.int16, np.int32, np.int64, np.bool_])
@pytest.mark.parametrize("align_corners", [True, False])
def test_nearest_keeps_label_dtype_and_values(label_dtype, align_corners):
    r = np.random.default_rng(7)
    labels = r.integers(0, 2 if label_dtype == np.bool_ else 100, (2, 1, 7, 5))
    labels = labels.astype(label_dtype)
    layer = Interp(height=13, width=11, pad_beg=-1, mode="nearest",
                   align_corners=align_corners)
    y = layer.forward(labels)
    assert y.dtype == label_dtype
    expected = ref.interp_forward(labels, 13, 11, pad_beg=-1, align_corners=align_corners,
                                  mode="nearest")
    np.testing.assert_array_equal(y, expected)
    assert layer.backward(np.ones(y.shape)) is None
    with pytest.raises(ValueError, match="cannot propagate_down to bottom 0"):
        layer.backward(np.ones(y.shape), propagate_down=(True,))


def test_nearest_same_size_label_map_is_a_copy():
    labels = np.random.default_rng(8).integers(0, 255, (2, 1, 6, 4)).astype(np.uint8)
    np.testing.assert_array_equal(Interp(height=6, width=4, mode="nearest").forward(labels),
                                  labels)


def test_bilinear_on_integer_bottom_is_refused():
    labels = np.zeros((1, 1, 4, 4), dtype=np.int64)
    with pytest.raises(ConfigError, match=r"Interp 'lbl': mode='bilinear' on an integer "
                                          r"\(int64\) bottom would blend class ids.*"
                                          r"use mode='nearest'"):
        Interp(zoom_factor=2, name="lbl").forward(labels)


# ---------------------------------------------------------------------------- PyTorch

def _torch_case(seed):
    params, x, ref_shape, out = interp_config(seed)
    he = x.shape[2] + params["pad_beg"] + params["pad_end"]
    we = x.shape[3] + params["pad_beg"] + params["pad_end"]
    window = (slice(None), slice(None), slice(-params["pad_beg"], -params["pad_beg"] + he),
              slice(-params["pad_beg"], -params["pad_beg"] + we))
    return params, x, ref_shape, out, window


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("seed", [s for s in SEEDS if s % 4 != 3][:10])
def test_bilinear_matches_torch_forward_and_backward(seed, align_corners, dtype):
    torch = pytest.importorskip("torch")
    params, x, ref_shape, out, window = _torch_case(seed)
    params = dict(params, align_corners=align_corners)
    layer, bottoms = run(params, x, ref_shape, dtype)
    y = layer.forward(*bottoms)
    tx = torch.tensor(bottoms[0], requires_grad=True)
    ty = torch.nn.functional.interpolate(tx[window], size=out, mode="bilinear",
                                         align_corners=align_corners)
    assert_close(y, ty.detach().double().numpy(), dtype, scale=4.0)
    dy = np.random.default_rng(seed).standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(dy))
    dx = layer.backward(dy, propagate_down=(True, False)[:len(bottoms)])
    dx = dx[0] if ref_shape else dx
    assert_close(dx, tx.grad.double().numpy(), dtype, scale=8.0)


@pytest.mark.parametrize("in_out", [(2, 82), (7, 10), (10, 7), (5, 10), (13, 13), (31, 3),
                                    (3, 40)])
def test_nearest_without_align_corners_matches_torch(in_out):
    # float32: ATen picks the source pixel in float32 arithmetic (floor(dst * (in / out)));
    # (2, 82) is a case where that differs from exact arithmetic (41 * 2 / 82 = 0.99999994)
    torch = pytest.importorskip("torch")
    dtype = np.float32
    n_in, n_out = in_out
    x = np.random.default_rng(9).standard_normal((2, 2, n_in, n_in + 1)).astype(dtype)
    layer = Interp(height=n_out, width=n_out + 2, mode="nearest", align_corners=False,
                   dtype=dtype)
    y = layer.forward(x)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.interpolate(tx, size=(n_out, n_out + 2), mode="nearest")
    np.testing.assert_array_equal(y, ty.detach().numpy())
    dy = np.random.default_rng(10).standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(dy))
    assert_close(layer.backward(dy), tx.grad.double().numpy(), dtype, scale=8.0)


# ---------------------------------------------------------------------------- threads

@pytest.mark.parametrize("params,in_shape", [
    (dict(zoom_factor=3), (2, 3, 23, 31)),
    (dict(height=13, width=11, align_corners=False), (2, 3, 40, 37)),
    (dict(height=50, width=9, mode="nearest"), (3, 2, 17, 40)),
    (dict(height=20, width=30, pad_beg=-2, pad_end=-1), (2, 3, 23, 33)),
])
def test_one_and_two_threads_give_bit_identical_results(params, in_shape, dtype):
    x = np.random.default_rng(11).standard_normal(in_shape).astype(dtype)
    before = convnet.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            convnet.set_num_threads(threads)
            layer = Interp(dtype=dtype, **params)
            y = layer.forward(x)
            dy = np.random.default_rng(12).standard_normal(y.shape).astype(dtype)
            results.append((y, layer.backward(dy)))
    finally:
        convnet.set_num_threads(before)
    (y1, dx1), (y2, dx2) = results
    assert y1.tobytes() == y2.tobytes()
    assert dx1.tobytes() == dx2.tobytes()


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("params,match", [
    (dict(zoom_factor=0), "zoom_factor must be >= 1, got 0"),
    (dict(shrink_factor=0), "shrink_factor must be >= 1, got 0"),
    (dict(zoom_factor=1.5), "zoom_factor must be an int, got 1.5"),
    (dict(height=5), "height and width must be given together, got height=5 and width=None"),
    (dict(width=5), "height and width must be given together, got height=None and width=5"),
    (dict(height=0, width=4), "height must be >= 1, got 0"),
    (dict(height=4, width=4, zoom_factor=2), "give the output size one way: height and width "
                                             r"\(4x4\) cannot be combined with zoom_factor"),
    (dict(zoom_factor=2, pad_beg=1), "pad_beg must be <= 0: only cropping"),
    (dict(zoom_factor=2, pad_end=2), "pad_end must be <= 0: only cropping .* got 2"),
    (dict(zoom_factor=2, mode="bicubic"), "mode must be one of BILINEAR, NEAREST"),
    (dict(zoom_factor=2, align_corners=1), "align_corners must be True or False"),
])
def test_bad_parameters_are_rejected(params, match):
    with pytest.raises(ConfigError, match=r"Interp 'up': " + match):
        Interp(name="up", **params)


@pytest.mark.parametrize("params,shapes,exc,match", [
    (dict(), [(1, 2, 3, 4)], ConfigError,
     "no output size: give zoom_factor, shrink_factor"),
    (dict(zoom_factor=2, pad_beg=-2, pad_end=-1), [(1, 2, 3, 9)], ShapeError,
     r"input 3x9 cropped by pad_beg -2 and pad_end -1 leaves 0x6: the crop removes everything"),
    (dict(zoom_factor=2), [(2, 3, 4)], ShapeError,
     r"bottom 0 must be 4-D \(N, C, H, W\), got shape 2x3x4 \(3-D\)"),
    (dict(), [(2, 3, 4, 4), (3, 1, 8, 8)], ShapeError,
     r"bottom 1 \(the size reference, 3x1x8x8\) must have the batch size of bottom 0 "
     r"\(2x3x4x4\): 3 != 2"),
    (dict(), [(2, 3, 4, 4), (8, 8)], ShapeError, r"bottom 1 \(the size reference\) must be"),
    (dict(zoom_factor=2), [(2, 3, 4, 4), (2, 1, 8, 8)], ConfigError,
     "a second bottom sets the output size; do not also give zoom_factor=2"),
])
def test_bad_shapes_are_rejected(params, shapes, exc, match):
    with pytest.raises(exc, match=r"Interp 'up': " + match):
        Interp(name="up", **params).setup(*shapes)


def test_backward_before_forward_is_an_error():
    with pytest.raises(RuntimeError, match="backward called before forward"):
        Interp(zoom_factor=2).backward(np.zeros((1, 1, 3, 3)))
