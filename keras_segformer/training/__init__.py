"""Training recipe: loss, metrics, optimizer and schedule; data-parallel
training on several devices."""

from keras_segformer.training.distribute import (
    distribution_scope,
    list_devices,
    num_replicas,
)
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
    "distribution_scope",
    "list_devices",
    "num_replicas",
    "per_class_report",
    "segmentation_scores",
]
