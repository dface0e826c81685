"""convnet.metrics against hand-counted confusion matrices and a naive per-pixel reference."""

import numpy as np
import pytest

from convnet.errors import ConfigError, DataError, ShapeError
from convnet.metrics import (SegmentationScore, class_iou, confusion_matrix, evaluate,
                             pixel_accuracy)


def naive_scores(pred, label, k, ignore):
    """Per-pixel loops: (pixel accuracy, list of IoU or None per class)."""
    correct = counted = 0
    tp, fp, fn = [0] * k, [0] * k, [0] * k
    for p, t in zip(np.ravel(pred), np.ravel(label)):
        if t == ignore:
            continue
        counted += 1
        if p == t:
            correct += 1
            tp[t] += 1
        else:
            fp[p] += 1
            fn[t] += 1
    ious = [None if tp[c] + fp[c] + fn[c] == 0 else tp[c] / (tp[c] + fp[c] + fn[c])
            for c in range(k)]
    return correct / counted, ious


def test_confusion_matrix_counts_rows_true_columns_predicted():
    label = np.array([[0, 0, 1], [2, 255, 1]])
    pred = np.array([[0, 1, 1], [1, 2, 1]])
    cm = confusion_matrix(pred, label, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [0, 1, 0]])
    assert cm.dtype == np.int64


def test_ignored_pixels_never_counted_even_with_any_prediction():
    label = np.full((4, 5), 255)
    label[0, 0] = 1
    pred = np.zeros((4, 5), dtype=np.int64)
    assert confusion_matrix(pred, label, 2).sum() == 1


@pytest.mark.parametrize("trial", range(30))
def test_scores_match_naive_reference_on_random_maps(trial):
    rng = np.random.default_rng(trial)
    k = int(rng.integers(2, 7))
    shape = tuple(int(d) for d in rng.integers(1, 9, size=int(rng.integers(1, 4))))
    label = rng.integers(0, k, size=shape)
    label[rng.random(shape) < 0.2] = 255
    pred = rng.integers(0, k, size=shape)
    label.flat[0] = 0
    acc, ious = naive_scores(pred, label, k, 255)
    score = evaluate(pred, label, k)
    assert score.pixel_accuracy == pytest.approx(acc)
    for got, want in zip(score.class_iou, ious):
        assert (got is None) == (want is None)
        if want is not None:
            assert got == pytest.approx(want)
    present = [v for v in ious if v is not None]
    assert score.mean_iou == pytest.approx(np.mean(present))


def test_class_absent_from_truth_and_prediction_is_none_and_left_out_of_mean():
    label = np.array([0, 0, 2, 2])
    pred = np.array([0, 2, 2, 2])
    score = evaluate(pred, label, 3)
    assert score.class_iou[1] is None
    assert score.present == [True, False, True]
    assert score.mean_iou == pytest.approx((0.5 + 2 / 3) / 2)
    assert np.isnan(class_iou(score.confusion)[1])
    assert "absent" in score.summary()


def test_class_only_predicted_counts_with_iou_zero():
    score = evaluate(np.array([1, 1]), np.array([0, 0]), 2)
    assert score.class_iou == [0.0, 0.0]
    assert score.mean_iou == 0.0


def test_perfect_prediction_gives_one():
    label = np.random.default_rng(0).integers(0, 4, size=(2, 5, 7))
    score = evaluate(label, label, 4)
    assert score.pixel_accuracy == 1.0 and score.mean_iou == 1.0
    assert str(score) == "mIoU=1.000 pixel_acc=1.000"


def test_accumulating_batches_equals_one_big_evaluation():
    rng = np.random.default_rng(1)
    label, pred = rng.integers(0, 3, (4, 6, 5)), rng.integers(0, 3, (4, 6, 5))
    score = SegmentationScore(3)
    for i in range(4):
        score.update(pred[i], label[i])
    np.testing.assert_array_equal(score.confusion, confusion_matrix(pred, label, 3))


def test_pixel_accuracy_and_iou_of_a_known_matrix():
    cm = np.array([[3, 1], [2, 4]])
    assert pixel_accuracy(cm) == pytest.approx(0.7)
    np.testing.assert_allclose(class_iou(cm), [3 / 6, 4 / 7])


def test_everything_ignored_gives_nan_accuracy_and_no_mean():
    score = evaluate(np.zeros(3, int), np.full(3, 255), 2)
    assert np.isnan(score.pixel_accuracy)
    assert score.mean_iou is None
    assert score.class_iou == [None, None]


def test_custom_ignore_label_and_no_ignore_label():
    label = np.array([0, 1, 2])
    pred = np.array([0, 1, 0])
    assert confusion_matrix(pred, label, 3, ignore_label=2).sum() == 2
    with pytest.raises(DataError, match="label value 255 is outside"):
        confusion_matrix(np.zeros(1, int), np.array([255]), 3, ignore_label=None)


def test_label_outside_classes_is_an_error_naming_the_value():
    with pytest.raises(DataError, match=r"label value 7 is outside \[0, 5\) and is not the "
                                        r"ignore label \(255\)"):
        confusion_matrix(np.zeros((2, 2), int), np.array([[0, 7], [1, 2]]), 5)
    with pytest.raises(DataError, match="label value -1"):
        confusion_matrix(np.zeros(2, int), np.array([0, -1]), 5)


def test_prediction_outside_classes_is_an_error():
    with pytest.raises(DataError, match=r"predicted class 9 is outside \[0, 3\)"):
        confusion_matrix(np.array([0, 9]), np.array([0, 1]), 3)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ShapeError, match=r"pred shape \(2, 3\) differs from label shape \(3, 2\)"):
        confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), 2)


def test_non_integer_values_are_rejected():
    with pytest.raises(DataError, match="integer class indices"):
        confusion_matrix(np.array([0.5, 1.0]), np.array([0, 1]), 2)
    cm = confusion_matrix(np.array([0.0, 1.0]), np.array([0, 1]), 2)
    assert cm.trace() == 2


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_bad_num_classes_is_an_error(bad):
    with pytest.raises(ConfigError, match="num_classes must be an int >= 1"):
        SegmentationScore(bad)


def test_class_names_must_match_num_classes():
    with pytest.raises(ConfigError, match="2 names for 3 classes"):
        SegmentationScore(3, class_names=["a", "b"])
