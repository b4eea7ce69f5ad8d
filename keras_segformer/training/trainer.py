"""``model.fit`` with the SegFormer recipe, logs, checkpoints and resume.

Everything here is stock Keras: ``compile_for_training``
(``SegFormerLoss``, the recipe optimizer, mIoU/mAcc/aAcc); ``fit`` with
``BackupAndRestore`` (resume after a kill), ``ModelCheckpoint`` (weights
every epoch), ``CSVLogger`` and ``TensorBoard``. The three callbacks that
write files are subclassed to write them atomically: each file is written
under a temporary name in its folder and renamed into place
(``os.replace``), so a kill at any instant leaves complete files only.
"""

import csv
import dataclasses
import io
import json
import os
import shutil

import keras
import numpy as np
from keras import tree

from keras_segformer.errors import data_errors
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
RUN_FILE = "run.json"
LOG_FILE = "log.csv"
CHECKPOINTS = "checkpoints"
BACKUP = "backup"
TENSORBOARD = "tensorboard"
# What a run writes in its folder (and all that `overwrite` removes), the
# run file first: once it is gone the folder holds no run.
RUN_ENTRIES = (
    RUN_FILE,
    FINAL_MODEL,
    LOG_FILE,
    CHECKPOINTS,
    BACKUP,
    TENSORBOARD,
)
# Marks a file being written: `.epoch-003.tmp-<pid>.weights.h5`.
_TMP = ".tmp-"
# Keras reads the format from these suffixes: temporary names keep them.
_SUFFIXES = (".weights.h5", ".keras")
# Model config entries that change neither the weights nor the recipe.
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


