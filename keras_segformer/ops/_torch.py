"""PyTorch fast versions, measured on CPU (the 2-core development machine).

Keras converts every convolution input to a contiguous NCHW copy and back
(``_transpose_spatial_inputs``), and adds the Dense bias in a separate
pass. ``x.permute(0, 3, 1, 2)`` of a channels-last tensor is already a
``torch.channels_last`` NCHW view that oneDNN convolves without a copy,
and ``F.linear`` fuses the bias into the matrix multiply. Those copies and
adds were 40% of a B0 forward pass. ``F.cross_entropy`` is the fused
sparse cross-entropy kernel (see ``losses.py``).
"""

import keras
import torch.nn.functional as F
from keras import ops

from keras_segformer.ops import losses, nn


def _conv_nhwc(layer, x, weight, bias, **kwargs):
    """``F.conv2d`` on the channels-last map through its NCHW
    ``channels_last`` view; the result is channels-last again, no copy."""
    x = ops.cast(x, layer.compute_dtype).permute(0, 3, 1, 2)
    return F.conv2d(x, weight, bias, **kwargs).permute(0, 2, 3, 1)


@nn.dense.register("torch", "cpu")
def dense(layer, x):
    if layer.activation is not keras.activations.linear:
        return nn.dense.generic(layer, x)
    kernel, bias = nn.kernel_and_bias(layer)
    x = ops.cast(x, layer.compute_dtype)  # Keras' input autocast
    return F.linear(x, kernel.T, bias)


@nn.conv2d.register("torch", "cpu")
def conv2d(layer, x, padding=0):
    kernel, bias = nn.kernel_and_bias(layer)
    # (kh, kw, in, out) -> (out, in, kh, kw)
    return _conv_nhwc(
        layer,
        x,
        kernel.permute(3, 2, 0, 1),
        bias,
        stride=layer.strides,
        padding=padding,
    )


@nn.depthwise_conv2d.register("torch", "cpu")
def depthwise_conv2d(layer, x):
    kernel, bias = nn.kernel_and_bias(layer)
    # (kh, kw, channels, 1) -> (channels, 1, kh, kw)
    return _conv_nhwc(
        layer,
        x,
        kernel.permute(2, 3, 0, 1),
        bias,
        padding=layer.kernel_size[0] // 2,
        groups=kernel.shape[2],
    )


@losses.softmax_cross_entropy.register("torch", "cpu")
def softmax_cross_entropy(logits, labels):
    logits = ops.convert_to_tensor(logits)
    labels = ops.convert_to_tensor(labels).long()
    rank = logits.dim()
    # Class axis second; for a channels-last tensor this is a view.
    perm = (0, rank - 1, *range(1, rank - 1)) if rank > 2 else (0, 1)
    return F.cross_entropy(logits.permute(perm), labels, reduction="none")
