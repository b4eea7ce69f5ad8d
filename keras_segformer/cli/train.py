"""``keras-segformer train``: fit a SegFormer on image/mask folders."""

import argparse
import os
import sys
import warnings

from keras_segformer.cli.common import (
    add_batch_size,
    add_data_folders,
    add_labels,
    add_num_classes,
    add_reduce_labels,
    add_schedule,
    add_seed,
    add_size,
    add_variant,
    int_at_least,
    output_folder,
    size_pair,
    size_value,
)
from keras_segformer.errors import plural

# The recipe's warmup (mmseg's 1500 iterations), for runs long enough.
WARMUP_STEPS = 1500


def add_parser(subparsers):
    p = subparsers.add_parser(
        "train",
        help="train a SegFormer on image/mask folders (resumable)",
        description=(
            "Train with the SegFormer recipe (AdamW, head lr x10, poly "
            "schedule with warmup, mmseg augmentation). Writes run.json, "
            "log.csv, tensorboard/, checkpoints/ every epoch and model.keras "
            "to --out, each file complete or not at all; run again with the "
            "same --out to resume after a kill (a finished run is left as it "
            "is; --overwrite starts afresh)."
        ),
    )
    _add_model_arguments(p)
    _add_loop_arguments(p)
    _add_recipe_arguments(p)
    _add_output_arguments(p)
    p.set_defaults(func=run)


def _add_model_arguments(p):
    """Model, data folders and the starting point."""
    add_variant(p, "its size", default="b0")
    add_num_classes(p, "classes of the masks", required=True)
    add_data_folders(p, "training")
    p.add_argument(
        "--val-images",
        help="folder of validation images, scored after every epoch "
        "(default: none)",
    )
    p.add_argument(
        "--val-masks",
        help="folder of their masks (with --val-images; default: none)",
    )
    p.add_argument(
        "--init",
        help=(
            "start from a .keras model, a .weights.h5 file or a transformers "
            "directory (backbone only when the class count differs); not "
            "read when the run resumes (default: random weights)"
        ),
    )


def _add_loop_arguments(p):
    """Epochs, steps, batch size and devices."""
    add_schedule(
        p,
        epochs=10,
        lr=6e-5,
        more={
            "--epochs": "; more than a finished run in --out had continues it",
            "--steps": " (default: one pass over the training images)",
        },
    )
    add_batch_size(p, "global batch size, split over --devices", 8)
    p.add_argument(
        "--devices",
        type=_devices,
        help=(
            "data-parallel training on N devices of this host, or 'all' "
            "(TensorFlow: MirroredStrategy; JAX: DataParallel, also TPU "
            "cores; not on PyTorch). Default: one device. Several machines: "
            "no flag, the cluster comes from TF_CONFIG, KERAS_DISTRIBUTION_* "
            "or SLURM (see the README)"
        ),
    )


def _add_recipe_arguments(p):
    """Crop, rescale box, warmup and label reduction."""
    add_size(p, "--crop-size", "training crop", default=[512])
    p.add_argument(
        "--base-size",
        type=int_at_least(1),
        nargs=2,
        default=[2048, 512],
        metavar=("LONG", "SHORT"),
        help="rescale box before the random 0.5-2.0 ratio (mmseg img_scale)",
    )
    p.add_argument(
        "--warmup-steps",
        type=int_at_least(0),
        help=(
            f"steps of linear warmup, at most half of all steps (default: "
            f"{WARMUP_STEPS}, cut to that half; a value given is cut with a "
            "warning)"
        ),
    )
    add_reduce_labels(p)


def _add_output_arguments(p):
    """Class names, seed and the output folder."""
    add_labels(p, "kept in the model (default: none)")
    add_seed(p)
    p.add_argument(
        "--out",
        required=True,
        help="output folder: run.json, log.csv, checkpoints, model.keras",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=(
            "start afresh: remove the files the run in --out wrote "
            "(run.json, model.keras, log.csv, its checkpoints, backup and "
            "tensorboard files), nothing else; a folder that never held a "
            "run is refused"
        ),
    )


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


