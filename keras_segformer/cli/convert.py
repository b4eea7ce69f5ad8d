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
  HDF5), or a folder holding nothing but what ``save_pretrained`` writes
  (``config.json``, ``model.safetensors``, ``preprocessor_config.json``
  and its model card ``README.md``). A training run's files (``model.keras``,
  ``checkpoints/`` beside a ``run.json``) and folders holding anything
  else are refused, naming what is there.
- Every output is written under a temporary name and renamed into place
  once complete: a failed or killed ``convert`` leaves an earlier
  ``--out`` as it was.
"""

import argparse
import contextlib
import os
import re
import zipfile

from keras_segformer.cli.common import (
    add_labels,
    add_num_classes,
    add_variant,
    int_at_least,
)
from keras_segformer.cli.outputs import (
    check_existing_out,
    check_not_input,
    entries,
    listing,
    written_to_out,
)

# keras_segformer.convert's FORMATS and TASKS (a test checks they are
# equal), written out so that `convert --help` starts without Keras.
FORMATS = ("auto", "hf", "nvlabs", "mit", "mmseg")
TASKS = ("segmentation", "classification", "backbone")

# What ``save_pretrained`` writes: all --overwrite replaces in a folder.
TRANSFORMERS_ENTRIES = frozenset(
    (
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
    )
)
# The model card's tag that marks a README.md as save_pretrained's own.
_CARD_TAG = "\n- keras-segformer\n"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_KINDS = {
    ".keras": "a Keras model",
    ".weights.h5": "a Keras weights file",
    "": "a transformers folder",
}
_FOLDER_ONLY = (
    "a transformers folder (holding no more than config.json, "
    "model.safetensors, preprocessor_config.json and its README.md)"
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
    """argparse type: comma-separated ints, one per stage."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        values = None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated ints >= 1 such as 1,2,5,8, got {text!r}"
        )
    return values


_int_list.__name__ = "int list"


# ``load_checkpoint``'s arguments that are flags here: its messages name
# the flags instead (``flag_names``).
_FLAGS = {
    name: "--" + name.replace("_", "-")
    for name in (
        "format",
        "task",
        "num_classes",
        "labels",
        "backbone_only",
        "variant",
        "num_heads",
        "strides",
        "decoder_hidden_size",
    )
}
_QUOTED = re.compile(r"`(\w+)=?`")
_ASSIGNED = re.compile(r"\b(\w+)=('([^']*)'|\[([^\]]*)\]|[\w.-]+)")


def flag_names(message):
    """``message`` with ``load_checkpoint``'s argument names written as
    ``convert``'s flags: ``backbone_only=True`` -> ``--backbone-only``,
    ``variant='b0'`` -> ``--variant b0``, ```num_heads``` ->
    ``--num-heads`` (other names are left as they are).

    Example:
    >>> flag_names("pass backbone_only=True and `num_classes`")
    'pass --backbone-only and --num-classes'
    """

    def assigned(match):
        flag = _FLAGS.get(match[1])
        if flag is None:
            return match[0]
        if match[2] == "True":
            return flag
        value = match[3] if match[3] is not None else match[2]
        if match[4] is not None:  # a list: 1,2,5,8 as the flag takes it
            value = match[4].replace(" ", "")
        return f"{flag} {value}"

    message = _QUOTED.sub(lambda m: _FLAGS.get(m[1], m[0]), message)
    return _ASSIGNED.sub(assigned, message)


