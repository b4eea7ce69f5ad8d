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

import functools

import keras
import numpy as np
import torch
import torch.nn.functional as F
from keras import ops

from keras_segformer.ops import attention as attention_ops
from keras_segformer.ops import inference, losses, nn
from keras_segformer.ops import optimizer as optimizer_ops
from keras_segformer.ops import resize as resize_ops
from keras_segformer.ops._torch_weights import (
    DTYPES,
    derived,
    layer_weights,
    plain_reads,
    policy_of,
    read,
)

_LINEAR = keras.activations.linear


def _conv_nhwc(x, dtype, weight, bias, **kwargs):
    """``F.conv2d`` on the channels-last map through its NCHW
    ``channels_last`` view; the result is channels-last again, no copy."""
    x = (x if x.dtype == dtype else x.to(dtype)).permute(0, 3, 1, 2)
    return F.conv2d(x, weight, bias, **kwargs).permute(0, 2, 3, 1)


@inference.no_autograd.register("torch", "cpu")
def no_autograd():
    return torch.inference_mode()


# NumPy dtypes a predict_batch input becomes a tensor of without a copy.
_SHARED_DTYPES = (np.float32, np.float64, np.float16, np.uint8)


@inference.predict_batch.register("torch", "cpu")
def predict_batch(model, x):
    """Keras' PyTorch ``predict_on_batch`` (its predict function: no
    gradient, ``predict_step``, ``torch.compile`` where asked), on a NumPy
    array's tensor without Keras' copy, the outputs out without
    ``np.array`` (slow through ``__array__``); the same numbers."""
    if isinstance(x, np.ndarray):
        if x.dtype not in _SHARED_DTYPES or not x.flags.writeable:
            return None  # (torch warns about read-only memory)
        x = torch.from_numpy(x)
    model.make_predict_function()
    return keras.tree.map_structure(_to_numpy, model.predict_function([(x,)]))


def _to_numpy(x):
    """``keras.ops.convert_to_numpy(x)``; a contiguous float32 CPU tensor
    that records no gradient (the logits) as ``x.numpy()``."""
    if (
        isinstance(x, torch.Tensor)
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and not x.requires_grad
        and x.is_contiguous()
    ):
        return x.numpy()
    return ops.convert_to_numpy(x)


@nn.kernel_and_bias.register("torch", "cpu")
def kernel_and_bias(layer):
    weights = layer_weights(layer)
    if weights is None:
        return nn.kernel_and_bias.generic(layer)
    return weights[:2]


@nn.matmul.register("torch", "cpu")
def matmul(a, b):
    if a.dtype != b.dtype:
        return nn.matmul.generic(a, b)
    return torch.matmul(a, b)


@nn.dense.register("torch", "cpu")
def dense(layer, x):
    weights = layer_weights(layer)
    if weights is None or layer.activation is not _LINEAR:
        return nn.dense.generic(layer, x)
    kernel, bias, dtype = weights
    x = x if x.dtype == dtype else x.to(dtype)  # Keras' input autocast
    units = kernel.shape[1]
    if (
        dtype == torch.float32
        and units % 16
        and x.numel() >= _PAD_FROM * x.shape[-1]
        and not torch.is_grad_enabled()  # (a kept padded kernel)
    ):
        kernel, bias = derived(kernel, "padded", lambda: _pad(kernel, bias))
        return F.linear(x, kernel, bias)[..., :units]
    return F.linear(x, kernel.T, bias)


# Rows (positions) from which a float32 projection pads its kernel.
_PAD_FROM = 4096


def _pad(kernel, bias):
    """``kernel.T`` and ``bias`` with zero rows up to a multiple of 16
    outputs: oneDNN's float32 GEMM takes 1.7x as long for 150 outputs as
    for 160 (the classifier at 1/4 of a 512x512 input)."""
    units = kernel.shape[1]
    rows = -units % 16
    weight = F.pad(kernel.T, (0, 0, 0, rows)).contiguous()
    bias = None if bias is None else F.pad(bias, (0, rows))
    return weight, bias


