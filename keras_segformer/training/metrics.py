"""Segmentation metrics accumulated over a whole dataset (mmseg IoUMetric).

One ``(num_classes, num_classes)`` confusion matrix (rows: label, columns:
prediction) is summed over every batch; the scores come from the totals:

- IoU of class c = intersection / union over the whole set; NaN when c is
  absent from both labels and predictions. ``mIoU`` = mean of the non-NaN.
- Acc of class c = intersection / label area (NaN when c has no label
  pixel). ``mAcc`` = mean of the non-NaN.
- ``aAcc`` = correctly classified pixels / labelled pixels.

Pixels labelled ``ignore_index`` (255) or outside ``[0, num_classes)`` are
not counted. Note that mIoU over a set is not the mean of per-batch mIoUs.
"""

import keras
import numpy as np
from keras import ops

from keras_segformer.ops import losses as loss_ops
from keras_segformer.ops.resize import resize_bilinear
from keras_segformer.serializable import attribute_config
from keras_segformer.training.losses import (
    _as_labels,
    _broadcast_sample_weight,
)


def _count_dtype():
    """int64 where the backend has it (JAX without x64 has not: int32,
    which holds up to 2**31 - 1 pixels per cell)."""
    probe = ops.convert_to_tensor(np.zeros((), "int64"))
    return keras.backend.standardize_dtype(probe.dtype)


def _nanmean(x):
    keep = ops.logical_not(ops.isnan(x))
    total = ops.sum(ops.where(keep, x, 0.0))
    count = ops.sum(ops.cast(keep, x.dtype))
    return total / count  # 0 / 0 = NaN when every entry is NaN


def _class_scores(confusion):
    """Per-class IoU and Acc (NaN where undefined) and aAcc, in keras.ops."""
    cm = ops.cast(confusion, "float32")
    intersect = ops.diagonal(cm)
    label_area = ops.sum(cm, axis=1)
    pred_area = ops.sum(cm, axis=0)
    union = label_area + pred_area - intersect
    nan = ops.full_like(intersect, float("nan"))
    iou = ops.where(union > 0, intersect / ops.maximum(union, 1.0), nan)
    acc = ops.where(
        label_area > 0, intersect / ops.maximum(label_area, 1.0), nan
    )
    all_acc = ops.sum(intersect) / ops.sum(label_area)
    return iou, acc, all_acc


