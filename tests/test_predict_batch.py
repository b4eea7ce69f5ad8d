"""``predict_on_batch`` of one array through
``keras_segformer.ops.inference.predict_batch`` (TensorFlow and PyTorch):
Keras' own predict function, the same numbers and traces as Keras' path,
and Keras' path wherever the shortcut does not apply."""

import warnings

import keras
import numpy as np
import pytest
from conftest import BACKEND, tiny_segformer

from keras_segformer.ops import inference, layer_call

# (batch, height, width); the first comes back to reuse its function.
SHAPES = [(1, 45, 67), (2, 33, 40), (1, 45, 67), (1, 70, 64)]


def _images(batch, height, width, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, height, width, 3)).astype(dtype)


def _keras_path(monkeypatch):
    """Every predict_on_batch through Keras' own (no shortcut)."""
    monkeypatch.setattr(inference, "predict_batch", lambda model, x: None)


def _predictions(model, inputs):
    return [model.predict_on_batch(x) for x in inputs]


def test_same_numbers_as_keras_path(monkeypatch):
    inputs = [_images(*shape, seed=i) for i, shape in enumerate(SHAPES)]
    inputs.append(_images(1, 40, 40, dtype="float64"))
    model = tiny_segformer(num_classes=4)
    got = _predictions(model, inputs)
    with monkeypatch.context() as patch:
        _keras_path(patch)
        want = _predictions(model, inputs)
    for g, w in zip(got, want, strict=True):
        assert isinstance(g, np.ndarray) and g.dtype == w.dtype
        assert g.shape == w.shape and g.flags.writeable
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)


def test_backend_tensor_and_small_image_as_keras_path():
    model = tiny_segformer(num_classes=4)
    x = _images(1, 45, 67)
    tensor = keras.ops.convert_to_tensor(x)
    np.testing.assert_allclose(
        model.predict_on_batch(tensor), model.predict_on_batch(x), atol=1e-6
    )
    with pytest.raises(ValueError, match="too small"):
        model.predict_on_batch(_images(1, 10, 10))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's path")
def test_tensorflow_traces_as_keras_and_keeps_the_concrete_functions(
    monkeypatch,
):
    inputs = [_images(*shape) for shape in SHAPES]
    with monkeypatch.context() as patch:
        _keras_path(patch)
        reference = tiny_segformer(num_classes=4)
        _predictions(reference, inputs)
    model = tiny_segformer(num_classes=4)
    _predictions(model, inputs)
    count = model.predict_function.experimental_get_tracing_count()
    assert count == reference.predict_function.experimental_get_tracing_count()
    assert len(model._batch_functions.concrete) == 3  # one shape came back
    model.compile()  # a new predict function: the kept ones are dropped
    model.predict_on_batch(inputs[0])
    assert model._batch_functions.predict_function is model.predict_function
    assert len(model._batch_functions.concrete) == 1


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's path")
def test_tensorflow_refused_executor_runs_the_default_one(monkeypatch):
    import contextlib

    import tensorflow as tf

    from keras_segformer.ops import _tensorflow

    model = tiny_segformer(num_classes=4)
    x = _images(1, 45, 67)
    want = model.predict_on_batch(x)

    @contextlib.contextmanager
    def refused(executor_type):
        raise tf.errors.UnimplementedError(None, None, "not this graph")
        yield

    monkeypatch.setattr(_tensorflow, "function_executor_type", refused)
    monkeypatch.setattr(_tensorflow, "_single_threaded", True)
    np.testing.assert_allclose(model.predict_on_batch(x), want, atol=1e-6)
    assert _tensorflow._single_threaded is False


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's path")
def test_torch_leaves_the_input_and_takes_read_only_arrays():
    model = tiny_segformer(num_classes=4)
    x = _images(1, 45, 67)
    before = x.copy()
    want = keras.ops.convert_to_numpy(model(before))
    out = model.predict_on_batch(x)
    np.testing.assert_array_equal(x, before)
    out[...] = 0  # the caller's own array, not a model tensor
    np.testing.assert_allclose(model.predict_on_batch(x), want, atol=1e-6)
    x.setflags(write=False)
    with warnings.catch_warnings():
        # (torch warns about read-only memory)
        warnings.simplefilter("error", UserWarning)
        np.testing.assert_allclose(model.predict_on_batch(x), want, atol=1e-6)


class _SlotTracker:
    """A Keras global state tracker without a ``__dict__``."""

    __slots__ = ("autocast_scope",)


def test_keras_state_of_a_tracker_without_dict(monkeypatch):
    from keras.src.backend.common import global_state

    tracker = _SlotTracker()
    tracker.autocast_scope = "scope"
    monkeypatch.setattr(global_state, "GLOBAL_STATE_TRACKER", tracker)
    assert layer_call.keras_state("autocast_scope") == "scope"
    assert layer_call.keras_state("current_call_ctx") is None
    if BACKEND == "torch":
        from keras_segformer.ops._torch_weights import plain_reads

        assert plain_reads() is True
