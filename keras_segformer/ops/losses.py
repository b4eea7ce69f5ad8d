"""Cross-entropy, argmax and the banded upsampling of the loss and metrics.

- ``softmax_cross_entropy``: the spelling ``logsumexp(x) -
  take_along_axis(x, label)`` differentiates the gather into a
  scatter-add, which on a ``(2, 512, 512, 150)`` logit map took longer
  than the whole model (TensorFlow's ``UnsortedSegmentSum``: two thirds of
  a training step). The generic version is a one-hot ``where`` that XLA
  fuses into the reductions; TensorFlow and PyTorch register their fused sparse
  cross-entropy kernels (cpu).
- ``argmax``: Keras' TensorFlow ``argmax`` first rewrites ``-0.0`` with
  four extra full-size passes (a flush-to-zero workaround); over logits
  there is no ``-0.0`` that could win against a positive score, so
  TensorFlow registers the plain ``tf.argmax`` (cpu).
- ``upsampled_cross_entropy`` / ``upsampled_argmax``: the loss and the
  metric score full-resolution pixels, so the 1/4-resolution logits are
  resized to the label size first. At ``(2, 512, 512, 150)`` that map is
  315 MB, and a training step held five maps of its size (the map, its
  softmax, its gradient, the resize's gather and scatter): 1.5 GB, more
  than all of B0's activations. Bilinear resizing is separable, and along
  the width it works row by row, so both run in bands of rows: the height
  is resized first (a map four times smaller), then each band is widened,
  scored and dropped. Generic: the bands in order (TensorFlow and PyTorch
  then keep only what their cross-entropy kernels save). JAX registers
  one ``lax.map`` whose body is recomputed in the backward pass (cpu);
  XLA schedules unrolled bands side by side.
"""

from keras import ops

from keras_segformer.ops.dispatch import op
from keras_segformer.ops.resize import resize_bilinear, static_size

# Largest full-resolution band, in elements (16 MB of float32).
BAND_ELEMENTS = 2**22


@op
def softmax_cross_entropy(logits, labels):
    """Per-position ``-log softmax(logits)[label]``.

    Args:
        logits: float tensor ``(..., num_classes)``.
        labels: int tensor ``logits.shape[:-1]``, values in
            ``[0, num_classes)`` (mask ignored positions beforehand).

    Returns:
        Float tensor of shape ``logits.shape[:-1]``.
    """
    classes = ops.arange(logits.shape[-1], dtype="int32")
    hit = ops.equal(ops.expand_dims(ops.cast(labels, "int32"), -1), classes)
    picked = ops.sum(ops.where(hit, logits, ops.zeros_like(logits)), axis=-1)
    return ops.logsumexp(logits, axis=-1) - picked


@op
def argmax(x, axis=-1):
    """``keras.ops.argmax(x, axis)`` as int32."""
    return ops.cast(ops.argmax(x, axis=axis), "int32")


def spatial_size(x):
    """``(H, W)`` of a ``(batch, H, W, ...)`` tensor: Python ints where
    known, else scalar tensors (a shape-polymorphic TensorFlow graph)."""
    static = tuple(x.shape[1:3])
    if all(isinstance(n, int) for n in static):
        return static
    dynamic = ops.shape(x)
    return (dynamic[1], dynamic[2])


def band_rows(x, width):
    """Rows per band so that a widened band has at most BAND_ELEMENTS."""
    batch = x.shape[0] if isinstance(x.shape[0], int) else 1
    return max(1, BAND_ELEMENTS // max(1, batch * width * x.shape[-1]))


@op
def banded(logits, height, width, band, score, labels=None, recompute=False):
    """``score(resize_bilinear(logits, (height, width)), labels)`` in bands
    of ``band`` rows, concatenated along axis 1 (static sizes only).

    The height is resized first, then each band of rows along the width:
    the same interpolation one axis at a time (TensorFlow's and torch's
    2-D kernels differ from it by float rounding, ~1e-7 relative).

    Args:
        score: callable ``(logits, labels or None) -> tensor``.
        labels: int tensor ``(batch, height, width)`` or None.
        recompute: bool. Keep no band for the backward pass (where a
            version can choose).
    """
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


def _upsampled(logits, size, score, labels=None, recompute=False):
    """``score`` of the logits resized to ``size``: in bands of rows where
    the sizes are static and the full map would pass BAND_ELEMENTS."""
    static = static_size(size)
    if static is not None and static_size(logits.shape[1:3]) is not None:
        height, width = static
        band = band_rows(logits, width)
        if band < height:
            return banded(logits, height, width, band, score, labels, recompute)
    return score(resize_bilinear(logits, size), labels)


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
    return _upsampled(
        logits,
        spatial_size(labels),
        softmax_cross_entropy,
        labels=labels,
        recompute=True,
    )


def upsampled_argmax(logits, size):
    """``argmax(resize_bilinear(logits, size))`` as int32, in bands of rows
    (no full-resolution logit map)."""
    return _upsampled(logits, size, lambda x, _: argmax(x, axis=-1))
