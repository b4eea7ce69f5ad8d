"""Tests of keras_segformer.data: pipeline, augmentation, readers, synthetic.

Images are tiny (64x80) so the file runs in seconds on every backend.
"""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_segformer
from PIL import Image

from keras_segformer import data
from keras_segformer.data import augment, synthetic

MEAN = np.asarray(data.IMAGENET_MEAN_255, np.float32)
STD = np.asarray(data.IMAGENET_STD_255, np.float32)
# Corners of the RGB cube: no blend of the others can reach any of them, so
# a pixel close to one is a pixel whose bilinear neighbours all had it.
CUBE = np.array(
    [[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)],
    np.uint8,
)
SIZE = (64, 80)


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array), mode=mode).save(path)
    return path


def blocky_labels(rng, size=SIZE, cells=(4, 5), classes=8):
    """Random class per block; blocks differ so flips and crops show."""
    grid = rng.integers(0, classes, cells)
    cell = (size[0] // cells[0], size[1] // cells[1])
    return np.kron(grid, np.ones(cell, np.int64)).astype(np.uint8)


def colour_dataset(tmp_path, rng, count=4):
    """Images whose colour is CUBE[label]: the label follows from a pixel."""
    images, masks = [], []
    for i in range(count):
        label = blocky_labels(rng)
        images.append(save(tmp_path / "img" / f"{i}.png", CUBE[label]))
        masks.append(save(tmp_path / "ann" / f"{i}.png", label))
    return images, masks


def batches(ds, count):
    return list(ds.take(count).as_numpy_iterator())


def labels_from_colours(image, tolerance=12.0):
    """Class of pixels near a CUBE corner, -1 where ambiguous (blends)."""
    rgb = image * STD + MEAN
    dist = np.linalg.norm(rgb[..., None, :] - CUBE.astype(np.float32), axis=-1)
    nearest = dist.argmin(-1)
    return np.where(dist.min(-1) < tolerance, nearest, -1)


# ---------------------------------------------------------------- training


def test_training_keeps_image_and_label_aligned(tmp_path, rng):
    images, masks = colour_dataset(tmp_path, rng)
    ds = data.make_dataset(
        images,
        masks,
        batch_size=4,
        training=True,
        crop_size=(48, 56),
        base_size=(80, 64),
        ratio_range=(0.5, 2.0),
        photometric=False,
        seed=1,
        repeat=True,
    )
    checked = padded = 0
    crops = set()
    for x, y in batches(ds, 8):
        assert x.shape == (4, 48, 56, 3) and x.dtype == np.float32
        assert y.shape == (4, 48, 56) and y.dtype == np.int32
        pad = y == 255
        # The masks hold no 255: every 255 is padding, which is 0 in x.
        np.testing.assert_array_equal(x[pad], 0.0)
        padded += pad.sum()
        recomputed = labels_from_colours(x)
        pure = (recomputed >= 0) & ~pad
        np.testing.assert_array_equal(recomputed[pure], y[pure])
        checked += pure.sum()
        assert pure.sum() > 0.5 * (~pad).sum()
        crops.update(y[i].tobytes() for i in range(4))
    assert padded > 0 and checked > 0
    assert len(crops) == 32  # every sample augmented differently


def test_training_label_values_are_preserved(tmp_path, rng):
    # Per-pixel random ids stress nearest-neighbour resizing: bilinear
    # resizing of labels would invent ids between 0, 3 and 7.
    images, masks = [], []
    for i in range(3):
        label = rng.choice(np.array([0, 3, 7], np.uint8), SIZE)
        images.append(save(tmp_path / f"i{i}.png", CUBE[label]))
        masks.append(save(tmp_path / f"m{i}.png", label))
    ds = data.make_dataset(
        images,
        masks,
        batch_size=3,
        training=True,
        crop_size=(40, 40),
        base_size=(100, 70),
        num_classes=8,
        seed=0,
        repeat=True,
    )
    seen = set()
    for _, y in batches(ds, 6):
        seen.update(np.unique(y).tolist())
    assert seen <= {0, 3, 7, 255}
    assert {0, 3, 7} <= seen


def test_rescale_then_pad_geometry(tmp_path, rng):
    images, masks = colour_dataset(tmp_path, rng, count=2)
    # Box (40, 32): 64x80 fits at factor min(40/80, 32/64) = 0.5 -> 32x40,
    # smaller than the crop, so the crop is the whole image, then padding.
    ds = data.make_dataset(
        images,
        masks,
        batch_size=2,
        training=True,
        crop_size=(48, 56),
        base_size=(40, 32),
        ratio_range=(1.0, 1.0),
        photometric=False,
        seed=0,
    )
    x, y = batches(ds, 1)[0]
    assert (y[:, 32:, :] == 255).all() and (y[:, :, 40:] == 255).all()
    assert (x[:, 32:, :] == 0).all() and (x[:, :, 40:] == 0).all()
    assert (y[:, :32, :40] != 255).all()
    assert (np.abs(x[:, :32, :40]).max(-1) > 0).any()


def test_rescale_size_matches_mmcv():
    # mmcv imrescale: factor = min(long / max(h, w), short / min(h, w)),
    # sides int(side * factor + 0.5); worked out by hand here.
    cases = [
        ((512, 683), (2048, 512), (512, 683)),
        ((1024, 2048), (1024, 512), (512, 1024)),
        ((100, 300), (200, 100), (67, 200)),
        ((300, 100), (100, 200), (200, 67)),
        ((64, 80), (40, 32), (32, 40)),
    ]
    for shape, box, expected in cases:
        h, w = augment.rescale_size(shape[0], shape[1], box)
        assert (int(h), int(w)) == expected, (shape, box)


def test_balanced_crop_rule_ignores_255():
    def balanced(values, ratio=0.75):
        crop = tf.constant(np.asarray(values, np.int32).reshape(1, -1))
        return bool(augment.is_balanced_crop(crop, ratio))

    assert balanced([255] * 8 + [0, 1])  # 255 would be 80% if counted
    assert not balanced([0] * 8 + [1] * 2)  # 80% class 0
    assert not balanced([0] * 3 + [1])  # exactly 75% is not below
    assert balanced([0] * 3 + [1], ratio=0.8)
    assert not balanced([2] * 10)  # one class
    assert not balanced([255] * 10)  # nothing valid


def test_cat_max_ratio_retries_crops():
    label = np.zeros((64, 64), np.int32)
    label[40:56, 40:56] = 1
    image = tf.zeros((64, 64, 3))

    def accepted(cat_max_ratio):
        @tf.function
        def crop_and_check(seed):
            _, crop = augment.random_crop(
                image, tf.constant(label), seed, (16, 16), cat_max_ratio
            )
            return augment.is_balanced_crop(crop, 0.75), tf.shape(crop)

        count = 0
        for i in range(60):
            ok, shape = crop_and_check(tf.constant([i, 7]))
            assert tuple(shape.numpy()) == (16, 16)
            count += bool(ok)
        return count

    # A random 16x16 crop is rarely balanced; ten retries usually find one.
    without, with_retries = accepted(1.0), accepted(0.75)
    assert without < 15
    assert with_retries > 2 * without + 10


def test_random_crop_single_class_still_returns_a_crop():
    image = tf.zeros((30, 30, 3))
    label = tf.fill((30, 30), 4)
    out_image, out_label = augment.random_crop(
        image, label, tf.constant([0, 0]), (16, 20), 0.75
    )
    assert out_image.shape == (16, 20, 3) and out_label.shape == (16, 20)


def test_flip_moves_image_and_label_together():
    image = tf.reshape(tf.range(2 * 3 * 3, dtype=tf.float32), (2, 3, 3))
    label = tf.constant([[0, 1, 2], [3, 4, 5]])
    flips = 0
    for i in range(20):
        out_image, out_label = augment.random_flip(
            image, label, tf.constant([i, 0])
        )
        flipped = bool((out_label.numpy() == label.numpy()[:, ::-1]).all())
        same = bool((out_label.numpy() == label.numpy()).all())
        assert flipped or same
        expected = image.numpy()[:, ::-1] if flipped else image.numpy()
        np.testing.assert_array_equal(out_image.numpy(), expected)
        flips += flipped
    assert 4 <= flips <= 16


def test_photometric_is_a_per_pixel_colour_map(rng):
    image = tf.constant(rng.uniform(0, 255, (16, 16, 3)), tf.float32)
    # Identical pixels stay identical: photometric never moves pixels.
    tiled = tf.concat([image, image], axis=1)
    changed = 0
    for i in range(12):
        out = augment.photometric_distortion(tiled, tf.constant([i, 3]))
        out = out.numpy()
        assert out.min() >= 0.0 and out.max() <= 255.0
        np.testing.assert_allclose(out[:, :16], out[:, 16:], atol=1e-4)
        changed += not np.allclose(out, tiled.numpy(), atol=1e-3)
    assert changed >= 6


def test_photometric_brightness_step():
    image = tf.fill((4, 4, 3), 100.0)
    shifts = []
    for i in range(40):
        out = augment.photometric_distortion(
            image,
            tf.constant([i, 1]),
            contrast_range=(1.0, 1.0),
            saturation_range=(1.0, 1.0),
            hue_delta=0,
        ).numpy()
        assert np.ptp(out) < 1e-3  # one shift for the whole image
        shifts.append(out[0, 0, 0] - 100.0)
    shifts = np.asarray(shifts)
    assert np.abs(shifts).max() <= 32.0
    unchanged = np.abs(shifts) < 1e-3
    assert 8 <= unchanged.sum() <= 32  # applied with probability 0.5


def test_seed_makes_pipeline_reproducible(tmp_path, rng):
    images, masks = colour_dataset(tmp_path, rng)
    kwargs = dict(
        batch_size=2, training=True, crop_size=(32, 32), base_size=(80, 64)
    )
    a = batches(data.make_dataset(images, masks, seed=3, **kwargs), 2)
    b = batches(data.make_dataset(images, masks, seed=3, **kwargs), 2)
    c = batches(data.make_dataset(images, masks, seed=4, **kwargs), 2)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


# -------------------------------------------------------------- evaluation


def test_evaluation_returns_whole_normalized_images(tmp_path, rng):
    images, masks = colour_dataset(tmp_path, rng, count=3)
    ds = data.make_dataset(images, masks, batch_size=1, training=False)
    out = batches(ds, 3)
    assert len(out) == 3
    for (x, y), image_path, mask_path in zip(out, images, masks):
        image = np.asarray(Image.open(image_path), np.float32)
        np.testing.assert_allclose(x[0], (image - MEAN) / STD, atol=1e-5)
        np.testing.assert_array_equal(y[0], np.asarray(Image.open(mask_path)))


def test_evaluation_resize_and_padded_batches(tmp_path, rng):
    label = blocky_labels(rng)
    save(tmp_path / "img" / "a.png", CUBE[label])
    save(tmp_path / "ann" / "a.png", label)
    small = label[:32, :48]
    save(tmp_path / "img" / "b.png", CUBE[small])
    save(tmp_path / "ann" / "b.png", small)
    folder = (tmp_path / "img", tmp_path / "ann")

    ds = data.make_dataset(*folder, batch_size=2, training=False)
    x, y = batches(ds, 1)[0]
    assert x.shape == (2, 64, 80, 3)
    assert (y[1, 32:] == 255).all() and (y[1, :, 48:] == 255).all()
    np.testing.assert_array_equal(y[1, :32, :48], small)

    ds = data.make_dataset(
        *folder, batch_size=2, training=False, eval_size=(40, 40)
    )
    x, y = batches(ds, 1)[0]
    assert x.shape == (2, 40, 40, 3) and y.shape == (2, 40, 40)
    assert set(np.unique(y)) <= set(np.unique(label))

    ds = data.make_dataset(*folder, batch_size=1, training=False, eval_size=16)
    shapes = [y.shape for _, y in batches(ds, 2)]
    assert shapes == [(1, 16, 20), (1, 16, 24)]


# ------------------------------------------------------- label remapping


def eval_labels(tmp_path, raw, **kwargs):
    raw = np.asarray(raw, np.uint8)
    image = save(tmp_path / "x.png", np.zeros(raw.shape + (3,), np.uint8))
    mask = save(tmp_path / "x_mask.png", raw)
    ds = data.make_dataset(
        [image], [mask], batch_size=1, training=False, **kwargs
    )
    return batches(ds, 1)[0][1][0]


def test_reduce_labels(tmp_path):
    out = eval_labels(tmp_path, [[0, 1, 2, 150, 255]], reduce_labels=True)
    np.testing.assert_array_equal(out, [[255, 0, 1, 149, 255]])


def test_label_map_unmapped_ids_are_ignored(tmp_path):
    out = eval_labels(tmp_path, [[0, 1, 2, 3, 255]], label_map={1: 4, 2: 0})
    np.testing.assert_array_equal(out, [[255, 4, 0, 255, 255]])


def test_label_map_runs_before_reduce_labels(tmp_path):
    out = eval_labels(
        tmp_path, [[0, 1, 2]], label_map={0: 0, 1: 3}, reduce_labels=True
    )
    np.testing.assert_array_equal(out, [[255, 2, 255]])


def test_cityscapes_reader_maps_label_ids(tmp_path):
    root = tmp_path / "cityscapes"
    raw = np.array([[7, 8, 26, 33], [0, 9, 24, 23]], np.uint8)
    name = "aachen_000000_000019"
    image = root / "leftImg8bit/val/aachen" / f"{name}_leftImg8bit.png"
    save(image, np.zeros((2, 4, 3), np.uint8))
    save(root / "gtFine/val/aachen" / f"{name}_gtFine_labelIds.png", raw)
    files = data.cityscapes(root, "val")
    assert files.images == (str(image),)
    assert files.num_classes == 19 and files.class_names[13] == "car"
    ds = files.make_dataset(batch_size=1, training=False)
    y = batches(ds, 1)[0][1][0]
    np.testing.assert_array_equal(y, [[0, 1, 13, 18], [255, 255, 11, 10]])


def test_ade20k_reader(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    raw = np.array([[0, 1, 150]], np.uint8)
    save(root / "images/training/ADE_train_1.jpg", np.zeros((1, 3, 3), "u1"))
    save(root / "annotations/training/ADE_train_1.png", raw)
    files = data.ade20k(root, "train")
    assert len(files) == 1 and files.num_classes == 150
    assert files.class_names[0] == "wall" and files.reduce_labels
    y = batches(files.make_dataset(batch_size=1, training=False), 1)[0][1]
    np.testing.assert_array_equal(y[0], [[255, 0, 149]])
    with pytest.raises(ValueError, match="split"):
        data.ade20k(root, "testing")


def test_palette_mask_indices_are_class_ids(tmp_path):
    ids = np.array([[0, 1], [2, 3]], np.uint8)
    mask = Image.fromarray(ids, mode="P")
    # Palette colours unrelated to the indices: the indices must be read.
    mask.putpalette([9, 9, 9, 200, 0, 0, 0, 200, 0, 0, 0, 200])
    mask.save(tmp_path / "m.png")
    np.testing.assert_array_equal(data.read_mask(tmp_path / "m.png"), ids)


# ------------------------------------------------------------------ errors


def raises_naming(path, func, *args, **kwargs):
    with pytest.raises(Exception, match=re.escape(str(path))):
        func(*args, **kwargs)


def iterate(*args, **kwargs):
    for _ in data.make_dataset(*args, **kwargs):
        pass


def test_error_label_out_of_range_names_file(tmp_path):
    image = save(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    mask = save(tmp_path / "a_mask.png", np.full((4, 4), 9, np.uint8))
    kwargs = dict(batch_size=1, training=False, num_classes=5)
    raises_naming(mask, iterate, [image], [mask], **kwargs)
    raises_naming(
        mask, data.make_dataset, [image], [mask], validate=True, **kwargs
    )
    # 255 is always allowed (a set needs one labelled pixel).
    save(mask, np.full((4, 4), 255, np.uint8))
    iterate([image], [mask], validate=False, **kwargs)
    save(
        mask,
        np.pad(
            np.ones((1, 1), np.uint8), ((0, 3), (0, 3)), constant_values=255
        ),
    )
    iterate([image], [mask], **kwargs)


def test_error_size_mismatch_names_file(tmp_path):
    image = save(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    mask = save(tmp_path / "a_mask.png", np.zeros((4, 5), np.uint8))
    kwargs = dict(batch_size=1, training=True, crop_size=4, base_size=None)
    raises_naming(image, iterate, [image], [mask], **kwargs)
    raises_naming(
        image, data.make_dataset, [image], [mask], validate=True, **kwargs
    )


def test_error_corrupt_files_name_file(tmp_path):
    good_image = save(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    good_mask = save(tmp_path / "a_mask.png", np.zeros((4, 4), np.uint8))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good_image.read_bytes()[:40])
    kwargs = dict(batch_size=1, training=False)
    raises_naming(bad, iterate, [bad], [good_mask], **kwargs)
    raises_naming(truncated, iterate, [truncated], [good_mask], **kwargs)
    raises_naming(bad, iterate, [good_image], [bad], **kwargs)


def test_error_multichannel_mask_names_file(tmp_path):
    image = save(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    mask = save(tmp_path / "a_mask.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(Exception, match="palette") as info:
        iterate([image], [mask], batch_size=1, training=False)
    assert str(mask) in str(info.value)


def test_error_image_without_mask_names_file(tmp_path):
    save(tmp_path / "img" / "a.jpg", np.zeros((4, 4, 3), np.uint8))
    lonely = save(tmp_path / "img" / "b.jpg", np.zeros((4, 4, 3), np.uint8))
    save(tmp_path / "ann" / "a.png", np.zeros((4, 4), np.uint8))
    raises_naming(
        lonely,
        data.make_dataset,
        tmp_path / "img",
        tmp_path / "ann",
        batch_size=1,
        training=True,
    )
    missing = tmp_path / "ann" / "b.png"
    raises_naming(
        missing,
        data.make_dataset,
        [lonely],
        [missing],
        batch_size=1,
        training=True,
    )


def test_error_empty_dataset(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    with pytest.raises(ValueError, match="No images found"):
        data.make_dataset(
            tmp_path / "img", tmp_path / "ann", batch_size=1, training=True
        )
    with pytest.raises(ValueError, match="[Ee]mpty"):
        data.make_dataset([], [], batch_size=1, training=True)


def test_folder_pairs_nested_files_by_name(tmp_path):
    for name in ("city/b", "city/a", "c"):
        save(tmp_path / "img" / f"{name}.jpg", np.zeros((4, 4, 3), "u1"))
        save(tmp_path / "ann" / f"{name}.png", np.zeros((4, 4), "u1"))
    save(tmp_path / "ann" / "extra.png", np.zeros((4, 4), "u1"))  # ignored
    files = data.folder(tmp_path / "img", tmp_path / "ann")
    stems = [
        (p.split("img")[-1][:-4], m.split("ann")[-1][:-4])
        for p, m in zip(files.images, files.masks)
    ]
    assert stems == [
        ("/c", "/c"),
        ("/city/a", "/city/a"),
        ("/city/b", "/city/b"),
    ]


# --------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_by_seed(tmp_path):
    kwargs = dict(num_train=3, num_val=2, size=(40, 48), num_classes=6)
    a = synthetic.generate(tmp_path / "a", seed=5, **kwargs)
    b = synthetic.generate(tmp_path / "b", seed=5, **kwargs)
    c = synthetic.generate(tmp_path / "c", seed=6, **kwargs)
    assert len(a["train"]) == 3 and len(a["val"]) == 2
    assert a["train"].class_names == synthetic.class_names(6)
    for split in ("train", "val"):
        for fa, fb in zip(a[split].images + a[split].masks,
                          b[split].images + b[split].masks):  # fmt: skip
            np.testing.assert_array_equal(
                np.asarray(Image.open(fa)), np.asarray(Image.open(fb))
            )
    assert not np.array_equal(
        np.asarray(Image.open(a["train"].images[0])),
        np.asarray(Image.open(c["train"].images[0])),
    )
    mask = Image.open(a["train"].masks[0])
    assert mask.mode == "P" and mask.size == (48, 40)


def test_synthetic_classes_are_present_and_distinct(rng):
    counts = np.zeros(synthetic.MAX_CLASSES, np.int64)
    colours = [[] for _ in range(synthetic.MAX_CLASSES)]
    for i in range(30):
        image, mask = synthetic.render(
            np.random.default_rng(i), (64, 64), synthetic.MAX_CLASSES
        )
        assert image.dtype == np.uint8 and mask.shape == (64, 64)
        counts += np.bincount(mask.ravel(), minlength=counts.size)
        for k in np.unique(mask):
            colours[k].append(image[mask == k].mean(0))
    assert (counts > 0).all()
    assert counts[0] > 0.2 * counts.sum()  # background is a real class
    # The mean colours of the classes are told apart by a nearest-mean rule.
    means = np.array([np.mean(c, 0) for c in colours])
    hits = [
        np.linalg.norm(means - c, axis=1).argmin() == k
        for k in range(len(colours))
        for c in colours[k]
    ]
    assert np.mean(hits) > 0.8


def test_synthetic_rejects_bad_num_classes(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        synthetic.generate(
            tmp_path, 1, 1, num_classes=synthetic.MAX_CLASSES + 1
        )


# --------------------------------------------------------------- training


def segmentation_loss(y_true, y_pred):
    size = tuple(y_true.shape[1:3])
    y_pred = keras.ops.image.resize(y_pred, size, interpolation="bilinear")
    return keras.losses.sparse_categorical_crossentropy(
        y_true, y_pred, from_logits=True, ignore_class=255
    )


def test_pipeline_feeds_model_fit(tmp_path):
    files = synthetic.generate(
        tmp_path, num_train=4, num_val=0, size=(64, 80), num_classes=6
    )
    train = files["train"].make_dataset(
        batch_size=2,
        training=True,
        crop_size=(64, 64),
        base_size=(96, 64),
        seed=0,
        repeat=True,
    )
    model = tiny_segformer(num_classes=6)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=segmentation_loss)
    history = model.fit(train, steps_per_epoch=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


# ------------------------------------------- data errors out of tf.data


def _bad_label_files(tmp_path):
    image = save(tmp_path / "a.png", np.zeros((32, 32, 3), np.uint8))
    mask = save(tmp_path / "a_mask.png", np.full((32, 32), 9, np.uint8))
    return [image], [mask]


def _one_line_naming(error, path):
    message = str(error)
    assert str(path) in message and "num_classes=5" in message
    assert "\n" not in message and "Traceback" not in message
    assert "keras-segformer-data-error" not in message  # the tag is gone
    assert error.__cause__ is None and error.__suppress_context__


def test_data_error_from_iteration_is_the_plain_message(tmp_path):
    from keras_segformer.errors import DataError, data_errors

    images, masks = _bad_label_files(tmp_path)
    # validate=False: the error met while iterating (the up-front check
    # would find it first).
    kwargs = dict(batch_size=1, training=False, num_classes=5, validate=False)
    ds = data.make_dataset(images, masks, **kwargs)
    with pytest.raises(Exception) as wrapped:
        iterate(images, masks, **kwargs)
    assert "Traceback" in str(wrapped.value)  # what TensorFlow gives alone
    with pytest.raises(DataError) as info:
        with data_errors():
            for _ in ds:
                pass
    assert isinstance(info.value, ValueError)
    _one_line_naming(info.value, masks[0])


def test_data_error_from_model_fit_and_trainer(tmp_path):
    from keras_segformer.errors import DataError
    from keras_segformer.training import SegFormerLoss, trainer

    images, masks = _bad_label_files(tmp_path)
    ds = data.make_dataset(
        images,
        masks,
        batch_size=1,
        training=True,
        crop_size=32,
        base_size=None,
        num_classes=5,
        repeat=True,
        validate=False,  # met while iterating
    )
    model = tiny_segformer(num_classes=5)
    model.compile(optimizer="adam", loss=SegFormerLoss())
    # The project's models need no wrapper around Keras' fit.
    with pytest.raises(DataError) as info:
        model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0)
    _one_line_naming(info.value, masks[0])
    with pytest.raises(DataError) as info:
        trainer.fit(
            model,
            ds,
            out_dir=str(tmp_path / "run"),
            epochs=1,
            steps_per_epoch=1,
            verbose=0,
            warmup_steps=0,
        )
    _one_line_naming(info.value, masks[0])
    eval_ds = data.make_dataset(
        images,
        masks,
        batch_size=1,
        training=False,
        num_classes=5,
        validate=False,
    )
    with pytest.raises(DataError) as info:
        trainer.evaluate(model, eval_ds, verbose=False)
    _one_line_naming(info.value, masks[0])


def test_data_errors_passes_other_errors_unchanged():
    from keras_segformer.errors import data_errors

    error = RuntimeError("a bug")
    with pytest.raises(RuntimeError) as info:
        with data_errors():
            raise error
    assert info.value is error
