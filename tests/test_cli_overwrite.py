"""``export`` and ``convert`` never lose what ``--out`` already holds: an
existing output needs ``--overwrite``, which replaces only an earlier
output of the same kind, never the input model or a training run; an
extension of another format is refused (see ``keras_segformer.cli
.export``)."""

import errno
import os
import shutil

import keras
import pytest
from conftest import tiny_segformer

from keras_segformer import cli, io_atomic
from keras_segformer.cli import export as export_cli

# File headers of earlier exports (real tf2onnx / TFLite output starts so).
ONNX_BYTES = b"\x08\x08\x12\x07tf2onnx\x1a\x061.16.1" + bytes(64)
TFLITE_BYTES = b"\x1c\x00\x00\x00TFL3" + bytes(64)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    tiny_segformer(3).save(path)
    return path


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from keras_segformer.convert.to_hf import save_pretrained

    path = tmp_path_factory.mktemp("hf") / "tiny-hf"
    save_pretrained(tiny_segformer(4), str(path))
    return path


def _main(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    return status, capsys.readouterr().err


def _error(err, *names):
    """The one ``error:`` line; it names every one of ``names``."""
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for name in names:
        assert str(name) in lines[0], lines[0]
    return lines[0]


def _snapshot(root):
    """{relative path: bytes (files) or None (folders)} under ``root``."""
    root = str(root)
    if os.path.isfile(root):
        with open(root, "rb") as f:
            return {"": f.read()}
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


def _export(model, format, out, *more):
    return ("export", "--model", model, "--format", format, "--out", out, *more)


def _fake_saved_model(path):
    os.makedirs(path / "variables")
    os.makedirs(path / "assets")
    (path / "saved_model.pb").write_bytes(b"old graph")
    (path / "variables" / "variables.index").write_bytes(b"old index")
    (path / "assets" / "stale.txt").write_text("from the earlier export")


# ---------------------------------------------------------------- export


def test_overwrite_is_a_flag_of_export_and_convert():
    parser = cli.build_parser()
    for argv in (
        ["export", "--model", "m.keras", "--format", "onnx", "--out", "m"],
        ["convert", "a.pth", "--out", "m.keras"],
    ):
        assert parser.parse_args(argv).overwrite is False
        assert parser.parse_args([*argv, "--overwrite"]).overwrite is True


@pytest.mark.parametrize(
    "format, name, content",
    [("onnx", "m.onnx", ONNX_BYTES), ("tflite", "m.tflite", TFLITE_BYTES)],
    ids=["onnx", "tflite"],
)
def test_export_refuses_an_existing_file(
    model_file, tmp_path, capsys, format, name, content
):
    out = tmp_path / name
    out.write_bytes(content)
    status, err = _main(capsys, *_export(model_file, format, out))
    assert status == 2
    _error(err, f"--out {out} exists", "--overwrite")
    assert out.read_bytes() == content
    assert os.listdir(tmp_path) == [name]


def test_export_overwrite_replaces_an_earlier_saved_model(
    model_file, tmp_path, capsys
):
    out = tmp_path / "sm"
    _fake_saved_model(out)
    before = _snapshot(out)
    status, err = _main(capsys, *_export(model_file, "saved_model", out))
    assert status == 2
    _error(err, f"--out {out} exists", "--overwrite")
    assert _snapshot(out) == before

    argv = _export(model_file, "saved_model", out, "--overwrite")
    status, err = _main(capsys, *argv)
    assert status == 0, err
    assert not (out / "assets" / "stale.txt").exists()  # a new folder
    assert (out / "saved_model.pb").read_bytes() != b"old graph"
    assert os.listdir(out / "variables")
    assert os.listdir(tmp_path) == ["sm"]  # no temporary left beside it


def test_export_overwrite_replaces_an_earlier_tflite_file(
    model_file, tmp_path, capsys
):
    out = tmp_path / "m.tflite"
    out.write_bytes(TFLITE_BYTES)
    argv = _export(model_file, "tflite", out, "--overwrite")
    status, err = _main(capsys, *argv)
    assert status == 0, err
    written = out.read_bytes()
    assert written[4:8] == b"TFL3" and len(written) > len(TFLITE_BYTES)
    assert os.listdir(tmp_path) == ["m.tflite"]
    # The real file is told apart as an earlier export: repeated, the
    # command asks for --overwrite again and leaves it.
    status, err = _main(capsys, *_export(model_file, "tflite", out))
    assert status == 2
    _error(err, f"--out {out} exists (a TFLite file)", "--overwrite")
    assert out.read_bytes() == written


@pytest.mark.parametrize("format", ["tflite", "saved_model"])
def test_failed_export_leaves_the_earlier_output(
    model_file, tmp_path, capsys, monkeypatch, format
):
    import keras_segformer.export

    def broken_export(model, path, format, **kwargs):
        # Part of an artifact written, then the disk is full.
        if format == "saved_model":
            os.makedirs(os.path.join(path, "variables"))
            path = os.path.join(path, "saved_model.pb")
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(keras_segformer.export, "export_model", broken_export)
    if format == "tflite":
        out = tmp_path / "m.tflite"
        out.write_bytes(TFLITE_BYTES)
    else:
        out = tmp_path / "sm"
        _fake_saved_model(out)
    before = _snapshot(out)
    argv = _export(model_file, format, out, "--overwrite")
    status, err = _main(capsys, *argv)
    assert status == 4  # a full disk: its own exit status
    _error(err, f"cannot write {out}: no space left on device")
    assert _snapshot(out) == before
    assert os.listdir(tmp_path) == [out.name]


@pytest.mark.parametrize(
    "format, name, extension",
    [
        ("tflite", "wrong.onnx", ".onnx"),
        ("onnx", "wrong.tflite", ".tflite"),
        ("onnx", "model.keras", ".keras"),
        ("tflite", "model.weights.h5", ".h5"),
        ("saved_model", "model.onnx", ".onnx"),
        ("saved_model", "model.keras", ".keras"),
    ],
)
def test_export_refuses_the_extension_of_another_format(
    model_file, tmp_path, capsys, format, name, extension
):
    out = tmp_path / name
    argv = _export(model_file, format, out, "--overwrite")
    status, err = _main(capsys, *argv)
    assert status == 2
    _error(err, f"--out {out}", extension, f"--format {format}")
    assert not os.listdir(tmp_path)


def test_export_takes_an_out_without_extension(model_file, tmp_path):
    for format in ("onnx", "tflite", "saved_model"):
        out = str(tmp_path / f"model_{format}")
        assert export_cli.check_out(out, format, str(model_file)) is False
    (tmp_path / "model_onnx").write_bytes(ONNX_BYTES)
    out = str(tmp_path / "model_onnx")
    assert export_cli.check_out(out, "onnx", str(model_file), True) is True
    with pytest.raises(ValueError, match="is not a TFLite file"):
        export_cli.check_out(out, "tflite", str(model_file), True)


def test_out_is_never_the_model_even_with_overwrite(
    model_file, hf_dir, tmp_path, capsys
):
    model_bytes = model_file.read_bytes()
    hf_files = _snapshot(hf_dir)
    link = tmp_path / "link.onnx"
    link.symlink_to(model_file)
    cases = [
        # (argv, what the message says)
        (_export(model_file, "onnx", model_file), ".keras"),
        (_export(model_file, "saved_model", model_file.parent), "holds the"),
        (_export(model_file, "onnx", link), "is the --model itself"),
        (_export(hf_dir, "saved_model", hf_dir), "is the --model itself"),
        (
            ("convert", hf_dir, "--out", hf_dir),
            "is the source checkpoint itself",
        ),
    ]
    for argv, says in cases:
        status, err = _main(capsys, *argv, "--overwrite")
        assert status == 2, argv
        _error(err, "--out", says)
    assert model_file.read_bytes() == model_bytes
    assert _snapshot(hf_dir) == hf_files


def test_a_training_run_is_never_replaced(model_file, hf_dir, tmp_path, capsys):
    run = tmp_path / "runs" / "b0"
    os.makedirs(run / "checkpoints")
    (run / "run.json").write_text("{}")
    shutil.copy(model_file, run / "model.keras")
    (run / "checkpoints" / "epoch-001.weights.h5").write_bytes(
        b"\x89HDF\r\n\x1a\n" + bytes(64)
    )
    before = _snapshot(run)
    cases = [
        _export(model_file, "saved_model", run),
        ("convert", hf_dir, "--out", run),
        ("convert", hf_dir, "--out", run / "model.keras"),
        ("convert", hf_dir, "--out", run / "checkpoints/epoch-001.weights.h5"),
    ]
    for argv in cases:
        for more in ((), ("--overwrite",)):
            status, err = _main(capsys, *argv, *more)
            assert status == 2, argv
            _error(err, f"--out {argv[-1]}", "training run")
    assert _snapshot(run) == before
    # A folder of other files is no SavedModel either.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    argv = _export(model_file, "saved_model", other, "--overwrite")
    status, err = _main(capsys, *argv)
    assert status == 2
    _error(err, f"--out {other}", "notes.txt", "SavedModel")
    assert _snapshot(other) == {"notes.txt": b"mine"}


# --------------------------------------------------------------- convert


def test_convert_refuses_an_existing_model_then_overwrites(
    model_file, hf_dir, tmp_path, capsys
):
    out = tmp_path / "model.keras"
    shutil.copy(model_file, out)  # 3 classes; the checkpoint has 4
    status, err = _main(capsys, "convert", hf_dir, "--out", out)
    assert status == 2
    _error(err, f"--out {out} exists", "--overwrite")
    assert out.read_bytes() == model_file.read_bytes()

    status, err = _main(capsys, "convert", hf_dir, "--out", out, "--overwrite")
    assert status == 0, err
    assert keras.saving.load_model(out).output.shape[-1] == 4
    assert os.listdir(tmp_path) == ["model.keras"]


def test_convert_overwrites_only_an_earlier_transformers_folder(
    hf_dir, tmp_path, capsys
):
    out = tmp_path / "hf"
    status, err = _main(capsys, "convert", hf_dir, "--out", out)
    assert status == 0, err
    written = _snapshot(out)
    assert sorted(written) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    status, err = _main(capsys, "convert", hf_dir, "--out", out)
    assert status == 2
    _error(err, f"--out {out} exists", "--overwrite")
    assert _snapshot(out) == written

    (out / "config.json").write_text("{}")  # replaced as a whole
    status, err = _main(capsys, "convert", hf_dir, "--out", out, "--overwrite")
    assert status == 0, err
    assert _snapshot(out) == written
    assert os.listdir(tmp_path) == ["hf"]

    (out / "README.md").write_text("mine")
    status, err = _main(capsys, "convert", hf_dir, "--out", out, "--overwrite")
    assert status == 2
    _error(err, f"--out {out}", "README.md")
    assert (out / "README.md").read_text() == "mine"


@pytest.mark.parametrize(
    "error, said, status",
    [
        # Battery case e_export_readonly: '[Errno 30] Read-only file
        # system: '.../.m.tmp-PID.onnx'', the temporary, not --out.
        (
            lambda temp: OSError(errno.EROFS, "Read-only file system", temp),
            "--out {out}: cannot write there: read-only file system.",
            2,
        ),
        # Battery case e_export_sm_disk_full: TensorFlow's writer of the
        # temporary folder; the line named '.sm.tmp-PID'.
        (
            lambda temp: io_atomic.disk_full_error(
                temp, OSError(errno.ENOSPC, "No space left on device")
            ),
            "cannot write {out}: no space left on device",
            4,
        ),
    ],
)
def test_export_errors_name_out_not_the_temporary(
    model_file, tmp_path, capsys, monkeypatch, error, said, status
):
    import keras_segformer.export

    def failing_export(model, path, format, **kwargs):
        raise error(path)

    monkeypatch.setattr(keras_segformer.export, "export_model", failing_export)
    out = tmp_path / "m.onnx"
    code, err = _main(capsys, *_export(model_file, "onnx", out))
    assert code == status
    _error(err, said.format(out=out))
    assert ".tmp" not in err, err
    assert os.listdir(tmp_path) == []


def test_convert_on_a_full_disk_names_out(
    hf_dir, tmp_path, capsys, monkeypatch
):
    # Battery case e_convert_dir_disk_full: safetensors' SafetensorError
    # came out as a traceback (exit 1); then the line named the temporary
    # folder '.hf.tmp-PID'.
    import safetensors.numpy

    def full(state, path, metadata=None):
        raise safetensors.SafetensorError(
            "Error while serializing: I/O error: No space left on device "
            "(os error 28)"
        )

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    out = tmp_path / "hf"
    code, err = _main(capsys, "convert", hf_dir, "--out", out)
    assert code == 4
    _error(err, f"cannot write {out}: no space left on device")
    assert ".tmp" not in err, err
    assert os.listdir(tmp_path) == []


def test_export_to_a_read_only_folder_names_out(
    model_file, tmp_path, capsys, monkeypatch
):
    # Battery case e_export_readonly: removing an entry left at the
    # temporary name fails first there (EROFS even for no entry).
    def read_only(path):
        raise OSError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(io_atomic, "remove", read_only)
    out = tmp_path / "m.onnx"
    code, err = _main(capsys, *_export(model_file, "onnx", out))
    assert code == 2
    _error(err, f"--out {out}: cannot write there: read-only file system.")
    assert ".tmp" not in err, err
