"""Stop a training run at once when it stops learning anything: a loss
that is NaN or infinite, weights that are, or an epoch without one
labelled pixel.

Keras' ``TerminateOnNaN`` sets ``stop_training``, after which Keras still
ends the epoch: ``ModelCheckpoint`` and ``BackupAndRestore`` would save
the NaN weights and ``trainer.fit`` would write them to ``model.keras``.
``StopOnNonFinite`` raises instead, before any of them runs (it comes
first in the callback list), so every file of the run keeps its last good
state and the error says which one that is.
"""

import math
import os
import re

import keras
import numpy as np
from keras import ops

from keras_segformer.errors import DataError

# keras-segformer train exits with this status when training diverged.
NON_FINITE_STATUS = 5
_CHECKPOINT = re.compile(r"epoch-(\d+)\.weights\.h5$")


class NonFiniteError(ValueError):
    """Training produced a NaN or infinite loss or weights (the message
    names the step, the learning rate and the last good checkpoint)."""

    exit_status = NON_FINITE_STATUS


def nonfinite_weights(model):
    """Paths of the weights of ``model`` that hold NaN or inf.

    One sum per weight on its device, read back together; only when that
    total is not finite are the weights looked at one by one.

    Args:
        model: ``keras.Model``.

    Returns:
        list of str (empty when every weight is finite).
    """
    weights = [w for w in model.weights if "float" in str(w.dtype)]
    if not weights:
        return []
    sums = [ops.sum(ops.cast(w.value, "float32")) for w in weights]
    total = float(ops.convert_to_numpy(ops.sum(ops.stack(sums))))
    if math.isfinite(total):
        return []
    return [
        w.path
        for w in weights
        if not np.isfinite(ops.convert_to_numpy(w.value)).all()
    ]


def last_checkpoint(checkpoint_dir, before_epoch):
    """The newest ``epoch-NNN.weights.h5`` of an epoch before
    ``before_epoch`` (1-based) in ``checkpoint_dir``, or None."""
    found = []
    if os.path.isdir(checkpoint_dir):
        for name in os.listdir(checkpoint_dir):
            match = _CHECKPOINT.fullmatch(name)
            if match and int(match.group(1)) < before_epoch:
                found.append((int(match.group(1)), name))
    if not found:
        return None
    return os.path.join(checkpoint_dir, max(found)[1])


def _learning_rate(model):
    """The rate of the step that just ran (``optimizer.learning_rate``
    is the next step's) and the schedule's peak, or None."""
    optimizer = getattr(model, "optimizer", None)
    try:
        schedule = getattr(optimizer, "_learning_rate", None)  # guarded
        if isinstance(
            schedule, keras.optimizers.schedules.LearningRateSchedule
        ):
            step = int(ops.convert_to_numpy(optimizer.iterations)) - 1
            rate = float(ops.convert_to_numpy(schedule(max(step, 0))))
            peak = getattr(schedule, "initial_learning_rate", None)
            return rate, peak
        return float(ops.convert_to_numpy(optimizer.learning_rate)), None
    except Exception:  # no optimizer, or a rate that is not a number
        return None, None


class StopOnNonFinite(keras.callbacks.Callback):
    """Raise ``NonFiniteError`` at the first non-finite loss (after the
    step that made it) or at an epoch end whose weights or validation loss
    are not finite; raise ``DataError`` at the end of an epoch in which no
    pixel was labelled (its ``pixel_accuracy`` is NaN: 0 / 0).

    Put it before the callbacks that save: raising skips the rest of the
    epoch's callbacks, so nothing non-finite is written.

    Args:
        checkpoint_dir: str or None. Where ``ModelCheckpoint`` writes
            ``epoch-NNN.weights.h5``, to name the last good one.
        kept: str or None. What else still holds the last good state
            (e.g. the run's backup), said in the message.

    Example:
    >>> model.fit(ds, epochs=3, callbacks=[StopOnNonFinite()])
    """

    def __init__(self, checkpoint_dir=None, kept=None):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.kept = kept
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteError(
                self._message(f"the loss is {float(loss)}", batch)
            )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for key in ("loss", "val_loss"):
            if key in logs and not math.isfinite(float(logs[key])):
                raise NonFiniteError(
                    self._message(f"the {key} is {float(logs[key])}")
                )
        accuracy = logs.get("pixel_accuracy")
        if accuracy is not None and math.isnan(float(accuracy)):
            raise DataError(
                f"Epoch {epoch + 1}: every label pixel of its training "
                "batches was 255 (ignored), so nothing was learned: check "
                "the masks, the crop size and reduce_labels / label_map."
            )
        bad = nonfinite_weights(self.model)
        if bad:
            weights = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
            raise NonFiniteError(
                self._message(f"weights hold NaN or inf ({weights})")
            )

    def _message(self, what, batch=None):
        epochs = self.params.get("epochs") if self.params else None
        steps = self.params.get("steps") if self.params else None
        where = f"epoch {self._epoch + 1}" + (f"/{epochs}" if epochs else "")
        if batch is not None:
            where += f", step {batch + 1}" + (f"/{steps}" if steps else "")
        lr, peak = _learning_rate(self.model)
        rate = "" if lr is None else f" (learning rate {lr:.3g}"
        if lr is not None:
            rate += f", peak {peak:.3g})" if peak is not None else ")"
        good = None
        if self.checkpoint_dir is not None:
            good = last_checkpoint(self.checkpoint_dir, self._epoch + 1)
        if good is not None:
            last = f"the last good checkpoint is {good}"
        else:
            last = "no epoch finished before it, so there is no checkpoint"
        if self.kept:
            last += f"; {self.kept}"
        return (
            f"Training diverged at {where}{rate}: {what}. Stopped; {last}. "
            "Lower the learning rate."
        )
