"""Colour masks, overlays with a legend, and prediction files on disk."""

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from keras_segformer.inference.palettes import generic_palette, get_palette
from keras_segformer.inference.processing import load_image
from keras_segformer.io_atomic import write_atomic


def _as_mask(mask):
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(
            f"`mask` must have shape (height, width). Received {mask.shape}."
        )
    if not np.issubdtype(mask.dtype, np.integer):
        raise TypeError(
            f"`mask` must hold integer class indices. Received {mask.dtype}."
        )
    return mask


def _palette_for(mask, palette):
    if palette is None:
        return generic_palette(max(int(mask.max(initial=0)) + 1, 1))
    return get_palette(palette)


def colorize(mask, palette=None, ignore_color=(0, 0, 0)):
    """Paint a class-index mask with one colour per class.

    Args:
        mask: integer array ``(height, width)``.
        palette: ``"ade20k"``, ``"cityscapes"``, an int, a sequence of
            ``(R, G, B)`` colours, or None (``generic_palette`` sized to
            the mask).
        ignore_color: ``(R, G, B)``. Colour of indices outside the palette
            (e.g. 255, the ignore label).

    Returns:
        uint8 array ``(height, width, 3)``.

    Example:
    >>> rgb = colorize(mask, "ade20k")
    """
    mask = _as_mask(mask)
    palette = _palette_for(mask, palette)
    valid = (mask >= 0) & (mask < len(palette))
    out = np.empty(mask.shape + (3,), dtype=np.uint8)
    out[...] = np.asarray(ignore_color, dtype=np.uint8)
    out[valid] = palette[mask[valid]]
    return out


def overlay(image, mask, palette=None, alpha=0.5):
    """Blend the colour mask over the image.

    Pixels whose index is outside the palette (e.g. 255) keep the image.

    Args:
        image: the image the mask belongs to (path, PIL image or uint8
            array, see ``load_image``), same height and width as ``mask``.
        mask: integer array ``(height, width)``.
        palette: as in ``colorize``.
        alpha: float in [0, 1]. Weight of the mask colours.

    Returns:
        uint8 array ``(height, width, 3)``:
        ``round((1 - alpha) * image + alpha * colour)``.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"`alpha` must lie in [0, 1]. Received: {alpha}")
    rgb = load_image(image)
    mask = _as_mask(mask)
    if rgb.shape[:2] != mask.shape:
        raise ValueError(
            f"Image size {rgb.shape[:2]} and mask size {mask.shape} differ; "
            "predict the mask at the image size (the default)."
        )
    palette = _palette_for(mask, palette)
    colour = colorize(mask, palette)
    blended = (1.0 - alpha) * rgb + alpha * colour.astype(np.float64)
    blended = np.round(blended).astype(np.uint8)
    valid = (mask >= 0) & (mask < len(palette))
    return np.where(valid[..., None], blended, rgb)


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font.
        return ImageFont.load_default()


def _name(class_names, index):
    if class_names is None:
        return str(index)
    if isinstance(class_names, dict):
        name = class_names.get(index, class_names.get(str(index)))
    else:
        name = class_names[index] if index < len(class_names) else None
    return f"{index} {name}" if name is not None else str(index)


def draw_legend(mask, palette=None, class_names=None, font_size=12):
    """Legend image of the classes present in a mask, largest area first.

    Args:
        mask: integer array ``(height, width)``.
        palette: as in ``colorize``.
        class_names: sequence of names, dict index -> name, or None.
        font_size: int. Text size in pixels.

    Returns:
        RGB ``PIL.Image.Image`` (white background), or None when no class
        of the palette is present.
    """
    mask = _as_mask(mask)
    palette = _palette_for(mask, palette)
    ids, counts = np.unique(mask, return_counts=True)
    keep = (ids >= 0) & (ids < len(palette))
    ids, counts = ids[keep], counts[keep]
    if not len(ids):
        return None
    ids = ids[np.argsort(-counts, kind="stable")]
    font = _font(font_size)
    labels = [_name(class_names, int(i)) for i in ids]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(probe.textbbox((0, 0), t, font=font)[2] for t in labels)
    pad, swatch = 4, font_size + 2
    row = swatch + pad
    width = pad * 3 + swatch + text_w
    height = pad + row * len(ids)
    legend = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for r, (index, text) in enumerate(zip(ids, labels)):
        top = pad + r * row
        colour = tuple(int(c) for c in palette[index])
        draw.rectangle(
            [pad, top, pad + swatch - 1, top + swatch - 1],
            fill=colour,
            outline=(0, 0, 0),
        )
        draw.text((pad * 2 + swatch, top), text, fill=(0, 0, 0), font=font)
    return legend


def overlay_with_legend(
    image, mask, palette=None, class_names=None, alpha=0.5, font_size=None
):
    """The ``overlay`` with a legend panel appended on its right.

    Args:
        image: the image (see ``overlay``).
        mask: integer array ``(height, width)``.
        palette: as in ``colorize``.
        class_names: sequence of names, dict index -> name, or None.
        alpha: float. Weight of the mask colours.
        font_size: int or None. None scales with the image (at least 12).

    Returns:
        RGB ``PIL.Image.Image`` of width ``W + legend width`` and height
        ``max(H, legend height)``; the overlay sits at the top left, the
        rest is white.
    """
    blended = overlay(image, mask, palette, alpha)
    mask = _as_mask(mask)
    height, width = mask.shape
    if font_size is None:
        font_size = max(12, min(height, width) // 40)
    legend = draw_legend(mask, palette, class_names, font_size)
    if legend is None:
        return Image.fromarray(blended)
    canvas = Image.new(
        "RGB",
        (width + legend.width, max(height, legend.height)),
        (255, 255, 255),
    )
    canvas.paste(Image.fromarray(blended), (0, 0))
    canvas.paste(legend, (width, 0))
    return canvas


# The PNG text entry that marks the files written here: the command line
# replaces such a file, and no other (``written_here``).
PNG_MARK = ("Software", "keras-segformer")


def save_png(image, path):
    """Write the PIL ``image`` to ``path`` as a PNG marked ``PNG_MARK``,
    atomically (``keras_segformer.io_atomic.write_atomic``: a link at
    ``path`` is replaced, never written through)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(*PNG_MARK)

    def write(temporary):
        with open(temporary, "xb") as f:
            image.save(f, format="PNG", pnginfo=info)

    write_atomic(path, write)