@data_errors()  # a bad sample met in tf.data: its message, no traceback
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
    overwrite=False,
    settings=None,
    **optimizer_kw,
):
    """Train ``model`` and keep everything in ``out_dir``.

    Writes ``out_dir/run.json`` (the run's settings), ``out_dir/log.csv``
    (one row per epoch), ``out_dir/tensorboard/``, ``out_dir/checkpoints/
    epoch-NNN.weights.h5`` after every epoch, ``out_dir/backup/`` (model
    and optimizer state at every epoch end, removed when training
    completes) and finally ``out_dir/model.keras`` (with the optimizer
    state). Every file but TensorBoard's event streams is written under a
    temporary name and renamed into place; leftover temporaries of a killed
    run are removed on the next start.

    Started again with the same ``out_dir``:

    - after a kill, training resumes from the backup: the weights, the
      optimizer state (and so the step count and learning-rate schedule)
      and the epoch counter come back, and the interrupted epoch runs again
      from its start (its log row and checkpoint are replaced). At most the
      steps of the interrupted epoch are redone, so keep epochs short for
      long runs (``steps_per_epoch``);
    - on a finished run of ``epochs`` epochs, nothing is trained: the model
      gets the run's weights from ``model.keras`` and a message says so;
    - with more ``epochs`` than a finished run had, training continues from
      ``model.keras`` (weights and optimizer state). The poly schedule is
      laid out anew over the new total of steps, so the learning rate
      resumes at the value the longer schedule has at the step reached;
    - with fewer ``epochs`` than already trained, or a model or setting
      that differs from the recorded run, a ``ValueError`` names the
      difference; ``overwrite=True`` starts afresh.

    Several devices: build ``model`` and call ``fit`` inside
    ``distribution_scope()``. The training batch is global and must be
    divisible by the number of devices; validation batches are padded to
    a multiple of it with fully ignored samples, which change no score.

    Args:
        model: ``SegFormer``, built.
        train_data: ``tf.data.Dataset`` (repeated) of ``(images, labels)``.
        out_dir: str. Output folder.
        epochs: int. Epochs in all (a resumed run counts those done).
        steps_per_epoch: int. Steps per epoch.
        validation_data: dataset or None. Evaluated after each epoch.
        learning_rate: float. Peak learning rate of the backbone.
        verbose: Keras ``fit`` verbosity (progress bar by default); 0 also
            silences the resume messages.
        callbacks: extra Keras callbacks.
        overwrite: bool. Remove the run in ``out_dir`` first (the entries
            of ``RUN_ENTRIES`` only).
        settings: dict or None. More settings that define the run (JSON
            values, e.g. the command-line flags), recorded in ``run.json``
            with the model config, ``steps_per_epoch`` and
            ``learning_rate`` and compared on every restart.
        **optimizer_kw: forwarded to ``create_optimizer`` (may change
            between restarts, e.g. ``warmup_steps``).

    Returns:
        ``keras.callbacks.History`` (empty when there was nothing to do).
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(
            "`epochs` and `steps_per_epoch` must be >= 1. Received "
            f"epochs={epochs}, steps_per_epoch={steps_per_epoch}."
        )
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    _check_writable(out_dir)
    if overwrite:
        clear_run(out_dir)
    _remove_leftovers(out_dir)
    settings = {
        **(settings or {}),
        "steps_per_epoch": int(steps_per_epoch),
        "learning_rate": float(learning_rate),
        **_model_settings(model),
    }
    status = check_run(out_dir, epochs=epochs, settings=settings)
    say = print if verbose != 0 else _silent
    backup = os.path.join(out_dir, BACKUP)
    final = os.path.join(out_dir, FINAL_MODEL)
    if status.source != "backup" and os.path.exists(backup):
        _remove(backup)  # older than model.keras (a cleanup cut short)
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
        if status.source == "model":
            _load_state(model, final)
        if status.finished:
            say(status.message())
            return keras.callbacks.History()
        _write_run(out_dir, status, settings, model_epochs=status.model_epochs)
        if status.source == "backup":
            say(
                f"resuming {out_dir} after epoch {status.done} of {epochs} "
                f"(from {backup})"
            )
        elif status.source == "model":
            say(
                f"continuing the finished run in {out_dir} (from {final}): "
                f"epochs {status.done + 1}-{epochs}; the learning-rate "
                f"schedule now spans {epochs * steps_per_epoch} steps"
            )
        checkpoints = os.path.join(out_dir, CHECKPOINTS)
        os.makedirs(checkpoints, exist_ok=True)
        # Log and checkpoint before the backup: the backup commits the
        # epoch; killed before it, the epoch runs again and rewrites both.
        model._initial_epoch = None  # set by a backup restored earlier
        history = model.fit(
            train_data,
            epochs=epochs,
            initial_epoch=status.done if status.source == "model" else 0,
            steps_per_epoch=steps_per_epoch,
            validation_data=validation_data,
            verbose=verbose,
            callbacks=[
                EpochLog(os.path.join(out_dir, LOG_FILE)),
                AtomicModelCheckpoint(
                    os.path.join(checkpoints, "epoch-{epoch:03d}.weights.h5"),
                    save_weights_only=True,
                ),
                AtomicBackupAndRestore(backup, double_checkpoint=True),
                *_tensorboard(out_dir),
                *callbacks,
            ],
        )
        done = history.epoch[-1] + 1 if history.epoch else epochs
        write_atomic(final, model.save)
    # model.keras now holds the newest state: the backup can go.
    _write_run(out_dir, status, settings, model_epochs=done)
    _remove(backup)
    return history


def _silent(*args, **kwargs):
    pass


def _load_state(model, path):
    """Weights and optimizer state of the ``.keras`` file at ``path``."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    try:
        model.load_weights(path)
    except ValueError as e:
        raise ValueError(f"{path} does not fit this model: {e}") from e


@dataclasses.dataclass
class RunStatus:
    """What an output folder holds (see ``check_run``).

    Attributes:
        out_dir: str. The folder.
        epochs: int. Epochs asked for.
        done: int. Epochs trained already.
        source: str or None. Where the trained state is: ``"backup"``,
            ``"model"`` (``model.keras``) or None (a new run).
        model_epochs: int or None. Epochs ``model.keras`` holds.
        record: dict or None. The ``run.json`` found.
        flags: bool. Name command-line flags in messages.
    """

    out_dir: str
    epochs: int
    done: int = 0
    source: str = None
    model_epochs: int = None
    record: dict = None
    flags: bool = False

    @property
    def finished(self):
        """True when ``model.keras`` already holds all the epochs."""
        return self.source == "model" and self.done >= self.epochs

    def message(self):
        """The one line said when a finished run is started again."""
        words = _words(self.flags)
        return (
            f"{self.out_dir} holds a finished run of {self.done} epochs "
            f"({os.path.join(self.out_dir, FINAL_MODEL)}): nothing to do. "
            f"Ask for more {words['epochs']} to continue it, or "
            f"{words['overwrite']} / another {words['out']} to start afresh."
        )


