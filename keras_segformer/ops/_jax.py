"""JAX fast versions, measured on CPU (XLA:CPU, the 2-core development
machine). Most of them keep less for the backward pass than autodiff
would (written-out gradients, ``jax.checkpoint``); the figures are in
each docstring.
"""

import functools

import jax
import jax.numpy as jnp
import keras
import numpy as np
from keras import ops

from keras_segformer.ops import attention as attention_ops
from keras_segformer.ops import inference, losses, nn, resize


def shifted_sum(padded, kernel, height, width):
    """``sum_ij padded[:, i:i+height, j:j+width] * kernel[i, j]``."""
    kh, kw = kernel.shape[:2]
    y = None
    for i in range(kh):
        for j in range(kw):
            term = padded[:, i : i + height, j : j + width] * kernel[i, j]
            y = term if y is None else y + term
    return y


def _same_pads(kernel):
    kh, kw = kernel.shape[:2]
    return ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0))


@jax.custom_vjp
def depthwise(x, kernel):
    """A depthwise convolution (``"same"`` padding, stride 1, odd kernel
    ``(kh, kw, channels)``) as nine shifted multiply-adds, which XLA fuses
    into one loop: XLA:CPU lowers ``feature_group_count = channels`` to a
    slow generic loop (about 18x slower for one 3x3 over a
    (1, 128, 128, 128) map; docs/design.md).

    Autodiff of those shifted slices saves every slice for the kernel's
    gradient: nine copies of the input (150 MB per Mix-FFN of B0's first
    stage at batch 2, a third of a training step's activations). The
    backward pass here keeps only the input and the kernel: the input
    gradient is the shifted sum of the padded output gradient with the
    kernel flipped, and each kernel tap's gradient is the sum of the input
    times one of those shifted slices.
    """
    padded = jnp.pad(x, _same_pads(kernel))
    return shifted_sum(padded, kernel, x.shape[1], x.shape[2])


def _depthwise_forward(x, kernel):
    return depthwise(x, kernel), (x, kernel)


def _depthwise_backward(saved, grad):
    x, kernel = saved
    height, width = x.shape[1], x.shape[2]
    kh, kw = kernel.shape[:2]
    # With g padded like x, both gradients read the same nine shifted
    # slices of g: dx = sum_ij g_ij * kernel[i, j] and
    # dkernel[i, j] = sum(g_ij * x), g_ij the slice at
    # (kh - 1 - i, kw - 1 - j). Slicing g rather than x also keeps XLA
    # from computing the slices early, in the forward pass, and
    # holding them until the backward pass.
    grad_padded = jnp.pad(grad, _same_pads(kernel))
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


depthwise.defvjp(_depthwise_forward, _depthwise_backward)


@nn.depthwise_conv2d.register("jax", "cpu")
def depthwise_conv2d(layer, x):
    if x.shape[1] is None or x.shape[2] is None:
        return nn.depthwise_conv2d.generic(layer, x)
    kernel, bias = nn.kernel_and_bias(layer)
    y = depthwise(ops.cast(x, layer.compute_dtype), kernel[..., 0])
    return y if bias is None else y + bias


@jax.custom_vjp
def _gelu(x):
    return jax.nn.gelu(x, approximate=False)


def _gelu_backward(x, grad):
    # d/dx x * Phi(x) = Phi(x) + x * phi(x)
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    cdf = 0.5 * (1.0 + jax.lax.erf(xf * np.float32(0.5**0.5)))
    pdf = jnp.exp(-0.5 * xf * xf) * np.float32((2.0 * np.pi) ** -0.5)
    return ((grad * (cdf + xf * pdf)).astype(x.dtype),)


_gelu.defvjp(lambda x: (_gelu(x), x), _gelu_backward)


@nn.gelu.register("jax", "cpu")
def gelu(x):
    """Exact GELU whose backward pass keeps only ``x``: autodiff through
    ``erf`` kept two more maps of its size (an exponential and a select),
    34 MB each per Mix-FFN of B0's first stage at batch 2."""
    return _gelu(x)


@nn.layer_norm.register("jax", "cpu")
def layer_norm(layer, x):
    """Keras' layer norm (same variables and numbers) whose gradient keeps
    only the input and two per-position statistics.

    Keras writes the normalization as ``x * inv + (beta - mean * inv)``
    with ``inv = gamma * rsqrt(var + eps)`` broadcast to the input's size;
    autodiff of that kept five maps of the input's size per norm until the
    backward pass (25 MB per norm of B0's first stage at batch 2, and a MiT
    stage has two per block). Here the backward pass is written out from
    the input, its mean and its reciprocal standard deviation. The variance
    is the two-pass ``mean((x - mean)^2)``, as in PyTorch. Other axes and
    options use Keras' layer.
    """
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    rank = len(x.shape)
    if (
        len(axes) == 1
        and axes[0] in (-1, rank - 1)
        and layer.center
        and layer.scale
        and not layer.rms_scaling
    ):
        out = _layer_norm(float(layer.epsilon))(
            x, layer.gamma.value, layer.beta.value
        )
        return ops.cast(out, layer.compute_dtype)
    return nn.layer_norm.generic(layer, x)


