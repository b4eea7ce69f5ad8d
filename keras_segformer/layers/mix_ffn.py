"""Mix-FFN: Dense -> depthwise 3x3 conv -> GELU -> Dense."""

import keras

from keras_segformer.layers.drop_path import drop
from keras_segformer.layers.init import kernel_init
from keras_segformer.ops import nn
from keras_segformer.ops.layer_call import DirectCall, Dropout
from keras_segformer.serializable import attribute_config


@keras.saving.register_keras_serializable(package="keras_segformer")
class MixFFN(DirectCall, keras.layers.Layer):
    """Feed-forward block with a 3x3 depthwise convolution between the two
    projections; the convolution leaks position information, so SegFormer
    needs no positional encoding.

    Args:
        hidden_size: int. Input and output channels.
        intermediate_size: int. Channels of the expanded middle.
        dropout: float. Dropout after the activation and after the output
            projection (transformers' ``hidden_dropout_prob``).
        approximate_gelu: bool. The tanh approximation of GELU
            (transformers' ``hidden_act="gelu_new"``, keras-hub's MiT)
            instead of the exact erf GELU of the reference.
    """

    def __init__(
        self,
        hidden_size,
        intermediate_size,
        dropout=0.0,
        approximate_gelu=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.dropout_rate = dropout
        self.approximate_gelu = bool(approximate_gelu)
        self.dense1 = keras.layers.Dense(
            intermediate_size,
            kernel_initializer=kernel_init(),
            dtype=self.dtype_policy,
            name="dense1",
        )
        self.dwconv = keras.layers.DepthwiseConv2D(
            3,
            padding="same",
            depthwise_initializer=kernel_init(),
            dtype=self.dtype_policy,
            name="dwconv",
        )
        self.dense2 = keras.layers.Dense(
            hidden_size,
            kernel_initializer=kernel_init(),
            dtype=self.dtype_policy,
            name="dense2",
        )
        self.dropout = Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.dense1.build(input_shape)
        mid = tuple(input_shape[:-1]) + (self.intermediate_size,)
        self.dwconv.build(mid)
        self.dense2.build(mid)

    def call(self, x, training=None):
        x = nn.depthwise_conv2d(self.dwconv, nn.dense(self.dense1, x))
        if self.approximate_gelu:
            x = keras.ops.gelu(x, approximate=True)
        else:
            # Exact (erf) GELU, as in the reference.
            x = nn.gelu(x)
        x = drop(self.dropout, x, training)
        x = nn.dense(self.dense2, x)
        return drop(self.dropout, x, training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        names = ("hidden_size", "intermediate_size", "approximate_gelu")
        config = attribute_config(self, names, dropout="dropout_rate")
        return {**super().get_config(), **config}
