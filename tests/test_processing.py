"""Pre/post-processing against transformers, image I/O, palettes, drawing."""

import re

import keras
import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.segformer.image_processing_pil_segformer import (
    SegformerImageProcessorPil,
)

from keras_segformer import inference

SIZES = [(37, 53), (300, 417)]


@pytest.fixture(scope="module")
def hf():
    # The PIL backend explicitly: `SegformerImageProcessor` switches to
    # torchvision's resize when torchvision is installed.
    return SegformerImageProcessorPil()


def _image(rng, h, w, c=3):
    shape = (h, w) if c is None else (h, w, c)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _nhwc(x):
    return np.transpose(np.asarray(x), (0, 2, 3, 1))


class _Outputs:
    def __init__(self, logits_nhwc):
        self.logits = torch.from_numpy(
            np.ascontiguousarray(np.transpose(logits_nhwc, (0, 3, 1, 2)))
        )


# -- pre-processing ----------------------------------------------------------


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("kind", ["array", "pil", "path"])
def test_preprocess_equals_transformers(hw, kind, rng, tmp_path, hf):
    img = _image(rng, *hw)
    expected = _nhwc(hf(images=img, return_tensors="np")["pixel_values"])
    if kind == "pil":
        img = Image.fromarray(img)
    elif kind == "path":
        path = tmp_path / "image.png"
        Image.fromarray(img).save(path)
        img = str(path)
    out = inference.preprocess(img)
    assert out.shape == (1, 512, 512, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_preprocess_batch_and_options_equal_transformers(rng, hf):
    images = [_image(rng, *hw) for hw in SIZES]
    expected = hf(images=images, return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(inference.preprocess(images), _nhwc(expected))

    expected = hf(
        images=images, size={"height": 64, "width": 96}, return_tensors="np"
    )["pixel_values"]
    out = inference.preprocess(images, size=(64, 96))
    np.testing.assert_array_equal(out, _nhwc(expected))

    expected = hf(images=images[0], do_resize=False, return_tensors="np")
    out = inference.preprocess(images[0], size=None)
    np.testing.assert_array_equal(out, _nhwc(expected["pixel_values"]))


def test_keras_resize_bound(rng):
    """PIL (what transformers uses) vs keras.ops.image.resize: the
    antialiased Keras resize stays within one uint8 level, the plain one
    does not when shrinking. This is why pre-processing resizes with PIL."""
    std = np.asarray(inference.IMAGENET_STD, np.float32)
    for hw in [(37, 53), (700, 900)]:
        img = _image(rng, *hw)
        ours = inference.preprocess(img)
        for antialias in (True, False):
            resized = keras.ops.image.resize(
                img[None].astype("float32"),
                (512, 512),
                interpolation="bilinear",
                antialias=antialias,
            )
            other = inference.normalize_image(
                keras.ops.convert_to_numpy(resized)
            )
            levels = np.abs(ours - other) * std * 255
            if antialias or hw[0] < 512:
                assert levels.max() <= 1.0 + 1e-3
            else:
                assert levels.max() > 10


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "PA"])
def test_pil_modes_converted_like_transformers(mode, rng, hf):
    rgba = _image(rng, 37, 53, 4)
    img = Image.fromarray(rgba).convert(mode)
    expected = hf(images=img, do_convert_rgb=True, return_tensors="np")
    out = inference.preprocess(img)
    np.testing.assert_array_equal(out, _nhwc(expected["pixel_values"]))
    assert inference.load_image(img).shape == (37, 53, 3)


def test_array_channels_converted(rng, hf):
    rgba = _image(rng, 37, 53, 4)
    expected = hf(images=rgba, do_convert_rgb=True, return_tensors="np")
    out = inference.preprocess(rgba)
    np.testing.assert_array_equal(out, _nhwc(expected["pixel_values"]))
    # Fully transparent pixels become white, opaque ones keep their colour.
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    rgb = inference.load_image(rgba)
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == rgba[0, 1, :3].tolist()

    gray = _image(rng, 37, 53, None)
    expected = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_array_equal(inference.load_image(gray), expected)
    np.testing.assert_array_equal(
        inference.load_image(gray[..., None]), expected
    )
    np.testing.assert_array_equal(
        inference.preprocess(gray), inference.preprocess(expected)
    )


