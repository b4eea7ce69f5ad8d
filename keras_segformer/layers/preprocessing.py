"""In-model pixel normalization (raw 0-255 images in)."""

import keras
from keras import ops

from keras_segformer.ops.layer_call import DirectCall

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="keras_segformer")
class ImageNormalization(DirectCall, keras.layers.Layer):
    """``(x * scale - mean) / std`` per channel.

    With the defaults it turns 0-255 RGB into the ImageNet-normalized
    ``pixel_values`` that transformers' ``SegformerImageProcessor`` produces
    (rescale by 1/255, then normalize).

    Args:
        mean: sequence of floats. Per-channel mean after scaling.
        std: sequence of floats. Per-channel standard deviation.
        scale: float. Factor applied first.
    """

    def __init__(
        self, mean=IMAGENET_MEAN, std=IMAGENET_STD, scale=1 / 255, **kwargs
    ):
        super().__init__(**kwargs)
        if len(mean) != len(std):
            raise ValueError(
                f"`mean` and `std` must have the same length. Received "
                f"{len(mean)} and {len(std)}."
            )
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.scale = float(scale)

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        mean = ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        std = ops.convert_to_tensor(self.std, dtype=self.compute_dtype)
        return (x * self.scale - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": self.scale,
        }
