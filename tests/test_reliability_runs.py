"""Runs and sizes: a run removes only the files it listed, never reads its
files through a link, bounds its own .keras on resume; float labels are
refused, not truncated; sizes that cannot fit are refused before the
memory is spent (train, export, Segmenter)."""

import json
import os
import shutil
import zipfile

import keras
import numpy as np
import pytest
from conftest import tiny_segformer
from PIL import Image

from keras_segformer import io_atomic, memory
from keras_segformer.cli import main
from keras_segformer.data import LabelTransform, synthetic
from keras_segformer.errors import DataError, data_errors
from keras_segformer.inference import Segmenter
from keras_segformer.training import run_files, run_setup, trainer

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return synthetic.generate(
        root, 4, 0, size=(64, 64), num_classes=NUM_CLASSES, seed=2
    )


def _dataset(shapes):
    from keras_segformer.data import make_dataset

    train = shapes["train"]
    return make_dataset(
        train.images,
        train.masks,
        batch_size=2,
        training=True,
        crop_size=64,
        base_size=(128, 64),
        num_classes=NUM_CLASSES,
        repeat=True,
    )


def _fit(model, data, out, **kwargs):
    kwargs = {"epochs": 1, "steps_per_epoch": 1, "verbose": 0, **kwargs}
    return trainer.fit(model, data, out_dir=out, warmup_steps=0, **kwargs)


def _tree(folder):
    return sorted(
        os.path.relpath(os.path.join(root, name), folder)
        for root, dirs, files in os.walk(folder)
        for name in files + dirs
        if name != ".lock"  # the run lock (kept: see test_run_lock.py)
    )


# -- the run's own list of what it wrote -------------------------------------


def test_overwrite_removes_the_files_the_run_listed_and_no_other(
    shapes, tmp_path
):
    out = tmp_path / "run"
    _fit(tiny_segformer(NUM_CLASSES), _dataset(shapes), out)
    listed = json.loads((out / "run.json").read_text())["files"]
    assert "checkpoints/epoch-001.weights.h5" in listed
    assert {"log.csv", "model.keras"} <= set(listed)
    # The user's files, with a run's names, in the run's folders.
    mine = ["checkpoints/epoch-005.weights.h5", "backup/state-009.weights.h5"]
    mine += ["tensorboard/train/events.out.tfevents.1.mine.v2"]
    for name in mine:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"mine")
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, symlinks=True)
    run_files.clear_run(copy)
    assert _tree(copy) == sorted(
        ["backup", "checkpoints", "tensorboard", "tensorboard/train", *mine]
    )
    for name in mine:
        assert (copy / name).read_bytes() == b"mine"
    # overwrite=True: a new run starts beside them (the user's files).
    _fit(tiny_segformer(NUM_CLASSES), _dataset(shapes), out, overwrite=True)
    assert os.path.isfile(out / "checkpoints" / "epoch-001.weights.h5")
    for name in mine:
        assert (out / name).read_bytes() == b"mine"
    assert not set(mine) & set(run_files.run_files(out))


def test_a_run_list_names_nothing_outside_the_run(tmp_path):
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    for folder in (out, elsewhere):
        folder.mkdir()
    for name in ("victim.txt", "epoch-001.weights.h5"):
        (elsewhere / name).write_bytes(b"mine")
    os.symlink(elsewhere, out / "checkpoints")  # a folder behind a link
    (out / "notes.txt").write_bytes(b"mine")
    (out / "log.csv").write_bytes(b"run")
    listed = ["../elsewhere/victim.txt", str(elsewhere / "victim.txt")]
    listed += ["notes.txt", "checkpoints/epoch-001.weights.h5", "log.csv"]
    record = {"files": listed, "folders": ["checkpoints", "../elsewhere"]}
    (out / "run.json").write_text(json.dumps(record))
    assert run_files.run_files(out) == ["log.csv", "run.json"]
    run_files.clear_run(out)
    assert _tree(out) == ["checkpoints", "notes.txt"]
    assert _tree(elsewhere) == ["epoch-001.weights.h5", "victim.txt"]


def test_a_run_of_an_older_version_is_read_by_name_and_resumed(tmp_path):
    out = tmp_path / "run"
    for name in ("log.csv", "checkpoints/epoch-001.weights.h5", "x.txt"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"run")
    (out / "run.json").write_text(json.dumps({"settings": {}, "epochs": 1}))
    assert run_files.run_files(out) == [
        "log.csv",
        "checkpoints/epoch-001.weights.h5",
        "run.json",
    ]
    # Resumed by this version: its files so far are listed by name.
    run_files.record_files(out, ["checkpoints/epoch-002.weights.h5"])
    record = json.loads((out / "run.json").read_text())
    assert record["files"] == [
        "checkpoints/epoch-001.weights.h5",
        "checkpoints/epoch-002.weights.h5",
        "log.csv",
    ]
    assert record["folders"] == ["checkpoints"]


# -- files read on resume: never through a link ------------------------------


