"""``keras-segformer convert``: any SegFormer checkpoint -> Keras file.

Reads transformers directories and files, NVlabs/SegFormer ``.pth``
(segmentation and ImageNet MiT) and mmsegmentation checkpoints; writes a
``.keras`` model, ``.weights.h5`` weights or (any other ``--out``) a
transformers directory. Prints what was mapped.

Output (``--out``), by the rule of ``export`` (see
``keras_segformer.cli.export``):

- ``--out`` is never the source checkpoint ``SRC`` nor a folder that
  holds it, ``--overwrite`` or not.
- An existing ``--out`` (a file, or a folder that is not empty) is
  refused unless ``--overwrite`` is given, and even then it is replaced
  only when it is what an earlier ``convert`` to that kind wrote: a Keras
  model (a ``.keras`` zip archive), a Keras weights file (``.weights.h5``,
  HDF5), or a folder holding nothing but ``config.json`` and
  ``model.safetensors``. A training run's files (``model.keras``,
  ``checkpoints/`` beside a ``run.json``) and folders holding anything
  else are refused, naming what is there.
- Every output is written under a temporary name and renamed into place
  once complete: a failed or killed ``convert`` leaves an earlier
  ``--out`` as it was.
"""

import os
import zipfile

from keras_segformer.cli.outputs import (
    check_existing_out,
    check_not_input,
    entries,
    listing,
    written_in_place,
)
from keras_segformer.convert.formats import FORMATS
from keras_segformer.convert.loader import TASKS

# What ``save_pretrained`` writes: all --overwrite replaces in a folder.
TRANSFORMERS_ENTRIES = frozenset(("config.json", "model.safetensors"))
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_KINDS = {
    ".keras": "a Keras model",
    ".weights.h5": "a Keras weights file",
    "": "a transformers folder",
}
_FOLDER_ONLY = (
    "a transformers folder (holding no more than config.json and "
    "model.safetensors)"
)
# --out extensions of other formats (a transformers --out is a folder).
_FOREIGN_EXTENSIONS = (
    ".h5",
    ".pth",
    ".pt",
    ".bin",
    ".safetensors",
    ".onnx",
    ".tflite",
)


def _int_list(text):
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(
            f"Expected comma-separated integers such as 1,2,5,8. Received: "
            f"{text!r}"
        ) from None


def add_parser(subparsers):
    """Register ``convert`` (see ``keras_segformer.cli``)."""
    p = subparsers.add_parser(
        "convert",
        help="convert a transformers / NVlabs / mmseg checkpoint to Keras",
        description=(
            "Convert a SegFormer checkpoint (transformers directory or "
            "file, NVlabs .pth, ImageNet MiT .pth, mmsegmentation .pth) to "
            "a Keras model. The format and the architecture are read off "
            "the tensor names and shapes. .pth/.bin files are read without "
            "running pickled code."
        ),
    )
    p.add_argument("src", help="checkpoint file or transformers directory")
    p.add_argument(
        "--out",
        required=True,
        help="model.keras, model.weights.h5, or a directory (transformers "
        "format: config.json + model.safetensors); must not exist yet "
        "(an empty folder is fine) unless --overwrite",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier convert output in --out of the same kind "
        "(a .keras or .weights.h5 file, or a folder holding only "
        "config.json and model.safetensors); never SRC, a folder holding "
        "it, a training run's files or a folder holding anything else",
    )
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument(
        "--labels",
        help="class names: ade20k, cityscapes or a JSON file (list, "
        "{index: name} or a config.json with id2label)",
    )
    p.add_argument(
        "--variant",
        help="b0 ... b5: attention heads and strides from the variant table "
        "(checked against the weights)",
    )
    p.add_argument(
        "--num-heads",
        type=_int_list,
        help="attention heads per stage, e.g. 1,2,5,8 (for hidden sizes "
        "that match no variant)",
    )
    p.add_argument("--task", choices=TASKS, help="default: the checkpoint's")
    p.add_argument(
        "--num-classes", type=int, help="classes of a new head (fine-tuning)"
    )
    p.add_argument(
        "--backbone-only",
        action="store_true",
        help="load the encoder only, under a fresh head",
    )
    p.add_argument(
        "--decoder-hidden-size", type=int, help="channels of a new decoder"
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="print every tensor copied (source -> Keras variable)",
    )
    p.set_defaults(func=run)
    return p


def _save_atomic(model, out):
    """Write the ``.keras`` model or ``.weights.h5`` weights ``out`` through
    a temporary file (``write_atomic``, as a training run writes its
    files): a failure leaves nothing half-written."""
    from keras_segformer.training.run_files import write_atomic

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save = model.save_weights if out.endswith(".weights.h5") else model.save
    write_atomic(out, save)


def _what_is_there(suffix):
    """``what_is_there`` for ``check_existing_out``: None for an earlier
    output of the kind ``suffix`` (``.keras``, ``.weights.h5`` or ``""``,
    a folder)."""

    def check(path):
        if os.path.isdir(path):
            names = entries(path)
            if TRANSFORMERS_ENTRIES.issuperset(names):
                return None
            return f"is a folder holding {listing(names)}"
        if suffix == ".keras" and zipfile.is_zipfile(path):
            return None
        if suffix == ".weights.h5":
            with open(path, "rb") as f:
                if f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                    return None
        return f"is not {_KINDS[suffix]}"

    return check


def _save_folder(model, out):
    """``save_pretrained`` into a temporary folder beside ``out``, renamed
    to ``out`` once complete."""
    from keras_segformer.convert.to_hf import save_pretrained

    with written_in_place(out) as temp:
        save_pretrained(model, temp)


def run(args):
    """Convert ``args.src`` and write ``args.out``; print the report."""
    from keras_segformer.cli.common import read_class_names
    from keras_segformer.convert.loader import load_checkpoint
    from keras_segformer.convert.to_hf import hf_config

    out = args.out
    to_keras = out.endswith((".keras", ".weights.h5"))
    if not to_keras and os.path.splitext(out)[1] in _FOREIGN_EXTENSIONS:
        raise ValueError(
            f"--out {out!r}: expected a .keras file, a .weights.h5 file or a "
            "directory (transformers format)."
        )
    if not to_keras and os.path.isfile(out):
        raise ValueError(f"--out {out!r} is a file, not a directory.")
    if to_keras and os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a directory, not a file name.")
    check_not_input(out, args.src, "source checkpoint")
    suffix = ".weights.h5" if out.endswith(".weights.h5") else ""
    suffix = ".keras" if out.endswith(".keras") else suffix
    check_existing_out(
        out,
        args.overwrite,
        _KINDS[suffix],
        _what_is_there(suffix),
        only=None if suffix else _FOLDER_ONLY,
    )
    # The file and its contents are checked here to name the flag; the
    # class count once the checkpoint is read.
    read_class_names(args.labels)
    model = load_checkpoint(
        args.src,
        format=args.format,
        task=args.task,
        num_classes=args.num_classes,
        labels=args.labels,
        backbone_only=args.backbone_only,
        variant=args.variant,
        num_heads=args.num_heads,
        decoder_hidden_size=args.decoder_hidden_size,
    )
    report = model.load_report
    print(report.summary())
    if args.verbose:
        print(report.details())
    if to_keras:
        _save_atomic(model, out)
    else:
        hf_config(model)  # refuses (mmseg head) before anything is written
        _save_folder(model, out)
    print(f"wrote {out}")
    return 0
