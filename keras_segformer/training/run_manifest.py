"""What a run wrote: its file names, and the list it keeps in ``run.json``.

A run records each file and folder in its ``run.json`` (``"files"``,
``"folders"``) before it writes it (``record_files``); ``overwrite``
removes those (``run_files``, ``run_folders``) and nothing else, so a
user's file that happens to have a run's name (a checkpoint of their own
put into ``checkpoints/``) stays. A run of an older version, whose
``run.json`` lists nothing, is read by the names a run gives its files
(``RUN_PATTERN``), as it was then. An entry is only ever a relative path
of a run's name inside the run folder, never behind a link: a
``run.json`` written by hand cannot name another file.
"""

import json
import os
import re

from keras_segformer.io_atomic import LinkError, is_temporary, write_text
from keras_segformer.training.callbacks import _read_json

FINAL_MODEL = "model.keras"
RUN_FILE = "run.json"
LOG_FILE = "log.csv"
CHECKPOINTS = "checkpoints"
BACKUP = "backup"
TENSORBOARD = "tensorboard"
# The entries of a run's names at the top of its folder, the run file
# first: a folder without run.json that holds one is refused.
RUN_ENTRIES = (
    RUN_FILE,
    FINAL_MODEL,
    LOG_FILE,
    CHECKPOINTS,
    BACKUP,
    TENSORBOARD,
)
# The names of a run's files (relative to its folder, `/`-separated): a
# listed file keeps one; an older run's files are found by them. The
# folders it makes, the deepest first.
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


def run_files(out_dir):
    """The files the run in ``out_dir`` wrote, as paths relative to
    ``out_dir`` (``/``-separated), ``run.json`` last.

    A run records every file and folder it makes in ``run.json``
    (``"files"``, ``"folders"``; ``record_files``) before it writes
    them: those are its files, where they still have a run's name
    (``RUN_PATTERN``) and lie in ``out_dir`` (not behind a link). A run
    of an older version, whose ``run.json`` lists nothing, is read by
    name: every file of a run's name (``RUN_PATTERN``). Temporaries of a
    killed write (``.NAME.tmp-PID...``) are the run's by name. Any other
    file, in the run's folders too, is not the run's.

    Raises:
        LinkError: ``run.json`` is a symbolic link (never read).
    """
    out_dir = os.fspath(out_dir)
    listed = _manifest(_record(out_dir))
    found = _named_files(out_dir) if listed is None else []
    if listed is not None:
        found = [
            f
            for f in listed[0]
            if _inside(out_dir, f) and os.path.lexists(_join(out_dir, f))
        ]
        found += [f for f in _named_files(out_dir) if _is_temp(f)]
    if os.path.lexists(os.path.join(out_dir, RUN_FILE)):
        found.append(RUN_FILE)
    return list(dict.fromkeys(found))


def run_folders(out_dir):
    """The folders the run in ``out_dir`` made (relative, the deepest
    first): those ``run.json`` lists, or (a run of an older version) the
    folders of a run's names."""
    out_dir = os.fspath(out_dir)
    listed = _manifest(_record(out_dir))
    folders = _RUN_FOLDERS if listed is None else listed[1]
    folders = [f for f in folders if f in _RUN_FOLDERS]
    return sorted(folders, key=lambda f: -f.count("/"))


def record_files(out_dir, files=(), folders=()):
    """Add ``files`` and ``folders`` (relative to ``out_dir``) to the
    list of what the run in ``out_dir`` wrote, kept in its ``run.json``
    (rewritten atomically when something is new). Called before they are
    written: a kill between leaves a name listed, never a file of the
    run unlisted. Nothing is recorded where ``out_dir`` holds no
    ``run.json`` (a cluster worker's scratch folder).

    Args:
        out_dir: str. The run folder.
        files: iterable of str. Files, e.g. ``checkpoints/epoch-001...``.
        folders: iterable of str. Folders the run made.
    """
    path = os.path.join(os.fspath(out_dir), RUN_FILE)
    record = _read_json(path)
    if record is None:
        return
    old = _manifest(record) or legacy_manifest(out_dir)
    new_files = sorted({*old[0], *files})
    new_folders = sorted({*old[1], *folders})
    if (new_files, new_folders) == (record.get("files"), record.get("folders")):
        return
    record.update(files=new_files, folders=new_folders)
    write_text(path, json.dumps(record, indent=1))


def forget_files(out_dir, files):
    """Drop ``files`` (removed by the run itself, e.g. its backup) from
    the list in ``run.json`` (``record_files``)."""
    path = os.path.join(os.fspath(out_dir), RUN_FILE)
    record = _record(os.fspath(out_dir))
    listed = _manifest(record)
    if listed is None:
        return
    kept = [f for f in listed[0] if f not in set(files)]
    if kept != listed[0]:
        record["files"] = kept
        write_text(path, json.dumps(record, indent=1))


def legacy_manifest(out_dir):
    """``(files, folders)`` of a run of an older version, by name: what
    the run's list starts with when such a run is resumed."""
    files = [
        f for f in _named_files(out_dir) if f != RUN_FILE and not _is_temp(f)
    ]
    folders = [
        f
        for f in _RUN_FOLDERS
        if os.path.isdir(_join(out_dir, f)) and _inside(out_dir, f)
    ]
    return files, folders


def _record(out_dir):
    """The ``run.json`` record of ``out_dir``: None where there is none or
    it is not JSON (read by name, as an older run's); a link is refused
    (``LinkError``)."""
    try:
        return _read_json(os.path.join(out_dir, RUN_FILE))
    except LinkError:
        raise
    except ValueError:
        return None


def _manifest(record):
    """``(files, folders)`` listed in a ``run.json`` record, sorted, the
    entries that are not plain relative paths (``..``, absolute) left
    out; None for a record of an older version (no list)."""
    if not isinstance(record, dict) or not isinstance(
        record.get("files"), list
    ):
        return None
    folders = record.get("folders")
    lists = (record["files"], folders if isinstance(folders, list) else [])
    return tuple(sorted(str(e) for e in x if _plain(str(e))) for x in lists)


def _plain(relative):
    parts = relative.split("/")
    return (
        relative == os.path.normpath(relative).replace(os.sep, "/")
        and not os.path.isabs(relative)
        and ".." not in parts
        and (RUN_PATTERN.fullmatch(relative) or relative in _RUN_FOLDERS)
    )


def _join(out_dir, relative):
    return os.path.join(out_dir, *relative.split("/"))


def _inside(out_dir, relative):
    """Whether no folder on the way from ``out_dir`` to ``relative`` is a
    link (a file reached through one is not in the run folder)."""
    parts = relative.split("/")[:-1]
    return not any(
        os.path.islink(_join(out_dir, "/".join(parts[: i + 1])))
        for i in range(len(parts))
    )


def _is_temp(relative):
    return is_temporary(relative.rsplit("/", 1)[-1])


def _named_files(out_dir):
    """The files of a run's names (``RUN_PATTERN``) or temporaries in
    ``out_dir`` and the run's folders (not behind a link); ``run.json``
    last."""
    found = []
    for folder in ("", *_RUN_FOLDERS):
        path = os.path.join(out_dir, folder)
        if not os.path.isdir(path) or not _inside(out_dir, f"{folder}/x"):
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
