"""What a sub-command needs installed, checked before it reads or writes
anything: the Keras backend, TensorFlow for the ``tf.data`` input pipeline
and the exports, tf2onnx and onnx for ONNX.

The command line starts without Keras (``keras-segformer --help`` works
with no backend installed). Once the arguments are read, ``prepare``
chooses the backend, checks the sub-command's dependencies and imports
the package (which imports Keras). A missing dependency is one line naming
the ``pip install`` that brings it (exit status 2), before any output
folder is made.

Backend: ``KERAS_BACKEND``, else the ``"backend"`` of Keras' config file
(``$KERAS_HOME/keras.json``, default ``~/.keras/keras.json``), else Keras'
default, TensorFlow. Where none is set and TensorFlow is not installed,
the first installed of PyTorch and JAX is used, said in one line.
"""

import importlib.util
import json
import os
import sys

# Keras backend -> the module it imports.
BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
# Tried in this order when no backend is named and TensorFlow is missing.
FALLBACK_BACKENDS = ("torch", "jax")
# Optional module -> (what needs it, the extra that installs it). None:
# the running backend's extra (each brings TensorFlow).
OPTIONAL = {
    "tensorflow": ("this command (tf.data or an export)", None),
    "torch": ("the PyTorch backend", "torch"),
    "jax": ("the JAX backend", "jax"),
    "jaxlib": ("the JAX backend", "jax"),
    "tf2onnx": ("ONNX export", "export"),
    "onnx": ("ONNX export", "export"),
    "onnxruntime": ("running ONNX files", "export"),
    "ai_edge_litert": ("running TFLite files", "export"),
    "transformers": ("transformers interoperability", "convert"),
    "huggingface_hub": ("downloading from the Hugging Face Hub", "convert"),
    "keras_hub": ("keras-hub interoperability", "keras-hub"),
}
# PyPI names where they differ from the module's.
_PACKAGES = {"huggingface_hub": "huggingface-hub", "keras_hub": "keras-hub"}
_PIPELINE = ("tensorflow", "the input pipeline (tf.data)", None)
# Sub-command -> (module, what needs it, extra or None for the backend's)
# it always needs besides the backend.
NEEDS = {
    "train": (_PIPELINE,),
    "evaluate": (_PIPELINE,),
    "demo": (_PIPELINE,),
    "export": (
        ("tensorflow", "export (written from a TensorFlow graph)", "export"),
    ),
}
# ``export --format onnx`` also needs these.
ONNX_NEEDS = (
    ("tf2onnx", "ONNX export", "export"),
    ("onnx", "ONNX export", "export"),
)


class MissingDependency(ImportError):
    """A package the command needs is not installed (the message says
    which ``pip install`` brings it). Exit status 2."""

    exit_status = 2


def installed(module):
    """Whether ``module`` can be imported, without importing it.

    Args:
        module: str. A top-level module name.

    Returns:
        bool.
    """
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _keras_config_backend():
    home = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )
    try:
        with open(os.path.join(home, "keras.json")) as f:
            backend = json.load(f).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return backend if isinstance(backend, str) else None


def _install_hint(module, backend, extra=None):
    extra = (
        extra
        or OPTIONAL.get(module, (None, None))[1]
        or backend
        or "tensorflow"
    )
    return f"pip install 'keras-segformer[{extra}]'"


def backend_in_use():
    """The Keras backend this process uses (or will use once Keras is
    imported): Keras' own answer when it is imported, else
    ``choose_backend``'s rule without changing anything.

    Returns:
        str or None. None when no backend is named and none is installed.
    """
    keras = sys.modules.get("keras")
    if keras is not None:
        return keras.backend.backend()
    named = os.environ.get("KERAS_BACKEND") or _keras_config_backend()
    if named:
        return named
    for name in ("tensorflow",) + FALLBACK_BACKENDS:
        if installed(BACKEND_MODULES[name]):
            return name
    return None


