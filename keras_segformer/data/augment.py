"""Training augmentation of mmseg / SegFormer, as TensorFlow graph ops.

TensorFlow-only on purpose: this runs inside ``tf.data`` on every Keras
backend. Every random draw is stateless and takes an explicit ``seed``
(an int ``[2]`` tensor), so a pipeline with a seed is reproducible.

Images are float32 ``(H, W, 3)`` in 0..255 until ``normalize``; labels are
int32 ``(H, W)``. Geometric transforms move image and label together and
resize labels with nearest neighbour only, so no new ids appear.
"""

import tensorflow as tf

from keras_segformer.data.loading import IGNORE_INDEX

# mmseg's img_norm_cfg: the ImageNet statistics on 0..255 RGB. Identical to
# transformers' rescale(1/255) + normalize(0.485.../0.229...).
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


def _uniform(seed, minval=0.0, maxval=1.0, dtype=tf.float32):
    return tf.random.stateless_uniform(
        [], seed, minval=minval, maxval=maxval, dtype=dtype
    )


def _split(seed, num):
    return tf.random.experimental.stateless_split(seed, num=num)


def rescale_size(height, width, scale):
    """Output size of mmcv's keep-ratio ``imrescale`` to a ``scale`` box.

    The image is scaled by ``min(long / max(h, w), short / min(h, w))``
    where ``long, short`` are the larger and smaller entries of ``scale``,
    so it fits inside the box whatever its orientation; each side is then
    ``int(side * factor + 0.5)``.

    Args:
        height: int scalar tensor. Image height.
        width: int scalar tensor. Image width.
        scale: float64 ``[2]`` tensor or pair. The box, in any order.

    Returns:
        ``(new_height, new_width)`` int32 scalar tensors (at least 1).
    """
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    scale = tf.cast(scale, tf.float64)
    long_edge = tf.reduce_max(scale)
    short_edge = tf.reduce_min(scale)
    factor = tf.minimum(
        long_edge / tf.maximum(h, w), short_edge / tf.minimum(h, w)
    )
    new_h = tf.maximum(tf.floor(h * factor + 0.5), 1.0)
    new_w = tf.maximum(tf.floor(w * factor + 0.5), 1.0)
    return tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32)


def resize_pair(image, label, size, antialias=False):
    """Resize an image bilinearly and its label with nearest neighbour.

    Args:
        image: float32 ``(H, W, 3)``.
        label: int32 ``(H, W)``.
        size: ``(height, width)`` ints or int32 tensors.
        antialias: bool. Antialias the image when shrinking (PIL-like,
            transformers); mmseg's cv2 resize does not.
    """
    size = tf.stack([tf.cast(size[0], tf.int32), tf.cast(size[1], tf.int32)])
    image = tf.image.resize(image, size, "bilinear", antialias=antialias)
    label = tf.image.resize(label[..., None], size, "nearest")[..., 0]
    return image, label


def random_rescale(image, label, seed, base_size, ratio_range=(0.5, 2.0)):
    """mmseg ``Resize(img_scale=base_size, ratio_range, keep_ratio=True)``.

    A ratio ``r`` is drawn uniformly from ``ratio_range``; the box
    ``(int(base_size[0] * r), int(base_size[1] * r))`` is then used as in
    ``rescale_size`` (the image fits inside it, aspect ratio kept).

    Args:
        image: float32 ``(H, W, 3)``.
        label: int32 ``(H, W)``.
        seed: int ``[2]`` tensor.
        base_size: pair of ints. mmseg ``img_scale``, e.g. ``(2048, 512)``;
            the order does not matter (long and short edge of the box).
        ratio_range: pair of floats or None. None means ratio 1.
    """
    if ratio_range is None:
        ratio = tf.constant(1.0, tf.float64)
    else:
        ratio = _uniform(seed, ratio_range[0], ratio_range[1], tf.float64)
    box = tf.floor(tf.constant(base_size, tf.float64) * ratio)
    shape = tf.shape(label)
    size = rescale_size(shape[0], shape[1], box)
    return resize_pair(image, label, size)


def is_balanced_crop(label, cat_max_ratio=0.75):
    """mmseg's crop test: > 1 class and each below ``cat_max_ratio``.

    Ratios are of the non-ignored pixels: 255 counts for nothing.

    Args:
        label: int32 ``(h, w)``. Label of a candidate crop.
        cat_max_ratio: float. Largest allowed share of one class.

    Returns:
        bool scalar tensor.
    """
    values = tf.reshape(label, [-1])
    values = tf.boolean_mask(values, values != IGNORE_INDEX)
    counts = tf.math.bincount(values, minlength=1)
    present = tf.math.count_nonzero(counts)
    total = tf.cast(tf.reduce_sum(counts), tf.float32)
    largest = tf.cast(tf.reduce_max(counts), tf.float32)
    return tf.logical_and(
        present > 1, largest < cat_max_ratio * tf.maximum(total, 1.0)
    )


