"""``--out`` of the commands that write a model or an export (``export``,
``convert``): refuse the input, a training run and what an earlier output
of the same kind is not; replace only with ``--overwrite``; write under a
temporary name and rename into place (``keras_segformer.io_atomic``; the
rule: ``keras_segformer.cli.export``'s docstring)."""

import contextlib
import os

# The package's one writer (re-exported: export and convert use them).
from keras_segformer.io_atomic import (  # noqa: F401
    disk_full_error,
    move_into_place,
    no_space,
    occupied,
    temporary_path,
    written_in_place,
)


@contextlib.contextmanager
def written_to_out(out):
    """``written_in_place(out)`` for ``--out``: an error of a write under
    the temporary name names ``--out`` instead (the user never chose the
    temporary): a full disk, a read-only file system."""
    # Named before written_in_place removes an entry left there: on a
    # read-only file system that removal already fails (EROFS).
    temp = temporary_path(os.path.abspath(out))
    try:
        with written_in_place(out) as temp:
            yield temp
    except OSError as error:
        if no_space(error):
            raise disk_full_error(out, error) from None
        if os.path.basename(temp) not in f"{error} {error.filename}":
            raise
        reason = (error.strerror or str(error)).rstrip(".")
        named = OSError(
            f"--out {out}: cannot write there: "
            f"{reason[:1].lower()}{reason[1:]}."
        )
        named.errno = error.errno
        raise named from None


def entries(folder):
    return sorted(os.listdir(folder))


def listing(names, limit=4):
    shown = ", ".join(names[:limit])
    return shown + (" ..." if len(names) > limit else "")


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
