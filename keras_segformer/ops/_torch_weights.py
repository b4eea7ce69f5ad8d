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
    return getattr(state, "stateless_scope", None) is None and (
        getattr(state, "torch_device", None) is None
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


# What is derived from a weight for inference (its copy in a lower compute
# dtype, a padded kernel), kept while the stored tensor is unchanged: its
# in-place version counter (an assignment, an optimizer step) or a new
# tensor makes a new one. Only where no gradient is recorded (predict,
# evaluate): a tensor made there may be an inference tensor, which autograd
# cannot save. Without it a mixed_bfloat16 forward pass cast every kernel
# again (~300 copies).
_DERIVED = {}  # (id(tensor), tag) -> (weak reference, version, result)


def derived(value, tag, make):
    key = (id(value), tag)
    entry = _DERIVED.get(key)
    # A tensor made in inference mode (a cached copy) has no version
    # counter; nothing here changes one in place.
    version = None if value.is_inference() else value._version
    if entry is not None and entry[0]() is value and entry[1] == version:
        return entry[2]
    with torch.no_grad():
        result = make()
    ref = weakref.ref(value, lambda _, key=key: _DERIVED.pop(key, None))
    _DERIVED[key] = (ref, version, result)
    return result


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
    state = (key, tuple((id(v), v._version) for v in values))
    slot = id(layer)
    entry = _KEPT.get(slot)
    if entry is not None and entry[0]() is layer and entry[1] == state:
        return entry[2]
    result = make()
    ref = weakref.ref(layer, lambda _, slot=slot: _KEPT.pop(slot, None))
    _KEPT[slot] = (ref, state, result)
    return result


_KEPT = {}  # id(layer) -> (weak reference, weight state, derived values)
