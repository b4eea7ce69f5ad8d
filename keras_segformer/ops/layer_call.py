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
  quantization (nor a per-path ``DTypePolicyMap``), no
  rematerialization, no ``keras.distribution`` set, and on PyTorch no
  module hooks (the layer's or global ones).

What the call keeps: float inputs are cast to the layer's input dtype
(Keras' autocast of inputs), the autocast scope of a mixed-precision
policy is entered as Keras enters it, and ``training``, when not passed,
comes from the enclosing Keras call (or the ``call`` default), as Keras
resolves it. Anything else goes to ``Layer.__call__`` unchanged.

The functional models (``MiTBackbone``, ``SegFormer``, ``MiTClassifier``)
take ``DirectGraph``: called on one tensor or NumPy array, they run their
graph's layers in Keras' order from a plan made once per model, without
``Layer.__call__`` and ``Functional._run_through_graph`` (tree maps per
node). With both, a forward pass of a SegFormer on PyTorch makes no
``Layer.__call__`` at all.

The switch: environment variable ``KERAS_SEGFORMER_DIRECT_CALL`` (``1``
or unset: on; ``0``: off, every call through Keras), read when
``keras_segformer`` is imported, and ``with direct_calls(False):``. As
with the ops' mode, a compiled function keeps what was set when it was
traced.
"""

import contextlib
import os
import threading

import keras
import numpy as np
from keras import tree

from keras_segformer.ops import dispatch, inference, internals

# Keras internals (names checked from 3.10 to 3.15); where one is missing,
# moved or reshaped, the direct paths turn themselves off (see internals).
DIRECT_CALL, DIRECT_GRAPH = "direct_call", "direct_graph"
try:
    from keras.src import backend
    from keras.src.backend.common import global_state
    from keras.src.backend.common.keras_tensor import KerasTensor
    from keras.src.backend.common.variables import AutocastScope
    from keras.src.distribution import distribution_lib
    from keras.src.dtype_policies.dtype_policy_map import DTypePolicyMap

    # The name of the distribution's entry in Keras' global state; the
    # input dtype property of Layer.
    _DISTRIBUTION = distribution_lib.GLOBAL_ATTRIBUTE_NAME
    _LAYER_INPUT_DTYPE = keras.layers.Layer.input_dtype
    # Keras layers are torch Modules there: their hooks need its __call__.
    _ON_TORCH = backend.backend() == "torch"
except (ImportError, AttributeError) as error:  # a Keras that moved them
    backend = None
    internals.turn_off(DIRECT_CALL, error)
    internals.turn_off(DIRECT_GRAPH, error)

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


def keras_state(name):
    """An entry of Keras' thread-local global state (None if unset), as
    ``global_state.get_global_attribute(name)`` reads it, at a tenth of
    the cost: read from the ``threading.local``'s dict of this thread (an
    unset name read with ``getattr`` raises and catches an
    ``AttributeError``: ~1.5 us, three times per layer call). The tracker
    is looked up on each call: ``clear_session`` replaces it."""
    tracker = global_state.GLOBAL_STATE_TRACKER
    try:
        return tracker.__dict__.get(name)
    except AttributeError:  # (a tracker without a __dict__)
        return getattr(tracker, name, None)


# Backend dtype -> Keras dtype name; standardize_dtype is slow per call.
_dtype_names = {}
# Keras dtype name -> whether it is a float dtype.
_float_names = {}


def dtype_name(dtype):
    """``keras.backend.standardize_dtype(dtype)``, cached per dtype (a
    backend or NumPy dtype): the Keras function costs microseconds per
    call."""
    name = _dtype_names.get(dtype)
    if name is None:
        name = _dtype_names[dtype] = keras.backend.standardize_dtype(dtype)
    return name


def _is_float(name):
    """``backend.is_float_dtype(name)``, cached per dtype name."""
    found = _float_names.get(name)
    if found is None:
        found = _float_names[name] = backend.is_float_dtype(name)
    return found


def _convert(layer, x, dtype):
    """``x`` as Keras' input conversion leaves it (float inputs cast to
    ``dtype``, the layer's input dtype), or None to fall back."""
    if isinstance(x, KerasTensor) or not backend.is_tensor(x):
        return None
    if layer.autocast:
        name = dtype_name(x.dtype)
        if name != dtype and _is_float(name):
            x = backend.cast(x, dtype)
    return x


def _convert_args(layer, args, dtype):
    """The positional arguments converted, or None to fall back."""
    converted = []
    for arg in args:
        if isinstance(arg, (list, tuple)):
            items = [_convert(layer, x, dtype) for x in arg]
            if any(x is None for x in items):
                return None
            converted.append(type(arg)(items))
        else:
            arg = _convert(layer, arg, dtype)
            if arg is None:
                return None
            converted.append(arg)
    return converted


def _autocast_scope(layer, policy):
    """The autocast scope Keras enters around ``layer.call``, or None."""
    compute = policy.compute_dtype
    scope = keras_state("autocast_scope")
    if scope is not None:
        if not layer.autocast or not _is_float(compute):
            return AutocastScope(None)
        if scope.dtype != compute:
            return AutocastScope(compute)
        return None
    if compute != policy.variable_dtype:
        return AutocastScope(compute)
    return None


def _resolve_training(layer, kwargs):
    """The keywords for ``call``: ``training`` as Keras resolves it."""
    if not layer._call_has_training_arg:
        return {}  # Keras drops it too (a Functional passes it to all)
    if "training" in kwargs:
        return kwargs
    context = keras_state("current_call_ctx")
    training = None if context is None else context.get_value("training")
    if training is None:
        parameter = layer._call_signature.parameters.get("training")
        training = None if parameter is None else parameter.default
    return kwargs if training is None else {"training": training}


_torch_module = None


def _torch_hooks(layer):
    """Whether ``torch.nn.Module.__call__`` would run hooks for ``layer``
    (its own or global ones: the condition of torch's fast path)."""
    global _torch_module
    if _torch_module is None:
        from torch.nn.modules import module as _torch_module
    return bool(
        layer._backward_hooks
        or layer._backward_pre_hooks
        or layer._forward_hooks
        or layer._forward_pre_hooks
        or _torch_module._global_backward_pre_hooks
        or _torch_module._global_backward_hooks
        or _torch_module._global_forward_hooks
        or _torch_module._global_forward_pre_hooks
    )


# Policy class -> whether it is a per-path DTypePolicyMap (an ABC: its
# isinstance check is slow).
_policy_maps = {}


def _is_policy_map(policy):
    cls = type(policy)
    found = _policy_maps.get(cls)
    if found is None:
        found = _policy_maps[cls] = issubclass(cls, DTypePolicyMap)
    return found


def plain_policy(layer):
    """The layer's dtype policy, or None for a per-path
    ``DTypePolicyMap`` (and without Keras' internals): ``policy.compute_dtype``
    is then what ``layer.compute_dtype`` reads, without the property's ABC
    check. Raises ``AttributeError`` on a Keras without ``_dtype_policy``
    (the callers turn their fast path off)."""
    if backend is None:
        return None
    policy = layer._dtype_policy
    return None if _is_policy_map(policy) else policy


def _direct_policy(layer, kwargs):
    """The layer's dtype policy when this call may skip
    ``Layer.__call__``, else None. (Per call: one policy read and plain
    attribute reads, ~1 us; the Keras properties cost more.)"""
    if not (_enabled and internals.on(DIRECT_CALL) and layer.built):
        return None
    if kwargs and kwargs.keys() != {"training"}:
        return None
    policy = plain_policy(layer)
    if (
        policy is None  # per-path policies
        or policy.quantization_mode is not None
        or layer.activity_regularizer is not None
        or getattr(layer, "_remat_mode", None)
        or keras_state(_DISTRIBUTION) is not None
        or (_ON_TORCH and _torch_hooks(layer))
    ):
        return None
    return policy


def _input_dtype(layer, policy):
    """``layer.input_dtype`` (the compute dtype unless a class says
    otherwise) without the property chain."""
    if type(layer).input_dtype is _LAYER_INPUT_DTYPE:
        return policy.compute_dtype
    return layer.input_dtype


def _direct_call(layer, args, kwargs):
    """What a direct call of ``layer`` runs, ``(args, call keywords,
    autocast scope)``, or None: Keras' path (also from now on, once a
    Keras internal read here is missing)."""
    try:
        policy = _direct_policy(layer, kwargs)
        if policy is None:
            return None
        converted = _convert_args(layer, args, _input_dtype(layer, policy))
        if converted is None:
            return None
        return (converted, *_call_context(layer, policy, kwargs))
    except internals.DIFFERENT as error:
        internals.turn_off(DIRECT_CALL, error)
        return None


def _call_context(layer, policy, kwargs):
    """``(call keywords, autocast scope)``: ``training`` resolved and the
    autocast scope Keras would enter (or None)."""
    return _resolve_training(layer, kwargs), _autocast_scope(layer, policy)


def _run(layer, args, call_kwargs, scope):
    """``layer.call(*args, **call_kwargs)`` inside ``scope`` (the direct
    path of both mixins)."""
    if scope is None:
        return layer.call(*args, **call_kwargs)
    with scope:
        return layer.call(*args, **call_kwargs)


class DirectCall:
    """Mixin: a built layer on backend tensors runs ``call`` directly.

    Put it before the Keras class: ``class Block(DirectCall,
    keras.layers.Layer)``. See the module for what is kept and when
    ``keras.layers.Layer.__call__`` runs instead.
    """

    def __call__(self, *args, **kwargs):
        direct = _direct_call(self, args, kwargs)
        if direct is not None:
            return _run(self, *direct)
        return super().__call__(*args, **kwargs)


class Dropout(DirectCall, keras.layers.Dropout):
    """``keras.layers.Dropout`` with direct calls (same variables, numbers
    and default names)."""


class BatchNormalization(DirectCall, keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with direct calls (same
    variables, numbers and default names)."""


def _plain_input(x):
    """A NumPy array or backend tensor (no ``KerasTensor``, no structure)."""
    if isinstance(x, np.ndarray):
        return True
    return not isinstance(x, KerasTensor) and backend.is_tensor(x)


# Per thread, how many DirectGraph calls are running their plan (their
# layers see no Keras call context; a model among them is not compiled on
# its own).
_running = threading.local()


class DirectGraph:
    """Mixin for functional models: called on one backend tensor (or NumPy
    array), run the graph's layers in Keras' order without
    ``Layer.__call__`` and ``Functional._run_through_graph`` around them.

    What ``Functional.call`` does and changes results is kept: the input
    converted to the ``Input``'s dtype, ``training`` (when not None)
    passed to every layer that takes it, the outputs in the model's
    structure. Masks, other call-context arguments, several inputs, an
    input of another rank, and everything ``DirectCall`` falls back on
    go through Keras. Put it before ``keras.Model``.
    """

    def __call__(self, *args, **kwargs):
        if "mask" in kwargs and kwargs["mask"] is None:
            # A model called inside a functional graph is recorded with
            # ``mask=None`` (Keras fills it in): no mask.
            kwargs = {k: v for k, v in kwargs.items() if k != "mask"}
        direct = None
        if (
            len(args) == 1
            and internals.on(DIRECT_GRAPH)
            and _plain_input(args[0])
        ):
            direct = self._direct_graph_call(kwargs)
        if direct is not None:
            outputs = self._compiled_call(args[0], kwargs)
            if outputs is not None:
                return outputs
            return _run(self, args, *direct)
        return super().__call__(*args, **kwargs)

    def predict_on_batch(self, x):
        """``keras.Model.predict_on_batch``; one array takes
        ``keras_segformer.ops.inference.predict_batch`` where a backend has
        it (Keras' predict function and numbers, less around them)."""
        if internals.on(DIRECT_GRAPH) and _plain_input(x):
            outputs = inference.predict_batch(self, x)
            if outputs is not None:
                return outputs
        return super().predict_on_batch(x)

    def _direct_graph_call(self, kwargs):
        """``(call keywords, autocast scope)`` when this call may skip
        ``Layer.__call__``, else None (also from now on, once a Keras
        internal read here is missing)."""
        try:
            if self._call_context_args != {"training"}:
                return None
            policy = _direct_policy(self, kwargs)
            if policy is None:
                return None
            return _call_context(self, policy, kwargs)
        except internals.DIFFERENT as error:
            internals.turn_off(DIRECT_GRAPH, error)
            return None

    def _compiled_call(self, x, kwargs):
        """The outputs of this eager inference call run compiled, or None
        (see ``keras_segformer.ops.inference.CompiledCalls``): not for
        ``training=True``, a call inside another Keras call or a stateless
        scope, a model set to ``run_eagerly``, or traced values. The op
        first: on PyTorch (and in the generic mode) it says None at once."""
        eager_first = inference.eager_calls_first(x)
        if (
            eager_first is None
            or kwargs.get("training")
            or getattr(_running, "depth", 0)  # inside a model's call
            or getattr(self, "run_eagerly", False)
            or keras_state("current_call_ctx") is not None
            or keras_state("stateless_scope") is not None
        ):
            return None
        calls = self.__dict__.get("_compiled_calls")
        if calls is None or calls.owner != id(self):
            calls = inference.CompiledCalls(id(self))
            object.__setattr__(self, "_compiled_calls", calls)
        fn = calls.function(
            self, x, dispatch.mode(), dtype_name(x.dtype), eager_first
        )
        if fn is None:
            return None
        self._check_batch(x)
        return fn(x)

    def _check_batch(self, x):
        """Raise for an input the compiled call must not get (its checks
        in the graph see unknown sizes on TensorFlow); the task models
        and the backbone check the image shape."""

    def call(self, inputs, training=None, mask=None, **kwargs):
        if (
            mask is not None
            or kwargs
            or not _enabled
            or not internals.on(DIRECT_GRAPH)
            or not _plain_input(inputs)
            or len(self.inputs) != 1
            or len(inputs.shape) != len(self.inputs[0].shape)
        ):
            return super().call(inputs, training=training, mask=mask, **kwargs)
        plan = self.__dict__.get("_direct_graph_plan")
        if plan is None:
            try:
                plan = internals.GraphPlan(self)
            except internals.DIFFERENT as error:
                internals.turn_off(DIRECT_GRAPH, error)
                return super().call(inputs, training=training, mask=mask)
            # Not through Keras' __setattr__: no tracking, no saving.
            object.__setattr__(self, "_direct_graph_plan", plan)
        x = backend.convert_to_tensor(inputs, dtype=self.inputs[0].dtype)
        values = {plan.input_id: x}
        depth = getattr(_running, "depth", 0)
        _running.depth = depth + 1
        try:
            for operation, read, output_ids, takes_training in plan.steps:
                args, call_kwargs = read(values)
                if takes_training and training is not None:
                    call_kwargs["training"] = training
                outputs = operation(*args, **call_kwargs)
                if len(output_ids) == 1:
                    values[output_ids[0]] = outputs
                else:
                    for ref, y in zip(output_ids, tree.flatten(outputs)):
                        values[ref] = y
        finally:
            _running.depth = depth
        return plan.pack([values[ref] for ref in plan.output_ids])
