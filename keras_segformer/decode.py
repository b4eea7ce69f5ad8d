"""Decode image and mask files: the one decoder of training and inference.

The ``tf.data`` pipeline (through ``keras_segformer.data.loading``) and
inference (``keras_segformer.inference.load_image`` / ``load_label``)
read files here, so a file gives the same pixels in ``fit``, ``evaluate``
and ``predict``. PIL and numpy only (no TensorFlow import):

- EXIF orientation is applied (``ImageOps.exif_transpose``), to images and
  masks alike, as transformers' ``load_image`` and OpenCV (mmseg) do: a
  photo is used the way viewers show it, and a mask drawn on the shown
  photo stays aligned with it.
- 16-bit grayscale images (PIL modes ``I;16*``, and ``I``, taken as
  0-65535) are reduced to 8 bits by dropping the low byte (``>> 8``)
  before the conversion to RGB; PIL's own conversion clips them to 255.
  16-bit masks hold class ids: they are never scaled.
- Transparency is composited onto white, as transformers'
  ``convert_to_rgb`` does.
"""

import os

import numpy as np
from PIL import Image, ImageOps

# File names the data pipeline and inference take for images in a folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# PIL modes whose pixels are class ids as they are. "P" gives the palette
# indices, which is how palette-encoded masks (VOC, ADE's renders) store ids.
MASK_MODES = ("L", "P", "1", "I", "I;16", "I;16B", "I;16L", "I;16N")
_WIDE_GRAY = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_EXIF_ORIENTATION = 0x0112


def _open(path, kind):
    """The upright, fully loaded PIL image of a file."""
    path = os.fspath(path)
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
            return image
    except Exception as error:
        raise ValueError(
            f"Could not read {kind} file {path}: {error}"
        ) from error


def pil_to_rgb(image, name="image"):
    """A PIL image as a uint8 RGB array ``(height, width, 3)``.

    Args:
        image: ``PIL.Image.Image``.
        name: str. What to call the image in error messages.
    """
    if image.mode in _WIDE_GRAY:
        wide = np.asarray(image).astype(np.int64)
        if wide.size and (wide.min() < 0 or wide.max() > 65535):
            raise ValueError(
                f"{name} is a {image.mode} image with values "
                f"{wide.min()}..{wide.max()}: only 8- and 16-bit images are "
                "supported."
            )
        gray = (wide >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode == "F":
        raise ValueError(
            f"{name} is a floating-point (mode F) image: convert it to 8 or "
            "16 bits first."
        )
    # Transparency is composited onto white, as transformers'
    # `convert_to_rgb` does; other modes use PIL's own conversion.
    has_alpha = (
        "A" in image.getbands() or image.info.get("transparency") is not None
    )
    if has_alpha:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image).convert("RGB")
    elif image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)


def pil_to_mask(image, name="mask"):
    """A single-channel PIL image as an int32 array of class ids.

    Args:
        image: ``PIL.Image.Image`` of a mode in ``MASK_MODES``.
        name: str. What to call the mask in error messages.
    """
    if image.mode not in MASK_MODES:
        raise ValueError(
            f"{name} has PIL mode {image.mode!r}: a mask must be a "
            "single-channel image of class ids (mode 'L' or 'I;16') or a "
            "palette image (mode 'P') whose indices are the class ids. "
            "Convert color-coded masks to class ids first."
        )
    return np.asarray(image).astype(np.int32)


def decode_image(path):
    """Decode an image file to an upright uint8 RGB array ``(H, W, 3)``.

    Args:
        path: str or PathLike. Image file.
    """
    return pil_to_rgb(_open(path, "image"), f"Image file {os.fspath(path)}")


def decode_mask(path):
    """Decode a mask file to an upright int32 array of class ids ``(H, W)``.

    Args:
        path: str or PathLike. Mask file (single-channel or palette).
    """
    return pil_to_mask(_open(path, "mask"), f"Mask file {os.fspath(path)}")


def upright_size(path, kind="image"):
    """``(height, width, mode)`` of a file as decoded, from its header.

    Args:
        path: str or PathLike. Image or mask file.
        kind: str. ``"image"`` or ``"mask"``, used in error messages.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            # Orientations 5-8 swap width and height.
            if image.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):
                width, height = height, width
            return height, width, image.mode
    except Exception as error:
        raise ValueError(
            f"Could not read {kind} file {os.fspath(path)}: {error}"
        ) from error
