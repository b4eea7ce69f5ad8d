"""Keras -> transformers export (``save_pretrained``) and round trips."""

import json
import os

import keras
import numpy as np
import pytest
import torch
from conftest import TINY, TINY_DECODER
from hf_utils import HF_TINY, hf_forward, make_hf_model, save_hf_model
from safetensors.numpy import load_file
from transformers import (
    SegformerConfig,
    SegformerForImageClassification,
    SegformerForSemanticSegmentation,
    SegformerModel,
)

import keras_segformer
from keras_segformer.convert import CheckpointError, save_pretrained

TOL = 1e-4
SIZE = (45, 70)  # non-square


def images(size=SIZE, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *size, 3)).astype("float32")


def to_numpy(x):
    if isinstance(x, (list, tuple)):
        return [keras.ops.convert_to_numpy(t) for t in x]
    return keras.ops.convert_to_numpy(x)


def randomize(model, seed=0):
    """Non-trivial values everywhere (BN statistics included)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if w.path.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, w.shape)
        else:
            value = rng.standard_normal(w.shape) * 0.2
            if w.path.endswith("gamma"):
                value += 1.0
        w.assign(value.astype("float32"))
    return model


def load_hf(cls, directory):
    model, info = cls.from_pretrained(directory, output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info[kind], (kind, info[kind])
    return model.eval()


def test_segformer_exports_to_transformers(tmp_path):
    names = {i: f"class_{i}" for i in range(5)}
    model = randomize(
        keras_segformer.build_segformer(
            5, decoder_hidden_size=TINY_DECODER, id2label=names, **TINY
        )
    )
    paths = save_pretrained(model, tmp_path / "hf")
    assert sorted(os.listdir(tmp_path / "hf")) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    config = json.load(open(paths["config"]))
    assert config["architectures"] == ["SegformerForSemanticSegmentation"]
    assert config["id2label"] == {str(k): v for k, v in names.items()}
    assert config["label2id"] == {v: k for k, v in names.items()}
    assert config["num_attention_heads"] == TINY["num_heads"]
    hf = load_hf(SegformerForSemanticSegmentation, tmp_path / "hf")
    assert hf.config.id2label == names
    x = images()
    ref, _ = hf_forward(hf, x)
    got = to_numpy(model.predict_on_batch(x))
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("task", ["classification", "backbone"])
def test_classifier_and_backbone_export(tmp_path, task):
    if task == "classification":
        model = keras_segformer.build_classifier(6, **TINY)
        cls = SegformerForImageClassification
    else:
        model = keras_segformer.build_mit(**TINY)
        cls = SegformerModel
    randomize(model, seed=1)
    paths = model.save_pretrained(tmp_path)  # the method
    assert sorted(paths) == ["config", "preprocessor", "readme", "weights"]
    assert all(os.path.isfile(p) for p in paths.values())
    hf = load_hf(cls, tmp_path)
    x = images(seed=2)
    ref_logits, ref_stages = hf_forward(hf, x)
    out = to_numpy(model.predict_on_batch(x))
    if task == "classification":
        assert hf.config.num_labels == 6
        np.testing.assert_allclose(out, ref_logits, atol=TOL, rtol=0)
    else:
        for got, ref in zip(out, ref_stages):
            np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)


def test_round_trip_transformers_keras_transformers_keras(tmp_path):
    hf = save_hf_model(tmp_path / "a", num_labels=4, **HF_TINY)
    model = keras_segformer.from_pretrained(tmp_path / "a")
    save_pretrained(model, tmp_path / "b")
    # Byte-for-byte the same tensors under the same names.
    original = load_file(tmp_path / "a" / "model.safetensors")
    exported = load_file(tmp_path / "b" / "model.safetensors")
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        assert exported[key].shape == value.shape, key
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(exported[key], value, err_msg=key)
    hf_b = load_hf(SegformerForSemanticSegmentation, tmp_path / "b")
    x = images((33, 50), batch=1)
    ref, _ = hf_forward(hf, x)
    got, _ = hf_forward(hf_b, x)
    np.testing.assert_array_equal(got, ref)
    again = keras_segformer.from_pretrained(tmp_path / "b")
    assert again.id2label == model.id2label
    for a, b in zip(again.weights, model.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    np.testing.assert_allclose(
        to_numpy(again.predict_on_batch(x)), ref, atol=TOL, rtol=0
    )


def test_mmseg_head_is_refused_and_nothing_written(tmp_path):
    model = keras_segformer.build_segformer(
        3, decoder_hidden_size=8, head="mmseg", **TINY
    )
    with pytest.raises(CheckpointError, match="SegformerHead"):
        save_pretrained(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_other_layer_norm_epsilon_warns(tmp_path):
    model = keras_segformer.build_mit(layer_norm_epsilon=1e-6, **TINY)
    with pytest.warns(UserWarning, match="eps"):
        save_pretrained(model, tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert "encoder.patch_embeddings.0.proj.weight" in state
    assert torch.from_numpy(state["encoder.layer_norm.3.weight"]).shape == (
        TINY["hidden_sizes"][-1],
    )


def test_pipeline_runs_on_saved_folder_and_its_masks_equal_ours(tmp_path):
    from PIL import Image
    from transformers import AutoImageProcessor, pipeline

    from keras_segformer.inference import Segmenter
    from keras_segformer.layers.preprocessing import IMAGENET_MEAN

    names = {i: f"class_{i}" for i in range(4)}
    model = randomize(
        keras_segformer.build_segformer(
            4, decoder_hidden_size=TINY_DECODER, id2label=names, **TINY
        ),
        seed=3,
    )
    model.save_pretrained(tmp_path, image_size=(64, 96))
    card = (tmp_path / "README.md").read_text()
    assert "class_3" in card and "64x96" in card
    # A model trained with other statistics: both sides must use them.
    path = tmp_path / "preprocessor_config.json"
    config = json.loads(path.read_text())
    assert config["image_mean"] == [0.485, 0.456, 0.406]
    config.update(image_mean=[0.45, 0.4, 0.5], image_std=[0.25, 0.2, 0.3])
    path.write_text(json.dumps(config))
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(processor).__name__.startswith("SegformerImageProcessor")
    assert (processor.size["height"], processor.size["width"]) == (64, 96)
    np.testing.assert_allclose(processor.image_mean, [0.45, 0.4, 0.5])
    loaded = keras_segformer.from_pretrained(tmp_path)
    assert loaded.preprocessor_config["size"] == {"height": 64, "width": 96}
    assert loaded.id2label == names

    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)  # non-square
    segment = pipeline("image-segmentation", model=str(tmp_path))
    results = segment(Image.fromarray(pixels))
    ours = Segmenter(loaded, size=(64, 96)).predict_mask(pixels)
    assert ours.shape == (45, 70)
    present = sorted(names[int(i)] for i in np.unique(ours))
    assert len(present) > 1  # several masks to compare
    assert sorted(r["label"] for r in results) == present
    for r in results:
        index = int(r["label"].split("_")[1])
        mask = np.asarray(r["mask"]) > 0
        np.testing.assert_array_equal(mask, ours == index, err_msg=r["label"])
    imagenet = Segmenter(loaded, size=(64, 96), mean=IMAGENET_MEAN)
    assert not np.array_equal(imagenet.predict_mask(pixels), ours)


def test_preprocessor_config_is_checked_against_in_model_normalization(
    tmp_path,
):
    model = keras_segformer.build_segformer(
        3, decoder_hidden_size=TINY_DECODER, **TINY
    )
    model.save_pretrained(tmp_path)
    path = tmp_path / "preprocessor_config.json"
    config = json.loads(path.read_text())
    config["image_mean"] = [0.5, 0.5, 0.5]
    path.write_text(json.dumps(config))
    loaded = keras_segformer.from_pretrained(tmp_path)
    assert loaded.preprocessor_config["image_mean"] == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="image_mean"):
        keras_segformer.from_pretrained(tmp_path, include_preprocessing=True)
    path.write_text(json.dumps({**config, "image_std": "wide"}))
    with pytest.raises(CheckpointError, match="image_std"):
        keras_segformer.from_pretrained(tmp_path)


def test_tanh_gelu_config_is_honoured(tmp_path):
    hf = make_hf_model(num_labels=3, hidden_act="gelu_new", seed=5, **HF_TINY)
    with torch.no_grad():  # weights large enough for the GELUs to differ
        for param in hf.parameters():
            param.mul_(4.0)
    hf.save_pretrained(tmp_path / "a")
    x = images((40, 56), batch=1, seed=6)
    ref, _ = hf_forward(hf, x)
    # The same weights with exact GELU: the test tells the two apart.
    exact = SegformerForSemanticSegmentation(
        SegformerConfig(**{**hf.config.to_dict(), "hidden_act": "gelu"})
    ).eval()
    exact.load_state_dict(hf.state_dict())
    assert np.max(np.abs(hf_forward(exact, x)[0] - ref)) > 10 * TOL
    model = keras_segformer.from_pretrained(tmp_path / "a")
    assert model.backbone.approximate_gelu
    got = to_numpy(model.predict_on_batch(x))
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
    model.save_pretrained(tmp_path / "b")
    written = json.loads((tmp_path / "b" / "config.json").read_text())
    assert written["hidden_act"] == "gelu_new"


def test_unknown_hidden_act_is_named():
    from keras_segformer.convert import config_to_kwargs

    config = {**HF_TINY, "hidden_act": "swish"}
    config.update(
        num_attention_heads=HF_TINY["num_attention_heads"],
        sr_ratios=[8, 4, 2, 1],
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        mlp_ratios=[4, 4, 4, 4],
    )
    with pytest.raises(ValueError, match="'swish'"):
        config_to_kwargs(config)
    for act, approximate in [
        ("gelu", False),
        ("gelu_new", True),
        ("gelu_pytorch_tanh", True),
    ]:
        backbone, _ = config_to_kwargs({**config, "hidden_act": act})
        assert backbone["approximate_gelu"] is approximate


def test_a_full_disk_is_one_line_and_nothing_half_written(
    tmp_path, monkeypatch
):
    # Battery case e_convert_dir_disk_full: safetensors' SafetensorError
    # (not an OSError) came out as a traceback and exit 1.
    import safetensors.numpy

    from keras_segformer.io_atomic import DiskFullError

    def full(state, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half")
        raise safetensors.SafetensorError(
            "Error while serializing: I/O error: No space left on device "
            "(os error 28)"
        )

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    model = keras_segformer.build_segformer(3, decoder_hidden_size=8, **TINY)
    with pytest.raises(DiskFullError) as e:
        save_pretrained(model, tmp_path / "out")
    assert e.value.exit_status == 4
    assert str(e.value).startswith(f"cannot write {tmp_path / 'out'}")
    assert "no space left on device" in str(e.value)
    assert os.listdir(tmp_path / "out") == []  # no temporary, nothing else
