"""``make_dataset``: image / mask files -> batched ``tf.data`` pipeline.

``tf.data`` is the input side on every Keras backend: ``model.fit`` on JAX
and PyTorch consumes a ``tf.data.Dataset`` as well.

Training (``training=True``) applies the mmseg / SegFormer recipe: random
rescale of ``base_size`` by a ratio in ``ratio_range`` (aspect kept, image
fits in the box), random crop ``crop_size`` with ``cat_max_ratio``,
horizontal flip, photometric distortion, normalize, pad to ``crop_size``
(image 0, label 255); see ``keras_segformer.data.augment``. Evaluation
applies no augmentation: the whole image, or the image resized to
``eval_size`` (an int sets the short side, aspect kept; a pair the exact
size; images bilinear and antialiased, labels nearest neighbour); whole
images of different sizes in one batch are padded to the largest (image
0, label 255), so use ``batch_size=1`` to feed them unchanged.

Files are decoded with PIL in parallel (``num_parallel_calls=AUTOTUNE``)
and batches are prefetched. Masks are single-channel class-id images or
palette PNGs (indices are the ids). Every pair is checked up front, before
any work is spent on it (``validate=True``, the default; see
``loading.validate_pairs``: image headers and mask pixels read, a
progress bar on large sets): an unreadable file, image and mask sizes
differing, a multi-channel non-palette mask or ids ``>= num_classes`` is a
``DataError`` (a ``ValueError``) naming the file; so is a set without any
labelled pixel; 0/255 masks get a warning. What only decoding finds (an
image truncated after its header) is raised while iterating: TensorFlow
wraps it in its own error (with a traceback); run ``fit``, ``evaluate`` or
the loop inside ``keras_segformer.errors.data_errors()`` to get the plain
``DataError`` back. ``training.trainer`` and the command line do so.

Example:
>>> files = keras_segformer.data.ade20k("ADEChallengeData2016", "train")
>>> ds = make_dataset(files.images, files.masks, batch_size=16,
...     training=True, num_classes=150, reduce_labels=True, seed=0,
...     repeat=True)
>>> model.fit(ds, steps_per_epoch=1000)
"""

import numbers

import tensorflow as tf

from keras_segformer.data import augment
from keras_segformer.data.loading import (
    IGNORE_INDEX,
    LabelTransform,
    load_pair,
    resolve_pairs,
    validate_pairs,
)
from keras_segformer.errors import DataError, tag


def _pair(value, name):
    if isinstance(value, numbers.Integral):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or any(
        not isinstance(v, numbers.Integral) or v < 1 for v in value
    ):
        raise ValueError(
            f"`{name}` must be an int or a pair of positive ints. "
            f"Received: {value!r}"
        )
    return int(value[0]), int(value[1])


def _check_stats(mean, std):
    if (mean is None) != (std is None):
        raise ValueError(
            "`mean` and `std` must both be given or both be None. "
            f"Received mean={mean!r}, std={std!r}"
        )
    if mean is None:
        return None, None
    mean = tuple(float(m) for m in mean)
    std = tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(
            "`mean` and `std` must be 3 floats each (RGB, 0..255 scale), "
            f"std > 0. Received mean={mean}, std={std}"
        )
    return mean, std


def _sizes(batch_size, crop_size, base_size, ratio_range, eval_size):
    """The size arguments, checked and normalized (ints, pairs)."""
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive int. Received: {batch_size!r}"
        )
    crop_size = _pair(crop_size, "crop_size")
    if base_size is not None:
        base_size = _pair(base_size, "base_size")
    if ratio_range is not None:
        ratio_range = tuple(float(r) for r in ratio_range)
        if len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(
                "`ratio_range` must be (min, max) with 0 < min <= max. "
                f"Received: {ratio_range!r}"
            )
    if eval_size is not None and not isinstance(eval_size, numbers.Integral):
        eval_size = _pair(eval_size, "eval_size")
    elif eval_size is not None:
        eval_size = _pair(eval_size, "eval_size")[0]
    return {
        "batch_size": int(batch_size),
        "crop_size": crop_size,
        "base_size": base_size,
        "ratio_range": ratio_range,
        "eval_size": eval_size,
    }


def _file_pairs(image_paths, mask_paths, shuffle, seed, repeat):
    """The (image path, mask path) dataset, shuffled and repeated."""
    ds = tf.data.Dataset.from_tensor_slices((image_paths, mask_paths))
    if shuffle:
        ds = ds.shuffle(
            len(image_paths), seed=seed, reshuffle_each_iteration=True
        )
    return ds.repeat() if repeat else ds


def _loader(label_transform):
    """``(image path, mask path) -> (uint8 image, int32 label)`` in TF."""

    def load(image_path, mask_path):
        try:
            return load_pair(
                image_path.decode(), mask_path.decode(), label_transform
            )
        except (ValueError, TypeError, OSError) as e:
            # TensorFlow wraps it with a traceback; the tag lets
            # errors.data_errors() give back this message alone.
            raise DataError(tag(e)) from None

    def load_tf(image_path, mask_path):
        image, label = tf.numpy_function(
            load, [image_path, mask_path], [tf.uint8, tf.int32], stateful=False
        )
        image.set_shape([None, None, 3])
        label.set_shape([None, None])
        return image, label

    return load_tf


