"""``keras-segformer export``: write a SavedModel, TFLite or ONNX file.

Example:
    keras-segformer export --model segformer.keras --format onnx \\
        --out out/segformer.onnx
    keras-segformer export --model hf-b0/ --format tflite \\
        --out out/b0_int8.tflite --raw-input --argmax --input-size 512 512 \\
        --quantize int8 --calibration val_images/

Output (``--out``), here and in ``convert``:

- An extension that belongs to another format is refused: ``.tflite``
  and ``.onnx`` only for their own ``--format``, ``.keras`` / ``.h5`` /
  ``.pth`` / ``.pt`` / ``.safetensors`` never (no extension is fine).
- ``--out`` is never the input: not the ``--model`` itself (after links)
  nor a folder that holds it, ``--overwrite`` or not.
- An existing ``--out`` (a file, or a folder that is not empty) is
  refused unless ``--overwrite`` is given, and even then it is replaced
  only when it is what an earlier export of the same ``--format`` wrote:
  a TFLite or ONNX file (told by its header), or a SavedModel folder
  holding nothing but ``saved_model.pb``, ``fingerprint.pb``,
  ``keras_metadata.pb``, ``variables/`` and ``assets/``. Anything else (a
  training run folder, a folder with a ``.keras`` model, a file of another
  kind) is refused, naming what is there.
- The artifact is written under a hidden temporary name beside ``--out``
  and renamed into place once complete: a failed or killed export leaves
  an earlier ``--out`` as it was (a folder is swapped by two renames).
"""

import os

from keras_segformer.cli.common import add_model_arguments, image_size
from keras_segformer.cli.outputs import (
    check_existing_out,
    check_not_input,
    entries,
    listing,
    written_in_place,
)
from keras_segformer.export.api import FORMATS, QUANTIZATIONS

# What ``tf.saved_model.save`` writes in its folder: all that
# --overwrite replaces there.
SAVED_MODEL_ENTRIES = frozenset(
    (
        "saved_model.pb",
        "fingerprint.pb",
        "keras_metadata.pb",
        "variables",
        "assets",
    )
)
# Extensions --out may not have for an export: the file formats' own
# (except for their format) and those of models and checkpoints.
FOREIGN_EXTENSIONS = {
    ".tflite": "a TFLite file",
    ".onnx": "an ONNX file",
    ".keras": "a Keras model",
    ".h5": "Keras weights",
    ".pth": "a PyTorch checkpoint",
    ".pt": "a PyTorch checkpoint",
    ".safetensors": "a safetensors checkpoint",
}
FILE_EXTENSIONS = {"tflite": ".tflite", "onnx": ".onnx"}
_KINDS = {
    "saved_model": "a SavedModel export",
    "tflite": "a TFLite file",
    "onnx": "an ONNX file",
}
_SAVED_MODEL_ONLY = (
    "a SavedModel export (a folder holding saved_model.pb and no more than "
    "variables/, assets/, fingerprint.pb, keras_metadata.pb)"
)
# ONNX files start with ModelProto field 1 (ir_version, a small varint)
# and then one of its other fields: producer_name, producer_version,
# domain, model_version, doc_string, graph, opset_import, metadata_props.
_ONNX_SECOND_TAGS = frozenset(b"\x12\x1a\x22\x28\x32\x3a\x42\x72")


