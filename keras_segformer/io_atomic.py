"""One way to write a file: a temporary name beside it, then a rename.

Every file the package writes (run files, checkpoints, the lock aside,
masks, overlays, exports, conversions, demo data) goes through
``write_atomic`` (a file) or ``written_in_place`` (a file or a folder):

- the content is written under a hidden temporary name in the
  destination's folder (``temporary_path``), flushed to disk, then renamed
  over the destination (``os.replace``). A kill at any instant leaves the
  old file or the new one, whole; an error removes the temporary and
  leaves the destination as it was;
- the rename replaces whatever is at the destination, a symbolic link
  included, and never writes through it: a link planted where a file is
  written is replaced by the file and its target is not touched. An entry
  left at the temporary name (a link too) is removed before the write;
- a file of a run read back on resume (``read_own``, ``refuse_link``:
  ``run.json``, a backup, ``model.keras``) is never read through a link:
  a link there is refused (``LinkError``, naming it), as it would be
  replaced, not written through (the training log's link is not read
  either, and is replaced at its first write);
- a write that fails for lack of space (``ENOSPC``, ``EDQUOT``, ``EFBIG``,
  or HDF5's wording of them) raises ``DiskFullError``: one line naming the
  file, with nothing half written.

This module imports nothing from the package (no import circles): the
training run files, the command line and the inference helpers all use
it.
"""

import contextlib
import errno
import io
import os
import shutil

# Marks a file being written: `.epoch-003.tmp-<pid>.weights.h5`.
TMP_MARK = ".tmp-"
# Keras reads the format from these suffixes: temporary names keep them.
_SUFFIXES = (".weights.h5", ".keras")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# How HDF5 (through h5py) words a failed write: the errno is in the text.
_NO_SPACE_TEXT = (
    "no space left on device",
    "disk quota exceeded",
    "file too large",
    "errno = 28",
    "errno = 27",
    "errno = 122",
)
# The exit status of the command line for a write that found no space.
DISK_FULL_STATUS = 4


class DiskFullError(OSError):
    """A file could not be written for lack of space; nothing was left
    half written (the destination keeps its earlier content, if any)."""

    exit_status = DISK_FULL_STATUS

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class LinkError(ValueError):
    """A file the package wrote and reads back is a symbolic link: it was
    planted (the package never makes one) and is not followed."""


def refuse_link(path):
    """Raise ``LinkError`` where ``path`` is a symbolic link.

    Args:
        path: str or path-like. A file the package wrote and now reads.
    """
    if os.path.islink(path):
        raise LinkError(
            f"{os.fspath(path)} is a symbolic link, not a file this package "
            "wrote (it never makes one): not read. Remove the link."
        )