@nn.conv2d.register("torch", "cpu")
def conv2d(layer, x, padding=0):
    weights = layer_weights(layer)
    if weights is None:
        return nn.conv2d.generic(layer, x, padding=padding)
    kernel, bias, dtype = weights
    # (kh, kw, in, out) -> (out, in, kh, kw)
    return _conv_nhwc(
        x,
        dtype,
        kernel.permute(3, 2, 0, 1),
        bias,
        stride=layer.strides,
        padding=padding,
    )


@nn.depthwise_conv2d.register("torch", "cpu")
def depthwise_conv2d(layer, x):
    weights = layer_weights(layer, layer.kernel)
    if weights is None:
        return nn.depthwise_conv2d.generic(layer, x)
    kernel, bias, dtype = weights
    # (kh, kw, channels, 1) -> (channels, 1, kh, kw)
    return _conv_nhwc(
        x,
        dtype,
        kernel.permute(2, 3, 0, 1),
        bias,
        padding=layer.kernel_size[0] // 2,
        groups=kernel.shape[2],
    )


@nn.gelu.register("torch", "cpu")
def gelu(x):
    return F.gelu(x)  # what ops.gelu(x, approximate=False) runs


def _upcast(t, dtype):
    return t if t.dtype == dtype else t.to(dtype)


@nn.layer_norm.register("torch", "cpu")
def layer_norm(layer, x):
    """``keras.layers.LayerNormalization.call``: in at least float32,
    ``F.layer_norm`` over the last axis, back to the input's dtype, then
    to the compute dtype."""
    if layer.rms_scaling or layer.axis not in (-1, [-1], len(x.shape) - 1):
        return nn.layer_norm.generic(layer, x)
    dtype = x.dtype
    policy = policy_of(layer)
    compute = None if policy is None else DTYPES.get(policy.compute_dtype)
    if compute is None:
        return nn.layer_norm.generic(layer, x)
    plain = plain_reads()
    if dtype == compute == torch.bfloat16:
        # The bfloat16 kernel computes in float32 and rounds once, as the
        # float32 path below followed by its cast back does, without two
        # copies of the map.
        gamma, beta = (
            None if v is None else read(v, compute, plain)
            for v in (layer.gamma, layer.beta)
        )
        return torch.layer_norm(x, (x.shape[-1],), gamma, beta, layer.epsilon)
    y = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    # Keras reads gamma and beta in the compute dtype, then upcasts.
    gamma, beta = (
        None if v is None else _upcast(read(v, compute, plain), y.dtype)
        for v in (layer.gamma, layer.beta)
    )
    # torch.layer_norm: the kernel F.layer_norm calls, without its
    # Python wrapper's checks
    y = torch.layer_norm(y, (y.shape[-1],), gamma, beta, layer.epsilon)
    return _upcast(_upcast(y, dtype), compute)


@nn.batch_norm.register("torch", "cpu")
def batch_norm(layer, x, training=None):
    """``keras.layers.BatchNormalization.call`` at inference
    (``training=False``; anything else runs the layer): in at least
    float32, ``(x - mean) * (rsqrt(var + eps) * gamma) + beta`` with the
    moving statistics, as Keras' PyTorch ``batch_normalization`` writes
    it, then the compute dtype."""
    policy = policy_of(layer)
    if (
        training is not False
        or policy is None
        or layer.axis not in (-1, len(x.shape) - 1)
        or getattr(layer, "renorm", False)  # (Keras 3.14+)
        or not (layer.scale and layer.center)
    ):
        return nn.batch_norm.generic(layer, x, training=training)
    compute = DTYPES.get(policy.compute_dtype)
    y = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    plain = plain_reads()
    # gamma and beta autocast to the compute dtype (Keras reads them inside
    # the layer's scope); the moving statistics do not.
    gamma, beta = (
        _upcast(read(v, compute, plain), y.dtype)
        for v in (layer.gamma, layer.beta)
    )
    mean, variance = (
        read(v, y.dtype, plain)
        for v in (layer.moving_mean, layer.moving_variance)
    )
    y = y.sub(mean).mul_(variance.add(layer.epsilon).rsqrt_().mul(gamma))
    return _upcast(y.add_(beta), compute)


