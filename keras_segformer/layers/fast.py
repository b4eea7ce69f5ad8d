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

import functools

import keras
import numpy as np
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
        y = _depthwise_jax(ops.cast(x, layer.compute_dtype), kernel[..., 0])
        return y if bias is None else y + bias
    return layer(x)


def gelu(x):
    """Exact (erf) GELU, ``ops.gelu(x, approximate=False)``.

    On JAX the derivative is written out, so the backward pass keeps only
    ``x``; autodiff through ``erf`` kept two more maps of its size (an
    exponential and a select), 34 MB each per Mix-FFN of B0's first stage
    at batch 2.
    """
    if _backend() == "jax":
        return _gelu_jax()(x)
    return ops.gelu(x, approximate=False)


def _shifted_sum(padded, kernel, height, width):
    """``sum_ij padded[:, i:i+height, j:j+width] * kernel[i, j]``."""
    kh, kw = kernel.shape[:2]
    y = None
    for i in range(kh):
        for j in range(kw):
            term = padded[:, i : i + height, j : j + width] * kernel[i, j]
            y = term if y is None else y + term
    return y


@functools.cache
def _depthwise_vjp():
    """A depthwise convolution for JAX (``"same"`` padding, stride 1, odd
    kernel ``(kh, kw, channels)``) as nine shifted multiply-adds, which XLA
    fuses into one loop.

    Autodiff of those shifted slices saves every slice for the kernel's
    gradient: nine copies of the input (150 MB per Mix-FFN of B0's first
    stage at batch 2, a third of a training step's activations). The
    backward pass here keeps only the input and the kernel: the input
    gradient is the shifted sum of the padded output gradient with the
    kernel flipped, and each kernel tap's gradient is the sum of the input
    times one of those shifted slices.
    """
    import jax
    import jax.numpy as jnp

    def pads(kernel):
        kh, kw = kernel.shape[:2]
        return ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0))

    @jax.custom_vjp
    def conv(x, kernel):
        padded = jnp.pad(x, pads(kernel))
        return _shifted_sum(padded, kernel, x.shape[1], x.shape[2])

    def forward(x, kernel):
        return conv(x, kernel), (x, kernel)

    def backward(saved, grad):
        x, kernel = saved
        height, width = x.shape[1], x.shape[2]
        kh, kw = kernel.shape[:2]
        # With g padded like x, both gradients read the same nine shifted
        # slices of g: dx = sum_ij g_ij * kernel[i, j] and
        # dkernel[i, j] = sum(g_ij * x), g_ij the slice at
        # (kh - 1 - i, kw - 1 - j). Slicing g rather than x also keeps XLA
        # from computing the slices early, in the forward pass, and
        # holding them until the backward pass.
        grad_padded = jnp.pad(grad, pads(kernel))
        dx, dkernel = None, []
        for i in range(kh):
            row = []
            for j in range(kw):
                a, b = kh - 1 - i, kw - 1 - j
                g = grad_padded[:, a : a + height, b : b + width]
                term = g * kernel[i, j]
                dx = term if dx is None else dx + term
                row.append(jnp.sum(g * x, axis=(0, 1, 2)))
            dkernel.append(jnp.stack(row))
        return dx, jnp.stack(dkernel).astype(kernel.dtype)

    conv.defvjp(forward, backward)
    return conv


def _depthwise_jax(x, kernel):
    return _depthwise_vjp()(x, kernel)


@functools.cache
def _gelu_jax():
    import jax
    import jax.numpy as jnp

    @jax.custom_vjp
    def gelu(x):
        return jax.nn.gelu(x, approximate=False)

    def forward(x):
        return gelu(x), x

    def backward(x, grad):
        # d/dx x * Phi(x) = Phi(x) + x * phi(x)
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        cdf = 0.5 * (1.0 + jax.lax.erf(xf * np.float32(0.5**0.5)))
        pdf = jnp.exp(-0.5 * xf * xf) * np.float32((2.0 * np.pi) ** -0.5)
        return ((grad * (cdf + xf * pdf)).astype(x.dtype),)

    gelu.defvjp(forward, backward)
    return gelu
