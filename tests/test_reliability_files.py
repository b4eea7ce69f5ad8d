"""Files: one atomic writer that replaces links, only what we wrote is
ours, faults that end in one line (keras_segformer.io_atomic, the run
folder, predict's outputs, the CLI's exit statuses, size bounds)."""

import errno
import os
import struct
import subprocess
import sys
import types
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from keras_segformer import io_atomic, memory
from keras_segformer.cli import main
from keras_segformer.cli import predict as predict_cli
from keras_segformer.inference import visualize
from keras_segformer.training import run_files


def _target(tmp_path):
    target = tmp_path / "elsewhere" / "precious.txt"
    target.parent.mkdir()
    target.write_text("the user's")
    return target


def _planted(path, target):
    os.symlink(target, path)
    return path


def _untouched(path, target):
    assert target.read_text() == "the user's"
    assert not os.path.islink(path)


# -- one way to write a file ------------------------------------------------


def test_write_atomic_replaces_a_link_and_a_link_at_the_temporary(tmp_path):
    target = _target(tmp_path)
    path = _planted(tmp_path / "run.json", target)
    # A link left at the temporary name is not written through either.
    _planted(io_atomic.temporary_path(path), target)
    io_atomic.write_text(path, "{}")
    _untouched(path, target)
    assert path.read_text() == "{}"
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "run.json"]


def test_the_epoch_log_replaces_a_link(tmp_path):
    target = _target(tmp_path)
    log = _planted(tmp_path / run_files.LOG_FILE, target)
    logger = run_files.EpochLog(str(log))
    logger.on_train_begin()
    logger.on_epoch_end(0, {"loss": 0.5})
    _untouched(log, target)
    assert "0.5" in log.read_text().splitlines()[1]


def test_masks_and_overlays_replace_links(tmp_path):
    target = _target(tmp_path)
    mask_link = _planted(tmp_path / "a_mask.png", target)
    overlay_link = _planted(tmp_path / "a_overlay.png", target)
    image = np.zeros((8, 8, 3), np.uint8)
    mask = np.ones((8, 8), np.int32)
    visualize.save_prediction(image, mask, tmp_path, "a")
    _untouched(mask_link, target)
    _untouched(overlay_link, target)
    np.testing.assert_array_equal(np.array(Image.open(mask_link)), mask)
    assert visualize.written_here(mask_link)
    assert visualize.written_here(overlay_link)


def test_exports_and_conversions_replace_links(tmp_path):
    """``written_in_place`` (export, convert): a file and a folder."""
    target = _target(tmp_path)
    out = _planted(tmp_path / "model.tflite", target)
    with io_atomic.written_in_place(out) as temp:
        with open(temp, "wb") as f:
            f.write(b"model")
    _untouched(out, target)
    assert out.read_bytes() == b"model"
    folder = _planted(tmp_path / "saved_model", target.parent)
    with io_atomic.written_in_place(folder) as temp:
        os.makedirs(temp)
        (open(os.path.join(temp, "saved_model.pb"), "wb")).close()
    _untouched(folder, target)
    assert os.listdir(folder) == ["saved_model.pb"]
    assert os.listdir(target.parent) == ["precious.txt"]


def test_demo_data_replaces_links(tmp_path):
    from keras_segformer.data import synthetic

    target = _target(tmp_path)
    out = tmp_path / "data"
    out.mkdir()
    link = _planted(out / "classes.json", target)
    synthetic.generate(out, num_train=1, num_val=0, size=(32, 32))
    _untouched(link, target)
    assert "class_names" in link.read_text()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    """A fault-injecting writer: half the file, then ENOSPC."""
    path = tmp_path / "model.keras"
    path.write_bytes(b"old model")

    def write(temporary):
        with open(temporary, "wb") as f:
            f.write(b"half a mod")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(io_atomic.DiskFullError) as e:
        io_atomic.write_atomic(path, write)
    assert str(e.value).startswith(f"cannot write {path}: no space left")
    assert e.value.exit_status == 4
    assert path.read_bytes() == b"old model"
    assert os.listdir(tmp_path) == ["model.keras"]


