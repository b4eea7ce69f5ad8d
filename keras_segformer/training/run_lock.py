"""One training run at a time in a run folder.

Two ``train`` commands (or ``fit`` calls) on the same folder would mix
their checkpoints, and the second one's start removes the temporaries the
first is writing. ``run_lock`` holds an exclusive ``flock`` on
``<folder>/.lock`` for the run's duration; the operating system drops it
when the process ends in any way (a kill included), so a lock is never
left behind. Where ``fcntl`` does not exist (Windows) there is no lock.

The lock file is opened with ``O_NOFOLLOW``: a link (or a FIFO, a device,
a second name of another file) planted at ``.lock`` is removed and a lock
file of the run's own is made instead; the process id is never written
through it.
"""

import contextlib
import errno
import os
import stat

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".lock"
# Never follow a link at the lock's name, never block on a FIFO there.
_FLAGS = (
    os.O_RDWR
    | os.O_CREAT
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
)


class RunInUseError(OSError):
    """Another process is training in this run folder."""


@contextlib.contextmanager
def run_lock(out_dir):
    """Hold ``out_dir``'s run lock (the folder must exist).

    Raises:
        RunInUseError: another process holds it; the message names the
            folder and that process.
    """
    if fcntl is None:
        yield
        return
    path = os.path.join(os.fspath(out_dir), LOCK_FILE)
    fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise RunInUseError(
                f"{out_dir} is in use: another training run (process "
                f"{holder or 'unknown'}) is writing it. Wait for it to end, "
                "or choose another output folder."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _open_lock(path):
    """Open (or make) the lock file ``path``: a regular file of one name.

    Whatever else is there (a link, which ``O_NOFOLLOW`` refuses to open,
    a FIFO, a file with other names) is not the lock: it is removed and
    a lock file made in its place.
    """
    for _ in range(3):
        try:
            fd = os.open(path, _FLAGS, 0o644)
        except OSError as e:
            if e.errno != errno.ELOOP:  # ELOOP: a link there
                raise
        else:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                return fd
            os.close(fd)
        os.remove(path)  # the entry itself, never what it points to
    raise OSError(
        f"Cannot make the run lock {path}: something keeps replacing it."
    )
