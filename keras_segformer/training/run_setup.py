"""The run folder of ``trainer.fit``: made ready and read before training
(``_prepare_run``), recorded in ``run.json`` (``_write_run``), and the
callbacks that write it during training (``_run_callbacks``)."""

import json
import os

import keras

from keras_segformer.training import cluster as cluster_lib
from keras_segformer.training.callbacks import (
    AtomicBackupAndRestore,
    AtomicModelCheckpoint,
    EpochLog,
)
from keras_segformer.training.nonfinite import StopOnNonFinite
from keras_segformer.training.run_files import (
    BACKUP,
    CHECKPOINTS,
    FINAL_MODEL,
    LOG_FILE,
    RUN_FILE,
    _json,
    _remove_leftovers,
    check_run,
    clear_run,
    remove_backup,
    write_text,
)

_CONFIG_SKIPPED = frozenset(
    {
        "name",
        "trainable",
        "id2label",
        "build_config",
        "compile_config",
        "registered_name",
        "module",
        "class_name",
    }
)


def _prepare_run(out_dir, epochs, steps_per_epoch, settings, overwrite, found):
    """Make ``out_dir`` (made and locked by ``_lock_run``) ready
    (``overwrite``, leftover temporaries, a stale backup) and read its run.
    In a cluster only the chief changes the folder; the others read it
    after it."""
    if found is not None and not found.chief:
        if not overwrite:  # the chief's refusal, here too
            check_run(out_dir, epochs=epochs, settings=settings)
        cluster_lib.barrier(found, "run folder ready")
        return check_run(out_dir, epochs=epochs, settings=settings)
    if overwrite:
        clear_run(out_dir, settings)  # the run's files only
    _remove_leftovers(out_dir)
    status = check_run(out_dir, epochs=epochs, settings=settings)
    backup = os.path.join(out_dir, BACKUP)
    if status.source != "backup" and os.path.exists(backup):
        remove_backup(out_dir)  # older than model.keras (a cleanup cut short)
    if found is not None:
        cluster_lib.barrier(found, "run folder ready")
    return status


def _start_message(status, steps_per_epoch):
    """The line said when a run resumes or continues (None otherwise)."""
    out_dir, epochs = status.out_dir, status.epochs
    if status.source == "backup":
        backup = os.path.join(out_dir, BACKUP)
        return (
            f"resuming {out_dir} after epoch {status.done} of {epochs} "
            f"(from {backup})"
        )
    if status.source == "model":
        final = os.path.join(out_dir, FINAL_MODEL)
        return (
            f"continuing the finished run in {out_dir} (from {final}): "
            f"epochs {status.done + 1}-{epochs}; the learning-rate "
            f"schedule now spans {epochs * steps_per_epoch} steps"
        )
    return None


def _run_callbacks(out_dir, run_dir):
    """The callbacks that write the run folder ``out_dir`` (a worker's
    scratch folder, restoring from the chief's ``run_dir``). The log and
    checkpoint come before the backup: the backup commits the epoch;
    killed before it, the epoch runs again and rewrites both."""
    checkpoints = os.path.join(out_dir, CHECKPOINTS)
    os.makedirs(checkpoints, exist_ok=True)
    return [
        EpochLog(os.path.join(out_dir, LOG_FILE)),
        AtomicModelCheckpoint(
            os.path.join(checkpoints, "epoch-{epoch:03d}.weights.h5"),
            save_weights_only=True,
        ),
        AtomicBackupAndRestore(
            os.path.join(out_dir, BACKUP),
            double_checkpoint=True,
            restore_dir=os.path.join(run_dir, BACKUP),
        ),
        *_tensorboard(out_dir),
    ]


def _stop_on_nonfinite(out_dir):
    """``StopOnNonFinite`` naming the run's last good files."""
    final = os.path.join(out_dir, FINAL_MODEL)
    if os.path.exists(final):
        kept = f"{final} is unchanged"
    else:
        kept = f"{final} is not written"
    return StopOnNonFinite(os.path.join(out_dir, CHECKPOINTS), kept=kept)


def _load_state(model, path):
    """Weights and optimizer state of the ``.keras`` file at ``path``."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    try:
        model.load_weights(path)
    except ValueError as e:
        raise ValueError(f"{path} does not fit this model: {e}") from e


def _model_settings(model):
    """The model config, flattened to ``model backbone.depths`` keys, less
    the entries that change no weight (names, class names)."""
    try:
        config = _json(model.get_config())
    except (NotImplementedError, TypeError):
        return {}
    flat = {}

    def walk(prefix, config):
        for key, value in config.items():
            if key in _CONFIG_SKIPPED:
                continue
            if isinstance(value, dict) and "config" in value:
                walk(f"{prefix}{key}.", value["config"])
            else:
                flat[f"model {prefix}{key}"] = value

    walk("", config)
    return flat


def _write_run(out_dir, status, settings, *, model_epochs):
    """Write ``run.json``: the settings (recorded ones kept), the epochs
    asked for and the epochs ``model.keras`` holds."""
    recorded = (status.record or {}).get("settings", {})
    record = {
        "settings": {**_json(settings), **recorded},
        "epochs": status.epochs,
        "model_epochs": model_epochs,
    }
    write_text(os.path.join(out_dir, RUN_FILE), json.dumps(record, indent=1))
    status.record = record


def _tensorboard(out_dir):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        print("tensorboard is not installed: no TensorBoard log.")
        return []
    return [keras.callbacks.TensorBoard(os.path.join(out_dir, "tensorboard"))]
