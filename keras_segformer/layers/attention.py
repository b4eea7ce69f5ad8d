"""Efficient self-attention with spatial reduction of keys and values."""

import keras
from keras import ops

from keras_segformer.layers.init import kernel_init
from keras_segformer.layers.layer_norm import LayerNorm
from keras_segformer.ops import nn
from keras_segformer.ops.attention import attention
from keras_segformer.ops.layer_call import DirectCall, Dropout
from keras_segformer.serializable import attribute_config


@keras.saving.register_keras_serializable(package="keras_segformer")
class EfficientSelfAttention(DirectCall, keras.layers.Layer):
    """Multi-head self-attention whose keys/values come from a spatially
    reduced copy of the input (PVT / SegFormer "efficient self-attention").

    Queries come from every position of the ``(H, W)`` grid. If
    ``sr_ratio > 1`` the grid is reduced by a ``sr x sr`` convolution with
    stride ``sr`` (valid padding) and a LayerNorm before the key and value
    projections, which divides the attention cost by ``sr**2``. The input
    stays a channels-last map, so ``H`` and ``W`` are never recovered from a
    token count.

    Args:
        hidden_size: int. Channels ``C``; must be divisible by ``num_heads``.
        num_heads: int. Attention heads.
        sr_ratio: int. Spatial reduction ratio for keys and values.
        attention_dropout: float. Dropout on attention probabilities.
        layer_norm_epsilon: float. Epsilon of the reduction LayerNorm.
    """

    # The constructor's arguments, read back by ``get_config`` (``MiTBlock``
    # passes the same ones through).
    CONFIG_NAMES = (
        "hidden_size",
        "num_heads",
        "sr_ratio",
        "attention_dropout",
        "layer_norm_epsilon",
    )

    def __init__(
        self,
        hidden_size,
        num_heads,
        sr_ratio=1,
        attention_dropout=0.0,
        layer_norm_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hidden_size % num_heads:
            raise ValueError(
                f"`hidden_size` ({hidden_size}) must be divisible by "
                f"`num_heads` ({num_heads})."
            )
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.sr_ratio = sr_ratio
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon

        def dense(name):
            return keras.layers.Dense(
                hidden_size,
                kernel_initializer=kernel_init(),
                dtype=self.dtype_policy,
                name=name,
            )

        self.query = dense("query")
        self.key = dense("key")
        self.value = dense("value")
        self.output_dense = dense("output_dense")
        if sr_ratio > 1:
            self.sr = keras.layers.Conv2D(
                hidden_size,
                sr_ratio,
                strides=sr_ratio,
                padding="valid",
                kernel_initializer=kernel_init(),
                dtype=self.dtype_policy,
                name="sr",
            )
            self.sr_norm = LayerNorm(
                epsilon=layer_norm_epsilon,
                dtype=self.dtype_policy,
                name="sr_norm",
            )
        self.dropout = Dropout(attention_dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        for layer in (self.query, self.key, self.value, self.output_dense):
            layer.build(input_shape)
        if self.sr_ratio > 1:
            self.sr.build(input_shape)
            self.sr_norm.build(self.sr.compute_output_shape(input_shape))

    def call(self, x, training=None):
        shape = ops.shape(x)
        batch, height, width = shape[0], shape[1], shape[2]
        heads, head_dim = self.num_heads, self.head_dim

        def split_heads(t):
            return nn.reshape(t, (batch, -1, heads, head_dim))

        q = split_heads(nn.dense(self.query, x))
        kv = x
        if self.sr_ratio > 1:
            kv = self.sr_norm(nn.conv2d(self.sr, x))
        k = split_heads(nn.dense(self.key, kv))
        v = split_heads(nn.dense(self.value, kv))

        if training and self.attention_dropout > 0:
            # The fused kernel has no dropout; spell it out for training.
            scores = ops.einsum("bqhd,bkhd->bhqk", q, k)
            scores = scores * ops.cast(head_dim**-0.5, scores.dtype)
            probs = ops.softmax(scores, axis=-1)
            probs = self.dropout(probs, training=training)
            out = ops.einsum("bhqk,bkhd->bqhd", probs, v)
        else:
            out = attention(q, k, v, training=bool(training))
        out = nn.reshape(out, (batch, height, width, self.hidden_size))
        return nn.dense(self.output_dense, out)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = attribute_config(self, self.CONFIG_NAMES)
        return {**super().get_config(), **config}
