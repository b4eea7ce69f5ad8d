"""Weight initialization: transformers' scheme, drawn on the host."""

import keras
import numpy as np
import pytest
from conftest import tiny_segformer

from keras_segformer.layers.init import HostNormal


def _kernels(model):
    return {
        w.path: np.asarray(keras.ops.convert_to_numpy(w))
        for w in model.weights
        if w.path.endswith(("/kernel", "/depthwise_kernel"))
    }


def test_kernels_are_normal_0_02_and_biases_zero():
    """As transformers' _init_weights: Linear/Conv2d weights N(0, 0.02),
    biases 0, norm scales 1."""
    model = tiny_segformer(num_classes=5)
    kernels = _kernels(model)
    # Every projection: Q/K/V, spatial reduction, patch embedding, Mix-FFN
    # (both Dense and the depthwise conv), decoder, classifier.
    for part in ("query", "sr", "proj", "dense1", "dwconv", "classifier"):
        assert any(part in path for path in kernels), part
    values = np.concatenate([k.ravel() for k in kernels.values()])
    assert values.size > 10_000
    assert abs(values.mean()) < 0.002
    assert abs(values.std() - 0.02) < 0.001
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

    init = HostNormal(stddev=0.5, seed=3)
    again = keras.initializers.deserialize(keras.initializers.serialize(init))
    assert isinstance(again, HostNormal)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(init((4, 5))),
        keras.ops.convert_to_numpy(again((4, 5))),
    )
    value = keras.ops.convert_to_numpy(HostNormal()((3,), dtype="bfloat16"))
    assert keras.backend.standardize_dtype(value.dtype) == "bfloat16"


@pytest.mark.parametrize("shape", [(3, 3, 8, 16), (1000,)])
def test_host_normal_shapes(shape):
    value = keras.ops.convert_to_numpy(HostNormal(mean=1.0, stddev=0.1)(shape))
    assert value.shape == shape
    assert abs(value.mean() - 1.0) < 0.05