def test_image_errors(tmp_path):
    with pytest.raises(TypeError, match="uint8"):
        inference.preprocess(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(8, 8, 2\)"):
        inference.preprocess(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        inference.load_image(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        inference.load_image(np.zeros((0, 8, 3), np.uint8))
    with pytest.raises(TypeError, match="list"):
        inference.load_image([[1, 2, 3]])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        inference.preprocess(str(tmp_path / "missing.png"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="bad.jpg"):
        inference.preprocess(bad)
    with pytest.raises(ValueError, match="different sizes"):
        inference.preprocess(
            [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)],
            size=None,
        )
    with pytest.raises(ValueError, match="size"):
        inference.preprocess(np.zeros((8, 8, 3), np.uint8), size=(0, 4))


def test_resolve_size():
    # None: the image times the scale, rounded half up as mmcv does.
    assert inference.resolve_size(37, 53) == (37, 53)
    assert inference.resolve_size(37, 53, scale=0.5) == (19, 27)
    # Exact size times the scale.
    assert inference.resolve_size(37, 53, (64, 96), scale=0.75) == (48, 72)
    # Short side 512 keeping the aspect ratio: 300x417 -> 512x712.
    assert inference.resolve_size(300, 417, 512) == (512, 712)
    # mmseg's (2048, 512) scale caps the long side.
    assert inference.resolve_size(100, 1000, 512, max_size=2048) == (205, 2048)
    # NVlabs AlignedResize: round up to multiples of 32.
    assert inference.resolve_size(300, 417, 512, size_divisor=32) == (
        512,
        736,
    )
    with pytest.raises(ValueError, match="scale"):
        inference.resolve_size(10, 10, scale=0)


# -- labels ------------------------------------------------------------------


@pytest.mark.parametrize("reduce", [False, True])
def test_labels_equal_transformers(reduce, rng, hf):
    labels = rng.integers(0, 151, (37, 53)).astype(np.uint8)
    labels[0, :5] = 255
    image = _image(rng, 37, 53)
    expected = hf(
        images=image,
        segmentation_maps=labels,
        do_reduce_labels=reduce,
        return_tensors="np",
    )["labels"]
    out = inference.preprocess_labels(labels, do_reduce_labels=reduce)
    assert out.dtype == np.int64 and out.shape == (1, 512, 512)
    np.testing.assert_array_equal(out, expected)


def test_reduce_labels_and_label_files(tmp_path):
    labels = np.array([[0, 1, 2], [150, 255, 3]], np.uint8)
    expected = np.array([[255, 0, 1], [149, 255, 2]], np.uint8)
    np.testing.assert_array_equal(inference.reduce_labels(labels), expected)

    big = np.array([[0, 300], [7, 1000]], np.int64)
    path = tmp_path / "labels.png"
    Image.fromarray(big.astype(np.uint16)).save(path)
    np.testing.assert_array_equal(inference.load_label(path), big)
    out = inference.preprocess_labels(str(path), size=(4, 4))
    np.testing.assert_array_equal(out[0], np.kron(big, np.ones((2, 2))))
    with pytest.raises(ValueError, match="one channel"):
        inference.load_label(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(TypeError, match="integers"):
        inference.load_label(np.zeros((4, 4), np.float32))


# -- post-processing ---------------------------------------------------------


def test_postprocess_equals_transformers(rng, hf):
    logits = rng.normal(size=(3, 10, 14, 6)).astype(np.float32) * 4
    targets = [(37, 53), (300, 417), (5, 7)]  # up and down
    expected = hf.post_process_semantic_segmentation(
        _Outputs(logits),
        target_sizes=targets,
        return_segmentation_scores=True,
    )
    masks = inference.postprocess(logits, targets)
    for mask, ref, x, size in zip(masks, expected, logits, targets):
        assert mask.shape == size
        np.testing.assert_array_equal(mask, ref.segmentation.numpy())
        scores = np.transpose(ref.segmentation_scores.numpy(), (1, 2, 0))
        np.testing.assert_allclose(
            inference.resize_logits(x, size), scores, rtol=1e-5, atol=1e-5
        )

    expected = hf.post_process_semantic_segmentation(_Outputs(logits))
    for mask, ref in zip(inference.postprocess(logits), expected):
        np.testing.assert_array_equal(mask, ref.numpy())

    # Backend tensors are accepted as they come out of a model.
    tensor = keras.ops.convert_to_tensor(logits)
    for a, b in zip(inference.postprocess(tensor, targets), masks, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="one size per image"):
        inference.postprocess(logits, targets[:2])


def test_resize_logits_batch_and_binary_mask(rng):
    logits = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
    batch = inference.resize_logits(logits, (11, 13))
    assert batch.shape == (2, 11, 13, 3)
    for a, b in zip(batch, logits):
        np.testing.assert_array_equal(a, inference.resize_logits(b, (11, 13)))
    binary = np.array([[[-1.0], [2.0]]], np.float32)
    np.testing.assert_array_equal(inference.logits_to_mask(binary), [[0, 1]])


# -- palettes and visualization ----------------------------------------------


def test_one_copy_of_names_palettes_extensions_and_label_parsing(tmp_path):
    """Class names, palettes, image extensions and the class-name parser
    have one home each (``keras_segformer.classes``, ``decode``); the data
    readers, inference and the CLI use those very objects."""
    from keras_segformer import classes, decode
    from keras_segformer.cli import common, predict
    from keras_segformer.data import loading, readers
    from keras_segformer.inference import palettes

    for name in ("ADE20K_CLASSES", "CITYSCAPES_CLASSES"):
        assert getattr(readers, name) is getattr(classes, name)
        assert getattr(palettes, name) is getattr(classes, name)
    assert palettes.ADE20K_PALETTE is classes.ADE20K_PALETTE
    assert predict.IMAGE_EXTENSIONS is decode.IMAGE_EXTENSIONS
    assert loading.IMAGE_EXTENSIONS is decode.IMAGE_EXTENSIONS

    names = tmp_path / "names.json"
    names.write_text('{"1": "dog", "0": "cat"}')
    expected = {0: "cat", 1: "dog"}
    assert common.read_class_names(str(names), 2) == expected
    assert classes.resolve_labels(str(names), 2) == expected
    for text in ('"just a string"', "7", '{"id2label": 3}', '{"a": "cat"}'):
        names.write_text(text)
        for name in ("--labels", "`labels`"):
            with pytest.raises(ValueError, match=re.escape(name)) as info:
                classes.resolve_labels(str(names), name=name)
            assert str(names) in str(info.value)
    with pytest.raises(ValueError, match="--labels .*names 19 classes"):
        common.read_class_names("cityscapes", 7)
    with pytest.raises(ValueError, match="--labels .*no such file"):
        common.read_class_names(str(tmp_path / "missing.json"))


def test_palettes_and_names():
    ade = inference.get_palette("ade20k")
    city = inference.get_palette("Cityscapes")
    assert ade.shape == (150, 3) and city.shape == (19, 3)
    assert len(inference.get_class_names("ade20k")) == 150
    assert len(inference.get_class_names("cityscapes")) == 19
    names = inference.get_class_names("ade20k")
    assert (names[0], names[7], names[149]) == ("wall", "bed", "flag")
    assert ade[0].tolist() == [120, 120, 120]
    assert ade[149].tolist() == [92, 0, 255]
    names = inference.get_class_names("cityscapes")
    assert (names[0], names[18]) == ("road", "bicycle")
    assert city[0].tolist() == [128, 64, 128]
    assert city[18].tolist() == [119, 11, 32]

    voc = inference.generic_palette(300)
    assert voc[:4].tolist() == [
        [0, 0, 0],
        [128, 0, 0],
        [0, 128, 0],
        [128] * 2 + [0],
    ]
    assert len({tuple(c) for c in voc}) == 300
    np.testing.assert_array_equal(inference.get_palette(5), voc[:5])
    with pytest.raises(ValueError, match="Unknown palette"):
        inference.get_palette("voc12")
    with pytest.raises(ValueError, match="num_classes, 3"):
        inference.get_palette([[1, 2]])


def test_colorize_and_overlay(rng):
    mask = np.array([[0, 1], [2, 255]])
    palette = [[10, 20, 30], [200, 0, 0], [0, 0, 250]]
    colour = inference.colorize(mask, palette)
    expected = [[[10, 20, 30], [200, 0, 0]], [[0, 0, 250], [0, 0, 0]]]
    np.testing.assert_array_equal(colour, expected)

    image = np.full((2, 2, 3), 100, np.uint8)
    out = inference.overlay(image, mask, palette, alpha=0.25)
    # round(0.75 * 100 + 0.25 * c); index 255 keeps the image.
    expected = [[[78, 80, 82], [125, 75, 75]], [[75, 75, 138], [100] * 3]]
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="differ"):
        inference.overlay(np.zeros((3, 2, 3), np.uint8), mask, palette)
    with pytest.raises(ValueError, match="alpha"):
        inference.overlay(image, mask, palette, alpha=2)


@pytest.mark.parametrize("num_classes", [19, 150, 1000])
def test_save_prediction_round_trip(num_classes, rng, tmp_path):
    image = _image(rng, 37, 53)
    mask = rng.integers(0, num_classes, (37, 53))
    mask[:5, :5] = 255 if num_classes < 256 else mask[:5, :5]
    palette = {19: "cityscapes", 150: "ade20k", 1000: 1000}[num_classes]
    names = inference.get_class_names(palette) if num_classes < 1000 else None
    mask_path, overlay_path = inference.save_prediction(
        image, mask, tmp_path / "out", "img", palette, names
    )
    with Image.open(mask_path) as saved:
        assert saved.mode == ("P" if num_classes < 256 else "I;16")
        np.testing.assert_array_equal(np.array(saved), mask)
    with Image.open(overlay_path) as saved:
        overlay = np.array(saved.convert("RGB"))
    legend = inference.draw_legend(mask, palette, names, font_size=12)
    assert overlay.shape == (max(37, legend.height), 53 + legend.width, 3)
    np.testing.assert_array_equal(
        overlay[:37, :53], inference.overlay(image, mask, palette)
    )
    # The legend lists every class present: one swatch row per class.
    present = np.unique(mask[mask < len(inference.get_palette(palette))])
    assert legend.height == 4 + 18 * len(present)
    panel = overlay[:, 53:]
    assert (panel != 255).any()


def test_save_prediction_without_legend(rng, tmp_path):
    image = _image(rng, 37, 53)
    mask = rng.integers(0, 3, (37, 53))
    _, overlay_path = inference.save_prediction(
        Image.fromarray(image), mask, tmp_path, "x", legend=False
    )
    with Image.open(overlay_path) as saved:
        assert saved.size == (53, 37)
        np.testing.assert_array_equal(
            np.array(saved), inference.overlay(image, mask)
        )
