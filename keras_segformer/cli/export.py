"""``keras-segformer export``: write a SavedModel, TFLite or ONNX file.

Example:
    keras-segformer export --model segformer.keras --format onnx \\
        --out out/segformer.onnx
    keras-segformer export --model hf-b0/ --format litert \\
        --out out/b0_int8.tflite --include-preprocessing \\
        --include-postprocessing --input-size 512 512 \\
        --quantization int8 --representative-images val_images/

Formats and flags have the names of ``export_model``'s arguments
(``keras_segformer.export.formats``); the older spellings are aliases:
``--format saved_model`` (= ``tf_saved_model``), ``--format tflite`` (=
``litert``), ``--raw-input``, ``--argmax``, ``--quantize``,
``--calibration``.

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
import warnings

from keras_segformer.cli.common import add_model_arguments, image_size
from keras_segformer.cli.outputs import (
    check_existing_out,
    check_not_input,
    entries,
    listing,
    written_to_out,
)
from keras_segformer.export.formats import (
    FORMAT_ALIASES,
    FORMATS,
    OPTION_ALIASES,
    QUANTIZATIONS,
    canonical_format,
)

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
FILE_EXTENSIONS = {"litert": ".tflite", "onnx": ".onnx"}
_KINDS = {
    "tf_saved_model": "a SavedModel export",
    "litert": "a TFLite file",
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
            "resolution, or with --include-postprocessing a class-index "
            "mask at the input size. Height and width stay dynamic unless "
            "--input-size fixes them. Written from a TensorFlow graph on "
            "every Keras backend, under a temporary name renamed to --out "
            "once complete. Needs TensorFlow (and tf2onnx, onnx for ONNX): "
            "pip install 'keras-segformer[export]'."
        ),
    )
    add_model_arguments(parser)
    aliases = ", ".join(f"{a} = {c}" for a, c in FORMAT_ALIASES.items())
    parser.add_argument(
        "--format",
        required=True,
        choices=FORMATS + tuple(FORMAT_ALIASES),
        metavar="{" + ",".join(FORMATS) + "}",
        help="what to write: tf_saved_model (a SavedModel folder), litert "
        f"(a .tflite file) or onnx (an .onnx file); aliases: {aliases}",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output folder (tf_saved_model) or file (.tflite, .onnx); must "
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
        "--include-preprocessing",
        *OPTION_ALIASES["include_preprocessing"],
        dest="include_preprocessing",
        action="store_true",
        help="take raw uint8 RGB pixels (0-255) and normalize them in the "
        "graph (alias: --raw-input)",
    )
    parser.add_argument(
        "--include-postprocessing",
        *OPTION_ALIASES["include_postprocessing"],
        dest="include_postprocessing",
        action="store_true",
        help="resize the logits to the input size in the graph and return "
        "the int32 class mask (alias: --argmax)",
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
        "--quantization",
        *OPTION_ALIASES["quantization"],
        dest="quantization",
        choices=QUANTIZATIONS,
        help="float16 weights (litert), or int8 weights and activations "
        "calibrated on --representative-images (litert, onnx) "
        "(default: float32, none; alias: --quantize)",
    )
    parser.add_argument(
        "--representative-images",
        *OPTION_ALIASES["representative_images"],
        dest="representative_images",
        metavar="DIR",
        help="int8 calibration images (a folder); default: built-in "
        "synthetic images (alias: --calibration)",
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
        if format == "litert" and head[4:8] == b"TFL3":
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
        format: str. ``--format`` (an alias too; messages name it as
            given).
        model: str. ``--model``.
        overwrite: bool. ``--overwrite``.

    Returns:
        bool. Whether an earlier export in ``out`` is to be replaced.
    """
    given, format = format, canonical_format(format)
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
            f"--format {given} writes {writes}: rename --out or change "
            "--format."
        )
    check_not_input(out, model, "--model")
    if format == "tf_saved_model":
        if os.path.lexists(out) and not os.path.isdir(out):
            raise ValueError(
                f"--out {out} is a file; --format {given} writes a directory."
            )
    elif os.path.isdir(out):
        raise ValueError(
            f"--out {out} is a directory; --format {given} writes one "
            f"file (e.g. {os.path.join(out, 'model' + own)})."
        )
    return check_existing_out(
        out,
        overwrite,
        _KINDS[format],
        _what_is_there(format),
        only=_SAVED_MODEL_ONLY if format == "tf_saved_model" else None,
    )


def _check_memory(model, input_size, quantization):
    """An ``--input-size`` at which one image through the model needs more
    memory than this machine has (``memory.inference_bytes``): refused
    for int8, whose calibration runs the model at that size here; a
    warning otherwise (the artifact may be meant for a larger machine)."""
    from keras_segformer import memory

    dims = memory.model_dims(model)
    if input_size is None or dims is None:
        return
    height, width = input_size
    need = memory.inference_bytes(
        dims, (height, width), [(height, width)], flip=False,
        crop_size=None, batch_size=1,
    )  # fmt: skip
    what = f"--input-size {height} {width} (one image through the model)"
    remedy = (
        "use a smaller --input-size, or leave it out (dynamic height and "
        "width) and run large images in sliding windows (predict --slide)"
    )
    if quantization == "int8":
        what = (
            f"--input-size {height} {width} with --quantization int8 "
            "(calibration runs the model here)"
        )
        memory.check_fits(need, what, remedy)
        return
    try:
        memory.check_fits(need, what, remedy)
    except ValueError as e:
        warnings.warn(
            f"{e} The artifact is written: it can run only on a machine "
            "with that much memory.",
            stacklevel=2,
        )


def run(args):
    """Run ``export`` with parsed arguments.

    Args:
        args: ``argparse.Namespace`` from the ``export`` parser.
    """
    from keras_segformer.cli.common import load_any_model
    from keras_segformer.export import export_model

    if args.representative_images is not None and args.quantization != "int8":
        raise ValueError(
            "--representative-images (--calibration) is only used with "
            "--quantization int8."
        )
    check_out(args.out, args.format, args.model, args.overwrite)
    model = load_any_model(
        args.model, variant=args.variant, num_classes=args.num_classes
    )
    _check_memory(model, args.input_size, args.quantization)
    format = canonical_format(args.format)
    with written_to_out(args.out) as temp:
        export_model(
            model,
            temp,
            format,
            include_preprocessing=args.include_preprocessing,
            include_postprocessing=args.include_postprocessing,
            input_size=args.input_size,
            quantization=args.quantization,
            representative_images=args.representative_images,
        )
    print(f"Exported {format} to {os.path.abspath(args.out)}")
    return 0
