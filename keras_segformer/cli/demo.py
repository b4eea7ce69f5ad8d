"""``keras-segformer demo``: the main job end to end on generated data.

Generates the built-in shapes dataset, trains SegFormer-B0 on it from
scratch, scores it on held-out images (mIoU, mAcc, aAcc, per class) and
writes prediction overlays, all under ``--out``.
"""

import os
import time
import warnings

from keras_segformer.errors import plural


def add_parser(subparsers):
    """Register ``demo`` (see ``keras_segformer.cli``)."""
    from keras_segformer.cli.common import (
        add_batch_size,
        add_num_classes,
        add_schedule,
        add_seed,
        add_variant,
        image_size,
        int_at_least,
    )

    p = subparsers.add_parser(
        "demo",
        help="train B0 on built-in generated data, report mIoU, write overlays",
        description=(
            "Generate the shapes dataset, train, score and draw overlays "
            "under --out. Run again with the same settings, it resumes or "
            "(finished) scores the trained model again; other settings are "
            "refused, naming the flag, unless --overwrite."
        ),
    )
    p.add_argument(
        "--out",
        default="demo_out",
        help="output folder: data/, train/ (the run), overlays/, summary.json",
    )
    add_variant(p, "its size", default="b0")
    add_num_classes(
        p,
        "classes of the generated data, background included (2 to 10)",
        low=2,
        default=6,
    )
    # The generated data and the overlays: flag, type, default, help.
    for flag, kind, default, text in (
        ("--size", image_size, 128, "side of the generated square images"),
        ("--num-train-images", int_at_least(1), 400, "training images"),
        ("--num-val-images", int_at_least(1), 48, "held-out images"),
        ("--overlays", int_at_least(0), 8, "held-out images drawn with masks"),
    ):
        p.add_argument(flag, type=kind, default=default, help=text)
    # From scratch (no ImageNet encoder), so 10x the fine-tuning rate.
    add_schedule(p, epochs=8, steps=50, lr=6e-4)
    add_batch_size(p, "images per step", 8)
    add_seed(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="remove the demo run in --out and start afresh",
    )
    p.set_defaults(func=run)


def _settings(args):
    """The flags that define a demo run: recorded in its run.json and
    compared before anything is written when it is started again."""
    names = ("variant", "num_classes", "size", "num_train_images")
    names += ("num_val_images", "steps", "batch_size", "lr", "seed")
    return {"--" + n.replace("_", "-"): getattr(args, n) for n in names}


def _datasets(args):
    """Generate the data; ``(train files, val files, names, train_ds,
    val_ds)``."""
    import keras

    from keras_segformer.data import make_dataset, synthetic

    files = synthetic.generate(
        os.path.join(args.out, "data"),
        num_train=args.num_train_images,
        num_val=args.num_val_images,
        size=(args.size, args.size),
        num_classes=args.num_classes,
        seed=args.seed,
    )
    names = synthetic.class_names(args.num_classes)
    train, val = files["train"], files["val"]
    print(
        f"data: {len(train.images)} train / {len(val.images)} val images "
        f"of {args.size}x{args.size}, classes {names}"
    )
    keras.utils.set_random_seed(args.seed)
    both = {"batch_size": args.batch_size, "num_classes": args.num_classes}
    train_ds = make_dataset(
        train.images,
        train.masks,
        training=True,
        crop_size=args.size,
        base_size=(2 * args.size, args.size),
        repeat=True,
        seed=args.seed,
        **both,
    )
    val_ds = make_dataset(val.images, val.masks, training=False, **both)
    return train, val, names, train_ds, val_ds


def _write_overlays(args, model, images, names):
    """Prediction overlays of ``images`` under ``--out``/overlays."""
    from keras_segformer.data import synthetic
    from keras_segformer.inference import Segmenter, save_prediction

    overlay_dir = os.path.join(args.out, "overlays")
    segmenter = Segmenter(model)
    palette = synthetic.palette(args.num_classes)
    for path, mask in zip(images, segmenter.predict_mask(images)):
        stem = os.path.splitext(os.path.basename(path))[0]
        save_prediction(
            path,
            mask,
            overlay_dir,
            stem,
            palette=palette,
            class_names=names,
        )
    return overlay_dir