def random_crop(
    image, label, seed, crop_size, cat_max_ratio=0.75, max_tries=10
):
    """mmseg ``RandomCrop(crop_size, cat_max_ratio)``.

    A crop of at most ``crop_size`` is placed uniformly. With
    ``cat_max_ratio < 1`` it is redrawn (up to ``max_tries`` times) until
    more than one class is present and no class covers ``cat_max_ratio``
    or more of the non-ignored pixels; as in mmseg, the crop drawn after
    the last failed try is kept unchecked.

    Args:
        image: float32 ``(H, W, 3)``.
        label: int32 ``(H, W)``.
        seed: int ``[2]`` tensor.
        crop_size: ``(height, width)`` ints.
        cat_max_ratio: float. 1.0 or more disables the check.
        max_tries: int. Number of checked crops.
    """
    crop_h, crop_w = int(crop_size[0]), int(crop_size[1])
    shape = tf.shape(label)
    margin = tf.maximum(shape - tf.constant([crop_h, crop_w]), 0)
    seeds = _split(seed, 2 * (max_tries + 1))

    def draw(i):
        return tf.stack(
            [
                tf.random.stateless_uniform(
                    [], seeds[2 * i], 0, margin[0] + 1, tf.int32
                ),
                tf.random.stateless_uniform(
                    [], seeds[2 * i + 1], 0, margin[1] + 1, tf.int32
                ),
            ]
        )

    offset = draw(0)
    if cat_max_ratio < 1.0:

        def cond(i, offset, ok):
            return tf.logical_and(i < max_tries, tf.logical_not(ok))

        def body(i, offset, ok):
            crop = label[
                offset[0] : offset[0] + crop_h, offset[1] : offset[1] + crop_w
            ]
            ok = is_balanced_crop(crop, cat_max_ratio)
            offset = tf.where(ok, offset, draw(i + 1))
            return i + 1, offset, ok

        _, offset, _ = tf.while_loop(
            cond, body, (tf.constant(0), offset, tf.constant(False))
        )
    image = image[
        offset[0] : offset[0] + crop_h, offset[1] : offset[1] + crop_w
    ]
    label = label[
        offset[0] : offset[0] + crop_h, offset[1] : offset[1] + crop_w
    ]
    return image, label


def random_flip(image, label, seed, prob=0.5):
    """Flip image and label left-right together with probability ``prob``.

    Args:
        image: float32 ``(H, W, 3)``.
        label: int32 ``(H, W)``.
        seed: int ``[2]`` tensor.
        prob: float. Flip probability.
    """
    flip = _uniform(seed) < prob
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    label = tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label)
    return image, label


def photometric_distortion(
    image,
    seed,
    brightness_delta=32,
    contrast_range=(0.5, 1.5),
    saturation_range=(0.5, 1.5),
    hue_delta=18,
):
    """mmseg ``PhotoMetricDistortion`` on a float 0..255 RGB image.

    Order: brightness, then contrast either here (mode 1) or last
    (mode 0), saturation, hue. Each step happens with probability 0.5 and
    clips to 0..255. Brightness adds ``U(-delta, delta)``; contrast
    multiplies by ``U(contrast_range)`` (no mean subtraction, as mmseg);
    saturation multiplies HSV saturation by ``U(saturation_range)``; hue
    adds an integer from ``[-hue_delta, hue_delta)`` in OpenCV's 8-bit hue
    unit (180 per turn, so mmseg's 18 is +-36 degrees). Values stay float
    (mmseg rounds to uint8 between steps).

    Args:
        image: float32 ``(H, W, 3)`` RGB in 0..255.
        seed: int ``[2]`` tensor.
        brightness_delta: float. Maximum brightness shift (0..255 scale).
        contrast_range: pair of floats. Contrast factor range.
        saturation_range: pair of floats. Saturation factor range.
        hue_delta: int. Maximum hue shift in OpenCV units (180 per turn).
    """
    s = _split(seed, 10)

    def maybe(i, fn, x):
        return tf.cond(_uniform(s[i]) < 0.5, lambda: fn(x), lambda: x)

    def brightness(x):
        delta = _uniform(s[1], -brightness_delta, brightness_delta)
        return tf.clip_by_value(x + delta, 0.0, 255.0)

    def contrast(x):
        alpha = _uniform(s[3], *contrast_range)
        return tf.clip_by_value(x * alpha, 0.0, 255.0)

    def saturation(x):
        alpha = _uniform(s[5], *saturation_range)
        return tf.image.adjust_saturation(x / 255.0, alpha) * 255.0

    def hue(x):
        delta = tf.random.stateless_uniform(
            [], s[7], -hue_delta, hue_delta, tf.int32
        )
        delta = tf.cast(delta, tf.float32) / 180.0
        x = tf.image.adjust_hue(x / 255.0, delta) * 255.0
        return tf.clip_by_value(x, 0.0, 255.0)

    contrast_first = _uniform(s[8]) < 0.5
    image = maybe(0, brightness, image)
    image = tf.cond(
        contrast_first, lambda: maybe(2, contrast, image), lambda: image
    )
    image = maybe(4, saturation, image)
    if hue_delta > 0:
        image = maybe(6, hue, image)
    image = tf.cond(
        contrast_first, lambda: image, lambda: maybe(2, contrast, image)
    )
    return image


