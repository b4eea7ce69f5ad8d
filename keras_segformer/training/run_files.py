"""The run folder: atomic writes, resumable callbacks, the run's status.

Every file is written under a temporary name in its folder and renamed
into place (``keras_segformer.io_atomic``): a kill at any instant leaves
complete files only, and a link planted at a file's name is replaced, not
written through. ``AtomicModelCheckpoint``, ``AtomicBackupAndRestore``,
``EpochLog``: Keras' callbacks made atomic; ``check_run`` reads a run
folder; ``clear_run`` removes the files a run wrote (``run_files``), no
others.
"""

import csv
import dataclasses
import io
import json
import os
import re

import keras
import numpy as np

# The one writer of the package; its names are re-exported here.
from keras_segformer.io_atomic import (
    TMP_MARK,
    disk_full_error,
    hdf5_in_memory,
    is_temporary,
    no_space,
    temporary_path,
    write_atomic,
    write_text,
)
from keras_segformer.io_atomic import fsync as _fsync
from keras_segformer.io_atomic import remove as _remove

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
# The files a run writes (relative to its folder, `/`-separated): all
# that `overwrite` removes. The folders it makes, the deepest first.
RUN_PATTERN = re.compile(
    r"run\.json|model\.keras|log\.csv"
    r"|checkpoints/epoch-\d+\.weights\.h5"
    r"|backup/state-\d+\.weights\.h5|backup/state\.json"
    r"|tensorboard/(train|validation)/events\.out\.tfevents\.[^/]+"
)
_RUN_FOLDERS = (
    f"{TENSORBOARD}/train",
    f"{TENSORBOARD}/validation",
    TENSORBOARD,
    CHECKPOINTS,
    BACKUP,
)
_STATE_WEIGHTS = re.compile(r"state-\d+\.weights\.h5")
# Temporary names: `.epoch-003.tmp-<pid>.weights.h5` (io_atomic).
_TMP = TMP_MARK


# Model config entries that change neither the weights nor the recipe.
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
                "a training run (these are not a run's files, and "
                f"{words['overwrite']} removes only a run's). Move them, or "
                f"choose another {words['out']}."
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


def run_files(out_dir):
    """The files the run in ``out_dir`` wrote, by the names a run gives
    them (``RUN_PATTERN``; temporaries included), as paths relative to
    ``out_dir``; ``run.json`` last. Other files, in the run's folders
    too, are not the run's."""
    out_dir = os.fspath(out_dir)
    found = []
    for folder in ("", *_RUN_FOLDERS):
        path = os.path.join(out_dir, folder)
        if not os.path.isdir(path) or os.path.islink(path):
            continue
        for name in sorted(os.listdir(path)):
            relative = f"{folder}/{name}" if folder else name
            entry = os.path.join(path, name)
            if os.path.isdir(entry) and not os.path.islink(entry):
                continue
            if RUN_PATTERN.fullmatch(relative) or is_temporary(name):
                found.append(relative)
    found.sort(key=lambda relative: relative == RUN_FILE)
    return found


def check_overwrite(out_dir, settings=None):
    """Check that ``overwrite`` may clear ``out_dir`` (``clear_run``).

    Args:
        out_dir: str. The output folder.
        settings: dict or None. As in ``check_run`` (only to name flags).

    Returns:
        bool. Whether there is a run to clear.

    Raises:
        ValueError: ``out_dir`` never held a run (no ``run.json``) but has
            entries of a run's names (``checkpoints/``, ``model.keras``
            ...): they are not a run's files; the message names them.
    """
    out_dir = os.fspath(out_dir)
    found = [
        name
        for name in RUN_ENTRIES
        if os.path.lexists(os.path.join(out_dir, name))
    ]
    if not found:
        return False
    if not os.path.isfile(os.path.join(out_dir, RUN_FILE)):
        words = _words(any(k.startswith("--") for k in settings or {}))
        raise ValueError(
            f"{out_dir} never held a training run (no {RUN_FILE}) but holds "
            f"{', '.join(found)}: {words['overwrite']} removes only the "
            "files of a run, never these. Move them, or choose another "
            f"{words['out']}."
        )
    return True


def clear_run(out_dir, settings=None):
    """Remove the run in ``out_dir``: the files it wrote (``run_files``),
    then its folders where they are left empty; nothing else.

    ``run.json`` goes last: a kill part-way leaves it, and the next
    ``overwrite`` finishes. A folder that never held a run (no
    ``run.json``) but has entries of a run's names (``checkpoints/``,
    ``model.keras`` ...) is refused: those are not a run's files.

    Args:
        out_dir: str. The run folder.
        settings: dict or None. As in ``check_run`` (only to name flags).

    Raises:
        ValueError: ``out_dir`` holds entries of a run's names but no
            ``run.json``.
    """
    out_dir = os.fspath(out_dir)
    if not check_overwrite(out_dir, settings):
        return
    for relative in run_files(out_dir):
        _remove(os.path.join(out_dir, relative))
        if relative == RUN_FILE:
            break
    for folder in _RUN_FOLDERS:  # the deepest first
        try:
            os.rmdir(os.path.join(out_dir, folder))
        except OSError:
            pass  # not there, or it holds files that are not the run's


def remove_backup(out_dir):
    """Remove the backup states of the run in ``out_dir`` (the run's files
    in ``backup/`` only; the folder too where it is left empty)."""
    backup = os.path.join(os.fspath(out_dir), BACKUP)
    for relative in run_files(out_dir):
        if relative.startswith(f"{BACKUP}/"):
            _remove(os.path.join(out_dir, relative))
    try:
        os.rmdir(backup)
    except OSError:
        pass


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
        _remove(probe)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        os.remove(probe)
    except OSError as e:
        raise OSError(f"Output folder {out_dir!r} is not writable: {e}") from e


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
            path = os.path.join(self.restore_dir, entry["weights"])
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
            # Only the states this callback wrote.
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
