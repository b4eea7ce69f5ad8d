"""All-MLP decode head of SegFormer."""

import keras
from keras import ops

from keras_segformer.layers.base_head import BaseDecodeHead, batch_norm
from keras_segformer.layers.drop_path import drop
from keras_segformer.ops import nn
from keras_segformer.ops.layer_call import Dropout


@keras.saving.register_keras_serializable(package="keras_segformer")
class SegFormerHead(BaseDecodeHead):
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

    def _create_layers(self):
        policy = self.dtype_policy
        self.linear_c = self._per_input(self._dense, "linear_c{}")
        self.linear_fuse = self._dense("linear_fuse", use_bias=False)
        self.batch_norm = batch_norm("batch_norm", policy)
        self.dropout = Dropout(self.dropout_rate, dtype=policy)
        self.classifier = self._classifier()

    def build(self, input_shape):
        self._check_inputs(input_shape)
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
        # 1/4 resolution and the widest matmul of the head. Where the batch
        # norm uses its moving statistics it is an affine map too, folded
        # into the same kernels: one pass less over the full-size map.
        norm = self.batch_norm
        folded = not (training and norm.trainable)
        projections = nn.derived_weights(
            self, lambda: self._projections(folded), key=folded
        )
        x = self._sum_at(
            (
                nn.affine(feature, kernel, bias)
                for feature, (kernel, bias) in zip(features, projections)
            ),
        )
        if not folded:
            x = nn.batch_norm(norm, x, training)
        x = nn.relu(x)
        x = drop(self.dropout, x, training)
        return self._float32(nn.dense(self.classifier, x))

    def _projections(self, folded):
        """``(kernel, bias)`` of each scale, in input order: ``linear_c{i}``
        followed by its rows of the fuse kernel, and the batch norm where
        ``folded``."""
        dim = self.decoder_hidden_size
        fuse, _ = nn.kernel_and_bias(self.linear_fuse)
        affine = _affine(self.batch_norm) if folded else None
        projections = []
        for i, linear in enumerate(self.linear_c):
            j = self.num_inputs - 1 - i  # concat order is [c4, c3, c2, c1]
            rows = fuse[j * dim : (j + 1) * dim]
            kernel, bias = nn.kernel_and_bias(linear)
            kernel = nn.matmul(kernel, rows)
            bias = nn.matmul(bias[None], rows)[0]
            if affine is not None:
                kernel, bias = _fold(kernel, bias, *affine, shift=i == 0)
            projections.append((kernel, bias))
        return projections


def _affine(norm):
    """The batch norm at inference as ``x * scale + shift`` (float32):
    ``(x - mean) * (gamma / sqrt(variance + epsilon)) + beta``."""
    variables = (norm.moving_mean, norm.moving_variance, norm.gamma, norm.beta)
    mean, variance, gamma, beta = (ops.cast(v, "float32") for v in variables)
    scale = gamma * ops.rsqrt(variance + norm.epsilon)
    return scale, beta - mean * scale


def _fold(kernel, bias, scale, shift_value, shift):
    """``kernel`` and ``bias`` followed by ``x * scale (+ shift_value)``,
    computed in float32 and returned in the kernel's dtype."""
    dtype = kernel.dtype
    kernel = ops.cast(kernel, "float32") * scale
    bias = ops.cast(bias, "float32") * scale
    if shift:
        bias = bias + shift_value
    return ops.cast(kernel, dtype), ops.cast(bias, dtype)