def add_parser(subparsers):
    """Register ``export`` (see ``keras_segformer.cli``)."""
    parser = subparsers.add_parser(
        "export",
        help="export a model to SavedModel, TFLite or ONNX",
        description=(
            "Export a model for inference. The artifact takes images "
            "(batch, height, width, 3) and returns logits at 1/4 "
            "resolution, or with --argmax a class-index mask at the input "
            "size. Height and width stay dynamic unless --input-size fixes "
            "them. Written from a TensorFlow graph on every Keras backend, "
            "under a temporary name renamed to --out once complete."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument(
        "--out",
        required=True,
        help="output folder (saved_model) or file (.tflite, .onnx); must "
        "not exist yet (an empty folder is fine) unless --overwrite",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export of the same --format in --out (a "
        "TFLite or ONNX file, or a folder holding only a SavedModel); never "
        "the --model, a folder holding it, or anything else (a training "
        "run, other files)",
    )
    parser.add_argument(
        "--raw-input",
        action="store_true",
        help="take raw uint8 RGB pixels (0-255) and normalize them in the "
        "graph",
    )
    parser.add_argument(
        "--argmax",
        action="store_true",
        help="resize the logits to the input size in the graph and return "
        "the int32 class mask",
    )
    parser.add_argument(
        "--input-size",
        nargs=2,
        type=image_size,
        metavar=("H", "W"),
        help="fix the input height and width (e.g. for TFLite on mobile "
        "delegates); dynamic by default",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        help="TFLite only: float16 weights, or int8 weights and activations",
    )
    parser.add_argument(
        "--calibration",
        metavar="DIR",
        help="int8 calibration images (a folder); default: built-in "
        "synthetic images",
    )
    parser.set_defaults(func=run)
    return parser


def _head(path, size=8):
    with open(path, "rb") as f:
        return f.read(size)


def _what_is_there(format):
    """``what_is_there`` for ``check_existing_out``: None for an earlier
    export of ``format``."""

    def check(path):
        if os.path.isdir(path):
            names = entries(path)
            if "saved_model.pb" in names and SAVED_MODEL_ENTRIES.issuperset(
                names
            ):
                return None
            return f"is a folder holding {listing(names)}"
        head = _head(path)
        if format == "tflite" and head[4:8] == b"TFL3":
            return None
        if (
            format == "onnx"
            and len(head) >= 3
            and head[0] == 0x08
            and 0 < head[1] < 0x80
            and head[2] in _ONNX_SECOND_TAGS
        ):
            return None
        return f"is not {_KINDS[format]}"

    return check


def check_out(out, format, model, overwrite=False):
    """Check ``--out`` of ``export`` (the rule in the module docstring)
    before anything is loaded.

    Args:
        out: str. ``--out``.
        format: str. ``--format``.
        model: str. ``--model``.
        overwrite: bool. ``--overwrite``.

    Returns:
        bool. Whether an earlier export in ``out`` is to be replaced.
    """
    name = os.path.basename(os.path.normpath(out)).lower()
    ext = ".h5" if name.endswith(".h5") else os.path.splitext(name)[1]
    own = FILE_EXTENSIONS.get(format)
    if ext in FOREIGN_EXTENSIONS and ext != own:
        writes = (
            f"{_KINDS[format]} ({own})"
            if own
            else "a folder (no extension needed)"
        )
        raise ValueError(
            f"--out {out} ends in {ext} ({FOREIGN_EXTENSIONS[ext]}), but "
            f"--format {format} writes {writes}: rename --out or change "
            "--format."
        )
    check_not_input(out, model, "--model")
    if format == "saved_model":
        if os.path.lexists(out) and not os.path.isdir(out):
            raise ValueError(
                f"--out {out} is a file; --format saved_model writes a "
                "directory."
            )
    elif os.path.isdir(out):
        raise ValueError(
            f"--out {out} is a directory; --format {format} writes one "
            f"file (e.g. {os.path.join(out, 'model' + own)})."
        )
    return check_existing_out(
        out,
        overwrite,
        _KINDS[format],
        _what_is_there(format),
        only=_SAVED_MODEL_ONLY if format == "saved_model" else None,
    )


def run(args):
    """Run ``export`` with parsed arguments.

    Args:
        args: ``argparse.Namespace`` from the ``export`` parser.
    """
    from keras_segformer.cli.common import load_any_model
    from keras_segformer.export import export_model

    if args.calibration is not None and args.quantize != "int8":
        raise ValueError("--calibration is only used with --quantize int8.")
    check_out(args.out, args.format, args.model, args.overwrite)
    model = load_any_model(
        args.model, variant=args.variant, num_classes=args.num_classes
    )
    with written_in_place(args.out) as temp:
        export_model(
            model,
            temp,
            args.format,
            include_preprocessing=args.raw_input,
            include_postprocessing=args.argmax,
            input_size=args.input_size,
            quantization=args.quantize,
            representative_images=args.calibration,
        )
    print(f"Exported {args.format} to {os.path.abspath(args.out)}")
    return 0
