"""Input pipelines: file readers, mmseg augmentation, synthetic data.

TensorFlow (``tf.data``) is the input side on every Keras backend; the
model itself stays backend-agnostic.
"""

from keras_segformer.data import augment, synthetic
from keras_segformer.data.augment import IMAGENET_MEAN_255, IMAGENET_STD_255
from keras_segformer.data.loading import (
    IGNORE_INDEX,
    LabelTransform,
    read_image,
    read_mask,
)
from keras_segformer.data.pipeline import make_dataset
from keras_segformer.data.readers import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABEL_TO_TRAIN_ID,
    SegmentationFiles,
    ade20k,
    cityscapes,
    folder,
)

__all__ = [
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABEL_TO_TRAIN_ID",
    "IGNORE_INDEX",
    "IMAGENET_MEAN_255",
    "IMAGENET_STD_255",
    "LabelTransform",
    "SegmentationFiles",
    "ade20k",
    "augment",
    "cityscapes",
    "folder",
    "make_dataset",
    "read_image",
    "read_mask",
    "synthetic",
]
