"""``keras-segformer convert``: any SegFormer checkpoint -> Keras file.

Reads transformers directories and files, NVlabs/SegFormer ``.pth``
(segmentation and ImageNet MiT) and mmsegmentation checkpoints; writes a
``.keras`` model, ``.weights.h5`` weights or (any other ``--out``) a
transformers directory. Prints what was mapped.
"""

import os
import tempfile

from keras_segformer.convert.formats import FORMATS
from keras_segformer.convert.loader import TASKS


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
        "format: config.json + model.safetensors)",
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
    """Write ``out`` through a temporary file, so a failure leaves nothing
    half-written."""
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    suffix = ".weights.h5" if out.endswith(".weights.h5") else ".keras"
    fd, temp = tempfile.mkstemp(dir=directory, suffix=".partial" + suffix)
    os.close(fd)
    os.remove(temp)  # Keras refuses to overwrite without asking
    try:
        if suffix == ".keras":
            model.save(temp)
        else:
            model.save_weights(temp)
        os.replace(temp, out)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def run(args):
    """Convert ``args.src`` and write ``args.out``; print the report."""
    from keras_segformer.cli.common import read_class_names
    from keras_segformer.convert.loader import load_checkpoint
    from keras_segformer.convert.to_hf import hf_config, save_pretrained

    out = args.out
    to_keras = out.endswith((".keras", ".weights.h5"))
    if not to_keras and os.path.splitext(out)[1] in (".h5", ".pth", ".bin"):
        raise ValueError(
            f"--out {out!r}: expected a .keras file, a .weights.h5 file or a "
            "directory (transformers format)."
        )
    if not to_keras and os.path.isfile(out):
        raise ValueError(f"--out {out!r} is a file, not a directory.")
    if to_keras and os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a directory, not a file name.")
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
        save_pretrained(model, out)
    print(f"wrote {out}")
    return 0