def choose_backend(stream=None):
    """Choose the Keras backend before Keras is imported.

    Keeps a backend named by ``KERAS_BACKEND`` or Keras' config file (and
    checks it is installed); with none named and TensorFlow missing, sets
    ``KERAS_BACKEND`` to the first installed of PyTorch and JAX and says
    so in one line on ``stream``. Does nothing once Keras is imported.

    Args:
        stream: file or None. Where the one line goes (default stderr).

    Returns:
        str. The backend.

    Raises:
        MissingDependency: the named backend, or every backend, is missing.
    """
    keras = sys.modules.get("keras")
    if keras is not None:
        return keras.backend.backend()
    named = os.environ.get("KERAS_BACKEND")
    source = "KERAS_BACKEND"
    if not named:
        named = _keras_config_backend()
        source = "the backend of Keras' keras.json"
    if named:
        module = BACKEND_MODULES.get(named)
        if module is not None and not installed(module):
            raise MissingDependency(
                f"{source} is {named!r}, but {module} is not installed: "
                f"pip install 'keras-segformer[{named}]'."
            )
        return named
    if installed("tensorflow"):
        return "tensorflow"
    for name in FALLBACK_BACKENDS:
        if installed(BACKEND_MODULES[name]):
            os.environ["KERAS_BACKEND"] = name
            print(
                "keras-segformer: KERAS_BACKEND is not set and TensorFlow "
                f"(Keras' default backend) is not installed: using {name}.",
                file=stream or sys.stderr,
            )
            return name
    raise MissingDependency(
        "no Keras backend is installed: pip install "
        "'keras-segformer[tensorflow]' (or [jax], or [torch])."
    )


def _needed(command, args):
    needed = list(NEEDS.get(command, ()))
    if command == "export" and getattr(args, "format", None) == "onnx":
        needed += ONNX_NEEDS
    return needed


def missing_message(module, backend=None, purpose=None, extra=None):
    """One line: ``module`` is missing, what needs it, what installs it.

    Args:
        module: str. The missing top-level module.
        backend: str or None. The running backend (names the extra that
            brings TensorFlow).
        purpose: str or None. What needs it (default: ``OPTIONAL``'s).
        extra: str or None. The extra to name (default: ``OPTIONAL``'s,
            else the backend's).

    Returns:
        str.

    Example:
    >>> missing_message("tf2onnx")  # '... pip install keras-segformer[export]'
    """
    purpose = purpose or OPTIONAL.get(module, ("this command", None))[0]
    package = _PACKAGES.get(module, module)
    return (
        f"{purpose} needs {package}, which is not installed: "
        f"{_install_hint(module, backend, extra)}."
    )


def check(command, args=None):
    """Check what ``command`` needs, without importing it.

    Args:
        command: str. The sub-command.
        args: ``argparse.Namespace`` or None. Its arguments (``export``'s
            ``format`` decides whether ONNX is needed).

    Raises:
        MissingDependency: the first missing module, in one line.
    """
    backend = choose_backend()
    for module, purpose, extra in _needed(command, args):
        if not installed(module):
            raise MissingDependency(
                missing_message(module, backend, purpose, extra)
            )


def prepare(command, args=None):
    """Everything a sub-command needs before it runs: the backend chosen,
    its dependencies checked (``check``), then the package imported with
    Keras, which registers the package's Keras objects (a ``.keras`` file
    naming them loads).

    Args:
        command: str. The sub-command.
        args: ``argparse.Namespace`` or None. Its arguments.

    Raises:
        MissingDependency: see ``check``.
    """
    check(command, args)
    import keras_segformer

    keras_segformer._import_all()


def explain(error):
    """One line for an ``ImportError`` of an optional dependency met while
    a command ran, or None for any other import error (a bug).

    Args:
        error: ImportError.

    Returns:
        str or None.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, MissingDependency):
            return str(error)
        name = getattr(error, "name", None)
        if isinstance(error, ImportError) and name:
            top = name.split(".")[0]
            if top in OPTIONAL:
                return missing_message(top, backend_in_use())
        error = error.__cause__ or error.__context__
    return None