def check_run(out_dir, *, epochs, settings=None):
    """Read the run in ``out_dir`` and check it against a new request.

    Args:
        out_dir: str. Output folder.
        epochs: int. Epochs asked for.
        settings: dict or None. Settings of the request; each one also
            recorded in ``run.json`` must be equal there. Keys starting
            with ``--`` are named as command-line flags in messages.

    Returns:
        ``RunStatus``.

    Raises:
        ValueError: a setting differs from the recorded run's, fewer
            epochs are asked for than were trained, or the folder holds
            training files without ``run.json``.
    """
    out_dir = os.fspath(out_dir)
    settings = _json(settings or {})
    flags = any(key.startswith("--") for key in settings)
    words = _words(flags)
    status = RunStatus(out_dir, int(epochs), flags=flags)
    record = _read_json(os.path.join(out_dir, RUN_FILE))
    if record is None:
        found = [
            name
            for name in RUN_ENTRIES
            if os.path.lexists(os.path.join(out_dir, name))
        ]
        if found:
            raise ValueError(
                f"{out_dir} holds {', '.join(found)} but no {RUN_FILE}: not "
                "a run that can be resumed; pass "
                f"{words['overwrite']} / another {words['out']}."
            )
        return status
    status.record = record
    recorded = record.get("settings", {})
    for key, value in settings.items():
        if key in recorded and recorded[key] != value:
            raise ValueError(
                f"{out_dir} holds a run with {_setting(key, recorded[key])}; "
                f"this {words['request']} asks for "
                f"{_setting(key, value, again=True)}: use the same settings "
                f"to resume, or {words['overwrite']} / another "
                f"{words['out']}."
            )
    state = read_backup_state(os.path.join(out_dir, BACKUP))
    backup_epochs = state["epoch"] if state else 0
    if os.path.isfile(os.path.join(out_dir, FINAL_MODEL)):
        status.model_epochs = record.get("model_epochs")
    if backup_epochs > (status.model_epochs or 0):
        status.source, status.done = "backup", backup_epochs
    elif status.model_epochs:
        status.source, status.done = "model", status.model_epochs
    if status.epochs < status.done:
        raise ValueError(
            f"{out_dir} holds a run trained for {status.done} epochs; "
            f"{words['epochs']} {status.epochs} is fewer: ask for at least "
            f"{status.done}, or {words['overwrite']} / another "
            f"{words['out']} to start afresh."
        )
    return status


def clear_run(out_dir):
    """Remove the run in ``out_dir`` (``RUN_ENTRIES``, nothing else).

    The entries are first moved into one hidden temporary folder,
    ``run.json`` first, then that folder is deleted: a kill part-way leaves
    no ``run.json`` beside the entries not yet moved, which the next start
    refuses to mix with a new run (and the next ``overwrite`` finishes).
    """
    found = [
        name
        for name in RUN_ENTRIES
        if os.path.lexists(os.path.join(out_dir, name))
    ]
    if not found:
        return
    trash = os.path.join(out_dir, f".overwritten{_TMP}{os.getpid()}")
    os.makedirs(trash, exist_ok=True)
    for name in found:
        os.replace(os.path.join(out_dir, name), os.path.join(trash, name))
    shutil.rmtree(trash)


def _words(flags):
    if flags:
        return {
            "epochs": "--epochs",
            "overwrite": "--overwrite",
            "out": "--out",
            "request": "command",
        }
    return {
        "epochs": "epochs",
        "overwrite": "overwrite=True",
        "out": "out_dir",
        "request": "call",
    }


def _setting(key, value, again=False):
    """``--variant b0`` / ``learning_rate=0.001`` (the value alone when
    ``again`` and a flag)."""
    if not key.startswith("--"):
        return f"{key}={value}"
    if isinstance(value, bool):
        shown = "on" if value else "off"
    elif isinstance(value, list):
        shown = " ".join(str(v) for v in value)
    elif value is None:
        shown = "unset"
    else:
        shown = str(value)
    return shown if again else f"{key} {shown}"