def normalize(image, mean=IMAGENET_MEAN_255, std=IMAGENET_STD_255):
    """``(image - mean) / std`` per channel; None for both skips it.

    Args:
        image: float32 ``(..., 3)``.
        mean: sequence of 3 floats or None.
        std: sequence of 3 floats or None.
    """
    if mean is None and std is None:
        return image
    mean = tf.constant(mean if mean is not None else (0.0,) * 3, tf.float32)
    std = tf.constant(std if std is not None else (1.0,) * 3, tf.float32)
    return (image - mean) / std


def pad_to(image, label, size):
    """Pad bottom and right up to ``size``: image with 0, label with 255.

    Args:
        image: float32 ``(H, W, 3)``, ``H <= size[0]``, ``W <= size[1]``.
        label: int32 ``(H, W)``.
        size: ``(height, width)`` ints.
    """
    shape = tf.shape(label)
    pad_h = tf.maximum(size[0] - shape[0], 0)
    pad_w = tf.maximum(size[1] - shape[1], 0)
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
    label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=255)
    image = tf.ensure_shape(image, (size[0], size[1], 3))
    label = tf.ensure_shape(label, (size[0], size[1]))
    return image, label


def train_transform(
    image,
    label,
    seed,
    *,
    crop_size=(512, 512),
    base_size=(2048, 512),
    ratio_range=(0.5, 2.0),
    cat_max_ratio=0.75,
    flip_prob=0.5,
    photometric=True,
    mean=IMAGENET_MEAN_255,
    std=IMAGENET_STD_255,
):
    """The SegFormer / mmseg training pipeline after loading.

    Random rescale -> random crop (cat_max_ratio) -> horizontal flip ->
    photometric distortion -> normalize -> pad to ``crop_size``.

    Args:
        image: uint8 or float ``(H, W, 3)`` RGB in 0..255.
        label: int32 ``(H, W)``.
        seed: int ``[2]`` tensor.
        crop_size: ``(height, width)``. Output size.
        base_size: pair of ints or None. Rescale box (mmseg img_scale);
            None skips the rescale.
        ratio_range: pair of floats or None. Rescale ratio range.
        cat_max_ratio: float. See ``random_crop``.
        flip_prob: float. Horizontal flip probability.
        photometric: bool. Apply ``photometric_distortion``.
        mean: 3 floats or None. Normalization mean (0..255 scale).
        std: 3 floats or None. Normalization std (0..255 scale).

    Returns:
        ``(image float32 crop_size + (3,), label int32 crop_size)``.
    """
    s = _split(seed, 4)
    image = tf.cast(image, tf.float32)
    label = tf.cast(label, tf.int32)
    if base_size is not None:
        image, label = random_rescale(
            image, label, s[0], base_size, ratio_range
        )
    image, label = random_crop(image, label, s[1], crop_size, cat_max_ratio)
    image, label = random_flip(image, label, s[2], flip_prob)
    if photometric:
        image = photometric_distortion(image, s[3])
    image = normalize(image, mean, std)
    return pad_to(image, label, crop_size)


def eval_size_for(height, width, eval_size):
    """Output size for evaluation resizing.

    Args:
        height: int scalar tensor. Image height.
        width: int scalar tensor. Image width.
        eval_size: int (short side, aspect kept, ``round``) or
            ``(height, width)`` (exact).
    """
    if isinstance(eval_size, int):
        h = tf.cast(height, tf.float64)
        w = tf.cast(width, tf.float64)
        factor = eval_size / tf.minimum(h, w)
        return (
            tf.cast(tf.round(h * factor), tf.int32),
            tf.cast(tf.round(w * factor), tf.int32),
        )
    return int(eval_size[0]), int(eval_size[1])


def eval_transform(
    image,
    label,
    *,
    eval_size=None,
    mean=IMAGENET_MEAN_255,
    std=IMAGENET_STD_255,
):
    """Evaluation preprocessing: optional resize, then normalize.

    Args:
        image: uint8 or float ``(H, W, 3)`` RGB in 0..255.
        label: int32 ``(H, W)``.
        eval_size: None (keep the size), int (short side) or
            ``(height, width)``. The image is resized bilinearly with
            antialiasing (as transformers' PIL resize), the label with
            nearest neighbour.
        mean: 3 floats or None. Normalization mean (0..255 scale).
        std: 3 floats or None. Normalization std (0..255 scale).
    """
    image = tf.cast(image, tf.float32)
    label = tf.cast(label, tf.int32)
    if eval_size is not None:
        shape = tf.shape(label)
        size = eval_size_for(shape[0], shape[1], eval_size)
        image, label = resize_pair(image, label, size, antialias=True)
        image = tf.clip_by_value(image, 0.0, 255.0)
    return normalize(image, mean, std), label
