"""The backend fast paths equal their generic keras.ops spelling."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_segformer.ops import losses as kernels
from keras_segformer.ops.resize import resize_bilinear


def _generic_ce(logits, labels):
    picked = ops.take_along_axis(logits, ops.expand_dims(labels, -1), -1)
    return ops.logsumexp(logits, axis=-1) - picked[..., 0]


def _value_and_grad(fn, x, labels):
    """Sum of ``fn(x, labels)`` and its gradient w.r.t. ``x``, natively."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = tf.reduce_sum(fn(x, labels))
        return value.numpy(), tape.gradient(value, x).numpy()
    if backend == "jax":
        import jax

        value, grad = jax.value_and_grad(lambda t: fn(t, labels).sum())(x)
        return np.asarray(value), np.asarray(grad)
    import torch

    x = torch.tensor(x, requires_grad=True)
    value = fn(x, torch.as_tensor(labels)).sum()
    value.backward()
    return value.detach().numpy(), x.grad.numpy()


def test_softmax_cross_entropy_matches_generic():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7, 11)).astype("float32") * 4
    labels = rng.integers(0, 11, size=(2, 5, 7)).astype("int32")
    fast = ops.convert_to_numpy(kernels.softmax_cross_entropy(logits, labels))
    slow = ops.convert_to_numpy(_generic_ce(logits, labels))
    assert fast.shape == (2, 5, 7)
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-5)

    value, grad = _value_and_grad(kernels.softmax_cross_entropy, logits, labels)
    ref_value, ref_grad = _value_and_grad(_generic_ce, logits, labels)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-6)
    # d/dx = softmax - one_hot: each position's gradient sums to zero.
    np.testing.assert_allclose(grad.sum(-1), 0.0, atol=1e-5)


def test_argmax_matches_keras():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 9, 13, 6)).astype("float32")
    x[0, 0, 0] = [0.0, -0.0, -1.0, -2.0, -3.0, -4.0]
    fast = ops.convert_to_numpy(kernels.argmax(x))
    np.testing.assert_array_equal(fast, np.argmax(x, axis=-1))
    dtype = ops.convert_to_tensor(kernels.argmax(x)).dtype
    assert keras.backend.standardize_dtype(dtype) == "int32"


def test_chunked_attention_equals_one_call(monkeypatch):
    """Attention with queries in chunks (JAX, large score matrices) gives
    the single call's numbers; TensorFlow's batched-matmul attention too."""
    rng = np.random.default_rng(0)
    # 97 queries: chunks of 25 + padding; 3 heads, 13 keys.
    q, k, v = (
        rng.standard_normal((2, n, 3, 8)).astype("float32")
        for n in (97, 13, 13)
    )
    expected = ops.convert_to_numpy(ops.dot_product_attention(q, k, v))
    if keras.backend.backend() == "jax":
        from keras_segformer.ops import _jax

        monkeypatch.setattr(_jax, "SCORE_CHUNK", 2 * 3 * 13 * 25)
        got = _jax.attention(q, k, v)
    elif keras.backend.backend() == "tensorflow":
        from keras_segformer.ops import _tensorflow

        got = _tensorflow.attention(q, k, v)
    else:
        pytest.skip("PyTorch uses keras.ops.dot_product_attention as is")
    got = ops.convert_to_numpy(got)
    assert got.shape == expected.shape == (2, 97, 3, 8)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "low, high",
    [((7, 9), (29, 35)), ((8, 8), (32, 32)), ((5, 6), (5, 23))],
    ids=["non-square-odd", "square-x4", "width-only"],
)
def test_banded_upsampling_equals_the_full_map(monkeypatch, low, high):
    """The loss and metric kernels that widen the logits in bands of rows
    give the numbers of one full-resolution map: values, gradients and
    classes, with a last band shorter than the others."""
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, *low, 11)).astype("float32") * 3
    labels = rng.integers(0, 11, size=(2, *high)).astype("int32")

    def whole(x, y):
        return kernels.softmax_cross_entropy(resize_bilinear(x, high), y)

    ref_value, ref_grad = _value_and_grad(whole, logits, labels)
    ref_classes = np.argmax(
        ops.convert_to_numpy(resize_bilinear(logits, high)), axis=-1
    )
    # Bands of 4 rows (2 x 4 x W x 11 elements): 8 or 9 bands, the last
    # one shorter.
    monkeypatch.setattr(kernels, "BAND_ELEMENTS", 2 * 4 * high[1] * 11)
    value, grad = _value_and_grad(
        kernels.upsampled_cross_entropy, logits, labels
    )
    per_pixel = kernels.upsampled_cross_entropy(logits, labels)
    assert tuple(per_pixel.shape) == (2, *high)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-5)
    classes = ops.convert_to_numpy(kernels.upsampled_argmax(logits, high))
    assert classes.shape == (2, *high)
    assert keras.backend.standardize_dtype(classes.dtype) == "int32"
    # Different float rounding may flip a near tie; no more than that.
    assert (classes == ref_classes).mean() > 0.999


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="XLA memory analysis (JAX)"
)
def test_banded_loss_gradient_holds_no_full_resolution_map(monkeypatch):
    """Compiled loss + gradient at 4x upsampling: XLA's scratch memory stays
    below ONE full-resolution logit map, and a third of what the same loss
    needs without bands (several maps)."""
    import jax

    from keras_segformer.training import SegFormerLoss

    logits = np.zeros((2, 64, 64, 150), "float32")
    labels = np.zeros((2, 256, 256), "int32")
    full_map = 2 * 256 * 256 * 150 * 4  # bytes

    def scratch():
        fn = jax.jit(jax.grad(lambda x: SegFormerLoss()(labels, x)))
        return fn.lower(logits).compile().memory_analysis().temp_size_in_bytes

    banded = scratch()
    monkeypatch.setattr(kernels, "BAND_ELEMENTS", 2**40)  # one band
    whole = scratch()
    assert banded < full_map < whole, (banded, full_map, whole)
    assert 3 * banded < whole, (banded, whole)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX resize")
