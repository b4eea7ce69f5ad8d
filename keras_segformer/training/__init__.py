"""Training recipe: loss, metrics, optimizer and schedule."""

from keras_segformer.training.losses import SegFormerLoss

__all__ = ["SegFormerLoss"]
