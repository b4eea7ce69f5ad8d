"""The decode head of mmsegmentation's own SegFormer (``SegformerHead``)."""

import keras
from keras import ops

from keras_segformer.configs import check_positive_int, check_rate
from keras_segformer.layers.init import kernel_init
from keras_segformer.ops.resize import resize_bilinear
from keras_segformer.serializable import attribute_config


def _batch_norm(name, policy):
    # PyTorch BatchNorm2d: eps 1e-5, momentum 0.1 (= Keras momentum 0.9).
    return keras.layers.BatchNormalization(
        momentum=0.9, epsilon=1e-5, dtype=policy, name=name
    )


@keras.saving.register_keras_serializable(package="keras_segformer")
class MMSegSegFormerHead(keras.layers.Layer):
    """mmsegmentation's SegFormer head: conv-BN-ReLU per scale, then fuse.

    Unlike the all-MLP head of the paper and transformers
    (``SegFormerHead``), each feature map ``c_i`` goes through a bias-free
    1x1 convolution, BatchNorm and ReLU (``decode_head.convs.{i}``), is
    resized bilinearly to the size of ``c1`` (``align_corners=False``),
    the maps are concatenated in the order ``[c1, c2, c3, c4]`` and fused
    by a bias-free 1x1 convolution, BatchNorm and ReLU
    (``decode_head.fusion_conv``); channel dropout (``nn.Dropout2d``) and a
    1x1 convolution (``decode_head.conv_seg``) give the logits. Checkpoints
    of mmsegmentation's model zoo (``segformer_mit-b*``) need this head.

    Args:
        num_classes: int. Output channels (logits).
        decoder_hidden_size: int. Channels of every conv (mmseg's
            ``channels``).
        dropout: float. Channel dropout before the classifier.
        num_inputs: int. Number of feature maps (stages).

    Example:
    >>> model = keras_segformer.build_segformer(19, "b0", head="mmseg")
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
        # A 1x1 convolution is a per-pixel Dense; Dense skips the conv setup.
        self.convs = [
            keras.layers.Dense(
                decoder_hidden_size,
                use_bias=False,
                kernel_initializer=kernel_init(),
                dtype=policy,
                name=f"conv{i + 1}",
            )
            for i in range(num_inputs)
        ]
        self.conv_norms = [
            _batch_norm(f"conv{i + 1}_bn", policy) for i in range(num_inputs)
        ]
        self.fusion_conv = keras.layers.Dense(
            decoder_hidden_size,
            use_bias=False,
            kernel_initializer=kernel_init(),
            dtype=policy,
            name="fusion_conv",
        )
        self.fusion_norm = _batch_norm("fusion_bn", policy)
        # nn.Dropout2d drops whole channels.
        self.dropout = keras.layers.SpatialDropout2D(dropout, dtype=policy)
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
                f"MMSegSegFormerHead expects {self.num_inputs} feature maps. "
                f"Received {len(input_shape)}."
            )
        dim = self.decoder_hidden_size
        for conv, norm, shape in zip(self.convs, self.conv_norms, input_shape):
            conv.build(shape)
            norm.build(tuple(shape[:-1]) + (dim,))
        out = tuple(input_shape[0][:-1]) + (dim,)
        self.fusion_conv.build(out[:-1] + (dim * self.num_inputs,))
        self.fusion_norm.build(out)
        self.classifier.build(out)

    def call(self, features, training=None):
        # fusion_conv(concat([up(y1), ..., up(y4)])) is computed as
        # sum_i up(y_i @ F_i), with F_i the rows of the fusion kernel that
        # multiply scale i: resizing and channel mixing commute, so each
        # scale is mixed at its own resolution and the 4*D-channel concat
        # at 1/4 resolution is never built.
        size = ops.shape(features[0])[1:3]
        dim = self.decoder_hidden_size
        fuse = self.fusion_conv.kernel
        x = None
        for i, (feature, conv, norm) in enumerate(
            zip(features, self.convs, self.conv_norms)
        ):
            y = ops.relu(norm(conv(feature), training=training))
            rows = ops.cast(fuse[i * dim : (i + 1) * dim], y.dtype)
            y = ops.matmul(y, rows)
            if i > 0:
                y = resize_bilinear(y, size)
            x = y if x is None else x + y
        x = ops.relu(self.fusion_norm(x, training=training))
        x = self.dropout(x, training=training)
        return self.classifier(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.num_classes,)

    def get_config(self):
        names = ("num_classes", "decoder_hidden_size", "num_inputs")
        config = attribute_config(self, names, dropout="dropout_rate")
        return {**super().get_config(), **config}
