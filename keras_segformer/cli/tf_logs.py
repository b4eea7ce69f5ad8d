"""Keep TensorFlow's log records of a data error off the terminal.

A data error met inside ``tf.data`` (a file that fails while it is
decoded) is raised in Python, where the command line prints it as one line
(``errors.data_errors``). On its way TensorFlow's C++ runtime also logs it
(``W... op_kernel.cc] INVALID_ARGUMENT: DataError: ...`` and ``W...
local_rendezvous.cc] Local rendezvous is aborting ...``), each record with
the Python traceback, once per parallel reader and prefetching step: 2 to
11 records, dozens of lines, before the line that matters. Those records
are written to file descriptor 2 by C++, out of Python's reach, and the
log level that would hide them (``TF_CPP_MIN_LOG_LEVEL``) is read once
when TensorFlow is imported, which importing Keras has done already.

``data_error_logs_dropped()`` therefore passes file descriptor 2 through
a filter while a command reads its data: a TensorFlow log record that
carries the tag of a data error (``errors.tag``) is dropped with its
traceback; every other byte goes through unchanged, in order. Only the
command line uses it; the library leaves the process's stderr alone.
"""

import contextlib
import os
import re
import sys
import threading

from keras_segformer.errors import tag

# The start of a TensorFlow (absl) log record: "W1207 19:49:38.502 123
# op_kernel.cc:1845] ..." (or "W0000 00:00:1796673051.575656 ...").
_RECORD = re.compile(rb"[IWEF]\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] ")
_RECORD_START = re.compile(rb"[IWEF]\d{0,4}$|[IWEF]\d{4} ")
_TAG = tag("").encode().split(b"<</")[0]  # the opening mark


class _Filter:
    """Line by line: drop the records that carry the tag, and the lines of
    their tracebacks; write the rest to ``write``."""

    def __init__(self, write):
        self._write = write
        self._pending = b""  # the start of a line not yet decided
        self._passing = False  # inside a line already let through
        self._dropping = False  # inside a dropped record

    def feed(self, data):
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        out = []
        for line in lines:
            if self._passing:
                self._passing = False
                out.append(line + b"\n")
            elif self._keep(line):
                out.append(line + b"\n")
        pending = self._pending
        if pending and (self._passing or self._undecided(pending)):
            # A line without its end (a prompt, a "\r" progress bar):
            # through at once unless it may be a record to drop.
            out.append(pending)
            self._pending = b""
            self._passing = True
        if out:
            self._write(b"".join(out))

    def _undecided(self, pending):
        """Whether a line start can go out before its end is seen."""
        if self._dropping:
            return False
        return not _RECORD_START.match(pending[:6])

    def close(self):
        if self._pending and (self._passing or self._keep(self._pending)):
            self._write(self._pending)
        self._pending = b""

    def _keep(self, line):
        if _RECORD.match(line):
            self._dropping = _TAG in line
            return not self._dropping
        if self._dropping:
            if (
                _TAG in line
                or not line.strip()
                or line[:1] in (b" ", b"\t")
                or line.startswith(b"Traceback (most recent call last)")
            ):
                return False
            self._dropping = False
        return True


def _write_all(fd):
    def write(data):
        while data:
            data = data[os.write(fd, data) :]

    return write


@contextlib.contextmanager
def data_error_logs_dropped():
    """Filter file descriptor 2 (``_Filter``) inside the block.

    Nothing is done where TensorFlow does not log warnings
    (``TF_CPP_MIN_LOG_LEVEL`` 2 or more) or where descriptor 2 cannot be
    redirected.

    Example:
    >>> with data_error_logs_dropped():
    ...     trainer.fit(model, train_ds, out_dir="run", epochs=1,
    ...         steps_per_epoch=10)
    """
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip()
    if level.isdigit() and int(level) >= 2:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_end, write_end = os.pipe()
    except (OSError, ValueError, AttributeError):
        yield
        return
    os.dup2(write_end, 2)
    os.close(write_end)
    flt = _Filter(_write_all(saved))

    def pump():
        try:
            while data := os.read(read_end, 65536):
                flt.feed(data)
            flt.close()
        except OSError:
            pass
        finally:
            os.close(read_end)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)  # closes the pipe's last write end: EOF
        thread.join(timeout=10)
        if not thread.is_alive():
            os.close(saved)
