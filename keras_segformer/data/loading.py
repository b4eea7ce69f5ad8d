"""Find, pair and decode image / mask files (Python + PIL, no TensorFlow).

Decoding goes through PIL (``keras_segformer.decode``, shared with
inference) rather than ``tf.io.decode_*``: palette ("P" mode) masks must
be read as their indices (TensorFlow expands the palette to RGB), 16-bit
masks must keep their ids, EXIF orientation must be applied as inference
does, and every error must name the file that caused it (TensorFlow's
decode errors do not).
"""

import os
from pathlib import Path

import numpy as np

from keras_segformer import decode
from keras_segformer.decode import IMAGE_EXTENSIONS

IGNORE_INDEX = 255

# Lossy formats would invent ids at region borders, so masks are lossless.
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")


def read_image(path):
    """Decode an image file to a ``uint8`` RGB array of shape ``(H, W, 3)``.

    ``keras_segformer.decode.decode_image``, the decoder inference uses
    too: EXIF orientation applied, 16-bit grayscale reduced to 8 bits
    (``>> 8``), transparency composited onto white.

    Args:
        path: str or PathLike. Image file.
    """
    return decode.decode_image(path)


def read_mask(path):
    """Decode a single-channel class-id mask to an ``int32`` ``(H, W)`` array.

    Accepted: 8/16-bit grayscale PNGs whose values are class ids (16-bit
    values are kept, not scaled) and palette ("P" mode) PNGs whose
    palette indices are the class ids. EXIF orientation is applied, as for
    images (``keras_segformer.decode.decode_mask``).

    Args:
        path: str or PathLike. Mask file.
    """
    return decode.decode_mask(path)


def image_size(path, kind="image"):
    """Return ``(height, width, mode)`` of an image file from its header.

    The size is the decoded (EXIF-upright) one.

    Args:
        path: str or PathLike. Image or mask file.
        kind: str. ``"image"`` or ``"mask"``, used in error messages.
    """
    return decode.upright_size(path, kind)


class LabelTransform:
    """Remap raw mask ids to training ids and check their range.

    Applied in mmseg's order: ``label_map`` first, then ``reduce_labels``.

    Args:
        reduce_labels: bool. ADE20K convention (mmseg ``reduce_zero_label``):
            0 -> 255, k -> k - 1, 255 stays 255.
        label_map: dict or None. Raw id -> training id. Ids that are not
            keys become 255 (ignored): a partial map never leaves raw ids
            that would be mistaken for training ids. 255 is ignored too
            unless it is a key.
        num_classes: int or None. When given, every id other than 255 after
            remapping must be ``< num_classes``.
    """

    def __init__(self, reduce_labels=False, label_map=None, num_classes=None):
        self.reduce_labels = bool(reduce_labels)
        self.label_map = _check_label_map(label_map)
        if num_classes is not None:
            if int(num_classes) != num_classes or num_classes < 1:
                raise ValueError(
                    "`num_classes` must be a positive int or None. "
                    f"Received: {num_classes!r}"
                )
            num_classes = int(num_classes)
        self.num_classes = num_classes

    def __call__(self, label, path="<array>"):
        """Return the remapped ``int32`` label of one mask.

        Args:
            label: integer array. Raw ids of one mask.
            path: str. File name used in error messages.
        """
        label = np.asarray(label, dtype=np.int32)
        if label.size and label.min() < 0:
            raise ValueError(
                f"Mask file {path} has negative label values "
                f"(min {label.min()})."
            )
        if self.label_map is not None:
            size = max(int(label.max(initial=0)), max(self.label_map)) + 1
            lut = np.full(size, IGNORE_INDEX, dtype=np.int32)
            for old, new in self.label_map.items():
                lut[old] = new
            label = lut[label]
        if self.reduce_labels:
            ignored = (label == 0) | (label == IGNORE_INDEX)
            label = np.where(ignored, IGNORE_INDEX, label - 1)
            label = label.astype(np.int32)
        if label.size and label.max() > IGNORE_INDEX:
            values = np.unique(label[label > IGNORE_INDEX])
            raise ValueError(
                f"Mask file {path} has label values {values[:10].tolist()} "
                f"> {IGNORE_INDEX} (after reduce_labels, label_map): 16-bit "
                "masks hold class ids as they are (they are not scaled); "
                "map larger ids with `label_map`."
            )
        if self.num_classes is not None:
            bad = (label >= self.num_classes) & (label != IGNORE_INDEX)
            if bad.any():
                values = np.unique(label[bad])
                raise ValueError(
                    f"Mask file {path} has label values {values[:10].tolist()}"
                    f" >= num_classes={self.num_classes} (after "
                    f"reduce_labels={self.reduce_labels}, label_map="
                    f"{'set' if self.label_map else None}); only 0.."
                    f"{self.num_classes - 1} and {IGNORE_INDEX} (ignore) "
                    "are allowed."
                )
        return label