@functools.cache
def _layer_norm(epsilon):
    def normalize(x, gamma, beta):
        """The output, and the mean and rstd the backward pass keeps."""
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean = jnp.mean(x, axis=-1, keepdims=True)
        centered = x - mean
        var = jnp.mean(centered * centered, axis=-1, keepdims=True)
        rstd = jax.lax.rsqrt(var + epsilon)
        out = centered * rstd * gamma.astype(x.dtype) + beta.astype(x.dtype)
        return out, mean, rstd

    @jax.custom_vjp
    def norm(x, gamma, beta):
        return normalize(x, gamma, beta)[0]

    def forward(x, gamma, beta):
        out, mean, rstd = normalize(x, gamma, beta)
        return out, (x, mean, rstd, gamma, beta)

    def backward(saved, grad):
        x, mean, rstd, gamma, beta = saved
        xhat = (x.astype(mean.dtype) - mean) * rstd
        grad = grad.astype(mean.dtype)
        reduce = tuple(range(x.ndim - 1))
        dgamma = jnp.sum(grad * xhat, axis=reduce)
        dbeta = jnp.sum(grad, axis=reduce)
        g = grad * gamma.astype(grad.dtype)
        dx = rstd * (
            g
            - jnp.mean(g, axis=-1, keepdims=True)
            - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True)
        )
        return (
            dx.astype(x.dtype),
            dgamma.astype(gamma.dtype),
            dbeta.astype(beta.dtype),
        )

    norm.defvjp(forward, backward)
    return norm


# Most score elements (batch x heads x queries x keys) one attention call
# holds before queries go in chunks: 2**22 floats = 16 MB.
SCORE_CHUNK = 2**22


