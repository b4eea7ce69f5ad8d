"""``keras-segformer predict``: masks and overlays for images or a folder.

For each image ``NAME.ext`` it writes ``NAME_mask.png`` (class indices,
read back with ``np.array(PIL.Image.open(...))``) and ``NAME_overlay.png``
(the image blended with the class colours, plus a legend naming the
classes present) into the output folder. Unreadable images of a folder
are skipped, listed at the end, and make the exit status 1.

Outputs are written atomically and never replace a file ``predict`` did
not write (an input, a mask beside its image, a link): such a name is
refused before the model is loaded. Two inputs never share output names
(``a.png`` and ``a.jpg`` give ``a_png_mask.png`` and ``a_jpg_mask.png``),
and the masks and overlays of an earlier run into the input folder are
not read as images.

Example:
    keras-segformer predict --model hf-b0-ade/ --input photos/ \\
        --output out/ --palette ade20k
    keras-segformer predict --model city.keras --input frankfurt.png \\
        --output out/ --slide --crop-size 1024 1024 --stride 768 768
"""

import os
import sys

import numpy as np

from keras_segformer import memory
from keras_segformer.classes import SHAPES_CLASSES, SHAPES_PALETTE
from keras_segformer.cli.common import (
    add_batch_size,
    add_model_arguments,
    add_size,
    int_at_least,
    output_folder,
    positive_float,
    size_pair,
    size_value,
)
from keras_segformer.decode import IMAGE_EXTENSIONS
from keras_segformer.errors import plural
from keras_segformer.memory import inference_bytes, model_dims

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
    parser.add_argument(
        "--output",
        required=True,
        help="output folder for NAME_mask.png and NAME_overlay.png",
    )
    parser.add_argument(
        "--slide",
        action="store_true",
        help="sliding-window inference (needs --crop-size; default: the "
        "whole image in one call)",
    )
    add_size(
        parser, "--crop-size", "window size, needed by --slide", unset="none"
    )
    add_size(
        parser,
        "--stride",
        "window step",
        type=int_at_least(1),
        unset="--crop-size",
    )
    parser.add_argument(
        "--scales",
        nargs="+",
        type=positive_float,
        default=[1.0],
        help="test-time scales, e.g. 0.5 0.75 1.0 1.25 1.5 1.75",
    )
    parser.add_argument(
        "--flip",
        action="store_true",
        help="also run mirrored images (test-time augmentation)",
    )
    parser.add_argument(
        "--palette",
        default="auto",
        choices=PALETTES,
        help="overlay colours: auto takes the colours of the classes the "
        "model names (ADE20K, Cityscapes, the demo's shapes), else distinct "
        "generated colours",
    )
    add_batch_size(parser, "images per model call", 4)
    parser.set_defaults(func=run)
    return parser


def list_images(path):
    """The image files to segment: ``path`` itself or a folder's images.

    Args:
        path: str. An image file or a folder (not searched recursively;
            the masks and overlays ``predict`` wrote there are left out).

    Returns:
        sorted list of file paths.
    """
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Input not found: {path!r}")
    # Masks and overlays of an earlier predict into this folder are its
    # outputs, never its inputs.
    files = sorted(
        os.path.join(path, name)
        for name in os.listdir(path)
        if name.lower().endswith(IMAGE_EXTENSIONS)
        and not name.startswith(".")
        and os.path.isfile(os.path.join(path, name))
        and not _is_output(os.path.join(path, name))
    )
    if not files:
        raise ValueError(
            f"No images in {path!r} (extensions {IMAGE_EXTENSIONS})."
        )
    return files


def _output_stems(files):
    """One output stem per input, never the same twice (case ignored, as
    some file systems do): NAME for NAME.ext; NAME_ext where two inputs
    share a NAME; a number appended where that still collides."""
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    counts = {}
    for stem in stems:
        counts[stem.lower()] = counts.get(stem.lower(), 0) + 1
    chosen = [
        s if counts[s.lower()] == 1 else os.path.basename(f).replace(".", "_")
        for s, f in zip(stems, files)
    ]
    taken, unique = set(), []
    for stem in chosen:
        candidate, n = stem, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}_{n}"
        taken.add(candidate.lower())
        unique.append(candidate)
    return unique


def output_paths(output, stem):
    """``(mask, overlay)`` paths ``predict`` writes for ``stem``."""
    return tuple(
        os.path.join(output, f"{stem}_{kind}.png")
        for kind in ("mask", "overlay")
    )


def _is_output(path):
    """Whether ``path`` is a mask or overlay that this package wrote (an
    output of an earlier ``predict``, not an input)."""
    from keras_segformer.inference.visualize import written_here

    name = os.path.basename(path).lower()
    return name.endswith(("_mask.png", "_overlay.png")) and written_here(path)


