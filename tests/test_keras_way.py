"""The Keras way, as the README writes it: a built model trains with
``fit`` as its first call, ``compile()`` fills in the recipe, and a
standard Keras loss on full-resolution masks stops with a clear error."""

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from conftest import BACKEND, TINY, tiny_segformer

import keras_segformer
from keras_segformer.training import (
    GroupedAdamW,
    MeanIoU,
    SegFormerLoss,
    compile_for_training,
)


def _data(num_classes=3, size=(61, 83), batch=4, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, *size, 3)).astype("float32")
    masks = rng.integers(0, num_classes, (batch, *size)).astype("int32")
    masks[:, :5] = 255  # ignored rows
    return images, masks


def _dataset(images, masks, batch=2):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((images, masks)).batch(batch)


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def _assert_recipe_defaults(model):
    assert isinstance(model.optimizer, GroupedAdamW)
    lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert lr == pytest.approx(6e-5)
    assert model.optimizer.weight_decay == pytest.approx(0.01)
    head = {v.path for v in model.get_layer("decode_head").trainable_variables}
    groups = model.optimizer.variable_groups(model.trainable_variables)
    for path, (multiplier, _) in groups.items():
        assert multiplier == (10.0 if path in head else 1.0), path
    assert isinstance(model.loss, SegFormerLoss)
    assert model.loss.ignore_index == 255
    metrics = model._compile_metrics._user_metrics
    assert [type(m) for m in metrics] == [MeanIoU]
    assert metrics[0].ignore_index == 255


def test_built_model_comes_compiled_with_the_recipe():
    model = keras_segformer.build_segformer(3, decoder_hidden_size=16, **TINY)
    assert model.compiled
    _assert_recipe_defaults(model)


@pytest.mark.parametrize(
    "args",
    [{}, {"optimizer": "auto", "loss": "auto", "metrics": "auto"}],
    ids=["no-arguments", "auto"],
)
def test_compile_without_arguments_gives_the_recipe(args):
    model = tiny_segformer(num_classes=3)
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    model.compile(**args)
    _assert_recipe_defaults(model)


def test_fit_is_the_first_call_on_a_dataset_of_full_size_masks():
    images, masks = _data()
    model = tiny_segformer(num_classes=3)
    before = _weights(model)
    steps = []
    train_step = model.train_step
    model.train_step = lambda *a: steps.append(1) or train_step(*a)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        history = model.fit(_dataset(images, masks), epochs=2, verbose=0)
    # Keras' default shuffle=True, which it ignores for a dataset and
    # warned about on every call.
    assert not [w for w in said if "shuffle" in str(w.message)]
    losses = history.history["loss"]
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    # The step is traced once on TensorFlow and JAX (TensorFlow traced it
    # twice when the optimizer's variables were created in the trace);
    # PyTorch runs it eagerly, 2 batches x 2 epochs.
    assert len(steps) == (4 if BACKEND == "torch" else 1)
    assert 0.0 <= history.history["mean_iou"][-1] <= 1.0
    changed = [
        not np.array_equal(a, b) for a, b in zip(before, _weights(model))
    ]
    assert sum(changed) > len(changed) // 2
    # The loss is SegFormerLoss of the full-size masks.
    expected = SegFormerLoss()(masks, model.predict(images, verbose=0))
    evaluated = model.evaluate(images, masks, verbose=0, return_dict=True)
    assert evaluated["loss"] == pytest.approx(float(expected), rel=1e-4)


def test_fit_on_integer_pixels_is_the_input_checks_type_error():
    """Keras wrapped it in "RuntimeError: Unable to automatically build
    the model" on JAX and PyTorch (it passes only ValueErrors on)."""
    images, masks = _data()
    model = tiny_segformer(num_classes=3)
    data = _dataset(images.astype("uint8"), masks)
    with pytest.raises(TypeError, match="dtype uint8 cannot be fed"):
        model.fit(data, epochs=1, verbose=0)


def test_given_parts_replace_just_that_part():
    model = tiny_segformer(num_classes=3)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert isinstance(model.loss, SegFormerLoss)
    assert [type(m) for m in model._compile_metrics._user_metrics] == [MeanIoU]
    model.compile(loss=SegFormerLoss(ignore_index=0), metrics=None)
    assert isinstance(model.optimizer, GroupedAdamW)
    assert model.loss.ignore_index == 0
    assert model._compile_metrics is None
    images, masks = _data()
    masks[masks == 255] = 0  # the ignored label is 0 now
    history = model.fit(images, masks, batch_size=2, verbose=0)
    assert list(history.history) == ["loss"]


