"""Inference: pre/post-processing, sliding window, test-time augmentation,
palettes and visualization.

Example:
>>> from keras_segformer import inference
>>> segmenter = inference.Segmenter(model, size=(512, 512))
>>> mask = segmenter("room.jpg")
>>> inference.save_prediction("room.jpg", mask, "out", "room", "ade20k",
...                           inference.get_class_names("ade20k"))
"""

from keras_segformer.inference.palettes import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    generic_palette,
    get_class_names,
    get_palette,
)
from keras_segformer.inference.processing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_image,
    load_label,
    logits_to_mask,
    normalize_image,
    postprocess,
    preprocess,
    preprocess_labels,
    reduce_labels,
    resize_image,
    resize_logits,
    resolve_size,
)
from keras_segformer.inference.segmenter import Segmenter, slide_windows
from keras_segformer.inference.visualize import (
    colorize,
    draw_legend,
    overlay,
    overlay_with_legend,
    save_mask,
    save_prediction,
)

__all__ = [
    "ADE20K_CLASSES",
    "ADE20K_PALETTE",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Segmenter",
    "colorize",
    "draw_legend",
    "generic_palette",
    "get_class_names",
    "get_palette",
    "load_image",
    "load_label",
    "logits_to_mask",
    "normalize_image",
    "overlay",
    "overlay_with_legend",
    "postprocess",
    "preprocess",
    "preprocess_labels",
    "reduce_labels",
    "resize_image",
    "resize_logits",
    "resolve_size",
    "save_mask",
    "save_prediction",
    "slide_windows",
]