@pytest.mark.parametrize("axis, size", [(1, 23), (2, 4), (1, 5)])
def test_lerp_take_gradient_is_the_gathers_gradient(axis, size):
    """The JAX resize's matmul backward equals autodiff through the two
    gathers (a scatter-add), for up- and downsampling, under jit."""
    import jax
    import jax.numpy as jnp

    from keras_segformer.ops._jax import lerp_take
    from keras_segformer.ops.resize import source_indices

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 7, 9, 3)).astype("float32")
    weights = rng.normal(size=(2, 7, 9, 3)).astype("float32")
    i0, i1, frac = source_indices(x.shape[axis], size)
    out_shape = list(x.shape)
    out_shape[axis] = size
    cotangent = rng.normal(size=out_shape).astype("float32")

    def plain(t):
        w = np.reshape(frac, [-1 if d == axis else 1 for d in range(4)])
        a, b = jnp.take(t, i0, axis=axis), jnp.take(t, i1, axis=axis)
        return a + (b - a) * w

    def custom(t):
        return lerp_take(t, i0, i1, frac, axis)

    np.testing.assert_allclose(custom(x * weights), plain(x * weights))
    grads = [
        jax.jit(jax.grad(lambda t, f=fn: (f(t) * cotangent).sum()))(x)
        for fn in (plain, custom)
    ]
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="symbolic TF shapes"
)
def test_banded_kernels_accept_symbolic_sizes(monkeypatch):
    """In a TensorFlow graph whose logits (or labels) have unknown spatial
    sizes, the kernels fall back to one map and give the same numbers."""
    import tensorflow as tf

    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 7, 9, 5)).astype("float32")
    labels = rng.integers(0, 5, size=(2, 29, 35)).astype("int32")
    monkeypatch.setattr(kernels, "BAND_ELEMENTS", 2 * 4 * 35 * 5)
    expected = ops.convert_to_numpy(
        kernels.upsampled_cross_entropy(logits, labels)
    )
    for logit_spec, label_spec in [
        ((2, None, None, 5), (2, 29, 35)),
        ((2, 7, 9, 5), (2, None, None)),
    ]:
        fn = tf.function(
            kernels.upsampled_cross_entropy,
            input_signature=[
                tf.TensorSpec(logit_spec, "float32"),
                tf.TensorSpec(label_spec, "int32"),
            ],
        )
        np.testing.assert_allclose(
            fn(logits, labels).numpy(), expected, rtol=1e-5, atol=1e-5
        )


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX attention")
def test_training_attention_gradient_equals_plain_softmax(monkeypatch):
    """The training attention (recomputed chunks, exp(s - logsumexp))
    gives the plain softmax attention's output and gradients."""
    import jax
    import jax.numpy as jnp

    from keras_segformer.ops import _jax

    monkeypatch.setattr(_jax, "SCORE_CHUNK", 2 * 3 * 13 * 25)
    rng = np.random.default_rng(4)
    q, k, v = (
        rng.standard_normal((2, n, 3, 8)).astype("float32")
        for n in (97, 13, 13)
    )
    cotangent = rng.standard_normal((2, 97, 3, 8)).astype("float32")

    def loss(fn):
        return jax.jit(
            jax.value_and_grad(
                lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent), (0, 1, 2)
            )
        )(q, k, v)

    value, grads = loss(lambda q, k, v: _jax.attention(q, k, v, training=True))
    ref_value, ref_grads = loss(
        lambda q, k, v: jax.nn.dot_product_attention(q, k, v)
    )
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for got, expected in zip(grads, ref_grads):
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)


