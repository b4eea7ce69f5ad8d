"""The one loader: format registry, one report type, from_pretrained ->
load_checkpoint, Hub ids, and the shared key parser."""

import dataclasses
import re

import keras
import numpy as np
import pytest
from hf_utils import HF_TINY, hf_forward, make_hf_model, save_hf_model
from safetensors.numpy import save_file

import keras_segformer
from keras_segformer.convert import (
    ConversionReport,
    LoadReport,
    hf,
    load_checkpoint,
    mmseg,
    nvlabs,
    read_state_dict,
)
from keras_segformer.convert.formats import REGISTRY, Format, detect_format


def _images(seed=0, size=(45, 70)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, *size, 3)).astype("float32")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_a_registry_entry_is_all_a_new_format_needs(tmp_path, monkeypatch):
    """A format the loader has never seen (every transformers name under
    ``net.``) loads once it has a registry entry: no loader code knows
    formats by name."""
    hf_model = save_hf_model(tmp_path / "hf", **HF_TINY)
    saved = read_state_dict(tmp_path / "hf" / "model.safetensors")
    state = {"net." + k: v for k, v in hf.canonicalize(saved).items()}
    path = tmp_path / "toy.safetensors"
    save_file(state, str(path))
    toy = dataclasses.replace(
        REGISTRY["hf"],
        name="toy",
        description="toy checkpoint",
        signature=re.compile(r"^(net\.)segformer\.encoder\.patch_embeddings"),
        rename=lambda canonical, prefix: (prefix + canonical, None, None),
        is_head=lambda key: not key.startswith("net.segformer."),
        canonicalize=None,
        config_file=None,
    )
    with pytest.raises(Exception, match="Unknown checkpoint layout"):
        detect_format(state)
    monkeypatch.setitem(REGISTRY, "toy", toy)
    assert detect_format(state).format == "toy"
    model = load_checkpoint(path, num_heads=HF_TINY["num_attention_heads"])
    assert model.load_report.format == "toy"
    assert "toy checkpoint (toy)" in model.load_report.summary()
    assert "net.decode_head.classifier.weight" in model.load_report.assigned
    x = _images()
    ref, _ = hf_forward(hf_model, x)
    np.testing.assert_allclose(_np(model(x)), ref, atol=1e-4)


def test_from_pretrained_and_load_checkpoint_are_one_path(tmp_path):
    save_hf_model(tmp_path, num_labels=3, **HF_TINY)
    a = keras_segformer.from_pretrained(tmp_path)
    b = load_checkpoint(tmp_path)
    assert ConversionReport is LoadReport
    assert type(a.load_report) is type(b.load_report) is LoadReport
    assert a.load_report.summary() == b.load_report.summary()
    assert a.load_report.format == "hf"
    assert a.get_config() == b.get_config()
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(_np(x), _np(y))


def test_a_hub_id_is_downloaded_then_loaded(tmp_path, monkeypatch):
    import huggingface_hub

    save_hf_model(tmp_path / "snapshot", num_labels=3, **HF_TINY)
    calls = []

    def fake_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    model = keras_segformer.from_pretrained("someone/tiny-segformer")
    assert calls[0][0] == "someone/tiny-segformer"
    assert "config.json" in calls[0][1]["allow_patterns"]
    assert model.num_classes == 3 and model.load_report.format == "hf"

    def offline(repo_id, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError, match="someone/other.*Offline"):
        keras_segformer.from_pretrained("someone/other")


def test_from_pretrained_backbone_only_keeps_the_checkpoints_classes(
    tmp_path,
):
    hf_model = make_hf_model(num_labels=3, **HF_TINY)
    hf_model.config.id2label = {0: "sky", 1: "road", 2: "car"}
    hf_model.config.label2id = {"sky": 0, "road": 1, "car": 2}
    hf_model.save_pretrained(tmp_path)
    model = keras_segformer.from_pretrained(tmp_path, backbone_only=True)
    assert model.num_classes == 3
    assert model.id2label == {0: "sky", 1: "road", 2: "car"}
    head = model.get_layer("decode_head")
    assert sorted(model.load_report.fresh) == sorted(
        w.path for w in head.weights
    )
    assert all(k.startswith("decode_head.") for k in model.load_report.skipped)


def test_foreign_key_maps_share_the_canonical_parser():
    enc = "segformer.encoder"
    assert hf.split_backbone_key(f"{enc}.patch_embeddings.2.proj.bias") == (
        "patch_embedding",
        (2, "proj", "bias"),
    )
    assert hf.split_backbone_key(
        f"{enc}.block.1.3.attention.self.key.weight"
    ) == ("block", (1, 3, "attention.self.key", "weight"))
    assert hf.split_backbone_key(f"{enc}.layer_norm.3.weight") == (
        "stage_norm",
        (3, "weight"),
    )
    assert hf.split_backbone_key("decode_head.classifier.weight") is None
    key = f"{enc}.block.1.3.attention.self.key.weight"
    assert nvlabs.source_key(key) == (
        "backbone.block2.3.attn.kv.weight",
        (0, 2, "key"),
        None,
    )
    assert mmseg.source_key(key, "") == (
        "layers.1.1.3.attn.attn.in_proj_weight",
        (1, 3, "k"),
        None,
    )
    assert mmseg.source_key(f"{enc}.layer_norm.3.bias") == (
        "backbone.layers.3.2.bias",
        None,
        None,
    )
    assert nvlabs.source_key(f"{enc}.patch_embeddings.0.layer_norm.weight") == (
        "backbone.patch_embed1.norm.weight",
        None,
        None,
    )


def test_every_format_is_a_registry_entry():
    assert sorted(REGISTRY) == ["hf", "mit", "mmseg", "nvlabs"]
    assert all(isinstance(f, Format) for f in REGISTRY.values())
    examples = {
        "hf": "segformer.encoder.patch_embeddings.0.proj.weight",
        "nvlabs": "backbone.patch_embed1.proj.weight",
        "mit": "patch_embed1.proj.weight",
        "mmseg": "backbone.layers.0.0.projection.weight",
    }
    for name, key in examples.items():
        assert detect_format({key: np.zeros(1)}).format == name
