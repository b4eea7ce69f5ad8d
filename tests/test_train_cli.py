"""Training driver, resume after a kill, and the train/evaluate/demo CLI."""

import json
import os

import keras
import numpy as np
import pytest
from conftest import tiny_segformer

from keras_segformer.cli import main
from keras_segformer.data import make_dataset, synthetic
from keras_segformer.training import trainer

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return synthetic.generate(
        root, 12, 3, size=(64, 64), num_classes=NUM_CLASSES, seed=1
    )


def _train_ds(files, seed=0):
    return make_dataset(
        files.images,
        files.masks,
        batch_size=2,
        training=True,
        crop_size=64,
        base_size=(128, 64),
        num_classes=NUM_CLASSES,
        repeat=True,
        seed=seed,
    )


class _Interrupt(keras.callbacks.Callback):
    """Kill-like failure at the start of a given epoch."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt("simulated kill")


class _Record(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.start_iterations = int(
            keras.ops.convert_to_numpy(self.model.optimizer.iterations)
        )
        self.start_weights = [w.copy() for w in self.model.get_weights()]
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_resume_after_a_kill_continues_at_the_right_step(shapes, tmp_path):
    out = tmp_path / "run"
    model = tiny_segformer(NUM_CLASSES)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(
            model,
            _train_ds(shapes["train"]),
            out_dir=out,
            epochs=3,
            steps_per_epoch=2,
            learning_rate=1e-3,
            warmup_steps=1,
            callbacks=[_Interrupt(epoch=2)],
        )
    # Two epochs (4 steps) are done and backed up; the kill lost nothing.
    saved = [w.copy() for w in model.get_weights()]
    assert (out / "backup").is_dir()
    assert sorted(os.listdir(out / "checkpoints")) == [
        "epoch-001.weights.h5",
        "epoch-002.weights.h5",
    ]

    fresh = tiny_segformer(NUM_CLASSES)  # a new process would build anew
    record = _Record()
    history = trainer.fit(
        fresh,
        _train_ds(shapes["train"]),
        out_dir=out,
        epochs=3,
        steps_per_epoch=2,
        learning_rate=1e-3,
        warmup_steps=1,
        callbacks=[record],
    )
    assert record.epochs == [2]  # only the missing epoch runs
    assert record.start_iterations == 4
    for a, b in zip(record.start_weights, saved):
        np.testing.assert_array_equal(a, b)
    assert len(history.history["loss"]) == 1
    assert int(keras.ops.convert_to_numpy(fresh.optimizer.iterations)) == 6
    assert not (out / "backup").exists()  # removed once training completed
    assert (out / "model.keras").is_file()
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3  # header + one row per epoch across restarts


def test_fit_lowers_the_loss(shapes, tmp_path):
    keras.utils.set_random_seed(0)
    model = tiny_segformer(NUM_CLASSES)
    history = trainer.fit(
        model,
        _train_ds(shapes["train"]),
        out_dir=tmp_path,
        epochs=4,
        steps_per_epoch=4,
        learning_rate=3e-3,
        warmup_steps=1,
        verbose=0,
    )
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses


def test_train_and_evaluate_commands(shapes, tmp_path, capsys):
    out = tmp_path / "cli"
    train, val = shapes["train"], shapes["val"]
    images_dir = os.path.dirname(train.images[0])
    masks_dir = os.path.dirname(train.masks[0])
    rc = main(
        [
            "train",
            "--variant",
            "b0",
            "--num-classes",
            str(NUM_CLASSES),
            "--images",
            images_dir,
            "--masks",
            masks_dir,
            "--epochs",
            "1",
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--crop-size",
            "64",
            "--base-size",
            "128",
            "64",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert (out / "model.keras").is_file()
    capsys.readouterr()
    rc = main(
        [
            "evaluate",
            "--model",
            str(out / "model.keras"),
            "--images",
            os.path.dirname(val.images[0]),
            "--masks",
            os.path.dirname(val.masks[0]),
            "--json",
        ]
    )
    assert rc == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= scores["aAcc"] <= 1.0
    assert set(scores) >= {"mIoU", "mAcc", "aAcc", "IoU", "Acc"}


def test_evaluate_scores_match_a_direct_confusion_matrix(shapes):
    model = tiny_segformer(NUM_CLASSES)
    val = shapes["val"]
    ds = make_dataset(
        val.images, val.masks, batch_size=1, training=False, num_classes=4
    )
    scores = trainer.evaluate(model, ds, verbose=False)
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES))
    for images, labels in ds.as_numpy_iterator():
        logits = keras.ops.convert_to_numpy(model.predict_on_batch(images))
        import torch

        up = torch.nn.functional.interpolate(
            torch.from_numpy(logits).permute(0, 3, 1, 2),
            size=tuple(labels.shape[1:3]),
            mode="bilinear",
            align_corners=False,
        )
        pred = up.argmax(1).numpy().ravel()
        lab = np.asarray(labels).ravel()
        keep = lab != 255
        np.add.at(cm, (lab[keep], pred[keep]), 1)
    assert scores["aAcc"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-6)


def test_train_reports_bad_input(tmp_path, capsys):
    rc = main(
        [
            "train",
            "--num-classes",
            "3",
            "--images",
            str(tmp_path / "nope"),
            "--masks",
            str(tmp_path / "nope2"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(
        [
            "demo",
            "--out",
            str(out),
            "--size",
            "64",
            "--num-train-images",
            "8",
            "--num-val-images",
            "2",
            "--epochs",
            "1",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--overlays",
            "2",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "held-out mIoU" in text
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["aAcc"] <= 1.0 and summary["steps"] == 2
    overlays = sorted(os.listdir(out / "overlays"))
    assert len([f for f in overlays if f.endswith("_overlay.png")]) == 2
    from PIL import Image

    mask = np.asarray(Image.open(out / "overlays" / "val_00000_mask.png"))
    assert mask.shape == (64, 64) and mask.max() < 6

    # Again with another image size: refused before the data is generated
    # again (it once scored the 64-pixel model on 96-pixel data and said
    # nothing).
    data = sorted((out / "data").rglob("*.png"))
    before = [p.read_bytes() for p in data]
    argv = [
        "demo",
        "--out",
        str(out),
        "--size",
        "96",
        "--num-train-images",
        "8",
    ]
    argv += ["--num-val-images", "2", "--epochs", "1", "--steps", "2"]
    argv += ["--batch-size", "2", "--overlays", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--size 64" in err and "--overwrite" in err, err
    assert [p.read_bytes() for p in data] == before
    assert json.loads((out / "summary.json").read_text()) == summary


def test_demo_refuses_a_data_folder_it_did_not_generate(tmp_path, capsys):
    # The generator removes the train_* / val_* files of its folders
    # before it writes a split: `demo --out .` in a project whose
    # data/images/train holds train_0001.jpg deleted the user's photo.
    mine = tmp_path / "project" / "data" / "images" / "train" / "train_1.jpg"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my photo")
    for extra in ([], ["--overwrite"]):
        rc = main(["demo", "--out", str(tmp_path / "project"), *extra])
        assert rc == 2
        err = capsys.readouterr().err
        assert "train_1.jpg" in err and "classes.json" in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert mine.read_bytes() == b"my photo"


@pytest.mark.parametrize("hf_classes", [NUM_CLASSES, 7])
def test_train_init_from_a_transformers_directory(
    shapes, tmp_path, capsys, hf_classes
):
    from hf_utils import save_hf_model

    import keras_segformer

    hf_dir = tmp_path / "hf"
    save_hf_model(hf_dir, num_labels=hf_classes)  # B0 config
    train = shapes["train"]
    out = tmp_path / "init"
    args = [
        "train",
        "--num-classes",
        str(NUM_CLASSES),
        "--images",
        os.path.dirname(train.images[0]),
        "--masks",
        os.path.dirname(train.masks[0]),
        "--init",
        str(hf_dir),
        "--epochs",
        "1",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--crop-size",
        "64",
        "--lr",
        "0",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    expected = "all weights" if hf_classes == NUM_CLASSES else "encoder weights"
    assert f"init: {expected} from" in text
    # lr 0: the encoder still holds the checkpoint's weights.
    trained = keras.models.load_model(out / "model.keras")
    reference = keras_segformer.from_pretrained(
        hf_dir, num_classes=NUM_CLASSES, backbone_only=True
    )
    for a, b in zip(
        trained.backbone.get_weights(), reference.backbone.get_weights()
    ):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    "flag, values, expected",
    [
        ("--steps", ["0"], "expected an int >= 1, got '0'"),
        ("--epochs", ["0"], "expected an int >= 1, got '0'"),
        ("--batch-size", ["0"], "expected an int >= 1, got '0'"),
        ("--num-classes", ["0"], "expected an int >= 1, got '0'"),
        ("--warmup-steps", ["-1"], "expected an int >= 0, got '-1'"),
        ("--lr", ["-1"], "expected a number >= 0, got '-1'"),
        ("--lr", ["nan"], "expected a number >= 0, got 'nan'"),
        (
            "--crop-size",
            ["16"],
            "expected an image side >= 29 (the smallest SegFormer "
            "accepts), got '16'",
        ),
        ("--crop-size", ["64", "64", "64"], "expected one size or two"),
        ("--base-size", ["128", "0"], "expected an int >= 1, got '0'"),
        ("--base-size", ["128"], "expected 2 arguments"),
    ],
)
def test_train_refuses_bad_arguments(tmp_path, capsys, flag, values, expected):
    args = ["train", "--num-classes", "3", "--images", "i", "--masks", "m"]
    args += ["--out", str(tmp_path / "o"), flag, *values]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"keras-segformer train: error: argument {flag}: {expected}"
        + (" (height width), got 64 64 64" if "two" in expected else "")
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["file", "uncreatable"])
def test_train_out_that_cannot_be_a_folder(tmp_path, capsys, kind):
    """--out is checked before anything else, in a message naming it."""
    out = tmp_path / "taken"
    out.write_text("mine")
    if kind == "uncreatable":
        out = out / "sub"  # below a file
    args = ["train", "--num-classes", "3", "--images", "i", "--masks", "m"]
    assert main(args + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    expected = f"keras-segformer train: error: --out {str(out)!r}"
    assert err.startswith(expected), err
    assert len(err.splitlines()) == 1
    assert (tmp_path / "taken").read_text() == "mine"


def _train_args(shapes, out, *extra):
    train = shapes["train"]
    return [
        "train",
        "--num-classes",
        str(NUM_CLASSES),
        "--images",
        os.path.dirname(train.images[0]),
        "--masks",
        os.path.dirname(train.masks[0]),
        "--epochs",
        "1",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--crop-size",
        "64",
        "--base-size",
        "128",
        "64",
        "--out",
        str(out),
        *extra,
    ]


def test_train_warns_of_lr_0_and_cuts_a_long_warmup(
    shapes, tmp_path, capsys, monkeypatch
):
    """--warmup-steps is at most half of all steps (its help says so):
    cut, with a warning; --lr 0 trains nothing: said."""
    import keras_segformer

    seen = {}
    monkeypatch.setattr(trainer, "fit", lambda m, d, **kw: seen.update(kw))
    monkeypatch.setattr(
        keras_segformer,
        "build_segformer",
        lambda n, variant=None, **kw: tiny_segformer(n, **kw),
    )
    extra = ["--lr", "0", "--warmup-steps", "100", "--epochs", "3"]
    assert main(_train_args(shapes, tmp_path / "o", *extra)) == 0
    assert seen["warmup_steps"] == 1 and seen["learning_rate"] == 0
    err = capsys.readouterr().err
    assert (
        "keras-segformer train: warning: --warmup-steps 100 is more than "
        "half of the run's 3 steps: 1 warmup steps used." in err
    ), err
    assert (
        "keras-segformer train: warning: --lr 0: the weights will not "
        "change (no training)." in err
    ), err


@pytest.mark.parametrize("flag", ["--images", "--masks", "--val-masks"])
def test_train_data_flag_given_a_file(shapes, tmp_path, capsys, flag):
    path = shapes["train"].images[0]
    extra = [flag, path]
    if flag == "--val-masks":
        extra += ["--val-images", os.path.dirname(path)]
    assert main(_train_args(shapes, tmp_path / "o", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"keras-segformer train: error: {flag} {path} is a file, not a folder."
    )


def test_train_init_of_another_variant_names_it(shapes, tmp_path, capsys):
    init = str(tmp_path / "tiny.keras")
    tiny_segformer(NUM_CLASSES).save(init)
    extra = ["--variant", "b0", "--init", init]
    assert main(_train_args(shapes, tmp_path / "o", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"keras-segformer train: error: --init {init} is a model of another "
        "size (depths [1, 1, 1, 1], hidden_sizes [8, 16, 24, 32]); --variant "
        "b0 has depths [2, 2, 2, 2], hidden_sizes [32, 64, 160, 256]: pass "
        "the --variant of the --init model, or an --init of this variant."
    ), err
