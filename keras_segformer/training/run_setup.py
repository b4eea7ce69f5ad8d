"""The run folder of ``trainer.fit``: made ready and read before training
(``_prepare_run``), recorded in ``run.json`` (``_write_run``), and the
callbacks that write it during training (``_run_callbacks``)."""

import json
import os

import keras

from keras_segformer.io_atomic import refuse_link
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
    TENSORBOARD,
    _join,
    _json,
    _read_json,
    _remove_leftovers,
    check_run,
    clear_run,
    legacy_manifest,
    record_files,
    remove_backup,
    write_text,
)

# The name of the checkpoint of each epoch, in `checkpoints/`.
CHECKPOINT_NAME = "epoch-{epoch:03d}.weights.h5"
_EVENT_FOLDERS = (f"{TENSORBOARD}/train", f"{TENSORBOARD}/validation")

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
        return check_run(
            out_dir, epochs=epochs, settings=settings, cleared=overwrite
        )
    if overwrite:
        clear_run(out_dir, settings)  # the run's files only
    _remove_leftovers(out_dir)
    status = check_run(
        out_dir, epochs=epochs, settings=settings, cleared=overwrite
    )
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
    recorder = RecordFiles(out_dir)  # before the folders are made
    checkpoints = os.path.join(out_dir, CHECKPOINTS)
    os.makedirs(checkpoints, exist_ok=True)
    return [
        recorder,  # lists each file before the callbacks below write it
        EpochLog(os.path.join(out_dir, LOG_FILE)),
        AtomicModelCheckpoint(
            os.path.join(checkpoints, CHECKPOINT_NAME),
            save_weights_only=True,
        ),
        AtomicBackupAndRestore(
            os.path.join(out_dir, BACKUP),
            double_checkpoint=True,
            restore_dir=os.path.join(run_dir, BACKUP),
        ),
        *_tensorboard(out_dir),
    ]


class RecordFiles(keras.callbacks.Callback):
    """Lists in ``run.json`` (``run_files.record_files``) each file the
    run's callbacks are about to write, and the folders the run makes:
    the log and each epoch's checkpoint and backup before they are
    written, TensorBoard's event files once they appear. Placed before
    those callbacks. ``run_files.run_files`` reads the list.

    Args:
        out_dir: str. The run folder (nothing is listed where it has no
            ``run.json``).
    """

    def __init__(self, out_dir):
        super().__init__()
        self.out_dir = os.fspath(out_dir)
        folders = (CHECKPOINTS, BACKUP, TENSORBOARD, *_EVENT_FOLDERS)
        self.new_folders = [
            f for f in folders if not os.path.lexists(_join(self.out_dir, f))
        ]
        self.events_before = set(self._events())
        self._events_seen = False

    def _events(self):
        found = []
        for folder in _EVENT_FOLDERS:
            path = _join(self.out_dir, folder)
            if os.path.isdir(path) and not os.path.islink(path):
                found += [
                    f"{folder}/{name}"
                    for name in os.listdir(path)
                    if name.startswith("events.out.tfevents.")
                ]
        return found

    def record(self, *files):
        """List ``files`` and the TensorBoard files new since the start."""
        new = [f for f in self._events() if f not in self.events_before]
        record_files(self.out_dir, [*files, *new], self.new_folders)

    def on_train_begin(self, logs=None):
        self.record(LOG_FILE)

    def on_train_batch_end(self, batch, logs=None):
        if not self._events_seen:  # the training writer's first file
            self._events_seen = True
            self.record()

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        self.record(
            LOG_FILE,
            f"{CHECKPOINTS}/{CHECKPOINT_NAME.format(epoch=done)}",
            f"{BACKUP}/state-{done:03d}.weights.h5",
            f"{BACKUP}/{AtomicBackupAndRestore.STATE}",
        )

    def on_train_end(self, logs=None):
        self.record(FINAL_MODEL)


def _stop_on_nonfinite(out_dir):
    """``StopOnNonFinite`` naming the run's last good files."""
    final = os.path.join(out_dir, FINAL_MODEL)
    if os.path.exists(final):
        kept = f"{final} is unchanged"
    else:
        kept = f"{final} is not written"
    return StopOnNonFinite(os.path.join(out_dir, CHECKPOINTS), kept=kept)


def _load_state(model, path):
    """Weights and optimizer state of the run's ``.keras`` file at
    ``path``: never through a link, and checked as any ``.keras`` file a
    user gives (``check_keras_archive``: its zip directory's sizes) before
    Keras inflates a member."""
    from keras_segformer.export.loading import check_keras_archive

    refuse_link(path)
    check_keras_archive(path)
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
    asked for, the epochs ``model.keras`` holds, and the list of what the
    run wrote (``record_files``: kept; empty for a new run; a run of an
    older version's files by name)."""
    recorded = (status.record or {}).get("settings", {})
    path = os.path.join(out_dir, RUN_FILE)
    on_disk = _read_json(path)
    if on_disk is None:
        files, folders = [], []  # a new run: nothing written yet
    elif isinstance(on_disk.get("files"), list):
        files, folders = on_disk["files"], on_disk.get("folders", [])
    else:
        files, folders = legacy_manifest(out_dir)
    record = {
        "settings": {**_json(settings), **recorded},
        "epochs": status.epochs,
        "model_epochs": model_epochs,
        "files": files,
        "folders": folders,
    }
    write_text(path, json.dumps(record, indent=1))
    status.record = record


def _tensorboard(out_dir):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        print("tensorboard is not installed: no TensorBoard log.")
        return []
    return [keras.callbacks.TensorBoard(os.path.join(out_dir, "tensorboard"))]