def test_classifier_comes_compiled():
    model = keras_segformer.build_classifier(4, **TINY)
    assert isinstance(model.optimizer, GroupedAdamW)
    assert model.optimizer.lr_multipliers == {}
    images = np.random.default_rng(0).random((4, 64, 48, 3), "float32")
    history = model.fit(images, np.array([0, 1, 2, 3]), verbose=0)
    assert set(history.history) == {"loss", "accuracy"}


@pytest.mark.parametrize("where", ["loss", "metric"])
def test_keras_objective_on_full_size_masks_names_segformer_loss(where):
    images, masks = _data()
    model = tiny_segformer(num_classes=3)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if where == "loss":
        model.compile(optimizer="adam", loss=keras_loss)
    else:
        model.compile(
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")]
        )
    with pytest.raises(ValueError) as info:
        model.fit(images, masks, batch_size=2, verbose=0)
    message = str(info.value)
    assert "SegFormerLoss" in message
    assert "(2, 61, 83)" in message and "(2, 16, 21, 3)" in message
    with pytest.raises(ValueError, match="SegFormerLoss"):
        model.evaluate(images, masks, batch_size=2, verbose=0)


def test_keras_loss_on_quarter_size_labels_trains():
    images, _ = _data()
    labels = np.random.default_rng(1).integers(0, 3, (4, 16, 21))
    model = tiny_segformer(num_classes=3)
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(images, labels, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_untrained_model_reloads_without_warnings(tmp_path):
    model = tiny_segformer(num_classes=3)
    # What "auto" meant where the model was saved (True on JAX) is not
    # carried over: on PyTorch True would mean torch.compile.
    model.compile(jit_compile=True)
    model.save(tmp_path / "m.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        loaded = keras.models.load_model(tmp_path / "m.keras")
    _assert_recipe_defaults(loaded)
    assert int(keras.ops.convert_to_numpy(loaded.optimizer.iterations)) == 0
    assert loaded.jit_compile == (BACKEND == "jax")


def test_trained_weights_load_into_a_new_model_without_warnings(tmp_path):
    """A built model's own optimizer stands in for none: a trained state is
    skipped quietly, as Keras does for a model without an optimizer. One
    given to compile() keeps Keras' warning."""
    images, masks = _data()
    model = tiny_segformer(num_classes=3)
    model.fit(images, masks, batch_size=2, verbose=0)
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
        fresh = tiny_segformer(num_classes=3)
        fresh.load_weights(tmp_path / "m.weights.h5")
    for other in (loaded, fresh):
        for got, want in zip(_weights(other), _weights(model)):
            np.testing.assert_array_equal(got, want)
        assert not other.optimizer.built
    compiled = tiny_segformer(num_classes=3)
    compiled.compile()
    with pytest.warns(UserWarning, match="Skipping variable loading"):
        compiled.load_weights(tmp_path / "m.weights.h5")


_LOAD_ELSEWHERE = """
import sys, warnings
import numpy as np
import keras
import keras_segformer
with warnings.catch_warnings():
    warnings.simplefilter("error", UserWarning)
    model = keras.models.load_model(sys.argv[1])
opt = model.optimizer
assert type(opt).__name__ == "GroupedAdamW", type(opt)
assert int(keras.ops.convert_to_numpy(opt.iterations)) == int(sys.argv[3])
x = np.load(sys.argv[2])
np.save(sys.argv[2] + ".out.npy", model.predict(x, verbose=0))
model.fit(x, np.zeros(x.shape[:3], "int32"), verbose=0)
"""


def test_trained_model_loads_on_another_backend(tmp_path):
    images, masks = _data()
    model = tiny_segformer(num_classes=3)
    compile_for_training(model, total_steps=10)
    model.fit(images, masks, batch_size=2, verbose=0)
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", images)
    other = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}
    env = dict(os.environ, KERAS_BACKEND=other[BACKEND])
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOAD_ELSEWHERE,
            str(tmp_path / "m.keras"),
            str(tmp_path / "x.npy"),
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(
        np.load(tmp_path / "x.npy.out.npy"),
        model.predict(images, verbose=0),
        atol=1e-4,
    )