@attention_ops.attention.register("jax", "cpu")
def attention(q, k, v, training=False):
    """Batched matmuls, queries in chunks when the score matrix would be
    large.

    ``jax.nn.dot_product_attention`` writes ``probs @ v`` as the einsum
    ``BNTS,BSNH->BTNH``, which XLA:CPU runs ~10x slower than the same
    product with the heads as a leading batch axis (stage 1 of B0 at
    1024x2048). Softmax is per query row, so each
    chunk computes exactly the rows it would in one call; chunks of at most
    ``SCORE_CHUNK`` scores run one after another in a ``lax.map`` (a loop
    in the compiled program, differentiable) instead of holding the whole
    matrix (1 GB for that stage). Shapes unknown at trace
    time take one call.

    With ``training=True`` each chunk is recomputed in the backward pass
    (``jax.checkpoint``) and its probabilities are ``exp(scores -
    logsumexp(scores))``: a B0 training step at batch 2 then keeps no
    score-sized maps between the passes (it kept three per block, 170 MB
    in all).
    """
    batch, queries, heads, dim = q.shape
    keys = k.shape[1]
    scale = jnp.asarray(dim**-0.5, q.dtype)
    k, v = (jnp.swapaxes(t, 1, 2) for t in (k, v))  # (B, heads, keys, dim)

    def attend(block):  # (B, rows, heads, dim) -> same
        block = jnp.swapaxes(block * scale, 1, 2)
        scores = jnp.matmul(block, jnp.swapaxes(k, 2, 3))
        scores = scores.astype("float32")
        if training:
            # One score-sized map kept for the backward pass, where
            # softmax's exp / sum kept the sum broadcast to full size too.
            lse = jax.nn.logsumexp(scores, -1, keepdims=True)
            probs = jnp.exp(scores - lse)
        else:  # 20-40% faster than the above
            probs = jax.nn.softmax(scores, axis=-1)
        out = jnp.matmul(probs.astype(v.dtype), v)
        return jnp.swapaxes(out, 1, 2)

    if training:
        # Scores and probabilities are recomputed in the backward pass,
        # chunk by chunk where there are chunks.
        attend = jax.checkpoint(attend)
    if None in (batch, queries, keys):
        return attend(q)
    rows = max(8, SCORE_CHUNK // (batch * heads * keys))
    if training and queries >= 16:
        # At least two chunks: XLA inlines a one-trip loop and then hoists
        # the recomputation into the forward pass, keeping its maps.
        rows = min(rows, -(-queries // 2))
    if queries <= rows:
        return attend(q)
    chunks = -(-queries // rows)
    rows = -(-queries // chunks)  # even chunks, least padding
    padded = jnp.pad(q, ((0, 0), (0, chunks * rows - queries), (0, 0), (0, 0)))
    blocks = jnp.moveaxis(padded.reshape(batch, chunks, rows, heads, dim), 1, 0)
    out = jnp.moveaxis(jax.lax.map(attend, blocks), 0, 1)
    return out.reshape(batch, chunks * rows, heads, dim)[:, :queries]


def lerp_take(x, i0, i1, frac, axis):
    """``x[i0] + (x[i1] - x[i0]) * frac`` along ``axis``.

    Two gathers forward. Backward, the gathers' own transpose is a
    scatter-add, which XLA:CPU runs serially (twice the time of the
    matmul for one decoder upsampling of B0; docs/design.md); here it
    is one matmul with the interpolation matrix instead (two non-zeros
    per row), which is the same sum.

    Args:
        x: array.
        i0, i1: int arrays ``(size,)``, source indices (may be traced).
        frac: float array ``(size,)``, the weight of ``x[i1]``.
        axis: int, the axis interpolated.
    """
    shape = [1] * x.ndim
    shape[axis] = -1

    @jax.custom_vjp
    def lerp(x, i0, i1, frac):
        w = jnp.reshape(frac.astype(x.dtype), shape)
        a = jnp.take(x, i0, axis=axis)
        b = jnp.take(x, i1, axis=axis)
        return a + (b - a) * w

    def forward(x, i0, i1, frac):
        return lerp(x, i0, i1, frac), (i0, i1, frac)

    def backward(saved, grad):
        i0, i1, frac = saved
        n = x.shape[axis]
        frac = frac.astype(grad.dtype)[:, None]
        matrix = (1 - frac) * jax.nn.one_hot(i0, n, dtype=grad.dtype)
        matrix = matrix + frac * jax.nn.one_hot(i1, n, dtype=grad.dtype)
        dx = jnp.tensordot(
            grad, matrix, axes=[[axis], [0]], precision="highest"
        )
        return jnp.moveaxis(dx, -1, axis), None, None, None

    lerp.defvjp(forward, backward)
    return lerp(x, jnp.asarray(i0), jnp.asarray(i1), jnp.asarray(frac))


def _axis_lerp(x, size, axis):
    """Linear interpolation along one axis with static sizes: exactly
    torch's ``align_corners=False`` formula."""
    n_in = x.shape[axis]
    if n_in == size:
        return x
    return lerp_take(x, *resize.source_indices(n_in, size), axis)


@resize.resize_bilinear.register("jax", "cpu")
def resize_bilinear(x, size):
    """Shapes are static under jit. Two gathers per axis compile in a
    fraction of the time of ``jax.image.resize``'s dense kernels."""
    h, w = (int(s) for s in size)
    return _axis_lerp(_axis_lerp(x, h, 1), w, 2)


@losses.banded.register("jax", "cpu")
def banded(logits, height, width, band, score, labels=None, recompute=False):
    """The bands as one ``lax.map`` (XLA keeps the iterations in sequence;
    unrolled bands were scheduled side by side, as large as one map). Each
    band gathers its rows from the 1/4-resolution logits itself; with
    ``recompute`` it is recomputed in the backward pass."""
    count = -(-height // band)
    padded = count * band
    i0, i1, frac = resize.source_indices(logits.shape[1], height)
    # Pad the last band by repeating the last row; its output is dropped.
    extra = padded - height
    i0, i1, frac = (
        np.pad(a, (0, extra), mode="edge").reshape(count, band)
        for a in (i0, i1, frac)
    )
    xs = {"i0": i0, "i1": i1, "frac": frac.astype(logits.dtype)}
    if labels is not None:
        labels = jnp.pad(labels, ((0, 0), (0, extra), (0, 0)))
        xs["labels"] = jnp.moveaxis(
            labels.reshape(labels.shape[0], count, band, width), 1, 0
        )

    def one_band(x):
        rows = lerp_take(logits, x["i0"], x["i1"], x["frac"], axis=1)
        return score(
            resize.resize_bilinear(rows, (band, width)), x.get("labels")
        )

    out = jax.lax.map(jax.checkpoint(one_band) if recompute else one_band, xs)
    out = jnp.moveaxis(out, 0, 1)
    return out.reshape(out.shape[0], padded, *out.shape[3:])[:, :height]


@inference.eager_calls_first.register("jax", "cpu")
def eager_calls_first(x):
    """0 (see the op) for a NumPy array or a concrete ``jax.Array`` (not a
    tracer of ``jax.jit``, ``jax.grad`` or ``vmap``)."""
    if isinstance(x, np.ndarray) or (
        isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
    ):
        return 0
    return None


@inference.compiled_forward.register("jax", "cpu")
def compiled_forward(model, example, variables):
    """``jax.jit`` of the inference call in a ``keras.StatelessScope`` (as
    ``stateless_call`` runs it), the variables' current values passed on
    each call, as Keras' predict step does."""

    def forward(values, x):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return model(x, training=False)

    jitted = jax.jit(forward)
    return lambda x: jitted([v.value for v in variables], x)