def check_outputs(files, output, stems):
    """Refuse, before any work, to replace a file ``predict`` did not write.

    Every output name is new, or a mask or overlay this package wrote
    earlier (``written_here``); an input, a ground-truth mask beside its
    image, a link or any other file is never replaced.

    Raises:
        ValueError: naming the first such file and the input it belongs
            to.
    """
    from keras_segformer.inference.visualize import written_here

    inputs = {os.path.realpath(f) for f in files}
    for path, stem in zip(files, stems):
        for out in output_paths(output, stem):
            if not os.path.lexists(out) or written_here(out):
                continue
            if os.path.realpath(out) in inputs:
                what = "is an input image"
            elif os.path.islink(out):
                what = "is a link"
            else:
                what = "exists and was not written by predict"
            raise ValueError(
                f"--output {output}: {out} (the output for {path}) {what}; "
                "predict never replaces a file it did not write. Choose "
                "another --output."
            )


def _header_size(path):
    """``(width, height)`` from an image file's header (no pixels
    decoded), or None where it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError):
        return None


def header_sizes(files):
    """``(width, height)`` of each file from its header, None where it
    cannot be read (said where the image is read)."""
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        return [_header_size(path) for path in files]
    finally:
        # PIL's own bound stays for decoding; an image past it is refused
        # by check_memory, with its size, if it cannot fit.
        Image.MAX_IMAGE_PIXELS = limit


def check_sizes(files, sizes, segmenter):
    """Refuse, before the model runs, an image that one of ``--scales``
    makes smaller than the model takes: one line naming the file, its
    size and the smallest the model takes (the Segmenter's own error
    names neither the file nor the flag)."""
    from keras_segformer.inference.processing import resolve_size

    s, least = segmenter, segmenter.min_input_size
    if least is None or (s.mode == "slide" and s.pad_to_crop):
        return  # slide windows are padded to the crop size
    for path, size in zip(files, sizes):
        for scale in s.scales if size is not None else ():
            width, height = size
            h, w = resolve_size(
                height, width, s.size, scale, s.max_size, s.size_divisor
            )
            if min(h, w) >= least:
                continue
            view = f" (--scales {scale:g} makes it {w}x{h})"
            raise ValueError(
                f"{path} is {width}x{height} pixels"
                f"{view if (h, w) != (height, width) else ''}: the model "
                f"takes images of at least {least}x{least} pixels. Enlarge "
                "it" + (", or use larger --scales." if scale < 1 else ".")
            )


def check_memory(files, model, args, sizes=None):
    """Refuse, before any image is decoded, an image and ``--scales`` that
    need more memory than is available (``memory.inference_bytes``),
    naming the flag and ``--slide``. ``sizes``: ``header_sizes(files)``."""
    dims = model_dims(model)
    if memory.available_memory() is None or dims is None:
        return
    if sizes is None:
        sizes = header_sizes(files)
    crop = size_pair(args.crop_size) if args.slide else None
    scales = " ".join(f"{s:g}" for s in args.scales)
    hint = (
        "smaller --crop-size / --batch-size"
        if args.slide
        else "--slide --crop-size 512 512 (windows bound the memory)"
    )
    for path, size in zip(files, sizes):
        if size is None:
            continue  # said where the image is read
        width, height = size
        need = inference_bytes(
            dims,
            (height, width),
            [(height * s, width * s) for s in args.scales],
            flip=args.flip,
            crop_size=crop,
            batch_size=args.batch_size,
        )
        memory.check_fits(
            need,
            f"--scales {scales} on {path} ({width}x{height})",
            f"use smaller --scales, or {hint}",
        )


def _matches(names, reference):
    return len(names) == len(reference) and all(
        str(a).strip().lower() == str(b).strip().lower()
        for a, b in zip(names, reference)
    )


def resolve_palette(spec, model):
    """Palette and class names for the overlays.

    ``"auto"`` takes the colours of the classes the model names: ADE20K's,
    Cityscapes' or (a model of ``keras-segformer demo``) the generated
    shapes'; distinct generated colours for other classes.

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
        if names is not None and _matches(names, SHAPES_CLASSES[:num_classes]):
            # The demo's model: the colours its data was drawn in.
            return SHAPES_PALETTE[:num_classes], names
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
        raise ValueError("--slide needs --crop-size (one size or H W).")
    if not args.slide and (args.crop_size or args.stride):
        raise ValueError("--crop-size and --stride are used with --slide.")
    output_folder(args.output, "--output")
    stems = _output_stems(files)
    check_outputs(files, args.output, stems)
    model = load_any_model(
        args.model, variant=args.variant, num_classes=args.num_classes
    )
    sizes = header_sizes(files)
    check_memory(files, model, args, sizes)
    segmenter = Segmenter(
        model,
        mode="slide" if args.slide else "whole",
        crop_size=size_value(args.crop_size),
        stride=size_value(args.stride),
        scales=args.scales,
        flip=args.flip,
        batch_size=args.batch_size,
    )
    check_sizes(files, sizes, segmenter)
    palette, class_names = resolve_palette(args.palette, model)
    progress = None
    if len(files) > 1:
        import keras

        progress = keras.utils.Progbar(len(files), unit_name="image")
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
    print(f"Wrote {plural(2 * written, 'file')} to {args.output}")
    if failed:
        print(
            f"keras-segformer predict: {len(failed)} of "
            f"{plural(len(files), 'image')} could not be read (no output "
            "for them):",
            file=sys.stderr,
        )
        for reason in failed:
            print(f"  {reason}", file=sys.stderr)
        return 1
    return 0
