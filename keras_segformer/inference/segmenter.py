"""Whole-image and sliding-window inference with test-time augmentation.

The model runs through ``keras.Model.predict_on_batch``: a compiled
function per input shape on every backend (``tf.function`` on TensorFlow,
``jax.jit`` on JAX; PyTorch runs eagerly without gradients). Everything
around it (resizing, windows, averaging) is numpy, so the three backends
differ only by the model's own float rounding.
"""

import keras
import numpy as np

from keras_segformer import memory
from keras_segformer.inference.processing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    _check_pair,
    _to_numpy,
    as_image_list,
    load_image,
    logits_to_mask,
    normalize_image,
    resize_image,
    resize_logits,
    resolve_size,
)


def slide_windows(height, width, crop_size, stride):
    """Windows of mmseg's ``slide_inference`` over an image.

    ``grids = max(size - crop + stride - 1, 0) // stride + 1`` per axis;
    window ``i`` starts at ``i * stride``, is clipped to the image, then
    shifted back so that it stays ``crop`` pixels long where the image
    allows.

    Args:
        height: int. Image height.
        width: int. Image width.
        crop_size: int or pair ``(h, w)``. Window size.
        stride: int or pair ``(h, w)``. Step between window starts.

    Returns:
        list of ``(y1, y2, x1, x2)``, row-major.
    """
    h_crop, w_crop = _check_pair(crop_size, "crop_size")
    h_stride, w_stride = _check_pair(stride, "stride")
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, height)
            x2 = min(w_idx * w_stride + w_crop, width)
            windows.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return windows


def _image_list(images):
    images, is_batch = as_image_list(images)
    if not images:
        raise ValueError("`images` is empty: pass at least one image.")
    return images, is_batch


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _processor_normalization(model):
    """``(mean, std)`` on the 0-1 scale of the transformers processor
    config a model was loaded with (``model.preprocessor_config``), or
    None. ``(x * rescale - mean) / std`` is rewritten for ``x / 255``."""
    config = getattr(model, "preprocessor_config", None)
    if not config:
        return None
    rescale = config.get("rescale_factor", 1 / 255)
    k = 255.0 * (rescale if config.get("do_rescale", True) else 1.0)
    if config.get("do_normalize", True):
        mean = config.get("image_mean", IMAGENET_MEAN)
        std = config.get("image_std", IMAGENET_STD)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return tuple(m / k for m in mean), tuple(s / k for s in std)


def _check_windows(mode, crop_size, stride):
    """``(crop_size, stride)`` as pairs for ``mode="slide"``; refused for
    ``"whole"``."""
    if mode not in ("whole", "slide"):
        raise ValueError(
            f'`mode` must be "whole" or "slide". Received: {mode!r}'
        )
    if mode == "whole":
        if crop_size is not None or stride is not None:
            raise ValueError(
                '`crop_size` and `stride` are only used with mode="slide".'
            )
        return None, None
    if crop_size is None:
        raise ValueError('`mode="slide"` needs a `crop_size`.')
    crop_size = _check_pair(crop_size, "crop_size")
    stride = _check_pair(crop_size if stride is None else stride, "stride")
    if stride[0] > crop_size[0] or stride[1] > crop_size[1]:
        raise ValueError(
            f"`stride` {stride} must not exceed `crop_size` {crop_size}: "
            "pixels between windows would get no prediction."
        )
    return crop_size, stride


def _check_scales(scales):
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise ValueError(
            f"`scales` must be positive floats. Received: {scales}"
        )
    return scales


