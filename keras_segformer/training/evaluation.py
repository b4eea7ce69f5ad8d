"""Scores of a trained model over a dataset: the confusion matrix
accumulated batch by batch, mIoU/mAcc/aAcc and a per-class report, and
the scores as JSON (``keras-segformer evaluate``; re-exported by
``trainer``)."""

import json

import keras

from keras_segformer.errors import data_errors
from keras_segformer.training.metrics import (
    ConfusionMatrix,
    per_class_report,
    segmentation_scores,
)


def metric_classes(num_classes):
    """Classes the confusion matrix needs (a 1-logit model has 2)."""
    return max(int(num_classes), 2)


@data_errors()
def evaluate(model, dataset, *, class_names=None, verbose=True):
    """Accumulate the confusion matrix of ``model`` over ``dataset``.

    Args:
        model: ``SegFormer``.
        dataset: iterable of ``(images, labels)`` batches.
        class_names: list of str or None. Names for the per-class report.
        verbose: bool. Show a progress bar.

    Returns:
        dict with ``mIoU``, ``mAcc``, ``aAcc`` (fractions), ``IoU`` and
        ``Acc`` (class name -> fraction, NaN for absent classes) and
        ``report`` (a text table in percent).
    """
    confusion = ConfusionMatrix(metric_classes(model.num_classes))
    bar = keras.utils.Progbar(None, verbose=1 if verbose else 0)
    if hasattr(dataset, "as_numpy_iterator"):
        # tf.data yields TF tensors, which JAX and PyTorch cannot take.
        dataset = dataset.as_numpy_iterator()
    for step, (images, labels) in enumerate(dataset):
        logits = model.predict_on_batch(images)
        confusion.update_state(labels, logits)
        bar.update(step + 1)
    matrix = keras.ops.convert_to_numpy(confusion.result())
    if matrix.sum() == 0:
        raise ValueError("The evaluation set has no labelled pixels.")
    names = class_names
    if names is None and getattr(model, "id2label", None):
        names = [model.id2label[i] for i in sorted(model.id2label)]
    if names is not None and len(names) != matrix.shape[0]:
        names = None  # e.g. a 1-logit model scored as 2 classes
    scores = segmentation_scores(matrix, names)
    scores["report"] = per_class_report(matrix, names)
    return scores


def dump_scores(scores):
    """Scores as one JSON object (NaN for classes never seen -> null)."""

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, float) and x != x:
            return None
        if hasattr(x, "item"):
            return clean(x.item())
        return x

    return json.dumps(clean(scores))
