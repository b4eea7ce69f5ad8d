"""Training never loses anything: atomic files, resume after a kill (also
of the real command), one log row per epoch, a finished run left as it is,
continued with more epochs or overwritten, and refused settings."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest
from conftest import TINY, TINY_DECODER, tiny_segformer

import keras_segformer
from keras_segformer.cli import main
from keras_segformer.data import make_dataset, synthetic
from keras_segformer.training import trainer

NUM_CLASSES = 4
TESTS = os.path.dirname(os.path.abspath(__file__))

# The real command with the tiny test model in place of the variant.
_RUNNER = f"""
import sys
sys.path.insert(0, {TESTS!r})
from conftest import TINY, TINY_DECODER
import keras_segformer
build = keras_segformer.build_segformer
def tiny(num_classes, variant=None, **kwargs):
    return build(num_classes, decoder_hidden_size=TINY_DECODER, **TINY,
                 **kwargs)
keras_segformer.build_segformer = tiny
from keras_segformer.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return synthetic.generate(
        root, 8, 2, size=(64, 64), num_classes=NUM_CLASSES, seed=1
    )


def _use_tiny_model(monkeypatch):
    """`keras-segformer train` builds the tiny test model."""
    build = keras_segformer.build_segformer

    def tiny(num_classes, variant=None, **kwargs):
        return build(
            num_classes, decoder_hidden_size=TINY_DECODER, **TINY, **kwargs
        )

    monkeypatch.setattr(keras_segformer, "build_segformer", tiny)


@pytest.fixture
def tiny_cli(monkeypatch):
    _use_tiny_model(monkeypatch)


def _args(shapes, out, *extra, epochs=1):
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
        str(epochs),
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--crop-size",
        "64",
        "--base-size",
        "128",
        "64",
        "--warmup-steps",
        "0",
        "--out",
        str(out),
        *extra,
    ]


def _train_ds(files):
    return make_dataset(
        files.images,
        files.masks,
        batch_size=2,
        training=True,
        crop_size=64,
        base_size=(128, 64),
        num_classes=NUM_CLASSES,
        repeat=True,
    )


def _fit(model, shapes, out, **kwargs):
    kwargs = {
        "epochs": 1,
        "steps_per_epoch": 1,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "verbose": 0,
        **kwargs,
    }
    return trainer.fit(model, _train_ds(shapes["train"]), out_dir=out, **kwargs)


def _log_epochs(out):
    _, rows = trainer.read_log(os.path.join(out, "log.csv"))
    with open(os.path.join(out, "log.csv")) as f:
        lines = f.read().strip().splitlines()
    assert len(lines) == 1 + len(rows)  # a header and no duplicate row
    return [int(line.split(",")[0]) for line in lines[1:]]


def _temporaries(out):
    return [
        os.path.join(folder, name)
        for folder, dirs, files in os.walk(out)
        for name in dirs + files
        if ".tmp-" in name
    ]


def _iterations(path):
    model = keras.models.load_model(path)
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt("simulated kill")


def test_write_atomic_keeps_the_old_file_when_a_write_fails(tmp_path):
    path = tmp_path / "run.json"
    trainer.write_text(path, "old")

    def half(temporary):
        with open(temporary, "w") as f:
            f.write("ne")
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        trainer.write_atomic(path, half)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["run.json"]
    # Keras reads the format from the suffix: the temporary keeps it.
    name = os.path.basename(trainer.temporary_path("c/epoch-003.weights.h5"))
    assert name == f".epoch-003.tmp-{os.getpid()}.weights.h5"


