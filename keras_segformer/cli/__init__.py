"""The ``keras-segformer`` command line.

Each sub-command lives in its own module of this package and exposes
``add_parser(subparsers)`` (which registers the sub-command and sets
``func`` on it). ``main`` wires them together.

Start-up: reading the arguments (``--help`` included) imports neither
Keras nor a backend, so it works with none installed. Before a command
runs, ``dependencies.prepare`` chooses the Keras backend and checks what
the command needs (TensorFlow for tf.data and the exports, tf2onnx for
ONNX): a missing package is one line naming the ``pip install`` extra
that brings it, exit status 2, before any output folder is made (an
output folder the command made is removed again, if empty, when it
fails).

Errors: a user error (a bad argument, file, checkpoint or data sample)
prints one line ``keras-segformer COMMAND: error: ...`` naming what is
wrong and exits with status 2; ``--debug`` (or the environment variable
``KERAS_SEGFORMER_DEBUG=1``) shows the full traceback instead. Any other
exception is a bug and keeps its traceback. ``predict`` exits with status
1 when some images of a folder could not be read (the others are written);
``train`` exits with status 3 when another worker of its cluster was lost
(the same command again resumes); ``4`` when a file could not be written
for lack of space (one line naming it; nothing half written, an earlier
file of that name kept); ``5`` when training diverged (a NaN or infinite
loss or weights: one line naming the step, the learning rate and the last
good checkpoint; ``model.keras`` is not written); ``130`` when interrupted
(Ctrl-C: one line, no traceback; a training run resumes from its last
complete epoch).
"""

import argparse
import importlib
import os
import signal
import sys
import threading

# Errors the commands raise for bad input; they name the file or argument.
# (CheckpointError and DataError are ValueErrors.)
USER_ERRORS = (ValueError, TypeError, OSError)
DEBUG_ENV = "KERAS_SEGFORMER_DEBUG"
# Exit status of a command interrupted by Ctrl-C (128 + SIGINT, as shells).
INTERRUPTED_STATUS = 130
_DEBUG_HELP = f"show the full traceback of an error (or set {DEBUG_ENV}=1)"

# Module name per sub-command, in the order shown by --help.
COMMANDS = (
    "train",
    "evaluate",
    "predict",
    "convert",
    "export",
    "benchmark",
    "demo",
)


def build_parser():
    from keras_segformer.cli.common import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="keras-segformer",
        description="SegFormer semantic segmentation for Keras 3.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"keras_segformer.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"keras_segformer.cli.{name}":
                continue  # not built yet
            raise
        module.add_parser(sub)
    # Before or after the sub-command: `keras-segformer --debug train ...`
    # and `keras-segformer train ... --debug`.
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    for command in sub.choices.values():
        # Every flag's help ends with its default (one format for all).
        command.formatter_class = HelpFormatter
        command.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help=_DEBUG_HELP,
        )
    return parser


def _debug(args):
    if args.debug:
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in (
        "",
        "0",
        "false",
        "no",
    )


