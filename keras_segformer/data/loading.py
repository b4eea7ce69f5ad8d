"""Find, pair and decode image / mask files (Python + PIL, no TensorFlow).

Decoding goes through PIL (``keras_segformer.decode``, shared with
inference) rather than ``tf.io.decode_*``: palette ("P" mode) masks must
be read as their indices (TensorFlow expands the palette to RGB), 16-bit
masks must keep their ids, EXIF orientation must be applied as inference
does, and every error must name the file that caused it (TensorFlow's
decode errors do not).
"""

import contextlib
import os
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from keras_segformer import decode
from keras_segformer.decode import IMAGE_EXTENSIONS
from keras_segformer.errors import DataError

IGNORE_INDEX = 255

# Sets of this many pairs or more show a progress bar while they are
# checked (``validate_pairs``).
PROGRESS_MIN_FILES = 500
_EXIF_ORIENTATION = 0x0112

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
            label: integer array (or floats of whole values). Raw ids of
                one mask.
            path: str. File name used in error messages.

        Raises:
            TypeError: float labels with a fractional part (a cast would
                truncate them), or values that are not numbers.
            ValueError: ids out of range (named).
        """
        label = np.asarray(label)
        if label.dtype.kind not in "iub":
            if label.dtype.kind != "f":
                raise TypeError(
                    f"Mask file {path} holds {label.dtype} values: masks "
                    "hold integer class ids."
                )
            fractional = label != np.floor(label)  # NaN and inf included
            if fractional.any():
                value = label[fractional].flat[0].item()
                raise TypeError(
                    f"Mask file {path} holds float labels with a fractional "
                    f"part (e.g. {value!r}): labels are class ids, and a "
                    "cast would truncate them. Save masks "
                    "as 8- or 16-bit integer images."
                )
        label = label.astype(np.int32)
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


def validate_pairs(images, masks, label_transform, *, progress=None):
    """Check every pair before any work is spent on it.

    Read per pair: the image header (size, mode; the pixels are not
    decoded) and the mask's pixel values (masks are small single-channel
    files). Checked: each file is readable, the image mode can be made
    RGB, the mask is single-channel or palette, image and mask have the
    same upright size, and every id (after ``label_transform``'s
    remapping) is below its ``num_classes`` or 255. Over the whole set: at
    least one pixel is labelled (not 255), else nothing would be learned
    or scored; masks that hold only 0 and 255 get a warning (255 is the
    ignore index, so their foreground would be ignored).

    Args:
        images: list of str. Image files.
        masks: list of str. Mask files, paired by position.
        label_transform: ``LabelTransform``.
        progress: bool or None. Show a progress bar (on stderr); None:
            for sets of ``PROGRESS_MIN_FILES`` pairs or more.

    Raises:
        DataError: a file that fails a check (the message names it), or a
            set without any labelled pixel.

    Example:
    >>> validate_pairs(["a.jpg"], ["a.png"], LabelTransform(num_classes=3))
    """
    if progress is None:
        progress = len(images) >= PROGRESS_MIN_FILES
    bar = None
    if progress:
        import keras

        # On stderr: stdout may carry a result (evaluate --json).
        print(f"checking {len(images)} image/mask pairs", file=sys.stderr)
        bar = keras.utils.Progbar(len(images), unit_name="pair")
    raw_values = set()
    labelled = 0
    for i, (image_path, mask_path) in enumerate(zip(images, masks)):
        try:
            height, width = _image_header(image_path)
            size, values, counts = _mask_values(mask_path)
            mapped = label_transform(values, mask_path)
        except ValueError as e:
            raise DataError(str(e)) from None
        if (height, width) != size:
            raise DataError(
                f"Image file {image_path} is {height}x{width} (HxW) but its "
                f"mask {mask_path} is {size[0]}x{size[1]}."
            )
        raw_values.update(values.tolist())
        labelled += int(counts[mapped != IGNORE_INDEX].sum())
        if bar is not None and (i % 50 == 49 or i == len(images) - 1):
            with contextlib.redirect_stdout(sys.stderr):
                bar.update(i + 1)
    if not labelled:
        options = (
            f"reduce_labels={label_transform.reduce_labels}, label_map="
            f"{'set' if label_transform.label_map else None}"
        )
        raise DataError(
            f"Every pixel of the {len(masks)} masks (e.g. {masks[0]}) is "
            f"{IGNORE_INDEX} after {options}: "
            f"{IGNORE_INDEX} is the ignore index, so there is nothing to "
            "learn or score."
        )
    mapped_255 = label_transform.label_map and IGNORE_INDEX in (
        label_transform.label_map
    )
    if raw_values == {0, IGNORE_INDEX} and not mapped_255:
        warnings.warn(
            f"The {len(masks)} masks (e.g. {masks[0]}) hold only 0 and "
            f"{IGNORE_INDEX}, and {IGNORE_INDEX} is the ignore index: their "
            f"{IGNORE_INDEX} pixels are not learned or scored. If "
            f"{IGNORE_INDEX} marks a class (0/{IGNORE_INDEX} binary masks), "
            "save the masks divided by 255 (ids 0 and 1) or pass "
            "label_map={0: 0, 255: 1}.",
            UserWarning,
            stacklevel=3,
        )


def _orientation(image):
    """The EXIF orientation tag of an open file, without decoding it (PIL
    decodes a PNG to look for an eXIf chunk after the pixels: such a late
    chunk is not seen here, ``load_pair`` still checks the sizes)."""
    if image.format == "PNG" and "exif" not in image.info:
        return None
    return image.getexif().get(_EXIF_ORIENTATION)


def _image_header(path):
    """``(height, width)`` of an image file as decoded (upright), from its
    header; modes no decoder path can make RGB are refused."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            mode = image.mode
            if _orientation(image) in (5, 6, 7, 8):
                width, height = height, width
    except Exception as error:
        raise ValueError(f"Could not read image file {path}: {error}") from None
    if mode == "F":
        raise ValueError(
            f"Image file {path} is a floating-point (mode F) image: convert "
            "it to 8 or 16 bits first."
        )
    return height, width


