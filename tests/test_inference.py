"""Segmenter: whole / sliding-window inference, flip and multi-scale TTA,
batching of mixed sizes. Checked against per-pixel models whose exact
output is known, and against transformers' pipeline on a tiny SegFormer."""

import keras
import numpy as np
import pytest
import torch
from transformers.models.segformer.image_processing_pil_segformer import (
    SegformerImageProcessorPil,
)

import keras_segformer
from keras_segformer import inference
from keras_segformer.inference import Segmenter, slide_windows

NUM_CLASSES = 4
RNG = np.random.default_rng(0)
KERNEL = RNG.normal(size=(3, NUM_CLASSES)).astype(np.float32)
BIAS = RNG.normal(size=(NUM_CLASSES,)).astype(np.float32)
IMAGE_A = RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)
IMAGE_B = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
IMAGE_SMALL = RNG.integers(0, 256, (9, 12, 3), dtype=np.uint8)
# Tiny SegFormer inputs all use this shape, so each backend compiles once.
SEG_SHAPE = (61, 83)
IMAGE_SEG = RNG.integers(0, 256, SEG_SHAPE + (3,), dtype=np.uint8)


def reference_logits(image, normalize=True):
    """Exact logits of the per-pixel models below, in numpy."""
    x = inference.normalize_image(image) if normalize else image
    return np.asarray(x, np.float32) @ KERNEL + BIAS