def _shifted_depthwise(x, kernel):
    """Autodiff reference: the depthwise convolution as shifted slices."""
    import jax.numpy as jnp

    from keras_segformer.ops import _jax

    kh, kw = kernel.shape[:2]
    pads = ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0))
    return _jax.shifted_sum(jnp.pad(x, pads), kernel, x.shape[1], x.shape[2])


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX depthwise")
@pytest.mark.parametrize(
    "kernel_size, shape", [(3, (2, 13, 9, 5)), (5, (1, 6, 11, 4))]
)
def test_depthwise_gradient_equals_autodiff(kernel_size, shape):
    """The depthwise convolution's written-out backward pass (slices of the
    padded output gradient) equals autodiff through the shifted slices,
    for the input and the kernel, at non-square sizes."""
    import jax
    import jax.numpy as jnp

    from keras_segformer.ops import _jax

    rng = np.random.default_rng(5)
    x = rng.normal(size=shape).astype("float32")
    kernel = rng.normal(size=(kernel_size, kernel_size, shape[-1]))
    kernel = kernel.astype("float32")
    cotangent = rng.normal(size=shape).astype("float32")

    def grads(fn):
        return jax.jit(
            jax.grad(lambda x, k: jnp.sum(fn(x, k) * cotangent), (0, 1))
        )(x, kernel)

    np.testing.assert_array_equal(
        _jax.depthwise(x, kernel), _shifted_depthwise(x, kernel)
    )
    for got, expected in zip(grads(_jax.depthwise), grads(_shifted_depthwise)):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX GELU")
def test_gelu_gradient_equals_autodiff():
    import jax
    import jax.numpy as jnp

    from keras_segformer.ops import _jax

    x = np.linspace(-8, 8, 2001).astype("float32")
    np.testing.assert_array_equal(
        _jax.gelu(x), jax.nn.gelu(x, approximate=False)
    )
    got = jax.grad(lambda t: jnp.sum(_jax.gelu(t)))(x)
    expected = jax.grad(lambda t: jnp.sum(jax.nn.gelu(t, approximate=False)))(x)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_mix_ffn_fast_path_equals_keras_layers():
    """Mix-FFN through the per-backend fast paths computes what its Keras
    layers compute (Dense, DepthwiseConv2D, exact GELU, Dense)."""
    from keras_segformer.layers.mix_ffn import MixFFN

    keras.utils.set_random_seed(6)
    layer = MixFFN(8, 24)
    x = np.random.default_rng(6).normal(size=(2, 7, 11, 8))
    x = x.astype("float32")
    got = ops.convert_to_numpy(layer(x))
    h = layer.dwconv(layer.dense1(x))
    expected = layer.dense2(ops.gelu(h, approximate=False))
    np.testing.assert_allclose(
        got, ops.convert_to_numpy(expected), atol=1e-5, rtol=0
    )


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="XLA buffer assignment"
)
def test_mix_ffn_gradient_keeps_few_maps():
    """Between the passes the Mix-FFN keeps its input, three maps of the
    expanded size (the first projection, the convolution, GELU) and its
    kernels: not the nine shifted copies of the convolution's input and
    GELU's two extra maps that autodiff kept. The compiled gradient's
    scratch memory shrinks with them."""
    import jax
    import jax.numpy as jnp

    from keras_segformer.layers.mix_ffn import MixFFN
    from keras_segformer.ops import _jax

    keras.utils.set_random_seed(7)
    layer = MixFFN(32, 128)
    x = np.random.default_rng(7).normal(size=(2, 64, 64, 32))
    x = x.astype("float32")
    layer.build(x.shape)
    values = [v.value for v in layer.trainable_variables]
    one_map = 2 * 64 * 64 * 128 * 4  # bytes

    def forward(values, x):
        return layer.stateless_call(values, [], x, training=True)[0]

    def kept_and_scratch():
        _, backward = jax.vjp(forward, values, x)
        kept = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(backward))
        fn = jax.jit(jax.grad(lambda v, x: jnp.sum(forward(v, x) ** 2)))
        compiled = fn.lower(values, x).compile()
        return kept, compiled.memory_analysis().temp_size_in_bytes

    kept, scratch = kept_and_scratch()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_jax, "depthwise", _shifted_depthwise)
        patch.setattr(
            _jax, "_gelu", lambda t: jax.nn.gelu(t, approximate=False)
        )
        plain_kept, plain_scratch = kept_and_scratch()
    assert 3 * one_map <= kept < 3.5 * one_map, (kept, one_map)
    assert plain_kept > 12 * one_map, (plain_kept, one_map)
    assert scratch < 0.7 * plain_scratch, (scratch, plain_scratch)