def _mask_values(path):
    """``((height, width), values, counts)`` of a mask file: its upright
    size and the ids it holds with their pixel counts."""
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            width, height = image.size
            if image.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):
                width, height = height, width
            if mode in ("L", "P"):
                # A C loop over the pixels: no array of them is made.
                counts = np.asarray(image.histogram()[:256], np.int64)
                values = np.flatnonzero(counts)
                counts = counts[values]
            elif mode in decode.MASK_MODES:
                pixels = np.asarray(image)
                values, counts = np.unique(pixels, return_counts=True)
            else:
                decode.pil_to_mask(image, f"Mask file {path}")  # refused
    except ValueError as error:
        if str(path) in str(error):
            raise
        raise ValueError(f"Could not read mask file {path}: {error}") from None
    except Exception as error:
        raise ValueError(f"Could not read mask file {path}: {error}") from None
    return (height, width), values.astype(np.int64), counts


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
    are ignored with a warning naming the first; an image without a mask is
    an error.

    Args:
        image_dir: str or PathLike. Folder of images (searched recursively).
        mask_dir: str or PathLike. Folder of masks (searched recursively).

    Returns:
        ``(image_paths, mask_paths)``, two lists of str sorted by name.
    """
    for name, directory in (("image", image_dir), ("mask", mask_dir)):
        if Path(directory).is_file():
            raise ValueError(
                f"The {name} folder {directory} is a file, not a folder."
            )
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
    extra = [masks[k] for k in masks if k not in images]
    if extra:
        # Ignored, as documented, but said: a set that shrank without a
        # word (images misnamed or not copied) looks like a whole one.
        warnings.warn(
            f"{len(extra)} mask(s) in {mask_dir} have no image in "
            f"{image_dir} and are not used, e.g. {extra[0]}.",
            stacklevel=2,
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
