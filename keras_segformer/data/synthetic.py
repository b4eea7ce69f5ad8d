"""A procedurally generated segmentation dataset (numpy + PIL, no download).

Textured shapes on a textured background. Each foreground class has its
own colour *and* texture (dots, stripes, checker, rings ...), so the class
of a pixel can be told from its neighbourhood alone, whatever the shape
around it; shapes overlap and are cut by the image border. Class 0 is the
background: desaturated, smoothly varying noise. A tiny SegFormer learns it
in minutes on a CPU, which makes it a smoke test of the whole training path.

Layout written by ``generate`` (the same as ``readers.folder`` expects)::

    out_dir/images/train/train_00000.png   RGB
    out_dir/masks/train/train_00000.png    palette PNG, indices = class ids
    out_dir/images/val/...  out_dir/masks/val/...
    out_dir/classes.json                   class names and generation args
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from keras_segformer.classes import SHAPES_CLASSES, SHAPES_PALETTE
from keras_segformer.data.readers import SegmentationFiles, folder
from keras_segformer.io_atomic import write_atomic, write_text

# Texture and default shape of classes 1, 2, ... (their names and colours:
# keras_segformer.classes, where predict finds them too).
_DRAWING = (
    ("dots", "circle"),
    ("hstripes", "rectangle"),
    ("checker", "triangle"),
    ("diagonal", "band"),
    ("rings", "ellipse"),
    ("speckle", "blob"),
    ("vstripes", "rectangle"),
    ("grid", "circle"),
    ("flat", "triangle"),
)
# name, RGB colour, texture, default shape. Row k is class k + 1.
CLASSES = tuple(
    (name, colour, *drawing)
    for name, colour, drawing in zip(
        SHAPES_CLASSES[1:], SHAPES_PALETTE[1:], _DRAWING, strict=True
    )
)
MAX_CLASSES = len(CLASSES) + 1
_SPLIT_IDS = {"train": 0, "val": 1}


def class_names(num_classes=6):
    """Names of the first ``num_classes`` classes (``"background"`` first).

    Args:
        num_classes: int. 2 .. ``MAX_CLASSES``.
    """
    _check_num_classes(num_classes)
    return ("background",) + tuple(c[0] for c in CLASSES[: num_classes - 1])


def palette(num_classes=6):
    """RGB colour of each class, ``(num_classes, 3)`` uint8, for display.

    Args:
        num_classes: int. 2 .. ``MAX_CLASSES``.
    """
    _check_num_classes(num_classes)
    colours = [(0, 0, 0)] + [c[1] for c in CLASSES[: num_classes - 1]]
    return np.asarray(colours, dtype=np.uint8)


def _check_num_classes(num_classes):
    if int(num_classes) != num_classes or not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(
            f"`num_classes` must be an int from 2 to {MAX_CLASSES}. "
            f"Received: {num_classes!r}"
        )


def _smooth_noise(rng, height, width, cells):
    """Noise in [0, 1] varying over about ``cells`` blobs per side."""
    small = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray(small, mode="F").resize(
        (width, height), Image.BICUBIC
    )
    return np.clip(np.asarray(img), 0.0, 1.0)


def _texture(kind, rng, yy, xx, center):
    """Pattern in [0, 1]; random phase, period and slight rotation."""
    angle = rng.uniform(-0.25, 0.25)
    cos, sin = np.cos(angle), np.sin(angle)
    u = xx * cos + yy * sin + rng.uniform(0, 20)
    v = -xx * sin + yy * cos + rng.uniform(0, 20)
    period = rng.uniform(5.0, 8.0)
    if kind == "dots":
        du = np.mod(u, period) - period / 2
        dv = np.mod(v, period) - period / 2
        return (du**2 + dv**2 < (0.3 * period) ** 2).astype(np.float32)
    if kind == "hstripes":
        return 0.5 + 0.5 * np.sin(2 * np.pi * v / period)
    if kind == "vstripes":
        return 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
    if kind == "checker":
        return (np.floor(u / period) + np.floor(v / period)) % 2
    if kind == "diagonal":
        return 0.5 + 0.5 * np.sin(2 * np.pi * (u + v) / (period * 1.4))
    if kind == "rings":
        r = np.hypot(yy - center[0], xx - center[1])
        return 0.5 + 0.5 * np.sin(2 * np.pi * r / period)
    if kind == "speckle":
        return rng.random(yy.shape).astype(np.float32)
    if kind == "grid":
        thick = 0.25 * period
        lines = (np.mod(u, period) < thick) | (np.mod(v, period) < thick)
        return 1.0 - lines.astype(np.float32)
    if kind == "flat":
        return np.full(yy.shape, 0.7, np.float32)
    raise ValueError(f"Unknown texture {kind!r}")


def _polygon_mask(points, height, width):
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([(x, y) for y, x in points], fill=1)
    return np.asarray(canvas, dtype=bool)


def _shape(kind, rng, yy, xx, size):
    """Boolean mask of one random shape and its centre."""
    height, width = size
    side = min(height, width)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    angle = rng.uniform(0, np.pi)
    if kind == "circle":
        r = rng.uniform(0.12, 0.28) * side
        return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2, (cy, cx)
    if kind == "ellipse":
        a, b = rng.uniform(0.12, 0.32, 2) * side
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        return (u / a) ** 2 + (v / b) ** 2 < 1, (cy, cx)
    if kind == "band":
        half = rng.uniform(0.09, 0.16) * side
        d = (xx - cx) * np.sin(angle) - (yy - cy) * np.cos(angle)
        return np.abs(d) < half, (cy, cx)
    if kind == "rectangle":
        half = rng.uniform(0.1, 0.25, 2) * side
        corners = np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]]) * half
    elif kind == "triangle":
        r = rng.uniform(0.2, 0.42) * side
        t = angle + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.3, 0.3, 3)
        corners = np.stack([np.sin(t), np.cos(t)], axis=1) * r
        angle = 0.0
    elif kind == "blob":
        n = rng.integers(6, 10)
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(0.12, 0.32) * side * rng.uniform(0.6, 1.0, n)
        corners = np.stack([np.sin(t) * r, np.cos(t) * r], axis=1)
        angle = 0.0
    else:
        raise ValueError(f"Unknown shape {kind!r}")
    rot = np.array(
        [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    )
    points = corners @ rot.T + np.array([cy, cx])
    return _polygon_mask(points, height, width), (cy, cx)


def render(rng, size=(128, 128), num_classes=6, max_objects=6):
    """Draw one image and its mask.

    Args:
        rng: ``numpy.random.Generator``.
        size: ``(height, width)``.
        num_classes: int. 2 .. ``MAX_CLASSES``; class 0 is the background.
        max_objects: int. Up to this many shapes (at least 3, or all if
            fewer).

    Returns:
        ``(image uint8 (H, W, 3), mask uint8 (H, W))``.
    """
    _check_num_classes(num_classes)
    height, width = int(size[0]), int(size[1])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    # Background: a desaturated tint with low-frequency shading and grain.
    gray = rng.uniform(60, 170)
    tint = rng.uniform(-15, 15, 3)
    shade = _smooth_noise(rng, height, width, int(rng.integers(3, 6)))
    image = (gray + tint) * (0.75 + 0.5 * shade[..., None])
    mask = np.zeros((height, width), np.uint8)

    max_objects = max(1, int(max_objects))
    for _ in range(int(rng.integers(min(3, max_objects), max_objects + 1))):
        label = int(rng.integers(1, num_classes))
        _, colour, texture, shape = CLASSES[label - 1]
        if rng.random() < 0.3:  # other shapes too: texture is the cue
            shape = ("circle", "ellipse", "rectangle", "triangle", "blob")[
                rng.integers(5)
            ]
        region, center = _shape(shape, rng, yy, xx, (height, width))
        colour = np.asarray(colour, np.float32) * rng.uniform(0.85, 1.1)
        colour = colour + rng.uniform(-12, 12, 3)
        pattern = _texture(texture, rng, yy, xx, center)
        pixels = colour * (0.6 + 0.4 * pattern[..., None])
        image = np.where(region[..., None], pixels, image)
        mask[region] = label

    image = image + rng.normal(0, 5, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def generate(
    out_dir,
    num_train=200,
    num_val=50,
    size=(128, 128),
    num_classes=6,
    seed=0,
    image_format="png",
):
    """Write the synthetic dataset to ``out_dir`` (deterministic by seed).

    Image ``i`` of a split is drawn from ``default_rng([seed, split, i])``,
    so the same arguments always give the same files and the train and
    val images are independent.

    Args:
        out_dir: str or PathLike. Output folder (created).
        num_train: int. Training images.
        num_val: int. Validation images.
        size: ``(height, width)`` of every image.
        num_classes: int. Classes including the background, 2 ..
            ``MAX_CLASSES``.
        seed: int. Random seed.
        image_format: str. ``"png"`` or ``"jpg"`` (quality 95). Masks are
            always palette PNGs.

    Returns:
        dict ``{"train": SegmentationFiles, "val": SegmentationFiles}``
        (a split with no images is left out).

    Example:
    >>> files = generate("/tmp/shapes", 400, 50, (128, 128), num_classes=6)
    >>> ds = files["train"].make_dataset(batch_size=8, training=True,
    ...     crop_size=128, base_size=(256, 128))
    """
    _check_num_classes(num_classes)
    if image_format not in ("png", "jpg"):
        raise ValueError(
            f"`image_format` must be 'png' or 'jpg'. Received: {image_format!r}"
        )
    out_dir = Path(out_dir)
    flat_palette = palette(num_classes).reshape(-1).tolist()
    for split, count in (("train", num_train), ("val", num_val)):
        image_dir = out_dir / "images" / split
        mask_dir = out_dir / "masks" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        # Files of an earlier, larger run would otherwise join this split.
        for old in (
            *image_dir.glob(f"{split}_*"),
            *mask_dir.glob(f"{split}_*"),
        ):
            old.unlink()
        for i in range(int(count)):
            rng = np.random.default_rng([seed, _SPLIT_IDS[split], i])
            image, mask = render(rng, size, num_classes)
            name = f"{split}_{i:05d}"
            if image_format == "jpg":
                _save(Image.fromarray(image), image_dir / f"{name}.jpg")
            else:
                _save(Image.fromarray(image), image_dir / f"{name}.png")
            mask_img = Image.fromarray(mask, mode="P")
            mask_img.putpalette(flat_palette)
            _save(mask_img, mask_dir / f"{name}.png")
    meta = {
        "class_names": list(class_names(num_classes)),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "size": [int(size[0]), int(size[1])],
        "seed": int(seed),
        "image_format": image_format,
    }
    write_text(out_dir / "classes.json", json.dumps(meta, indent=2))
    counts = {"train": num_train, "val": num_val}
    return {split: load(out_dir, split) for split in counts if counts[split]}


def load(out_dir, split="train"):
    """Files of one split of a dataset written by ``generate``.

    Args:
        out_dir: str or PathLike. Folder given to ``generate``.
        split: str. ``"train"`` or ``"val"``.
    """
    if split not in _SPLIT_IDS:
        raise ValueError(
            f"`split` must be 'train' or 'val'. Received: {split!r}"
        )
    out_dir = Path(out_dir)
    meta_file = out_dir / "classes.json"
    if not meta_file.is_file():
        raise ValueError(
            f"{meta_file} not found: {out_dir} was not written by "
            "keras_segformer.data.synthetic.generate."
        )
    names = json.loads(meta_file.read_text())["class_names"]
    files = folder(out_dir / "images" / split, out_dir / "masks" / split)
    return SegmentationFiles(files.images, files.masks, tuple(names))


def _save(image, path):
    """Write the PIL ``image`` to ``path`` atomically (a link there is
    replaced, not written through); JPEG at quality 95."""
    suffix = path.suffix.lower()
    options = {"quality": 95} if suffix == ".jpg" else {}

    def write(temporary):
        with open(temporary, "xb") as f:
            image.save(
                f, format="JPEG" if suffix == ".jpg" else "PNG", **options
            )

    write_atomic(path, write)
