"""Numbers equal to transformers on the same weights and inputs (<= 1e-4)."""

import keras
import numpy as np
import pytest
from hf_utils import HF_B0, HF_B2_SHAPED, HF_TINY, hf_forward, save_hf_model

import keras_segformer

TOL = 1e-4
CONFIGS = {"tiny": HF_TINY, "b0": HF_B0, "b2_shaped": HF_B2_SHAPED}
# Non-square, not multiples of 32, batch 2.
SIZES = [(97, 131), (300, 417)]


def _to_numpy(x):
    if isinstance(x, (list, tuple)):
        return [keras.ops.convert_to_numpy(t) for t in x]
    return keras.ops.convert_to_numpy(x)


def _probe(model):
    """One compiled graph giving the logits and the four stage maps, so each
    input size compiles once (XLA compiles dominate the JAX run)."""
    inputs = keras.Input(model.backbone.image_shape)
    stages = model.backbone(inputs)
    if isinstance(model, keras_segformer.SegFormer):
        logits = model.get_layer("decode_head")(stages)
    else:
        pooled = model.get_layer("pool")(stages[-1])
        logits = model.get_layer("classifier")(pooled)
    return keras.Model(inputs, [logits, *stages])


def _images(size, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *size, 3)).astype("float32")


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_logits_and_stages_match_transformers(tmp_path, config, task):
    hf = save_hf_model(tmp_path, task=task, num_labels=7, **CONFIGS[config])
    model = keras_segformer.from_pretrained(tmp_path)
    expected_type = (
        keras_segformer.SegFormer
        if task == "segmentation"
        else keras_segformer.MiTClassifier
    )
    assert isinstance(model, expected_type)
    probe = _probe(model)
    for size in SIZES:
        x = _images(size)
        ref_logits, ref_stages = hf_forward(hf, x)
        logits, *stages = _to_numpy(probe.predict_on_batch(x))
        assert logits.shape == ref_logits.shape
        np.testing.assert_allclose(logits, ref_logits, atol=TOL, rtol=0)
        assert len(stages) == len(ref_stages) == 4
        for got, ref in zip(stages, ref_stages):
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)


def test_direct_call_matches_transformers(tmp_path):
    """``model(x)`` (eager, no training flag) gives the reference numbers."""
    hf = save_hf_model(tmp_path, **HF_TINY)
    model = keras_segformer.from_pretrained(tmp_path)
    x = _images((45, 70), batch=2, seed=1)
    ref_logits, _ = hf_forward(hf, x)
    np.testing.assert_allclose(_to_numpy(model(x)), ref_logits, atol=TOL)


def test_backbone_model_matches_transformers(tmp_path):
    hf = save_hf_model(tmp_path, task="backbone", **HF_TINY)
    backbone = keras_segformer.from_pretrained(tmp_path)
    assert isinstance(backbone, keras_segformer.MiTBackbone)
    x = _images((64, 81))
    _, ref_stages = hf_forward(hf, x)
    for got, ref in zip(_to_numpy(backbone.predict_on_batch(x)), ref_stages):
        np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("variant", ["b0", "b1", "b2", "b3", "b4", "b5"])
@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_parameter_counts_equal_transformers(variant, task):
    import torch
    from hf_utils import HF_CLASSES
    from transformers import SegformerConfig

    cfg = keras_segformer.configs.variant_config(variant)
    hf_config = SegformerConfig(
        depths=list(cfg["depths"]),
        hidden_sizes=list(cfg["hidden_sizes"]),
        decoder_hidden_size=cfg["decoder_hidden_size"],
        num_labels=150 if task == "segmentation" else 1000,
    )
    with torch.device("meta"):
        hf = HF_CLASSES[task](hf_config)
    hf_count = sum(p.numel() for p in hf.parameters())
    if task == "segmentation":
        builder = getattr(keras_segformer, f"SegFormer{variant.upper()}")
    else:
        builder = getattr(keras_segformer, f"MiT{variant.upper()}Classifier")
    model = builder()
    # transformers counts BN running stats as buffers, not parameters.
    non_trainable = sum(
        int(np.prod(w.shape)) for w in model.non_trainable_weights
    )
    assert model.count_params() - non_trainable == hf_count
