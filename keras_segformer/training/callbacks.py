"""Keras' checkpoint, backup and CSV-log callbacks, made atomic.

Each file is written under a temporary name and renamed into place
(``keras_segformer.io_atomic``): a kill at any instant leaves complete
files only. ``keras_segformer.training.run_files`` reads the run folder
they write.
"""

import csv
import io
import json
import os
import re

import keras
import numpy as np

from keras_segformer.io_atomic import (
    disk_full_error,
    hdf5_in_memory,
    no_space,
    read_own,
    refuse_link,
    temporary_path,
    write_atomic,
    write_text,
)
from keras_segformer.io_atomic import fsync as _fsync
from keras_segformer.io_atomic import remove as _remove

_STATE_WEIGHTS = re.compile(r"state-\d+\.weights\.h5")


def _read_json(path):
    """The JSON object in ``path``, or None when there is no such file; a
    link there is refused, never read (``io_atomic.read_own``)."""
    text = read_own(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that writes each file under a temporary name
    (``temporary_path``) and renames it into place once complete."""

    _final_path = None

    def _get_file_path(self, epoch, batch, logs):
        self._final_path = super()._get_file_path(epoch, batch, logs)
        temporary = temporary_path(self._final_path)
        _remove(temporary)  # never written through
        return temporary

    def _save_model(self, epoch, batch, logs):
        self._final_path = None
        try:
            with hdf5_in_memory():  # the temporary of _get_file_path
                super()._save_model(epoch, batch, logs)
        except BaseException as e:
            if self._final_path is None:
                raise
            _remove(temporary_path(self._final_path))
            if isinstance(e, OSError) and no_space(e):
                raise disk_full_error(self._final_path, e) from None
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

    Keras' callback overwrites ``latest.weights.h5`` and
    ``training_metadata.json`` in place: a kill during a write leaves a
    truncated file, one between the two writes pairs the new weights with
    the old epoch count (an epoch trained twice). Here each state is a new
    file ``state-NNN.weights.h5`` (weights and optimizer after NNN epochs,
    written atomically), and ``state.json``, which names it, is replaced
    after it: that rename commits the state. With ``double_checkpoint`` the
    state before stays as a fallback when the newest cannot be read. The
    backup is kept at the end (``fit`` deletes it after ``model.keras``).

    Args:
        backup_dir: str. Folder for this callback alone.
        double_checkpoint: bool. Keep the previous state too.
        restore_dir: str or None. Where to restore from (a cluster's
            other workers: the chief's backup); ``backup_dir`` by default.
    """

    STATE = "state.json"

    def __init__(self, backup_dir, double_checkpoint=True, restore_dir=None):
        super().__init__(
            os.fspath(backup_dir),
            double_checkpoint=double_checkpoint,
            delete_checkpoint=False,
        )
        self.restore_dir = os.fspath(restore_dir or backup_dir)

    def on_train_begin(self, logs=None):
        self._load_model()

    def _load_model(self):
        state = read_backup_state(self.restore_dir)
        if state is None:
            return
        if not self.model.built:
            raise ValueError(
                "Build the model before `fit` to restore a backup "
                f"({self.restore_dir})."
            )
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        candidates = [state] + (
            [state["previous"]] if state["previous"] else []
        )
        for i, entry in enumerate(candidates):
            name = str(entry.get("weights"))
            path = os.path.join(self.restore_dir, name)
            if not _STATE_WEIGHTS.fullmatch(name):
                raise ValueError(
                    f"{os.path.join(self.restore_dir, self.STATE)} names "
                    f"{name!r}, not a state this callback writes "
                    "(state-NNN.weights.h5): not read."
                )
            refuse_link(path)  # the backup's own file, never a link
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
        keep = {name, previous and previous["weights"]}
        # Only the states this callback wrote (named by the state before),
        # never another file of such a name.
        written = [old, old and old.get("previous")] if old else []
        for entry in written:
            other = str((entry or {}).get("weights"))
            if other not in keep and _STATE_WEIGHTS.fullmatch(other):
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
        if os.path.islink(self.filename):
            # Not the run's log (it never makes a link): not read, and
            # replaced at the first epoch end (io_atomic).
            self.keys, self._rows = [], {}
            return
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
    dropped.

    Raises:
        LinkError: ``path`` is a symbolic link (never read:
            ``io_atomic.read_own``).
    """
    text = read_own(path)
    if text is None:
        return [], {}
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=separator)
    rows = list(reader)
    fields = list(reader.fieldnames or [])
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
