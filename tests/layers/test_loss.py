"""SoftmaxWithLoss and EuclideanLoss against naive references, finite differences, PyTorch."""

import numpy as np
import pytest

import convnet
from convnet.errors import ConfigError, DataError, ShapeError
from convnet.layers import EuclideanLoss, SoftmaxWithLoss
from convnet.testing import check_gradients
from conftest import assert_close, at_threads
from reference import loss as ref

NORMALIZATIONS = ("VALID", "FULL", "BATCH_SIZE", "NONE")
LABEL_DTYPES = (np.int64, np.int32, np.float32, np.float64, np.uint8)


def softmax_case(seed):
    """A random SoftmaxWithLoss configuration: odd, non-square sizes, every label layout,
    label dtype, ignore label and normalization."""
    r = np.random.default_rng(1000 + seed)
    n, c = int(r.integers(1, 4)), int(r.integers(1, 7))
    spatial = [(), (int(r.integers(1, 8)),),
               (int(r.integers(1, 8)), int(r.integers(1, 8)))][seed % 3]
    ignore = [None, 255, 0, -1][seed % 4]
    scores = r.standard_normal((n, c) + spatial) * 3
    labels = r.integers(0, c, (n,) + spatial)
    if ignore is not None:
        labels = np.where(r.random(labels.shape) < 0.3, ignore, labels)
    label_dtype = LABEL_DTYPES[seed % len(LABEL_DTYPES)]
    if ignore == -1 and label_dtype == np.uint8:
        label_dtype = np.int32
    labels = labels.astype(label_dtype)
    if (seed // 2) % 2:     # Caffe's (N, 1, ...) label layout
        labels = labels.reshape((n, 1) + spatial)
    return scores, labels, ignore, NORMALIZATIONS[(seed // 3) % 4]


def squeezed(labels, scores):
    return np.asarray(labels).reshape((scores.shape[0],) + scores.shape[2:])


# ---------------------------------------------------------------- SoftmaxWithLoss: values

@pytest.mark.parametrize("seed", range(32))
def test_softmax_loss_and_gradient_match_reference(seed, dtype):
    scores, labels, ignore, mode = softmax_case(seed)
    layer = SoftmaxWithLoss(ignore_label=ignore, normalization=mode, dtype=dtype)
    loss = layer.forward(scores.astype(dtype), labels)
    grad, label_grad = layer.backward()
    want_loss, want_grad = ref.softmax_loss(scores.astype(dtype), squeezed(labels, scores),
                                            ignore, mode)
    assert isinstance(loss, float)
    assert_close(loss, want_loss, dtype, scale=10)
    assert grad.dtype == dtype and grad.shape == scores.shape
    assert label_grad is None
    assert_close(grad, want_grad, dtype)


@pytest.mark.parametrize("seed", [0, 5, 7, 10, 14, 23])
def test_softmax_gradient_matches_finite_differences(seed):
    scores, labels, ignore, mode = softmax_case(seed)
    layer = SoftmaxWithLoss(ignore_label=ignore, normalization=mode, dtype=np.float64)
    check_gradients(layer, scores, labels, exhaustive=scores.size <= 200)


def test_normalizations_divide_the_same_sum_by_valid_full_batch_or_one(rng):
    scores = rng.standard_normal((3, 4, 5, 6))
    labels = rng.integers(0, 4, (3, 5, 6))
    labels[0, :2] = 9
    valid = int((labels != 9).sum())
    total = SoftmaxWithLoss(ignore_label=9, normalization="NONE", dtype=np.float64)
    value = total.forward(scores, labels)
    for mode, count in (("VALID", valid), ("FULL", 3 * 5 * 6), ("BATCH_SIZE", 3)):
        layer = SoftmaxWithLoss(ignore_label=9, normalization=mode, dtype=np.float64)
        assert layer.forward(scores, labels) == pytest.approx(value / count, rel=1e-13)
        np.testing.assert_allclose(layer.backward()[0], total.backward()[0] / count,
                                   rtol=1e-13, atol=1e-16)


def test_normalization_names_are_case_insensitive():
    assert SoftmaxWithLoss(normalization="batch_size").normalization == "BATCH_SIZE"


def test_valid_without_ignore_label_divides_by_every_pixel(rng):
    scores = rng.standard_normal((2, 3, 4, 5))
    labels = rng.integers(0, 3, (2, 4, 5))
    valid = SoftmaxWithLoss(dtype=np.float64).forward(scores, labels)
    full = SoftmaxWithLoss(normalization="FULL", dtype=np.float64).forward(scores, labels)
    assert valid == full


@pytest.mark.parametrize("mode", NORMALIZATIONS)
def test_every_pixel_ignored_gives_zero_loss_and_zero_gradient(mode, rng):
    scores = rng.standard_normal((2, 3, 4, 5))
    labels = np.full((2, 1, 4, 5), 255.0)
    layer = SoftmaxWithLoss(ignore_label=255, normalization=mode, dtype=np.float64)
    assert layer.forward(scores, labels) == 0.0
    grad, _ = layer.backward()
    assert not grad.any()


def test_ignored_pixels_get_zero_gradient_and_others_sum_to_zero_over_classes(rng):
    scores = rng.standard_normal((2, 5, 6, 7))
    labels = rng.integers(0, 5, (2, 6, 7))
    labels[rng.random(labels.shape) < 0.4] = 4       # ignore a class id that exists
    layer = SoftmaxWithLoss(ignore_label=4, dtype=np.float64)
    layer.forward(scores, labels)
    grad, _ = layer.backward()
    ignored = labels == 4
    assert not grad.transpose(0, 2, 3, 1)[ignored].any()
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-15)


@pytest.mark.parametrize("label_shape", [(4,), (4, 1)])
def test_two_dimensional_scores_take_n_or_n_by_1_labels(label_shape, rng):
    scores = rng.standard_normal((4, 7))
    labels = rng.integers(0, 7, label_shape)
    layer = SoftmaxWithLoss(dtype=np.float64)
    want_loss, want_grad = ref.softmax_loss(scores, labels.reshape(4), None, "VALID")
    assert layer.forward(scores, labels) == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_allclose(layer.backward()[0], want_grad, rtol=1e-12, atol=1e-15)


def test_label_dtypes_and_layouts_give_identical_results(rng):
    scores = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
    labels = rng.integers(0, 6, (2, 5, 3))
    results = []
    for dt in (np.int64, np.int32, np.int16, np.uint8, np.float32, np.float64, np.float16):
        for layout in (labels.shape, (2, 1, 5, 3)):
            layer = SoftmaxWithLoss()
            loss = layer.forward(scores, labels.astype(dt).reshape(layout))
            results.append((loss, layer.backward()[0]))
    for loss, grad in results[1:]:
        assert loss == results[0][0]
        np.testing.assert_array_equal(grad, results[0][1])


@pytest.mark.parametrize("ignore", [None, 255])
def test_extreme_logits_give_finite_exact_loss_and_gradient(ignore, dtype):
    scores = np.full((2, 3, 2, 2), -1e4)
    scores[:, 0] = 1e4
    labels = np.zeros((2, 2, 2), np.int64)
    labels[0, 0, 0] = 2                    # the correct class scores 2e4 below the best
    labels[1, 1, 1] = 1
    layer = SoftmaxWithLoss(ignore_label=ignore, normalization="NONE", dtype=dtype)
    loss = layer.forward(scores, labels)
    grad, _ = layer.backward()
    assert loss == pytest.approx(4e4, rel=1e-6)
    assert np.isfinite(grad).all()
    expected = np.zeros_like(scores)
    expected[0, 0, 0, 0], expected[0, 2, 0, 0] = 1, -1
    expected[1, 0, 1, 1], expected[1, 1, 1, 1] = 1, -1
    np.testing.assert_array_equal(grad, expected)


def test_large_equal_logits_give_log_c(dtype):
    scores = np.full((1, 4, 3, 3), 1e4)
    layer = SoftmaxWithLoss(dtype=dtype)
    assert layer.forward(scores, np.ones((1, 3, 3))) == pytest.approx(np.log(4), rel=1e-6)


def test_nan_score_gives_nan_loss(dtype, rng):
    scores = rng.standard_normal((2, 4, 3, 5))
    scores[1, 2, 0, 3] = np.nan                 # not the first class, nor the max
    loss = SoftmaxWithLoss(dtype=dtype).forward(scores, rng.integers(0, 4, (2, 3, 5)))
    assert np.isnan(loss)


@pytest.mark.parametrize("shape", [(2, 70, 13, 11), (3, 9000)])
def test_many_classes_match_reference(shape, dtype, rng):
    scores = rng.standard_normal(shape) * 2
    labels = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    labels.reshape(-1)[::7] = 255
    layer = SoftmaxWithLoss(ignore_label=255, dtype=dtype)
    loss = layer.forward(scores.astype(dtype), labels)
    want_loss, want_grad = ref.softmax_loss(scores.astype(dtype), labels, 255, "VALID")
    assert_close(loss, want_loss, dtype, scale=10)
    assert_close(layer.backward()[0], want_grad, dtype)


# ---------------------------------------------------------------- SoftmaxWithLoss: scaling

def test_loss_weight_scales_loss_and_default_backward(rng):
    scores = rng.standard_normal((2, 3, 4, 5))
    labels = rng.integers(0, 3, (2, 4, 5))
    plain = SoftmaxWithLoss(dtype=np.float64)
    weighted = SoftmaxWithLoss(loss_weight=0.25, dtype=np.float64)
    assert weighted.forward(scores, labels) == pytest.approx(0.25 * plain.forward(scores, labels),
                                                             rel=1e-15)
    np.testing.assert_allclose(weighted.backward()[0], 0.25 * plain.backward()[0], rtol=1e-15)


def test_explicit_top_diff_scales_the_gradient(rng):
    scores = rng.standard_normal((2, 3, 4, 5))
    labels = rng.integers(0, 3, (2, 4, 5))
    layer = SoftmaxWithLoss(loss_weight=0.25, dtype=np.float64)
    layer.forward(scores, labels)
    unit = layer.backward(1.0)[0]
    np.testing.assert_allclose(layer.backward(np.array([-3.0]))[0], -3.0 * unit, rtol=1e-15)


def test_backward_twice_gives_the_same_gradient(rng):
    scores = rng.standard_normal((2, 3, 4, 5))
    labels = rng.integers(0, 3, (2, 4, 5))
    layer = SoftmaxWithLoss(dtype=np.float64)
    layer.forward(scores, labels)
    np.testing.assert_array_equal(layer.backward()[0], layer.backward()[0])


def test_propagate_down_false_returns_none(rng):
    layer = SoftmaxWithLoss()
    layer.forward(rng.standard_normal((2, 3, 4)), rng.integers(0, 3, (2, 4)))
    assert layer.backward(propagate_down=(False, False)) == (None, None)
    assert layer.backward(propagate_down=False) == (None, None)


# ---------------------------------------------------------------- SoftmaxWithLoss: torch

@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("seed", range(4))
def test_softmax_loss_matches_torch_cross_entropy(reduction, seed, dtype):
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(seed)
    shape = [(3, 5, 7, 6), (2, 21, 9, 5), (4, 2, 1, 11), (5, 3)][seed]
    scores = (r.standard_normal(shape) * 4).astype(dtype)
    labels = r.integers(0, shape[1], (shape[0],) + shape[2:])
    labels[r.random(labels.shape) < 0.2] = 255
    layer = SoftmaxWithLoss(ignore_label=255, dtype=dtype,
                            normalization="NONE" if reduction == "sum" else "VALID")
    loss = layer.forward(scores, labels)
    grad, _ = layer.backward()
    x = torch.tensor(scores, requires_grad=True)
    want = torch.nn.functional.cross_entropy(x, torch.tensor(labels), ignore_index=255,
                                             reduction=reduction)
    want.backward()
    assert_close(loss, want.item(), dtype, scale=10)
    assert_close(grad, x.grad.numpy().astype(np.float64), dtype)


# ---------------------------------------------------------------- threads

@pytest.mark.parametrize("seed", range(6))
def test_softmax_backend_variants_agree_with_reference(seed, dtype):
    # the layer passes inv_sum on the CPU (exponentials + 1/sum); without it (the other
    # backends' contract) the same probabilities, loss and gradient must come out
    from convnet.backend import cpu
    r = np.random.default_rng(seed)
    n, c, s = 2, int(r.integers(1, 7)), int(r.integers(1, 600))
    scores = (r.standard_normal((n, c, s)) * 3).astype(dtype)
    labels = r.integers(0, c, (n, s))
    labels[r.random(labels.shape) < 0.2] = 255
    prob = np.empty_like(scores)
    expo = np.empty_like(scores)
    inv_sum = np.empty((n, s), dtype)
    index_a = np.empty((n, s), np.int32)
    index_b = np.empty((n, s), np.int32)
    loss_a, count_a, bad_a = cpu.loss_softmax_forward(scores, labels, 255, prob, index_a)
    loss_b, count_b, bad_b = cpu.loss_softmax_forward(scores, labels, 255, expo, index_b,
                                                      inv_sum=inv_sum)
    assert (count_a, bad_a) == (count_b, bad_b) == (int((labels != 255).sum()), -1)
    assert loss_a == loss_b
    np.testing.assert_array_equal(index_a, index_b)
    x = scores.astype(np.float64)
    p_ref = np.exp(x - x.max(axis=1, keepdims=True))
    p_ref /= p_ref.sum(axis=1, keepdims=True)
    assert_close(prob, p_ref, dtype)
    assert_close(expo * inv_sum[:, None, :], p_ref, dtype)
    onehot = (np.arange(c)[None, :, None] == labels[:, None, :]).astype(np.float64)
    g_ref = 0.5 * (p_ref - onehot) * (labels != 255)[:, None, :]
    grad_a = np.empty_like(scores)
    grad_b = np.empty_like(scores)
    cpu.loss_softmax_backward(prob, index_a, 0.5, grad_a)
    cpu.loss_softmax_backward(expo, index_b, 0.5, grad_b, inv_sum=inv_sum)
    assert_close(grad_a, g_ref, dtype)
    assert_close(grad_b, g_ref, dtype)


@pytest.mark.parametrize("m", [1, 17, 16384 * 2 + 5])
def test_euclidean_backend_functions_agree_with_reference(m, dtype):
    # sizes around the kernel's chunking: one element, a partial chunk, several chunks
    from convnet.backend import cpu
    r = np.random.default_rng(m)
    a = r.standard_normal(m).astype(dtype)
    b = r.standard_normal(m).astype(dtype)
    d = a.astype(np.float64) - b.astype(np.float64)
    assert_close(cpu.loss_euclidean_sum(a, b), float((d * d).sum()), dtype)
    grads = [np.empty_like(a) for _ in range(2)]
    cpu.loss_euclidean_grad(a, b, 0.25, grads[0], grads[1])
    for g, sign in zip(grads, (1, -1)):
        assert_close(g, sign * 0.25 * d, dtype)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_softmax_loss_is_bit_identical_at_one_and_two_threads(dt):
    r = np.random.default_rng(7)
    scores = r.standard_normal((3, 5, 41, 37)).astype(dt)    # several pixel blocks per image
    labels = r.integers(0, 5, (3, 41, 37))
    labels[r.random(labels.shape) < 0.05] = 255

    def run():
        layer = SoftmaxWithLoss(ignore_label=255, dtype=dt)
        return layer.forward(scores, labels), layer.backward()[0]

    (l1, g1), (l2, g2) = at_threads(1, run), at_threads(2, run)
    assert l1 == l2
    np.testing.assert_array_equal(g1, g2)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_euclidean_loss_is_bit_identical_at_one_and_two_threads(dt):
    r = np.random.default_rng(8)
    a = r.standard_normal((3, 5, 41, 37)).astype(dt)           # several chunks
    b = r.standard_normal(a.shape).astype(dt)

    def run():
        layer = EuclideanLoss(dtype=dt)
        return layer.forward(a, b), layer.backward()

    (l1, g1), (l2, g2) = at_threads(1, run), at_threads(2, run)
    assert l1 == l2
    np.testing.assert_array_equal(g1[0], g2[0])
    np.testing.assert_array_equal(g1[1], g2[1])


# ---------------------------------------------------------------- SoftmaxWithLoss: errors

def test_label_out_of_range_names_value_position_and_ignore_label(rng):
    scores = rng.standard_normal((2, 3, 4, 5))
    labels = rng.integers(0, 3, (2, 1, 4, 5))
    labels[1, 0, 2, 3] = 7
    layer = SoftmaxWithLoss(ignore_label=255, name="loss")
    with pytest.raises(DataError, match=r"SoftmaxWithLoss 'loss': label 7 at position "
                                        r"\(1, 0, 2, 3\) .*outside \[0, 3\).*ignore_label is 255"):
        layer.forward(scores, labels)


def test_negative_label_without_ignore_label_is_an_error(rng):
    labels = rng.integers(0, 3, (2, 4, 5))
    labels[0, 3, 1] = -1
    with pytest.raises(DataError, match=r"label -1 at position \(0, 3, 1\).*no ignore_label"):
        SoftmaxWithLoss().forward(rng.standard_normal((2, 3, 4, 5)), labels)


def test_float_label_equal_to_class_count_is_an_error(rng):
    labels = np.zeros((1, 1, 3, 3), np.float32)
    labels[0, 0, 2, 2] = 3.0
    with pytest.raises(DataError, match=r"label 3 at position \(0, 0, 2, 2\).*\[0, 3\)"):
        SoftmaxWithLoss(ignore_label=255).forward(rng.standard_normal((1, 3, 3, 3)), labels)


def test_first_bad_label_in_memory_order_is_reported(rng):
    scores = rng.standard_normal((2, 3, 30, 30))                # several pixel blocks
    labels = rng.integers(0, 3, (2, 30, 30))
    labels[1, 0, 0] = 5
    labels[0, 29, 29] = 6
    with pytest.raises(DataError, match=r"label 6 at position \(0, 29, 29\)"):
        at_threads(2, lambda: SoftmaxWithLoss().forward(scores, labels))


@pytest.mark.parametrize("bad", [1.5, np.nan, -0.25])
def test_non_integer_float_label_is_an_error(bad, rng):
    labels = np.zeros((2, 4, 5))
    labels[1, 2, 0] = bad
    with pytest.raises(DataError, match=r"label .* at position \(1, 2, 0\).*not an integer"):
        SoftmaxWithLoss(ignore_label=255).forward(rng.standard_normal((2, 3, 4, 5)), labels)


def test_infinite_label_is_an_error(rng):
    labels = np.zeros((2, 4, 5), np.float32)
    labels[0, 0, 1] = np.inf
    with pytest.raises(DataError, match=r"label inf at position \(0, 0, 1\)"):
        SoftmaxWithLoss().forward(rng.standard_normal((2, 3, 4, 5)), labels)


def test_complex_labels_are_an_error(rng):
    with pytest.raises(DataError, match="labels must be integers.*complex128"):
        SoftmaxWithLoss().forward(rng.standard_normal((2, 3, 4)), np.zeros((2, 4), complex))


@pytest.mark.parametrize("label_shape", [(2, 4, 6), (2, 2, 4, 5), (2, 20), (1, 4, 5), ()])
def test_label_shape_mismatch_is_an_error(label_shape, rng):
    with pytest.raises(ShapeError, match=r"labels \(bottom 1\) must have shape 2x4x5 or "
                                         r"2x1x4x5 for scores 2x3x4x5"):
        SoftmaxWithLoss().forward(rng.standard_normal((2, 3, 4, 5)), np.zeros(label_shape))


def test_scores_without_class_axis_or_classes_are_an_error():
    with pytest.raises(ShapeError, match=r"scores \(bottom 0\) must have shape \(N, C, ...\)"):
        SoftmaxWithLoss().setup((5,), (5,))
    with pytest.raises(ShapeError, match=r"at least one class \(C >= 1\), got shape 2x0x3"):
        SoftmaxWithLoss().setup((2, 0, 3), (2, 3))


def test_bad_normalization_is_an_error():
    with pytest.raises(ConfigError, match=r"SoftmaxWithLoss 'l': normalization must be one of "
                                          r"VALID, FULL, BATCH_SIZE, NONE, got 'MEAN'"):
        SoftmaxWithLoss(normalization="MEAN", name="l")


@pytest.mark.parametrize("axis", [0, 2, -1, True, 1.0])
def test_axis_other_than_one_is_an_error(axis):
    with pytest.raises(ConfigError, match=r"axis must be 1 .*got"):
        SoftmaxWithLoss(axis=axis)


@pytest.mark.parametrize("ignore", [1.5, "255", True])
def test_non_integer_ignore_label_is_an_error(ignore):
    with pytest.raises(ConfigError, match="ignore_label must be an int"):
        SoftmaxWithLoss(ignore_label=ignore)


def test_propagate_down_to_labels_is_an_error(rng):
    layer = SoftmaxWithLoss()
    layer.forward(rng.standard_normal((2, 3, 4)), rng.integers(0, 3, (2, 4)))
    with pytest.raises(ConfigError, match="cannot propagate_down to bottom 1"):
        layer.backward(propagate_down=(True, True))


# ---------------------------------------------------------------- EuclideanLoss

def euclidean_case(seed):
    r = np.random.default_rng(2000 + seed)
    ndim = 1 + seed % 4
    shape = tuple(int(v) for v in r.integers(1, 8, ndim))
    return r.standard_normal(shape), r.standard_normal(shape)


@pytest.mark.parametrize("seed", range(32))
def test_euclidean_loss_and_gradients_match_reference(seed, dtype):
    a, b = euclidean_case(seed)
    a, b = a.astype(dtype), b.astype(dtype)
    layer = EuclideanLoss(dtype=dtype)
    loss = layer.forward(a, b)
    da, db = layer.backward()
    want, want_da, want_db = ref.euclidean_loss(a, b)
    assert_close(loss, want, dtype, scale=10)
    assert da.dtype == dtype and da.shape == a.shape
    assert_close(da, want_da, dtype)
    assert_close(db, want_db, dtype)


@pytest.mark.parametrize("seed", [1, 2, 3, 6])
def test_euclidean_gradients_match_finite_differences(seed):
    a, b = euclidean_case(seed)
    check_gradients(EuclideanLoss(dtype=np.float64), a, b, exhaustive=a.size <= 100)


@pytest.mark.parametrize("flags", [(True, False), (False, True), (False, False)])
def test_euclidean_propagate_down_computes_only_requested_bottoms(flags, rng):
    a, b = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    layer = EuclideanLoss(dtype=np.float64)
    layer.forward(a, b)
    grads = layer.backward(propagate_down=flags)
    for flag, grad, sign in zip(flags, grads, (1, -1)):
        if flag:
            np.testing.assert_allclose(grad, sign * (a - b) / 3, rtol=1e-15)
        else:
            assert grad is None


def test_euclidean_loss_weight_and_top_diff_scale(rng):
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    layer = EuclideanLoss(loss_weight=2.5, dtype=np.float64)
    assert layer.forward(a, b) == pytest.approx(2.5 * ((a - b) ** 2).sum() / 8, rel=1e-14)
    np.testing.assert_allclose(layer.backward()[0], 2.5 * (a - b) / 4, rtol=1e-15)
    np.testing.assert_allclose(layer.backward(-0.5)[1], 0.5 * (a - b) / 4, rtol=1e-15)


def test_euclidean_empty_batch_has_zero_loss():
    layer = EuclideanLoss()
    assert layer.forward(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0
    assert layer.backward()[0].shape == (0, 3)


@pytest.mark.parametrize("shape", [(3, 4, 5), (8, 21, 6, 7)])
def test_euclidean_loss_matches_torch_mse(shape, dtype):
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(3)
    a, b = r.standard_normal(shape).astype(dtype), r.standard_normal(shape).astype(dtype)
    layer = EuclideanLoss(dtype=dtype)
    loss = layer.forward(a, b)
    da, db = layer.backward()
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    want = torch.nn.functional.mse_loss(ta, tb, reduction="sum") / (2 * shape[0])
    want.backward()
    assert_close(loss, want.item(), dtype, scale=10)
    assert_close(da, ta.grad.numpy().astype(np.float64), dtype)
    assert_close(db, tb.grad.numpy().astype(np.float64), dtype)


@pytest.mark.parametrize("shapes", [((2, 3, 4), (2, 3, 5)), ((2, 12), (2, 3, 4)),
                                    ((3, 4), (2, 4))])
def test_euclidean_shape_mismatch_is_an_error(shapes):
    a, b = shapes
    with pytest.raises(ShapeError, match=r"EuclideanLoss 'e': bottoms must have the same shape, "
                                         rf"got {'x'.join(map(str, a))} \(bottom 0\) and "
                                         rf"{'x'.join(map(str, b))} \(bottom 1\)"):
        EuclideanLoss(name="e").forward(np.zeros(a), np.zeros(b))


def test_euclidean_scalar_bottom_shapes_are_an_error():
    with pytest.raises(ShapeError, match="batch axis"):
        EuclideanLoss().setup((), ())


def test_losses_take_exactly_two_bottoms(rng):
    x = rng.standard_normal((2, 3))
    with pytest.raises(ShapeError, match="expects 2 bottoms, got 1"):
        EuclideanLoss().forward(x)
    with pytest.raises(ShapeError, match="expects 2 bottoms, got 3"):
        SoftmaxWithLoss().forward(x, np.zeros(2), np.zeros(2))
