"""Overlapping patch embedding: strided conv with symmetric padding + LN."""

import keras

from keras_segformer.layers.init import kernel_init
from keras_segformer.layers.layer_norm import LayerNorm
from keras_segformer.ops import nn
from keras_segformer.ops.layer_call import DirectCall
from keras_segformer.serializable import attribute_config


@keras.saving.register_keras_serializable(package="keras_segformer")
class OverlappingPatchEmbedding(DirectCall, keras.layers.Layer):
    """Embed overlapping patches: pad ``k // 2`` on every side, ``k x k``
    convolution with stride ``s``, then LayerNorm.

    Keras ``padding="same"`` pads asymmetrically when ``s > 1`` and would not
    match the reference, hence the explicit symmetric padding. Output side:
    ``floor((H + 2 * (k // 2) - k) / s) + 1``.

    Args:
        hidden_size: int. Output channels.
        patch_size: int. Convolution kernel size ``k``.
        stride: int. Convolution stride ``s``.
        layer_norm_epsilon: float. LayerNorm epsilon.
    """

    def __init__(
        self, hidden_size, patch_size, stride, layer_norm_epsilon=1e-5, **kwargs
    ):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.patch_size = patch_size
        self.stride = stride
        self.layer_norm_epsilon = layer_norm_epsilon
        self.proj = keras.layers.Conv2D(
            hidden_size,
            patch_size,
            strides=stride,
            padding="valid",
            kernel_initializer=kernel_init(),
            dtype=self.dtype_policy,
            name="proj",
        )
        self.layer_norm = LayerNorm(
            epsilon=layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="layer_norm",
        )

    def build(self, input_shape):
        pad = self.patch_size // 2
        b, h, w, c = input_shape
        padded = (
            b,
            None if h is None else h + 2 * pad,
            None if w is None else w + 2 * pad,
            c,
        )
        self.proj.build(padded)
        self.layer_norm.build(self.proj.compute_output_shape(padded))

    def call(self, x):
        x = nn.conv2d(self.proj, x, padding=self.patch_size // 2)
        return self.layer_norm(x)

    def compute_output_shape(self, input_shape):
        def side(n):
            if n is None:
                return None
            k, s = self.patch_size, self.stride
            return (n + 2 * (k // 2) - k) // s + 1

        b, h, w, _ = input_shape
        return (b, side(h), side(w), self.hidden_size)

    def get_config(self):
        names = ("hidden_size", "patch_size", "stride", "layer_norm_epsilon")
        return {**super().get_config(), **attribute_config(self, names)}
