"""The op registry: a generic ``keras.ops`` version per op, fast versions
keyed by backend and device kind, and the switch between them.

An op is declared once, with its generic version::

    @op
    def gelu(x):
        return ops.gelu(x, approximate=False)

and a backend module registers a faster version for the device kinds it
was measured on::

    @nn.gelu.register("jax", "cpu")
    def _gelu(x): ...

Calling ``gelu(x)`` runs the version registered for the current backend
and device kind ("cpu", "gpu", "tpu"), or the generic one when none is.
The backend modules (``_tensorflow.py``, ``_jax.py``, ``_torch.py``) are
imported on the first call, so a process imports only its own framework.

The mode: ``fast`` (the registry; the default) or ``generic`` (every op on
its ``keras.ops`` version). It comes from the environment variable
``KERAS_SEGFORMER_OPS``, read when ``keras_segformer`` is imported, and
from ``with keras_segformer.ops.use("generic"):``. Ops are picked when a
function is traced: a compiled function (``tf.function``, ``jax.jit``,
Keras' compiled train / predict steps) keeps the mode it was traced in;
the switch applies to what is traced after it is set.
"""

import contextlib
import functools
import importlib
import os

import keras

ENV_VAR = "KERAS_SEGFORMER_OPS"
MODES = ("fast", "generic")
DEVICE_KINDS = ("cpu", "gpu", "tpu")


def parse_mode(value, name=ENV_VAR):
    """The mode a setting names: ``fast`` (also for unset or empty) or
    ``generic``; anything else is a ``ValueError`` naming ``name``."""
    if value is None or value == "":
        return "fast"
    if value not in MODES:
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, MODES))} "
            f"(unset means 'fast'). Received: {value!r}"
        )
    return value


_mode = parse_mode(os.environ.get(ENV_VAR))


def mode():
    """The current mode, ``"fast"`` or ``"generic"``."""
    return _mode


@contextlib.contextmanager
def use(new_mode):
    """Run the ops traced inside the block in ``new_mode``.

    Process-wide (not per thread); the previous mode comes back on exit.

    Args:
        new_mode: str. ``"fast"`` or ``"generic"``.

    Example:

    ```python
    with keras_segformer.ops.use("generic"):
        logits = model(images)  # every op on its keras.ops version
    ```
    """
    global _mode
    new_mode = parse_mode(new_mode, name="`mode`")
    previous, _mode = _mode, new_mode
    try:
        yield
    finally:
        _mode = previous


def _platform_kind(platform):
    platform = str(platform).lower()
    if platform.startswith(("cuda", "rocm", "gpu")):
        return "gpu"
    return platform.split(":")[0]


@functools.cache
def device_kind(backend=None):
    """Where the backend runs its ops: ``"cpu"``, ``"gpu"``, ``"tpu"``
    (or another platform's name). Asked once per backend."""
    backend = backend or keras.backend.backend()
    if backend == "jax":
        import jax

        return _platform_kind(jax.devices()[0].platform)
    if backend == "torch":
        return _platform_kind(_torch_default_device())
    if backend == "tensorflow":
        import tensorflow as tf

        # Visible devices, not logical ones: listing logical devices
        # initializes the runtime, after which no virtual device can be
        # configured.
        for kind in ("TPU", "GPU"):
            if tf.config.get_visible_devices(kind):
                return kind.lower()
    return "cpu"


def _torch_default_device():
    """Keras' default PyTorch device, not ``get_device()``: that is "meta"
    inside the symbolic calls of a first fit (loss and metric shapes), and
    ``device_kind``'s answer is kept for the process. Where Keras moved
    the name, the same choice made here (Keras' order)."""
    try:
        from keras.src.backend.torch.core import DEFAULT_DEVICE

        return DEFAULT_DEVICE
    except ImportError:
        import torch

        if "KERAS_TORCH_DEVICE" in os.environ:
            return os.environ["KERAS_TORCH_DEVICE"]
        if torch.backends.mps.is_available():
            return "mps"
        return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def _load_backend(backend):
    """Import the module that registers ``backend``'s fast versions."""
    try:
        importlib.import_module(f"keras_segformer.ops._{backend}")
    except ModuleNotFoundError as error:
        if error.name != f"keras_segformer.ops._{backend}":
            raise


class _Table(dict):
    """``(backend, device kind) -> fn``; a change clears the looked-up
    functions of the op it belongs to."""

    def __init__(self, resolved):
        super().__init__()
        self._resolved = resolved

    def __setitem__(self, key, fn):
        super().__setitem__(key, fn)
        self._resolved.clear()

    def __delitem__(self, key):
        super().__delitem__(key)
        self._resolved.clear()


class Op:
    """A generic version and the fast versions registered for it."""

    def __init__(self, generic):
        self.name = generic.__name__
        self.generic = generic
        self.__doc__ = generic.__doc__
        # mode -> the function a call runs (current backend and device),
        # looked up on the first call in that mode.
        self._resolved = {}
        self._fast = _Table(self._resolved)
        self._always = _Table(self._resolved)

    def register(self, backend, *device_kinds, always=False):
        """Decorator: ``fn`` runs this op on ``backend`` for each of
        ``device_kinds``. ``always``: also in generic mode (for what is
        not a speed-up but needed, like TensorFlow's in-graph checks)."""
        for kind in device_kinds:
            if kind not in DEVICE_KINDS:
                raise ValueError(
                    f"Device kind must be one of {DEVICE_KINDS}. "
                    f"Received: {kind!r}"
                )

        def decorator(fn):
            table = self._always if always else self._fast
            for kind in device_kinds:
                table[(backend, kind)] = fn
            return fn

        return decorator

    def implementation(self, backend=None, device=None, mode=None):
        """The function a call runs for ``backend`` and ``device`` (default:
        the current ones) in ``mode`` (default: the current mode)."""
        backend = backend or keras.backend.backend()
        _load_backend(backend)
        key = (backend, device or device_kind(backend))
        fn = self._always.get(key)
        if fn is None and (mode or _mode) == "fast":
            fn = self._fast.get(key)
        return fn or self.generic

    def __call__(self, *args, **kwargs):
        # A plain dict lookup per call: looked up once per mode, so that
        # torch.compile sees a constant function, not the lookup.
        fn = self._resolved.get(_mode)
        if fn is None:
            fn = self._resolved[_mode] = self.implementation()
        return fn(*args, **kwargs)

    def __repr__(self):
        return f"<op {self.name}>"


def op(generic):
    """Declare an op by its generic ``keras.ops`` version."""
    return Op(generic)


def default_jit_compile():
    """``jit_compile="auto"`` of a model's ``compile`` on this backend.

    TensorFlow: False. Its XLA has no gradient for bilinear resize on some
    devices (tensorflow issue 57575) and, measured on CPU, made a B0
    training step 8x slower than the plain graph. Elsewhere Keras' own
    ``"auto"``.
    """
    return False if keras.backend.backend() == "tensorflow" else "auto"
