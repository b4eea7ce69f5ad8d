"""Direct layer calls (keras_segformer/ops/layer_call.py) against Keras'
own ``Layer.__call__``: same numbers, same training behaviour."""

import keras
import numpy as np
import pytest
from conftest import BACKEND, tiny_segformer

from keras_segformer.layers import DropPath
from keras_segformer.ops import layer_call
from keras_segformer.ops.layer_call import (
    DirectCall,
    DirectGraph,
    direct_calls,
)


def _images(batch=2, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, size, size, 3)).astype("float32")


def _pair(**kwargs):
    """Two tiny SegFormers with the same weights and random seeds."""
    models = []
    for _ in range(2):
        keras.utils.set_random_seed(3)
        models.append(tiny_segformer(num_classes=4, **kwargs))
    return models


def _keras_layer_calls(monkeypatch, fn, ours_only=True):
    """How many times ``keras.layers.Layer.__call__`` runs in ``fn()`` for
    a layer or model of ours (Keras' Dense and Conv layers are called
    through it by the generic ops)."""
    count = [0]
    original = keras.layers.Layer.__call__

    def counting(self, *args, **kwargs):
        count[0] += not ours_only or isinstance(self, (DirectCall, DirectGraph))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "__call__", counting)
    fn()
    monkeypatch.setattr(keras.layers.Layer, "__call__", original)
    return count[0]


def test_switch_parses_and_restores():
    assert layer_call.parse_switch(None) is True
    assert layer_call.parse_switch("1") is True
    assert layer_call.parse_switch("0") is False
    with pytest.raises(ValueError, match="KERAS_SEGFORMER_DIRECT_CALL"):
        layer_call.parse_switch("yes")
    assert layer_call.direct_calls_enabled()
    with direct_calls(False):
        assert not layer_call.direct_calls_enabled()
    assert layer_call.direct_calls_enabled()
    with pytest.raises(TypeError, match="`enabled` must be a bool"):
        with direct_calls("off"):
            pass


def test_direct_calls_skip_layer_call_and_the_switch_restores_it(
    monkeypatch,
):
    model = tiny_segformer(num_classes=4)
    x = keras.ops.convert_to_tensor(_images(batch=1))
    model(x)  # built
    direct = _keras_layer_calls(monkeypatch, lambda: model(x))
    with direct_calls(False):
        through_keras = _keras_layer_calls(monkeypatch, lambda: model(x))
    assert direct == 0  # not even the two functional models
    assert through_keras > 40  # every block, norm, dropout ...
    assert _keras_layer_calls(monkeypatch, lambda: model(x)) == 0
    if BACKEND == "torch":  # Dense and Conv run by the fast ops: none
        assert _keras_layer_calls(monkeypatch, lambda: model(x), False) == 0


