"""Helpers shared by the sub-commands: the help format, argument types,
the flags several commands take (one definition each), model loading,
folders, labels."""

import argparse
import functools
import math
import os
import tempfile

from keras_segformer.configs import COMMON, min_input_size, variant_config

# The smallest image side every variant accepts (they share the patch
# embeddings and reduction ratios): a crop or image size below it is
# refused when the arguments are read.
MIN_IMAGE_SIZE = min_input_size(
    COMMON["patch_sizes"], COMMON["strides"], COMMON["sr_ratios"]
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` of every command: each flag's help line ends with its
    default, unless the line already says what happens without the flag
    (it names a default) or there is nothing to show (a required flag, a
    switch that is off, no default)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or action.required
            or any(default is v for v in (None, False, argparse.SUPPRESS))
        ):
            return text
        if isinstance(default, (list, tuple)):
            default = " ".join(map(str, default))
        return f"{text} (default: {str(default).replace('%', '%%')})"

    def _format_args(self, action, default_metavar):
        if isinstance(action, OneOrTwo):  # one value or two, not more
            return "{} [{}]".format(*action.metavar)
        return super()._format_args(action, default_metavar)


def _number(convert, accept, expected):
    """argparse type: ``convert(text)`` (finite) that ``accept`` takes,
    else "expected ``expected``, got ``text``". Named after ``convert``
    (``int``, ``float``): what the flag takes."""

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

    parse.__name__ = convert.__name__
    return parse


@functools.cache
def int_at_least(low):
    """argparse type: an int >= ``low``."""
    return _number(int, lambda v: v >= low, f"an int >= {low}")


# argparse type: an image side the network accepts.
image_size = _number(
    int,
    lambda v: v >= MIN_IMAGE_SIZE,
    f"an image side >= {MIN_IMAGE_SIZE} (the smallest SegFormer accepts)",
)


@functools.cache
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
    if os.path.exists(path) and not os.path.isfile(path):
        if not os.path.isdir(path):
            # Opening a FIFO waits for a writer: the command hung.
            raise ValueError(
                f"--model {path}: not a regular file or a folder (a FIFO, "
                "device or socket); give a .keras or .weights.h5 file or a "
                "transformers folder."
            )
    if given and not os.fspath(path).endswith(_WEIGHT_SUFFIXES):
        raise ValueError(
            f"{' and '.join(given)}: only for a .weights.h5 --model; "
            f"{path} is a model that names its own variant and classes "
            "(drop them)."
        )
    model = load_model(path, variant=variant, num_classes=num_classes)
    _check_takes_images(model, path)
    return model


def _check_takes_images(model, path):
    """Refuse a model that does not take ``(batch, height, width, 3)``
    images: another Keras model's ``.keras`` file loads, then failed deep
    in a command with a traceback (``predict``: "has never been called")."""
    try:
        (images,) = model.inputs
        shape = tuple(images.shape)
    except (AttributeError, TypeError, ValueError):
        shape = None
    if shape is None or len(shape) != 4 or shape[-1] != 3:
        found = "no defined input" if shape is None else f"inputs {shape}"
        raise ValueError(
            f"--model {path}: not a SegFormer or MiT model (those take "
            f"(batch, height, width, 3) images; this one has {found})."
        )


def add_model_arguments(parser):
    """``--model`` (what ``load_any_model`` reads), and ``--variant`` and
    ``--num-classes``, which a ``.weights.h5`` ``--model`` needs."""
    parser.add_argument(
        "--model",
        required=True,
        help="a .keras file, a transformers save_pretrained directory, or "
        "a .weights.h5 file (with --variant and --num-classes)",
    )
    add_variant(
        parser,
        "for a .weights.h5 --model only (default: the one the model names)",
    )
    add_num_classes(
        parser,
        "for a .weights.h5 --model only (default: the model's own)",
    )


# -- flags several commands take: one definition each ----------------------
# A command passes its own help line and default; what the flag takes
# (type, number of values) is the same in every command.


def _variant(text):
    """argparse type: a variant name (``b0`` ... ``b5``; ``mit-b0`` and
    ``B0`` too), kept as typed."""
    try:
        variant_config(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected b0, b1, b2, b3, b4 or b5, got {text!r}"
        ) from None
    return text


_variant.__name__ = "variant"


def add_variant(parser, help, default=None):
    """``--variant``: a row of the variant table."""
    parser.add_argument(
        "--variant",
        type=_variant,
        default=default,
        metavar="{b0,...,b5}",
        help=f"SegFormer variant: {help}",
    )


def add_num_classes(parser, help, *, low=1, **kwargs):
    """``--num-classes``: an int >= ``low`` (``required``/``default`` in
    ``kwargs``)."""
    parser.add_argument(
        "--num-classes", type=int_at_least(low), help=help, **kwargs
    )


def add_labels(parser, help):
    """``--labels``: class names (``read_class_names``)."""
    parser.add_argument(
        "--labels",
        metavar="NAMES",
        help=f"class names: ade20k, cityscapes or a JSON file (a list, "
        f"{{index: name}} or a config.json with id2label); {help}",
    )


def add_data_folders(parser, what):
    """``--images`` and ``--masks`` (required), matched by file name."""
    parser.add_argument(
        "--images", required=True, help=f"folder of {what} images"
    )
    parser.add_argument(
        "--masks",
        required=True,
        help="folder of their masks (PNG of class indices, matched to the "
        "images by file name)",
    )


def add_reduce_labels(parser):
    """``--reduce-labels``: ADE20K's shift of the mask values."""
    parser.add_argument(
        "--reduce-labels",
        action="store_true",
        help="masks count 0 as 'ignore' and classes from 1 (ADE20K's "
        "files): 0 becomes 255 (ignored) and every other value v becomes "
        "v - 1",
    )


def add_batch_size(parser, help, default):
    """``--batch-size``: an int >= 1."""
    parser.add_argument(
        "--batch-size", type=int_at_least(1), default=default, help=help
    )


def add_seed(parser):
    """``--seed``: the random seed of data, crops and initial weights."""
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed (data order, augmentation, new weights)",
    )


def add_schedule(parser, *, epochs, lr, steps=None, more=""):
    """``--epochs``, ``--steps`` (per epoch) and ``--lr``; ``more`` adds to
    their help: ``{"--steps": " (default: ...)"}``."""
    more = dict(more or {})
    parser.add_argument(
        "--epochs",
        type=int_at_least(1),
        default=epochs,
        help="epochs in all" + more.get("--epochs", ""),
    )
    parser.add_argument(
        "--steps",
        type=int_at_least(1),
        default=steps,
        help="steps per epoch" + more.get("--steps", ""),
    )
    parser.add_argument(
        "--lr",
        type=float_at_least(0.0),
        default=lr,
        help="peak learning rate (AdamW, poly schedule after a warmup)"
        + more.get("--lr", ""),
    )


class OneOrTwo(argparse.Action):
    """``nargs="+"`` limited to one value or two (height, width)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) > 2:
            raise argparse.ArgumentError(
                self,
                "expected one size or two (height width), got "
                + " ".join(map(str, values)),
            )
        setattr(namespace, self.dest, values)


def add_size(parser, flag, help, *, type=image_size, default=None, unset=""):
    """A size flag (``--crop-size``, ``--stride``): one value for a
    square, or two (height width); read with ``size_value``. ``unset``
    says what no flag means (a ``default`` of None)."""
    if unset:
        unset = f" (default: {unset})"
    parser.add_argument(
        flag,
        type=type,
        nargs="+",
        action=OneOrTwo,
        default=default,
        metavar=("H", "W"),
        help=f"{help}: one size (a square) or height and width{unset}",
    )


def size_value(values):
    """What ``add_size`` parsed as ``Segmenter`` and ``make_dataset`` take
    it: None, an int (one size) or ``(height, width)``."""
    if values is None:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def size_pair(values):
    """What ``add_size`` parsed as ``(height, width)`` (one size: a
    square), or None."""
    if values is None:
        return None
    return (values[0], values[-1])


def read_class_names(spec, num_classes=None):
    """Class names from ``ade20k``, ``cityscapes`` or a JSON file (a list or
    an ``id2label`` dict): ``keras_segformer.classes.resolve_labels`` with
    ``--labels`` in its messages. Returns ``{id: name}`` or None."""
    from keras_segformer.classes import resolve_labels

    return resolve_labels(spec, num_classes, name="--labels")
