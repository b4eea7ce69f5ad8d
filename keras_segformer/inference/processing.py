"""Image loading, pre-processing and post-processing (numpy + PIL).

Pre-processing reproduces transformers' ``SegformerImageProcessorPil``
(the backend ``SegformerImageProcessor`` falls back to when torchvision is
not installed) exactly, bit for bit:

1. resize the uint8 RGB image with PIL ``BILINEAR`` (PIL widens the filter
   when shrinking, i.e. it antialiases) and keep the rounded uint8 result;
2. rescale by 1/255 in float64, cast to float32;
3. normalize with the ImageNet mean and std in float32.

Resizing with PIL (on uint8, like transformers) rather than
``keras.ops.image.resize`` keeps the numbers identical to transformers.
The Keras resize with ``antialias=True`` computes the same filter in float
without rounding to uint8, so it differs by at most one uint8 level
(1 / (255 * std), about 0.018 after normalization; tested); with
``antialias=False`` it differs a lot when shrinking. With torchvision
installed, transformers' default ``SegformerImageProcessor`` resizes with
``torchvision.transforms.v2.functional.resize(antialias=True)`` on uint8,
PIL's algorithm re-implemented, which also differs from PIL by rounding.

Post-processing reproduces
``SegformerImageProcessor.post_process_semantic_segmentation``: logits are
upsampled bilinearly (PyTorch ``align_corners=False``, no antialiasing) to
each target size, then the argmax over classes is taken. It runs in numpy,
so its results do not depend on the Keras backend.
"""

import math
import os

import numpy as np
from PIL import Image, ImageOps

from keras_segformer.decode import (
    decode_image,
    decode_mask,
    pil_to_mask,
    pil_to_rgb,
)
from keras_segformer.layers.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from keras_segformer.ops.resize import source_indices

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _array_to_rgb(image):
    if image.dtype != np.uint8:
        raise TypeError(
            "Image arrays must be uint8 with values 0-255. Received dtype "
            f"{image.dtype}. Convert first, e.g. "
            "`(x * 255).round().clip(0, 255).astype('uint8')` for 0-1 floats."
        )
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(
            "Image arrays must be channels-last (height, width), "
            "(height, width, 1), (height, width, 3) or (height, width, 4). "
            f"Received shape {image.shape}."
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"Image is empty: shape {image.shape}.")
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    if image.shape[-1] == 4:
        # Same arithmetic as transformers' numpy `convert_to_rgb`.
        alpha = image[..., 3:4] / 255
        rgb = alpha * image[..., :3] + (1 - alpha) * 255
        return np.round(rgb).astype(np.uint8)
    return np.ascontiguousarray(image)


