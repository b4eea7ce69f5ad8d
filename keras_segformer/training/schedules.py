"""The learning-rate schedule of SegFormer's recipe (mmcv's poly decay
with linear warmup)."""

import keras
from keras import ops

from keras_segformer.serializable import attribute_config


@keras.saving.register_keras_serializable(package="keras_segformer")
class WarmupPolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Poly decay with linear warmup, as mmcv's ``PolyLrUpdaterHook``.

    ``regular(step) = (initial - end) * (1 - min(step, decay_steps) /
    decay_steps) ** power + end``; during the first ``warmup_steps`` steps
    the rate is ``regular(step) * (1 - (1 - step / warmup_steps) * (1 -
    warmup_ratio))``, i.e. it ramps from ``warmup_ratio * regular`` up to
    the poly curve. Keras' ``PolynomialDecay`` has no warmup and
    ``CosineDecay``'s warmup is additive, hence this class.

    Args:
        initial_learning_rate: float. Rate at step 0 of the poly curve.
        decay_steps: int. Steps until the rate reaches
            ``end_learning_rate`` (the total number of training steps).
        warmup_steps: int. Length of the linear warmup (0: none).
        warmup_ratio: float. Fraction of the rate at the first step.
        power: float. Exponent of the poly curve.
        end_learning_rate: float. Final rate (mmcv ``min_lr``).
        name: str. Name of the schedule.
    """

    def __init__(
        self,
        initial_learning_rate,
        decay_steps,
        warmup_steps=0,
        warmup_ratio=1e-6,
        power=1.0,
        end_learning_rate=0.0,
        name="warmup_poly_decay",
    ):
        super().__init__()
        if int(decay_steps) <= 0:
            raise ValueError(
                f"`decay_steps` must be > 0. Received: {decay_steps}"
            )
        if int(warmup_steps) < 0:
            raise ValueError(
                f"`warmup_steps` must be >= 0. Received: {warmup_steps}"
            )
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_steps = int(decay_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_ratio = float(warmup_ratio)
        self.power = float(power)
        self.end_learning_rate = float(end_learning_rate)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        progress = ops.minimum(step, float(self.decay_steps))
        coeff = ops.power(1.0 - progress / self.decay_steps, self.power)
        lr = (
            self.initial_learning_rate - self.end_learning_rate
        ) * coeff + self.end_learning_rate
        if self.warmup_steps > 0:
            # mmcv: lr * (1 - k), k = (1 - step / warmup) * (1 - ratio).
            # Expanded, so float32 does not cancel 1 - k near step 0.
            factor = self.warmup_ratio + (1.0 - self.warmup_ratio) * (
                step / self.warmup_steps
            )
            lr = ops.where(step < self.warmup_steps, lr * factor, lr)
        return lr

    def get_config(self):
        names = (
            "initial_learning_rate",
            "decay_steps",
            "warmup_steps",
            "warmup_ratio",
            "power",
            "end_learning_rate",
            "name",
        )
        return attribute_config(self, names)