def _train_batches(ds, load, sizes, seed, drop_remainder, augmentation):
    """Load, augment (``augment.train_transform``) and batch."""
    # One independent stateless seed per element; rerandomized every
    # epoch, reproducible when `seed` is given.
    seeds = tf.data.Dataset.random(
        seed=seed, rerandomize_each_iteration=True
    ).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds))

    def train_map(paths, element_seed):
        image, label = load(*paths)
        return augment.train_transform(
            image,
            label,
            element_seed,
            crop_size=sizes["crop_size"],
            base_size=sizes["base_size"],
            ratio_range=sizes["ratio_range"],
            **augmentation,
        )

    ds = ds.map(train_map, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(sizes["batch_size"], drop_remainder=drop_remainder)


def _eval_batches(ds, load, sizes, drop_remainder, mean, std):
    """Load, resize to ``eval_size`` if given, normalize and batch (whole
    images of different sizes padded to the largest)."""
    eval_size, batch_size = sizes["eval_size"], sizes["batch_size"]

    def eval_map(image_path, mask_path):
        image, label = load(image_path, mask_path)
        return augment.eval_transform(
            image, label, eval_size=eval_size, mean=mean, std=std
        )

    ds = ds.map(eval_map, num_parallel_calls=tf.data.AUTOTUNE)
    if isinstance(eval_size, tuple) or batch_size == 1:
        return ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.padded_batch(
        batch_size,
        padding_values=(
            tf.constant(0.0, tf.float32),
            tf.constant(IGNORE_INDEX, tf.int32),
        ),
        drop_remainder=drop_remainder,
    )


def make_dataset(
    images,
    masks,
    *,
    batch_size,
    training,
    crop_size=(512, 512),
    num_classes=None,
    base_size=(2048, 512),
    ratio_range=(0.5, 2.0),
    cat_max_ratio=0.75,
    reduce_labels=False,
    label_map=None,
    mean=augment.IMAGENET_MEAN_255,
    std=augment.IMAGENET_STD_255,
    shuffle=None,
    seed=None,
    repeat=False,
    eval_size=None,
    photometric=True,
    flip_prob=0.5,
    validate=True,
    drop_remainder=False,
):
    """Build a batched ``tf.data`` pipeline of ``(image, label)`` pairs.

    ``image``: float32 ``(B, H, W, 3)`` RGB, normalized with ``mean`` /
    ``std`` on the 0..255 scale (the defaults equal transformers' rescale
    + ImageNet normalize); ``label``: int32 ``(B, H, W)``, 255 where
    ignored. The augmentation, decoding and errors: see the module doc.

    Args:
        images: folder (searched recursively, paired with ``masks`` by
            name) or list of image files.
        masks: folder or list of mask files (paired by position).
        batch_size: int. Batch size.
        training: bool. Augment (training) or not (evaluation).
        crop_size: int or pair. Training output size (random crop).
        base_size: pair or None. mmseg's ``img_scale``: images are
            rescaled to fit it (aspect kept) times a random ratio.
        ratio_range: pair or None. The random rescale ratios.
        cat_max_ratio: float. Crop retry threshold: retry until no class
            covers more of the crop (1.0 disables).
        photometric: bool. Photometric distortion (brightness, contrast,
            saturation, hue).
        flip_prob: float. Probability of a horizontal flip.
        num_classes: int or None. Label ids (after remapping) other than
            255 must be below it.
        reduce_labels: bool. ADE20K: 0 -> 255, k -> k - 1, 255 stays.
        label_map: dict or None. Raw id -> training id; ids not in the map
            become 255. Applied before ``reduce_labels``.
        mean: 3 floats (0..255 RGB) or None. Normalization mean; ``mean``
            and ``std`` both None give 0..255 images (for models with
            in-model preprocessing).
        std: 3 floats (0..255 RGB) or None. Normalization std.
        shuffle: bool or None. Shuffle every epoch; None: ``training``.
        seed: int or None. Reproducible shuffling and augmentation.
        repeat: bool. Repeat forever (then pass ``steps_per_epoch``).
        eval_size: None, int (short side) or ``(height, width)``.
        validate: bool. Check every pair up front (``DataError`` naming
            the file; ``loading.validate_pairs``). False leaves the checks
            to the iteration.
        drop_remainder: bool. Drop the last incomplete batch.

    Returns:
        ``tf.data.Dataset`` of ``(images, labels)`` batches.

    Raises:
        ValueError: a missing folder, no images, an image without a mask,
            or an argument out of range (named).
        DataError: with ``validate=True`` at once, else while iterating:
            a file that cannot be decoded, image and mask sizes that
            differ, or a label id >= ``num_classes`` (the file named).

    Example:
    >>> ds = make_dataset("images/", "masks/", batch_size=8, training=True,
    ...     num_classes=150, reduce_labels=True, repeat=True)
    """
    sizes = _sizes(batch_size, crop_size, base_size, ratio_range, eval_size)
    mean, std = _check_stats(mean, std)
    label_transform = LabelTransform(reduce_labels, label_map, num_classes)
    image_paths, mask_paths = resolve_pairs(images, masks)
    if validate:
        validate_pairs(image_paths, mask_paths, label_transform)
    shuffle = training if shuffle is None else shuffle
    ds = _file_pairs(image_paths, mask_paths, shuffle, seed, repeat)
    load = _loader(label_transform)
    if training:
        augmentation = {"cat_max_ratio": cat_max_ratio, "flip_prob": flip_prob}
        augmentation.update(photometric=photometric, mean=mean, std=std)
        ds = _train_batches(ds, load, sizes, seed, drop_remainder, augmentation)
    else:
        ds = _eval_batches(ds, load, sizes, drop_remainder, mean, std)
    return ds.prefetch(tf.data.AUTOTUNE)