def load_image(image):
    """Return an image as a uint8 RGB array of shape ``(height, width, 3)``.

    Grayscale is replicated to three channels; an alpha channel (or a
    palette transparency) is composited onto a white background, as
    transformers' ``convert_to_rgb`` does. Files and PIL images go through
    ``keras_segformer.decode``, the decoder of the training pipeline too:
    turned upright according to their EXIF orientation, 16-bit grayscale
    reduced to 8 bits (``>> 8``).

    Args:
        image: str or path-like (an image file), ``PIL.Image.Image``, or
            uint8 numpy array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or
            ``(H, W, 4)``.

    Example:
    >>> rgb = load_image("street.jpg")  # (H, W, 3) uint8
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Image file not found: {path!r}")
        return decode_image(path)
    if isinstance(image, Image.Image):
        return pil_to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    raise TypeError(
        "`image` must be a file path, a PIL image or a uint8 numpy array. "
        f"Received: {type(image).__name__}"
    )


def as_image_list(images):
    """Split an input into a list of single images.

    Args:
        images: one image (path, PIL image, ``(H, W[, C])`` array), a
            list/tuple of them, or a ``(N, H, W, C)`` array.

    Returns:
        ``(list, is_batch)``: the images and whether a batch was given.
    """
    if isinstance(images, (list, tuple)):
        return list(images), True
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images), True
    return [images], False


def _check_pair(value, name):
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(
            f"`{name}` must be a positive int or a pair of positive ints "
            f"(height, width). Received: {value}"
        )
    return value


def resolve_size(
    height, width, size=None, scale=1.0, max_size=None, size_divisor=None
):
    """Size ``(height, width)`` an image is resized to before the model.

    Follows mmseg's test pipeline: the size spec is multiplied by ``scale``
    (as ``MultiScaleFlipAug`` does with its ratios), the image is rescaled
    to it keeping its aspect ratio when ``size`` is an int, and the result
    is optionally rounded up to a multiple of ``size_divisor`` (NVlabs
    SegFormer's ``AlignedResize``).

    Args:
        height: int. Image height.
        width: int. Image width.
        size: None, int or pair of ints. None keeps the image size (times
            ``scale``); an int is the target short side (aspect ratio
            kept); a pair ``(h, w)`` is an exact size.
        scale: float. Test-time scale factor.
        max_size: int or None. With an int ``size``, cap on the long side
            (mmseg's ``(2048, 512)`` scale is ``size=512, max_size=2048``).
        size_divisor: int or None. Round each side up to a multiple of it.
    """
    if scale <= 0:
        raise ValueError(f"`scale` must be > 0. Received: {scale}")
    if size is None:
        factor = float(scale)
    elif isinstance(size, (int, np.integer)):
        if size < 1:
            raise ValueError(f"`size` must be >= 1. Received: {size}")
        factor = int(size * scale) / min(height, width)
        if max_size is not None:
            factor = min(factor, int(max_size * scale) / max(height, width))
    else:
        target = _check_pair(size, "size")
        factor = None
        new = (int(target[0] * scale), int(target[1] * scale))
    if factor is not None:
        # mmcv's `rescale_size` rounds half up.
        new = (int(height * factor + 0.5), int(width * factor + 0.5))
    if size_divisor:
        d = int(size_divisor)
        new = tuple(int(math.ceil(n / d)) * d for n in new)
    return max(new[0], 1), max(new[1], 1)


def resize_image(image, size, resample="bilinear"):
    """Resize a uint8 image with PIL.

    Args:
        image: uint8 numpy array ``(H, W, C)`` or ``(H, W)``.
        size: pair of ints ``(height, width)``.
        resample: str. ``"bilinear"`` (antialiased when shrinking, as in
            transformers), ``"nearest"``, ``"bicubic"`` or ``"lanczos"``.
    """
    if resample not in _RESAMPLE:
        raise ValueError(
            f"`resample` must be one of {sorted(_RESAMPLE)}. "
            f"Received: {resample!r}"
        )
    height, width = _check_pair(size, "size")
    if image.shape[:2] == (height, width):
        return image
    pil = Image.fromarray(image)
    return np.array(pil.resize((width, height), resample=_RESAMPLE[resample]))


def normalize_image(image, mean=IMAGENET_MEAN, std=IMAGENET_STD, scale=1 / 255):
    """``(image * scale - mean) / std`` with transformers' float arithmetic.

    Args:
        image: numpy array ``(..., 3)``, uint8 or float.
        mean: sequence of floats. Per-channel mean after scaling.
        std: sequence of floats. Per-channel standard deviation.
        scale: float. Rescale factor applied first (in float64).
    """
    x = (np.asarray(image).astype(np.float64) * scale).astype(np.float32)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def preprocess(
    images,
    size=(512, 512),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    rescale_factor=1 / 255,
    resample="bilinear",
):
    """Turn images into the model's input batch, as transformers does.

    Equal (bit for bit) to ``SegformerImageProcessorPil`` with the same
    options, but channels-last. See the module docstring for how the PIL
    resize relates to other resize implementations.

    Args:
        images: one image or a list of images; each a file path, a PIL
            image or a uint8 array (see ``load_image``). Grayscale and RGBA
            images are converted to RGB.
        size: pair ``(height, width)``, int (short side, aspect ratio kept)
            or None (keep each image's size; all must then be equal).
        mean: sequence of floats. Normalization mean (ImageNet).
        std: sequence of floats. Normalization standard deviation.
        rescale_factor: float. Applied before normalization.
        resample: str. PIL filter name, ``"bilinear"`` as transformers.

    Returns:
        float32 numpy array ``(batch, height, width, 3)``.

    Raises:
        ValueError: no images, or images of different sizes without a
            fixed ``size`` (they cannot be stacked into one batch).

    Example:
    >>> pixels = preprocess(["a.jpg", "b.png"])  # (2, 512, 512, 3)
    >>> logits = model.predict(pixels)
    """
    images, _ = as_image_list(images)
    if not images:
        raise ValueError("`images` is empty.")
    batch = []
    for image in images:
        rgb = load_image(image)
        target = resolve_size(rgb.shape[0], rgb.shape[1], size)
        rgb = resize_image(rgb, target, resample)
        batch.append(normalize_image(rgb, mean, std, rescale_factor))
    shapes = sorted({x.shape for x in batch})
    if len(shapes) > 1:
        raise ValueError(
            "Images of different sizes cannot be stacked into one batch "
            f"(sizes {[s[:2] for s in shapes]}). Pass `size=(h, w)`, or use "
            "`keras_segformer.inference.Segmenter`, which batches images of "
            "different sizes."
        )
    return np.stack(batch)


def reduce_labels(labels):
    """ADE20K label reduction: 0 (background) -> 255, k -> k - 1.

    Equal to transformers' ``do_reduce_labels`` and mmseg's
    ``reduce_zero_label``; 255 (ignore) stays 255.

    Args:
        labels: integer numpy array.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"`labels` must be an integer array. Received {labels.dtype}."
        )
    out = labels.astype(np.int64) - 1
    out[labels == 0] = 255
    out[labels == 255] = 255
    return out.astype(labels.dtype)


def load_label(label):
    """Return a segmentation map as an int64 array ``(height, width)``.

    Args:
        label: path to a single-channel image (mode ``L``, ``P``, ``I`` or
            ``I;16``: palette PNGs give their indices, 16-bit values are
            kept), a PIL image, or an integer numpy array ``(H, W)`` /
            ``(H, W, 1)``. Files and PIL images are decoded as the
            training pipeline does (``keras_segformer.decode``, EXIF
            orientation applied).
    """
    if isinstance(label, (str, os.PathLike)):
        path = os.fspath(label)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Label file not found: {path!r}")
        label = decode_mask(path)
    elif isinstance(label, Image.Image):
        label = pil_to_mask(ImageOps.exif_transpose(label), "Label")
    elif not isinstance(label, np.ndarray):
        raise TypeError(
            "`label` must be a file path, a PIL image or an integer numpy "
            f"array. Received: {type(label).__name__}"
        )
    if label.ndim == 3 and label.shape[-1] == 1:
        label = label[..., 0]
    if label.ndim != 2:
        raise ValueError(
            "Segmentation maps must have one channel: shape (height, width). "
            f"Received shape {label.shape} (an RGB colour mask must be "
            "mapped to class indices first)."
        )
    if not np.issubdtype(label.dtype, np.integer):
        raise TypeError(
            f"Segmentation maps must be integers. Received {label.dtype}."
        )
    if label.size and label.min() < 0:
        raise ValueError("Segmentation maps must not hold negative values.")
    return label.astype(np.int64)


def preprocess_labels(labels, size=(512, 512), do_reduce_labels=False):
    """Segmentation maps as transformers prepares them (``labels``).

    Optional label reduction first, then a nearest-neighbour PIL resize
    (never interpolated), as ``SegformerImageProcessorPil`` does.

    Args:
        labels: one segmentation map or a list (see ``load_label``).
        size: pair, int (short side) or None, as in ``preprocess``.
        do_reduce_labels: bool. Apply ``reduce_labels`` (ADE20K).

    Returns:
        int64 numpy array ``(batch, height, width)``.
    """
    labels, _ = as_image_list(labels)
    out = []
    for label in labels:
        label = load_label(label)
        if do_reduce_labels:
            label = reduce_labels(label)
        target = resolve_size(label.shape[0], label.shape[1], size)
        if target != label.shape:
            if label.max(initial=0) > np.iinfo(np.int32).max:
                raise ValueError("Label values must fit in int32.")
            pil = Image.fromarray(label.astype(np.int32))
            pil = pil.resize(target[::-1], resample=Image.Resampling.NEAREST)
            label = np.array(pil).astype(np.int64)
        out.append(label)
    if len({x.shape for x in out}) > 1:
        raise ValueError(
            "Segmentation maps of different sizes cannot be stacked; pass "
            "`size=(h, w)`."
        )
    return np.stack(out)


def _resize_axis(x, out_size, axis):
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    # PyTorch's CPU kernel: float32 scale, half-pixel source coordinates
    # clamped at 0, the upper neighbour clamped at the border.
    low, high, w_high = source_indices(in_size, out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    w_high = w_high.reshape(shape)
    out = np.take(x, low, axis=axis)
    delta = np.take(x, high, axis=axis)
    delta -= out
    delta *= w_high
    out += delta
    return out


def _to_numpy(x):
    if isinstance(x, np.ndarray):
        return x
    import keras

    return keras.ops.convert_to_numpy(x)


def resize_logits(logits, size):
    """Bilinear resize of channels-last logits, ``align_corners=False``.

    The numbers of ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`` (no antialiasing, also when shrinking) up to
    float32 rounding, computed in numpy.

    Args:
        logits: array ``(height, width, classes)`` or
            ``(batch, height, width, classes)``.
        size: pair of ints ``(height, width)``.
    """
    x = _to_numpy(logits).astype(np.float32, copy=False)
    if x.ndim not in (3, 4):
        raise ValueError(
            "`logits` must be (height, width, classes) or (batch, height, "
            f"width, classes). Received shape {x.shape}."
        )
    height, width = _check_pair(size, "size")
    offset = x.ndim - 3
    # Width first: the gather along the row axis then runs on the smaller
    # array, and the row gather copies whole contiguous rows.
    x = _resize_axis(x, width, offset + 1)
    return _resize_axis(x, height, offset)


def logits_to_mask(logits):
    """Class-index mask from channels-last logits.

    Argmax over classes; with a single channel (binary model, sigmoid)
    pixels with a positive logit are class 1.

    Args:
        logits: array ``(..., classes)``.
    """
    logits = _to_numpy(logits)
    if logits.shape[-1] == 1:
        return (logits[..., 0] > 0).astype(np.int32)
    return np.argmax(logits, axis=-1).astype(np.int32)


def postprocess(logits, target_sizes=None):
    """Masks from a batch of logits, as transformers' post-processing.

    Equal to ``post_process_semantic_segmentation(outputs, target_sizes)``
    on the same logits in NCHW layout, except for single-channel (binary)
    logits, which are thresholded at 0 instead of an argmax that is always 0.

    Args:
        logits: array or backend tensor ``(batch, h, w, classes)``, the
            model output (channels-last).
        target_sizes: None (masks at the logits' size) or one
            ``(height, width)`` per image, usually the original image sizes.

    Returns:
        list of int32 numpy arrays ``(height, width)``.

    Raises:
        ValueError: ``logits`` not of rank 4, or ``target_sizes`` not
            holding one size per image.

    Example:
    >>> masks = postprocess(model.predict(pixels), [(480, 640)])
    """
    logits = _to_numpy(logits)
    if logits.ndim != 4:
        raise ValueError(
            "`logits` must be (batch, height, width, classes). Received "
            f"shape {logits.shape}."
        )
    if target_sizes is None:
        return [logits_to_mask(x) for x in logits]
    target_sizes = [tuple(int(v) for v in s) for s in target_sizes]
    if len(target_sizes) != len(logits):
        raise ValueError(
            f"`target_sizes` must hold one size per image: {len(logits)} "
            f"images, {len(target_sizes)} sizes."
        )
    return [
        logits_to_mask(resize_logits(x, size))
        for x, size in zip(logits, target_sizes)
    ]
