"""keras_segformer.ops: the registry, the generic switch, and every op's
fast version against its generic keras.ops version on this backend."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import tiny_segformer
from hf_utils import HF_TINY, hf_forward, save_hf_model

import keras_segformer
from keras_segformer import ops as sf_ops
from keras_segformer.layers import LayerNorm
from keras_segformer.ops import (
    attention,
    checks,
    dispatch,
    inference,
    losses,
    nn,
)
from keras_segformer.ops import optimizer as optimizer_ops
from keras_segformer.ops import resize as resize_ops
from keras_segformer.training import SegFormerLoss

ALL_OPS = [
    value
    for module in (
        nn,
        attention,
        resize_ops,
        losses,
        checks,
        inference,
        optimizer_ops,
    )
    for value in vars(module).values()
    if isinstance(value, dispatch.Op)
]


def _numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _cotangent(shape):
    return np.random.default_rng(99).normal(size=shape).astype("float32")


def _value_and_grads(fn, inputs, variables=()):
    """``fn(*inputs)`` and the gradients of ``sum(fn(...) * cotangent)``
    with respect to ``inputs`` and ``variables``, with the backend's own
    autodiff (numpy out; one compiled function on JAX)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xs = [tf.convert_to_tensor(a) for a in inputs]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            out = fn(*xs)
            loss = tf.reduce_sum(out * _cotangent(out.shape))
        grads = tape.gradient(loss, xs + [v.value for v in variables])
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        def stateless(xs, values):  # BatchNorm's updates dropped
            mapping = list(zip(variables, values))
            with keras.StatelessScope(state_mapping=mapping):
                return fn(*xs)

        values = [v.value for v in variables]
        cot = _cotangent(jax.eval_shape(stateless, list(inputs), values).shape)

        def loss(xs, values):
            out = stateless(xs, values)
            return jnp.sum(out * cot), out

        step = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))
        (_, out), grads = step(list(inputs), values)
        grads = list(grads[0]) + list(grads[1])
    else:
        import torch

        xs = [torch.tensor(a, requires_grad=True) for a in inputs]
        out = fn(*xs)
        loss = (out * torch.as_tensor(_cotangent(out.shape))).sum()
        grads = torch.autograd.grad(loss, xs + [v.value for v in variables])
    return _numpy(out), [_numpy(g) for g in grads]


def _forward(fn, *args):
    """``fn(*args)`` as numpy; traced and compiled once on JAX, where
    eager calls compile op by op."""
    if keras.backend.backend() != "jax":
        return _numpy(fn(*args))
    import jax

    def pure(*args):
        with keras.StatelessScope():  # BatchNorm's updates dropped
            return fn(*args)

    return _numpy(jax.jit(pure)(*args))


def _both(op, call, inputs, variables=()):
    """(fast, generic) results of ``call(implementation, *inputs)``."""
    fast = op.implementation(mode="fast")
    return [
        _value_and_grads(lambda *a, f=f: call(f, *a), inputs, variables)
        for f in (fast, op.generic)
    ]


def _assert_close(got, expected, atol=1e-5):
    (out, grads), (ref_out, ref_grads) = got, expected
    assert out.shape == ref_out.shape
    np.testing.assert_allclose(out, ref_out, atol=atol, rtol=1e-5)
    assert len(grads) == len(ref_grads)
    for g, ref in zip(grads, ref_grads):
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(g, ref, atol=atol * scale, rtol=1e-4)


