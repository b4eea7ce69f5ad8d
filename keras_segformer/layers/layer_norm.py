"""Layer normalization over channels (``ops.nn.layer_norm``)."""

import keras

from keras_segformer.ops import nn
from keras_segformer.ops.layer_call import DirectCall


@keras.saving.register_keras_serializable(package="keras_segformer")
class LayerNorm(DirectCall, keras.layers.LayerNormalization):
    """``keras.layers.LayerNormalization`` (same arguments, variables and
    numbers) computed by the ``layer_norm`` op: on JAX (cpu) its gradient
    keeps only the input and two per-position statistics instead of five
    maps of the input's size."""

    def call(self, inputs):
        return nn.layer_norm(self, inputs)