DISK_FULL = """
import os, resource, signal, sys
sys.path.insert(0, {tests!r})
from conftest import tiny_segformer
from keras_segformer.io_atomic import write_atomic
model = tiny_segformer(3)
out = sys.argv[1]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
# Writes past 20 kB fail (EFBIG) as on a full disk, inside HDF5 too.
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))
try:
    write_atomic(os.path.join(out, "a.weights.h5"), model.save_weights)
except OSError as e:
    print(type(e).__name__, e)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE: POSIX")
def test_weights_on_a_full_disk_end_in_one_line(tmp_path):
    """HDF5 failing to write crashed the process inside h5py (exit 139,
    pages of errors); built in memory, the weights meet the disk through
    Python's write: one error, exit 0 here, nothing left behind."""
    script = DISK_FULL.format(tests=os.path.dirname(__file__))
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "DiskFullError cannot write" in done.stdout, done.stdout
    assert "file too large (a file-size limit)" in done.stdout
    assert "h5py" not in done.stderr, done.stderr[-2000:]
    assert os.listdir(tmp_path) == []


def test_the_run_lock_does_not_follow_a_link(tmp_path):
    from keras_segformer.training.run_lock import LOCK_FILE, run_lock

    target = _target(tmp_path)
    lock = _planted(tmp_path / LOCK_FILE, target)
    with run_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    _untouched(lock, target)
    # A second name of another file (a hard link) is not the lock either.
    os.remove(lock)
    os.link(target, lock)
    with run_lock(tmp_path):
        pass
    assert target.read_text() == "the user's"
    assert os.stat(lock).st_nlink == 1


# -- only what we wrote is ours ----------------------------------------------


def _make_run(folder):
    for name in (
        "run.json",
        "model.keras",
        "log.csv",
        "checkpoints/epoch-001.weights.h5",
        "checkpoints/.epoch-002.tmp-7.weights.h5",
        "backup/state-001.weights.h5",
        "backup/state.json",
        "tensorboard/train/events.out.tfevents.1.host.2.v2",
    ):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"run")


def test_overwrite_removes_only_the_files_a_run_wrote(tmp_path):
    _make_run(tmp_path)
    (tmp_path / "checkpoints" / "mine.h5").write_bytes(b"mine")
    (tmp_path / "backup" / "notes.txt").write_bytes(b"mine")
    (tmp_path / "data").mkdir()
    run_files.clear_run(tmp_path)
    left = sorted(
        os.path.relpath(os.path.join(root, name), tmp_path)
        for root, dirs, files in os.walk(tmp_path)
        for name in files + dirs
    )
    assert left == [
        "backup",
        "backup/notes.txt",
        "checkpoints",
        "checkpoints/mine.h5",
        "data",
    ]
    # The backup of a finished run goes the same way.
    _make_run(tmp_path / "again")
    run_files.remove_backup(tmp_path / "again")
    assert not (tmp_path / "again" / "backup").exists()


def test_train_overwrite_refuses_a_folder_that_never_held_a_run(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out"
    for name in ("checkpoints/best.ckpt", "backup/old.h5"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"mine")
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "a.png")
    Image.new("L", (32, 32)).save(tmp_path / "masks" / "a.png")
    args = ["train", "--num-classes", "2", "--images", "images"]
    args += ["--masks", "masks", "--out", str(out), "--overwrite"]
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"keras-segformer train: error: {out} never held a training run "
        "(no run.json) but holds checkpoints, backup: --overwrite removes "
        "only the files of a run, never these. Move them, or choose "
        "another --out."
    )
    assert (out / "checkpoints" / "best.ckpt").read_bytes() == b"mine"
    assert (out / "backup" / "old.h5").read_bytes() == b"mine"