def _check_label_map(label_map):
    if label_map is None:
        return None
    if not hasattr(label_map, "items"):
        raise TypeError(
            "`label_map` must be a dict {raw id: training id}. "
            f"Received: {type(label_map).__name__}"
        )
    out = {}
    for old, new in label_map.items():
        if int(old) != old or int(new) != new or old < 0 or new < 0:
            raise ValueError(
                "`label_map` keys and values must be non-negative ints. "
                f"Received the entry {old!r}: {new!r}"
            )
        out[int(old)] = int(new)
    if not out:
        raise ValueError("`label_map` is empty.")
    return out


def load_pair(image_path, mask_path, label_transform):
    """Read one image and its mask, remap the labels and check the sizes.

    Args:
        image_path: str. Image file.
        mask_path: str. Mask file.
        label_transform: ``LabelTransform``.

    Returns:
        ``(image uint8 (H, W, 3), label int32 (H, W))``.
    """
    image = read_image(image_path)
    label = label_transform(read_mask(mask_path), mask_path)
    if image.shape[:2] != label.shape:
        raise ValueError(
            f"Image file {image_path} is {image.shape[0]}x{image.shape[1]} "
            f"(HxW) but its mask {mask_path} is "
            f"{label.shape[0]}x{label.shape[1]}."
        )
    return image, label


def validate_pairs(images, masks, label_transform):
    """Check every pair up front: readable, same size, valid mask, ids.

    Image headers only are read; masks are decoded fully (their ids are
    checked against ``label_transform.num_classes``).

    Args:
        images: list of str. Image files.
        masks: list of str. Mask files, paired by position.
        label_transform: ``LabelTransform``.
    """
    for image_path, mask_path in zip(images, masks):
        height, width, _ = image_size(image_path, "image")
        label = label_transform(read_mask(mask_path), mask_path)
        if (height, width) != label.shape:
            raise ValueError(
                f"Image file {image_path} is {height}x{width} (HxW) but its "
                f"mask {mask_path} is {label.shape[0]}x{label.shape[1]}."
            )


def _scan(directory, extensions):
    """Map ``relative path without suffix`` -> file for a folder tree."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(extensions):
                continue
            path = Path(dirpath) / name
            key = path.relative_to(directory).with_suffix("").as_posix()
            if key in found:
                raise ValueError(
                    f"Two files share the name {key!r} in {directory}: "
                    f"{found[key]} and {path}. Pairing is by name, so each "
                    "name must be unique."
                )
            found[key] = str(path)
    return found


def pair_folders(image_dir, mask_dir):
    """Pair images and masks in two folder trees by relative name (no suffix).

    ``images/a/x.jpg`` pairs with ``masks/a/x.png``. Masks without an image
    are ignored; an image without a mask is an error.

    Args:
        image_dir: str or PathLike. Folder of images (searched recursively).
        mask_dir: str or PathLike. Folder of masks (searched recursively).

    Returns:
        ``(image_paths, mask_paths)``, two lists of str sorted by name.
    """
    for name, directory in (("image", image_dir), ("mask", mask_dir)):
        if not Path(directory).is_dir():
            raise ValueError(f"The {name} folder {directory} does not exist.")
    images = _scan(Path(image_dir), IMAGE_EXTENSIONS)
    if not images:
        raise ValueError(
            f"No images found in {image_dir} (extensions {IMAGE_EXTENSIONS})."
        )
    masks = _scan(Path(mask_dir), MASK_EXTENSIONS)
    missing = [images[k] for k in images if k not in masks]
    if missing:
        raise ValueError(
            f"Image file {missing[0]} has no mask in {mask_dir} (looked for "
            f"the same name with one of {MASK_EXTENSIONS}); "
            f"{len(missing)} image(s) without a mask in total."
        )
    keys = sorted(images)
    return [images[k] for k in keys], [masks[k] for k in keys]


def resolve_pairs(images, masks):
    """Turn folders or path lists into two checked lists of file paths.

    Args:
        images: folder (str or PathLike) or sequence of image files.
        masks: folder (str or PathLike) or sequence of mask files, paired
            with ``images`` by position.

    Returns:
        ``(image_paths, mask_paths)``, two equally long lists of str.
    """
    as_folder = [isinstance(x, (str, os.PathLike)) for x in (images, masks)]
    if all(as_folder):
        return pair_folders(images, masks)
    if any(as_folder):
        raise TypeError(
            "`images` and `masks` must both be folders or both be lists of "
            f"files. Received {type(images).__name__} and "
            f"{type(masks).__name__}."
        )
    images = [os.fspath(p) for p in images]
    masks = [os.fspath(p) for p in masks]
    if not images:
        raise ValueError("Empty dataset: `images` is an empty list.")
    if len(images) != len(masks):
        raise ValueError(
            f"`images` has {len(images)} files but `masks` has {len(masks)}."
        )
    for image_path, mask_path in zip(images, masks):
        if not os.path.isfile(image_path):
            raise ValueError(f"Image file {image_path} does not exist.")
        if not os.path.isfile(mask_path):
            raise ValueError(
                f"Mask file {mask_path} (for image {image_path}) does not "
                "exist."
            )
    return images, masks
