"""Streaming segmentation metrics against a numpy/mmseg reference."""

import keras
import numpy as np
import pytest
import torch
from conftest import tiny_segformer
from test_losses import IGNORE, SHAPE

from keras_segformer.training import (
    ConfusionMatrix,
    MeanAccuracy,
    MeanIoU,
    PixelAccuracy,
    SegFormerLoss,
    per_class_report,
    segmentation_scores,
)

K = 4


def _mmseg_scores(preds, labels, num_classes):
    """mmseg IoUMetric: histograms of intersection / prediction / label
    over the whole set, then IoU, Acc, nanmean. Independent of any
    confusion matrix."""
    mask = labels != IGNORE
    pred, label = preds[mask], labels[mask]
    bins = np.arange(num_classes + 1)
    area_intersect = np.histogram(pred[pred == label], bins)[0].astype(float)
    area_pred = np.histogram(pred, bins)[0].astype(float)
    area_label = np.histogram(label, bins)[0].astype(float)
    union = area_pred + area_label - area_intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = area_intersect / union
        acc = area_intersect / area_label
    return {
        "mIoU": np.nanmean(iou),
        "mAcc": np.nanmean(acc),
        "aAcc": area_intersect.sum() / area_label.sum(),
        "IoU": iou,
        "Acc": acc,
    }


def _np_confusion(preds, labels, num_classes):
    mask = labels != IGNORE
    cells = labels[mask] * num_classes + preds[mask]
    counts = np.bincount(cells, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def _masks(rng, shape=SHAPE):
    """Labels and predictions over classes 0..K-2 (class K-1 absent from
    both), with ignored pixels; class K-2 is predicted but never labelled."""
    labels = rng.integers(0, K - 2, size=shape)
    labels[rng.random(shape) < 0.25] = IGNORE
    preds = np.where(rng.random(shape) < 0.6, labels, 0)
    preds = np.where(preds == IGNORE, 1, preds)
    preds[rng.random(shape) < 0.1] = K - 2
    return labels.astype("int32"), preds.astype("int32")


def _results(metrics):
    return [float(keras.ops.convert_to_numpy(m.result())) for m in metrics]


def _all_metrics(**kwargs):
    return [
        MeanIoU(K, **kwargs),
        MeanAccuracy(K, **kwargs),
        PixelAccuracy(K, **kwargs),
    ]


def test_masks_match_mmseg_reference(rng):
    labels, preds = _masks(rng)
    expected = _mmseg_scores(preds, labels, K)
    assert np.isnan(expected["IoU"][K - 1])  # absent class
    assert np.isnan(expected["Acc"][K - 2])  # predicted, never labelled

    metrics = _all_metrics(from_logits=False)
    for m in metrics:
        m.update_state(labels, preds)
    np.testing.assert_allclose(
        _results(metrics),
        [expected["mIoU"], expected["mAcc"], expected["aAcc"]],
        rtol=1e-6,
    )

    confusion = ConfusionMatrix(K, from_logits=False)
    confusion.update_state(labels[..., None], preds)
    cm = keras.ops.convert_to_numpy(confusion.result())
    np.testing.assert_array_equal(cm, _np_confusion(preds, labels, K))
    scores = confusion.scores()
    np.testing.assert_allclose(scores["mIoU"], expected["mIoU"], rtol=1e-12)
    np.testing.assert_allclose(
        list(scores["IoU"].values()), expected["IoU"], rtol=1e-12
    )
    np.testing.assert_allclose(
        list(scores["Acc"].values()), expected["Acc"], rtol=1e-12
    )


def test_logits_are_upsampled_then_argmaxed(rng):
    labels, _ = _masks(rng)
    h, w = -(-SHAPE[1] // 4), -(-SHAPE[2] // 4)
    logits = rng.standard_normal((SHAPE[0], h, w, K)).astype("float32")
    upsampled = torch.nn.functional.interpolate(
        torch.from_numpy(logits).permute(0, 3, 1, 2),
        size=SHAPE[1:],
        mode="bilinear",
        align_corners=False,
    )
    preds = upsampled.argmax(1).numpy()
    # Nearest upsampling of the low-res argmax would be a different mask.
    nearest = logits.argmax(-1).repeat(4, 1).repeat(4, 2)[:, : SHAPE[1]]
    assert (nearest[:, :, : SHAPE[2]] != preds).any()

    confusion = ConfusionMatrix(K)
    confusion.update_state(labels, logits)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(confusion.result()),
        _np_confusion(preds, labels, K),
    )


def test_single_logit_channel_is_binary(rng):
    labels = rng.integers(0, 2, size=SHAPE).astype("int32")
    labels[rng.random(SHAPE) < 0.2] = IGNORE
    logits = rng.standard_normal((SHAPE[0], 9, 10, 1)).astype("float32")
    upsampled = torch.nn.functional.interpolate(
        torch.from_numpy(logits).permute(0, 3, 1, 2),
        size=SHAPE[1:],
        mode="bilinear",
        align_corners=False,
    )
    preds = (upsampled[:, 0] > 0).long().numpy()
    metric = MeanIoU(2)
    metric.update_state(labels, logits)
    expected = _mmseg_scores(preds, labels, 2)["mIoU"]
    np.testing.assert_allclose(_results([metric])[0], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="num_classes=2"):
        MeanIoU(3).update_state(labels, logits)


def test_accumulates_over_the_set_not_per_batch(rng):
    labels, preds = _masks(rng, (6, *SHAPE[1:]))
    # Batch 0 sees only class 0 (perfect), the others are noisy.
    labels[0] = 0
    preds[0] = 0
    streamed = _all_metrics(from_logits=False)
    per_batch_miou = []
    for i in range(0, 6, 2):
        for m in streamed:
            m.update_state(labels[i : i + 2], preds[i : i + 2])
        single = MeanIoU(K, from_logits=False)
        single.update_state(labels[i : i + 2], preds[i : i + 2])
        per_batch_miou.append(_results([single])[0])
    one_shot = _all_metrics(from_logits=False)
    for m in one_shot:
        m.update_state(labels, preds)
    np.testing.assert_allclose(
        _results(streamed), _results(one_shot), rtol=1e-6
    )
    expected = _mmseg_scores(preds, labels, K)
    np.testing.assert_allclose(_results(streamed)[0], expected["mIoU"], 1e-6)
    assert abs(np.mean(per_batch_miou) - expected["mIoU"]) > 1e-3


def test_reset_state(rng):
    labels, preds = _masks(rng)
    metric = MeanIoU(K, from_logits=False)
    metric.update_state(labels, preds)
    assert _results([metric])[0] > 0
    metric.reset_state()
    cm = keras.ops.convert_to_numpy(metric.confusion.value)
    assert cm.sum() == 0
    assert np.isnan(_results([metric])[0])  # nothing seen: undefined
    metric.update_state(labels, preds)
    np.testing.assert_allclose(
        _results([metric])[0],
        _mmseg_scores(preds, labels, K)["mIoU"],
        rtol=1e-6,
    )


def test_sample_weight_zero_leaves_samples_out(rng):
    labels, preds = _masks(rng)
    metric = PixelAccuracy(K, from_logits=False)
    metric.update_state(labels, preds, sample_weight=np.array([0.0, 3.0]))
    expected = _mmseg_scores(preds[1:], labels[1:], K)["aAcc"]
    np.testing.assert_allclose(_results([metric])[0], expected, rtol=1e-6)


def test_labels_out_of_range_are_not_counted(rng):
    labels, preds = _masks(rng)
    noisy = labels.copy()
    noisy[:, :3] = K + 7
    clean = labels.copy()
    clean[:, :3] = IGNORE
    a = ConfusionMatrix(K, from_logits=False)
    a.update_state(noisy, preds)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(a.result()),
        _np_confusion(preds, clean, K),
    )


