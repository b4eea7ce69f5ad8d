"""SegFormerLoss against transformers / torch references, on every backend."""

import keras
import numpy as np
import pytest
import torch
from conftest import BACKEND, TINY, TINY_DECODER

from keras_segformer.training import SegFormerLoss

IGNORE = 255
# One shape for most tests: eager JAX compiles every op once per shape.
SHAPE = (2, 33, 38)


def _labels(rng, shape, num_classes, ignore_fraction=0.2):
    classes = max(num_classes, 2)
    labels = rng.integers(0, classes, size=shape).astype("int32")
    labels[rng.random(shape) < ignore_fraction] = IGNORE
    return labels


def _logits(rng, batch, height, width, num_classes):
    h, w = -(-height // 4), -(-width // 4)
    return (3 * rng.standard_normal((batch, h, w, num_classes))).astype(
        "float32"
    )


def _torch_loss(logits, labels, class_weights=None, reduction="mean"):
    """transformers' SegformerForSemanticSegmentation loss, verbatim."""
    logits = torch.from_numpy(logits).permute(0, 3, 1, 2)
    labels = torch.from_numpy(labels).long()
    upsampled = torch.nn.functional.interpolate(
        logits, size=labels.shape[-2:], mode="bilinear", align_corners=False
    )
    if logits.shape[1] > 1:
        weight = None
        if class_weights is not None:
            weight = torch.tensor(class_weights, dtype=torch.float32)
        loss_fct = torch.nn.CrossEntropyLoss(
            weight=weight, ignore_index=IGNORE, reduction=reduction
        )
        return loss_fct(upsampled, labels).numpy()
    valid_mask = ((labels >= 0) & (labels != IGNORE)).float()
    loss_fct = torch.nn.BCEWithLogitsLoss(reduction="none")
    loss = loss_fct(upsampled.squeeze(1), labels.float())
    return (loss * valid_mask).mean().numpy()


def quarter_res_model(num_classes, name="decode_head"):
    """A model with SegFormer's output contract, cheap to compile: logits at
    ceil(H / 4) x ceil(W / 4). The full model is covered elsewhere."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 4, strides=4, padding="same", name="stem")(
        inputs
    )
    x = keras.layers.LayerNormalization(name="norm")(x)
    logits = keras.layers.Dense(num_classes, name=name)(x)
    return keras.Model(inputs, logits)


def _value(x):
    return float(keras.ops.convert_to_numpy(x))


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("size", [SHAPE[1:], (32, 24)])
def test_matches_torch_reference(rng, num_classes, size):
    logits = _logits(rng, 2, *size, num_classes)
    labels = _labels(rng, (2, *size), num_classes)  # binary: 0 / 1 / 255
    expected = _torch_loss(logits, labels)
    got = _value(SegFormerLoss()(labels, logits))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # Labels with a trailing channel axis give the same number.
    got = _value(SegFormerLoss()(labels[..., None], logits))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_labels", [1, 4])
def test_matches_transformers_model(rng, num_labels):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        depths=TINY["depths"],
        hidden_sizes=TINY["hidden_sizes"],
        num_attention_heads=TINY["num_heads"],
        sr_ratios=TINY["sr_ratios"],
        decoder_hidden_size=TINY_DECODER,
        num_labels=num_labels,
    )
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(config).eval()
    images = torch.from_numpy(
        rng.standard_normal((SHAPE[0], 3, *SHAPE[1:])).astype("float32")
    )
    labels = _labels(rng, SHAPE, num_labels)
    # Large logits so the loss is far from log(2) / log(K).
    with torch.no_grad():
        model.decode_head.classifier.weight.mul_(30.0)
        out = model(pixel_values=images, labels=torch.from_numpy(labels).long())
    logits = out.logits.permute(0, 2, 3, 1).numpy()
    assert logits.shape[1:3] == (9, 10)
    got = _value(SegFormerLoss()(labels, logits))
    np.testing.assert_allclose(got, out.loss.item(), rtol=1e-5, atol=1e-6)


def test_class_weights_match_torch_weight(rng):
    logits = _logits(rng, *SHAPE, 3)
    labels = _labels(rng, SHAPE, 3)
    weights = [0.5, 2.0, 3.0]
    expected = _torch_loss(logits, labels, class_weights=weights)
    got = _value(SegFormerLoss(class_weights=weights)(labels, logits))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    unweighted = _value(SegFormerLoss()(labels, logits))
    assert abs(got - unweighted) > 1e-3


@pytest.mark.parametrize("num_classes", [1, 3])
def test_all_ignored_gives_zero_not_nan(rng, num_classes):
    logits = _logits(rng, *SHAPE, num_classes)
    labels = np.full(SHAPE, IGNORE, "int32")
    got = _value(SegFormerLoss()(labels, logits))
    assert got == 0.0


def test_sum_and_none_reductions(rng):
    logits = _logits(rng, *SHAPE, 3)
    labels = _labels(rng, SHAPE, 3)
    total = _value(SegFormerLoss(reduction="sum")(labels, logits))
    np.testing.assert_allclose(
        total, _torch_loss(logits, labels, reduction="sum"), rtol=1e-5
    )
    per_pixel = keras.ops.convert_to_numpy(
        SegFormerLoss(reduction=None)(labels, logits)
    )
    expected = _torch_loss(logits, labels, reduction="none")
    assert per_pixel.shape == labels.shape
    assert np.all(per_pixel[labels == IGNORE] == 0)
    np.testing.assert_allclose(per_pixel, expected, rtol=1e-5, atol=1e-6)


def test_sample_weight_is_a_pixel_weight(rng):
    logits = _logits(rng, *SHAPE, 3)
    labels = _labels(rng, SHAPE, 3)
    sample_weight = np.array([0.0, 2.0], "float32")
    per_pixel = _torch_loss(logits, labels, reduction="none")
    w = (labels != IGNORE) * sample_weight[:, None, None]
    expected = (per_pixel * w).sum() / w.sum()
    got = _value(SegFormerLoss()(labels, logits, sample_weight=sample_weight))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize(
    "num_classes, bad_value", [(3, 3), (3, -1), (3, 254), (1, 2)]
)
def test_invalid_labels_raise_eagerly(rng, num_classes, bad_value):
    logits = _logits(rng, *SHAPE, num_classes)
    labels = _labels(rng, SHAPE, num_classes)
    labels[0, 3, 3] = bad_value
    with pytest.raises(ValueError, match="Received invalid values"):
        SegFormerLoss()(labels, logits)
    # check_labels=False: the bad pixel is ignored.
    relaxed = _value(SegFormerLoss(check_labels=False)(labels, logits))
    labels[0, 3, 3] = IGNORE
    np.testing.assert_allclose(
        relaxed, _value(SegFormerLoss()(labels, logits)), rtol=1e-6
    )


def test_evaluate_uses_the_same_loss(rng):
    model = quarter_res_model(3)
    model.compile(loss=SegFormerLoss())
    images = rng.standard_normal((*SHAPE, 3)).astype("float32")
    labels = _labels(rng, SHAPE, 3)
    sample_weight = np.array([0.5, 2.0], "float32")
    logits = keras.ops.convert_to_numpy(model(images, training=False))

    got = model.evaluate(images, labels, batch_size=2, verbose=0)
    np.testing.assert_allclose(got, _torch_loss(logits, labels), rtol=1e-5)

    got = model.evaluate(
        images, labels, sample_weight=sample_weight, batch_size=2, verbose=0
    )
    expected = _value(SegFormerLoss()(labels, logits, sample_weight))
    np.testing.assert_allclose(got, expected, rtol=1e-5)

    # Labels with a channel axis, as tf.data pipelines often give them. A
    # fresh compile: a TF function retraced with another label rank would
    # see labels of unknown rank.
    model.compile(loss=SegFormerLoss())
    got = model.evaluate(images, labels[..., None], batch_size=2, verbose=0)
    np.testing.assert_allclose(got, _torch_loss(logits, labels), rtol=1e-5)


def test_invalid_labels_under_compilation(rng):
    model = quarter_res_model(3)
    model.compile(loss=SegFormerLoss())
    images = rng.standard_normal((*SHAPE, 3)).astype("float32")
    labels = _labels(rng, SHAPE, 3)
    labels[0, 0, 0] = 7
    if BACKEND == "torch":  # the torch trainer runs eagerly: it raises
        with pytest.raises(ValueError, match="Received invalid values"):
            model.evaluate(images, labels, verbose=0)
    else:  # traced (tf.function / jax.jit): cannot raise, so NaN
        assert np.isnan(model.evaluate(images, labels, verbose=0))


def test_serialization_round_trip():
    loss = SegFormerLoss(ignore_index=254, class_weights=[1.0, 2.0])
    cls = keras.saving.get_registered_object("keras_segformer>SegFormerLoss")
    assert cls is SegFormerLoss
    restored = cls.from_config(loss.get_config())
    assert isinstance(restored, SegFormerLoss)
    assert restored.get_config() == loss.get_config()


def test_bad_arguments():
    with pytest.raises(ValueError, match="non-negative"):
        SegFormerLoss(class_weights=[1.0, -1.0])
    logits = np.zeros((*SHAPE[:1], 9, 10, 3), "float32")
    with pytest.raises(ValueError, match="3 classes"):
        SegFormerLoss(class_weights=[1.0, 2.0])(np.zeros(SHAPE), logits)
    with pytest.raises(ValueError, match="y_true"):
        SegFormerLoss()(np.zeros((*SHAPE, 2)), logits)
