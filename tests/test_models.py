"""Builders, serialization, modes, precision and input errors."""

import keras
import numpy as np
import pytest
from conftest import TINY, TINY_DECODER, tiny_segformer

import keras_segformer
from keras_segformer import configs, layers


def _np(x):
    if isinstance(x, (list, tuple)):
        return [keras.ops.convert_to_numpy(t) for t in x]
    return keras.ops.convert_to_numpy(x)


def _randomize(model, seed=0):
    """Non-trivial weights everywhere, including BN statistics."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        value = rng.normal(0, 0.1, v.shape)
        if "variance" in v.path:
            value = rng.uniform(0.5, 2.0, v.shape)
        v.assign(value.astype(v.dtype))


@pytest.mark.parametrize("size", [(97, 131), (64, 64), (29, 200)])
def test_stage_shapes_follow_the_conv_formula(size):
    backbone = keras_segformer.build_mit(**TINY)
    x = np.zeros((2, *size, 3), "float32")
    stages = _np(backbone(x))
    hs = configs.stage_size(size[0], TINY["patch_sizes"], TINY["strides"])
    ws = configs.stage_size(size[1], TINY["patch_sizes"], TINY["strides"])
    assert [s.shape for s in stages] == [
        (2, h, w, c) for h, w, c in zip(hs, ws, TINY["hidden_sizes"])
    ]
    logits = _np(tiny_segformer(num_classes=3)(x))
    assert logits.shape == (2, hs[0], ws[0], 3)


def test_named_variants_use_their_table_row():
    for v in ("b0", "b1", "b2", "b3", "b4", "b5"):
        row = configs.variant_config(v)
        builder = getattr(keras_segformer, f"MiT{v.upper()}")
        assert builder.__name__ == f"MiT{v.upper()}"
    model = keras_segformer.SegFormerB0(num_classes=4)
    assert model.backbone.depths == [2, 2, 2, 2]
    assert model.backbone.hidden_sizes == [32, 64, 160, 256]
    assert model.decoder_hidden_size == 256
    assert model.output_shape == (None, None, None, 4)
    row = configs.variant_config("b2")
    mit = keras_segformer.MiTB2()
    assert mit.depths == list(row["depths"])
    clf = keras_segformer.MiTB0Classifier()
    assert clf.output_shape == (None, 1000)


def test_generic_builder_takes_every_field():
    model = keras_segformer.build_segformer(
        num_classes=3,
        depths=[1, 2, 1],
        hidden_sizes=[8, 16, 32],
        num_heads=[1, 2, 4],
        sr_ratios=[4, 2, 1],
        patch_sizes=[5, 3, 3],
        strides=[2, 2, 2],
        mlp_ratios=[2, 3, 4],
        decoder_hidden_size=12,
        drop_path_rate=0.2,
        hidden_dropout=0.1,
        attention_dropout=0.1,
        dropout=0.2,
    )
    b = model.backbone
    assert b.num_stages == 3 and b.patch_sizes == [5, 3, 3]
    assert b.get_layer("stage2_block2").mlp.intermediate_size == 48
    assert b.get_layer("stage2_block2").drop_path.rate == pytest.approx(
        0.2 * 2 / 3
    )
    assert b.get_layer("stage1_block1").attention.attention_dropout == 0.1
    out = _np(model(np.zeros((1, 40, 52, 3), "float32")))
    assert out.shape == (1, 20, 26, 3)


def test_inference_is_the_default_mode():
    model = tiny_segformer(
        num_classes=4, drop_path_rate=0.5, hidden_dropout=0.3
    )
    _randomize(model)
    x = (
        np.random.default_rng(1)
        .standard_normal((2, 45, 61, 3))
        .astype("float32")
    )
    default = _np(model(x))
    # The second call of a shape runs compiled (float32 rounding ~1e-6
    # apart on JAX); training would be ~1e-1 apart (dropout 0.3).
    np.testing.assert_allclose(
        default, _np(model(x, training=False)), atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(
        default, _np(model.predict(x, verbose=0)), atol=1e-5
    )
    # The test can fail: training mode differs (dropout, BN batch stats).
    assert np.abs(default - _np(model(x, training=True))).max() > 1e-3


def test_every_layer_is_built_at_construction(tmp_path):
    """No layer is left unbuilt (an unbuilt DropPath made Keras run the
    whole model eagerly before the first JAX predict: one compiled XLA
    program per op, ~200 for B0, +450 MB of RSS and seconds of warm-up),
    in the task models, the backbone and a reloaded model."""
    model = tiny_segformer(num_classes=3, drop_path_rate=0.1)
    path = tmp_path / "m.keras"
    model.save(path)
    models = {
        "segformer": model,
        "backbone": keras_segformer.build_mit(**TINY),
        "classifier": keras_segformer.build_classifier(4, **TINY),
        "reloaded": keras.saving.load_model(path),
    }
    for name, m in models.items():
        unbuilt = [
            (layer.name, type(layer).__name__)
            for layer in m._flatten_layers()
            if not layer.built
        ]
        assert not unbuilt, (name, unbuilt)


def test_save_and_load_keras_file(tmp_path):
    labels = {0: "sky", 1: "road", 2: "car"}
    model = tiny_segformer(num_classes=3, id2label=labels)
    _randomize(model)
    x = (
        np.random.default_rng(2)
        .standard_normal((1, 50, 77, 3))
        .astype("float32")
    )
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_segformer.SegFormer)
    assert loaded.id2label == labels and loaded.label2id == {
        "sky": 0,
        "road": 1,
        "car": 2,
    }
    np.testing.assert_array_equal(_np(model(x)), _np(loaded(x)))


def test_save_and_load_classifier_and_backbone(tmp_path):
    clf = keras_segformer.build_classifier(num_classes=6, **TINY)
    _randomize(clf)
    x = (
        np.random.default_rng(3)
        .standard_normal((2, 33, 47, 3))
        .astype("float32")
    )
    clf.save(tmp_path / "c.keras")
    loaded = keras.models.load_model(tmp_path / "c.keras")
    np.testing.assert_array_equal(_np(clf(x)), _np(loaded(x)))
    clf.backbone.save(tmp_path / "b.keras")
    backbone = keras.models.load_model(tmp_path / "b.keras")
    for a, b in zip(_np(clf.backbone(x)), _np(backbone(x))):
        np.testing.assert_array_equal(a, b)


def test_weights_file_round_trip(tmp_path):
    model = tiny_segformer()
    _randomize(model)
    model.save_weights(tmp_path / "w.weights.h5")
    other = tiny_segformer()
    other.load_weights(tmp_path / "w.weights.h5")
    x = np.ones((1, 40, 40, 3), "float32")
    np.testing.assert_array_equal(_np(model(x)), _np(other(x)))


def test_mixed_bfloat16_gives_float32_logits():
    x = (
        np.random.default_rng(4)
        .standard_normal((1, 64, 80, 3))
        .astype("float32")
    )
    reference = tiny_segformer(num_classes=3)
    _randomize(reference)
    mixed = tiny_segformer(num_classes=3, dtype="mixed_bfloat16")
    mixed.set_weights(reference.get_weights())
    out = mixed(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert mixed.backbone.get_layer("stage1_block1").compute_dtype == "bfloat16"
    out, ref = _np(out), _np(reference(x))
    # bfloat16 keeps ~3 significant digits: close, not equal.
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()
    assert (out.argmax(-1) == ref.argmax(-1)).mean() > 0.9


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_fast_inference_equals_generic_and_sees_new_weights(dtype):
    """The inference fast paths (cached low-precision weight copies, a
    padded classifier kernel from 4096 positions on, native bfloat16 layer
    norm and resize, the batch norm folded into the head's kernels) give
    the generic ops' numbers, and a weight assigned after a call is used
    by the next one."""
    # 64x66 positions at 1/4 resolution: the padded classifier's size.
    x = np.random.default_rng(5).standard_normal((1, 256, 264, 3))
    x = x.astype("float32")
    model = tiny_segformer(num_classes=3, dtype=dtype)
    _randomize(model)
    reference = tiny_segformer(num_classes=3)
    reference.set_weights(model.get_weights())
    exact = _np(reference(x, training=False))
    fast = _np(model(x, training=False))
    with keras_segformer.ops.use("generic"):
        generic = _np(model(x, training=False))
    assert fast.dtype == generic.dtype == np.float32
    if dtype == "float32":
        np.testing.assert_allclose(fast, generic, atol=2e-5, rtol=1e-5)
    else:  # as close to float32 as the generic bfloat16 ops are
        err_fast = np.abs(fast - exact).max()
        err_generic = np.abs(generic - exact).max()
        assert 0 < err_fast <= 2 * err_generic + 1e-3 * np.abs(exact).max()
    _randomize(model, seed=1)  # in place: the version counters move
    fresh = tiny_segformer(num_classes=3, dtype=dtype)
    fresh.set_weights(model.get_weights())
    again, expected = _np(model(x, training=False)), _np(fresh(x))
    moved = np.abs(again - fast).max()
    assert moved > 1e-3
    # float32: the same numbers; bfloat16: TensorFlow's compiled and eager
    # calls round a few logits one bfloat16 step apart (a stale weight
    # copy would leave ``again`` where ``fast`` was).
    tolerance = 1e-6 if dtype == "float32" else 0.05 * moved
    np.testing.assert_allclose(again, expected, atol=tolerance, rtol=0)


def test_global_mixed_policy(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tiny_segformer(num_classes=2)
        out = model(np.zeros((1, 40, 40, 3), "float32"))
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_include_preprocessing_takes_raw_pixels():
    raw = (
        np.random.default_rng(5)
        .integers(0, 256, (2, 48, 56, 3))
        .astype("float32")
    )
    plain = tiny_segformer()
    _randomize(plain)
    with_pre = tiny_segformer(include_preprocessing=True)
    with_pre.set_weights(plain.get_weights())
    mean = np.array([0.485, 0.456, 0.406], "float32")
    std = np.array([0.229, 0.224, 0.225], "float32")
    normalized = (raw / 255.0 - mean) / std
    np.testing.assert_allclose(
        _np(with_pre(raw)), _np(plain(normalized)), atol=1e-5
    )


@pytest.mark.parametrize(
    "layer",
    [
        layers.OverlappingPatchEmbedding(8, 7, 4),
        layers.EfficientSelfAttention(16, 2, sr_ratio=4, attention_dropout=0.1),
        layers.MixFFN(8, 32, dropout=0.1),
        layers.MiTBlock(8, 2, sr_ratio=2, mlp_ratio=2, drop_path=0.1),
        layers.DropPath(0.2),
        layers.SegFormerHead(5, 16, dropout=0.2),
        layers.ImageNormalization(),
        layers.InputCheck(29),
        layers.LayerNorm(epsilon=1e-6),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_layers_are_serializable(layer):
    config = keras.layers.serialize(layer)
    clone = keras.layers.deserialize(config)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()


def test_drop_path_drops_whole_samples_in_training_only():
    layer = layers.DropPath(0.5, seed=1)
    x = np.ones((64, 3, 3, 2), "float32")
    np.testing.assert_array_equal(_np(layer(x)), x)
    y = _np(layer(x, training=True))
    per_sample = y.reshape(64, -1)
    # Each sample is all 0 or all 1 / (1 - rate) = 2.
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert (per_sample.min(1) == per_sample.max(1)).all()
    assert 10 < (per_sample[:, 0] == 0).sum() < 54


def test_patch_embedding_pads_symmetrically():
    layer = layers.OverlappingPatchEmbedding(1, 3, 2)
    layer.build((1, 5, 5, 1))
    layer.proj.kernel.assign(np.ones((3, 3, 1, 1), "float32"))
    layer.proj.bias.assign(np.zeros((1,), "float32"))
    x = np.arange(25, dtype="float32").reshape(1, 5, 5, 1)
    out = _np(layer.proj(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))))
    # Top-left output sums the 2x2 corner only when padding is symmetric.
    assert out[0, 0, 0, 0] == 0 + 1 + 5 + 6
    assert layer.compute_output_shape((1, 5, 5, 1)) == (1, 3, 3, 1)


# ---------------------------------------------------------------- bad input


def test_too_small_image_is_a_clear_error():
    model = tiny_segformer()
    assert model.backbone.min_input_size == 29
    with pytest.raises(ValueError, match="too small.*29x29"):
        model(np.zeros((1, 28, 64, 3), "float32"))
    model(np.zeros((1, 29, 29, 3), "float32"))  # smallest that works


def test_wrong_channel_count_or_rank():
    model = tiny_segformer()
    with pytest.raises(ValueError, match="shape|incompatible"):
        model(np.zeros((1, 64, 64, 4), "float32"))
    with pytest.raises(ValueError, match="shape|incompatible|rank"):
        model(np.zeros((64, 64, 3), "float32"))


def test_static_input_shape_too_small_fails_at_build():
    with pytest.raises(ValueError, match="too small"):
        keras_segformer.build_mit(**TINY, input_shape=(16, 16, 3))


def test_mismatched_config_lists():
    bad = dict(TINY, depths=[1, 1, 1])
    with pytest.raises(ValueError, match="same length"):
        keras_segformer.build_mit(**bad)


def test_bad_config_values():
    with pytest.raises(ValueError, match="divisible"):
        keras_segformer.build_mit(**dict(TINY, num_heads=[3, 2, 3, 4]))
    with pytest.raises(ValueError, match="positive integers"):
        keras_segformer.build_mit(**dict(TINY, depths=[1, 0, 1, 1]))
    with pytest.raises(TypeError, match="one entry per stage"):
        keras_segformer.build_mit(**dict(TINY, strides=4))
    with pytest.raises(ValueError, match="num_classes"):
        keras_segformer.build_segformer(
            0, decoder_hidden_size=TINY_DECODER, **TINY
        )


def test_unknown_variant():
    with pytest.raises(ValueError, match="Unknown variant 'b9'"):
        keras_segformer.build_segformer(3, "b9")
    with pytest.raises(ValueError, match="Missing config fields"):
        keras_segformer.build_mit(depths=[1, 1, 1, 1])


def test_bad_id2label():
    with pytest.raises(ValueError, match="id2label"):
        tiny_segformer(num_classes=3, id2label={0: "a", 1: "b"})


def test_compiled_model_reloads_compiled(tmp_path):
    model = tiny_segformer(num_classes=3)
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3), loss="mse", metrics=None
    )
    x = np.zeros((1, 32, 32, 3), "float32")
    model.train_on_batch(x, np.zeros((1, 8, 8, 3), "float32"))
    model.save(tmp_path / "c.keras")
    loaded = keras.models.load_model(tmp_path / "c.keras")
    assert loaded.compiled
    assert isinstance(loaded.optimizer, keras.optimizers.AdamW)
    lr = float(keras.ops.convert_to_numpy(loaded.optimizer.learning_rate))
    assert lr == pytest.approx(1e-3)
    assert int(keras.ops.convert_to_numpy(loaded.optimizer.iterations)) == 1


def test_predict_on_arrays_equals_keras_predict():
    import tensorflow as tf

    model = tiny_segformer()
    x = np.random.default_rng(0).random((5, 64, 48, 3), dtype="float32")
    expected = keras.Model.predict(model, x, batch_size=2, verbose=0)
    fast = model.predict(x, batch_size=2, verbose=0)
    assert isinstance(fast, np.ndarray) and fast.shape == (5, 16, 12, 5)
    np.testing.assert_allclose(fast, expected, rtol=1e-5, atol=1e-5)
    # A tensor input takes the same loop; a dataset goes to Keras.
    tensor = model.predict(keras.ops.convert_to_tensor(x), verbose=0)
    np.testing.assert_allclose(tensor, expected, rtol=1e-5, atol=1e-5)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(2)
    np.testing.assert_allclose(
        model.predict(ds, verbose=0), expected, rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="no images"):
        model.predict(x[:0], verbose=0)
