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
- ``upsampled_cross_entropy`` / ``upsampled_argmax``: the loss and the
  metric score full-resolution pixels, so the 1/4-resolution logits are
  resized to the label size first. At ``(2, 512, 512, 150)`` that map is
  315 MB, and a training step held five maps of its size (the map, its
  softmax, its gradient, the resize's gather and scatter): 1.5 GB, more
  than all of B0's activations. Bilinear resizing is separable, and along
  the width it works row by row, so both run in bands of rows: the height
  is resized first (a map four times smaller), then each band is widened,
  scored and dropped. On JAX the bands are one ``lax.map`` whose body is
  recomputed in the backward pass (``jax.checkpoint``); XLA otherwise
  schedules unrolled bands side by side. TensorFlow and PyTorch run them
  in order and keep only what their fused cross-entropy kernels save.
"""

import keras
import numpy as np
from keras import ops

from keras_segformer.layers.resize import (
    lerp_take,
    resize_bilinear,
    source_indices,
)

# Largest full-resolution band, in elements (16 MB of float32).
BAND_ELEMENTS = 2**22


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


def spatial_size(x):
    """``(H, W)`` of a ``(batch, H, W, ...)`` tensor: Python ints where
    known, else scalar tensors (a shape-polymorphic TensorFlow graph)."""
    static = tuple(x.shape[1:3])
    if all(isinstance(n, int) for n in static):
        return static
    dynamic = ops.shape(x)
    return (dynamic[1], dynamic[2])


def _static_size(size):
    """``(H, W)`` as Python ints, or ``None`` when either is symbolic
    (``None`` or a tensor; no ``int()``, which AutoGraph turns into a
    cast)."""
    if not all(isinstance(n, (int, np.integer)) for n in size):
        return None
    return tuple(int(n) for n in size)


def _band_rows(x, width):
    """Rows per band so that a widened band has at most BAND_ELEMENTS."""
    batch = x.shape[0] if isinstance(x.shape[0], int) else 1
    return max(1, BAND_ELEMENTS // max(1, batch * width * x.shape[-1]))


def _bands(logits, size, score, labels=None, recompute=False):
    """``score(resize_bilinear(logits, size)[:, rows], labels[:, rows])``
    over bands of rows, concatenated along axis 1 (``labels`` may be None;
    ``recompute``: JAX keeps no band for the backward pass).

    The height is resized first, then each band of rows along the width:
    the same interpolation one axis at a time (JAX's resize works that way:
    the same numbers; TensorFlow's and torch's 2-D kernels differ by float
    rounding, ~1e-7 relative).
    """

    def whole():
        return score(resize_bilinear(logits, size), labels)

    static = _static_size(size)
    if static is None or _static_size(logits.shape[1:3]) is None:
        return whole()
    height, width = static
    band = _band_rows(logits, width)
    if band >= height:
        return whole()
    if keras.backend.backend() == "jax":
        return _bands_jax(logits, height, width, band, score, labels, recompute)
    tall = resize_bilinear(logits, (height, logits.shape[2]))
    starts = list(range(0, height, band))
    # split, not slices: the gradient of a split is one concatenation,
    # the gradients of slices are full-size padded copies summed.
    pieces = ops.split(tall, starts[1:], axis=1)
    out = []
    for start, piece in zip(starts, pieces):
        part = None if labels is None else labels[:, start : start + band]
        wide = resize_bilinear(piece, (piece.shape[1], width))
        out.append(score(wide, part))
    return ops.concatenate(out, axis=1)


def _bands_jax(logits, height, width, band, score, labels, recompute):
    """The bands as one ``lax.map`` (XLA keeps the iterations in sequence;
    unrolled bands were scheduled side by side, as large as one map). Each
    band gathers its rows from the 1/4-resolution logits itself."""
    import jax
    import jax.numpy as jnp

    count = -(-height // band)
    padded = count * band
    i0, i1, frac = source_indices(logits.shape[1], height)
    # Pad the last band by repeating the last row; its output is dropped.
    extra = padded - height
    i0, i1, frac = (
        np.pad(a, (0, extra), mode="edge").reshape(count, band)
        for a in (i0, i1, frac)
    )
    xs = {"i0": i0, "i1": i1, "frac": frac.astype(logits.dtype)}
    if labels is not None:
        labels = jnp.pad(labels, ((0, 0), (0, extra), (0, 0)))
        xs["labels"] = jnp.moveaxis(
            labels.reshape(labels.shape[0], count, band, width), 1, 0
        )

    def one_band(x):
        rows = lerp_take(logits, x["i0"], x["i1"], x["frac"], axis=1)
        return score(resize_bilinear(rows, (band, width)), x.get("labels"))

    out = jax.lax.map(jax.checkpoint(one_band) if recompute else one_band, xs)
    out = jnp.moveaxis(out, 0, 1)
    return out.reshape(out.shape[0], padded, *out.shape[3:])[:, :height]


def upsampled_cross_entropy(logits, labels):
    """``softmax_cross_entropy(resize_bilinear(logits, (H, W)), labels)``
    without a full-resolution logit map (see the module docstring).

    Args:
        logits: float tensor ``(batch, h, w, num_classes)``.
        labels: int tensor ``(batch, H, W)``, values in ``[0, num_classes)``.

    Returns:
        Float tensor ``(batch, H, W)``.
    """
    labels = ops.convert_to_tensor(labels)
    return _bands(
        logits,
        spatial_size(labels),
        softmax_cross_entropy,
        labels=labels,
        recompute=True,
    )


def upsampled_argmax(logits, size):
    """``argmax(resize_bilinear(logits, size))`` as int32, in bands of rows
    (no full-resolution logit map)."""
    return _bands(logits, size, lambda x, _: argmax(x, axis=-1))
