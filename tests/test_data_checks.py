"""Data checked before any training work; training that diverges stops at
once and keeps its last good files; a data error from the command line is
one line without TensorFlow's log records."""

import math
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
from conftest import tiny_segformer
from PIL import Image

from keras_segformer.cli import main
from keras_segformer.cli.tf_logs import _Filter
from keras_segformer.data import loading, make_dataset
from keras_segformer.errors import DataError, data_errors, tag
from keras_segformer.training import trainer
from keras_segformer.training.nonfinite import NonFiniteError, StopOnNonFinite


def _save(path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path, **kwargs)
    return path


def _pairs(root, labels, size=(32, 32)):
    """One RGB image and one mask per entry of ``labels`` (a fill value or
    an array) under ``root/images`` and ``root/masks``."""
    rng = np.random.default_rng(0)
    for i, label in enumerate(labels):
        image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        _save(root / "images" / f"{i}.png", image)
        mask = np.broadcast_to(np.asarray(label, np.uint8), size)
        _save(root / "masks" / f"{i}.png", mask)
    return str(root / "images"), str(root / "masks")


def _iterate(ds):
    for _ in ds:
        pass


# ---------------------------------------------------------- checked up front


def test_bad_validation_mask_is_refused_before_training(tmp_path, capsys):
    train = _pairs(tmp_path / "train", [0, 1, 2])
    labels = np.zeros((32, 32), np.uint8)
    labels[0, 0] = 7  # one pixel out of range for 3 classes
    val = _pairs(tmp_path / "val", [1, labels])
    bad = os.path.join(val[1], "1.png")
    with pytest.raises(DataError, match=f"{bad}.*\\[7\\] >= num_classes=3"):
        make_dataset(*val, batch_size=1, training=False, num_classes=3)
    out = tmp_path / "run"
    rc = main(
        ["train", "--num-classes", "3", "--images", train[0]]
        + ["--masks", train[1], "--val-images", val[0], "--val-masks", val[1]]
        + ["--out", str(out), "--epochs", "1", "--batch-size", "1"]
        + ["--crop-size", "32"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("keras-segformer train: error: Mask file")
    assert bad in err[-1]
    # Refused before a model was built or an epoch run.
    assert not (out / "checkpoints").exists()
    assert not (out / "run.json").exists()


def test_sizes_modes_and_unreadable_files_are_named(tmp_path):
    image = _save(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    mask = _save(tmp_path / "a_mask.png", np.zeros((8, 8), np.uint8))
    wide = _save(tmp_path / "wide.png", np.zeros((8, 9), np.uint8))
    rgb_mask = _save(tmp_path / "rgb_mask.png", np.zeros((8, 8, 3), np.uint8))
    float_image = tmp_path / "float.tif"
    Image.fromarray(np.zeros((8, 8), np.float32)).save(float_image)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    cases = [
        ([image], [wide], f"{image} is 8x8 .* mask {wide} is 8x9"),
        ([image], [rgb_mask], f"{rgb_mask} has PIL mode 'RGB'"),
        ([float_image], [mask], f"{float_image} is a floating-point"),
        ([junk], [mask], f"Could not read image file {junk}"),
        ([image], [junk], f"Could not read mask file {junk}"),
    ]
    for images, masks, match in cases:
        with pytest.raises(DataError, match=match):
            make_dataset(images, masks, batch_size=1, training=False)


def test_image_pixels_are_not_decoded_by_the_check(tmp_path):
    # A header that reads and a body that does not: the check reads the
    # header only (it passes), decoding finds the rest (named as well).
    image = _save(
        tmp_path / "a.png",
        np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8),
    )
    image.write_bytes(image.read_bytes()[:-200])
    mask = _save(tmp_path / "a_mask.png", np.zeros((16, 16), np.uint8))
    ds = make_dataset([image], [mask], batch_size=1, training=False)
    with pytest.raises(DataError, match=f"{image}.*truncated"):
        with data_errors():
            _iterate(ds)


def test_exif_rotated_image_is_checked_upright(tmp_path):
    # A 6x4 JPEG shown rotated (orientation 6) is 4x6 upright, like its
    # mask.
    exif = Image.Exif()
    exif[0x0112] = 6
    image = _save(tmp_path / "a.jpg", np.zeros((6, 4, 3), np.uint8), exif=exif)
    mask = _save(tmp_path / "a_mask.png", np.zeros((4, 6), np.uint8))
    make_dataset([image], [mask], batch_size=1, training=False)
    other = _save(tmp_path / "b_mask.png", np.zeros((6, 4), np.uint8))
    with pytest.raises(DataError, match="is 4x6 .* is 6x4"):
        make_dataset([image], [other], batch_size=1, training=False)


def test_masks_without_a_labelled_pixel_are_an_error(tmp_path):
    images, masks = _pairs(tmp_path, [255, 255])
    with pytest.raises(DataError, match="Every pixel of the 2 masks.*255"):
        make_dataset(images, masks, batch_size=1, training=True)
    # reduce_labels makes raw 0 the ignore index too.
    images, masks = _pairs(tmp_path / "zeros", [0, 255])
    with pytest.raises(DataError, match="reduce_labels=True"):
        make_dataset(
            images, masks, batch_size=1, training=True, reduce_labels=True
        )


def test_binary_0_255_masks_warn_with_the_fix(tmp_path):
    labels = np.zeros((32, 32), np.uint8)
    labels[8:, :] = 255
    images, masks = _pairs(tmp_path, [labels, labels])
    with pytest.warns(UserWarning, match="divided by 255.*255: 1"):
        make_dataset(images, masks, batch_size=1, training=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # mapped: nothing to say
        ds = make_dataset(
            images,
            masks,
            batch_size=1,
            training=False,
            label_map={0: 0, 255: 1},
            num_classes=2,
        )
    labels = next(iter(ds))[1].numpy()
    assert set(np.unique(labels)) == {0, 1}


def test_large_sets_show_a_progress_bar(tmp_path, capsys, monkeypatch):
    images, masks = _pairs(tmp_path, [0, 1, 2], size=(8, 8))
    make_dataset(images, masks, batch_size=1, training=False)
    assert "checking" not in capsys.readouterr().err
    monkeypatch.setattr(loading, "PROGRESS_MIN_FILES", 3)
    make_dataset(images, masks, batch_size=1, training=False)
    out = capsys.readouterr()
    assert "checking 3 image/mask pairs" in out.err
    assert "3/3" in out.err
    assert out.out == ""  # stdout may carry a result (evaluate --json)


# ------------------------------------------------------------ never silent


def test_an_epoch_without_labelled_pixels_is_an_error():
    callback = StopOnNonFinite()
    with pytest.raises(DataError, match="Epoch 2: every label pixel"):
        callback.on_epoch_end(1, {"loss": 0.0, "pixel_accuracy": math.nan})


def test_train_exits_with_the_divergence_status(tmp_path, capsys, monkeypatch):
    from keras_segformer.cli import train as train_cli

    def diverge(*args, **kwargs):
        raise NonFiniteError("Training diverged at epoch 1/1, step 1/1")

    monkeypatch.setattr(train_cli, "_init_model", lambda *a, **k: None)
    monkeypatch.setattr(trainer, "fit", diverge)
    images, masks = _pairs(tmp_path, [0, 1])
    rc = main(
        ["train", "--num-classes", "2", "--images", images, "--masks", masks]
        + ["--out", str(tmp_path / "run"), "--crop-size", "32"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 5
    assert err == [
        "keras-segformer train: error: Training diverged at epoch 1/1, step 1/1"
    ]


class _Poison(keras.callbacks.Callback):
    """A NaN in one weight at the start of epoch ``epoch`` (0-based)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            variable = self.model.trainable_variables[0]
            value = keras.ops.convert_to_numpy(variable.value).copy()
            value.flat[0] = np.nan
            variable.assign(value)


def test_nan_loss_stops_at_once_and_keeps_the_last_good_files(tmp_path):
    images, masks = _pairs(tmp_path / "data", [0, 1, 2, 1])
    ds = make_dataset(
        images,
        masks,
        batch_size=2,
        training=True,
        crop_size=32,
        base_size=None,
        num_classes=3,
        repeat=True,
        seed=0,
    )
    out = tmp_path / "run"
    model = tiny_segformer(3)
    with pytest.raises(NonFiniteError) as info:
        trainer.fit(
            model,
            ds,
            out_dir=out,
            epochs=3,
            steps_per_epoch=1,
            learning_rate=1e-3,
            warmup_steps=1,
            verbose=0,
            callbacks=[_Poison(epoch=1)],
        )
    message = str(info.value)
    assert "epoch 2/3, step 1/1" in message
    assert "learning rate " in message and "peak 0.001)" in message
    assert str(out / "checkpoints" / "epoch-001.weights.h5") in message
    # Nothing of epoch 2 was saved; epoch 1's files are kept.
    assert os.listdir(out / "checkpoints") == ["epoch-001.weights.h5"]
    assert not (out / "model.keras").exists()
    assert trainer.read_backup_state(out / "backup")["epoch"] == 1  # done


# ------------------------------------------------- one line, not TF's logs

_RECORD = (
    "W0000 00:00:1796672295.147454    8146 op_kernel.cc:1845] "
    f"INVALID_ARGUMENT: DataError: {tag('Mask file m.png is bad.')}\n"
    "Traceback (most recent call last):\n\n"
    '  File "script_ops.py", line 269, in __call__\n'
    "    ret = func(*args)\n"
    "          ^^^^^^^^^^^\n\n"
    f"keras_segformer.errors.DataError: {tag('Mask file m.png is bad.')}\n"
    "\n\n\t [[{{node PyFuncStateless}}]]\n"
)


def test_log_filter_drops_only_data_error_records():
    other = "W0000 00:00:17.5 8146 loader.cc:12] something else\n  detail\n"
    text = "before\n" + _RECORD + other + _RECORD.replace("op_kernel", "local")
    text += "after, no newline"
    out = []
    flt = _Filter(out.append)
    data = text.encode()
    for i in range(0, len(data), 7):  # any split into writes
        flt.feed(data[i : i + 7])
    flt.close()
    assert b"".join(out).decode() == "before\n" + other + "after, no newline"


def test_data_error_records_of_tensorflow_are_dropped(tmp_path):
    # A fresh process: TensorFlow logs warnings unless TF_CPP_MIN_LOG_LEVEL
    # was set before it was imported (the test session sets it).
    image = _save(
        tmp_path / "a.png",
        np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8),
    )
    image.write_bytes(image.read_bytes()[:-200])  # the header still reads
    mask = _save(tmp_path / "a_mask.png", np.zeros((16, 16), np.uint8))
    script = textwrap.dedent(
        f"""
        import os
        import sys
        from keras_segformer.cli.tf_logs import data_error_logs_dropped
        from keras_segformer.data import make_dataset
        from keras_segformer.errors import data_errors
        ds = make_dataset([{str(image)!r}], [{str(mask)!r}], batch_size=1,
            training=False)
        for filtered in (False, True):
            os.write(2, f"--- filtered={{filtered}}\\n".encode())
            try:
                with data_errors():
                    if filtered:
                        with data_error_logs_dropped():
                            list(ds)
                    else:
                        list(ds)
            except ValueError as e:
                print("error:", e, file=sys.stderr, flush=True)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["KERAS_BACKEND"] = "tensorflow"  # imported anyway: no other
    err = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    ).stderr
    plain, filtered = err.split("--- filtered=False\n")[1].split(
        "--- filtered=True\n"
    )
    error = f"error: Could not read image file {image}"
    assert error in plain and error in filtered
    assert "Traceback" in plain  # what TensorFlow logs, unfiltered
    assert "Traceback" not in filtered
    assert "keras-segformer-data-error" not in filtered
