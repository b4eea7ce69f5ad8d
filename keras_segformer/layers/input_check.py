"""Early, readable errors for images the network cannot take."""

import keras


@keras.saving.register_keras_serializable(package="keras_segformer")
class InputCheck(keras.layers.Layer):
    """Identity that rejects images smaller than ``min_size`` pixels.

    Without it a too-small image fails deep inside a strided convolution
    with a backend-specific message. Sizes unknown at trace time (symbolic
    dimensions) are left to the backend.

    Args:
        min_size: int. Smallest accepted height and width.
    """

    def __init__(self, min_size, **kwargs):
        super().__init__(**kwargs)
        self.min_size = int(min_size)

    def _check(self, shape):
        if len(shape) != 4:
            raise ValueError(
                "Expected a batch of images of shape (batch, height, width, "
                f"channels). Received shape {tuple(shape)}."
            )
        for axis, name in ((1, "height"), (2, "width")):
            n = shape[axis]
            if isinstance(n, int) and n < self.min_size:
                raise ValueError(
                    f"Image {name} {n} is too small: this network needs at "
                    f"least {self.min_size}x{self.min_size} pixels "
                    f"(received shape {tuple(shape)})."
                )

    def build(self, input_shape):
        self._check(input_shape)

    def call(self, x):
        self._check(tuple(x.shape))
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "min_size": self.min_size}