@nn.affine.register("torch", "cpu")
def affine(x, kernel, bias):
    """One ``addmm`` (the bias added in the GEMM, no second map)."""
    if not x.dtype == kernel.dtype == bias.dtype:
        return nn.affine.generic(x, kernel, bias)
    y = torch.addmm(bias, x.reshape(-1, x.shape[-1]), kernel)
    return y.view(*x.shape[:-1], kernel.shape[-1])


@resize_ops.add_resized.register("torch", "cpu")
def add_resized(x, y):
    """Into ``x`` where no gradient is recorded: no new full-size map
    (each one's fresh pages cost more than the sum). In bfloat16, from 4x
    on, the resize is two GEMMs whose second adds into ``x``
    (``baddbmm``): bilinear weights at such factors are exact in
    bfloat16; the rows resized along the height are rounded to bfloat16
    once more than in resize-then-add (within 2**-8 of the largest value
    of ``y`` nearby, bfloat16's own precision)."""
    if torch.is_grad_enabled() or x.dtype != y.dtype or not x.is_contiguous():
        return resize_ops.add_resized.generic(x, y)
    n, height, width, channels = x.shape
    h, w = y.shape[1:3]
    if x.dtype != torch.bfloat16 or h * 4 > height or w * 4 > width:
        return x.add_(resize_ops.resize_bilinear(y, (height, width)))
    rows, cols = (
        _lerp_matrix(*sizes, x.dtype) for sizes in ((h, height), (w, width))
    )
    tall = torch.matmul(rows, y.reshape(n, h, w * channels))
    torch.baddbmm(
        x.view(n * height, width, channels),
        cols.expand(n * height, width, w),
        tall.view(n * height, w, channels),
        out=x.view(n * height, width, channels),
    )
    return x


@functools.lru_cache(maxsize=64)
def _lerp_matrix(n_in, n_out, dtype):
    """``(n_out, n_in)``: bilinear resize along one axis as a matrix."""
    i0, i1, frac = resize_ops.source_indices(n_in, n_out)
    matrix = np.zeros((n_out, n_in), np.float32)
    np.add.at(matrix, (np.arange(n_out), i0), 1 - frac)
    np.add.at(matrix, (np.arange(n_out), i1), frac)
    return torch.from_numpy(matrix).to(dtype)


@nn.relu.register("torch", "cpu")
def relu(x):
    return torch.relu(x)  # what ops.relu runs


@nn.reshape.register("torch", "cpu")
def reshape(x, shape):
    return torch.reshape(x, tuple(shape))


@resize_ops.resize_bilinear.register("torch", "cpu")
def resize_bilinear(x, size):
    """Keras' PyTorch ``image.resize`` (bilinear, no antialiasing) on a
    channels-last batch: ``F.interpolate`` in float32, float64 or bfloat16."""
    static = resize_ops.static_size(size)
    if not isinstance(x, torch.Tensor):
        x = ops.convert_to_tensor(x)
    if static is None or not x.is_floating_point():
        return resize_ops.resize_bilinear.generic(x, size)
    dtype = x.dtype
    # bfloat16 in, bfloat16 out: the kernel interpolates in float32 and
    # rounds once, as the float32 resize and its cast back do, without
    # the two copies of the map.
    native = (torch.float32, torch.float64, torch.bfloat16)
    y = x if dtype in native else x.float()
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
    if q.dtype == torch.bfloat16 and not torch.is_grad_enabled():
        # bfloat16 inference: two bfloat16 GEMMs around a softmax that
        # reduces in float32 (torch's CPU kernel); the fused kernel's
        # bfloat16 path is slower than its own float32 one on CPU.
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
        probs = torch.softmax(scores, -1)
        return torch.matmul(probs, v).transpose(2, 1)
    return F.scaled_dot_product_attention(q, k, v).transpose(2, 1)


