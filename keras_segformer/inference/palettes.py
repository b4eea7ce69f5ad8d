"""Colour palettes for visualizing masks.

The built-in datasets' colours (and class names) live in
``keras_segformer.classes``; ``generic_palette`` colours any other number
of classes.
"""

import numpy as np

from keras_segformer.classes import (  # noqa: F401 (exported here too)
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    DATASETS,
    get_class_names,
)


def generic_palette(num_classes):
    """Distinct colours for any number of classes (PASCAL VOC scheme).

    Spreads the bits of each class index over the high bits of R, G and
    B, so neighbouring indices get very different colours; index 0 is
    black. Colours are unique for up to 2**24 classes.

    Args:
        num_classes: int. Number of colours.

    Returns:
        uint8 numpy array ``(num_classes, 3)``.
    """
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be >= 1. Received: {num_classes}")
    index = np.arange(num_classes, dtype=np.int64)
    palette = np.zeros((num_classes, 3), dtype=np.int64)
    for shift in range(7, -1, -1):
        for channel in range(3):
            palette[:, channel] |= ((index >> channel) & 1) << shift
        index = index >> 3
    return palette.astype(np.uint8)


def get_palette(spec):
    """A palette from a dataset name, a class count or explicit colours.

    Args:
        spec: ``"ade20k"``, ``"cityscapes"``, an int (``generic_palette``)
            or a sequence of ``(R, G, B)`` colours.

    Returns:
        uint8 numpy array ``(num_classes, 3)``.

    Raises:
        ValueError: an unknown palette name, a palette not of shape
            ``(num_classes, 3)``, or colours outside 0..255.

    Example:
    >>> get_palette("cityscapes")[0]  # road
    array([128,  64, 128], dtype=uint8)
    """
    if isinstance(spec, str):
        key = spec.lower().replace("-", "").replace("_", "")
        if key not in DATASETS:
            raise ValueError(
                f"Unknown palette {spec!r}. Expected one of "
                f"{sorted(DATASETS)}, a number of classes or a list of "
                "colours."
            )
        return np.array(DATASETS[key][1], dtype=np.uint8)
    if isinstance(spec, (int, np.integer)):
        return generic_palette(spec)
    palette = np.asarray(spec)
    if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) == 0:
        raise ValueError(
            "A palette must be a sequence of (R, G, B) colours, shape "
            f"(num_classes, 3). Received shape {palette.shape}."
        )
    if palette.min() < 0 or palette.max() > 255:
        raise ValueError("Palette colours must lie in 0..255.")
    return palette.astype(np.uint8)
