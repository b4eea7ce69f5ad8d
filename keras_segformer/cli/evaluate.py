"""``keras-segformer evaluate``: mIoU, mAcc, aAcc and per-class IoU."""

from keras_segformer.cli.common import (
    add_data_folders,
    add_model_arguments,
    add_reduce_labels,
    image_size,
)


def add_parser(subparsers):
    """Register ``evaluate`` (see ``keras_segformer.cli``)."""
    p = subparsers.add_parser(
        "evaluate",
        help="score a model on image/mask folders (mIoU, mAcc, aAcc)",
        description=(
            "Score a model on a folder of images and their masks: mean IoU "
            "over the classes (mIoU), mean class accuracy (mAcc), pixel "
            "accuracy (aAcc) and the IoU of every class, as mmseg computes "
            "them (pixels labelled 255 are ignored). Whole images, one at a "
            "time."
        ),
    )
    add_model_arguments(p)
    add_data_folders(p, "evaluation")
    add_reduce_labels(p)
    p.add_argument(
        "--eval-size",
        type=image_size,
        help="resize so the short side is this (default: whole images)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def check_memory(model, args):
    """Refuse, before any image is decoded, images (at ``--eval-size``)
    that need more memory than is available (``memory.inference_bytes``),
    naming the largest and the flag."""
    from keras_segformer import memory
    from keras_segformer.data import loading

    dims = memory.model_dims(model)
    if memory.available_memory() is None or dims is None:
        return
    images, _ = loading.resolve_pairs(args.images, args.masks)
    largest = None
    for path in images:
        try:
            height, width = loading._image_header(path)
        except ValueError:
            continue  # said where the image is read
        if args.eval_size is not None:
            factor = args.eval_size / min(height, width)
            height, width = round(height * factor), round(width * factor)
        if largest is None or height * width > largest[1] * largest[2]:
            largest = (path, height, width)
    if largest is None:
        return
    path, height, width = largest
    need = memory.inference_bytes(
        dims,
        (height, width),
        [(height, width)],
        flip=False,
        crop_size=None,
        batch_size=1,
    )
    size = "" if args.eval_size is None else f"--eval-size {args.eval_size}: "
    memory.check_fits(
        need,
        f"{size}{path} evaluated at {width}x{height}",
        "pass a smaller --eval-size",
    )


def run(args):
    from keras_segformer.cli.common import load_any_model
    from keras_segformer.cli.tf_logs import data_error_logs_dropped
    from keras_segformer.data import make_dataset
    from keras_segformer.training import trainer

    model = load_any_model(
        args.model, variant=args.variant, num_classes=args.num_classes
    )
    check_memory(model, args)
    dataset = make_dataset(
        args.images,
        args.masks,
        batch_size=1,
        training=False,
        num_classes=model.num_classes,
        reduce_labels=args.reduce_labels,
        eval_size=args.eval_size,
    )
    with data_error_logs_dropped():  # a data error's one line, not TF's
        scores = trainer.evaluate(model, dataset, verbose=not args.json)
    if args.json:
        print(trainer.dump_scores({k: v for k, v in scores.items()}))
    else:
        print(scores["report"])
    return 0
