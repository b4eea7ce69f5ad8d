"""``model.fit`` with the SegFormer recipe, logs, checkpoints and resume.

Everything here is stock Keras: ``compile_for_training``
(``SegFormerLoss``, the recipe optimizer, mIoU/mAcc/aAcc); ``fit`` with
``BackupAndRestore`` (resume after a kill), ``ModelCheckpoint`` (weights
every epoch), ``CSVLogger`` and ``TensorBoard``.
"""

import json
import os

import keras
from keras import tree

from keras_segformer.training.distribute import (
    check_batch_size,
    num_replicas,
    pad_batches,
    strategy_scope,
)
from keras_segformer.training.metrics import (
    ConfusionMatrix,
    MeanAccuracy,
    MeanIoU,
    PixelAccuracy,
    per_class_report,
    segmentation_scores,
)
from keras_segformer.training.optimizer import (
    compile_for_training,
    create_optimizer,
)

FINAL_MODEL = "model.keras"


def metric_classes(num_classes):
    """Classes the confusion matrix needs (a 1-logit model has 2)."""
    return max(int(num_classes), 2)


def compile_model(model, *, total_steps, learning_rate=6e-5, **optimizer_kw):
    """``compile_for_training`` with the recipe optimizer at
    ``learning_rate`` and all three scores (mIoU, mAcc, aAcc) as metrics.

    Args:
        model: ``SegFormer``.
        total_steps: int. Length of the poly schedule.
        learning_rate: float. Peak (backbone) learning rate.
        **optimizer_kw: forwarded to ``create_optimizer``.
    """
    n = metric_classes(model.num_classes)
    optimizer = create_optimizer(
        model,
        total_steps=total_steps,
        learning_rate=learning_rate,
        **optimizer_kw,
    )
    return compile_for_training(
        model,
        total_steps,
        optimizer=optimizer,
        metrics=[MeanIoU(n), MeanAccuracy(n), PixelAccuracy(n)],
    )


def fit(
    model,
    train_data,
    *,
    out_dir,
    epochs,
    steps_per_epoch,
    validation_data=None,
    learning_rate=6e-5,
    verbose="auto",
    callbacks=(),
    **optimizer_kw,
):
    """Train ``model`` and keep everything in ``out_dir``.

    Writes ``out_dir/log.csv`` (one row per epoch, appended across
    restarts), ``out_dir/tensorboard/``, ``out_dir/checkpoints/
    epoch-NNN.weights.h5`` after every epoch, ``out_dir/backup/`` (model and
    optimizer state at every epoch end, removed when training completes)
    and finally ``out_dir/model.keras``.

    Started again with the same ``out_dir`` after a kill, training resumes
    from the backup: the weights, the optimizer state (and so the step count
    and learning-rate schedule) and the epoch counter come back, and the
    interrupted epoch runs again from its start. At most the steps of the
    interrupted epoch are redone, so keep epochs short for long runs
    (``steps_per_epoch``).

    Several devices: build ``model`` and call ``fit`` inside
    ``distribution_scope()``. The training batch is global and must be
    divisible by the number of devices; validation batches are padded to
    a multiple of it with fully ignored samples, which change no score.

    Args:
        model: ``SegFormer``, built.
        train_data: ``tf.data.Dataset`` (repeated) of ``(images, labels)``.
        out_dir: str. Output folder.
        epochs: int. Epochs.
        steps_per_epoch: int. Steps per epoch.
        validation_data: dataset or None. Evaluated after each epoch.
        learning_rate: float. Peak learning rate of the backbone.
        verbose: Keras ``fit`` verbosity (progress bar by default).
        callbacks: extra Keras callbacks.
        **optimizer_kw: forwarded to ``create_optimizer``.

    Returns:
        ``keras.callbacks.History``.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(
            "`epochs` and `steps_per_epoch` must be >= 1. Received "
            f"epochs={epochs}, steps_per_epoch={steps_per_epoch}."
        )
    os.makedirs(out_dir, exist_ok=True)
    probe = os.path.join(out_dir, ".write-test")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise OSError(f"Output folder {out_dir!r} is not writable: {e}") from e
    with strategy_scope(model):
        replicas = num_replicas(model)
        if replicas > 1:
            batch = _batch_size(train_data)
            if batch is not None:
                check_batch_size(batch, replicas, "training batch size")
            if hasattr(validation_data, "element_spec"):
                validation_data = pad_batches(validation_data, replicas)
        compile_model(
            model,
            total_steps=epochs * steps_per_epoch,
            learning_rate=learning_rate,
            **optimizer_kw,
        )
        checkpoints = os.path.join(out_dir, "checkpoints")
        os.makedirs(checkpoints, exist_ok=True)
        history = model.fit(
            train_data,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=validation_data,
            verbose=verbose,
            callbacks=[
                keras.callbacks.BackupAndRestore(
                    os.path.join(out_dir, "backup"), double_checkpoint=True
                ),
                keras.callbacks.ModelCheckpoint(
                    os.path.join(checkpoints, "epoch-{epoch:03d}.weights.h5"),
                    save_weights_only=True,
                ),
                keras.callbacks.CSVLogger(
                    os.path.join(out_dir, "log.csv"), append=True
                ),
                *_tensorboard(out_dir),
                *callbacks,
            ],
        )
        model.save(os.path.join(out_dir, FINAL_MODEL))
    return history


def _batch_size(dataset):
    """Batch size of a ``tf.data`` dataset (from its first batch when the
    spec leaves it open); None for other inputs."""
    spec = getattr(dataset, "element_spec", None)
    if spec is None:
        return None
    size = tree.flatten(spec)[0].shape[0]
    if size is None:
        first = next(iter(dataset.take(1)))
        size = tree.flatten(first)[0].shape[0]
    return int(size)


def _tensorboard(out_dir):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        print("tensorboard is not installed: no TensorBoard log.")
        return []
    return [keras.callbacks.TensorBoard(os.path.join(out_dir, "tensorboard"))]


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