def _init_model(args, id2label, resume=False):
    """Build the model and start it from ``--init`` when given (and the
    run does not ``resume``: its own weights come back then).

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
    if resume:
        print(f"init: {args.init} not read, the run resumes")
        return model
    if args.init.endswith((".keras", ".weights.h5")):
        weights = {}  # what a bare weights file needs to be read
        if args.init.endswith(".weights.h5"):
            weights = {"variant": args.variant, "num_classes": args.num_classes}
        source = load_any_model(args.init, **weights)
        _check_init_encoder(args, source, model)
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


def _check_init_encoder(args, source, model):
    """Refuse an ``--init`` model whose encoder is another variant's, in
    one line naming both (Keras' own error names a weight shape only)."""
    from keras_segformer.configs import VARIANTS

    src = getattr(source, "backbone", source)
    keys = ("depths", "hidden_sizes")
    theirs = {k: list(getattr(src, k, None) or []) for k in keys}
    ours = {k: list(getattr(model.backbone, k)) for k in keys}
    if not all(theirs.values()) or theirs == ours:
        return
    name = next(
        (
            f"a SegFormer-{v.upper()} model"
            for v, row in VARIANTS.items()
            if all(list(row.get(k, [])) == theirs[k] for k in keys)
        ),
        "a model of another size",
    )

    def shown(config):
        return ", ".join(f"{k} {v}" for k, v in config.items())

    raise ValueError(
        f"--init {args.init} is {name} ({shown(theirs)}); --variant "
        f"{args.variant} has {shown(ours)}: pass the --variant of the "
        "--init model, or an --init of this variant."
    )


def run(args):
    from keras_segformer.training import distribution_scope
    from keras_segformer.training.cluster import WorkerLostError, cluster
    from keras_segformer.training.distribute import check_batch_size

    found = cluster()  # TF_CONFIG, KERAS_DISTRIBUTION_* ...: all workers
    if found is not None:
        if args.devices not in (None, "all"):
            raise ValueError(
                f"--devices: {found.source} describes a cluster, whose "
                "workers each train on all their devices; drop --devices "
                f"(got {args.devices})."
            )
        # First of all: before any other TF op or JAX computation.
        with distribution_scope() as replicas:
            check_batch_size(
                args.batch_size, replicas.num_replicas, "--batch-size"
            )
            try:
                return _train(args, replicas)
            except WorkerLostError as e:
                if found.backend != "jax":
                    raise
                # JAX's exit waits for every process at a barrier that
                # fails, and aborts: leave now with the message.
                print(f"keras-segformer train: error: {e}", file=sys.stderr)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(e.exit_status)
    if args.devices is None:
        return _train(args)
    devices = None if args.devices == "all" else args.devices
    with distribution_scope(devices) as replicas:
        print(
            "data-parallel training on "
            f"{plural(replicas.num_replicas, 'device')}: "
            + ", ".join(replicas.devices)
        )
        check_batch_size(args.batch_size, replicas.num_replicas, "--batch-size")
        return _train(args)


def _settings(args, steps, id2label):
    """The flags that define a run, recorded in ``run.json`` and compared
    when the run is started again (``--init`` and ``--devices`` may change
    between restarts; the data folders are compared as real paths, the
    class names by value)."""

    def folder(path):
        return None if path is None else os.path.realpath(path)

    names = (
        None if id2label is None else [id2label[i] for i in sorted(id2label)]
    )
    return {
        "--images": folder(args.images),
        "--masks": folder(args.masks),
        "--val-images": folder(args.val_images),
        "--val-masks": folder(args.val_masks),
        "--labels": names,
        "--variant": args.variant,
        "--num-classes": args.num_classes,
        "--crop-size": args.crop_size,
        "--base-size": args.base_size,
        "--batch-size": args.batch_size,
        "--steps": steps,
        "--lr": args.lr,
        "--warmup-steps": args.warmup_steps,
        "--reduce-labels": args.reduce_labels,
        "--seed": args.seed,
    }


def _train(args, replicas=None):
    from keras_segformer.cli.common import read_class_names
    from keras_segformer.cli.tf_logs import data_error_logs_dropped
    from keras_segformer.data.loading import resolve_pairs
    from keras_segformer.training import trainer

    output_folder(args.out)
    given_warmup = args.warmup_steps is not None
    if not given_warmup:  # recorded as before: 1500
        args.warmup_steps = WARMUP_STEPS
    id2label = read_class_names(args.labels, args.num_classes)
    _check_folders(args)
    images, masks = resolve_pairs(args.images, args.masks)
    steps = args.steps
    if steps is None:
        steps = max(1, len(images) // args.batch_size)
    settings = _settings(args, steps, id2label)
    resume = False
    if args.overwrite:
        from keras_segformer.training.run_files import check_overwrite

        # Refused before anything is built: not a run's files.
        check_overwrite(args.out, settings)
    else:
        # Before anything is built: a finished run is a quick no-op.
        status = trainer.check_run(
            args.out, epochs=args.epochs, settings=settings
        )
        if status.finished:
            print(status.message())
            return 0
        resume = status.source is not None
    warmup = _warmup_steps(args, steps, warn=given_warmup)
    if args.lr == 0:
        warnings.warn(
            "--lr 0: the weights will not change (no training).",
            stacklevel=2,
        )
    _check_memory(args, replicas)  # before any data is read or built
    train_ds, val_ds = _datasets(args, (images, masks), replicas)
    model = _init_model(args, id2label, resume=resume)
    with data_error_logs_dropped():  # the error's one line, not TF's logs
        trainer.fit(
            model,
            train_ds,
            out_dir=args.out,
            epochs=args.epochs,
            steps_per_epoch=steps,
            validation_data=val_ds,
            learning_rate=args.lr,
            warmup_steps=warmup,
            overwrite=args.overwrite,
            settings=settings,
        )
    if replicas is None or replicas.cluster.chief:
        print(f"saved {os.path.join(args.out, trainer.FINAL_MODEL)}")
    return 0


def _check_folders(args):
    """Refuse a data flag that names a file or nothing, naming the flag."""
    flags = ("--images", "--masks", "--val-images", "--val-masks")
    for flag in flags:
        path = getattr(args, flag[2:].replace("-", "_"))
        if path is None or os.path.isdir(path):
            continue
        if os.path.exists(path):
            raise ValueError(f"{flag} {path} is a file, not a folder.")
        raise ValueError(f"{flag}: the folder {path} does not exist.")


def _warmup_steps(args, steps, warn=True):
    """``--warmup-steps``, at most half of all steps (as its help says),
    with a warning when a value given (``warn``) is cut."""
    total = args.epochs * steps
    limit = total // 2
    if args.warmup_steps <= limit or not warn:
        return min(args.warmup_steps, limit)
    warnings.warn(
        f"--warmup-steps {args.warmup_steps} is more than half of the run's "
        f"{plural(total, 'step')}: {limit} warmup steps used.",
        stacklevel=2,
    )
    return limit


def _check_memory(args, replicas=None):
    """Refuse a ``--crop-size`` and ``--batch-size`` whose training step
    needs more memory than this machine has available
    (``memory.training_bytes``), where the model runs on its CPUs (an
    accelerator's memory is its own: it says when it is full)."""
    from keras_segformer import memory
    from keras_segformer.configs import variant_config
    from keras_segformer.training import cluster as cluster_lib

    if not memory.runs_on_host():
        return
    found = replicas.cluster if replicas is not None else None
    batch = cluster_lib.input_batch_size(args.batch_size, found)
    crop = size_pair(args.crop_size)
    config = variant_config(args.variant)
    memory.check_fits(
        memory.training_bytes(config, args.num_classes, crop, batch),
        f"--crop-size {crop[0]} {crop[1]} with --batch-size {batch} "
        f"(a training step of SegFormer-{args.variant.upper()})",
        "use a smaller --crop-size or --batch-size",
    )


def _datasets(args, train_pairs, replicas=None):
    """The training and validation pipelines. In a cluster (``replicas``
    of several workers) each worker reads its own shard of the training
    files; the validation set is scored once over all workers (JAX: each
    process its shard, padded to one length with blank samples)."""
    from keras_segformer.data import make_dataset
    from keras_segformer.data.loading import resolve_pairs
    from keras_segformer.training import cluster as cluster_lib

    found = replicas.cluster if replicas is not None else None
    common = dict(
        num_classes=args.num_classes,
        reduce_labels=args.reduce_labels,
        seed=args.seed,
    )
    train_ds = make_dataset(
        *(cluster_lib.shard(pairs, found) for pairs in train_pairs),
        batch_size=cluster_lib.input_batch_size(args.batch_size, found),
        training=True,
        crop_size=size_value(args.crop_size),
        base_size=tuple(args.base_size),
        repeat=True,
        **common,
    )
    if found is not None:
        train_ds = cluster_lib.worker_dataset(train_ds, 0, 0)
    if not (args.val_images or args.val_masks):
        return train_ds, None
    if not (args.val_images and args.val_masks):
        raise ValueError("Pass both --val-images and --val-masks.")
    if found is None or found.backend == "tensorflow":
        # TensorFlow: every worker holds the whole set, the strategy
        # shares its batches out (one sample per device and step); a
        # shard per worker would trace other steps on each worker, and
        # their collectives would no longer pair up.
        batch = 1 if found is None else replicas.num_replicas
        val = make_dataset(
            args.val_images,
            args.val_masks,
            batch_size=batch,
            training=False,
            **common,
        )
        return train_ds, val
    images, masks = resolve_pairs(args.val_images, args.val_masks)
    most = -(-len(images) // found.workers)  # the first shard's length
    images = cluster_lib.shard(images, found)
    masks = cluster_lib.shard(masks, found)
    # One sample per device and step.
    batch = cluster_lib.input_batch_size(replicas.num_replicas, found)
    val = make_dataset(
        images, masks, batch_size=batch, training=False, **common
    )
    return train_ds, cluster_lib.worker_dataset(val, len(images), most)