def _folder_with_truth(tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    Image.new("RGB", (32, 32)).save(images / "cat.png")
    Image.new("L", (32, 32), 1).save(images / "cat_mask.png")  # the truth
    return images


def test_predict_never_replaces_an_input_or_a_mask_beside_it(tmp_path, capsys):
    images = _folder_with_truth(tmp_path)
    truth = (images / "cat_mask.png").read_bytes()
    args = ["predict", "--model", str(tmp_path / "unused.keras")]
    assert main([*args, "--input", str(images), "--output", str(images)]) == 2
    err = capsys.readouterr().err
    assert f"{images / 'cat_mask.png'} (the output for " in err
    assert "is an input image; predict never replaces a file" in err
    assert (images / "cat_mask.png").read_bytes() == truth
    # A link at an output name: refused, its target untouched.
    target = _target(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    _planted(out / "cat_overlay.png", target)
    single = str(images / "cat.png")
    assert main([*args, "--input", single, "--output", str(out)]) == 2
    assert "is a link" in capsys.readouterr().err
    assert target.read_text() == "the user's"


def test_predict_does_not_read_its_outputs_and_names_never_collide(tmp_path):
    images = _folder_with_truth(tmp_path)
    visualize.save_prediction(
        np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), int), images, "cat"
    )
    files = predict_cli.list_images(str(images))
    assert [os.path.basename(f) for f in files] == ["cat.png"]
    stems = predict_cli._output_stems(
        ["a.png", "a.jpg", "a_png.png", "A.PNG", "b/x.png", "c/x.png"]
    )
    assert len({s.lower() for s in stems}) == len(stems), stems
    assert stems[:2] == ["a_png", "a_jpg"]


# -- faults end cleanly -------------------------------------------------------


@pytest.mark.parametrize(
    "fault, status, said",
    [
        (KeyboardInterrupt(), 130, "keras-segformer predict: interrupted;"),
        (
            OSError(errno.ENOSPC, "No space left on device"),
            2,
            "keras-segformer predict: error: [Errno 28] No space left",
        ),
        (
            io_atomic.DiskFullError("cannot write x.png: no space left"),
            4,
            "keras-segformer predict: error: cannot write x.png: no space",
        ),
    ],
)
def test_interrupts_and_faults_are_one_line_and_a_status(
    fault, status, said, monkeypatch, capsys
):
    def fail(path):
        raise fault

    monkeypatch.setattr(predict_cli, "list_images", fail)
    args = ["predict", "--model", "m.keras", "--input", "x", "--output", "o"]
    assert main(args) == status
    err = capsys.readouterr().err.strip()
    assert err.startswith(said), err
    assert "Traceback" not in err and len(err.splitlines()) == 1


# A command interrupted whose shutdown takes a while (TensorFlow's takes
# seconds): a thread the interpreter waits for at exit.
_SLOW_SHUTDOWN = """
import sys, threading, time
import keras_segformer.cli as cli

def _main(argv):
    print("ready", flush=True)
    try:
        time.sleep(60)
    finally:
        threading.Thread(target=time.sleep, args=(3,)).start()

cli._main = _main
sys.exit(cli.main())
"""


def test_a_second_interrupt_during_the_shutdown_is_ignored(tmp_path):
    """Ctrl-C twice: the one line and status 130 (the second SIGINT, after
    the line, killed the process: status -2)."""
    import select
    import signal

    def interruptible():
        # A command started in the background (CI's parallel parts, nohup)
        # inherits SIGINT ignored, as a terminal's Ctrl-C never reaches it;
        # the child here is a command run in a terminal.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SHUTDOWN, "train"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        preexec_fn=interruptible,
    )

    def line(stream):
        ready, _, _ = select.select([stream], [], [], 60)
        return stream.readline() if ready else ""

    try:
        assert line(process.stdout) == "ready\n"
        process.send_signal(signal.SIGINT)
        said = line(process.stderr)  # Keras start-up records first
        while said and "interrupted" not in said:
            said = line(process.stderr)
        assert said.startswith("keras-segformer train: interrupted;"), said
        process.send_signal(signal.SIGINT)  # during the 3 s shutdown
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130 and not err.strip(), err