def _randn(*shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype("float32")


def _built(layer, shape, seed=0):
    layer.build(shape)
    rng = np.random.default_rng(seed)
    layer.set_weights(
        [rng.normal(size=w.shape).astype("float32") for w in layer.weights]
    )
    return layer


# -- the registry and the switch ---------------------------------------------


def test_parse_mode_accepts_the_documented_values_only():
    assert dispatch.parse_mode(None) == "fast"
    assert dispatch.parse_mode("") == "fast"
    assert dispatch.parse_mode("fast") == "fast"
    assert dispatch.parse_mode("generic") == "generic"
    for bad in ("Generic", "slow", "1"):
        with pytest.raises(ValueError, match="KERAS_SEGFORMER_OPS must be"):
            dispatch.parse_mode(bad)
    with pytest.raises(ValueError, match="'fast', 'generic'.*'slow'"):
        dispatch.parse_mode("slow")


def _import_with(value):
    env = {**os.environ, "KERAS_SEGFORMER_OPS": value}
    code = "import keras_segformer.ops as o; print('mode', o.mode())"
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_env_var_is_read_at_import_and_a_bad_value_refused():
    bad = _import_with("fastest")
    assert bad.returncode != 0
    assert "ValueError: KERAS_SEGFORMER_OPS must be one of 'fast', " in (
        bad.stderr
    )
    assert "Received: 'fastest'" in bad.stderr
    good = _import_with("generic")
    assert good.returncode == 0, good.stderr[-2000:]
    assert "mode generic" in good.stdout


def test_use_switches_every_op_and_restores_the_mode():
    assert sf_ops.mode() == "fast"
    with sf_ops.use("generic"):
        assert sf_ops.mode() == "generic"
        for op in ALL_OPS:
            if op.name != "assert_image_size":
                assert op.implementation() is op.generic, op
    assert sf_ops.mode() == "fast"
    with pytest.raises(RuntimeError), sf_ops.use("generic"):
        raise RuntimeError
    assert sf_ops.mode() == "fast"
    with pytest.raises(ValueError, match="`mode` must be one of"):
        with sf_ops.use("cuda"):
            pass


def test_registry_picks_by_backend_and_device_kind():
    backend = keras.backend.backend()
    other = "jax" if backend != "jax" else "torch"
    op = dispatch.op(lambda x: x)

    @op.register(backend, "cpu")
    def on_cpu(x):
        return x

    assert op.implementation(device="cpu") is on_cpu
    assert op.implementation(device="cpu", mode="generic") is op.generic
    assert op.implementation(device="gpu") is op.generic
    assert op.implementation(device="tpu") is op.generic
    assert op.implementation(backend=other, device="cpu") is op.generic
    with pytest.raises(ValueError, match="Device kind must be one of"):
        op.register(backend, "npu")
    # Nothing of today's was measured on an accelerator: every op is
    # generic there (TensorFlow's in-graph check is needed everywhere).
    for known in ALL_OPS:
        for kind in ("gpu", "tpu"):
            impl = known.implementation(device=kind)
            if known.name == "assert_image_size" and backend == "tensorflow":
                assert impl is not known.generic
            elif (known.name, backend, kind) == (
                "adamw_update",
                "torch",
                "gpu",
            ):
                # Keras' own PyTorch Adam runs torch._foreach_* everywhere.
                assert impl is known.implementation(device="cpu")
            else:
                assert impl is known.generic, (known, kind)


def test_device_kind_is_this_machines():
    kind = sf_ops.device_kind()
    assert kind in ("cpu", "gpu", "tpu")
    assert sf_ops.device_kind() is kind  # cached
    assert dispatch._platform_kind("cuda:0") == "gpu"
    assert dispatch._platform_kind("cpu") == "cpu"


_FIT_FIRST = """
import types
import numpy as np
from conftest import tiny_segformer
from keras_segformer import ops
from keras_segformer.ops import dispatch
model = tiny_segformer(num_classes=3)
x = np.zeros((2, 64, 64, 3), "float32")
model.fit(x, np.zeros((2, 64, 64), "int32"), verbose=0)
kind = dispatch.device_kind()
assert kind in dispatch.DEVICE_KINDS, kind
modules = [m for m in vars(ops).values() if isinstance(m, types.ModuleType)]
resolved = [
    op for m in modules for op in vars(m).values()
    if isinstance(op, dispatch.Op) and "fast" in op._resolved
]
assert len(resolved) > 5, resolved
for op in resolved:
    assert op._resolved["fast"] is op.implementation(device=kind), op
fast = [op for op in resolved if op._resolved["fast"] is not op.generic]
print("fast versions", len(fast))
"""


def test_fit_as_the_first_call_runs_the_fast_versions():
    """The device kind is read once per process; a first ``fit`` reads it
    inside Keras' symbolic calls (PyTorch's "meta" device), which once
    put every op of the process on its generic version."""
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": tests}
    result = subprocess.run(
        [sys.executable, "-c", _FIT_FIRST],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tests,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if sf_ops.device_kind() == "cpu":  # every backend has CPU versions
        assert int(result.stdout.split("fast versions")[-1]) > 0


def _forbid_fast_versions(monkeypatch):
    """Make every registered fast version (not the always-on ones) raise."""

    def refuse(*args, **kwargs):
        raise AssertionError("a fast version ran")

    for op in ALL_OPS:
        for key in list(op._fast):
            monkeypatch.setitem(op._fast, key, refuse)


def test_generic_mode_runs_no_fast_version(monkeypatch):
    model = tiny_segformer(num_classes=3)
    x = _randn(1, 45, 70, 3)
    labels = np.random.default_rng(0).integers(0, 3, (1, 45, 70))
    _forbid_fast_versions(monkeypatch)

    def step(x):
        return SegFormerLoss()(labels, model(x, training=True))

    with sf_ops.use("generic"):
        _forward(step, x)
    registered = any(
        key == (keras.backend.backend(), sf_ops.device_kind())
        for op in ALL_OPS
        for key in op._fast
    )
    if registered:  # and fast mode does use them
        with pytest.raises(AssertionError, match="a fast version ran"):
            _forward(step, x)


# -- each op: fast == generic, forward and gradients -------------------------


def test_dense():
    layer = _built(keras.layers.Dense(6), (2, 5, 7, 4))
    _assert_close(
        *_both(
            nn.dense,
            lambda f, x: f(layer, x),
            [_randn(2, 5, 7, 4)],
            layer.trainable_variables,
        )
    )


def test_kernel_and_bias():
    layer = _built(keras.layers.Dense(6), (2, 5))

    def flat(f):
        kernel, bias = f(layer)
        return keras.ops.concatenate([keras.ops.reshape(kernel, (-1,)), bias])

    _assert_close(
        *_both(nn.kernel_and_bias, flat, [], layer.trainable_variables)
    )


def test_batch_norm_at_inference():
    layer = _built(
        keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
        (2, 5, 7, 6),
    )
    layer.moving_variance.assign(np.abs(_randn(6, seed=3)) + 0.5)
    _assert_close(
        *_both(
            nn.batch_norm,
            lambda f, x: f(layer, x, training=False),
            [_randn(2, 5, 7, 6) * 2 + 1],
            layer.trainable_variables,
        )
    )


def test_relu():
    _assert_close(*_both(nn.relu, lambda f, x: f(x), [_randn(3, 50)]))


def test_matmul():
    _assert_close(
        *_both(
            nn.matmul,
            lambda f, a, b: f(a, b),
            [_randn(2, 5, 7, 4), _randn(4, 6, seed=1)],
        )
    )


def test_no_autograd_and_training_after_predict_on_batch():
    model = tiny_segformer(num_classes=3, dropout=0.0, drop_path_rate=0.0)
    x = _randn(2, 45, 70, 3)
    labels = np.random.default_rng(0).integers(0, 3, (2, 45, 70))
    fast = inference.no_autograd.implementation(mode="fast")
    if keras.backend.backend() == "torch" and sf_ops.device_kind() == "cpu":
        import torch

        with fast():
            assert torch.is_inference_mode_enabled()
        assert not torch.is_inference_mode_enabled()
    logits = model.predict_on_batch(x)
    with sf_ops.use("generic"):
        ref = model.predict_on_batch(x)
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=0)
    # Nothing of the model became an inference tensor: it still trains,
    # and its BatchNorm statistics move.
    before = [_numpy(v) for v in model.non_trainable_variables]
    model.train_on_batch(x, labels)
    model.train_on_batch(x, labels)
    after = [_numpy(v) for v in model.non_trainable_variables]
    assert any(not np.array_equal(a, b) for a, b in zip(after, before))
    assert np.isfinite(model.predict_on_batch(x)).all()


def test_float32_dense_inside_a_mixed_precision_call():
    # The decode head calls its float32 classifier through nn.dense inside
    # its own bfloat16 autocast scope: the weights are read as the
    # classifier's own call reads them, in float32 (not rounded to
    # bfloat16 by the enclosing scope).
    from keras.src.backend.common.variables import AutocastScope

    layer = _built(keras.layers.Dense(6, dtype="float32"), (2, 5))
    x = _randn(2, 5)
    kernel, bias = (_numpy(w) for w in layer.weights)
    with AutocastScope("bfloat16"):
        results = [
            _numpy(f(layer, keras.ops.convert_to_tensor(x)))
            for f in (nn.dense.implementation(mode="fast"), nn.dense.generic)
        ]
    for out in results:
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, x @ kernel + bias, atol=1e-5, rtol=0)


