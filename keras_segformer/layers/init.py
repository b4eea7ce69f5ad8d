"""Kernel initialization drawn on the host.

Dense, Conv2D and DepthwiseConv2D kernels start as Keras' default,
Glorot uniform (``U(-l, l)``, ``l = sqrt(6 / (fan_in + fan_out))``), but the
numbers come from numpy rather than a backend random op: on JAX every new
weight shape compiled its own random program, which made building
SegFormer-B0 take seconds per weight shape there. Biases and norms keep
Keras' zeros and ones.
"""

import math

import keras
import numpy as np
from keras import ops


def _fans(shape):
    """Keras' ``compute_fans``: (fan_in, fan_out) of a kernel shape."""
    shape = tuple(int(n) for n in shape)
    if not shape:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


@keras.saving.register_keras_serializable(package="keras_segformer")
class HostGlorotUniform(keras.initializers.Initializer):
    """Glorot uniform values drawn with numpy, then made a tensor.

    With ``seed=None`` numbers come from numpy's global generator, which
    ``keras.utils.set_random_seed`` seeds: the same seed builds the same
    model. With an int seed every call returns the same values (as Keras'
    seeded initializers do).

    Args:
        seed: int or None.
    """

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        fan_in, fan_out = _fans(shape)
        limit = math.sqrt(6.0 / max(1, fan_in + fan_out))
        if self.seed is None:
            values = np.random.uniform(-limit, limit, size=shape)
        else:
            rng = np.random.default_rng(self.seed)
            values = rng.uniform(-limit, limit, size=shape)
        dtype = keras.backend.standardize_dtype(dtype or keras.config.floatx())
        return ops.convert_to_tensor(values.astype(np.float32), dtype=dtype)

    def get_config(self):
        return {"seed": self.seed}


def kernel_init():
    """The initializer of one Dense / Conv kernel (a fresh instance)."""
    return HostGlorotUniform()
