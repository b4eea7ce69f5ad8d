"""``--out`` of the commands that write a model or an export (``export``,
``convert``): refuse the input, a training run and what an earlier output
of the same kind is not; replace only with ``--overwrite``; write under a
temporary name and rename into place (the rule: ``keras_segformer.cli.
export``'s docstring)."""

import contextlib
import os

# A training run's temporaries are named and removed the same way.
from keras_segformer.training.run_files import _TMP, _remove, temporary_path


def entries(folder):
    return sorted(os.listdir(folder))


def listing(names, limit=4):
    shown = ", ".join(names[:limit])
    return shown + (" ..." if len(names) > limit else "")


def occupied(path):
    """Whether ``path`` holds something to lose: a file (or link), or a
    folder that is not empty."""
    if os.path.isdir(path) and not os.path.islink(path):
        return bool(entries(path))
    return os.path.lexists(path)


def _inside(path, folder):
    """Whether ``path`` is ``folder`` or lies inside it (links resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_not_input(out, source, flag):
    """Refuse an ``--out`` that is the input ``source`` (named ``flag``) or
    a folder that holds it: ``--overwrite`` never replaces the input."""
    if not os.path.lexists(out) or not os.path.lexists(source):
        return
    same = _inside(source, out) and _inside(out, source)
    try:
        same = same or os.path.samefile(out, source)  # hard links
    except OSError:
        pass
    if same:
        raise ValueError(
            f"--out {out} is the {flag} itself; write to another --out "
            "(--overwrite never replaces the input)."
        )
    if _inside(source, out):
        raise ValueError(
            f"--out {out} holds the {flag} {source}; write to another "
            "--out (--overwrite never replaces the input)."
        )


def training_run(path):
    """The training run folder ``path`` belongs to (a folder with
    ``run.json``, or ``model.keras``, ``checkpoints/`` ... in one), or
    None."""
    from keras_segformer.training.run_files import RUN_ENTRIES, RUN_FILE

    path = os.path.normpath(path)
    candidates = [path] if os.path.isdir(path) else []
    parent = os.path.dirname(path) or os.curdir
    if os.path.basename(path) in RUN_ENTRIES:
        candidates.append(parent)
    if os.path.basename(os.path.abspath(parent)) in RUN_ENTRIES:
        # checkpoints/, backup/
        candidates.append(os.path.dirname(parent) or os.curdir)
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, RUN_FILE)):
            return folder
    return None


def check_existing_out(out, overwrite, kind, what_is_there, only=None):
    """Refuse an existing ``--out`` unless ``overwrite`` is set and it is
    an earlier output of this kind.

    Args:
        out: str. ``--out``.
        overwrite: bool. ``--overwrite``.
        kind: str. What this command replaces, e.g. ``"an ONNX file"``.
        what_is_there: callable ``path -> None or str``: None when ``out``
            is an earlier output of this kind, else what it is (``"is not
            an ONNX file"``, ``"is a folder holding a.png, b.png"``).
        only: str or None. ``kind`` in full, for the message that refuses
            anything else (default ``kind``).

    Returns:
        bool. Whether ``out`` exists and is to be replaced.
    """
    if not occupied(out):
        return False
    run = training_run(out)
    if run is not None:
        found = (
            "a training run folder"
            if os.path.samefile(run, out)
            else f"part of the training run in {run}"
        )
        raise ValueError(
            f"--out {out} is {found} (holding {listing(entries(run))}); "
            "--overwrite never replaces a training run: choose another "
            "--out."
        )
    problem = what_is_there(out)
    if problem is not None:
        raise ValueError(
            f"--out {out} exists and {problem}; --overwrite replaces only "
            f"{only or kind}: choose another --out."
        )
    if not overwrite:
        raise ValueError(
            f"--out {out} exists ({kind}); pass --overwrite to replace it, "
            "or choose another --out."
        )
    return True


def move_into_place(temp, out):
    """Rename the complete ``temp`` to ``out``. A file replaces ``out`` in
    one rename; a folder replacing a folder that is not empty takes two
    (the old one is moved aside, then deleted; a kill in between leaves it
    hidden beside ``out``)."""
    out = os.path.abspath(out)
    if not (os.path.isdir(temp) and occupied(out)):
        os.replace(temp, out)
        return
    folder, name = os.path.split(out)
    old = os.path.join(folder, f".{name}.replaced{_TMP}{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(temp, out)
    except BaseException:
        os.replace(old, out)
        raise
    _remove(old)


@contextlib.contextmanager
def written_in_place(out):
    """Yield a temporary path beside ``out`` to write to; once the block
    ends without error, move it into place (``move_into_place``). What is
    left of it is removed either way."""
    temp = temporary_path(os.path.abspath(out))  # `out/` names the folder
    try:
        yield temp
        move_into_place(temp, out)
    finally:
        _remove(temp)