@pytest.mark.parametrize("padding", [0, 1, 3])
def test_conv2d(padding):
    layer = _built(keras.layers.Conv2D(6, 3, strides=2), (2, 11, 13, 4))
    _assert_close(
        *_both(
            nn.conv2d,
            lambda f, x: f(layer, x, padding=padding),
            [_randn(2, 9, 11, 4)],
            layer.trainable_variables,
        )
    )


def test_depthwise_conv2d():
    layer = _built(
        keras.layers.DepthwiseConv2D(3, padding="same"), (2, 7, 9, 5)
    )
    _assert_close(
        *_both(
            nn.depthwise_conv2d,
            lambda f, x: f(layer, x),
            [_randn(2, 7, 9, 5)],
            layer.trainable_variables,
        )
    )


def test_gelu():
    x = np.linspace(-8, 8, 2001).astype("float32").reshape(3, 667)
    _assert_close(*_both(nn.gelu, lambda f, x: f(x), [x]), atol=1e-6)


def test_layer_norm():
    layer = _built(LayerNorm(epsilon=1e-5), (2, 5, 7, 8))
    x = _randn(2, 5, 7, 8) * 3 + 1
    _assert_close(
        *_both(
            nn.layer_norm,
            lambda f, x: f(layer, x),
            [x],
            layer.trainable_variables,
        )
    )


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("heads", [1, 3])
def test_attention(training, heads):
    q = _randn(2, 37, heads, 8, seed=1)
    k, v = _randn(2, 13, heads, 8, seed=2), _randn(2, 13, heads, 8, seed=3)
    _assert_close(
        *_both(
            attention.attention,
            lambda f, *a: f(*a, training=training),
            [q, k, v],
        )
    )


