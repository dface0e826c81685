"""Segmentation metrics: confusion matrix, pixel accuracy, per-class IoU, mean IoU.

Pixels whose label is ``ignore_label`` are left out of every count. A label outside
``[0, num_classes)`` that is not the ignore label (or a prediction outside the classes) is a
:class:`~convnet.errors.DataError` naming the value: never silently dropped.

IoU of class c = TP / (TP + FP + FN) from the confusion matrix. A class absent from both the
ground truth and the predictions has no IoU: :class:`SegmentationScore` reports it as ``None``
and leaves it out of the mean (``class_iou`` uses NaN for it, internally).

Example::

    score = evaluate(pred, label, num_classes=5)
    print(score)              # mIoU=0.873 pixel_acc=0.962
    score.class_iou           # [0.98, 0.91, None, 0.77, 0.83]
"""

import numpy as np

from convnet.errors import ConfigError, DataError, ShapeError

IGNORE_LABEL = 255


def _check_num_classes(num_classes):
    if (not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool)
            or num_classes < 1):
        raise ConfigError(f"metrics: num_classes must be an int >= 1, got {num_classes!r}")
    return int(num_classes)


def _as_int_array(x, what):
    try:
        a = np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise ShapeError(f"metrics: {what} is not a rectangular array ({exc})") from None
    if a.dtype.kind not in "iub":
        if a.dtype.kind == "f" and a.size and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            return a.astype(np.int64)
        raise DataError(f"metrics: {what} must hold integer class indices, got dtype "
                        f"{a.dtype.name}")
    return a.astype(np.int64, copy=False)


def confusion_matrix(pred, label, num_classes, ignore_label=IGNORE_LABEL):
    """int64 (num_classes, num_classes) counts: row = true class, column = predicted class.

    ``pred`` and ``label`` are integer arrays of the same shape (any shape, e.g. (N, H, W));
    pixels whose label equals ``ignore_label`` (None: no ignore label) are not counted.
    """
    k = _check_num_classes(num_classes)
    pred = _as_int_array(pred, "pred")
    label = _as_int_array(label, "label")
    if pred.shape != label.shape:
        raise ShapeError(f"metrics: pred shape {pred.shape} differs from label shape "
                         f"{label.shape}")
    valid = np.ones(label.shape, dtype=bool) if ignore_label is None else label != ignore_label
    lab, prd = label[valid], pred[valid]
    bad = (lab < 0) | (lab >= k)
    if bad.any():
        raise DataError(f"metrics: label value {int(lab[bad][0])} is outside [0, {k}) and is "
                        f"not the ignore label ({ignore_label})")
    bad = (prd < 0) | (prd >= k)
    if bad.any():
        raise DataError(f"metrics: predicted class {int(prd[bad][0])} is outside [0, {k})")
    return np.bincount(lab * k + prd, minlength=k * k).reshape(k, k).astype(np.int64)


def _as_confusion(cm):
    """A square (K, K) matrix of non-negative counts, as float64."""
    try:
        out = np.asarray(cm, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"metrics: the confusion matrix must be a (K, K) array of counts, got "
                        f"{type(cm).__name__} ({exc})") from None
    if out.ndim != 2 or out.shape[0] != out.shape[1]:
        raise ShapeError(f"metrics: the confusion matrix must be square (K, K), got shape "
                         f"{out.shape}")
    if not np.all(np.isfinite(out)) or np.any(out < 0):
        raise DataError("metrics: the confusion matrix must hold finite counts >= 0")
    return out


def pixel_accuracy(cm):
    """Correct pixels / counted pixels (NaN when nothing was counted)."""
    cm = _as_confusion(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else float("nan")


def class_iou(cm):
    """float64 (num_classes,) IoU per class; NaN for a class absent from both ground truth and
    predictions."""
    cm = _as_confusion(cm)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


class SegmentationScore:
    """Accumulates a confusion matrix over batches and reports the scores.

    ``update(pred, label)`` adds one batch. Properties: ``confusion`` (int64 (K, K)),
    ``pixel_accuracy`` (float), ``class_iou`` (list of float, or None for an absent class),
    ``mean_iou`` (mean over present classes; None when no class is present), ``present``.

    Example::

        score = SegmentationScore(num_classes=5)
        for batch in batches:
            score.update(prediction, batch["label"])
        print(score)          # mIoU=0.873 pixel_acc=0.962
    """

    def __init__(self, num_classes, ignore_label=IGNORE_LABEL, class_names=None):
        self.num_classes = _check_num_classes(num_classes)
        self.ignore_label = ignore_label
        if class_names is not None and len(class_names) != self.num_classes:
            raise ConfigError(f"metrics: class_names has {len(class_names)} names for "
                              f"{self.num_classes} classes")
        self.class_names = (tuple(class_names) if class_names is not None
                            else tuple(f"class{i}" for i in range(self.num_classes)))
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred, label):
        """Add the counts of one batch (same rules as :func:`confusion_matrix`); returns self."""
        self.confusion += confusion_matrix(pred, label, self.num_classes, self.ignore_label)
        return self

    @property
    def pixel_accuracy(self):
        return pixel_accuracy(self.confusion)

    @property
    def present(self):
        """Per class: True if it occurs in the ground truth or in the predictions."""
        return [bool(v) for v in (self.confusion.sum(0) + self.confusion.sum(1)) > 0]

    @property
    def class_iou(self):
        return [None if np.isnan(v) else float(v) for v in class_iou(self.confusion)]

    @property
    def mean_iou(self):
        values = [v for v in self.class_iou if v is not None]
        return float(np.mean(values)) if values else None

    def as_dict(self):
        """{"pixel_acc", "miou", "iou": {class name: IoU or None}} (JSON-serialisable)."""
        return {"pixel_acc": self.pixel_accuracy, "miou": self.mean_iou,
                "iou": dict(zip(self.class_names, self.class_iou))}

    def summary(self):
        """Several lines: one per class with its IoU (or 'absent'), then the totals."""
        lines = []
        for name, iou in zip(self.class_names, self.class_iou):
            lines.append(f"  {name:>12s}: " + ("absent" if iou is None else f"IoU={iou:.3f}"))
        lines.append(str(self))
        return "\n".join(lines)

    def __str__(self):
        miou = "n/a" if self.mean_iou is None else f"{self.mean_iou:.3f}"
        return f"mIoU={miou} pixel_acc={self.pixel_accuracy:.3f}"

    def __repr__(self):
        return f"<SegmentationScore {self}>"


def evaluate(pred, label, num_classes, ignore_label=IGNORE_LABEL, class_names=None):
    """The :class:`SegmentationScore` of one set of predictions against labels."""
    return SegmentationScore(num_classes, ignore_label, class_names).update(pred, label)
