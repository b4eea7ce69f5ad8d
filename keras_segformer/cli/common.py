"""Helpers shared by the sub-commands: argument types, model loading,
folders, labels."""

import argparse
import math
import os
import tempfile

from keras_segformer.configs import COMMON, min_input_size

# The smallest image side every variant accepts (they share the patch
# embeddings and reduction ratios): a crop or image size below it is
# refused when the arguments are read.
MIN_IMAGE_SIZE = min_input_size(
    COMMON["patch_sizes"], COMMON["strides"], COMMON["sr_ratios"]
)


def _number(convert, accept, expected):
    """argparse type: ``convert(text)`` (finite) that ``accept`` takes,
    else "expected ``expected``, got ``text``"."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not accept(value):
            raise argparse.ArgumentTypeError(
                f"expected {expected}, got {text!r}"
            )
        return value

    return parse


def int_at_least(low):
    """argparse type: an int >= ``low``."""
    return _number(int, lambda v: v >= low, f"an int >= {low}")


# argparse type: an image side the network accepts.
image_size = _number(
    int,
    lambda v: v >= MIN_IMAGE_SIZE,
    f"an image side >= {MIN_IMAGE_SIZE} (the smallest SegFormer accepts)",
)


def float_at_least(low):
    """argparse type: a finite float >= ``low``."""
    return _number(float, lambda v: v >= low, f"a number >= {low:g}")


# argparse type: a finite float > 0.
positive_float = _number(float, lambda v: v > 0, "a number > 0")


def output_folder(path, flag="--out"):
    """Create the output folder ``path`` (with its parents) and check it is
    writable, with an error naming ``flag`` where it is a file or cannot be
    created or written."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a file, not a folder.")
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test")
        probe.close()
    except OSError as e:
        reason = e.strerror or str(e)
        raise ValueError(
            f"{flag} {path!r}: cannot write to this folder ({reason})."
        ) from None


def load_any_model(path, *, variant=None, num_classes=None):
    """Load a model from a ``.keras`` file, a transformers directory, or a
    Keras weights file (``.weights.h5``, needs ``variant`` and
    ``num_classes``); see ``keras_segformer.export.load_model``.
    """
    from keras_segformer.export.loading import _WEIGHT_SUFFIXES, load_model

    given = [
        flag
        for flag, value in (
            ("--variant", variant),
            ("--num-classes", num_classes),
        )
        if value is not None
    ]
    if given and not os.fspath(path).endswith(_WEIGHT_SUFFIXES):
        raise ValueError(
            f"{' and '.join(given)}: only for a .weights.h5 --model; "
            f"{path} is a model that names its own variant and classes "
            "(drop them)."
        )
    return load_model(path, variant=variant, num_classes=num_classes)


def add_model_arguments(parser):
    """``--model`` (what ``load_any_model`` reads), and ``--variant`` and
    ``--num-classes``, which a ``.weights.h5`` ``--model`` needs."""
    parser.add_argument(
        "--model",
        required=True,
        help="a .keras file, a transformers save_pretrained directory, or "
        "a .weights.h5 file (with --variant and --num-classes)",
    )
    parser.add_argument(
        "--variant", help="b0 ... b5, for a .weights.h5 --model"
    )
    parser.add_argument(
        "--num-classes", type=int, help="classes, for a .weights.h5 --model"
    )


def read_class_names(spec, num_classes=None):
    """Class names from ``ade20k``, ``cityscapes`` or a JSON file (a list or
    an ``id2label`` dict): ``keras_segformer.classes.resolve_labels`` with
    ``--labels`` in its messages. Returns ``{id: name}`` or None."""
    from keras_segformer.classes import resolve_labels

    return resolve_labels(spec, num_classes, name="--labels")