def test_reshape():
    _assert_close(
        *_both(
            nn.reshape, lambda f, x: f(x, (2, -1, 3, 4)), [_randn(2, 5, 6, 12)]
        )
    )


@pytest.mark.parametrize("size", [(29, 35), (4, 5), (7, 23)])
def test_resize_bilinear(size):
    _assert_close(
        *_both(
            resize_ops.resize_bilinear,
            lambda f, x: f(x, size),
            [_randn(2, 7, 9, 5) * 3],
        )
    )


def test_softmax_cross_entropy():
    labels = np.random.default_rng(4).integers(0, 11, (2, 5, 7))
    _assert_close(
        *_both(
            losses.softmax_cross_entropy,
            lambda f, x: f(x, labels),
            [_randn(2, 5, 7, 11) * 4],
        )
    )


def test_argmax():
    x = _randn(2, 9, 13, 6)
    x[0, 0, 0] = [0.0, -0.0, -1.0, -2.0, -3.0, -4.0]
    fast = losses.argmax.implementation(mode="fast")
    for fn in (fast, losses.argmax.generic):
        got = fn(x)
        assert keras.backend.standardize_dtype(got.dtype) == "int32"
        np.testing.assert_array_equal(_numpy(got), np.argmax(x, axis=-1))


def test_banded_upsampling(monkeypatch):
    """The loss's banded upsampling, 8 bands of 4 rows and a shorter last
    one, fast vs generic (the generic resize inside it too)."""
    monkeypatch.setattr(losses, "BAND_ELEMENTS", 2 * 4 * 35 * 11)
    labels = np.random.default_rng(5).integers(0, 11, (2, 29, 35))
    results = []
    for mode in ("fast", "generic"):
        with sf_ops.use(mode):
            results.append(
                _value_and_grads(
                    lambda x: losses.upsampled_cross_entropy(x, labels),
                    [_randn(2, 7, 9, 11) * 3],
                )
            )
            classes = _numpy(
                losses.upsampled_argmax(_randn(2, 7, 9, 11), (29, 35))
            )
            assert classes.shape == (2, 29, 35)
    _assert_close(*results)


def test_assert_image_size():
    x = _randn(2, 31, 40, 3)
    for mode in ("fast", "generic"):
        with sf_ops.use(mode):
            out = checks.assert_image_size(x, 29, [False, True, True])
        np.testing.assert_array_equal(_numpy(out), x)
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    with sf_ops.use("generic"):  # a check, not a speed-up: in both modes
        fn = tf.function(
            lambda t: checks.assert_image_size(t, 29, [False, True, True]),
            input_signature=[tf.TensorSpec((2, None, None, 3), "float32")],
        )
    with pytest.raises(tf.errors.InvalidArgumentError, match="too small"):
        fn(_randn(2, 9, 40, 3))