def test_kill_while_writing_then_resume_loses_nothing(shapes, tmp_path):
    """The real command killed the moment a file starts in checkpoints/,
    then the moment one starts in backup/ (after the log row, before the
    backup), then run to the end."""
    out = tmp_path / "run"
    command = [sys.executable, "-c", _RUNNER, *_args(shapes, out, epochs=3)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def run(watch=None):
        log = open(tmp_path / "output.txt", "a")
        proc = subprocess.Popen(command, stdout=log, stderr=log, env=env)
        folder = None if watch is None else out / watch
        try:
            while proc.poll() is None:
                if folder is not None and folder.is_dir():
                    if os.listdir(folder):
                        proc.send_signal(signal.SIGKILL)
                        proc.wait()
                        return None
                time.sleep(0.002)
            return proc.returncode
        finally:
            log.close()

    def output():
        return (tmp_path / "output.txt").read_text()[-3000:]

    assert run(watch="checkpoints") is None, output()
    assert run(watch="backup") is None, output()
    assert run() == 0, output()

    checkpoints = sorted(os.listdir(out / "checkpoints"))
    assert checkpoints == [f"epoch-00{i}.weights.h5" for i in (1, 2, 3)]
    for name in checkpoints:
        with h5py.File(out / "checkpoints" / name, "r") as f:
            assert len(f.keys()) > 0
    model = keras.models.load_model(out / "model.keras")
    assert model.num_classes == NUM_CLASSES
    assert _log_epochs(out) == [0, 1, 2]
    assert _temporaries(out) == []
    assert not (out / "backup").exists()
    record = json.loads((out / "run.json").read_text())
    assert record["model_epochs"] == 3


def test_log_has_one_row_per_epoch_when_killed_before_the_backup(
    shapes, tmp_path, monkeypatch
):
    """A kill after the log row and the checkpoint of epoch 2 but before
    its backup: epoch 2 runs again and replaces both."""
    out = tmp_path / "run"
    save = trainer.AtomicBackupAndRestore._save_model

    def killed_at_two(self):
        if self._current_epoch == 2:
            raise KeyboardInterrupt("simulated kill")
        save(self)

    monkeypatch.setattr(
        trainer.AtomicBackupAndRestore, "_save_model", killed_at_two
    )
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_segformer(NUM_CLASSES), shapes, out, epochs=3)
    assert _log_epochs(out) == [0, 1]
    state = trainer.read_backup_state(out / "backup")
    assert state["epoch"] == 1
    monkeypatch.setattr(trainer.AtomicBackupAndRestore, "_save_model", save)

    history = _fit(tiny_segformer(NUM_CLASSES), shapes, out, epochs=3)
    assert history.epoch == [1, 2]
    assert _log_epochs(out) == [0, 1, 2]
    assert sorted(os.listdir(out / "checkpoints")) == [
        f"epoch-00{i}.weights.h5" for i in (1, 2, 3)
    ]
    assert _temporaries(out) == []
    assert _iterations(out / "model.keras") == 3