@pytest.mark.parametrize("shape", [(2, 5, 7, 24), (3, 40)])
def test_layer_norm_equals_keras_layer_norm(shape):
    """The project's LayerNorm gives Keras' LayerNormalization numbers and
    gradients (input, gamma, beta), with trained-looking gamma and beta."""
    from keras_segformer.layers import LayerNorm

    rng = np.random.default_rng(8)
    x = (rng.normal(size=shape) * 3 + 1).astype("float32")
    cotangent = rng.normal(size=shape).astype("float32")
    ours = LayerNorm(epsilon=1e-5)
    ref = keras.layers.LayerNormalization(epsilon=1e-5)
    ours.build(shape)
    ref.build(shape)
    gamma = rng.normal(size=shape[-1:]).astype("float32")
    beta = rng.normal(size=shape[-1:]).astype("float32")
    for layer in (ours, ref):
        layer.set_weights([gamma, beta])
    np.testing.assert_allclose(
        ops.convert_to_numpy(ours(x)),
        ops.convert_to_numpy(ref(x)),
        atol=2e-5,
        rtol=0,
    )
    if keras.backend.backend() != "jax":
        return  # the layer is Keras' own there
    import jax
    import jax.numpy as jnp

    def grads(layer):
        def loss(x, gamma, beta):
            out, _ = layer.stateless_call([gamma, beta], [], x)
            return jnp.sum(out * cotangent)

        return jax.jit(jax.grad(loss, (0, 1, 2)))(x, gamma, beta)

    for got, expected in zip(grads(ours), grads(ref)):
        np.testing.assert_allclose(got, expected, atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("low", [(8, 9), (16, 16), (20, 33)])
def test_add_resized_equals_add_of_resize(dtype, low):
    """x + resize(y) at x's size, inference (no gradient): PyTorch's fast
    version writes into x, and from 4x on in bfloat16 resizes with two
    GEMMs; the numbers are the generic sum's (to bfloat16's rounding)."""
    from keras_segformer.ops import inference
    from keras_segformer.ops.resize import add_resized

    rng = np.random.default_rng(3)
    x = ops.cast(rng.standard_normal((2, 64, 66, 5)), dtype)
    y = ops.cast(rng.standard_normal((2, *low, 5)), dtype)
    up = resize_bilinear(ops.cast(y, "float32"), (64, 66))
    up = ops.convert_to_numpy(up)
    x32 = ops.convert_to_numpy(ops.cast(x, "float32"))
    generic = add_resized.generic(x, y)
    generic = ops.convert_to_numpy(ops.cast(generic, "float32"))
    with inference.no_autograd():  # (x may be written: read it before)
        fast = ops.convert_to_numpy(ops.cast(add_resized(x, y), "float32"))
    if dtype == "float32":
        np.testing.assert_allclose(fast, x32 + up, atol=1e-5, rtol=1e-5)
    else:  # bfloat16 roundings of the terms and of the height-resized
        # rows, whose values reach max|y| (wrong weights: errors ~1), or
        # the generic bfloat16 version's own error where it is larger
        y_max = np.abs(ops.convert_to_numpy(ops.cast(y, "float32"))).max()
        bound = 2**-7 * (np.abs(x32) + y_max)
        bound = np.maximum(bound, np.abs(generic - (x32 + up)).max())
        assert (np.abs(fast - (x32 + up)) <= bound).all()
