"""Kernel initialization: Glorot uniform, drawn on the host."""

import keras
import numpy as np
import pytest
from conftest import tiny_segformer

from keras_segformer.layers.init import HostGlorotUniform


def _kernels(model):
    return {
        w.path: np.asarray(keras.ops.convert_to_numpy(w))
        for w in model.weights
        if w.path.endswith(("/kernel", "/depthwise_kernel"))
    }


def test_kernels_are_glorot_uniform_and_biases_zero():
    """Keras' default scheme: each kernel U(-l, l), l = sqrt(6 / (fan_in +
    fan_out)) with Keras' fans; biases 0, norm scales 1."""
    model = tiny_segformer(num_classes=5)
    kernels = _kernels(model)
    # Every projection: Q/K/V, spatial reduction, patch embedding, Mix-FFN
    # (both Dense and the depthwise conv), decoder, classifier.
    for part in ("query", "sr", "proj", "dense1", "dwconv", "classifier"):
        assert any(part in path for path in kernels), part
    for path, value in kernels.items():
        receptive = int(np.prod(value.shape[:-2]))
        fan_in = value.shape[-2] * receptive
        fan_out = value.shape[-1] * receptive
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        assert np.abs(value).max() <= limit, path
        if value.size >= 2000:  # enough values for the moments
            assert abs(value.std() - limit / np.sqrt(3)) < 0.05 * limit, path
            assert abs(value.mean()) < 0.05 * limit, path
    for w in model.weights:
        value = keras.ops.convert_to_numpy(w)
        if w.path.endswith("/bias") or w.path.endswith("/beta"):
            assert not value.any(), w.path
        if w.path.endswith("/gamma"):
            np.testing.assert_array_equal(value, 1.0)


def test_build_runs_no_backend_random_op(monkeypatch):
    """Weights come from numpy: no backend random op (on JAX each new shape
    compiled one, 15 s to build B0)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a backend random op ran during build")

    for name in ("normal", "uniform", "truncated_normal"):
        monkeypatch.setattr(keras.random, name, refuse)
    tiny_segformer(num_classes=3)


def test_same_seed_same_model_and_serialization():
    keras.utils.set_random_seed(7)
    first = _kernels(tiny_segformer(num_classes=3))
    keras.utils.set_random_seed(7)
    second = _kernels(tiny_segformer(num_classes=3))
    keras.utils.set_random_seed(8)
    third = _kernels(tiny_segformer(num_classes=3))
    assert first.keys() == second.keys() == third.keys()
    for path in first:
        np.testing.assert_array_equal(first[path], second[path])
    assert any(not np.array_equal(first[p], third[p]) for p in first)

    init = HostGlorotUniform(seed=3)
    again = keras.initializers.deserialize(keras.initializers.serialize(init))
    assert isinstance(again, HostGlorotUniform)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(init((4, 5))),
        keras.ops.convert_to_numpy(again((4, 5))),
    )
    value = HostGlorotUniform()((3,), dtype="bfloat16")
    assert keras.backend.standardize_dtype(value.dtype) == "bfloat16"


@pytest.mark.parametrize(
    "shape, fans", [((3, 3, 8, 16), (72, 144)), ((1000,), (1000, 1000))]
)
def test_host_glorot_uniform_shapes(shape, fans):
    value = keras.ops.convert_to_numpy(HostGlorotUniform()(shape))
    assert value.shape == shape
    limit = np.sqrt(6.0 / sum(fans))
    assert np.abs(value).max() <= limit
    assert np.abs(value).max() > 0.9 * limit