@keras.saving.register_keras_serializable(package="keras_segformer")
class ConfusionMatrix(keras.metrics.Metric):
    """Confusion matrix of a segmentation, summed over every batch.

    ``result()`` is the ``(num_classes, num_classes)`` count matrix (rows:
    label, columns: prediction); ``scores()`` turns it into mIoU, mAcc,
    aAcc and per-class values. For ``model.compile(metrics=...)`` use the
    scalar subclasses ``MeanIoU``, ``MeanAccuracy`` and ``PixelAccuracy``.

    ``y_true``: integer labels ``(batch, H, W)`` or ``(batch, H, W, 1)``.
    ``y_pred``: with ``from_logits=True`` the model's logits
    ``(batch, h, w, C)`` at any resolution, resized bilinearly to ``(H, W)``
    (PyTorch ``align_corners=False``) then reduced with argmax; a single
    channel (binary SegFormer, ``num_classes=2``) predicts class 1 where the
    logit is > 0. With ``from_logits=False``, integer masks of the label's
    shape. ``sample_weight`` (per sample or per pixel) only selects: pixels
    of weight 0 are left out, the others count once.

    Args:
        num_classes: int. Number of classes (2 for a binary model).
        ignore_index: int. Label value that is not counted.
        from_logits: bool. Whether ``y_pred`` are logits or masks.
        name: str. Name of the metric.
        dtype: dtype of the float results.
    """

    def __init__(
        self,
        num_classes,
        ignore_index=255,
        from_logits=True,
        name="confusion_matrix",
        dtype=None,
    ):
        super().__init__(name=name, dtype=dtype)
        if int(num_classes) < 2:
            raise ValueError(
                "`num_classes` must be >= 2 (use 2 for a binary model with "
                f"one logit channel). Received: num_classes={num_classes}"
            )
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.from_logits = bool(from_logits)
        self.confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            dtype=_count_dtype(),
            aggregation="sum",
            name="confusion",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add one batch to the counts.

        Args:
            y_true: integer labels ``(batch, H, W)`` or ``(batch, H, W, 1)``.
            y_pred: logits ``(batch, h, w, C)`` or masks (``from_logits``).
            sample_weight: optional, ``(batch,)`` or ``(batch, H, W[, 1])``;
                pixels with weight 0 are skipped.
        """
        k = self.num_classes
        labels = _as_labels(y_true)
        predictions = self._predictions(y_pred, loss_ops.spatial_size(labels))
        valid = ops.logical_and(
            ops.logical_and(ops.greater_equal(labels, 0), ops.less(labels, k)),
            ops.logical_and(
                ops.greater_equal(predictions, 0), ops.less(predictions, k)
            ),
        )
        valid = ops.logical_and(valid, ops.not_equal(labels, self.ignore_index))
        if sample_weight is not None:
            weight = _broadcast_sample_weight(sample_weight, "float32")
            valid = ops.logical_and(valid, ops.not_equal(weight, 0.0))
        # Cell label * k + prediction; invalid pixels go to an extra bin.
        cells = ops.reshape(
            ops.where(valid, labels * k + predictions, k * k), (-1,)
        )
        # segment_sum, unlike bincount, has a static output size: jittable.
        counts = ops.segment_sum(
            ops.ones_like(cells),
            cells,
            num_segments=k * k + 1,
        )
        self.confusion.assign_add(
            ops.reshape(ops.cast(counts[: k * k], self.confusion.dtype), (k, k))
        )

    def _predictions(self, y_pred, size):
        if not self.from_logits:
            return _as_labels(y_pred)
        logits = ops.convert_to_tensor(y_pred)
        if len(logits.shape) != 4:
            raise ValueError(
                "With from_logits=True, `y_pred` must be logits of shape "
                "(batch, height, width, num_classes). Received shape "
                f"{tuple(logits.shape)}."
            )
        channels = logits.shape[-1]
        if channels not in (self.num_classes, 1) or (
            channels == 1 and self.num_classes != 2
        ):
            raise ValueError(
                f"The logits have {channels} channels but the metric has "
                f"num_classes={self.num_classes} (a single channel needs "
                "num_classes=2)."
            )
        upsample = tuple(logits.shape[1:3]) != size
        if channels == 1:
            if upsample:
                logits = resize_bilinear(logits, size)
            return ops.cast(ops.greater(logits[..., 0], 0.0), "int32")
        if upsample:
            # In bands of rows: no full-resolution logit map.
            return loss_ops.upsampled_argmax(logits, size)
        return loss_ops.argmax(logits, axis=-1)

    def result(self):
        return self.confusion.value

    def reset_state(self):
        self.confusion.assign(ops.zeros_like(self.confusion.value))

    def scores(self, class_names=None):
        """mIoU, mAcc, aAcc and per-class IoU/Acc of the counts so far
        (see ``segmentation_scores``)."""
        return segmentation_scores(
            ops.convert_to_numpy(self.confusion.value), class_names
        )

    def get_config(self):
        names = ("num_classes", "ignore_index", "from_logits")
        return {**super().get_config(), **attribute_config(self, names)}


@keras.saving.register_keras_serializable(package="keras_segformer")
class MeanIoU(ConfusionMatrix):
    """mIoU over the whole set, mmseg style (absent classes left out).

    Inputs as for ``ConfusionMatrix``.

    Args:
        num_classes: int. Number of classes (2 for a binary model).
        name: str. Name of the metric.
        **kwargs: ``ConfusionMatrix`` arguments (``ignore_index``,
            ``from_logits``, ``dtype``).

    Example:
    >>> model.compile(loss=SegFormerLoss(), metrics=[MeanIoU(150)])
    """

    def __init__(self, num_classes, name="mean_iou", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)

    def result(self):
        iou, _, _ = _class_scores(self.confusion.value)
        return ops.cast(_nanmean(iou), self.dtype)


@keras.saving.register_keras_serializable(package="keras_segformer")
class MeanAccuracy(ConfusionMatrix):
    """mAcc: mean over classes of per-class pixel accuracy (recall).

    Same arguments and inputs as ``ConfusionMatrix``.
    """

    def __init__(self, num_classes, name="mean_accuracy", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)

    def result(self):
        _, acc, _ = _class_scores(self.confusion.value)
        return ops.cast(_nanmean(acc), self.dtype)


@keras.saving.register_keras_serializable(package="keras_segformer")
class PixelAccuracy(ConfusionMatrix):
    """aAcc: correctly classified labelled pixels / labelled pixels.

    Same arguments and inputs as ``ConfusionMatrix``.
    """

    def __init__(self, num_classes, name="pixel_accuracy", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)

    def result(self):
        _, _, all_acc = _class_scores(self.confusion.value)
        return ops.cast(all_acc, self.dtype)


def segmentation_scores(confusion_matrix, class_names=None):
    """Scores of a confusion matrix, as mmseg's IoUMetric computes them.

    Args:
        confusion_matrix: array ``(num_classes, num_classes)`` of counts,
            rows = label, columns = prediction.
        class_names: sequence of str or None. Names of the classes
            (default ``"0"``, ``"1"``, ...).

    Returns:
        dict with ``"mIoU"``, ``"mAcc"``, ``"aAcc"`` (floats, fractions in
        [0, 1], NaN when undefined) and ``"IoU"``, ``"Acc"``: dicts class
        name -> float (NaN for classes absent from labels and predictions,
        resp. from labels).
    """
    cm = np.asarray(confusion_matrix, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(
            "`confusion_matrix` must be square (num_classes, num_classes). "
            f"Received shape {cm.shape}."
        )
    names = _names(class_names, cm.shape[0])
    intersect = np.diag(cm)
    label_area = cm.sum(axis=1)
    union = label_area + cm.sum(axis=0) - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersect / union, np.nan)
        acc = np.where(label_area > 0, intersect / label_area, np.nan)
        all_acc = intersect.sum() / label_area.sum()
    return {
        "mIoU": _nanmean_np(iou),
        "mAcc": _nanmean_np(acc),
        "aAcc": float(all_acc) if label_area.sum() > 0 else float("nan"),
        "IoU": dict(zip(names, iou.tolist())),
        "Acc": dict(zip(names, acc.tolist())),
    }


def per_class_report(confusion_matrix, class_names=None, digits=2):
    """A text table of per-class IoU and Acc plus mIoU / mAcc / aAcc, in
    percent, like mmseg's evaluation log.

    Args:
        confusion_matrix: array ``(num_classes, num_classes)`` of counts or
            a ``ConfusionMatrix`` metric (or subclass).
        class_names: sequence of str or None. Names of the classes.
        digits: int. Decimals of the percentages.

    Returns:
        str. One line per class, then a summary line; "nan" marks classes
        absent from the data.

    Example:
    >>> metric = MeanIoU(150); metric.update_state(labels, logits)
    >>> print(per_class_report(metric, id2label.values()))
    """
    if isinstance(confusion_matrix, ConfusionMatrix):
        confusion_matrix = ops.convert_to_numpy(
            confusion_matrix.confusion.value
        )
    scores = segmentation_scores(confusion_matrix, class_names)
    names = list(scores["IoU"])
    width = max([5] + [len(n) for n in names])
    col = max(7, digits + 5)

    def fmt(x):
        if np.isnan(x):
            return f"{'nan':>{col}}"
        return f"{100 * x:{col}.{digits}f}"

    lines = [f"{'Class':<{width}} {'IoU':>{col}} {'Acc':>{col}}"]
    for name in names:
        lines.append(
            f"{name:<{width}} {fmt(scores['IoU'][name])} "
            f"{fmt(scores['Acc'][name])}"
        )
    lines.append(
        f"aAcc {fmt(scores['aAcc']).strip()}  mIoU "
        f"{fmt(scores['mIoU']).strip()}  mAcc {fmt(scores['mAcc']).strip()}"
    )
    return "\n".join(lines)


def _names(class_names, num_classes):
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(
            f"`class_names` has {len(names)} entries for {num_classes} classes."
        )
    return names


def _nanmean_np(x):
    x = np.asarray(x, dtype=np.float64)
    keep = ~np.isnan(x)
    return float(x[keep].mean()) if keep.any() else float("nan")