def written_here(path):
    """Whether ``path`` is a PNG file written by ``save_png`` (a mask or
    an overlay of this package); False for a link, a folder, any other
    file."""
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                return False
            return image.info.get(PNG_MARK[0]) == PNG_MARK[1]
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def save_mask(mask, path, palette=None):
    """Write a class-index mask as a lossless PNG.

    Indices up to 255 go into an 8-bit palette (``P``) PNG that viewers
    show in colour while its pixel values stay the class indices; larger
    indices into a 16-bit grayscale PNG. ``np.array(PIL.Image.open(path))``
    reads the mask back unchanged.
    Written atomically (``save_png``): a link at ``path`` is replaced, not
    written through.

    Args:
        mask: integer array ``(height, width)`` with values 0..65535.
        path: str or path-like. Output file (``.png``).
        palette: as in ``colorize``; colours stored in the 8-bit PNG.
    """
    mask = _as_mask(mask)
    low, high = int(mask.min(initial=0)), int(mask.max(initial=0))
    if low < 0 or high > 65535:
        raise ValueError(
            f"Mask values must lie in 0..65535 to be saved as PNG. Received "
            f"{low}..{high}."
        )
    if high <= 255:
        pixels = np.ascontiguousarray(mask, dtype=np.uint8)
        image = Image.frombytes("P", mask.shape[::-1], pixels.tobytes())
        colours = np.zeros((256, 3), dtype=np.uint8)
        palette = _palette_for(mask, palette)[:256]
        colours[: len(palette)] = palette
        image.putpalette(colours.reshape(-1).tolist())
    else:
        image = Image.fromarray(mask.astype(np.uint16))
    save_png(image, path)


def save_prediction(
    image,
    mask,
    out_dir,
    stem,
    palette=None,
    class_names=None,
    alpha=0.5,
    legend=True,
):
    """Write ``{stem}_mask.png`` (class indices) and ``{stem}_overlay.png``.

    Args:
        image: the input image (path, PIL image or uint8 array).
        mask: integer array ``(height, width)``, the predicted classes at
            the image size.
        out_dir: str or path-like. Created if missing.
        stem: str. File name prefix.
        palette: as in ``colorize``.
        class_names: sequence of names, dict index -> name (e.g. the
            model's ``id2label``), or None.
        alpha: float. Weight of the mask colours in the overlay.
        legend: bool. Append a legend of the classes present.

    Returns:
        ``(mask_path, overlay_path)`` as strings.

    Raises:
        ValueError: mask values outside 0..65535, or a palette that
            cannot be read (``get_palette``).

    Example:
    >>> mask = segmenter("street.jpg")
    >>> save_prediction("street.jpg", mask, "out", "street", "cityscapes",
    ...                 get_class_names("cityscapes"))
    """
    os.makedirs(out_dir, exist_ok=True)
    mask = _as_mask(mask)
    mask_path = os.path.join(os.fspath(out_dir), f"{stem}_mask.png")
    overlay_path = os.path.join(os.fspath(out_dir), f"{stem}_overlay.png")
    save_mask(mask, mask_path, palette)
    if legend:
        picture = overlay_with_legend(image, mask, palette, class_names, alpha)
    else:
        picture = Image.fromarray(overlay(image, mask, palette, alpha))
    save_png(picture, overlay_path)
    return mask_path, overlay_path
