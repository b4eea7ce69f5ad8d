"""``keras-segformer train``: fit a SegFormer on image/mask folders."""

import argparse
import os


def add_parser(subparsers):
    p = subparsers.add_parser(
        "train",
        help="train a SegFormer on image/mask folders (resumable)",
        description=(
            "Train with the SegFormer recipe (AdamW, head lr x10, poly "
            "schedule with warmup, mmseg augmentation). Writes log.csv, "
            "tensorboard/, checkpoints/ every epoch and model.keras to --out; "
            "run again with the same --out to resume after a kill."
        ),
    )
    p.add_argument("--variant", default="b0", help="b0 ... b5 (default b0)")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--images", required=True, help="training image folder")
    p.add_argument("--masks", required=True, help="training mask folder")
    p.add_argument("--val-images", help="validation image folder")
    p.add_argument("--val-masks", help="validation mask folder")
    p.add_argument(
        "--init",
        help=(
            "start from a .keras model, a .weights.h5 file or a transformers "
            "directory (backbone only when the class count differs)"
        ),
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument(
        "--steps",
        type=int,
        help="steps per epoch (default: one pass over the training images)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="global batch size, split over --devices (default 8)",
    )
    p.add_argument(
        "--devices",
        type=_devices,
        help=(
            "data-parallel training on N devices of this host, or 'all' "
            "(TensorFlow: MirroredStrategy; JAX: DataParallel, also TPU "
            "cores; not on PyTorch). Default: one device"
        ),
    )
    p.add_argument("--crop-size", type=int, nargs="+", default=[512])
    p.add_argument(
        "--base-size",
        type=int,
        nargs=2,
        default=[2048, 512],
        help="rescale box before the random 0.5-2.0 ratio (mmseg img_scale)",
    )
    p.add_argument("--lr", type=float, default=6e-5, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=1500)
    p.add_argument("--reduce-labels", action="store_true")
    p.add_argument("--labels", help="class names: ade20k, cityscapes or JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def _devices(text):
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive int or 'all', got {text!r}"
        )
    return value


def _init_model(args, id2label):
    """Build the model and start it from ``--init`` when given.

    ``.keras`` / ``.weights.h5`` models of the same variant give all their
    weights (only the encoder when the class count differs); checkpoint
    files and transformers directories (any format ``convert`` reads) load
    strictly, falling back to the encoder alone when the head does not fit
    (a different class count, or an ImageNet MiT classifier).
    """
    import keras_segformer
    from keras_segformer.cli.common import load_any_model
    from keras_segformer.convert import CheckpointError, load_weights

    model = keras_segformer.build_segformer(
        args.num_classes, args.variant, id2label=id2label
    )
    if args.init is None:
        return model
    if args.init.endswith((".keras", ".weights.h5")):
        source = load_any_model(
            args.init, variant=args.variant, num_classes=args.num_classes
        )
        if getattr(source, "num_classes", None) == args.num_classes:
            model.set_weights(source.get_weights())
            print(f"init: all weights from {args.init}")
        else:
            src = getattr(source, "backbone", source)
            model.backbone.set_weights(src.get_weights())
            print(f"init: encoder weights from {args.init}, new head")
        return model
    try:
        report = load_weights(model, args.init)
        print(f"init: all weights from {args.init}")
    except CheckpointError as full_error:
        try:
            report = load_weights(model, args.init, backbone_only=True)
        except CheckpointError:
            raise full_error from None
        print(f"init: encoder weights from {args.init}, new head")
    print(report)
    return model


def run(args):
    from keras_segformer.training import distribution_scope
    from keras_segformer.training.distribute import check_batch_size

    if args.devices is None:
        return _train(args)
    devices = None if args.devices == "all" else args.devices
    with distribution_scope(devices) as replicas:
        print(
            f"data-parallel training on {replicas.num_replicas} devices: "
            + ", ".join(replicas.devices)
        )
        check_batch_size(args.batch_size, replicas.num_replicas, "--batch-size")
        return _train(args)


def _train(args):
    from keras_segformer.cli.common import read_class_names
    from keras_segformer.data import make_dataset
    from keras_segformer.data.loading import resolve_pairs
    from keras_segformer.training import trainer

    id2label = read_class_names(args.labels, args.num_classes)
    images, _ = resolve_pairs(args.images, args.masks)
    steps = args.steps or max(1, len(images) // args.batch_size)
    common = dict(
        num_classes=args.num_classes,
        reduce_labels=args.reduce_labels,
        seed=args.seed,
    )
    train_ds = make_dataset(
        args.images,
        args.masks,
        batch_size=args.batch_size,
        training=True,
        crop_size=args.crop_size[0]
        if len(args.crop_size) == 1
        else tuple(args.crop_size),
        base_size=tuple(args.base_size),
        repeat=True,
        **common,
    )
    val_ds = None
    if args.val_images or args.val_masks:
        if not (args.val_images and args.val_masks):
            raise ValueError("Pass both --val-images and --val-masks.")
        val_ds = make_dataset(
            args.val_images,
            args.val_masks,
            batch_size=1,
            training=False,
            **common,
        )
    model = _init_model(args, id2label)
    trainer.fit(
        model,
        train_ds,
        out_dir=args.out,
        epochs=args.epochs,
        steps_per_epoch=steps,
        validation_data=val_ds,
        learning_rate=args.lr,
        warmup_steps=min(args.warmup_steps, args.epochs * steps // 2),
    )
    print(f"saved {os.path.join(args.out, trainer.FINAL_MODEL)}")
    return 0