def read_own(path, binary=False):
    """The content of a file the package wrote, or None where there is
    none; a symbolic link there is refused, never followed (``O_NOFOLLOW``
    where the system has it, so a link planted after the check is not
    followed either).

    Args:
        path: str or path-like.
        binary: bool. Bytes instead of text.

    Raises:
        LinkError: ``path`` is a symbolic link.
    """
    refuse_link(path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # a link planted since the check
            refuse_link(path)
        raise
    with open(fd, "rb" if binary else "r", newline=None if binary else "") as f:
        return f.read()


def temporary_path(path):
    """Where ``path`` is written before it is renamed into place.

    The same folder, hidden, ``.tmp-<pid>`` before the suffix Keras reads
    (``epoch-003.weights.h5`` -> ``.epoch-003.tmp-41.weights.h5``).

    Args:
        path: str or path-like. The final name.

    Returns:
        str. The temporary name.
    """
    folder, name = os.path.split(os.fspath(path))
    suffix = next((s for s in _SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        stem, suffix = os.path.splitext(name)
    else:
        stem = name[: -len(suffix)]
    return os.path.join(folder, f".{stem}{TMP_MARK}{os.getpid()}{suffix}")


def is_temporary(name):
    """Whether the file name ``name`` is a temporary of ``temporary_path``."""
    return name.startswith(".") and TMP_MARK in name


def remove(path):
    """Remove ``path`` if it is there: a folder with its content, a file,
    or a link (the link itself, never its target)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def fsync(path):
    """Flush the file ``path`` to disk (a folder: nothing)."""
    if os.path.isdir(path):
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def no_space(error):
    """Whether the ``OSError`` ``error`` says the disk (or quota) is full."""
    if getattr(error, "errno", None) in _NO_SPACE:
        return True
    text = str(error).lower()
    return any(words in text for words in _NO_SPACE_TEXT)


def disk_full_error(path, error):
    """The ``DiskFullError`` for a write of ``path`` that failed with
    ``error`` (see ``no_space``)."""
    number = getattr(error, "errno", None) or errno.ENOSPC
    folder = os.path.dirname(os.path.abspath(path))
    reason = {
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file too large (a file-size limit)",
    }.get(number, "no space left on device")
    try:
        free = shutil.disk_usage(folder).free
        reason += f" ({free / 2**20:.0f} MiB free in {folder})"
    except OSError:
        pass
    full = DiskFullError(
        f"cannot write {path}: {reason}; nothing was written (an earlier "
        "file of that name is kept). Free some space and run the same "
        "command again."
    )
    full.errno = number
    return full


def write_atomic(path, write):
    """Call ``write(temporary)`` and rename the file it wrote to ``path``.

    A kill at any point leaves either the old ``path`` or the new one,
    whole (the temporary is flushed to disk before the rename); an error
    removes the temporary and leaves ``path`` as it was. A link at
    ``path`` is replaced, not followed.

    Args:
        path: str or path-like. Final file name.
        write: callable. Writes a complete file at the name it is given.

    Raises:
        DiskFullError: the write found no space (the temporary removed).

    Example:
    >>> write_atomic("out/model.keras", model.save)
    """
    path = os.fspath(path)
    temporary = temporary_path(path)
    remove(temporary)  # never write through an entry left at that name
    try:
        with hdf5_in_memory(temporary):
            write(temporary)
        fsync(temporary)
        os.replace(temporary, path)
    except OSError as e:
        remove(temporary)
        if no_space(e) and not isinstance(e, DiskFullError):
            raise disk_full_error(path, e) from None
        raise
    except BaseException:
        remove(temporary)
        raise


@contextlib.contextmanager
def hdf5_in_memory(path=None):
    """Within the block, an HDF5 file opened for writing at ``path`` (any
    temporary name of ``temporary_path`` when None), as Keras'
    ``save_weights`` does, is built in memory, and written to its name by
    Python once the block ends without error.

    HDF5 writing to a disk that is full fails inside its own file close,
    and h5py then crashes the process (a segmentation fault, after pages
    of errors). Built in memory, the file meets the disk only through
    Python's ``write``: a full disk is an ``OSError`` like any other. The
    cost: the file's size in memory while it is written.
    """
    if path is not None and not os.fspath(path).endswith((".h5", ".hdf5")):
        yield  # not an HDF5 file: nothing to intercept
        return
    try:
        import h5py
    except ImportError:
        yield
        return
    original = h5py.File
    target = None if path is None else os.path.abspath(os.fspath(path))
    buffers = []

    def ours(name):
        if not isinstance(name, (str, os.PathLike)):
            return False
        name = os.path.abspath(os.fspath(name))
        if target is None:
            return is_temporary(os.path.basename(name))
        return name == target

    class File(original):
        def __init__(self, name, mode="r", *args, **kwargs):
            if mode in ("w", "x", "w-") and ours(name):
                buffers.append((os.fspath(name), io.BytesIO()))
                name = buffers[-1][1]
            super().__init__(name, mode, *args, **kwargs)

    h5py.File = File
    try:
        yield
    finally:
        h5py.File = original
    for name, buffer in buffers:
        remove(name)
        with open(name, "xb") as f:
            f.write(buffer.getbuffer())


def write_text(path, text):
    """Write the string ``text`` to ``path`` atomically
    (``write_atomic``)."""

    def write(temporary):
        with open(temporary, "x") as f:
            f.write(text)

    write_atomic(path, write)


def write_bytes(path, data):
    """Write ``data`` (bytes) to ``path`` atomically (``write_atomic``)."""

    def write(temporary):
        with open(temporary, "xb") as f:
            f.write(data)

    write_atomic(path, write)


def occupied(path):
    """Whether ``path`` holds something to lose: a file (or link), or a
    folder that is not empty."""
    if os.path.isdir(path) and not os.path.islink(path):
        return bool(os.listdir(path))
    return os.path.lexists(path)


def move_into_place(temp, out):
    """Rename the complete ``temp`` to ``out``.

    A file (or a folder replacing nothing, an empty folder or a link)
    takes one rename; a folder replacing a folder that is not empty takes
    two (the old one is moved aside, then deleted; a kill in between
    leaves it hidden beside ``out``).
    """
    out = os.path.abspath(out)
    if os.path.islink(out) or not (os.path.isdir(temp) and occupied(out)):
        if os.path.isdir(temp) and os.path.lexists(out):
            # rename(2) puts a folder only over an empty folder.
            remove(out)
        os.replace(temp, out)
        return
    folder, name = os.path.split(out)
    old = os.path.join(folder, f".{name}.replaced{TMP_MARK}{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(temp, out)
    except BaseException:
        os.replace(old, out)
        raise
    remove(old)


@contextlib.contextmanager
def written_in_place(out):
    """Yield a temporary path beside ``out`` to write (a file or a
    folder); once the block ends without error, move it into place
    (``move_into_place``). What is left of it is removed either way.

    Raises:
        DiskFullError: the block failed for lack of space.

    Example:
    >>> with written_in_place("out/model.tflite") as temp:
    ...     export_tflite(model, temp)
    """
    temp = temporary_path(os.path.abspath(out))  # `out/` names the folder
    remove(temp)
    try:
        yield temp
        fsync(temp)
        move_into_place(temp, out)
    except OSError as e:
        if no_space(e) and not isinstance(e, DiskFullError):
            raise disk_full_error(out, e) from None
        raise
    finally:
        remove(temp)
