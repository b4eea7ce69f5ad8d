"""Backend fast paths for the few operations that dominate a training step.

Each function computes what its ``keras.ops`` spelling computes (the tests
compare them), through the kernel each backend does best:

- ``softmax_cross_entropy``: the generic spelling
  ``logsumexp(x) - take_along_axis(x, label)`` differentiates the gather
  into a scatter-add, which on a ``(2, 512, 512, 150)`` logit map took
  longer than the whole model (TensorFlow's ``UnsortedSegmentSum``: 2 s of
  a 3 s step). TensorFlow and PyTorch have fused sparse cross-entropy
  kernels; on JAX a one-hot ``where`` that XLA fuses into the reductions.
- ``argmax``: Keras' TensorFlow ``argmax`` first rewrites ``-0.0`` with
  four extra full-size passes (a flush-to-zero workaround); over logits
  there is no ``-0.0`` that could win against a positive score, so the
  plain ``tf.argmax`` gives the same classes.
"""

import keras
from keras import ops


def softmax_cross_entropy(logits, labels):
    """Per-position ``-log softmax(logits)[label]``.

    Args:
        logits: float tensor ``(..., num_classes)``.
        labels: int tensor ``logits.shape[:-1]``, values in
            ``[0, num_classes)`` (mask ignored positions beforehand).

    Returns:
        Float tensor of shape ``logits.shape[:-1]``.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(labels, "int32"), logits=logits
        )
    if backend == "torch":
        import torch.nn.functional as F

        logits = ops.convert_to_tensor(logits)
        labels = ops.convert_to_tensor(labels).long()
        rank = logits.dim()
        # Class axis second; for a channels-last tensor this is a view.
        perm = (0, rank - 1, *range(1, rank - 1)) if rank > 2 else (0, 1)
        return F.cross_entropy(logits.permute(perm), labels, reduction="none")
    classes = ops.arange(logits.shape[-1], dtype="int32")
    hit = ops.equal(ops.expand_dims(ops.cast(labels, "int32"), -1), classes)
    picked = ops.sum(ops.where(hit, logits, ops.zeros_like(logits)), axis=-1)
    return ops.logsumexp(logits, axis=-1) - picked


def argmax(x, axis=-1):
    """``keras.ops.argmax(x, axis)`` as int32, without TensorFlow's
    negative-zero rewrite (see the module docstring)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.argmax(x, axis=axis, output_type="int32")
    return ops.cast(ops.argmax(x, axis=axis), "int32")
