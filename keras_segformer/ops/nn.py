"""Projections, convolutions, GELU, ReLU, layer and batch norm, matmul and
reshape: the generic versions.

Each takes the Keras layer whose variables it uses (checkpoints, variable
paths and weight loading do not change) and computes what calling that
layer computes. Fast versions: ``_torch.py`` (cpu), ``_jax.py`` (cpu).
"""

import keras
from keras import ops

from keras_segformer.ops.dispatch import op


@op
def kernel_and_bias(layer):
    """The layer's kernel and bias (or None) in its compute dtype."""
    dtype = layer.compute_dtype
    kernel = ops.cast(layer.kernel, dtype)
    bias = ops.cast(layer.bias, dtype) if layer.use_bias else None
    return kernel, bias


@op
def dense(layer, x):
    """``layer(x)`` for a ``keras.layers.Dense``."""
    return layer(x)


@op
def conv2d(layer, x, padding=0):
    """``layer(pad(x))`` for a ``keras.layers.Conv2D`` with ``"valid"``
    padding, where ``pad`` adds ``padding`` zeros on every side."""
    if padding:
        p = padding
        x = ops.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    return layer(x)


@op
def depthwise_conv2d(layer, x):
    """``layer(x)`` for a ``keras.layers.DepthwiseConv2D`` with an odd
    square kernel, stride 1, ``"same"`` padding and depth multiplier 1."""
    return layer(x)


@op
def gelu(x):
    """Exact (erf) GELU."""
    return ops.gelu(x, approximate=False)


@op
def layer_norm(layer, x):
    """What ``keras.layers.LayerNormalization.call`` computes for
    ``layer`` (a subclass whose ``call`` dispatches here)."""
    return keras.layers.LayerNormalization.call(layer, x)


@op
def batch_norm(layer, x, training=None):
    """``layer(x, training=training)`` for a
    ``keras.layers.BatchNormalization`` over the last axis."""
    return layer(x, training=training)


@op
def relu(x):
    """``ops.relu(x)``."""
    return ops.relu(x)


@op
def matmul(a, b):
    """``ops.matmul(a, b)`` of two tensors of one float dtype (a PyTorch
    fast version skips its per-call dtype and symbolic checks)."""
    return ops.matmul(a, b)


@op
def reshape(x, shape):
    """``ops.reshape(x, shape)`` (a PyTorch fast version skips its
    per-call argument checks)."""
    return ops.reshape(x, shape)


@op
def affine(x, kernel, bias):
    """``x @ kernel + bias`` over the last axis of ``x`` (one dtype)."""
    return ops.matmul(x, kernel) + bias


@op
def derived_weights(layer, make, key=None):
    """``make()``: values computed from ``layer``'s weights alone (the decode
    head's fused per-scale kernels), ``key`` naming what else they depend
    on. A fast version may keep them while the weights are unchanged."""
    return make()
