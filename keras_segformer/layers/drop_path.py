"""Stochastic depth (drop path) per sample."""

import keras
from keras import ops

from keras_segformer.ops.layer_call import DirectCall


def drop(layer, x, training):
    """``layer(x, training=training)`` for a ``Dropout`` or ``DropPath``,
    not called where it is the identity: rate 0, or ``training=False``
    (``None`` is left to the layer: the enclosing call decides). Neither
    draws random numbers then, so skipping the call changes nothing but
    its cost (~5 us per call on PyTorch, 20 calls per forward pass)."""
    if training is False or layer.rate == 0:
        return x
    return layer(x, training=training)


@keras.saving.register_keras_serializable(package="keras_segformer")
class DropPath(DirectCall, keras.layers.Layer):
    """Drop the whole residual branch of a sample with probability ``rate``.

    Identity at inference. During training kept samples are scaled by
    ``1 / (1 - rate)`` (Huang et al. 2016; timm/transformers ``DropPath``).

    Args:
        rate: float. Probability of dropping a sample's branch.
        seed: int or None. Seed of the random generator.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"`rate` must be in [0, 1). Received: {rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        noise = keras.random.uniform(
            shape, dtype=x.dtype, seed=self.seed_generator
        )
        mask = ops.floor(noise + ops.cast(keep, x.dtype))
        return x / ops.cast(keep, x.dtype) * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
