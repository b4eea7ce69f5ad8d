"""``keras-segformer evaluate``: mIoU, mAcc, aAcc and per-class IoU."""

from keras_segformer.cli.common import add_model_arguments


def add_parser(subparsers):
    p = subparsers.add_parser(
        "evaluate",
        help="score a model on image/mask folders (mIoU, mAcc, aAcc)",
    )
    add_model_arguments(p)
    p.add_argument("--images", required=True)
    p.add_argument("--masks", required=True)
    p.add_argument("--reduce-labels", action="store_true")
    p.add_argument(
        "--eval-size",
        type=int,
        help="resize so the short side is this (default: whole images)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=run)


def run(args):
    from keras_segformer.cli.common import load_any_model
    from keras_segformer.data import make_dataset
    from keras_segformer.training import trainer

    model = load_any_model(
        args.model, variant=args.variant, num_classes=args.num_classes
    )
    dataset = make_dataset(
        args.images,
        args.masks,
        batch_size=1,
        training=False,
        num_classes=model.num_classes,
        reduce_labels=args.reduce_labels,
        eval_size=args.eval_size,
    )
    scores = trainer.evaluate(model, dataset, verbose=not args.json)
    if args.json:
        print(trainer.dump_scores({k: v for k, v in scores.items()}))
    else:
        print(scores["report"])
    return 0
