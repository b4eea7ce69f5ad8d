"""Dataset readers: standard folder layouts -> paired file lists + metadata.

Each reader returns a ``SegmentationFiles``: the image and mask paths, the
class names and the label remapping the dataset needs, ready for
``make_dataset`` (``files.make_dataset(batch_size=..., training=...)``).
"""

import dataclasses
from pathlib import Path

from keras_segformer.classes import ADE20K_CLASSES, CITYSCAPES_CLASSES
from keras_segformer.data.loading import pair_folders
from keras_segformer.data.pipeline import make_dataset

# cityscapesScripts labels.py: labelId -> trainId for the 19 evaluated
# classes. Every other labelId (void classes, e.g. 0 unlabeled, 9 parking,
# 29 caravan) becomes 255 because ids missing from a label_map are ignored.
CITYSCAPES_LABEL_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class SegmentationFiles:
    """Paired image / mask files of one split, with their label metadata.

    Args:
        images: tuple of str. Image files.
        masks: tuple of str. Mask files, paired by position.
        class_names: tuple of str or None. Name of each training id.
        reduce_labels: bool. The masks need ``reduce_labels``.
        label_map: dict or None. The masks need this ``label_map``.
    """

    images: tuple
    masks: tuple
    class_names: tuple = None
    reduce_labels: bool = False
    label_map: dict = None

    def __len__(self):
        return len(self.images)

    @property
    def num_classes(self):
        """Number of classes, or None when the names are unknown."""
        return None if self.class_names is None else len(self.class_names)

    @property
    def id2label(self):
        """``{id: name}`` for the model builders, or None."""
        if self.class_names is None:
            return None
        return dict(enumerate(self.class_names))

    def make_dataset(self, **kwargs):
        """``make_dataset`` on these files with the dataset's label options.

        Args:
            **kwargs: other ``make_dataset`` arguments (``batch_size``,
                ``training``, ``crop_size``, ...).
        """
        kwargs.setdefault("num_classes", self.num_classes)
        kwargs.setdefault("reduce_labels", self.reduce_labels)
        kwargs.setdefault("label_map", self.label_map)
        return make_dataset(list(self.images), list(self.masks), **kwargs)


def _split(split, aliases, allowed):
    split = aliases.get(split, split)
    if split not in allowed:
        raise ValueError(
            f"`split` must be one of {sorted(set(allowed) | set(aliases))}. "
            f"Received: {split!r}"
        )
    return split


def ade20k(root, split="training"):
    """ADE20K SceneParsing (``ADEChallengeData2016``), 150 classes.

    Layout: ``root/images/<split>/*.jpg`` and
    ``root/annotations/<split>/*.png``; masks are reduced (raw 0 is
    ignored, raw k is class k - 1).

    Args:
        root: str or PathLike. The ``ADEChallengeData2016`` folder.
        split: str. ``"training"`` / ``"validation"`` (or ``"train"`` /
            ``"val"``).

    Returns:
        ``SegmentationFiles`` with the ADE20K class names and
        ``reduce_labels=True``.

    Raises:
        ValueError: an unknown split, a missing folder, no images, or an
            image without its mask (named).

    Example:
    >>> files = ade20k("data/ADEChallengeData2016", "val")
    >>> ds = files.make_dataset(batch_size=1, training=False, eval_size=512)
    """
    split = _split(
        split,
        {"train": "training", "val": "validation"},
        ("training", "validation"),
    )
    root = Path(root)
    images, masks = pair_folders(
        root / "images" / split, root / "annotations" / split
    )
    return SegmentationFiles(
        tuple(images), tuple(masks), ADE20K_CLASSES, reduce_labels=True
    )


def cityscapes(root, split="train", label_type="labelIds"):
    """Cityscapes fine annotations, 19 training classes.

    Layout: ``root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` and
    ``root/gtFine/<split>/<city>/<name>_gtFine_<label_type>.png``.
    ``labelIds`` masks are mapped to train ids with
    ``CITYSCAPES_LABEL_TO_TRAIN_ID`` (void classes -> 255);
    ``labelTrainIds`` masks (made by cityscapesScripts) are used as they are.

    Args:
        root: str or PathLike. Folder holding ``leftImg8bit`` and ``gtFine``.
        split: str. ``"train"``, ``"val"`` or ``"test"``.
        label_type: str. ``"labelIds"`` or ``"labelTrainIds"``.

    Returns:
        ``SegmentationFiles`` with the 19 class names and the label map
        ``labelIds`` masks need.

    Raises:
        ValueError: an unknown split or ``label_type``, a missing folder,
            no images, or an image without its mask (named).

    Example:
    >>> files = cityscapes("data/cityscapes", "val")
    >>> ds = files.make_dataset(batch_size=1, training=False)
    """
    split = _split(split, {}, ("train", "val", "test"))
    if label_type not in ("labelIds", "labelTrainIds"):
        raise ValueError(
            "`label_type` must be 'labelIds' or 'labelTrainIds'. "
            f"Received: {label_type!r}"
        )
    root = Path(root)
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise ValueError(f"The image folder {image_dir} does not exist.")
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise ValueError(f"No *_leftImg8bit.png images found in {image_dir}.")
    masks = []
    for image in images:
        name = image.name[: -len("_leftImg8bit.png")]
        mask = (
            root / "gtFine" / split / image.parent.name
        ) / f"{name}_gtFine_{label_type}.png"
        if not mask.is_file():
            raise ValueError(
                f"Image file {image} has no mask: {mask} is missing."
            )
        masks.append(str(mask))
    label_map = (
        CITYSCAPES_LABEL_TO_TRAIN_ID if label_type == "labelIds" else None
    )
    return SegmentationFiles(
        tuple(str(p) for p in images),
        tuple(masks),
        CITYSCAPES_CLASSES,
        label_map=label_map,
    )


def folder(
    image_dir, mask_dir, class_names=None, reduce_labels=False, label_map=None
):
    """A plain image folder and mask folder, paired by relative file name.

    ``image_dir/a/x.jpg`` pairs with ``mask_dir/a/x.png``.

    Args:
        image_dir: str or PathLike. Images (searched recursively).
        mask_dir: str or PathLike. Masks (searched recursively).
        class_names: sequence of str or None. Name of each training id.
        reduce_labels: bool. The masks need ``reduce_labels``.
        label_map: dict or None. The masks need this ``label_map``.

    Returns:
        ``SegmentationFiles``.

    Raises:
        ValueError: a missing folder, no images, or an image without a
            mask of the same name (named).

    Example:
    >>> files = folder("data/images", "data/masks", ["sky", "road"])
    >>> ds = files.make_dataset(batch_size=4, training=True, crop_size=256)
    """
    images, masks = pair_folders(image_dir, mask_dir)
    return SegmentationFiles(
        tuple(images),
        tuple(masks),
        None if class_names is None else tuple(class_names),
        reduce_labels=reduce_labels,
        label_map=None if label_map is None else dict(label_map),
    )
