"""Eager inference calls run compiled (keras_segformer/ops/inference.py,
``CompiledCalls``): on TensorFlow from the second call (the first runs op
by op), on JAX from the first; the same numbers as the op-by-op call, the
current weights, the same errors, and never where a trace, training or
another Keras call is in the way."""

import copy

import keras
import numpy as np
import pytest
from conftest import BACKEND, tiny_segformer

from keras_segformer.ops import layer_call
from keras_segformer.ops.layer_call import direct_calls

COMPILES = BACKEND in ("tensorflow", "jax")
# Op-by-op calls of a shape before the compiled ones.
EAGER_FIRST = 1 if BACKEND == "tensorflow" else 0


def _images(batch=1, height=45, width=67, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, height, width, 3)).astype("float32")


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _functions(model):
    """The model's compiled eager functions (an empty dict: none)."""
    calls = model.__dict__.get("_compiled_calls")
    return {} if calls is None else calls.functions


def _eager(model, x, **kwargs):
    """``model(x)`` op by op, through Keras (no compiled call)."""
    with direct_calls(False):
        return keras.tree.map_structure(_np, model(x, **kwargs))


def _counting(monkeypatch, model):
    """A list that grows by one per call of a compiled function."""
    runs = []
    calls = layer_call.inference.CompiledCalls
    original = calls.function

    def function(self, *args):
        fn = original(self, *args)
        if fn is None:
            return None
        return lambda x: (runs.append(1), fn(x))[1]

    monkeypatch.setattr(calls, "function", function)
    return runs


def test_repeated_calls_run_compiled_with_the_same_numbers(monkeypatch):
    model = tiny_segformer(num_classes=4)
    x = _images()  # non-square, not a multiple of 32
    runs = _counting(monkeypatch, model)
    first = _np(model(x))
    compiled = int(COMPILES and not EAGER_FIRST)
    assert len(runs) == compiled and len(_functions(model)) == compiled
    second = _np(model(x))
    assert len(runs) == compiled + int(COMPILES)
    assert len(_functions(model)) == int(COMPILES)
    np.testing.assert_allclose(second, first, atol=1e-5, rtol=0)
    np.testing.assert_allclose(second, _eager(model, x), atol=1e-5, rtol=0)
    # A tensor of the same shape, and training=False, take it too.
    tensor = keras.ops.convert_to_tensor(x)
    out = _np(model(tensor, training=False))
    assert len(runs) == compiled + 2 * int(COMPILES)
    np.testing.assert_allclose(out, first, atol=1e-5, rtol=0)
    for _ in range(2):  # the backbone compiles its own call
        features = model.backbone(x)
    assert len(runs) == compiled + (4 - EAGER_FIRST) * int(COMPILES)
    for f, ref in zip(features, _eager(model.backbone, x)):
        np.testing.assert_allclose(_np(f), ref, atol=1e-5, rtol=0)


@pytest.mark.skipif(not COMPILES, reason="PyTorch calls are not compiled")
def test_new_sizes_and_the_current_weights(monkeypatch):
    model = tiny_segformer(num_classes=4)
    runs = _counting(monkeypatch, model)
    x = _images()
    model(x)
    model(x)
    other = _images(batch=2, height=64, width=40, seed=1)
    out = _np(model(other))
    # TensorFlow's function takes any size once traced (no eager call of
    # the new size first); JAX compiles the new shape.
    assert len(runs) == 3 - EAGER_FIRST
    np.testing.assert_allclose(out, _eager(model, other), atol=1e-5, rtol=0)
    if BACKEND == "tensorflow":
        (fn,) = _functions(model).values()
        assert fn.experimental_get_tracing_count() == 1
    # Weights assigned after the compile are what the next call reads.
    rng = np.random.default_rng(2)
    model.set_weights(
        [rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()]
    )
    out = _np(model(x))
    assert len(runs) == 4 - EAGER_FIRST
    np.testing.assert_allclose(out, _eager(model, x), atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(not COMPILES, reason="PyTorch calls are not compiled")
def test_not_compiled_in_training_traces_or_when_run_eagerly(monkeypatch):
    model = tiny_segformer(num_classes=4)
    runs = _counting(monkeypatch, model)
    x = _images()
    for _ in range(2):
        model(x, training=True)
    assert runs == []
    if BACKEND == "tensorflow":
        import tensorflow as tf

        traced = tf.function(lambda t: model(t))
    else:
        import jax

        traced = jax.jit(lambda t: model(t))
    for _ in range(2):
        out = _np(traced(x))
    assert runs == []
    np.testing.assert_allclose(out, _eager(model, x), atol=1e-5, rtol=0)
    # keras' stateless_call: the scope's values, not the variables'.
    values = [np.zeros(v.shape, v.dtype) for v in model.trainable_variables]
    for _ in range(2):
        zeros, _ = model.stateless_call(
            values, [v.value for v in model.non_trainable_variables], x
        )
    assert runs == []
    assert np.abs(_np(zeros) - _eager(model, x)).max() > 1e-3
    model.run_eagerly = True  # Keras' switch for debugging
    for _ in range(2):
        model(x)
    assert runs == []
    model.run_eagerly = False
    with direct_calls(False):
        for _ in range(2):
            model(x)
    assert runs == []


def test_bad_input_gets_the_same_error_on_the_compiled_call():
    model = tiny_segformer(num_classes=4)
    model(_images())
    model(_images())  # compiled for every size from here on TensorFlow
    for _ in range(3):  # (JAX compiles each new shape)
        with pytest.raises(ValueError, match="Image height 20 is too small"):
            model(_images(height=20))
        with pytest.raises(TypeError, match="dtype uint8"):
            model(np.zeros((1, 45, 67, 3), "uint8"))
        with pytest.raises(ValueError, match="too small"):
            model.backbone(_images(width=20))


def test_a_deep_copy_runs_its_own_weights():
    model = tiny_segformer(num_classes=4)
    x = _images()
    model(x)
    ref = _np(model(x))
    twin = copy.deepcopy(model)
    assert _functions(twin) == {}
    for v in twin.trainable_variables:
        v.assign(v * 0.5)
    for _ in range(2):
        out = _np(twin(x))
    np.testing.assert_allclose(out, _eager(twin, x), atol=1e-5, rtol=0)
    assert np.abs(out - ref).max() > 1e-3
    np.testing.assert_allclose(_np(model(x)), ref, atol=1e-6, rtol=0)