def _both_paths(fn):
    """``fn()`` as numpy (a structure of them) with direct calls, then
    through Keras."""
    results = []
    for enabled in (True, False):
        with direct_calls(enabled):
            results.append(keras.tree.map_structure(_np, fn()))
    return results


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def test_models_run_their_graph_as_keras_does():
    model = tiny_segformer(num_classes=4)
    # Op by op: the compiled calls of repeated shapes have their own tests
    # (test_compiled_calls.py).
    model.run_eagerly = model.backbone.run_eagerly = True
    x = _images(batch=1, size=45)
    # NumPy in float32 and float64 (converted to the Input's float32 as
    # Keras converts it), a backend tensor.
    for inputs in (x, x.astype("float64"), keras.ops.convert_to_tensor(x)):
        out, ref = _both_paths(lambda inputs=inputs: model(inputs))
        assert out.dtype == np.float32 and out.shape == (1, 12, 12, 4)
        np.testing.assert_allclose(out, ref, atol=1e-6, rtol=0)
    features, ref = _both_paths(lambda: model.backbone(x, training=False))
    assert isinstance(features, list) and len(features) == 4
    for f, r in zip(features, ref):
        np.testing.assert_allclose(f, r, atol=1e-6, rtol=0)
    # A user's functional model around the backbone: the backbone's node
    # is recorded with mask=None.
    inputs = keras.Input((None, None, 3))
    user = keras.Model(inputs, model.backbone(inputs)[-1])
    out, ref = _both_paths(lambda: user(x))
    np.testing.assert_allclose(out, ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(out, features[-1], atol=1e-6, rtol=0)


@pytest.mark.skipif(BACKEND != "torch", reason="torch module hooks")
def test_torch_module_hooks_still_run():
    model = tiny_segformer(num_classes=4)
    x = keras.ops.convert_to_tensor(_images(batch=1))
    block = model.backbone.get_layer("stage2_block1")
    seen = []
    handle = block.register_forward_hook(
        lambda module, args, output: seen.append(tuple(output.shape))
    )
    model(x)
    handle.remove()
    model(x)
    assert seen == [(1, 8, 8, 16)]


@pytest.mark.parametrize("dtype", [None, "mixed_bfloat16"])
def test_same_outputs_and_training_step(dtype):
    # No dropout or drop path: the step is deterministic.
    direct_model, keras_model = _pair(
        dtype=dtype,
        dropout=0.0,
        drop_path_rate=0.0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    x = _images()
    labels = np.random.default_rng(1).integers(0, 4, (2, 64, 64))
    # Op by op on both paths (JAX would compile the direct call:
    # test_compiled_calls.py).
    direct_model.run_eagerly = True
    out = keras.ops.convert_to_numpy(direct_model(x))
    direct_model.run_eagerly = False
    with direct_calls(False):
        ref = keras.ops.convert_to_numpy(keras_model(x))
    np.testing.assert_allclose(out, ref, atol=1e-6, rtol=0)
    loss = direct_model.train_on_batch(x, labels)
    with direct_calls(False):
        ref_loss = keras_model.train_on_batch(x, labels)
    tol = 1e-5
    if dtype and BACKEND == "tensorflow":
        # A tf.function's bfloat16 results depend on how its graph was
        # named: two structurally identical graphs of one model (same op
        # types, inputs, dtypes and attributes), traced through Keras'
        # path and the direct one, give logits 1e-2 apart (each 1.6e-2
        # from eager, where the two paths agree exactly, above). The step
        # is then compared at bfloat16's precision: the loss, the mIoU
        # (a few argmax flips) and the weights (AdamW moves each by about
        # its learning rate, 6e-4 at most).
        tol = 2e-3
    np.testing.assert_allclose(loss, ref_loss, atol=tol, rtol=tol)
    for v, ref_v in zip(direct_model.weights, keras_model.weights):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(v),
            keras.ops.convert_to_numpy(ref_v),
            atol=tol,
            rtol=tol,
            err_msg=v.path,
        )


def _seed_states(model):
    """The state variables of the model's random seed generators."""
    return [
        layer.seed_generator.state
        for layer in model._flatten_layers()
        if getattr(layer, "seed_generator", None) is not None
    ]


def test_dropout_and_drop_path_in_training():
    model = tiny_segformer(
        num_classes=4, dropout=0.5, drop_path_rate=0.5, hidden_dropout=0.3
    )
    x = _images()
    states = _seed_states(model)
    assert len(states) > 8  # Dropout and DropPath layers
    saved = [keras.ops.convert_to_numpy(s) for s in states]
    # Unseeded Dropout draws from the backend's global generator.
    keras.utils.set_random_seed(5)
    out = keras.ops.convert_to_numpy(model(x, training=True))
    for state, value in zip(states, saved):
        state.assign(value)  # the same random draws again
    keras.utils.set_random_seed(5)
    with direct_calls(False):
        ref = keras.ops.convert_to_numpy(model(x, training=True))
    np.testing.assert_allclose(out, ref, atol=1e-6, rtol=0)
    # The flag reached the layers: dropout changed the logits.
    inference = keras.ops.convert_to_numpy(model(x))
    assert np.abs(out - inference).max() > 1e-3


@keras.saving.register_keras_serializable(package="test_direct_call")
class _Outer(keras.layers.Layer):
    """Calls DropPath without ``training``: it comes from the context."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = DropPath(0.5, seed=7)

    def call(self, x, training=None):
        return self.inner(x)


@pytest.mark.parametrize("cleared", [False, True])
def test_training_flag_from_the_enclosing_call(cleared):
    if cleared:  # replaces Keras' global state object: read it afresh
        keras.backend.clear_session()
    x = keras.ops.ones((16, 4, 4, 2))
    results = []
    for enabled in (True, False):
        layer = _Outer()
        layer(x)  # built
        with direct_calls(enabled):
            results.append(keras.ops.convert_to_numpy(layer(x, training=True)))
            kept = keras.ops.convert_to_numpy(layer(x, training=False))
        np.testing.assert_array_equal(kept, keras.ops.convert_to_numpy(x))
    np.testing.assert_array_equal(results[0], results[1])
    assert (results[0] == 0).any() and (results[0] != 0).any()


def test_save_load_and_summary(tmp_path):
    model = tiny_segformer(num_classes=4)
    x = _images(batch=1)
    out = model.predict_on_batch(x)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict_on_batch(x), out, atol=1e-6, rtol=0
    )
    lines = []
    loaded.summary(print_fn=lambda line, **kw: lines.append(line))
    text = "\n".join(lines)
    assert "decode_head" in text and "mit" in text


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile is PyTorch's")
def test_torch_compile_same_numbers_no_recompile():
    # Dynamo with its "eager" backend: the graph capture, guards and
    # recompiles of jit_compile=True, without inductor's code generation
    # (minutes on this CPU); the numbers are those of the captured graph.
    import torch
    from torch._dynamo.utils import counters

    model = tiny_segformer(num_classes=4)
    x = _images(batch=1)
    ref = model.predict_on_batch(x)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(
        lambda t: model(t, training=False), backend="eager"
    )
    t = keras.ops.convert_to_tensor(x)
    with torch.no_grad():
        out = compiled(t)
        graphs = counters["stats"]["unique_graphs"]
        for _ in range(2):
            out = compiled(t)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-4, rtol=0)
    assert graphs >= 1
    assert counters["stats"]["unique_graphs"] == graphs  # no recompile
    assert not counters["recompiles"]