def _refuse_foreign_data(out):
    """Refuse an ``--out`` whose ``data/`` holds files the generator would
    replace but did not write (no ``data/classes.json``, its record).

    ``synthetic.generate`` removes the ``train_*`` / ``val_*`` files of
    its folders before it writes a split (an earlier, larger run's would
    otherwise join it): in a folder of the user's own, their files.
    """
    data = os.path.join(out, "data")
    if os.path.lexists(os.path.join(data, "classes.json")):
        return
    for split in ("train", "val"):
        for kind in ("images", "masks"):
            folder = os.path.join(data, kind, split)
            if not os.path.isdir(folder):
                continue
            names = sorted(
                n for n in os.listdir(folder) if n.startswith(split + "_")
            )
            if names:
                raise ValueError(
                    f"--out {out}: {folder} holds {names[0]}"
                    f"{' ...' if len(names) > 1 else ''} ("
                    f"{plural(len(names), 'file')}), not data the demo "
                    f"generated (no {os.path.join(data, 'classes.json')}); "
                    "the demo would replace them. Move them, or choose "
                    "another --out."
                )


def run(args):
    import keras

    import keras_segformer
    from keras_segformer.cli.common import output_folder
    from keras_segformer.cli.tf_logs import data_error_logs_dropped
    from keras_segformer.training import trainer

    start = time.time()
    out = args.out
    output_folder(out)
    _refuse_foreign_data(out)
    settings = _settings(args)
    if not args.overwrite:
        # Before the data is generated again: a run of other settings is
        # refused while its data and model are still its own.
        trainer.check_run(
            os.path.join(out, "train"), epochs=args.epochs, settings=settings
        )
    if args.lr == 0:
        warnings.warn(
            "--lr 0: the weights will not change (no training).",
            stacklevel=2,
        )
    print(f"backend: {keras.backend.backend()}; output: {out}")
    train, val, names, train_ds, val_ds = _datasets(args)
    model = keras_segformer.build_segformer(
        args.num_classes, args.variant, id2label=dict(enumerate(names))
    )
    total = args.epochs * args.steps
    with data_error_logs_dropped():  # a data error's one line, not TF's
        trainer.fit(
            model,
            train_ds,
            out_dir=os.path.join(out, "train"),
            epochs=args.epochs,
            steps_per_epoch=args.steps,
            learning_rate=args.lr,
            warmup_steps=max(1, total // 10),
            overwrite=args.overwrite,
            settings=settings,
        )
        train_time = time.time() - start
        scores = trainer.evaluate(model, val_ds, class_names=names)
    print(scores["report"])
    shown = val.images[: args.overlays]
    overlay_dir = _write_overlays(args, model, shown, names)
    summary = {
        "backend": keras.backend.backend(),
        "variant": args.variant,
        "train_images": len(train.images),
        "val_images": len(val.images),
        "size": args.size,
        "steps": total,
        "batch_size": args.batch_size,
        "mIoU": scores["mIoU"],
        "mAcc": scores["mAcc"],
        "aAcc": scores["aAcc"],
        "IoU": scores["IoU"],
        "seconds": round(time.time() - start, 1),
        "train_seconds": round(train_time, 1),
    }
    # Atomically, like every file the train command writes.
    trainer.write_text(
        os.path.join(out, "summary.json"), trainer.dump_scores(summary)
    )
    print(
        f"\nheld-out mIoU {100 * scores['mIoU']:.1f}  mAcc "
        f"{100 * scores['mAcc']:.1f}  aAcc {100 * scores['aAcc']:.1f}  "
        f"({plural(len(val.images), 'image')}, {plural(total, 'step')}, "
        f"{summary['seconds']:.0f} s)"
    )
    print(f"model: {os.path.join(out, 'train', trainer.FINAL_MODEL)}")
    print(f"overlays: {overlay_dir}/ ({plural(len(shown), 'image')})")
    return 0