def _fake_model(classes=19, hidden=64, decoder=768):
    return types.SimpleNamespace(
        backbone=types.SimpleNamespace(hidden_sizes=[hidden]),
        decoder_hidden_size=decoder,
        output=types.SimpleNamespace(shape=(None, None, None, classes)),
    )


def test_sizes_that_cannot_fit_are_refused_before_any_work(
    tmp_path, monkeypatch
):
    image = tmp_path / "big.png"
    Image.new("RGB", (2000, 1500)).save(image)
    monkeypatch.setattr(memory, "available_memory", lambda: 16 * 2**30)
    args = types.SimpleNamespace(
        scales=[1.0], flip=False, slide=False, crop_size=None, batch_size=4
    )
    model = _fake_model()
    predict_cli.check_memory([str(image)], model, args)  # fits
    args.scales = [1.0, 4.0]
    with pytest.raises(ValueError) as e:
        predict_cli.check_memory([str(image)], model, args)
    message = str(e.value)
    assert message.startswith(f"--scales 1 4 on {image} (2000x1500) needs")
    assert "--slide --crop-size 512 512" in message
    # Windows bound the model's part: --slide fits where whole did not.
    args.slide, args.crop_size = True, [512, 512]
    predict_cli.check_memory([str(image)], model, args)
    # A header claiming 100000x100000 (past PIL's own bomb bound): refused
    # with its size, no pixel read.
    huge = tmp_path / "huge.png"
    header = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    huge.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(header))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", 0)
        + b"IDAT"
        + struct.pack(">I", zlib.crc32(b"IDAT"))
    )
    args.slide, args.crop_size, args.scales = False, None, [1.0]
    with pytest.raises(ValueError, match=r"huge.png \(100000x100000\)"):
        predict_cli.check_memory([str(huge)], model, args)


def test_evaluate_eval_size_that_cannot_fit_is_refused(tmp_path, monkeypatch):
    # Battery case e_huge_eval_size: --eval-size 100000 died in
    # TensorFlow's allocator (a traceback) after minutes of work.
    from keras_segformer.cli import evaluate as evaluate_cli

    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    Image.new("RGB", (64, 48)).save(tmp_path / "img" / "a.png")
    Image.new("L", (64, 48)).save(tmp_path / "ann" / "a.png")
    monkeypatch.setattr(memory, "available_memory", lambda: 16 * 2**30)
    args = types.SimpleNamespace(
        images=str(tmp_path / "img"), masks=str(tmp_path / "ann"), eval_size=512
    )
    model = _fake_model()
    evaluate_cli.check_memory(model, args)  # fits
    args.eval_size = 100000
    with pytest.raises(ValueError) as e:
        evaluate_cli.check_memory(model, args)
    message = str(e.value)
    assert message.startswith("--eval-size 100000: "), message
    assert "133333x100000 needs about" in message
    assert "smaller --eval-size" in message and "\n" not in message


def test_a_keras_zip_that_inflates_too_far_is_refused_unread(
    tmp_path, monkeypatch
):
    import keras

    from keras_segformer.export.loading import load_model

    def never(*args, **kwargs):
        raise AssertionError("read")

    monkeypatch.setattr(keras.saving, "load_model", never)
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", bytes(40 * 2**20))
    with pytest.raises(ValueError) as e:
        load_model(str(bomb))
    message = str(e.value)
    assert message.startswith(
        f"{str(bomb)!r}: its member 'model.weights.h5' inflates to 40 MiB, "
    )
    assert message.endswith("not a model file; not read.")
