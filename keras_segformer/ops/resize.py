"""Bilinear resize with PyTorch's ``align_corners=False`` semantics.

Fast versions: ``_tensorflow.py`` (``tf.image.resize``, cpu), ``_jax.py``
(two gathers per axis with a matmul backward, cpu).
"""

import numpy as np
from keras import ops

from keras_segformer.ops.dispatch import op


def source_indices(n_in, size):
    """For each of ``size`` outputs along an axis of ``n_in`` inputs: the
    two source indices and the weight of the second, by torch's
    ``align_corners=False`` formula (numpy arrays: int32, int32, float32)."""
    scale = np.float32(n_in / size)
    src = (np.arange(size, dtype=np.float32) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.floor(src).astype("int32")
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = (src - i0).astype("float32")
    return i0, i1, frac


def static_size(size):
    """``(H, W)`` as Python ints, or ``None`` when either is symbolic
    (``None`` or a tensor; no ``int()``, which AutoGraph turns into a
    cast)."""
    if not all(isinstance(n, (int, np.integer)) for n in size):
        return None
    return tuple(int(n) for n in size)


def _lerp_axis(x, size, axis):
    """``source_indices`` and the interpolation along ``axis`` as
    ``keras.ops``, for sizes known only when the graph runs."""
    n_in = ops.shape(x)[axis]
    scale = ops.cast(n_in, "float32") / ops.cast(size, "float32")
    src = (ops.cast(ops.arange(size), "float32") + 0.5) * scale - 0.5
    src = ops.maximum(src, 0.0)
    i0 = ops.cast(ops.floor(src), "int32")
    i1 = ops.minimum(i0 + 1, ops.cast(n_in, "int32") - 1)
    shape = [1] * len(x.shape)
    shape[axis] = -1
    frac = ops.reshape(ops.cast(src - ops.floor(src), x.dtype), shape)
    a = ops.take(x, i0, axis=axis)
    b = ops.take(x, i1, axis=axis)
    return a + (b - a) * frac


@op
def resize_bilinear(x, size):
    """Resize a channels-last batch bilinearly, half-pixel centres, no
    antialiasing: the same numbers as
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``.

    Args:
        x: tensor of shape ``(batch, height, width, channels)``.
        size: pair of ints or scalar tensors ``(height, width)``.
    """
    if static_size(size) is None:
        # keras.ops.image.resize checks `size` with Python comparisons,
        # which fail on the symbolic sizes of a shape-polymorphic graph.
        return _lerp_axis(_lerp_axis(x, size[0], 1), size[1], 2)
    return ops.image.resize(
        x,
        static_size(size),
        interpolation="bilinear",
        antialias=False,
        data_format="channels_last",
    )


@op
def add_resized(x, y):
    """``x + resize_bilinear(y, (H, W))`` for ``x`` of shape
    ``(batch, H, W, channels)``, where the caller owns ``x`` and will not
    read it again (a fast version may write the sum into it)."""
    return x + resize_bilinear(y, ops.shape(x)[1:3])