def _json(value):
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


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


def _read_json(path):
    """The JSON object in ``path``, or None when there is no such file."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def temporary_path(path):
    """Where ``path`` is written before it is renamed into place: the same
    folder, hidden, ``.tmp-<pid>`` before the suffix Keras reads
    (``epoch-003.weights.h5`` -> ``.epoch-003.tmp-41.weights.h5``)."""
    folder, name = os.path.split(os.fspath(path))
    suffix = next((s for s in _SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        stem, suffix = os.path.splitext(name)
    else:
        stem = name[: -len(suffix)]
    return os.path.join(folder, f".{stem}{_TMP}{os.getpid()}{suffix}")


def write_atomic(path, write):
    """Call ``write(temporary)`` and rename the file it wrote to ``path``.

    A kill at any point leaves either the old ``path`` or the new one,
    whole (the temporary is flushed to disk before the rename); an error
    removes the temporary and leaves ``path`` as it was.

    Args:
        path: str. Final file name.
        write: callable. Writes a complete file at the name it is given.
    """
    path = os.fspath(path)
    temporary = temporary_path(path)
    try:
        write(temporary)
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def write_text(path, text):
    """Write ``text`` to ``path`` atomically (``write_atomic``)."""

    def write(temporary):
        with open(temporary, "w") as f:
            f.write(text)

    write_atomic(path, write)


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def _remove_leftovers(out_dir):
    """Remove the temporaries a killed run left (``.*.tmp-*``)."""
    for folder in (
        out_dir,
        os.path.join(out_dir, CHECKPOINTS),
        os.path.join(out_dir, BACKUP),
    ):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if name.startswith(".") and _TMP in name:
                _remove(os.path.join(folder, name))


def _check_writable(out_dir):
    probe = os.path.join(out_dir, f".write-test{_TMP}{os.getpid()}")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise OSError(f"Output folder {out_dir!r} is not writable: {e}") from e


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that writes each file under a temporary name
    (``temporary_path``) and renames it into place once complete."""

    _final_path = None

    def _get_file_path(self, epoch, batch, logs):
        self._final_path = super()._get_file_path(epoch, batch, logs)
        return temporary_path(self._final_path)

    def _save_model(self, epoch, batch, logs):
        self._final_path = None
        try:
            super()._save_model(epoch, batch, logs)
        except BaseException:
            if self._final_path is not None:
                _remove(temporary_path(self._final_path))
            raise
        temporary = temporary_path(self._final_path)
        if os.path.exists(temporary):  # not skipped by save_best_only
            _fsync(temporary)
            os.replace(temporary, self._final_path)


