"""Input checks that must run inside a compiled graph."""

from keras_segformer.ops.dispatch import op


@op
def assert_image_size(x, min_size, unknown):
    """``x``, after checking the sizes unknown at trace time in the graph:
    a non-empty batch of images at least ``min_size`` on each side.

    Generic: ``x`` unchanged. Only TensorFlow traces with unknown sizes
    (``_tensorflow.py`` registers the check there, in both modes); the
    other backends' shapes are concrete and checked in Python.

    Args:
        x: tensor ``(batch, height, width, channels)``.
        min_size: int. Smallest accepted height and width.
        unknown: three bools: batch, height, width unknown at trace time.
    """
    return x
