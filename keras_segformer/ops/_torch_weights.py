"""PyTorch weights as the fast versions read them: a layer's variables
without Keras' properties, and what is derived from them (copies in a
lower compute dtype, padded kernels, the decode head's fused kernels) kept
while the weights are unchanged. Used by ``_torch.py``.
"""

import weakref

import torch

from keras_segformer.ops import internals, nn
from keras_segformer.ops.layer_call import plain_policy

try:  # Keras internals: without them, weights are read through Keras
    from keras.src.backend.common import global_state
except ImportError:  # pragma: no cover (a Keras that moved it)
    global_state = None

TORCH_WEIGHTS = "torch_weights"

DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def plain_reads():
    """Whether a variable's value is its stored tensor: no stateless
    scope (values held elsewhere) and no device scope (the symbolic
    "meta" calls) is active. False without Keras' global state (every
    read through ``variable.value``)."""
    state = getattr(global_state, "GLOBAL_STATE_TRACKER", None)
    if state is None:
        return False
    # The thread's entries of the threading.local: an unset name read with
    # getattr raises and catches an AttributeError (~1.5 us per read).
    entries = getattr(state, "__dict__", None)
    if entries is None:  # (a tracker without a __dict__)
        return getattr(state, "stateless_scope", None) is None and (
            getattr(state, "torch_device", None) is None
        )
    return entries.get("stateless_scope") is None and (
        entries.get("torch_device") is None
    )


def read(variable, dtype, plain):
    """The variable's value in the torch ``dtype``, as the layer's own
    call reads it (inside its own autocast scope: the compute dtype).

    ``variable.value`` costs ~3 us per read (scope checks, autocast,
    device lookup); where ``plain`` (``plain_reads()``) it is the
    stored tensor, read here directly."""
    value = getattr(variable, "_value", None) if plain else None
    if value is None:
        value = variable.value
    if value.dtype == dtype:
        return value
    if plain and not torch.is_grad_enabled():
        return derived(value, dtype, lambda: value.to(dtype))
    return value.to(dtype)


# What is derived from weights for inference (a weight's copy in a lower
# compute dtype, a padded kernel, a layer's fused kernels), kept while what
# it came from is unchanged: the same tensors at the same in-place version
# counters (an assignment or an optimizer step moves them). Only where no
# gradient is recorded (predict, evaluate): a tensor made there may be an
# inference tensor, which autograd cannot save. Without it a
# mixed_bfloat16 forward pass cast every kernel again (~300 copies).
_KEPT = {}  # (id(owner), tag) -> (weak reference, state, result)


def _version(tensor):
    # A tensor made in inference mode (a kept copy) has no version
    # counter; nothing here changes one in place.
    return None if tensor.is_inference() else tensor._version


def _kept(owner, tag, state, make):
    """``make()``, or its earlier result for ``owner`` and ``tag`` while
    ``state`` is the same."""
    key = (id(owner), tag)
    entry = _KEPT.get(key)
    if entry is not None and entry[0]() is owner and entry[1] == state:
        return entry[2]
    with torch.no_grad():
        result = make()
    ref = weakref.ref(owner, lambda _, key=key: _KEPT.pop(key, None))
    _KEPT[key] = (ref, state, result)
    return result


def derived(value, tag, make):
    """``make()`` computed from the tensor ``value`` alone, kept while
    ``value`` is unchanged."""
    return _kept(value, tag, _version(value), make)


def policy_of(layer):
    """``plain_policy(layer)``, or None (the generic op) once a Keras
    internal it reads is missing."""
    if not internals.on(TORCH_WEIGHTS):
        return None
    try:
        return plain_policy(layer)
    except internals.DIFFERENT as error:
        internals.turn_off(TORCH_WEIGHTS, error)
        return None


def layer_weights(layer, kernel=None):
    """``nn.kernel_and_bias`` without ``keras.ops``, or None where the
    layer's ``kernel`` property computes more than the variable (LoRA,
    quantization) or its compute dtype is not a float: the generic op
    runs then."""
    policy = policy_of(layer)
    if (
        policy is None
        or policy.quantization_mode is not None
        or getattr(layer, "lora_enabled", False)
    ):
        return None
    dtype = DTYPES.get(policy.compute_dtype)
    if dtype is None:
        return None
    plain = plain_reads()
    if kernel is None:  # the variable; the property where it is not
        kernel = getattr(layer, "_kernel", None)
        kernel = layer.kernel if kernel is None else kernel
    kernel = read(kernel, dtype, plain)
    bias = read(layer.bias, dtype, plain) if layer.use_bias else None
    return kernel, bias, dtype


@nn.derived_weights.register("torch", "cpu")
def derived_weights(layer, make, key=None):
    """Kept while ``layer``'s weights are the same tensors at the same
    versions, where no gradient is recorded and weights are read plainly
    (``read``'s conditions); made again otherwise."""
    if torch.is_grad_enabled() or not plain_reads():
        return make()
    values = [getattr(v, "_value", None) for v in layer.weights]
    if any(value is None for value in values):
        return make()
    state = tuple((id(v), _version(v)) for v in values)
    return _kept(layer, ("derived_weights", key), state, make)