def _link_to_user_file(path, tmp_path, text):
    target = tmp_path / "elsewhere" / "users.txt"
    target.parent.mkdir(exist_ok=True)
    target.write_text(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)
    return target


def test_run_files_read_on_resume_are_never_read_through_a_link(tmp_path):
    out = tmp_path / "run"
    record = json.dumps({"settings": {}, "epochs": 1, "files": []})
    _link_to_user_file(out / "run.json", tmp_path, record)
    with pytest.raises(io_atomic.LinkError, match="run.json is a symbolic"):
        trainer.check_run(out, epochs=1)
    with pytest.raises(io_atomic.LinkError):
        run_files.clear_run(out)
    os.remove(out / "run.json")
    # The log: a link there is not read; the first epoch replaces it.
    log = out / "log.csv"
    target = _link_to_user_file(log, tmp_path, "epoch,secret\n0,xyz\n")
    logger = run_files.EpochLog(str(log))
    logger.on_train_begin()
    logger.on_epoch_end(0, {"loss": 0.5})
    assert "secret" not in log.read_text() and not os.path.islink(log)
    assert target.read_text() == "epoch,secret\n0,xyz\n"
    os.symlink(target, tmp_path / "log-link.csv")
    with pytest.raises(io_atomic.LinkError):
        trainer.read_log(tmp_path / "log-link.csv")
    # The backup's state and weights.
    state = {"epoch": 1, "weights": "state-001.weights.h5", "previous": None}
    _link_to_user_file(out / "backup" / "state.json", tmp_path, "{}")
    with pytest.raises(io_atomic.LinkError, match="state.json"):
        trainer.read_backup_state(out / "backup")
    os.remove(out / "backup" / "state.json")
    (out / "backup" / "state.json").write_text(json.dumps(state))
    os.symlink(target, out / "backup" / "state-001.weights.h5")
    model = tiny_segformer(NUM_CLASSES)
    backup = run_files.AtomicBackupAndRestore(out / "backup")
    backup.set_model(model)
    with pytest.raises(io_atomic.LinkError, match="state-001.weights.h5"):
        backup.on_train_begin()
    state["weights"] = "../../elsewhere/users.txt"
    (out / "backup" / "state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="not a state this callback"):
        backup.on_train_begin()
    # model.keras, read to continue a finished run.
    os.symlink(target, out / "model.keras")
    with pytest.raises(io_atomic.LinkError, match="model.keras"):
        run_setup._load_state(model, str(out / "model.keras"))


def test_the_runs_own_keras_file_is_bounded_before_it_is_read(
    tmp_path, monkeypatch
):
    model = tiny_segformer(NUM_CLASSES)

    def never(*args, **kwargs):
        raise AssertionError("read")

    monkeypatch.setattr(model, "load_weights", never)
    bomb = tmp_path / "model.keras"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", bytes(40 * 2**20))
    with pytest.raises(ValueError, match="'model.weights.h5' inflates to 40"):
        run_setup._load_state(model, str(bomb))


# -- float labels: refused, never truncated ----------------------------------


def test_float_labels_with_a_fraction_are_refused_naming_the_file():
    transform = LabelTransform(num_classes=NUM_CLASSES)
    whole = transform(np.array([[0.0, 2.0]], np.float32), "m.npy")
    np.testing.assert_array_equal(whole, [[0, 2]])
    for bad in (0.5, np.nan):
        with pytest.raises(TypeError) as e:
            transform(np.array([[0.0, bad]], np.float32), "m.npy")
        assert str(e.value).startswith(
            "Mask file m.npy holds float labels with a fractional part"
        )


def test_a_float_tiff_mask_is_one_line_naming_it(tmp_path):
    from keras_segformer.data import make_dataset

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    mask = np.full((32, 32), 0.5, np.float32)
    Image.fromarray(mask, mode="F").save(tmp_path / "a.tif")
    for validate in (True, False):
        with pytest.raises(DataError, match=r"a\.tif.* mode 'F'"):
            with data_errors():
                ds = make_dataset(
                    [str(tmp_path / "a.png")],
                    [str(tmp_path / "a.tif")],
                    batch_size=1,
                    training=False,
                    validate=validate,
                )
                next(iter(ds))


def _float_label_data(value):
    import tensorflow as tf

    images = np.zeros((2, 64, 64, 3), np.float32)
    labels = np.full((2, 64, 64), value, np.float32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)


def test_a_dataset_of_float_labels_is_checked_as_it_is_read(tmp_path):
    model = tiny_segformer(NUM_CLASSES)
    with pytest.raises(DataError) as e:
        _fit(model, _float_label_data(1.5).repeat(), tmp_path / "a")
    assert str(e.value).startswith(
        "The dataset's labels are float32 with a fractional part (e.g. 1.5)"
    )
    assert not os.path.exists(tmp_path / "a" / "model.keras")
    # Whole numbers in floats are class ids: trained.
    _fit(model, _float_label_data(1.0).repeat(), tmp_path / "b")
    assert os.path.isfile(tmp_path / "b" / "model.keras")


def test_model_fit_and_evaluate_check_a_dataset_of_float_labels():
    # keras.Model.fit / evaluate on the model itself (no trainer): float
    # labels with a fraction are refused as they are read, not truncated
    # into class ids; as training data, validation data, or to evaluate.
    model = tiny_segformer(NUM_CLASSES)
    model.compile(optimizer="adam")
    expected = "The dataset's labels are float32 with a fractional part"
    good, bad = _float_label_data(1.0), _float_label_data(1.5)
    for call in (
        lambda: model.fit(bad, epochs=1, verbose=0),
        lambda: model.fit(good, validation_data=bad, epochs=1, verbose=0),
        lambda: model.evaluate(bad, verbose=0),
        lambda: model.evaluate(x=bad, verbose=0),
    ):
        with pytest.raises(DataError, match=expected):
            call()
    model.fit(good, validation_data=good, epochs=1, verbose=0)


# -- sizes that cannot fit ---------------------------------------------------


def test_training_bytes_grow_with_the_crop_and_the_batch():
    from keras_segformer.configs import variant_config

    b0 = variant_config("b0")
    small = memory.training_bytes(b0, 2, (256, 256), 2)
    # Measured on TensorFlow (CPU): ~295 MiB for this step; about 180.
    assert 100 * 2**20 < small < 295 * 2**20
    assert memory.training_bytes(b0, 2, (512, 512), 2) > 3 * small
    assert memory.training_bytes(b0, 2, (256, 256), 8) > 3 * small


def test_train_refuses_a_crop_and_batch_that_cannot_fit(
    shapes, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(memory, "available_memory", lambda: 2**30)
    train = shapes["train"]
    args = ["train", "--num-classes", str(NUM_CLASSES), "--images"]
    args += [os.path.dirname(train.images[0]), "--masks"]
    args += [os.path.dirname(train.masks[0]), "--out", str(tmp_path / "o")]
    args += ["--crop-size", "2048", "--batch-size", "8"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "keras-segformer train: error: --crop-size 2048 2048 with "
        "--batch-size 8 (a training step of SegFormer-B0) needs about "
    )
    assert err.endswith(
        "more than the 1.0 GiB of memory available: use a smaller "
        "--crop-size or --batch-size."
    )
    assert not os.path.exists(tmp_path / "o" / "run.json")


def test_export_input_size_that_cannot_fit_here(tmp_path, monkeypatch, capsys):
    # int8 calibration would run the model at that size here: refused. A
    # float artifact may be meant for a larger machine: written, with a
    # warning.
    model_file = tmp_path / "m.keras"
    tiny_segformer(NUM_CLASSES).save(model_file)
    monkeypatch.setattr(memory, "available_memory", lambda: 2**20)
    args = ["export", "--model", str(model_file), "--format", "onnx"]
    args += ["--input-size", "256", "256"]
    int8 = ["--quantization", "int8", "--out", str(tmp_path / "q.onnx")]
    assert main(args + int8) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "keras-segformer export: error: --input-size 256 256 with "
        "--quantization int8 (calibration runs the model here) needs about "
    )
    assert "use a smaller --input-size, or leave it out" in err
    assert not os.path.exists(tmp_path / "q.onnx")
    assert main(args + ["--out", str(tmp_path / "m.onnx")]) == 0
    err = capsys.readouterr().err
    assert "warning: --input-size 256 256 (one image through the model)" in err
    assert "it can run only on a machine with that much memory" in err
    assert os.path.getsize(tmp_path / "m.onnx") > 0


def test_segmenter_refuses_scales_that_cannot_fit(monkeypatch):
    model = tiny_segformer(NUM_CLASSES)
    image = np.zeros((512, 512, 3), np.uint8)
    monkeypatch.setattr(memory, "available_memory", lambda: 2**28)
    with pytest.raises(ValueError) as e:
        Segmenter(model, scales=(1.0, 4.0))(image)
    message = str(e.value)
    assert message.startswith("scales=(1.0, 4.0) on a 512x512 image needs")
    assert 'mode="slide" with a `crop_size`' in message
    # Windows bound the model's part.
    mask = Segmenter(model, mode="slide", crop_size=128, scales=(1.0,))(image)
    assert mask.shape == (512, 512)
    keras.backend.clear_session()


def test_masks_without_an_image_are_said_and_a_file_is_not_a_folder(
    tmp_path,
):
    from keras_segformer.data.loading import pair_folders

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    Image.new("RGB", (4, 4)).save(images / "a.jpg")
    for name in ("a", "b", "c"):
        Image.new("L", (4, 4)).save(masks / f"{name}.png")
    with pytest.warns(UserWarning) as record:
        found = pair_folders(images, masks)
    assert found == ([str(images / "a.jpg")], [str(masks / "a.png")])
    assert [str(w.message) for w in record] == [
        f"2 mask(s) in {masks} have no image in {images} and are not used, "
        f"e.g. {masks / 'b.png'}."
    ]
    with pytest.raises(ValueError) as e:
        pair_folders(images / "a.jpg", masks)
    assert str(e.value) == (
        f"The image folder {images / 'a.jpg'} is a file, not a folder."
    )
