"""Built-in datasets' class names and colours, and the class-name parser.

ADE20K (150 classes, ``reduce_labels`` indexing: 0 is "wall") and
Cityscapes (19 train ids) as in mmsegmentation's dataset definitions
(``mmseg/datasets/ade.py``, ``cityscapes.py``; Apache-2.0), and the
demo's generated shapes. The data readers, the overlays and every
``labels=`` / ``--labels`` argument use these tables and
``resolve_labels``.
"""

import json
import os

# Data tables: one colour (R, G, B) per class index, in mmseg's order.
# fmt: off
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed",
    "windowpane", "grass", "cabinet", "sidewalk", "person", "earth", "door",
    "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill",
    "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage",
    "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall",
    "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step",
    "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase",
    "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock",
    "flag",
)

ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3),
    (120, 120, 80), (140, 140, 140), (204, 5, 255), (230, 230, 230),
    (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70),
    (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7),
    (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92),
    (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71),
    (255, 41, 10), (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6),
    (255, 194, 7), (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153),
    (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0),
    (255, 224, 0), (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255),
    (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245),
    (0, 61, 255), (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0),
    (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0), (0, 82, 255),
    (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0),
    (255, 0, 20), (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255),
    (255, 0, 204), (0, 255, 194), (0, 255, 82), (0, 10, 255), (0, 112, 255),
    (51, 0, 255), (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0),
    (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255), (163, 255, 0),
    (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0),
    (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0, 255),
    (153, 0, 255), (71, 255, 0), (255, 0, 163), (255, 204, 0), (255, 0, 143),
    (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255), (255, 0, 122),
    (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255),
    (41, 255, 0), (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255),
    (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255), (255, 214, 0),
    (25, 194, 194), (102, 255, 0), (92, 0, 255),
)

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle",
)

CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
    (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
    (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100),
    (0, 0, 230), (119, 11, 32),
)

# The demo's generated shapes (``keras_segformer.data.synthetic``, which
# draws them): background, then one shape per class; a demo of k classes
# has the first k.
SHAPES_CLASSES = (
    "background", "red_disc", "green_box", "blue_triangle", "yellow_band",
    "magenta_ellipse", "cyan_blob", "orange_square", "white_grid",
    "purple_triangle",
)

SHAPES_PALETTE = (
    (0, 0, 0), (215, 40, 40), (40, 180, 60), (60, 110, 240), (225, 205, 40),
    (205, 50, 195), (40, 195, 205), (240, 135, 30), (230, 230, 230),
    (115, 45, 175),
)

# fmt: on

DATASETS = {
    "ade20k": (ADE20K_CLASSES, ADE20K_PALETTE),
    "cityscapes": (CITYSCAPES_CLASSES, CITYSCAPES_PALETTE),
}


def get_class_names(dataset):
    """Class names of a built-in dataset, in class-index order.

    Args:
        dataset: str. ``"ade20k"`` or ``"cityscapes"``.
    """
    key = _dataset_key(dataset)
    if key not in DATASETS:
        raise ValueError(
            f"Unknown dataset {dataset!r}. Expected one of {sorted(DATASETS)}."
        )
    return list(DATASETS[key][0])


def _dataset_key(name):
    return str(name).lower().replace("-", "").replace("_", "")


def _read_labels(text, name):
    """Names of a built-in dataset, or the JSON a file holds."""
    key = _dataset_key(text)
    if key in DATASETS:
        return list(DATASETS[key][0])
    if not os.path.isfile(text):
        raise ValueError(
            f"{name} must be 'ade20k', 'cityscapes', a JSON file, a list or "
            f"a dict. Received: {text!r} (no such file)."
        )
    with open(text, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(
                f"{name} file {text!r} is not valid JSON: {e}"
            ) from None
    if isinstance(data, dict) and "id2label" in data:
        data = data["id2label"]
    if not isinstance(data, (list, dict)):
        raise ValueError(
            f"{name} file {text!r} must hold a JSON list of class names or "
            "an object {index: name} (or a config.json with id2label). "
            f"Received: a JSON {type(data).__name__}."
        )
    return data


def resolve_labels(labels, num_classes=None, *, name="`labels`"):
    """Class names as an ``id2label`` dict.

    Args:
        labels: ``None``, ``"ade20k"``, ``"cityscapes"``, a path to a JSON
            file (a list of names, an ``{index: name}`` object or a
            transformers ``config.json`` with ``id2label``), a list of
            names or a dict.
        num_classes: int or None. Checked against the number of names.
        name: str. The argument's name in messages (``"--labels"`` on
            the command line).

    Returns:
        dict ``{int: str}`` or ``None``.

    Example:
    >>> resolve_labels("cityscapes", 19)[0]
    'road'
    """
    if labels is None:
        return None
    source = labels
    if isinstance(labels, (str, os.PathLike)):
        labels = _read_labels(os.fspath(labels), name)
    if isinstance(labels, (list, tuple)):
        labels = dict(enumerate(labels))
    if not isinstance(labels, dict):
        raise TypeError(
            f"{name} must name the classes with a list or a dict. "
            f"Received: {type(labels).__name__}"
        )
    # A file or dataset name is said; a list of 150 names is not.
    if isinstance(source, (str, os.PathLike)):
        name = f"{name} ({os.fspath(source)!r})"
    try:
        id2label = {int(k): str(v) for k, v in labels.items()}
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: keys must be class indices: {e}") from None
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError(f"{name} must name classes 0..n-1 without gaps.")
    if num_classes is not None and len(id2label) != num_classes:
        raise ValueError(
            f"{name} names {len(id2label)} classes; the model has "
            f"{num_classes}."
        )
    return id2label