def test_fit_refuses_another_model_and_names_the_run(shapes, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _fit(
            tiny_segformer(NUM_CLASSES),
            shapes,
            out,
            epochs=2,
            callbacks=[_Interrupt(1)],
        )
    assert trainer.read_backup_state(out / "backup")["epoch"] == 1
    with pytest.raises(ValueError) as e:
        _fit(tiny_segformer(NUM_CLASSES + 1), shapes, out, epochs=2)
    message = str(e.value)
    assert message.startswith(f"{out} holds a run with model num_classes=4;")
    assert "this call asks for model num_classes=5" in message
    assert "overwrite=True" in message
    with pytest.raises(ValueError, match="learning_rate=0.001"):
        _fit(
            tiny_segformer(NUM_CLASSES),
            shapes,
            out,
            epochs=2,
            learning_rate=2e-3,
        )
    # Without the record, the backup itself is named.
    record = json.loads((out / "run.json").read_text())
    record["settings"] = {}
    trainer.write_text(out / "run.json", json.dumps(record))
    with pytest.raises(ValueError, match="backup.*does not fit this model"):
        _fit(tiny_segformer(NUM_CLASSES + 1), shapes, out, epochs=2)


def test_fit_on_a_finished_run_loads_it_and_trains_nothing(shapes, tmp_path):
    out = tmp_path / "run"
    _fit(tiny_segformer(NUM_CLASSES), shapes, out)
    final = out / "model.keras"
    before = final.read_bytes(), os.stat(final).st_mtime_ns
    model = tiny_segformer(NUM_CLASSES)
    history = _fit(model, shapes, out, verbose=1)
    assert history.history == {}
    assert (final.read_bytes(), os.stat(final).st_mtime_ns) == before
    saved = keras.models.load_model(final)
    for a, b in zip(model.get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_files_without_a_run_record_are_refused_and_overwritten(tmp_path):
    """Files of a run's names without run.json are not a run's: refused,
    and --overwrite does not remove them either."""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "epoch-001.weights.h5").write_bytes(b"x")
    (tmp_path / "log.csv").write_text("epoch,loss\n0,1.0\n")
    (tmp_path / "mine.txt").write_text("not the run's")
    with pytest.raises(ValueError) as e:
        trainer.check_run(tmp_path, epochs=1, settings={"--variant": "b0"})
    assert str(e.value) == (
        f"{tmp_path} holds log.csv, checkpoints but no run.json: not a "
        "training run (these are not a run's files, and --overwrite "
        "removes only a run's). Move them, or choose another --out."
    )
    with pytest.raises(ValueError, match="never held a training run"):
        trainer.clear_run(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [
        "checkpoints",
        "log.csv",
        "mine.txt",
    ]
    (tmp_path / "run.json").write_text("{}")  # now a run's folder
    trainer.clear_run(tmp_path)
    assert os.listdir(tmp_path) == ["mine.txt"]
    assert trainer.check_run(tmp_path, epochs=1).source is None


@pytest.fixture(scope="module")
def finished(shapes, tmp_path_factory):
    """A finished one-epoch run of the command (tiny model)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        _use_tiny_model(monkeypatch)
        assert main(_args(shapes, out)) == 0
    keras.backend.clear_session()
    return out


def test_command_on_a_finished_run_does_nothing(shapes, finished, capsys):
    final = finished / "model.keras"
    before = {
        name: (p.read_bytes(), os.stat(p).st_mtime_ns)
        for name in ("model.keras", "log.csv", "run.json")
        for p in [finished / name]
    }
    capsys.readouterr()
    assert main(_args(shapes, finished)) == 0
    assert capsys.readouterr().out.strip() == (
        f"{finished} holds a finished run of 1 epochs ({final}): nothing to "
        "do. Ask for more --epochs to continue it, or --overwrite / another "
        "--out to start afresh."
    )
    after = {
        name: (p.read_bytes(), os.stat(p).st_mtime_ns)
        for name in before
        for p in [finished / name]
    }
    assert after == before


@pytest.mark.parametrize(
    "change, recorded, asked",
    [
        (["--variant", "b1"], "--variant b0", "b1"),
        (["--num-classes", "5"], "--num-classes 4", "5"),
        (["--crop-size", "64", "32"], "--crop-size 64", "64 32"),
        (["--lr", "0.001"], "--lr 6e-05", "0.001"),
    ],
)
def test_command_names_the_setting_that_differs(
    shapes, finished, capsys, change, recorded, asked
):
    capsys.readouterr()
    assert main(_args(shapes, finished, *change)) == 2  # the last one counts
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        f"{finished} holds a run with {recorded}; this command asks for "
        f"{asked}: use the same settings to resume, or --overwrite / "
        "another --out."
    ), err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_command_names_the_data_or_class_names_that_differ(
    shapes, finished, tmp_path, capsys
):
    """The class names are part of the run: other names are refused. The
    data folders (as real paths) may move between restarts (a cluster
    node's scratch disk): a link to the same folder is the same run, a
    copy elsewhere continues it with a warning naming both paths."""
    folder = os.path.dirname(shapes["train"].images[0])
    link = tmp_path / "link"
    link.symlink_to(folder)
    capsys.readouterr()
    assert main(_args(shapes, finished, "--images", str(link))) == 0
    captured = capsys.readouterr()
    assert "holds a finished run" in captured.out
    assert "warning" not in captured.err
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    assert main(_args(shapes, finished, "--images", str(moved))) == 0
    captured = capsys.readouterr()
    assert "holds a finished run" in captured.out
    assert (
        f"holds a run trained with --images {os.path.realpath(folder)}; "
        f"continuing it with {os.path.realpath(moved)} (fine if the same "
        "data moved" in captured.err
    ), captured.err
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["a", "b", "c", "d"]))
    assert main(_args(shapes, finished, "--labels", str(labels))) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"keras-segformer train: error: {finished} holds a run with "
        "--labels unset; this command asks for a b c d: use the same "
        "settings to resume, or --overwrite / another --out."
    ), err


def test_command_continues_with_more_epochs_and_overwrites(
    shapes, finished, tmp_path, capsys, tiny_cli
):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    capsys.readouterr()
    assert main(_args(shapes, out, epochs=3)) == 0
    assert f"continuing the finished run in {out}" in capsys.readouterr().out
    assert _log_epochs(out) == [0, 1, 2]
    assert sorted(os.listdir(out / "checkpoints")) == [
        f"epoch-00{i}.weights.h5" for i in (1, 2, 3)
    ]
    assert _iterations(out / "model.keras") == 3  # the optimizer went on
    assert json.loads((out / "run.json").read_text())["model_epochs"] == 3

    assert main(_args(shapes, out, epochs=2)) == 2
    assert "--epochs 2 is fewer: ask for at least 3" in capsys.readouterr().err

    assert main(_args(shapes, out, "--overwrite", epochs=1)) == 0
    assert _log_epochs(out) == [0]
    assert os.listdir(out / "checkpoints") == ["epoch-001.weights.h5"]
    assert _iterations(out / "model.keras") == 1
    assert _temporaries(out) == []
