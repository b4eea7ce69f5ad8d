"""Per-backend fast paths for the model's projections and convolutions.

Each helper computes what calling the Keras layer computes, with the
layer's own variables (so checkpoints, paths and weight loading do not
change), through the kernel the backend runs best. Measured on the 2-core
CPU this project is developed on:

- PyTorch: Keras converts every convolution input to a contiguous NCHW
  copy and back (``_transpose_spatial_inputs``), and adds the Dense bias in
  a separate pass. ``x.permute(0, 3, 1, 2)`` of a channels-last tensor is
  already a ``torch.channels_last`` NCHW view that oneDNN convolves without
  a copy, and ``F.linear`` fuses the bias into the matrix multiply. Those
  copies and adds were 40% of a B0 forward pass.
- JAX: XLA:CPU lowers a depthwise convolution (``feature_group_count =
  channels``) to a slow generic loop: 183 ms for one 3x3 over a
  (1, 128, 128, 128) map, against 10 ms for the same nine shifted
  multiply-adds, which XLA fuses into one loop.
- TensorFlow: the Keras layers already map to fused oneDNN kernels.

Outside those cases (other backends, symbolic shapes) the layer is called.
"""

import keras
from keras import ops


def _backend():
    return keras.backend.backend()


def _kernel_and_bias(layer):
    dtype = layer.compute_dtype
    kernel = ops.cast(layer.kernel, dtype)
    bias = ops.cast(layer.bias, dtype) if layer.use_bias else None
    return kernel, bias


def _torch_conv_nhwc(layer, x, weight, bias, **kwargs):
    """``F.conv2d`` on the channels-last map through its NCHW
    ``channels_last`` view; the result is channels-last again, no copy."""
    import torch.nn.functional as F

    x = ops.cast(x, layer.compute_dtype).permute(0, 3, 1, 2)
    return F.conv2d(x, weight, bias, **kwargs).permute(0, 2, 3, 1)


def dense(layer, x):
    """``layer(x)`` for a ``keras.layers.Dense`` without activation."""
    if _backend() == "torch" and layer.activation is keras.activations.linear:
        import torch.nn.functional as F

        kernel, bias = _kernel_and_bias(layer)
        x = ops.cast(x, layer.compute_dtype)  # Keras' input autocast
        return F.linear(x, kernel.T, bias)
    return layer(x)


def conv2d(layer, x, padding=0):
    """``layer(pad(x))`` for a ``keras.layers.Conv2D`` with ``"valid"``
    padding, where ``pad`` adds ``padding`` zeros on every side."""
    if _backend() == "torch":
        kernel, bias = _kernel_and_bias(layer)
        # (kh, kw, in, out) -> (out, in, kh, kw)
        return _torch_conv_nhwc(
            layer,
            x,
            kernel.permute(3, 2, 0, 1),
            bias,
            stride=layer.strides,
            padding=padding,
        )
    if padding:
        p = padding
        x = ops.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    return layer(x)


def depthwise_conv2d(layer, x):
    """``layer(x)`` for a ``keras.layers.DepthwiseConv2D`` with an odd
    square kernel, stride 1, ``"same"`` padding and depth multiplier 1."""
    backend = _backend()
    if backend == "torch":
        kernel, bias = _kernel_and_bias(layer)
        # (kh, kw, channels, 1) -> (channels, 1, kh, kw)
        return _torch_conv_nhwc(
            layer,
            x,
            kernel.permute(2, 3, 0, 1),
            bias,
            padding=layer.kernel_size[0] // 2,
            groups=kernel.shape[2],
        )
    height, width = x.shape[1], x.shape[2]
    if backend == "jax" and height is not None and width is not None:
        kernel, bias = _kernel_and_bias(layer)
        kh, kw = layer.kernel_size
        ph, pw = kh // 2, kw // 2
        padded = ops.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
        y = None
        for i in range(kh):
            for j in range(kw):
                term = (
                    padded[:, i : i + height, j : j + width]
                    * kernel[i, j, :, 0]
                )
                y = term if y is None else y + term
        return y if bias is None else y + bias
    return layer(x)
