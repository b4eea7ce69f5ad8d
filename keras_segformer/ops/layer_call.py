"""Direct calls: a built layer called on backend tensors runs its ``call``.

``keras.layers.Layer.__call__`` does, on every call, work that a built
layer of this model called on backend tensors does not need: a
``CallSpec`` (``inspect`` signature binding), input conversion through
tree maps, the input-spec check, mask propagation, name scopes, the
``built`` flag set again, and on PyTorch ``torch.nn.Module.__call__``
with its pytree handling. For the tiny overhead model (depths 1-1-1-1,
64x64) those ~60 calls per forward pass were 3-4x the time of the
kernels on PyTorch (cProfile).

Layers that take ``DirectCall`` as a base class (before the Keras class)
skip that work when it changes nothing:

- the layer is built, and every positional argument is a backend tensor
  (or a list or tuple of them): no ``KerasTensor`` (functional graph
  construction and shape inference run Keras' path), no NumPy array;
- the only keyword is ``training``; no activity regularizer, no
  quantization, no rematerialization, no ``keras.distribution`` set.

What the call keeps: float inputs are cast to the layer's input dtype
(Keras' autocast of inputs), the autocast scope of a mixed-precision
policy is entered as Keras enters it, and ``training``, when not passed,
comes from the enclosing Keras call (or the ``call`` default), as Keras
resolves it. Anything else goes to ``Layer.__call__`` unchanged.

The switch: environment variable ``KERAS_SEGFORMER_DIRECT_CALL`` (``1``
or unset: on; ``0``: off, every call through Keras), read when
``keras_segformer`` is imported, and ``with direct_calls(False):``. As
with the ops' mode, a compiled function keeps what was set when it was
traced.
"""

import contextlib
import os

import keras

try:  # Keras internals (3.8+); without them every call goes through Keras
    from keras.src import backend
    from keras.src.backend.common import global_state
    from keras.src.backend.common.keras_tensor import KerasTensor
    from keras.src.backend.common.variables import AutocastScope
    from keras.src.distribution import distribution_lib
except ImportError:  # pragma: no cover (a Keras that moved them)
    backend = None

ENV_VAR = "KERAS_SEGFORMER_DIRECT_CALL"


def parse_switch(value, name=ENV_VAR):
    """``True`` for ``"1"`` (also unset or empty), ``False`` for ``"0"``;
    anything else is a ``ValueError`` naming ``name``."""
    if value is None or value in ("", "1"):
        return True
    if value == "0":
        return False
    raise ValueError(
        f"{name} must be '1' or '0' (unset means '1'). Received: {value!r}"
    )


_enabled = parse_switch(os.environ.get(ENV_VAR))


def direct_calls_enabled():
    """Whether built layers are called directly (see the module)."""
    return _enabled


@contextlib.contextmanager
def direct_calls(enabled):
    """Turn direct calls on or off inside the block (process-wide).

    Args:
        enabled: bool. ``False``: every layer call goes through
            ``keras.layers.Layer.__call__``.

    Example:

    ```python
    with keras_segformer.ops.direct_calls(False):
        logits = model(images)  # Keras' own call path everywhere
    ```
    """
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"`enabled` must be a bool. Received: {enabled!r}")
    previous, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = previous


# Backend dtype -> Keras dtype name; standardize_dtype is slow per call.
_dtype_names = {}


def _dtype_name(x):
    dtype = x.dtype
    name = _dtype_names.get(dtype)
    if name is None:
        name = _dtype_names[dtype] = backend.standardize_dtype(dtype)
    return name


def _convert(layer, x):
    """``x`` as Keras' input conversion leaves it, or None to fall back."""
    if isinstance(x, KerasTensor) or not backend.is_tensor(x):
        return None
    if layer.autocast:
        name = _dtype_name(x)
        dtype = layer.input_dtype
        if name != dtype and backend.is_float_dtype(name):
            x = backend.cast(x, dtype)
    return x


def _convert_args(layer, args):
    """The positional arguments converted, or None to fall back."""
    converted = []
    for arg in args:
        if isinstance(arg, (list, tuple)):
            items = [_convert(layer, x) for x in arg]
            if any(x is None for x in items):
                return None
            converted.append(type(arg)(items))
        else:
            arg = _convert(layer, arg)
            if arg is None:
                return None
            converted.append(arg)
    return converted


def _autocast_scope(layer):
    """The autocast scope Keras enters around ``layer.call``, or None."""
    compute = layer.compute_dtype
    scope = backend.get_autocast_scope()
    if scope is not None:
        if not layer.autocast or not backend.is_float_dtype(compute):
            return AutocastScope(None)
        if scope.dtype != compute:
            return AutocastScope(compute)
        return None
    if compute != layer.variable_dtype:
        return AutocastScope(compute)
    return None


def _resolve_training(layer, kwargs):
    """The keywords for ``call``: ``training`` as Keras resolves it."""
    if not layer._call_has_training_arg:
        return {}  # Keras drops it too (a Functional passes it to all)
    if "training" in kwargs:
        return kwargs
    context = global_state.get_global_attribute("current_call_ctx")
    training = None if context is None else context.get_value("training")
    if training is None:
        parameter = layer._call_signature.parameters.get("training")
        training = None if parameter is None else parameter.default
    return kwargs if training is None else {"training": training}


def _can_call_directly(layer, kwargs):
    return (
        _enabled
        and backend is not None
        and layer.built
        and (not kwargs or kwargs.keys() == {"training"})
        and layer.activity_regularizer is None
        and not getattr(layer, "_remat_mode", None)
        and getattr(layer, "quantization_mode", None) is None
        and distribution_lib.distribution() is None
    )


class DirectCall:
    """Mixin: a built layer on backend tensors runs ``call`` directly.

    Put it before the Keras class: ``class Block(DirectCall,
    keras.layers.Layer)``. See the module for what is kept and when
    ``keras.layers.Layer.__call__`` runs instead.
    """

    def __call__(self, *args, **kwargs):
        if _can_call_directly(self, kwargs):
            converted = _convert_args(self, args)
            if converted is not None:
                call_kwargs = _resolve_training(self, kwargs)
                scope = _autocast_scope(self)
                if scope is None:
                    return self.call(*converted, **call_kwargs)
                with scope:
                    return self.call(*converted, **call_kwargs)
        return super().__call__(*args, **kwargs)


class Dropout(DirectCall, keras.layers.Dropout):
    """``keras.layers.Dropout`` with direct calls (same variables, numbers
    and default names)."""


class BatchNormalization(DirectCall, keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with direct calls (same
    variables, numbers and default names)."""
