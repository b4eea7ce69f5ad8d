"""Scaled dot-product attention: the generic version.

Fast versions: ``_tensorflow.py`` (batched matmuls, cpu), ``_jax.py``
(batched matmuls, queries in chunks, cpu).
"""

from keras import ops

from keras_segformer.ops.dispatch import op


@op
def attention(q, k, v, training=False):
    """``softmax(q k^T / sqrt(dim)) v`` for ``(batch, tokens, heads, dim)``
    inputs (no dropout, no mask).

    Args:
        q: tensor ``(batch, queries, heads, dim)``.
        k, v: tensors ``(batch, keys, heads, dim)``.
        training: bool. In a training step (fast versions may then keep
            less for the backward pass); the numbers do not depend on it.
    """
    return ops.dot_product_attention(q, k, v)
