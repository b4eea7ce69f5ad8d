"""The decode head of mmsegmentation's own SegFormer (``SegformerHead``)."""

import keras
from keras import ops

from keras_segformer.layers.base_head import BaseDecodeHead, batch_norm
from keras_segformer.layers.drop_path import drop


@keras.saving.register_keras_serializable(package="keras_segformer")
class MMSegSegFormerHead(BaseDecodeHead):
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

    def _create_layers(self):
        policy = self.dtype_policy
        self.convs = self._per_input(
            lambda name: self._dense(name, use_bias=False), "conv{}"
        )
        self.conv_norms = self._per_input(
            lambda name: batch_norm(name, policy), "conv{}_bn"
        )
        self.fusion_conv = self._dense("fusion_conv", use_bias=False)
        self.fusion_norm = batch_norm("fusion_bn", policy)
        # nn.Dropout2d drops whole channels.
        self.dropout = keras.layers.SpatialDropout2D(
            self.dropout_rate, dtype=policy
        )
        self.classifier = self._classifier()

    def build(self, input_shape):
        self._check_inputs(input_shape)
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
        dim = self.decoder_hidden_size
        fuse = self.fusion_conv.kernel

        def scale(i, feature, conv, norm):
            y = ops.relu(norm(conv(feature), training=training))
            rows = ops.cast(fuse[i * dim : (i + 1) * dim], y.dtype)
            return ops.matmul(y, rows)

        layers = zip(features, self.convs, self.conv_norms)
        x = self._sum_at(
            (scale(i, *each) for i, each in enumerate(layers)),
        )
        x = ops.relu(self.fusion_norm(x, training=training))
        x = drop(self.dropout, x, training)
        return self._float32(self.classifier(x))
