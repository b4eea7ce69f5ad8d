"""All-MLP decode head of SegFormer."""

import keras
from keras import ops

from keras_segformer.configs import check_positive_int, check_rate
from keras_segformer.layers.init import kernel_init
from keras_segformer.ops import nn
from keras_segformer.ops.resize import resize_bilinear
from keras_segformer.serializable import attribute_config


@keras.saving.register_keras_serializable(package="keras_segformer")
class SegFormerHead(keras.layers.Layer):
    """The all-MLP decoder: unify, upsample, fuse, classify.

    Each feature map ``c_i`` is projected to ``decoder_hidden_size`` channels
    (``linear_c{i}``), resized bilinearly to the size of ``c1``
    (``align_corners=False``), the four are concatenated in the order
    ``[c4, c3, c2, c1]``, fused by a bias-free 1x1 projection, batch-normed,
    passed through ReLU and dropout, and classified per pixel.

    Args:
        num_classes: int. Output channels (logits).
        decoder_hidden_size: int. Channels of the unified features.
        dropout: float. Dropout before the classifier.
        num_inputs: int. Number of feature maps (stages).
    """

    def __init__(
        self,
        num_classes,
        decoder_hidden_size=256,
        dropout=0.1,
        num_inputs=4,
        **kwargs,
    ):
        super().__init__(**kwargs)
        num_classes = check_positive_int(num_classes, "num_classes")
        decoder_hidden_size = check_positive_int(
            decoder_hidden_size, "decoder_hidden_size"
        )
        dropout = check_rate(dropout, "dropout")
        self.num_classes = num_classes
        self.decoder_hidden_size = decoder_hidden_size
        self.dropout_rate = dropout
        self.num_inputs = num_inputs
        policy = self.dtype_policy
        self.linear_c = [
            keras.layers.Dense(
                decoder_hidden_size,
                kernel_initializer=kernel_init(),
                dtype=policy,
                name=f"linear_c{i + 1}",
            )
            for i in range(num_inputs)
        ]
        # A 1x1 convolution is a per-pixel Dense; Dense skips the conv setup.
        self.linear_fuse = keras.layers.Dense(
            decoder_hidden_size,
            use_bias=False,
            kernel_initializer=kernel_init(),
            dtype=policy,
            name="linear_fuse",
        )
        # PyTorch BatchNorm2d: eps 1e-5, momentum 0.1 (= Keras momentum 0.9).
        self.batch_norm = keras.layers.BatchNormalization(
            momentum=0.9, epsilon=1e-5, dtype=policy, name="batch_norm"
        )
        self.dropout = keras.layers.Dropout(dropout, dtype=policy)
        # float32 logits under mixed precision.
        self.classifier = keras.layers.Dense(
            num_classes,
            kernel_initializer=kernel_init(),
            dtype="float32",
            name="classifier",
        )

    def build(self, input_shape):
        if len(input_shape) != self.num_inputs:
            raise ValueError(
                f"SegFormerHead expects {self.num_inputs} feature maps. "
                f"Received {len(input_shape)}."
            )
        for layer, shape in zip(self.linear_c, input_shape):
            layer.build(shape)
        fused = tuple(input_shape[0][:-1]) + (
            self.decoder_hidden_size * self.num_inputs,
        )
        self.linear_fuse.build(fused)
        out = fused[:-1] + (self.decoder_hidden_size,)
        self.batch_norm.build(out)
        self.classifier.build(out)

    def call(self, features, training=None):
        # linear_fuse(concat([up(linear_c4(c4)), ..., linear_c1(c1)])) is
        # computed as sum_i up(c_i @ (K_i @ F_i) + b_i @ F_i), with F_i the
        # rows of the fuse kernel that multiply scale i. Projection, bilinear
        # resize (weights sum to 1) and the bias-free fuse are all linear,
        # so this is the same function; it skips the 4*D-channel concat at
        # 1/4 resolution and the widest matmul of the head.
        size = ops.shape(features[0])[1:3]
        dim = self.decoder_hidden_size
        fuse = ops.cast(self.linear_fuse.kernel, self.compute_dtype)
        x = None
        for i, (feature, linear) in enumerate(zip(features, self.linear_c)):
            j = self.num_inputs - 1 - i  # concat order is [c4, c3, c2, c1]
            rows = fuse[j * dim : (j + 1) * dim]
            kernel = ops.matmul(
                ops.cast(linear.kernel, self.compute_dtype), rows
            )
            bias = ops.matmul(
                ops.cast(linear.bias, self.compute_dtype)[None], rows
            )[0]
            y = ops.matmul(feature, kernel) + bias
            if i > 0:
                y = resize_bilinear(y, size)
            x = y if x is None else x + y
        x = ops.relu(self.batch_norm(x, training=training))
        x = self.dropout(x, training=training)
        return nn.dense(self.classifier, x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.num_classes,)

    def get_config(self):
        names = ("num_classes", "decoder_hidden_size", "num_inputs")
        config = attribute_config(self, names, dropout="dropout_rate")
        return {**super().get_config(), **config}
