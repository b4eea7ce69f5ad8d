"""keras-hub presets both ways, on real keras-hub objects, offline.

keras-hub -> ours: a tiny keras-hub SegFormer (random weights) written with
its own ``save_to_preset`` and read by ``keras_segformer.from_pretrained``
gives keras-hub's logits. Ours -> keras-hub: ``model.save_to_preset``
loads in ``keras_hub.models.SegFormerImageSegmenter.from_preset``.
"""

import json
import os

import keras
import numpy as np
import pytest
from conftest import TINY, TINY_DECODER

import keras_segformer
from keras_segformer.convert import CheckpointError
from keras_segformer.inference.processing import normalize_image

TOL = 1e-4
SIDE = 64  # keras-hub takes one square size


def hub():
    """keras-hub, imported when a test runs: it imports TensorFlow, which
    a run that deselects these tests (JAX, see conftest) need not pay."""
    import keras_hub

    return keras_hub


def randomize(model, seed=0):
    """Values on the scale of a trained model (BN statistics included)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if w.path.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, w.shape)
        else:
            value = rng.standard_normal(w.shape) * 0.2
            if w.path.endswith("gamma"):
                value += 1.0
        w.assign(value.astype(w.dtype))
    return model


def keras_hub_segmenter(num_classes=3):
    keras_hub = hub()
    encoder = keras_hub.models.MiTBackbone(
        layerwise_depths=TINY["depths"],
        num_layers=4,
        layerwise_num_heads=TINY["num_heads"],
        layerwise_sr_ratios=TINY["sr_ratios"],
        max_drop_path_rate=0.1,
        layerwise_patch_sizes=TINY["patch_sizes"],
        layerwise_strides=TINY["strides"],
        image_shape=(SIDE, SIDE, 3),
        hidden_dims=TINY["hidden_sizes"],
    )
    backbone = keras_hub.models.SegFormerBackbone(
        image_encoder=encoder, projection_filters=TINY_DECODER
    )
    std = np.array([0.229, 0.224, 0.225])
    converter = keras_hub.layers.SegFormerImageConverter(
        image_size=(SIDE, SIDE),
        scale=list(1 / (255 * std)),
        offset=list(-np.array([0.485, 0.456, 0.406]) / std),
    )
    preprocessor = keras_hub.models.SegFormerImageSegmenterPreprocessor(
        image_converter=converter
    )
    model = keras_hub.models.SegFormerImageSegmenter(
        backbone=backbone, num_classes=num_classes, preprocessor=preprocessor
    )
    return randomize(model), encoder


def images(batch=2, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, SIDE, SIDE, 3)).astype("float32")


def upsampled(model, x):
    """Our logits resized to the input size, as keras-hub's segmenter does
    (bilinear, half-pixel, no antialiasing)."""
    logits = model.predict_on_batch(x)
    return keras.ops.convert_to_numpy(
        keras.ops.image.resize(logits, x.shape[1:3], interpolation="bilinear")
    )


def run(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def test_keras_hub_preset_loads_with_its_numerics(tmp_path):
    theirs, encoder = keras_hub_segmenter()
    theirs.save_to_preset(str(tmp_path / "seg"))
    encoder.save_to_preset(str(tmp_path / "mit"))

    ours = keras_segformer.from_pretrained(tmp_path / "seg")
    assert isinstance(ours, keras_segformer.SegFormer)
    assert ours.backbone.approximate_gelu
    assert ours.backbone.block_norm_epsilon == 1e-6
    assert ours.load_report.format == "keras_hub"
    x = images()
    np.testing.assert_allclose(
        upsampled(ours, x), run(theirs, x), atol=TOL, rtol=0
    )
    # The image converter, as a transformers processor config.
    config = ours.preprocessor_config
    assert config["size"] == {"height": SIDE, "width": SIDE}
    np.testing.assert_allclose(config["image_mean"], [0.485, 0.456, 0.406])
    np.testing.assert_allclose(config["image_std"], [0.229, 0.224, 0.225])
    pixels = np.random.default_rng(2).uniform(0, 255, (1, SIDE, SIDE, 3))
    pixels = pixels.astype("float32")
    np.testing.assert_allclose(
        run(theirs.preprocessor.image_converter, pixels),
        normalize_image(pixels),
        atol=1e-5,
    )

    backbone = keras_segformer.from_pretrained(tmp_path / "mit")
    assert isinstance(backbone, keras_segformer.MiTBackbone)
    pyramid = keras.Model(
        encoder.inputs, list(encoder.pyramid_outputs.values())
    )
    for got, ref in zip(backbone.predict_on_batch(x), pyramid(x)):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got),
            keras.ops.convert_to_numpy(ref),
            atol=TOL,
            rtol=0,
        )


def test_our_preset_loads_in_keras_hub(tmp_path):
    model = randomize(
        keras_segformer.build_segformer(
            3,
            decoder_hidden_size=TINY_DECODER,
            approximate_gelu=True,
            block_norm_epsilon=1e-6,
            **TINY,
        ),
        seed=3,
    )
    paths = model.save_to_preset(tmp_path, image_size=SIDE)
    assert sorted(paths) == sorted(os.listdir(tmp_path))
    segmenter = hub().models.SegFormerImageSegmenter
    theirs = segmenter.from_preset(str(tmp_path))
    x = images(seed=4)
    np.testing.assert_allclose(
        run(theirs, x), upsampled(model, x), atol=TOL, rtol=0
    )
    pixels = np.random.default_rng(5).uniform(0, 255, (1, SIDE, SIDE, 3))
    pixels = pixels.astype("float32")
    np.testing.assert_allclose(
        run(theirs.preprocessor.image_converter, pixels),
        normalize_image(pixels),
        atol=1e-5,
    )
    # And back: the same weights and numbers.
    again = keras_segformer.from_pretrained(tmp_path)
    np.testing.assert_array_equal(
        again.predict_on_batch(x), model.predict_on_batch(x)
    )


def test_exact_gelu_model_is_written_with_a_warning(tmp_path):
    model = randomize(keras_segformer.build_mit(**TINY), seed=6)
    with pytest.warns(UserWarning, match=r"tanh GELU.* by \d\.\de-\d\d") as w:
        model.save_to_preset(tmp_path, image_size=SIDE)
    assert len([m for m in w if "keras-hub" in str(m.message)]) == 1
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["registered_name"] == "keras_hub>MiTBackbone"
    theirs = hub().models.MiTBackbone.from_preset(str(tmp_path))
    x = images(batch=1, seed=7)
    last = keras.ops.convert_to_numpy(model(x, training=False)[-1])
    gap = np.max(np.abs(run(theirs, x) - last))
    assert TOL / 100 < gap  # the numerics do differ, as the warning says


def test_what_keras_hub_cannot_hold_is_refused(tmp_path):
    model = keras_segformer.build_segformer(
        3, decoder_hidden_size=TINY_DECODER, head="mmseg", **TINY
    )
    with pytest.raises(CheckpointError, match="all-MLP head"):
        model.save_to_preset(tmp_path / "a")
    model = keras_segformer.build_segformer(
        3, decoder_hidden_size=TINY_DECODER, **TINY
    )
    with pytest.raises(ValueError, match="multiple of 32"):
        model.save_to_preset(tmp_path / "b", image_size=48)
    classifier = keras_segformer.build_classifier(3, **TINY)
    with pytest.raises(TypeError, match="model.backbone"):
        classifier.save_to_preset(tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "abc")