@contextlib.contextmanager
def _flag_names():
    """Raise a ``ValueError`` / ``TypeError`` of the block again with
    ``flag_names`` applied to its message."""
    try:
        yield
    except (ValueError, TypeError) as e:
        message = flag_names(str(e))
        if message == str(e):
            raise
        try:
            renamed = type(e)(message)
        except Exception:  # an error type that takes other arguments
            renamed = ValueError(message)
        raise renamed from e


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
        "format: config.json, model.safetensors, preprocessor_config.json, "
        "README.md); must not exist yet "
        "(an empty folder is fine) unless --overwrite",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier convert output in --out of the same kind "
        "(a .keras or .weights.h5 file, or a folder holding only what "
        "convert wrote there); never SRC, a folder holding "
        "it, a training run's files or a folder holding anything else",
    )
    p.add_argument(
        "--format",
        default="auto",
        choices=FORMATS,
        help="the checkpoint's format (auto: told by its tensor names)",
    )
    add_labels(
        p,
        "a segmentation dataset's names for an ImageNet MiT checkpoint "
        "give a SegFormer with a new head of that many classes (default: "
        "the checkpoint's names, if any)",
    )
    add_variant(
        p,
        "attention heads and strides from the variant table, checked "
        "against the weights (default: the variant the weights match)",
    )
    p.add_argument(
        "--num-heads",
        type=_int_list,
        metavar="N,N,N,N",
        help="attention heads per stage, e.g. 1,2,5,8, for hidden sizes "
        "that match no variant (default: the variant's)",
    )
    p.add_argument(
        "--strides",
        type=_int_list,
        metavar="N,N,N,N",
        help="patch-embedding strides per stage, e.g. 4,2,2,2, for patch "
        "sizes that match no variant (default: the variant's)",
    )
    p.add_argument(
        "--task",
        choices=TASKS,
        help="the model to build (default: the checkpoint's; "
        "segmentation with --backbone-only)",
    )
    add_num_classes(
        p,
        "classes of a new head, with --backbone-only (default: the "
        "checkpoint's)",
    )
    p.add_argument(
        "--backbone-only",
        action="store_true",
        help="load the encoder only, under a fresh head",
    )
    p.add_argument(
        "--decoder-hidden-size",
        type=int_at_least(1),
        help="channels of a new decoder (default: the variant's)",
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
            if TRANSFORMERS_ENTRIES.issuperset(names) and _own_card(path):
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


def _own_card(folder):
    """Whether ``folder`` has no README.md or the model card that
    ``save_pretrained`` writes (a user's README.md is not replaced)."""
    card = os.path.join(folder, "README.md")
    if not os.path.lexists(card):
        return True
    if os.path.islink(card) or not os.path.isfile(card):
        return False
    with open(card, encoding="utf-8", errors="replace") as f:
        head = f.read(4096)
    front_matter = head.split("\n---", 1)[0] + "\n"
    return head.startswith("---\n") and _CARD_TAG in front_matter


def _save_folder(model, out):
    """``save_pretrained`` into a temporary folder beside ``out``, renamed
    to ``out`` once complete."""
    from keras_segformer.convert.to_hf import save_pretrained

    with written_to_out(out) as temp:
        save_pretrained(model, temp)


def _load(args, names):
    """``load_checkpoint`` with the flags. ``--labels`` naming other
    classes than an ImageNet classifier's (the README's ``convert
    mit_b0.pth --out b0.keras --labels ade20k``) builds a SegFormer with a
    new head of that many classes on its encoder, as ``--backbone-only
    --num-classes N`` would, and says so in one line."""
    from keras_segformer.convert import infer_architecture
    from keras_segformer.convert.loader import _read, load_checkpoint

    options = dict(
        format=args.format,
        task=args.task,
        num_classes=args.num_classes,
        labels=args.labels,
        backbone_only=args.backbone_only,
        variant=args.variant,
        num_heads=args.num_heads,
        strides=args.strides,
        decoder_hidden_size=args.decoder_hidden_size,
    )
    try:
        return load_checkpoint(args.src, **options)
    except ValueError:
        given = (args.task, args.num_classes, args.backbone_only or None)
        if names is None or any(v is not None for v in given):
            raise
        _, state_dict, layout, _ = _read(args.src, args.format)
        arch = infer_architecture(state_dict, layout)
        del state_dict
        n = len(names)
        if arch["num_classes"] in (None, n):
            raise
        if arch["task"] == "segmentation":
            raise ValueError(
                f"--labels {args.labels} names {n} classes; the checkpoint's "
                f"head has {arch['num_classes']}: add --backbone-only "
                f"--num-classes {n} for a new head on its encoder."
            ) from None
        if arch["task"] != "classification":
            raise
    print(
        f"{args.src} is an ImageNet classifier ({arch['num_classes']} "
        f"classes); --labels {args.labels} names {n}: a SegFormer with a "
        f"new {n}-class head on its encoder (as --backbone-only "
        f"--num-classes {n})"
    )
    options.update(task="segmentation", num_classes=n, backbone_only=True)
    return load_checkpoint(args.src, **options)


def run(args):
    """Convert ``args.src`` and write ``args.out``; print the report."""
    from keras_segformer.cli.common import read_class_names
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
    names = read_class_names(args.labels)
    with _flag_names():
        model = _load(args, names)
    report = model.load_report
    print(report.summary())
    if args.verbose:
        print(report.details())
    if to_keras:
        _save_atomic(model, out)
    else:
        with _flag_names():  # refuses (mmseg head) before anything is written
            hf_config(model)
        _save_folder(model, out)
    print(f"wrote {out}")
    return 0
