"""Layer normalization over channels, with a lean backward pass on JAX."""

import functools

import keras


@keras.saving.register_keras_serializable(package="keras_segformer")
class LayerNorm(keras.layers.LayerNormalization):
    """``keras.layers.LayerNormalization`` (same arguments, variables and
    numbers) whose JAX gradient keeps only the input and two per-position
    statistics.

    Keras writes the normalization as ``x * inv + (beta - mean * inv)``
    with ``inv = gamma * rsqrt(var + eps)`` broadcast to the input's size;
    autodiff of that kept five maps of the input's size per norm until the
    backward pass (25 MB per norm of B0's first stage at batch 2, and a MiT
    stage has two per block). Here the backward pass is written out from
    the input, its mean and its reciprocal standard deviation. The variance
    is the two-pass ``mean((x - mean)^2)``, as in PyTorch. Other backends
    and other axes use Keras' layer.
    """

    def call(self, inputs):
        axes = [self.axis] if isinstance(self.axis, int) else list(self.axis)
        rank = len(inputs.shape)
        if (
            keras.backend.backend() == "jax"
            and len(axes) == 1
            and axes[0] in (-1, rank - 1)
            and self.center
            and self.scale
            and not self.rms_scaling
        ):
            out = _layer_norm_jax(float(self.epsilon))(
                inputs, self.gamma.value, self.beta.value
            )
            return keras.ops.cast(out, self.compute_dtype)
        return super().call(inputs)


@functools.cache
def _layer_norm_jax(epsilon):
    import jax
    import jax.numpy as jnp

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
