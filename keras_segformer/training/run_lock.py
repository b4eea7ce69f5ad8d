"""One training run at a time in a run folder.

Two ``train`` commands (or ``fit`` calls) on the same folder would mix
their checkpoints, and the second one's start removes the temporaries the
first is writing. ``run_lock`` holds an exclusive ``flock`` on
``<folder>/.lock`` for the run's duration; the operating system drops it
when the process ends in any way (a kill included), so a lock is never
left behind. Where ``fcntl`` does not exist (Windows) there is no lock.
"""

import contextlib
import errno
import os

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".lock"


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
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