JAX_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def jax_compilation_cache_dir():
    """The folder the command line keeps JAX's compiled programs in:
    ``$JAX_COMPILATION_CACHE_DIR`` when set (empty: none), else
    ``keras_segformer/jax`` in the user's cache folder
    (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    if JAX_CACHE_ENV in os.environ:
        return os.environ[JAX_CACHE_ENV] or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "keras_segformer", "jax")


def _use_jax_compilation_cache():
    """Turn on JAX's persistent compilation cache for this process (and the
    workers it starts): a command run again (``predict`` on more images,
    ``train`` resumed after a kill, ``evaluate``) loads its compiled steps
    instead of compiling them again. Left alone when the variable is set
    (the user's choice; empty turns it off)."""
    if JAX_CACHE_ENV in os.environ:
        return
    path = os.environ[JAX_CACHE_ENV] = jax_compilation_cache_dir()
    if sys.modules.get("jax") is not None:  # imported: it read the variable
        sys.modules["jax"].config.update("jax_compilation_cache_dir", path)


def main(argv=None):
    """Run the ``keras-segformer`` command line.

    Args:
        argv: list of str or None. Arguments (default: ``sys.argv[1:]``).

    Returns:
        int. Exit status: 0 done, 1 some inputs skipped (``predict``), 2 a
        user error (printed as one message), 3 a lost worker of a cluster
        (``train``; run the same command again), 4 a disk full while a
        file was written, 5 training diverged (``train``, ``demo``), 130
        interrupted (Ctrl-C).
    """
    if argv is None:  # the command itself, not a call from Python
        _interrupt_once()
    try:
        return _main(argv)
    except KeyboardInterrupt:
        if _debug_requested(argv):
            raise
        if argv is None and _main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        command = _command_name(argv)
        sys.stdout.flush()
        print(
            f"\nkeras-segformer{command}: interrupted; no file was left half "
            "written (a training run resumes from its last complete epoch "
            "when the same command is run again).",
            file=sys.stderr,
        )
        return INTERRUPTED_STATUS


def _main_thread():
    return threading.current_thread() is threading.main_thread()


def _interrupt_once():
    """Make the first Ctrl-C raise ``KeyboardInterrupt`` as usual and
    ignore the ones after it: the clean-up, the one line and the shutdown
    of the libraries (seconds for TensorFlow) then end in status 130; an
    impatient second Ctrl-C killed the process after the line (status
    -2). Left alone where SIGINT is ignored or someone else's."""
    if _main_thread() and (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, _first_interrupt)


def _first_interrupt(signum, frame):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _debug_requested(argv):
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or _debug(argparse.Namespace(debug=False))


def _command_name(argv):
    argv = sys.argv[1:] if argv is None else argv
    return next((f" {a}" for a in argv if a in COMMANDS), "")


def _new_folders(args):
    """The output folders (``--out``, ``--output``) that do not exist yet:
    removed again if the command fails before writing in them."""
    paths = (getattr(args, name, None) for name in ("out", "output"))
    return [p for p in paths if isinstance(p, str) and not os.path.lexists(p)]


def _remove_if_empty(folders):
    for path in folders:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)  # only an empty one
        except OSError:
            pass


def _main(argv):
    _use_jax_compilation_cache()
    from keras_segformer.cli import dependencies
    from keras_segformer.errors import data_errors

    parser = build_parser()
    args = parser.parse_args(argv)
    stdout = sys.stdout
    sys.stdout = lines = _LineEnds(stdout)
    new_folders = _new_folders(args)
    shown = _package_warnings_as_lines(args.command, debug=_debug(args))
    try:
        # Backend and dependencies first: nothing is written before.
        dependencies.prepare(args.command, args)
        # A data error met inside tf.data comes out as its own message.
        with data_errors():
            return args.func(args) or 0
    except ImportError as e:
        # An optional dependency met late (a Hub download, a runtime):
        # one line naming the extra; any other import error is a bug.
        message = dependencies.explain(e)
        if message is None or _debug(args):
            raise
        _remove_if_empty(new_folders)
        print(
            f"keras-segformer {args.command}: error: {message}", file=sys.stderr
        )
        return 2
    except USER_ERRORS as e:
        if _debug(args):
            raise
        _remove_if_empty(new_folders)
        if lines.open:  # a progress bar's line: end it before the error
            stdout.write("\n")
            stdout.flush()
        print(f"keras-segformer {args.command}: error: {e}", file=sys.stderr)
        # 2, or the error's own status (a lost worker of a cluster: 3).
        return getattr(e, "exit_status", 2)
    finally:
        sys.stdout = stdout
        import warnings

        warnings.showwarning = shown


def _package_warnings_as_lines(command, debug=False):
    """Show the package's own warnings (a ``UserWarning`` raised in
    ``keras_segformer``: masks of only 0 and 255 ...) as one line
    ``keras-segformer COMMAND: warning: ...``, like its errors, instead of
    Python's file, line number and source line; other warnings (and all
    with ``--debug``) keep Python's format. Returns the previous
    ``warnings.showwarning``, to be put back."""
    import warnings

    previous = warnings.showwarning
    if debug:
        return previous
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def show(message, category, filename, lineno, file=None, line=None):
        path = os.path.abspath(filename)
        if issubclass(category, UserWarning) and path.startswith(
            package + os.sep
        ):
            print(
                f"keras-segformer {command}: warning: {message}",
                file=file or sys.stderr,
            )
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    return previous


class _LineEnds:
    """``sys.stdout`` as it is, noting whether what was written last left
    a line open (Keras' progress bar redraws its line without ending it),
    so that an error message starts on a line of its own."""

    def __init__(self, stream):
        self._stream = stream
        self.open = False

    def write(self, text):
        if text:
            self.open = not text.endswith("\n")
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)
