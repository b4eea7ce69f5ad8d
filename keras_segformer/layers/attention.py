"""Efficient self-attention with spatial reduction of keys and values."""

import keras
from keras import ops

from keras_segformer.layers import fast
from keras_segformer.layers.init import kernel_init
from keras_segformer.layers.layer_norm import LayerNorm


@keras.saving.register_keras_serializable(package="keras_segformer")
class EfficientSelfAttention(keras.layers.Layer):
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
        self.dropout = keras.layers.Dropout(
            attention_dropout, dtype=self.dtype_policy
        )

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
            return ops.reshape(t, (batch, -1, heads, head_dim))

        q = split_heads(fast.dense(self.query, x))
        kv = x
        if self.sr_ratio > 1:
            kv = self.sr_norm(fast.conv2d(self.sr, x))
        k = split_heads(fast.dense(self.key, kv))
        v = split_heads(fast.dense(self.value, kv))

        if training and self.attention_dropout > 0:
            # The fused kernel has no dropout; spell it out for training.
            scores = ops.einsum("bqhd,bkhd->bhqk", q, k)
            scores = scores * ops.cast(head_dim**-0.5, scores.dtype)
            probs = ops.softmax(scores, axis=-1)
            probs = self.dropout(probs, training=training)
            out = ops.einsum("bhqk,bkhd->bqhd", probs, v)
        elif keras.backend.backend() == "tensorflow":
            out = _attention_tf(q, k, v, heads)
        elif keras.backend.backend() == "jax":
            out = _attention_jax(q, k, v, training=bool(training))
        else:
            out = ops.dot_product_attention(q, k, v)
        out = ops.reshape(out, (batch, height, width, self.hidden_size))
        return fast.dense(self.output_dense, out)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "sr_ratio": self.sr_ratio,
            "attention_dropout": self.attention_dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
        }


def _attention_tf(q, k, v, heads):
    """``softmax(q k^T / sqrt(d)) v`` for ``(batch, tokens, heads, dim)``
    inputs on TensorFlow, as batched matmuls.

    Keras' TensorFlow ``dot_product_attention`` goes through ``tf.einsum``,
    which transposes every operand; with one head (stage 1, the longest
    sequence) no transpose is needed at all. The scale is applied to the
    queries (``dim`` wide) rather than the scores (``keys`` wide).
    """
    import tensorflow as tf

    scale = ops.cast(q.shape[-1] ** -0.5, q.dtype)
    if heads == 1:
        scores = tf.matmul(q[:, :, 0] * scale, k[:, :, 0], transpose_b=True)
        probs = tf.cast(tf.nn.softmax(tf.cast(scores, "float32")), v.dtype)
        return tf.matmul(probs, v[:, :, 0])[:, :, None]
    q, k, v = (tf.transpose(t, (0, 2, 1, 3)) for t in (q * scale, k, v))
    scores = tf.matmul(q, k, transpose_b=True)
    probs = tf.cast(tf.nn.softmax(tf.cast(scores, "float32")), v.dtype)
    return tf.transpose(tf.matmul(probs, v), (0, 2, 1, 3))


# Most score elements (batch x heads x queries x keys) one attention call
# holds on JAX before queries go in chunks: 2**22 floats = 16 MB.
JAX_SCORE_CHUNK = 2**22


def _attention_jax(q, k, v, training=False):
    """``softmax(q k^T / sqrt(d)) v`` for ``(batch, tokens, heads, dim)``
    inputs on JAX: batched matmuls, queries in chunks when the score matrix
    would be large.

    ``jax.nn.dot_product_attention`` writes ``probs @ v`` as the einsum
    ``BNTS,BSNH->BTNH``, which XLA:CPU runs ~10x slower than the same
    product with the heads as a leading batch axis (1.4 s against 0.13 s
    for stage 1 of B0 at 1024x2048). Softmax is per query row, so each
    chunk computes exactly the rows it would in one call; chunks of at most
    ``JAX_SCORE_CHUNK`` scores run one after another in a ``lax.map`` (a
    loop in the compiled program, differentiable) instead of holding the
    whole matrix (1 GB for that stage, 6.4 GB peak RSS). Shapes unknown at
    trace time take one call.

    With ``training=True`` each chunk is recomputed in the backward pass
    (``jax.checkpoint``) and its probabilities are ``exp(scores -
    logsumexp(scores))``: a B0 training step at batch 2 then keeps no
    score-sized maps between the passes (it kept three per block, 170 MB
    in all).
    """
    import jax
    import jax.numpy as jnp

    batch, queries, heads, dim = q.shape
    keys = k.shape[1]
    scale = jnp.asarray(dim**-0.5, q.dtype)
    k, v = (jnp.swapaxes(t, 1, 2) for t in (k, v))  # (B, heads, keys, dim)

    def attend(block):  # (B, rows, heads, dim) -> same
        block = jnp.swapaxes(block * scale, 1, 2)
        scores = jnp.matmul(block, jnp.swapaxes(k, 2, 3))
        scores = scores.astype("float32")
        if training:
            # One score-sized map kept for the backward pass, where
            # softmax's exp / sum kept the sum broadcast to full size too.
            lse = jax.nn.logsumexp(scores, -1, keepdims=True)
            probs = jnp.exp(scores - lse)
        else:  # 20-40% faster than the above
            probs = jax.nn.softmax(scores, axis=-1)
        out = jnp.matmul(probs.astype(v.dtype), v)
        return jnp.swapaxes(out, 1, 2)

    if training:
        # Scores and probabilities are recomputed in the backward pass,
        # chunk by chunk where there are chunks.
        attend = jax.checkpoint(attend)
    if None in (batch, queries, keys):
        return attend(q)
    rows = max(8, JAX_SCORE_CHUNK // (batch * heads * keys))
    if training and queries >= 16:
        # At least two chunks: XLA inlines a one-trip loop and then hoists
        # the recomputation into the forward pass, keeping its maps.
        rows = min(rows, -(-queries // 2))
    if queries <= rows:
        return attend(q)
    chunks = -(-queries // rows)
    rows = -(-queries // chunks)  # even chunks, least padding
    padded = jnp.pad(q, ((0, 0), (0, chunks * rows - queries), (0, 0), (0, 0)))
    blocks = jnp.moveaxis(padded.reshape(batch, chunks, rows, heads, dim), 1, 0)
    out = jnp.moveaxis(jax.lax.map(attend, blocks), 0, 1)
    return out.reshape(batch, chunks * rows, heads, dim)[:, :queries]