def test_per_class_report(rng):
    labels, preds = _masks(rng)
    metric = MeanIoU(K, from_logits=False)
    metric.update_state(labels, preds)
    names = ["road", "sky", "car", "tree"]
    report = per_class_report(metric, names)
    expected = _mmseg_scores(preds, labels, K)
    lines = report.splitlines()
    assert len(lines) == K + 2
    for i, name in enumerate(names):
        row = lines[i + 1].split()
        assert row[0] == name
        for got, want in zip(row[1:], (expected["IoU"][i], expected["Acc"][i])):
            if np.isnan(want):
                assert got == "nan"
            else:
                assert float(got) == pytest.approx(100 * want, abs=0.006)
    assert f"mIoU {100 * expected['mIoU']:.2f}" in lines[-1]
    # Same numbers from the matrix itself.
    cm = keras.ops.convert_to_numpy(metric.confusion.value)
    assert per_class_report(cm, names) == report
    assert set(segmentation_scores(cm, names)["IoU"]) == set(names)
    with pytest.raises(ValueError, match="class_names"):
        per_class_report(cm, names[:2])


def _evaluate_and_check(model, images, labels):
    model.compile(
        loss=SegFormerLoss(),
        metrics=[MeanIoU(K), MeanAccuracy(K), PixelAccuracy(K)],
    )
    logs = model.evaluate(
        images, labels, batch_size=2, verbose=0, return_dict=True
    )
    # predict, not an eager call: eager JAX compiles op by op (slow).
    logits = model.predict(images, batch_size=2, verbose=0)
    preds = (
        torch.nn.functional.interpolate(
            torch.from_numpy(logits).permute(0, 3, 1, 2),
            size=labels.shape[1:],
            mode="bilinear",
            align_corners=False,
        )
        .argmax(1)
        .numpy()
    )
    expected = _mmseg_scores(preds, labels, K)
    np.testing.assert_allclose(logs["mean_iou"], expected["mIoU"], rtol=1e-5)
    np.testing.assert_allclose(
        logs["mean_accuracy"], expected["mAcc"], rtol=1e-5
    )
    np.testing.assert_allclose(
        logs["pixel_accuracy"], expected["aAcc"], rtol=1e-5
    )


def test_tiny_segformer_evaluate(rng):
    """Three batches through the backend's compiled evaluate loop."""
    model = tiny_segformer(num_classes=K)
    images = rng.standard_normal((6, 32, 36, 3)).astype("float32")
    labels, _ = _masks(rng, (6, 32, 36))
    _evaluate_and_check(model, images, labels)


def test_config_round_trip_and_errors():
    metric = MeanIoU(7, ignore_index=0, from_logits=False)
    cls = keras.saving.get_registered_object("keras_segformer>MeanIoU")
    restored = cls.from_config(metric.get_config())
    assert restored.get_config() == metric.get_config()
    assert restored.name == "mean_iou"
    with pytest.raises(ValueError, match="num_classes"):
        MeanIoU(1)
    with pytest.raises(ValueError, match="4 channels"):
        MeanIoU(5).update_state(np.zeros(SHAPE), np.zeros((2, 9, 10, 4)))
