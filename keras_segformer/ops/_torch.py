"""PyTorch fast versions, measured on CPU (the 2-core development machine).

Keras converts every convolution input to a contiguous NCHW copy and back
(``_transpose_spatial_inputs``), and adds the Dense bias in a separate
pass. ``x.permute(0, 3, 1, 2)`` of a channels-last tensor is already a
``torch.channels_last`` NCHW view that oneDNN convolves without a copy,
and ``F.linear`` fuses the bias into the matrix multiply. Those copies and
adds were 40% of a B0 forward pass. ``F.cross_entropy`` is the fused
sparse cross-entropy kernel (see ``losses.py``).

Per-call cost: for small inputs every ``keras.ops`` call (its symbolic
check flattens the arguments with torch's pytree) costs more than the
kernel. Casts, layer norm, GELU and attention here call torch directly,
with the conversions and kernels ``keras.ops`` uses on PyTorch, so the
numbers are the same.
"""

import keras
import torch
import torch.nn.functional as F
from keras import ops

from keras_segformer.ops import attention as attention_ops
from keras_segformer.ops import losses, nn
from keras_segformer.ops import resize as resize_ops

_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def _cast(x, dtype):
    """``ops.cast(x, dtype)`` for a float tensor or ``keras.Variable``
    (its ``value``, autocast included) and a float dtype name."""
    torch_dtype = _DTYPES.get(dtype)
    if torch_dtype is None:
        return ops.cast(x, dtype)
    if isinstance(x, keras.Variable):
        x = x.value
    return x if x.dtype == torch_dtype else x.to(torch_dtype)


def _kernel_and_bias(layer):
    """``nn.kernel_and_bias`` without ``keras.ops``."""
    dtype = layer.compute_dtype
    bias = _cast(layer.bias, dtype) if layer.use_bias else None
    return _cast(layer.kernel, dtype), bias


def _conv_nhwc(layer, x, weight, bias, **kwargs):
    """``F.conv2d`` on the channels-last map through its NCHW
    ``channels_last`` view; the result is channels-last again, no copy."""
    x = _cast(x, layer.compute_dtype).permute(0, 3, 1, 2)
    return F.conv2d(x, weight, bias, **kwargs).permute(0, 2, 3, 1)


@nn.dense.register("torch", "cpu")
def dense(layer, x):
    if layer.activation is not keras.activations.linear:
        return nn.dense.generic(layer, x)
    kernel, bias = _kernel_and_bias(layer)
    x = _cast(x, layer.compute_dtype)  # Keras' input autocast
    return F.linear(x, kernel.T, bias)


@nn.conv2d.register("torch", "cpu")
def conv2d(layer, x, padding=0):
    kernel, bias = _kernel_and_bias(layer)
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
    kernel, bias = _kernel_and_bias(layer)
    # (kh, kw, channels, 1) -> (channels, 1, kh, kw)
    return _conv_nhwc(
        layer,
        x,
        kernel.permute(2, 3, 0, 1),
        bias,
        padding=layer.kernel_size[0] // 2,
        groups=kernel.shape[2],
    )


@nn.gelu.register("torch", "cpu")
def gelu(x):
    return F.gelu(x)  # what ops.gelu(x, approximate=False) runs


@nn.layer_norm.register("torch", "cpu")
def layer_norm(layer, x):
    """``keras.layers.LayerNormalization.call``: in at least float32,
    ``F.layer_norm`` over the last axis, back to the input's dtype, then
    to the compute dtype."""
    if layer.rms_scaling or layer.axis not in (-1, [-1], len(x.shape) - 1):
        return nn.layer_norm.generic(layer, x)
    dtype = x.dtype
    y = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    gamma = None if layer.gamma is None else layer.gamma.value.to(y.dtype)
    beta = None if layer.beta is None else layer.beta.value.to(y.dtype)
    y = F.layer_norm(y, (y.shape[-1],), gamma, beta, layer.epsilon)
    return _cast(y.to(dtype), layer.compute_dtype)


@nn.reshape.register("torch", "cpu")
def reshape(x, shape):
    return torch.reshape(x, tuple(shape))


@resize_ops.resize_bilinear.register("torch", "cpu")
def resize_bilinear(x, size):
    """Keras' PyTorch ``image.resize`` (bilinear, no antialiasing) on a
    channels-last batch: ``F.interpolate`` in float32 or float64."""
    static = resize_ops.static_size(size)
    if not isinstance(x, torch.Tensor):
        x = ops.convert_to_tensor(x)
    if static is None or not x.is_floating_point():
        return resize_ops.resize_bilinear.generic(x, size)
    dtype = x.dtype
    y = x if dtype in (torch.float32, torch.float64) else x.float()
    y = F.interpolate(
        y.permute(0, 3, 1, 2),
        size=static,
        mode="bilinear",
        align_corners=False,
        antialias=False,
    ).permute(0, 2, 3, 1)
    return y.to(dtype)


@attention_ops.attention.register("torch", "cpu")
def attention(q, k, v, training=False):
    """Keras' PyTorch ``dot_product_attention`` on CPU (no flash kernel):
    heads first, contiguous, ``F.scaled_dot_product_attention``."""
    if not q.dtype == k.dtype == v.dtype:
        return attention_ops.attention.generic(q, k, v, training=training)
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(2, 1)


@losses.softmax_cross_entropy.register("torch", "cpu")
def softmax_cross_entropy(logits, labels):
    logits = ops.convert_to_tensor(logits)
    labels = ops.convert_to_tensor(labels).long()
    rank = logits.dim()
    # Class axis second; for a channels-last tensor this is a view.
    perm = (0, rank - 1, *range(1, rank - 1)) if rank > 2 else (0, 1)
    return F.cross_entropy(logits.permute(perm), labels, reduction="none")
