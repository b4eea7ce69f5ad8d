"""Bilinear resize with PyTorch's ``align_corners=False`` semantics."""

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
    return ops.image.resize(
        x,
        size,
        interpolation="bilinear",
        antialias=False,
        data_format="channels_last",
    )
