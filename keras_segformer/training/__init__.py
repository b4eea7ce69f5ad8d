"""Training recipe: loss, metrics, optimizer and schedule."""

from keras_segformer.training.losses import SegFormerLoss
from keras_segformer.training.metrics import (
    ConfusionMatrix,
    MeanAccuracy,
    MeanIoU,
    PixelAccuracy,
    per_class_report,
    segmentation_scores,
)

__all__ = [
    "ConfusionMatrix",
    "MeanAccuracy",
    "MeanIoU",
    "PixelAccuracy",
    "SegFormerLoss",
    "per_class_report",
    "segmentation_scores",
]
