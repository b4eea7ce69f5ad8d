"""Early, readable errors for images the network cannot take."""

import keras

from keras_segformer.ops.checks import assert_image_size
from keras_segformer.ops.inference import no_autograd
from keras_segformer.ops.layer_call import DirectCall, dtype_name


def check_image_shape(shape, min_size, channels=None):
    """Raise ``ValueError`` unless ``shape`` is a batch the network can run.

    Dimensions that are unknown (None) are not checked.

    Args:
        shape: tuple. ``(batch, height, width, channels)``.
        min_size: int. Smallest accepted height and width.
        channels: int or None. Expected number of channels.
    """
    shape = tuple(None if n is None else int(n) for n in shape)
    if len(shape) != 4:
        raise ValueError(
            "Expected a batch of images of shape (batch, height, width, "
            f"channels). Received shape {shape}."
        )
    if shape[0] == 0:
        raise ValueError(f"The batch holds no images (received shape {shape}).")
    for axis, name in ((1, "height"), (2, "width")):
        n = shape[axis]
        if n is not None and n < min_size:
            raise ValueError(
                f"Image {name} {n} is too small: this network needs at "
                f"least {min_size}x{min_size} pixels (received shape "
                f"{shape})."
            )
    if channels is not None and shape[3] not in (None, channels):
        raise ValueError(
            f"Expected images with {channels} channels (RGB). Received "
            f"shape {shape}."
        )


def check_pixel_dtype(inputs, include_preprocessing):
    """Raise ``TypeError`` for pixels the model would misread.

    A model without in-model preprocessing expects normalized floats:
    integer (e.g. uint8 0-255) or boolean pixels would be used as they
    are. A model built with ``include_preprocessing=True`` takes 0-255
    pixels as integers or floats.

    Args:
        inputs: the model input (tensor, array, or a structure of them).
        include_preprocessing: bool. Whether the model normalizes itself.
    """
    single = getattr(inputs, "dtype", None) is not None  # one array
    for x in (inputs,) if single else keras.tree.flatten(inputs):
        dtype = getattr(x, "dtype", None)
        if dtype is None:
            continue
        dtype = dtype_name(dtype)
        if dtype == "bool" or not (include_preprocessing or "float" in dtype):
            raise TypeError(
                f"Images of dtype {dtype} cannot be fed to this model: it "
                "takes normalized float pixels ((x / 255 - mean) / std, "
                "see keras_segformer.inference.preprocess). Normalize "
                "first, or build the model with include_preprocessing=True "
                "to feed 0-255 pixels."
                if not include_preprocessing
                else f"Images of dtype {dtype} cannot be fed to this model: "
                "it takes 0-255 pixels (integers or floats)."
            )


class ImageInputChecks:
    """Checks of the task models that need the raw input.

    Mixed into ``SegFormer`` and ``MiTClassifier`` (before
    ``keras.Model``): Keras casts the input to float32 before any layer
    sees it, so the dtype is checked in ``call``; ``predict_on_batch``
    checks the concrete shape first, so a bad array gets the same
    ``ValueError`` on every backend (on TensorFlow the compiled function
    can be traced with unknown sizes, see ``InputCheck``), then runs in
    ``keras_segformer.ops.inference.no_autograd()`` (PyTorch's inference
    mode).
    """

    def call(self, inputs, training=None, mask=None, **kwargs):
        check_pixel_dtype(inputs, self.backbone.include_preprocessing)
        shape = getattr(inputs, "shape", None)
        if shape is not None and len(shape) != 4:
            check_image_shape(shape, self.backbone.min_input_size)
        return super().call(inputs, training=training, mask=mask, **kwargs)

    def _check_batch(self, x):
        shape = getattr(x, "shape", None)
        if shape is not None:
            check_pixel_dtype(x, self.backbone.include_preprocessing)
            check_image_shape(
                shape,
                self.backbone.min_input_size,
                self.backbone.image_shape[-1],
            )

    def predict_on_batch(self, x):
        self._check_batch(x)
        with no_autograd():
            return super().predict_on_batch(x)


@keras.saving.register_keras_serializable(package="keras_segformer")
class InputCheck(DirectCall, keras.layers.Layer):
    """Identity that rejects batches the network cannot run.

    Without it a too-small image fails deep inside a strided convolution
    with a backend-specific message, or, on TensorFlow, yields logits of
    no meaning; an empty batch fails inside attention. Sizes unknown at
    trace time (symbolic dimensions) are checked in the graph on
    TensorFlow, the only backend that traces with unknown sizes.

    Args:
        min_size: int. Smallest accepted height and width.
    """

    def __init__(self, min_size, **kwargs):
        super().__init__(**kwargs)
        self.min_size = int(min_size)

    def build(self, input_shape):
        check_image_shape(input_shape, self.min_size)
        self.channels = input_shape[-1]

    def call(self, x):
        shape = tuple(x.shape)
        check_image_shape(shape, self.min_size, self.channels)
        unknown = [n is None for n in shape[:3]]
        if any(unknown):
            x = assert_image_size(x, self.min_size, unknown)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "min_size": self.min_size}
