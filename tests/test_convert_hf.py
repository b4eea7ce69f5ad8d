"""from_pretrained / load_hf_weights: key names, strictness, file formats."""

import json

import keras
import numpy as np
import pytest
import torch
from conftest import TINY, TINY_DECODER
from hf_utils import HF_TINY, hf_forward, make_hf_model, save_hf_model
from safetensors.torch import save_file

import keras_segformer
from keras_segformer.convert import (
    CheckpointError,
    canonicalize,
    load_hf_weights,
    read_state_dict,
)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _images(seed=0, size=(45, 70)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, *size, 3)).astype("float32")


def _write_dir(directory, model, state_dict):
    model.config.save_pretrained(directory)
    save_file(
        {k: v.contiguous() for k, v in state_dict.items()},
        str(directory / "model.safetensors"),
    )


def test_in_memory_names_of_transformers_5_load(tmp_path):
    hf = make_hf_model(**HF_TINY)
    state = hf.state_dict()  # segformer.stages.{i}.blocks.{j}.attention.q_proj
    assert any(".stages." in k and "q_proj" in k for k in state)
    _write_dir(tmp_path, hf, state)
    model = keras_segformer.from_pretrained(tmp_path)
    x = _images()
    ref, _ = hf_forward(hf, x)
    np.testing.assert_allclose(_np(model(x)), ref, atol=1e-4)


def test_saved_names_and_in_memory_names_canonicalize_alike(tmp_path):
    hf = save_hf_model(tmp_path, **HF_TINY)
    saved = read_state_dict(tmp_path / "model.safetensors")
    assert any(".encoder.block." in k for k in saved)
    memory = {k: v.numpy() for k, v in hf.state_dict().items()}
    assert sorted(canonicalize(saved)) == sorted(canonicalize(memory))


def test_pytorch_bin_is_read_with_weights_only(tmp_path):
    hf = make_hf_model(**HF_TINY)
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    model = keras_segformer.from_pretrained(tmp_path)
    x = _images(1)
    np.testing.assert_allclose(_np(model(x)), hf_forward(hf, x)[0], atol=1e-4)


def test_code_carrying_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(path)


def test_label_names_come_from_the_config(tmp_path):
    hf = make_hf_model(num_labels=3, **HF_TINY)
    hf.config.id2label = {0: "sky", 1: "road", 2: "car"}
    hf.config.label2id = {"sky": 0, "road": 1, "car": 2}
    hf.save_pretrained(tmp_path)
    model = keras_segformer.from_pretrained(tmp_path)
    assert model.id2label == {0: "sky", 1: "road", 2: "car"}
    assert model.label2id["car"] == 2


def _tiny_model(num_classes=7):
    return keras_segformer.build_segformer(
        num_classes, decoder_hidden_size=TINY_DECODER, **TINY
    )


def test_missing_tensor_is_named_and_nothing_is_assigned(tmp_path):
    hf = save_hf_model(tmp_path, **HF_TINY)
    state = read_state_dict(tmp_path / "model.safetensors")
    key = "segformer.encoder.block.1.0.attention.self.key.weight"
    del state[key]
    model = _tiny_model()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(
        CheckpointError, match="missing.*" + key.replace(".", r"\.")
    ):
        load_hf_weights(model, state)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    del hf


def test_unexpected_tensor_is_named(tmp_path):
    save_hf_model(tmp_path, **HF_TINY)
    state = read_state_dict(tmp_path / "model.safetensors")
    state["decode_head.extra.weight"] = np.zeros((2, 2), "float32")
    with pytest.raises(
        CheckpointError, match=r"unexpected.*decode_head\.extra"
    ):
        load_hf_weights(_tiny_model(), state)


def test_shape_mismatch_is_named(tmp_path):
    save_hf_model(tmp_path, num_labels=4, **HF_TINY)
    with pytest.raises(CheckpointError, match="shape.*decode_head.classifier"):
        load_hf_weights(_tiny_model(7), tmp_path / "model.safetensors")


def test_other_class_count_needs_backbone_only(tmp_path):
    hf = save_hf_model(tmp_path, num_labels=7, **HF_TINY)
    with pytest.raises(ValueError, match="backbone_only=True"):
        keras_segformer.from_pretrained(tmp_path, num_classes=3)
    model = keras_segformer.from_pretrained(
        tmp_path, num_classes=3, backbone_only=True
    )
    assert model.num_classes == 3
    assert any(k.startswith("decode_head") for k in model.load_report.skipped)
    x = _images(2)
    _, ref_stages = hf_forward(hf, x)
    for got, ref in zip(model.backbone(x), ref_stages):
        np.testing.assert_allclose(_np(got), ref, atol=1e-4)


def test_corrupt_files_give_clear_errors(tmp_path):
    save_hf_model(tmp_path, **HF_TINY)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        keras_segformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        keras_segformer.from_pretrained(tmp_path)


def test_missing_directory_or_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such directory"):
        keras_segformer.from_pretrained(str(tmp_path / "nothing"))
    config = make_hf_model(**HF_TINY).config.to_dict()
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="No weights"):
        keras_segformer.from_pretrained(tmp_path)


def test_unsupported_activation_is_refused(tmp_path):
    hf = make_hf_model(**HF_TINY)
    hf.config.hidden_act = "relu"
    hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="hidden_act"):
        keras_segformer.from_pretrained(tmp_path)


def test_builder_options_pass_through(tmp_path):
    save_hf_model(tmp_path, **HF_TINY)
    model = keras_segformer.from_pretrained(
        tmp_path, include_preprocessing=True, input_shape=(64, 96, 3)
    )
    assert model.backbone.include_preprocessing
    assert model.input_shape == (None, 64, 96, 3)