@pytest.fixture(scope="module")
def per_pixel():
    """Keras model with a per-pixel answer: nearest x2 upsampling then a
    1x1 conv. Its logits come out at twice the input size, so the bilinear
    resize back to the window/image runs, yet every pixel's logits are
    exactly ``reference_logits`` whatever the window it is seen in."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.UpSampling2D(2)(inputs)
    conv = keras.layers.Conv2D(NUM_CLASSES, 1)
    model = keras.Model(inputs, conv(x))
    conv.set_weights([KERNEL[None, None], BIAS])
    return model


class Recorder:
    """Numpy per-pixel model (full resolution) that records its inputs."""

    def __init__(self, kernel=KERNEL, bias=BIAS):
        self.kernel, self.bias, self.batches = kernel, bias, []

    def __call__(self, batch):
        self.batches.append(batch.copy())
        return batch @ self.kernel + self.bias


def small_segformer(**kwargs):
    """A real SegFormer, two stages of one width: on JAX every distinct
    weight shape compiles its own random initializer, so this builds in a
    fraction of the time of the four-stage ``TINY`` config."""
    return keras_segformer.build_segformer(
        5,
        decoder_hidden_size=8,
        depths=[1, 1],
        hidden_sizes=[8, 8],
        num_heads=[1, 2],
        sr_ratios=[2, 1],
        patch_sizes=[7, 3],
        strides=[4, 2],
        mlp_ratios=[2, 2],
        **kwargs,
    )


@pytest.fixture(scope="module")
def segformer():
    keras.utils.set_random_seed(1)
    return small_segformer()


def test_slide_windows_follow_mmseg():
    # Worked by hand from mmseg's slide_inference: 2 x 3 grids, the last
    # window of each axis shifted back inside the image.
    assert slide_windows(10, 17, 8, 6) == [
        (0, 8, 0, 8),
        (0, 8, 6, 14),
        (0, 8, 9, 17),
        (2, 10, 0, 8),
        (2, 10, 6, 14),
        (2, 10, 9, 17),
    ]
    assert slide_windows(8, 12, (4, 6), (4, 3)) == [
        (0, 4, 0, 6),
        (0, 4, 3, 9),
        (0, 4, 6, 12),
        (4, 8, 0, 6),
        (4, 8, 3, 9),
        (4, 8, 6, 12),
    ]
    # An image smaller than the crop: one window, the image itself.
    assert slide_windows(5, 7, 8, 6) == [(0, 5, 0, 7)]


def test_whole_equals_reference(per_pixel):
    logits = Segmenter(per_pixel).predict_logits([IMAGE_A, IMAGE_B])
    for out, image in zip(logits, [IMAGE_A, IMAGE_B], strict=True):
        assert out.shape == image.shape[:2] + (NUM_CLASSES,)
        np.testing.assert_allclose(
            out, reference_logits(image), rtol=1e-5, atol=1e-5
        )


def test_overlapping_windows_equal_whole(per_pixel):
    whole = Segmenter(per_pixel, batch_size=1)
    slide = Segmenter(per_pixel, mode="slide", crop_size=16, stride=10)
    for image in (IMAGE_A, IMAGE_SMALL):  # 4 x 5 windows; padded image
        expected = whole.predict_logits(image)
        np.testing.assert_allclose(
            slide.predict_logits(image), expected, rtol=0, atol=1e-6
        )
    unpadded = Segmenter(
        per_pixel, mode="slide", crop_size=16, stride=10, pad_to_crop=False
    )
    np.testing.assert_allclose(
        unpadded.predict_logits(IMAGE_SMALL),
        whole.predict_logits(IMAGE_SMALL),
        rtol=0,
        atol=1e-6,
    )


@pytest.mark.parametrize("normalize", [True, False])
def test_windows_padded_to_crop_and_batched(normalize):
    model = Recorder()
    segmenter = Segmenter(
        model,
        mode="slide",
        crop_size=16,
        stride=12,
        batch_size=8,
        normalize=normalize,
    )
    small, big = segmenter.predict_logits([IMAGE_SMALL, IMAGE_A])
    # 9x12 -> 1 padded window; 37x53 -> 3 x 5 windows: 16 windows, 2 calls.
    assert [b.shape for b in model.batches] == [
        (8, 16, 16, 3),
        (8, 16, 16, 3),
    ]
    first = model.batches[0][0]
    pad = 0.0 if normalize else np.asarray(inference.IMAGENET_MEAN) * 255
    np.testing.assert_allclose(first[9:], np.broadcast_to(pad, (7, 16, 3)))
    np.testing.assert_allclose(first[:, 12:], np.broadcast_to(pad, (16, 4, 3)))
    np.testing.assert_allclose(
        small, reference_logits(IMAGE_SMALL, normalize), atol=1e-5
    )
    np.testing.assert_allclose(
        big, reference_logits(IMAGE_A, normalize), atol=1e-5
    )


def test_same_sizes_batched_across_images(per_pixel):
    turned = np.ascontiguousarray(IMAGE_A.transpose(1, 0, 2))
    images = [IMAGE_A, IMAGE_B, IMAGE_A[::-1], IMAGE_B[:, ::-1], turned]
    model = Recorder()
    Segmenter(model, batch_size=4).predict_mask(images)
    # Images are prepared 4 at a time; equal shapes share a batch.
    assert [b.shape for b in model.batches] == [
        (2, 37, 53, 3),
        (2, 20, 30, 3),
        (1, 53, 37, 3),
    ]
    # Batched results equal one-by-one results with the Keras model.
    batched = Segmenter(per_pixel, batch_size=4).predict_logits(images)
    for image, out in zip(images, batched, strict=True):
        single = Segmenter(per_pixel, batch_size=1).predict_logits(image)
        np.testing.assert_allclose(out, single, rtol=0, atol=1e-6)


def test_multiscale_averages_scales(per_pixel):
    scales = (0.5, 1.0, 1.5)
    multi = Segmenter(per_pixel, scales=scales).predict_logits(IMAGE_A)
    singles = [
        Segmenter(per_pixel, scales=(s,)).predict_logits(IMAGE_A)
        for s in scales
    ]
    assert multi.shape == (37, 53, NUM_CLASSES)
    np.testing.assert_allclose(multi, sum(singles) / 3, atol=1e-5)
    # The rescaled views really differ from the full-size one.
    assert np.abs(singles[0] - singles[1]).max() > 0.1
    # A flat image looks the same at every scale.
    flat = np.full((37, 53, 3), 90, np.uint8)
    np.testing.assert_allclose(
        Segmenter(per_pixel, scales=scales).predict_logits(flat),
        reference_logits(flat),
        atol=1e-5,
    )


@pytest.mark.parametrize("num_classes", [1, NUM_CLASSES])
def test_merge_probs_averages_probabilities(num_classes):
    kernel, bias = KERNEL[:, :num_classes], BIAS[:num_classes]
    model = Recorder(kernel, bias)
    merged = Segmenter(model, flip=True, merge="probs").predict_logits(IMAGE_A)
    plain = Segmenter(model).predict_logits(IMAGE_A)
    mirrored = Segmenter(model).predict_logits(IMAGE_A[:, ::-1])[:, ::-1]
    if num_classes == 1:
        probs = (1 / (1 + np.exp(-plain)) + 1 / (1 + np.exp(-mirrored))) / 2
        expected = np.log(probs / (1 - probs))
    else:
        probs = (
            torch.softmax(torch.from_numpy(plain), -1)
            + torch.softmax(torch.from_numpy(mirrored.copy()), -1)
        ) / 2
        expected = np.log(probs.numpy())
    np.testing.assert_allclose(merged, expected, rtol=1e-5, atol=1e-5)
    mask = Segmenter(model, flip=True, merge="probs")(IMAGE_A)
    np.testing.assert_array_equal(mask, inference.logits_to_mask(expected))


# -- tiny SegFormer (one compiled input shape per backend) -------------------


def _agree(mask, reference, scores, margin=1e-4):
    """Masks agree wherever the top two scores are not a near tie."""
    top2 = np.sort(scores, axis=-1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > margin
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(mask[clear], reference[clear])


def test_segmenter_equals_transformers_pipeline(segformer):
    image = RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    hf = SegformerImageProcessorPil(
        size={"height": SEG_SHAPE[0], "width": SEG_SHAPE[1]}
    )
    pixels = hf(images=image, return_tensors="np")["pixel_values"]
    logits = segformer.predict_on_batch(np.transpose(pixels, (0, 2, 3, 1)))

    class Outputs:
        pass

    outputs = Outputs()
    outputs.logits = torch.from_numpy(
        np.ascontiguousarray(np.transpose(np.asarray(logits), (0, 3, 1, 2)))
    )
    ref = hf.post_process_semantic_segmentation(
        outputs, target_sizes=[(37, 53)], return_segmentation_scores=True
    )[0]
    ref_scores = np.transpose(ref.segmentation_scores.numpy(), (1, 2, 0))

    segmenter = Segmenter(segformer, size=SEG_SHAPE, batch_size=1)
    scores = segmenter.predict_logits(image)
    assert scores.shape == (37, 53, 5)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)
    _agree(segmenter(image), ref.segmentation.numpy(), ref_scores)


def test_window_larger_than_image_equals_whole(segformer):
    whole = Segmenter(segformer, batch_size=1).predict_logits(IMAGE_SEG)
    slide = Segmenter(
        segformer,
        mode="slide",
        crop_size=(64, 96),
        stride=(48, 64),
        pad_to_crop=False,
        batch_size=1,
    ).predict_logits(IMAGE_SEG)
    np.testing.assert_allclose(slide, whole, rtol=0, atol=1e-6)
    single = Segmenter(segformer, scales=(1.0,), batch_size=1)
    np.testing.assert_allclose(
        single.predict_logits(IMAGE_SEG), whole, rtol=0, atol=1e-6
    )


def test_flip_of_mirrored_input_is_mirrored(segformer):
    mirror = np.ascontiguousarray(IMAGE_SEG[:, ::-1])
    flip = Segmenter(segformer, flip=True, batch_size=1)
    out, out_mirror = flip.predict_logits([IMAGE_SEG, mirror])
    np.testing.assert_allclose(out_mirror, out[:, ::-1], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(
        flip(mirror), inference.logits_to_mask(out[:, ::-1])
    )
    plain = Segmenter(segformer, batch_size=1)
    a, b = plain.predict_logits([IMAGE_SEG, mirror])
    np.testing.assert_allclose(out, (a + b[:, ::-1]) / 2, atol=1e-5)
    assert np.abs(out - a).max() > 1e-3  # the flipped view counted


def test_single_image_and_batch_forms(segformer, tmp_path):
    segmenter = Segmenter(segformer, batch_size=1)
    mask = segmenter(IMAGE_SEG)
    assert mask.shape == SEG_SHAPE and mask.dtype == np.int32
    logits = segmenter.predict_logits(IMAGE_SEG)
    np.testing.assert_array_equal(mask, np.argmax(logits, -1))
    path = tmp_path / "image.png"
    keras.utils.save_img(path, IMAGE_SEG, scale=False)
    masks = segmenter.predict_mask(np.stack([IMAGE_SEG, IMAGE_SEG]))
    assert isinstance(masks, list) and len(masks) == 2
    masks = segmenter([str(path)])
    np.testing.assert_array_equal(masks[0], mask)


def test_normalization_follows_the_model(segformer):
    assert Segmenter(segformer).normalize
    raw = small_segformer(include_preprocessing=True)
    assert not Segmenter(raw).normalize
    assert Segmenter(raw, normalize=True).normalize


def test_argument_errors(per_pixel):
    with pytest.raises(ValueError, match="mode"):
        Segmenter(per_pixel, mode="sliding")
    with pytest.raises(ValueError, match="crop_size"):
        Segmenter(per_pixel, mode="slide")
    with pytest.raises(ValueError, match="stride"):
        Segmenter(per_pixel, mode="slide", crop_size=8, stride=9)
    with pytest.raises(ValueError, match="only used"):
        Segmenter(per_pixel, crop_size=8)
    with pytest.raises(ValueError, match="scales"):
        Segmenter(per_pixel, scales=(1.0, -0.5))
    with pytest.raises(ValueError, match="merge"):
        Segmenter(per_pixel, merge="max")
    with pytest.raises(ValueError, match="batch_size"):
        Segmenter(per_pixel, batch_size=0)
    with pytest.raises(ValueError, match="logits of shape"):
        Segmenter(lambda x: x[..., 0]).predict_logits(IMAGE_B)


def test_a_model_with_nan_weights_is_refused():
    """A NaN model would predict one class everywhere without a word: the
    Segmenter refuses it, naming the weight; finite weights pass."""
    keras.utils.set_random_seed(2)
    model = small_segformer()
    Segmenter(model)  # finite: accepted
    variable = model.get_layer("decode_head").classifier.kernel
    value = keras.ops.convert_to_numpy(variable.value).copy()
    value[0, 0] = np.nan
    variable.assign(value)
    with pytest.raises(ValueError, match="NaN or infinite weights") as err:
        Segmenter(model)
    assert variable.path in str(err.value)