@pytest.mark.parametrize("decay, amsgrad", [(0.3, False), (None, True)])
def test_adamw_update(decay, amsgrad, monkeypatch):
    """Three steps on three variables, fast vs generic: the same bits (the
    same formulas, elementwise; on PyTorch in chunks of 12 and 5 + 6). On
    TensorFlow the fused kernel forms ``1 - beta`` from the float32 beta:
    the second moments' steps are 1.3e-5 apart relatively."""
    backend = keras.backend.backend()
    if backend == "torch":
        from keras_segformer.ops import _torch

        monkeypatch.setattr(_torch, "_CPU_CHUNK", 8)
    shapes = [(3, 4), (5,), (2, 3)]
    results = []
    for update in (
        optimizer_ops.adamw_update.implementation(mode="fast"),
        optimizer_ops.adamw_update.generic,
    ):
        slots = [
            [
                keras.Variable(_randn(*s, seed=i) * k)
                for i, s in enumerate(shapes)
            ]
            for k in (1.0, 0.0, 0.0, 0.0)  # variables, m, v, v_hat
        ]
        for step in range(3):
            grads = [_randn(*s, seed=10 + step) for s in shapes]
            update(
                slots[0],
                [keras.ops.convert_to_tensor(g) for g in grads],
                slots[1],
                slots[2],
                keras.ops.convert_to_tensor(0.01 * (step + 1)),
                None if decay is None else keras.ops.convert_to_tensor(decay),
                0.9,
                0.999,
                1e-8,
                velocity_hats=slots[3] if amsgrad else None,
            )
        results.append([_numpy(v) for group in slots for v in group])
    fast, generic = results
    for got, want in zip(fast, generic):
        if backend == "tensorflow":
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(got, want)
    assert not np.allclose(fast[0], _randn(3, 4, seed=0))  # it moved


def test_generic_resize_accepts_symbolic_sizes():
    """keras.ops.image.resize refuses tensor sizes; the generic version
    then interpolates with keras.ops gathers, to the same numbers."""
    x = _randn(2, 7, 9, 5)
    expected = _numpy(resize_ops.resize_bilinear.generic(x, (29, 35)))
    size = keras.ops.convert_to_tensor([29, 35])
    got = resize_ops.resize_bilinear.generic(x, (size[0], size[1]))
    np.testing.assert_allclose(_numpy(got), expected, atol=1e-5, rtol=0)


# -- the whole model ---------------------------------------------------------


def test_model_generic_equals_fast_forward_and_gradients():
    # No dropout or drop path: both modes' training steps are the same
    # function.
    model = tiny_segformer(
        num_classes=4,
        drop_path_rate=0.0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        dropout=0.0,
    )
    x = _randn(2, 45, 70, 3, seed=6)
    labels = np.random.default_rng(6).integers(0, 4, (2, 45, 70))
    labels[0, :5] = 255  # ignored pixels
    loss = SegFormerLoss()
    logits, ref_logits = [], []
    # Inference first: the training calls update BatchNorm's statistics.
    for mode, out in (("fast", logits), ("generic", ref_logits)):
        with sf_ops.use(mode):
            out.append(_forward(lambda t: model(t), x))
    results = []
    for mode in ("fast", "generic"):
        with sf_ops.use(mode):
            _, grads = _value_and_grads(
                lambda: keras.ops.expand_dims(
                    loss(labels, model(x, training=True)), 0
                ),
                [],
                model.trainable_variables,
            )
        results.append(grads)
    grads, ref_grads = results
    np.testing.assert_allclose(logits[0], ref_logits[0], atol=1e-4, rtol=0)
    assert len(grads) == len(model.trainable_variables)
    for g, ref, v in zip(grads, ref_grads, model.trainable_variables):
        scale = max(1e-3, float(np.abs(ref).max()))
        np.testing.assert_allclose(
            g, ref, atol=1e-4 * scale, rtol=1e-3, err_msg=v.path
        )


def test_generic_path_matches_transformers(tmp_path):
    hf = save_hf_model(tmp_path, **HF_TINY)
    x = _randn(2, 97, 131, 3, seed=7)
    ref_logits, _ = hf_forward(hf, x)
    with sf_ops.use("generic"):
        model = keras_segformer.from_pretrained(tmp_path)
        logits = _forward(lambda t: model(t), x)
    assert logits.shape == ref_logits.shape == (2, 25, 33, 7)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)
