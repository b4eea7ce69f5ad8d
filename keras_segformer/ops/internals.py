"""Keras' private names read by the fast paths, behind one guard.

A few fast paths read what Keras does not publish (``keras.src`` modules,
``Layer._call_signature``, ``Functional._nodes_by_depth``,
``Optimizer._get_variable_index``, ...) because Keras' public path costs
more per call (each module says how much). Keras renames such names
between releases. Each fast path has a name here:

- ``direct_call``: ``layer_call.DirectCall``, built layers run ``call``
  without ``Layer.__call__``;
- ``direct_graph``: ``layer_call.DirectGraph``, functional models run
  their layers from a plan, without ``Functional``'s graph walk;
- ``torch_weights``: the PyTorch ops read a layer's weights without
  Keras' properties;
- ``grouped_update``: ``GroupedAdamW`` updates a group of variables at
  once.

The first time a path finds a name missing, moved or of another shape
(``AttributeError``, ``ImportError``, or a ``TypeError`` from a changed
signature) it is turned off for the rest of the process, with one
warning, and that call and every later one take Keras' public path,
which gives the same numbers. Reads of a name with an obvious public
default (an attribute a newer Keras added, a variable's stored tensor)
fall back in place, without turning anything off.

``GraphPlan`` (the order in which ``DirectGraph`` runs a functional
model's layers) is read here from ``Functional``'s internals.

Example:

```python
from keras_segformer.ops import internals

internals.off()  # {} on a tested Keras: every fast path on
```
"""

import inspect
import warnings

import keras
from keras import tree

PATHS = ("direct_call", "direct_graph", "torch_weights", "grouped_update")

# What reading a renamed, moved or reshaped Keras name raises.
DIFFERENT = (AttributeError, ImportError, TypeError)

_off = {}

try:  # for GraphPlan (DirectGraph): without it, the direct graph is off
    from keras.src.backend.common.keras_tensor import KerasTensor
except ImportError as error:  # pragma: no cover (a Keras that moved it)
    KerasTensor = None
    _off["direct_graph"] = f"{type(error).__name__}: {error}"


def on(path):
    """Whether the fast path ``path`` (one of ``PATHS``) is still on."""
    return path not in _off


def turn_off(path, error):
    """Turn ``path`` off for the process because of ``error`` (what
    reading a Keras internal raised); warns once per path.

    Args:
        path: str. One of ``PATHS``.
        error: Exception. What the read raised.
    """
    if path not in PATHS:
        raise ValueError(f"`path` must be one of {PATHS}. Received: {path!r}")
    if path in _off:
        return
    _off[path] = f"{type(error).__name__}: {error}"
    warnings.warn(
        f"keras_segformer: the {path!r} fast path reads Keras internals "
        f"that Keras {keras.__version__} does not have ({_off[path]}). "
        "It is off for this process; Keras' public path gives the same "
        "numbers.",
        RuntimeWarning,
        stacklevel=3,
    )


def off():
    """``{path: why}`` for each fast path turned off in this process."""
    return dict(_off)


def check_update_hooks(optimizer_class, built=None):
    """Whether ``optimizer_class`` has the Keras internals that
    ``grouped_update`` overrides and calls, with the signatures it expects,
    and ``built`` (an optimizer of that class, built) Adam's slots; where
    not, the path is turned off.

    Args:
        optimizer_class: a ``keras.optimizers.Optimizer`` subclass.
        built: an optimizer of that class after ``build``, or None.

    Returns:
        bool. Whether ``grouped_update`` is (still) on.
    """
    update = getattr(optimizer_class, "_backend_update_step", None)
    names = ["self", "grads", "trainable_variables", "learning_rate"]
    slots = ("_momentums", "_velocities")
    if built is not None and built.amsgrad:
        slots += ("_velocity_hats",)
    try:
        params = None if update is None else inspect.signature(update)
        if params is None or list(params.parameters) != names:
            raise TypeError(
                "no Optimizer._backend_update_step(self, grads, "
                "trainable_variables, learning_rate)"
            )
        if not callable(getattr(optimizer_class, "_get_variable_index", None)):
            raise TypeError("no Optimizer._get_variable_index")
        for slot in slots if built is not None else ():
            getattr(built, slot)
    except DIFFERENT as error:
        turn_off("grouped_update", error)
    return on("grouped_update")


def _argument_reader(arguments):
    """A function ``values -> (args, kwargs)`` for a node's recorded
    arguments: Keras' ``fill_in``, without its tree maps for the two
    shapes this project's graphs record (one tensor; one list or tuple of
    tensors, plus non-tensor keywords)."""
    single = arguments._single_positional_tensor
    if single is not None:
        key = id(single)
        return lambda values: ((values[key],), {})
    args, kwargs = arguments.args, arguments.kwargs
    if (
        len(args) == 1
        and isinstance(args[0], (list, tuple))
        and all(isinstance(t, KerasTensor) for t in args[0])
        and not any(isinstance(v, KerasTensor) for v in tree.flatten(kwargs))
    ):
        keys, kind = [id(t) for t in args[0]], type(args[0])
        return lambda values: ((kind(values[k] for k in keys),), dict(kwargs))
    return arguments.fill_in


class GraphPlan:
    """A functional model's nodes in the order Keras runs them, with what
    each needs: ``(operation, read arguments, output ids, takes
    training)``.

    Tensors are keyed by the ids of the model's ``KerasTensor``s, held in
    closures: a deep copy of the model copies the operations and keeps
    the ids, so the copy's plan stays consistent."""

    def __init__(self, model):
        self.steps = []
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                operation = node.operation
                if not operation or node.is_input:
                    continue
                self.steps.append(
                    (
                        operation,
                        _argument_reader(node.arguments),
                        [id(t) for t in node.outputs],
                        "training" in operation._call_context_args,
                    )
                )
        self.input_id = id(model.inputs[0])
        self.output_ids = [id(t) for t in model.outputs]
        struct = model._outputs_struct
        if isinstance(struct, KerasTensor) or (
            isinstance(struct, (list, tuple))
            and all(isinstance(t, KerasTensor) for t in struct)
        ):
            # Functional.call's unpack_singleton, then the structure.
            self.pack = (
                (lambda outputs: outputs[0])
                if len(self.output_ids) == 1
                else type(struct)
            )
        else:
            self.pack = lambda outputs: tree.pack_sequence_as(struct, outputs)
