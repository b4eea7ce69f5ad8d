"""``keras-segformer predict``: masks and overlays for images or a folder.

For each image ``NAME.ext`` it writes ``NAME_mask.png`` (class indices,
read back with ``np.array(PIL.Image.open(...))``) and ``NAME_overlay.png``
(the image blended with the class colours, plus a legend naming the
classes present) into the output folder. Unreadable images of a folder
are skipped, listed at the end, and make the exit status 1.

Example:
    keras-segformer predict --model hf-b0-ade/ --input photos/ \\
        --output out/ --palette ade20k
    keras-segformer predict --model city.keras --input frankfurt.png \\
        --output out/ --slide --crop-size 1024 1024 --stride 768 768
"""

import os
import sys

import numpy as np

from keras_segformer.cli.common import (
    add_model_arguments,
    image_size,
    int_at_least,
    output_folder,
    positive_float,
)
from keras_segformer.decode import IMAGE_EXTENSIONS

PALETTES = ("auto", "ade20k", "cityscapes")


def add_parser(subparsers):
    """Register ``predict`` (see ``keras_segformer.cli``)."""
    parser = subparsers.add_parser(
        "predict",
        help="segment images and write masks and overlays",
        description=(
            "Segment an image or every image of a folder. Writes "
            "NAME_mask.png (class indices) and NAME_overlay.png (colours "
            "and a legend) per image."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--input", required=True, help="an image file or a folder of images"
    )
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument(
        "--slide",
        action="store_true",
        help="sliding-window inference (needs --crop-size)",
    )
    parser.add_argument(
        "--crop-size", nargs=2, type=image_size, metavar=("H", "W")
    )
    parser.add_argument(
        "--stride",
        nargs=2,
        type=int_at_least(1),
        metavar=("H", "W"),
        help="window step (default: --crop-size)",
    )
    parser.add_argument(
        "--scales",
        nargs="+",
        type=positive_float,
        default=[1.0],
        help="test-time scales, e.g. 0.5 0.75 1.0 1.25 1.5 1.75",
    )
    parser.add_argument(
        "--flip", action="store_true", help="also run mirrored images"
    )
    parser.add_argument(
        "--palette",
        default="auto",
        choices=PALETTES,
        help="colours: auto picks ADE20K or Cityscapes when the model's "
        "classes are those, else distinct generated colours",
    )
    parser.add_argument("--batch-size", type=int_at_least(1), default=4)
    parser.set_defaults(func=run)
    return parser


def list_images(path):
    """The image files to segment: ``path`` itself or a folder's images.

    Args:
        path: str. An image file or a folder (not searched recursively).

    Returns:
        sorted list of file paths.
    """
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Input not found: {path!r}")
    files = sorted(
        os.path.join(path, name)
        for name in os.listdir(path)
        if name.lower().endswith(IMAGE_EXTENSIONS)
        and not name.startswith(".")
        and os.path.isfile(os.path.join(path, name))
    )
    if not files:
        raise ValueError(
            f"No images in {path!r} (extensions {IMAGE_EXTENSIONS})."
        )
    return files


def _output_stems(files):
    # NAME for NAME.ext; NAME_ext where two inputs share a NAME.
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    counts = {s: stems.count(s) for s in stems}
    return [
        s if counts[s] == 1 else os.path.basename(f).replace(".", "_")
        for s, f in zip(stems, files)
    ]


def _matches(names, reference):
    return len(names) == len(reference) and all(
        str(a).strip().lower() == str(b).strip().lower()
        for a, b in zip(names, reference)
    )


def resolve_palette(spec, model):
    """Palette and class names for the overlays.

    Args:
        spec: str. ``"auto"``, ``"ade20k"`` or ``"cityscapes"``.
        model: the model; its ``id2label`` (if any) names the classes.

    Returns:
        ``(palette, class_names)``: a ``get_palette`` spec and a list of
        names (or None).
    """
    from keras_segformer.inference import (
        generic_palette,
        get_class_names,
    )

    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if not num_classes:
        num_classes = int(model.output.shape[-1])
    id2label = getattr(model, "id2label", None)
    names = None
    if id2label:
        names = [id2label[i] for i in range(num_classes)]
    if spec == "auto":
        spec = None
        for dataset in ("ade20k", "cityscapes"):
            reference = get_class_names(dataset)
            if names is not None and _matches(names, reference):
                spec = dataset
        if spec is None:
            return generic_palette(max(num_classes, 2)), names
    if names is None:
        names = get_class_names(spec)
    return spec, names


def _read_images(paths):
    """Decode what can be decoded; ``(images, kept indices, failures)``."""
    from keras_segformer.inference import load_image

    images, kept, failed = [], [], []
    for i, path in enumerate(paths):
        try:
            images.append(load_image(path))
            kept.append(i)
        except (ValueError, OSError) as e:
            reason = str(e)
            if path not in reason:
                reason = f"{path}: {reason}"
            failed.append(reason)
    return images, kept, failed


def run(args):
    """Run ``predict`` with parsed arguments.

    An unreadable image of a folder does not stop the run: every other
    image is written, then the unreadable ones are listed on stderr and
    the exit status is 1. A single unreadable ``--input`` file is an error
    (status 2, from ``main``).

    Args:
        args: ``argparse.Namespace`` from the ``predict`` parser.

    Returns:
        int. 0, or 1 when some images could not be read.
    """
    from keras_segformer.cli.common import load_any_model
    from keras_segformer.inference import Segmenter, save_prediction

    files = list_images(args.input)
    single = os.path.isfile(args.input)
    if args.slide and args.crop_size is None:
        raise ValueError("--slide needs --crop-size H W.")
    if not args.slide and (args.crop_size or args.stride):
        raise ValueError("--crop-size and --stride are used with --slide.")
    output_folder(args.output, "--output")
    model = load_any_model(
        args.model, variant=args.variant, num_classes=args.num_classes
    )
    segmenter = Segmenter(
        model,
        mode="slide" if args.slide else "whole",
        crop_size=args.crop_size,
        stride=args.stride,
        scales=args.scales,
        flip=args.flip,
        batch_size=args.batch_size,
    )
    palette, class_names = resolve_palette(args.palette, model)
    progress = None
    if len(files) > 1:
        import keras

        progress = keras.utils.Progbar(len(files), unit_name="image")
    stems = _output_stems(files)
    failed = []
    written = 0
    for start in range(0, len(files), args.batch_size):
        chunk = files[start : start + args.batch_size]
        if single:
            from keras_segformer.inference import load_image

            images, kept = [load_image(chunk[0])], [0]
        else:
            images, kept, unreadable = _read_images(chunk)
            failed += unreadable
        if images:
            masks = segmenter.predict_mask(images)
            for image, mask, i in zip(images, masks, kept):
                save_prediction(
                    image,
                    np.asarray(mask),
                    args.output,
                    stems[start + i],
                    palette,
                    class_names,
                )
                written += 1
        if progress is not None:
            progress.add(len(chunk))
    print(f"Wrote {2 * written} files to {args.output}")
    if failed:
        print(
            f"keras-segformer predict: {len(failed)} of {len(files)} "
            "images could not be read (no output for them):",
            file=sys.stderr,
        )
        for reason in failed:
            print(f"  {reason}", file=sys.stderr)
        return 1
    return 0
