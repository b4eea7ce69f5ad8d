"""Bilinear resize with PyTorch's ``align_corners=False`` semantics."""

import keras
from keras import ops


def resize_bilinear(x, size):
    """Resize a channels-last batch bilinearly, half-pixel centres, no
    antialiasing: the same numbers as
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
    when upsampling.

    Args:
        x: tensor of shape ``(batch, height, width, channels)``.
        size: pair of ints or scalar tensors ``(height, width)``.
    """
    if keras.backend.backend() == "tensorflow":
        # keras.ops.image.resize validates `size` with Python comparisons,
        # which fail on the symbolic sizes of a shape-polymorphic TF graph.
        import tensorflow as tf

        return tf.image.resize(x, size, method="bilinear", antialias=False)
    return ops.image.resize(
        x,
        size,
        interpolation="bilinear",
        antialias=False,
        data_format="channels_last",
    )
