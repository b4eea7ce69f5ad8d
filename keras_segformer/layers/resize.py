"""Bilinear resize with PyTorch's ``align_corners=False`` semantics."""

import keras
import numpy as np
from keras import ops


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


def _axis_lerp(x, size, axis):
    """Linear interpolation along one axis with static sizes: two gathers
    and a blend, exactly torch's ``align_corners=False`` formula."""
    n_in = x.shape[axis]
    if n_in == size:
        return x
    i0, i1, frac = source_indices(n_in, size)
    shape = [1] * len(x.shape)
    shape[axis] = size
    frac = ops.cast(np.reshape(frac, shape), x.dtype)
    a = ops.take(x, i0, axis=axis)
    b = ops.take(x, i1, axis=axis)
    return a + (b - a) * frac


def resize_bilinear(x, size):
    """Resize a channels-last batch bilinearly, half-pixel centres, no
    antialiasing: the same numbers as
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``.

    Args:
        x: tensor of shape ``(batch, height, width, channels)``.
        size: pair of ints or scalar tensors ``(height, width)``.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        # keras.ops.image.resize validates `size` with Python comparisons,
        # which fail on the symbolic sizes of a shape-polymorphic TF graph.
        import tensorflow as tf

        out = tf.image.resize(x, size, method="bilinear", antialias=False)
        return tf.cast(out, x.dtype)  # tf.image.resize returns float32
    if backend == "jax":
        # Shapes are static under jit. Two gathers per axis compile in a
        # fraction of the time of jax.image.resize's dense kernels.
        h, w = (int(s) for s in size)
        return _axis_lerp(_axis_lerp(x, h, 1), w, 2)
    return ops.image.resize(
        x,
        size,
        interpolation="bilinear",
        antialias=False,
        data_format="channels_last",
    )
