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
from keras_segformer.training.optimizer import (
    GroupedAdamW,
    WarmupPolyDecay,
    compile_for_training,
    create_optimizer,
)

__all__ = [
    "ConfusionMatrix",
    "GroupedAdamW",
    "MeanAccuracy",
    "MeanIoU",
    "PixelAccuracy",
    "SegFormerLoss",
    "WarmupPolyDecay",
    "compile_for_training",
    "create_optimizer",
    "per_class_report",
    "segmentation_scores",
]