def read_backup_state(backup_dir):
    """The newest state in an ``AtomicBackupAndRestore`` folder: a dict
    with ``epoch`` (epochs done), ``weights`` (file name) and ``previous``
    (the state before, or None); None when there is none."""
    return _read_json(os.path.join(backup_dir, AtomicBackupAndRestore.STATE))


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose every write is atomic.

    Keras' callback copies ``latest.weights.h5`` to ``.bkp`` (with
    ``double_checkpoint``), then overwrites ``latest.weights.h5`` and
    ``training_metadata.json`` in place: a kill during a write leaves a
    truncated file (a truncated metadata file is not even caught by the
    fallback), and one between the two writes pairs the new weights with
    the old epoch count, so that an epoch is trained twice. Here each state
    is a new file ``state-NNN.weights.h5`` (weights and optimizer after NNN
    epochs, written atomically), and ``state.json``, which names it, is
    replaced after it: that rename commits the state. With
    ``double_checkpoint`` the state before stays as a fallback when the
    newest cannot be read. The backup is not deleted at the end (``fit``
    deletes it once ``model.keras`` is written).

    Args:
        backup_dir: str. Folder for this callback alone.
        double_checkpoint: bool. Keep the previous state too.
    """

    STATE = "state.json"

    def __init__(self, backup_dir, double_checkpoint=True):
        super().__init__(
            os.fspath(backup_dir),
            double_checkpoint=double_checkpoint,
            delete_checkpoint=False,
        )

    def on_train_begin(self, logs=None):
        self._load_model()

    def _load_model(self):
        state = read_backup_state(self.backup_dir)
        if state is None:
            return
        if not self.model.built:
            raise ValueError(
                "Build the model before `fit` to restore a backup "
                f"({self.backup_dir})."
            )
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        candidates = [state] + (
            [state["previous"]] if state["previous"] else []
        )
        for i, entry in enumerate(candidates):
            path = os.path.join(self.backup_dir, entry["weights"])
            try:
                self.model.load_weights(path)
            except OSError as e:
                if i + 1 < len(candidates):
                    print(f"cannot read {path} ({e}): using the state before")
                    continue
                raise OSError(f"Cannot read the backup {path}: {e}") from e
            except ValueError as e:
                raise ValueError(
                    f"The backup {path} does not fit this model: {e}"
                ) from e
            self.model._initial_epoch = entry["epoch"]
            return

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"state-{self._current_epoch:03d}.weights.h5"
        write_atomic(
            os.path.join(self.backup_dir, name), self.model.save_weights
        )
        old = read_backup_state(self.backup_dir)
        previous = None
        if self.double_checkpoint and old and old["weights"] != name:
            previous = {"epoch": old["epoch"], "weights": old["weights"]}
        state = {
            "epoch": self._current_epoch,
            "batch": self._last_batch_seen,
            "weights": name,
            "previous": previous,
        }
        write_text(os.path.join(self.backup_dir, self.STATE), json.dumps(state))
        keep = {self.STATE, name, previous and previous["weights"]}
        for other in os.listdir(self.backup_dir):
            if other not in keep and not other.startswith("."):
                _remove(os.path.join(self.backup_dir, other))


class EpochLog(keras.callbacks.CSVLogger):
    """``CSVLogger`` with one row per epoch across restarts.

    Keras' logger appends: an epoch that runs again after a kill gets a
    second row, and a kill during a write leaves half a row. Here the rows
    are kept by epoch (an epoch run again replaces its row), and the whole
    file is rewritten atomically at every epoch end.

    Args:
        filename: str. The CSV file.
        separator: str. Column separator.
    """

    def __init__(self, filename, separator=","):
        super().__init__(filename, separator=separator, append=True)

    def on_train_begin(self, logs=None):
        self.keys, self._rows = read_log(self.filename, self.sep)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        keys = sorted(logs)
        if keys and not any(key.startswith("val_") for key in keys):
            # As CSVLogger: room for validation scores added on a restart.
            keys += [f"val_{key}" for key in keys]
        self.keys += [key for key in keys if key not in self.keys]
        row = {key: _cell(logs.get(key, "NA")) for key in keys}
        self._rows[int(epoch)] = {"epoch": int(epoch), **row}
        text = io.StringIO()
        writer = csv.DictWriter(
            text,
            fieldnames=["epoch", *self.keys],
            restval="NA",
            delimiter=self.sep,
            lineterminator="\n",
        )
        writer.writeheader()
        writer.writerows(self._rows[e] for e in sorted(self._rows))
        write_text(self.filename, text.getvalue())

    def on_train_end(self, logs=None):
        pass


def read_log(path, separator=","):
    """Columns (less ``epoch``) and rows by epoch of a ``log.csv``; rows
    without an integer epoch (half a row appended by Keras' logger) are
    dropped."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f, delimiter=separator)
            rows = list(reader)
            fields = list(reader.fieldnames or [])
    except FileNotFoundError:
        return [], {}
    by_epoch = {}
    for row in rows:
        try:
            epoch = int(row.get("epoch"))
        except (TypeError, ValueError):
            continue
        by_epoch[epoch] = {
            k: "NA" if v is None else v for k, v in row.items() if k in fields
        }
    return [f for f in fields if f != "epoch"], by_epoch


def _cell(value):
    if hasattr(value, "ndim") and value.ndim == 0:
        return np.asarray(value).item()
    if isinstance(value, str):
        return value
    if hasattr(value, "__iter__"):
        return f"[{', '.join(map(str, value))}]"
    return value


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