@losses.softmax_cross_entropy.register("torch", "cpu")
def softmax_cross_entropy(logits, labels):
    logits = ops.convert_to_tensor(logits)
    labels = ops.convert_to_tensor(labels).long()
    rank = logits.dim()
    # Class axis second; for a channels-last tensor this is a view.
    perm = (0, rank - 1, *range(1, rank - 1)) if rank > 2 else (0, 1)
    return F.cross_entropy(logits.permute(perm), labels, reduction="none")


def _tensors(variables, plain):
    if plain:
        values = [getattr(v, "_value", None) for v in variables]
        if not any(value is None for value in values):
            return values
    return [v.value for v in variables]


# On CPU the update runs on ~64K elements at a time: each op then reads
# what the op before it left in cache (whole groups streamed B0's 15 MB of
# weights, slots and gradients through memory a dozen times per step). On
# a GPU each op is one multi-tensor launch over the group.
_CPU_CHUNK = 1 << 16


def _chunks(tensors, limit):
    """Slices of ``tensors`` holding at least ``limit`` elements each (the
    last may hold fewer); one slice of everything when ``limit`` is None."""
    if limit is None:
        yield slice(None)
        return
    start = size = 0
    for i, tensor in enumerate(tensors):
        size += tensor.numel()
        if size >= limit or i == len(tensors) - 1:
            yield slice(start, i + 1)
            start, size = i + 1, 0


@optimizer_ops.adamw_update.register("torch", "cpu", "gpu")
def adamw_update(
    variables,
    grads,
    momentums,
    velocities,
    alpha,
    decay,
    beta_1,
    beta_2,
    epsilon,
    velocity_hats=None,
):
    """The generic formulas with ``torch._foreach_*`` (what Keras' own
    PyTorch Adam runs on every device, and ``torch.optim`` by default on
    CUDA), so the same bits: a few hundred calls per step instead of a
    dozen ``keras.ops`` calls per variable (B0's ``apply`` on CPU takes
    about a third of the time; docs/design.md)."""
    plain = plain_reads()
    params = _tensors(variables, plain)
    lists = [
        params,
        [
            g if g.dtype == params[0].dtype else g.to(params[0].dtype)
            for g in grads
        ],
        _tensors(momentums, plain),
        _tensors(velocities, plain),
        _tensors(velocity_hats, plain) if velocity_hats else None,
    ]
    limit = _CPU_CHUNK if params[0].device.type == "cpu" else None
    with torch.no_grad():
        for part in _chunks(params, limit):
            _adamw_foreach(
                *(t if t is None else t[part] for t in lists),
                alpha,
                decay,
                1 - beta_1,
                1 - beta_2,
                epsilon,
            )


def _adamw_foreach(params, grads, ms, vs, hats, alpha, decay, w1, w2, eps):
    if decay is not None:
        torch._foreach_sub_(params, torch._foreach_mul(params, decay))
    delta = torch._foreach_sub(grads, ms)
    torch._foreach_mul_(delta, w1)
    torch._foreach_add_(ms, delta)
    delta = torch._foreach_mul(grads, grads)
    torch._foreach_sub_(delta, vs)
    torch._foreach_mul_(delta, w2)
    torch._foreach_add_(vs, delta)
    if hats is not None:
        torch._foreach_maximum_(hats, vs)
        vs = hats
    denominator = torch._foreach_sqrt(vs)
    torch._foreach_add_(denominator, eps)
    step = torch._foreach_mul(ms, alpha)
    torch._foreach_div_(step, denominator)
    torch._foreach_sub_(params, step)
