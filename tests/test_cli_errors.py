"""User errors on the command line: one message naming the file or flag,
exit status 2, no traceback (``--debug`` shows it); a bug keeps its
traceback."""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import BACKEND, tiny_segformer
from PIL import Image

from keras_segformer import cli
from keras_segformer.cli import common

# TensorFlow's C++ start-up log lines (absl format) are no part of the
# message.
_LOG_LINE = re.compile(r"^(WARNING: All log messages|[EWIF]\d{4} )")


def _save_image(path, size=(32, 32)):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _save_mask(path, value=1, size=(32, 32)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    tiny_segformer(3).save(path)
    return str(path)


def run_cli(*argv):
    """The real command in a fresh process: (status, message lines)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERAS_SEGFORMER_DEBUG", None)
    done = subprocess.run(
        [sys.executable, "-m", "keras_segformer", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    lines = [
        line
        for line in done.stderr.splitlines()
        if line.strip() and not _LOG_LINE.match(line)
    ]
    return done.returncode, lines


def _short_error(lines, *names):
    text = "\n".join(lines)
    assert "Traceback" not in text, text
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1, text
    for name in names:
        assert str(name) in errors[0], text
    return errors[0]


# ------------------------------------------------- fresh processes


def test_evaluate_bad_label_in_tf_data_is_one_line(keras_file, tmp_path):
    _save_image(str(tmp_path / "img" / "a.png"))
    mask = _save_mask(str(tmp_path / "ann" / "a.png"), value=9)
    status, lines = run_cli(
        "evaluate",
        "--model",
        keras_file,
        "--images",
        str(tmp_path / "img"),
        "--masks",
        str(tmp_path / "ann"),
    )
    assert status == 2
    line = _short_error(lines, mask, "num_classes=3")
    assert line.startswith("keras-segformer evaluate: error: Mask file")
    assert len(lines) <= 3, lines


# What a fresh process adds is its stderr (one line per unreadable file, no
# traceback, no TensorFlow log lines); what predict does with the folder is
# checked in process on every backend (test_cli_predict.py
# test_unreadable_image_is_named).
@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="the process's output, checked once (on TensorFlow); the "
    "behaviour is checked in process on every backend",
)
def test_predict_folder_writes_what_it_can(keras_file, tmp_path):
    folder = tmp_path / "in"
    _save_image(str(folder / "a.png"))
    _save_image(str(folder / "c.png"), size=(40, 36))
    truncated = folder / "b.png"
    truncated.write_bytes((folder / "a.png").read_bytes()[:60])
    text = folder / "d.jpg"
    text.write_text("not an image")
    out = tmp_path / "out"
    status, lines = run_cli(
        "predict",
        "--model",
        keras_file,
        "--input",
        str(folder),
        "--output",
        str(out),
        "--batch-size",
        "4",
    )
    assert status == 1, lines
    assert sorted(os.listdir(out)) == [
        "a_mask.png",
        "a_overlay.png",
        "c_mask.png",
        "c_overlay.png",
    ]
    assert np.array(Image.open(out / "c_mask.png")).shape == (40, 36)
    text_lines = "\n".join(lines)
    assert "Traceback" not in text_lines
    assert "2 of 4 images could not be read" in text_lines
    listed = [line for line in lines if line.startswith("  ")]
    assert len(listed) == 2
    assert str(truncated) in listed[0] and "truncated" in listed[0]
    assert str(text) in listed[1]


def test_convert_config_json_list_is_one_line(tmp_path):
    from hf_utils import HF_TINY, save_hf_model

    save_hf_model(tmp_path, task="segmentation", num_labels=3, **HF_TINY)
    (tmp_path / "config.json").write_text("[1, 2]")
    status, lines = run_cli(
        "convert", str(tmp_path), "--out", str(tmp_path / "m.keras")
    )
    assert status == 2
    _short_error(lines, tmp_path / "config.json", "JSON list")
    assert not (tmp_path / "m.keras").exists()


# ------------------------------------------------------- in process


def _main(capsys, *argv):
    status = cli.main(list(argv))
    return status, capsys.readouterr().err


def test_train_bad_mask_size_in_tf_data(tmp_path, capsys):
    image = _save_image(str(tmp_path / "img" / "a.png"))
    _save_mask(str(tmp_path / "ann" / "a.png"), size=(32, 30))
    status, err = _main(
        capsys,
        "train",
        "--num-classes",
        "3",
        "--images",
        str(tmp_path / "img"),
        "--masks",
        str(tmp_path / "ann"),
        "--epochs",
        "1",
        "--steps",
        "1",
        "--batch-size",
        "1",
        "--crop-size",
        "32",
        "--base-size",
        "32",
        "32",
        "--warmup-steps",
        "0",
        "--out",
        str(tmp_path / "run"),
    )
    assert status == 2, err
    line = _short_error(err.splitlines(), image, "32x30")
    assert line.startswith("keras-segformer train: error: Image file")


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_evaluate_unreadable_image(kind, keras_file, tmp_path, capsys):
    image = tmp_path / "img" / "a.png"
    _save_image(str(image))
    _save_mask(str(tmp_path / "ann" / "a.png"))
    if kind == "truncated":
        image.write_bytes(image.read_bytes()[:60])
    else:
        image.write_text("hello")
    status, err = _main(
        capsys,
        "evaluate",
        "--model",
        keras_file,
        "--images",
        str(tmp_path / "img"),
        "--masks",
        str(tmp_path / "ann"),
    )
    assert status == 2
    _short_error(err.splitlines(), image)


def test_evaluate_images_without_masks(keras_file, tmp_path, capsys):
    image = _save_image(str(tmp_path / "img" / "a.png"))
    (tmp_path / "ann").mkdir()
    status, err = _main(
        capsys,
        "evaluate",
        "--model",
        keras_file,
        "--images",
        str(tmp_path / "img"),
        "--masks",
        str(tmp_path / "ann"),
    )
    assert status == 2
    _short_error(err.splitlines(), image, "no mask")


def test_corrupt_keras_file(tmp_path, capsys):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"garbage" * 10)
    _save_image(str(tmp_path / "in" / "a.png"))
    status, err = _main(
        capsys,
        "predict",
        "--model",
        str(bad),
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
    )
    assert status == 2
    _short_error(err.splitlines(), bad)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_model_that_is_a_fifo_is_refused_not_waited_on(tmp_path, capsys):
    # Opening a FIFO blocks until something writes to it: predict hung.
    fifo = tmp_path / "m.keras"
    os.mkfifo(fifo)
    _save_image(str(tmp_path / "in" / "a.png"))
    status, err = _main(
        capsys,
        "predict",
        "--model",
        str(fifo),
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
    )
    assert status == 2
    _short_error(err.splitlines(), fifo)
    assert "not a regular file" in err


def test_package_warnings_are_one_line(keras_file, tmp_path, capsys):
    # Masks of only 0 and 255: a warning, printed as the CLI prints its
    # errors, not as Python's "path.py:45: UserWarning: ..." and the
    # source line of the call.
    _save_image(str(tmp_path / "img" / "a.png"))
    _save_mask(str(tmp_path / "ann" / "a.png"), value=255)
    mask = np.zeros((32, 32), np.uint8)
    mask[:16] = 255
    Image.fromarray(mask).save(tmp_path / "ann" / "a.png")
    status, err = _main(
        capsys,
        "evaluate",
        "--model",
        keras_file,
        "--images",
        str(tmp_path / "img"),
        "--masks",
        str(tmp_path / "ann"),
    )
    assert status == 0, err
    lines = [line for line in err.splitlines() if "warning" in line.lower()]
    assert len(lines) == 1, err
    assert lines[0].startswith("keras-segformer evaluate: warning: "), err
    assert "only 0 and 255" in lines[0] and "UserWarning" not in err, err


def test_a_keras_model_that_is_not_a_segformer(tmp_path, capsys):
    # Another model's .keras file loaded, then predict failed reading its
    # output with a traceback ("never been called").
    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    other.save(tmp_path / "dense.keras")
    _save_image(str(tmp_path / "in" / "a.png"))
    status, err = _main(
        capsys,
        "predict",
        "--model",
        str(tmp_path / "dense.keras"),
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
    )
    assert status == 2
    _short_error(err.splitlines(), tmp_path / "dense.keras", "not a SegFormer")


def test_predict_output_that_is_not_a_folder(keras_file, tmp_path, capsys):
    image = _save_image(str(tmp_path / "a.png"))
    for output in (image, os.path.join(image, "sub")):
        status, err = _main(
            capsys,
            "predict",
            "--model",
            keras_file,
            "--input",
            image,
            "--output",
            output,
        )
        assert status == 2
        _short_error(err.splitlines(), repr(output))


def test_predict_single_unreadable_file_is_an_error(
    keras_file, tmp_path, capsys
):
    text = tmp_path / "a.png"
    text.write_text("hello")
    status, err = _main(
        capsys,
        "predict",
        "--model",
        keras_file,
        "--input",
        str(text),
        "--output",
        str(tmp_path / "out"),
    )
    assert status == 2
    _short_error(err.splitlines(), text)


def test_nonexistent_paths(keras_file, tmp_path, capsys):
    missing = str(tmp_path / "nope")
    cases = [
        ("predict", "--model", missing, "--input", keras_file, "--output", "o"),
        ("predict", "--model", keras_file, "--input", missing, "--output", "o"),
        (
            "evaluate",
            "--model",
            keras_file,
            "--images",
            missing,
            "--masks",
            "m",
        ),
        ("convert", missing, "--out", str(tmp_path / "m.keras")),
        ("export", "--model", missing, "--format", "onnx", "--out", "x.onnx"),
    ]
    for argv in cases:
        status, err = _main(capsys, *argv)
        assert status == 2, argv
        _short_error(err.splitlines(), missing)


def test_convert_folder_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    status, err = _main(capsys, "convert", str(empty), "--out", "m.keras")
    assert status == 2
    _short_error(err.splitlines(), repr(str(empty)), "No weights")
    text = tmp_path / "text.pth"
    text.write_text("hello")
    status, err = _main(capsys, "convert", str(text), "--out", "m.keras")
    assert status == 2
    _short_error(err.splitlines(), repr(str(text)), "not a PyTorch")


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    missing = str(tmp_path / "nope.pth")
    argv = ["convert", missing, "--out", str(tmp_path / "m.keras")]
    with pytest.raises(FileNotFoundError):
        cli.main([*argv, "--debug"])
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", *argv])
    monkeypatch.setenv("KERAS_SEGFORMER_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli.main(argv)
    monkeypatch.setenv("KERAS_SEGFORMER_DEBUG", "0")
    assert cli.main(argv) == 2


def test_a_bug_keeps_its_traceback(monkeypatch):
    from keras_segformer.cli import convert

    def broken(args):
        raise RuntimeError("a bug")

    parser = cli.build_parser
    monkeypatch.setattr(
        cli,
        "build_parser",
        lambda: _with_func(parser(), "convert", broken),
    )
    assert convert.run is not broken
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["convert", "x.pth", "--out", "m.keras"])


def test_a_lost_worker_has_its_own_exit_status(monkeypatch, capsys):
    """Not a user error (2): 3, with the one-line message; the same
    command again resumes."""
    from keras_segformer.training.cluster import WorkerLostError

    def lost(args):
        raise WorkerLostError("worker 0 of 2: another worker stopped")

    parser = cli.build_parser
    monkeypatch.setattr(
        cli, "build_parser", lambda: _with_func(parser(), "train", lost)
    )
    argv = ["train", "--num-classes", "2", "--images", "i", "--masks", "m"]
    assert cli.main([*argv, "--out", "o"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "keras-segformer train: error: worker 0 of 2: another worker stopped"
    ]


def _with_func(parser, command, func):
    for action in parser._subparsers._group_actions:
        action.choices[command].set_defaults(func=func)
    return parser


def test_directory_given_as_an_output_file(keras_file, tmp_path, capsys):
    folder = tmp_path / "m.keras"
    folder.mkdir()
    status, err = _main(capsys, "convert", "x.pth", "--out", str(folder))
    assert status == 2
    _short_error(err.splitlines(), repr(str(folder)), "directory")
    status, err = _main(
        capsys,
        "export",
        "--model",
        keras_file,
        "--format",
        "onnx",
        "--out",
        str(tmp_path),
    )
    assert status == 2
    _short_error(err.splitlines(), str(tmp_path), "directory")


@pytest.mark.parametrize(
    "content", ['"just a string"', "7", '{"a": "cat"}', '{"id2label": 3}']
)
def test_labels_json_of_the_wrong_type(content, tmp_path):
    from keras_segformer.cli.common import read_class_names

    labels = tmp_path / "labels.json"
    labels.write_text(content)
    with pytest.raises(ValueError, match="--labels") as info:
        read_class_names(str(labels))
    assert str(labels) in str(info.value)
    labels.write_text('{"1": "dog", "0": "cat"}')
    assert read_class_names(str(labels), 2) == {0: "cat", 1: "dog"}


def test_keras_file_with_lambda_code_is_refused(tmp_path, capsys):
    import keras

    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    _save_image(str(tmp_path / "in" / "a.png"))
    status, err = _main(
        capsys,
        "predict",
        "--model",
        str(path),
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
    )
    assert status == 2
    assert "Lambda" in _short_error(err.splitlines(), path)
    assert not (tmp_path / "out" / "a_mask.png").exists()


@pytest.mark.parametrize("command", ["evaluate", "export", "predict"])
def test_model_commands_share_the_model_arguments(command, capsys):
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    actions = {a.dest: a for a in sub._actions}
    assert actions["model"].required
    assert "a .weights.h5 file" in actions["model"].help
    # One definition (an int >= 1) in every command.
    assert actions["num_classes"].type is common.int_at_least(1)
    assert not actions["variant"].required
    with pytest.raises(SystemExit):
        parser.parse_args([command])
    assert "--model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, values, expected",
    [
        ("--scales", ["1", "0"], "expected a number > 0, got '0'"),
        ("--scales", ["inf"], "expected a number > 0, got 'inf'"),
        ("--crop-size", ["16", "64"], "expected an image side >= 29"),
        ("--stride", ["0", "8"], "expected an int >= 1, got '0'"),
        ("--batch-size", ["0"], "expected an int >= 1, got '0'"),
    ],
)
def test_predict_refuses_bad_arguments(capsys, flag, values, expected):
    argv = ["predict", "--model", "m.keras", "--input", "i", "--output", "o"]
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, flag, *values])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(
        f"keras-segformer predict: error: argument {flag}: {expected}"
    ), last


def test_model_flags_are_for_a_weights_file_only(keras_file, tmp_path, capsys):
    """--num-classes / --variant with a .keras model were ignored."""
    image = _save_image(str(tmp_path / "a.png"))
    argv = ["predict", "--model", keras_file, "--input", image]
    argv += ["--output", str(tmp_path / "out"), "--num-classes", "7"]
    status, err = _main(capsys, *argv)
    assert status == 2
    _short_error(err.splitlines(), "--num-classes", keras_file)
    assert not (tmp_path / "out" / "a_mask.png").exists()


def test_weights_of_another_model_in_one_line(tmp_path, capsys):
    """Keras' message prints whole variables (kilobytes); the command says
    which variable does not fit, its two shapes and what to pass."""
    import keras_segformer

    weights = str(tmp_path / "b0.weights.h5")
    keras_segformer.build_segformer(3, "b0").save_weights(weights)
    argv = ["evaluate", "--model", weights, "--variant", "b0"]
    argv += ["--num-classes", "4", "--images", "i", "--masks", "m"]
    status, err = _main(capsys, *argv)
    assert status == 2
    line = _short_error(err.splitlines(), weights)
    assert "decode_head/classifier/kernel is (256, 4) in this model" in line
    assert "(256, 3) in the file" in line and len(line) < 500, line


def test_an_error_after_a_progress_line_starts_a_line(monkeypatch, capsys):
    """Keras' progress bar leaves its line open; the error once went on
    that line (`... 72ms/stepkeras-segformer evaluate: error: ...`)."""
    from keras_segformer.cli import evaluate

    def run(args):
        print("1/Unknown 0s 72ms/step", end="")
        raise ValueError("label 7 in x.png")

    monkeypatch.setattr(evaluate, "run", run)
    argv = ["evaluate", "--model", "m", "--images", "i", "--masks", "k"]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "1/Unknown 0s 72ms/step\n"
    assert err == "keras-segformer evaluate: error: label 7 in x.png\n"
