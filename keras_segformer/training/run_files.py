"""The run folder: atomic writes, resumable callbacks, the run's status.

Every file is written under a temporary name in its folder and renamed
into place (``os.replace``): a kill at any instant leaves complete files
only. ``AtomicModelCheckpoint``, ``AtomicBackupAndRestore``, ``EpochLog``:
Keras' callbacks made atomic; ``check_run`` reads a run folder.
"""

import csv
import dataclasses
import io
import json
import os
import shutil

import keras
import numpy as np

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