class Segmenter:
    """Predict masks for images of any size, one image or many.

    Each image is loaded as RGB, resized for each scale (PIL bilinear,
    see ``resolve_size``), normalized, optionally mirrored, and run:

    - ``mode="whole"``: the whole view at once; its logits are resized
      bilinearly straight to the image size (as transformers'
      ``post_process_semantic_segmentation``).
    - ``mode="slide"``: mmseg's ``slide_inference``: ``crop_size`` windows
      every ``stride`` pixels (``slide_windows``), each window's logits
      resized to the window, summed and divided by the number of windows
      covering each pixel, then resized to the image size. With
      ``pad_to_crop`` a view smaller than the crop is first padded at the
      bottom/right with zeros after normalization (mmseg's batch padding
      value), so every window has the crop's shape and windows of all
      images batch together; mmseg runs the smaller window unpadded,
      which ``pad_to_crop=False`` reproduces.

    Flipped views have their logits flipped back. Views are averaged:
    ``merge="logits"`` averages logits; ``merge="probs"`` averages
    softmax probabilities (sigmoid for one class) as mmseg's ``aug_test``
    does and returns their log (logit for one class), so the argmax is
    mmseg's. A single view returns its logits unchanged.

    Inputs (views or windows) of the same shape are batched together,
    ``batch_size`` at a time, across the images of a call. Each new input
    shape compiles the model once (slow on JAX): in whole mode on images
    of many sizes, bound the number of shapes with a fixed ``size`` or a
    ``size_divisor``, or use slide mode (padded windows share one shape).

    Args:
        model: ``keras.Model`` (or a callable) mapping a float32 batch
            ``(B, h, w, 3)`` to channels-last logits ``(B, h', w', K)`` at
            any resolution (SegFormer gives ``h' = ceil(h / 4)``).
        mode: str. ``"whole"`` or ``"slide"``.
        size: None, int or pair. Resize before inference (``resolve_size``
            spec): None keeps the image size; ``(512, 512)`` is
            transformers' pipeline; ``512`` resizes the short side.
        crop_size: int or pair. Window size (``"slide"`` only).
        stride: int or pair. Window step (``"slide"`` only; defaults to
            ``crop_size``, no overlap). At most ``crop_size``.
        scales: sequence of floats. Test-time scales (multiply ``size``).
        flip: bool. Also run horizontally mirrored views.
        max_size: int or None. Long-side cap with an int ``size``.
        size_divisor: int or None. Round resized sides up to a multiple.
        pad_to_crop: bool. Pad views smaller than the crop (see above).
        merge: str. ``"logits"`` or ``"probs"``.
        batch_size: int. Model batch size, also the number of images
            prepared at once.
        normalize: bool or None. Apply the mean/std normalization before
            the model; None: yes unless the model's backbone normalizes
            itself (``include_preprocessing=True``), then raw 0-255
            floats are fed.
        mean: sequence of floats or None. Normalization mean (0-1 scale);
            None: the model's ``preprocessor_config`` (the processor it was
            loaded with by ``from_pretrained``), else ImageNet's.
        std: sequence of floats or None. Normalization std, as ``mean``.
        resample: str. PIL filter for resizing images.

    Raises:
        ValueError: an unknown ``mode`` or ``merge``, window sizes missing
            or given for the wrong mode, a ``stride`` above ``crop_size``,
            scales that are not positive, ``batch_size`` < 1, a crop
            smaller than the model's minimum input, or a model with NaN or
            infinite weights; when called, an image whose ``scales``
            need more memory than is available (``memory``).

    Example:
    >>> segmenter = Segmenter(model, mode="slide", crop_size=1024,
    ...                       stride=768)  # Cityscapes protocol
    >>> mask = segmenter("frankfurt.png")  # (H, W) int32
    >>> masks = segmenter([image_a, image_b])  # different sizes are fine
    """

    def __init__(
        self,
        model,
        mode="whole",
        size=None,
        crop_size=None,
        stride=None,
        scales=(1.0,),
        flip=False,
        max_size=None,
        size_divisor=None,
        pad_to_crop=True,
        merge="logits",
        batch_size=4,
        normalize=None,
        mean=None,
        std=None,
        resample="bilinear",
    ):
        crop_size, stride = _check_windows(mode, crop_size, stride)
        scales = _check_scales(scales)
        if merge not in ("logits", "probs"):
            raise ValueError(
                f'`merge` must be "logits" or "probs". Received: {merge!r}'
            )
        if int(batch_size) < 1:
            raise ValueError(
                f"`batch_size` must be >= 1. Received: {batch_size}"
            )
        if normalize is None:
            backbone = getattr(model, "backbone", None)
            normalize = not getattr(backbone, "include_preprocessing", False)
        if size is not None and not isinstance(size, (int, np.integer)):
            size = _check_pair(size, "size")
        _check_finite(model)
        self.model = model
        self.mode = mode
        self.size = size
        self.crop_size = crop_size
        self.stride = stride
        self.scales = scales
        self.flip = bool(flip)
        self.max_size = max_size
        self.size_divisor = size_divisor
        self.pad_to_crop = bool(pad_to_crop)
        self.merge = merge
        self.batch_size = int(batch_size)
        self.normalize = bool(normalize)
        loaded = _processor_normalization(model)
        if mean is None:
            mean = loaded[0] if loaded else IMAGENET_MEAN
        if std is None:
            std = loaded[1] if loaded else IMAGENET_STD
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.resample = resample
        backbone = getattr(model, "backbone", None)
        self.min_input_size = getattr(backbone, "min_input_size", None)
        m = self.min_input_size
        if mode == "slide" and m is not None and min(crop_size) < m:
            raise ValueError(
                f"`crop_size` {crop_size} is too small: the model needs at "
                f"least {m}x{m} pixels."
            )

    # -- model calls -------------------------------------------------------

    def _forward(self, batch):
        if hasattr(self.model, "predict_on_batch"):
            out = self.model.predict_on_batch(batch)
        else:
            out = self.model(batch)
        out = _to_numpy(out)
        if out.ndim != 4 or out.shape[0] != batch.shape[0]:
            raise ValueError(
                "The model must return logits of shape (batch, height, "
                f"width, classes). Input {batch.shape} gave {out.shape}."
            )
        return out.astype(np.float32, copy=False)

    def _run(self, inputs):
        """Model outputs for arrays of mixed shapes, batched by shape."""
        groups = {}
        for i, x in enumerate(inputs):
            groups.setdefault(x.shape, []).append(i)
        outputs = [None] * len(inputs)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                part = indices[start : start + self.batch_size]
                out = self._forward(np.stack([inputs[i] for i in part]))
                for i, logits in zip(part, out):
                    outputs[i] = logits
        return outputs

    # -- views -------------------------------------------------------------

    def _model_input(self, rgb):
        if self.normalize:
            return normalize_image(rgb, self.mean, self.std)
        return rgb.astype(np.float32)

    def _pad(self, x):
        h_crop, w_crop = self.crop_size
        pad_h, pad_w = max(h_crop - x.shape[0], 0), max(w_crop - x.shape[1], 0)
        if not (self.pad_to_crop and (pad_h or pad_w)):
            return x
        # Zero after normalization; for models normalizing themselves, the
        # raw value that normalizes to zero.
        value = 0.0 if self.normalize else np.asarray(self.mean) * 255.0
        out = np.empty(
            (x.shape[0] + pad_h, x.shape[1] + pad_w, x.shape[2]), np.float32
        )
        out[...] = value
        out[: x.shape[0], : x.shape[1]] = x
        return out

    def _check_view(self, size, scale, image_size):
        # Slide windows padded to the crop never go below the crop size.
        m = self.min_input_size
        if m is None or (self.mode == "slide" and self.pad_to_crop):
            return
        if min(size) < m:
            raise ValueError(
                f"scale {scale} (size={self.size}) resizes the "
                f"{image_size[0]}x{image_size[1]} image to "
                f"{size[0]}x{size[1]}: the model needs at least {m}x{m} "
                "pixels."
            )

    def _views(self, rgb):
        height, width = rgb.shape[:2]
        views = []
        for scale in self.scales:
            size = resolve_size(
                height,
                width,
                self.size,
                scale,
                self.max_size,
                self.size_divisor,
            )
            self._check_view(size, scale, (height, width))
            x = self._model_input(resize_image(rgb, size, self.resample))
            views.append((False, x))
            if self.flip:
                views.append((True, x[:, ::-1]))
        return views

    def _check_memory(self, rgb):
        """Refuse an image whose views cannot fit in memory
        (``memory.inference_bytes``) before any view is made."""
        dims = memory.model_dims(self.model)
        if dims is None:
            return
        h, w = rgb.shape[:2]
        need = memory.inference_bytes(
            dims,
            (h, w),
            [resolve_size(h, w, self.size, s, self.max_size,
                          self.size_divisor) for s in self.scales],
            flip=self.flip,
            crop_size=self.crop_size if self.mode == "slide" else None,
            batch_size=self.batch_size,
        )  # fmt: skip
        memory.check_fits(
            need,
            f"scales={self.scales} on a {h}x{w} image",
            'use smaller `scales` or `size`, or mode="slide" with a '
            "`crop_size` (sliding windows bound the memory)",
        )

    def _predict_chunk(self, rgbs):
        for rgb in rgbs:
            self._check_memory(rgb)
        views = []  # (image index, flipped, input)
        for i, rgb in enumerate(rgbs):
            views.extend((i, f, x) for f, x in self._views(rgb))
        tasks = []  # (view index, window or None, input)
        padded_shapes = []
        for v, (_, _, x) in enumerate(views):
            if self.mode == "whole":
                tasks.append((v, None, x))
                padded_shapes.append(None)
                continue
            x = self._pad(x)
            padded_shapes.append(x.shape[:2])
            for y1, y2, x1, x2 in slide_windows(
                x.shape[0], x.shape[1], self.crop_size, self.stride
            ):
                tasks.append((v, (y1, y2, x1, x2), x[y1:y2, x1:x2]))
        outputs = self._run([t[2] for t in tasks])

        num_classes = outputs[0].shape[-1]
        if self.mode == "whole":
            view_logits = [None] * len(views)
            for (v, _, _), out in zip(tasks, outputs):
                height, width = rgbs[views[v][0]].shape[:2]
                view_logits[v] = resize_logits(out, (height, width))
        else:
            sums = [
                np.zeros(shape + (num_classes,), np.float32)
                for shape in padded_shapes
            ]
            counts = [
                np.zeros(shape + (1,), np.float32) for shape in padded_shapes
            ]
            for (v, (y1, y2, x1, x2), _), out in zip(tasks, outputs):
                sums[v][y1:y2, x1:x2] += resize_logits(out, (y2 - y1, x2 - x1))
                counts[v][y1:y2, x1:x2] += 1
            view_logits = []
            for v, (i, _, x) in enumerate(views):
                logits = (sums[v] / counts[v])[: x.shape[0], : x.shape[1]]
                view_logits.append(resize_logits(logits, rgbs[i].shape[:2]))

        results = []
        for i in range(len(rgbs)):
            mine = [
                logits[:, ::-1] if views[v][1] else logits
                for v, logits in enumerate(view_logits)
                if views[v][0] == i
            ]
            results.append(self._merge(mine))
        return results

    def _merge(self, logits):
        if len(logits) == 1:
            return np.ascontiguousarray(logits[0])
        if self.merge == "logits":
            total = logits[0].copy()
            for x in logits[1:]:
                total += x
            return total / np.float32(len(logits))
        binary = logits[0].shape[-1] == 1
        probs = [
            1 / (1 + np.exp(-x)) if binary else _softmax(x) for x in logits
        ]
        total = probs[0]
        for p in probs[1:]:
            total = total + p
        mean = total / np.float32(len(probs))
        tiny = np.finfo(np.float32).tiny
        if binary:
            return np.log(np.maximum(mean, tiny)) - np.log(
                np.maximum(1 - mean, tiny)
            )
        return np.log(np.maximum(mean, tiny))

    # -- public ------------------------------------------------------------

    def _iter_logits(self, images):
        for start in range(0, len(images), self.batch_size):
            chunk = [
                load_image(x) for x in images[start : start + self.batch_size]
            ]
            yield from self._predict_chunk(chunk)

    def predict_logits(self, images):
        """Logits at each image's own size, after windows and augmentation.

        Args:
            images: one image (path, PIL image, uint8 array) or a list of
                images of any sizes (or a ``(N, H, W, 3)`` uint8 array).

        Returns:
            float32 array ``(H, W, classes)`` for one image, a list of them
            for a list.
        """
        images, is_batch = _image_list(images)
        out = list(self._iter_logits(images))
        return out if is_batch else out[0]

    def predict_mask(self, images):
        """Class-index masks at each image's own size.

        Args:
            images: as in ``predict_logits``.

        Returns:
            int32 array ``(H, W)`` for one image, a list of them for a list.
        """
        images, is_batch = _image_list(images)
        out = [logits_to_mask(x) for x in self._iter_logits(images)]
        return out if is_batch else out[0]

    __call__ = predict_mask


def _check_finite(model):
    """A model with NaN or infinite weights predicts garbage (all one
    class) without a word: refused, naming the weights."""
    from keras_segformer.training.nonfinite import nonfinite_weights

    if not isinstance(model, keras.Model):
        return  # (a callable of the user's: its weights are not ours to read)
    bad = nonfinite_weights(model)
    if bad:
        shown = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise ValueError(
            f"`model` has NaN or infinite weights ({len(bad)} "
            f"variable{'s' if len(bad) != 1 else ''}: {shown}); its "
            "predictions would mean nothing. Load a checkpoint saved before "
            "training diverged."
        )
