"""The run folder: atomic writes, resumable callbacks, the run's status.

Every file is written under a temporary name in its folder and renamed
into place (``keras_segformer.io_atomic``): a kill at any instant leaves
complete files only, and a link planted at a file's name is replaced, not
written through. ``AtomicModelCheckpoint``, ``AtomicBackupAndRestore``,
``EpochLog``: Keras' callbacks made atomic (``callbacks.py``, imported
here too); ``check_run`` reads a run folder; ``clear_run`` removes the
files a run wrote (listed in its ``run.json``: ``run_manifest``), no
others.
"""

import dataclasses
import json
import os
import warnings

# The one writer of the package; its names are re-exported here.
from keras_segformer.io_atomic import (  # noqa: F401
    TMP_MARK,
    disk_full_error,
    hdf5_in_memory,
    is_temporary,
    no_space,
    temporary_path,
    write_atomic,
    write_text,
)
from keras_segformer.io_atomic import fsync as _fsync  # noqa: F401
from keras_segformer.io_atomic import remove as _remove

# Keras' callbacks made atomic, in their own module; imported from here too.
from keras_segformer.training.callbacks import (  # noqa: F401
    AtomicBackupAndRestore,
    AtomicModelCheckpoint,
    EpochLog,
    _read_json,
    read_backup_state,
    read_log,
)

# The run's file names and its list of what it wrote, in their own module.
from keras_segformer.training.run_manifest import (  # noqa: F401
    _RUN_FOLDERS,
    BACKUP,
    CHECKPOINTS,
    FINAL_MODEL,
    LOG_FILE,
    RUN_ENTRIES,
    RUN_FILE,
    RUN_PATTERN,
    TENSORBOARD,
    _inside,
    _join,
    forget_files,
    legacy_manifest,
    record_files,
    run_files,
    run_folders,
)

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


# Settings a run may continue with another value of, with a warning: the
# data folders (the same data at another path after a restart).
MOVABLE = ("--images", "--masks", "--val-images", "--val-masks")


def check_run(out_dir, *, epochs, settings=None, cleared=False):
    """Read the run in ``out_dir`` and check it against a new request.

    Args:
        out_dir: str. Output folder.
        epochs: int. Epochs asked for.
        settings: dict or None. Settings of the request; each one also
            recorded in ``run.json`` must be equal there. Keys starting
            with ``--`` are named as command-line flags in messages.
        cleared: bool. ``out_dir``'s run was just cleared (``clear_run``):
            what is left of a run's names is the user's, and a new run
            starts beside it.

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
    if record is None and not cleared:
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
    if record is None:
        return status
    status.record = record
    recorded = record.get("settings", {})
    for key, value in settings.items():
        if key not in recorded or recorded[key] == value:
            continue
        if key in MOVABLE:
            # Data staged at another path on each restart (a cluster
            # node's scratch disk) is the same run: said, not refused.
            warnings.warn(
                f"{out_dir} holds a run trained with "
                f"{_setting(key, recorded[key])}; continuing it with "
                f"{_setting(key, value, again=True)} (fine if the same data "
                f"moved; otherwise use {words['overwrite']} or another "
                f"{words['out']}).",
                stacklevel=2,
            )
            continue
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
    folders = run_folders(out_dir)
    for relative in run_files(out_dir):  # run.json last
        _remove(_join(out_dir, relative))
    for folder in folders:  # the deepest first
        if not _inside(out_dir, f"{folder}/x"):
            continue  # a link: not a folder the run made
        try:
            os.rmdir(_join(out_dir, folder))
        except OSError:
            pass  # not there, or it holds files that are not the run's


def remove_backup(out_dir):
    """Remove the backup states of the run in ``out_dir`` (the run's files
    in ``backup/`` only; the folder too where it is left empty)."""
    backup = os.path.join(os.fspath(out_dir), BACKUP)
    if not os.path.lexists(os.path.join(out_dir, RUN_FILE)):
        return  # no run: nothing in backup/ is a run's
    removed = [f for f in run_files(out_dir) if f.startswith(f"{BACKUP}/")]
    for relative in removed:
        _remove(_join(out_dir, relative))
    forget_files(out_dir, removed)
    if _inside(out_dir, f"{BACKUP}/x"):
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


def _remove_leftovers(out_dir):
    """Remove the temporaries a killed run left (``.*.tmp-*``)."""
    for folder in (
        out_dir,
        os.path.join(out_dir, CHECKPOINTS),
        os.path.join(out_dir, BACKUP),
    ):
        if not os.path.isdir(folder) or os.path.islink(folder):
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
