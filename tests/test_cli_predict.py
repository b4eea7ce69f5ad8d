"""``keras-segformer predict`` on a .keras model, a transformers directory
and a weights file."""

import os

import numpy as np
import pytest
from conftest import tiny_segformer
from PIL import Image

from keras_segformer import cli
from keras_segformer.export import load_model
from keras_segformer.inference import Segmenter

SIZES = [(45, 61), (70, 52)]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i, size in enumerate(SIZES):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    (folder / "readme.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "tiny.keras"
    model = tiny_segformer(5, id2label={i: f"thing{i}" for i in range(5)})
    model.save(path)
    return path


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from hf_utils import HF_TINY, save_hf_model

    directory = tmp_path_factory.mktemp("hf")
    save_hf_model(directory, task="segmentation", num_labels=7, **HF_TINY)
    return directory


def _predict(argv, capsys):
    rc = cli.main(["predict", *argv])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured


def _check_outputs(out_dir, image_dir, model, num_classes, **segmenter):
    segmenter = Segmenter(model, **segmenter)
    for i, size in enumerate(SIZES):
        mask_path = out_dir / f"img{i}_mask.png"
        overlay_path = out_dir / f"img{i}_overlay.png"
        assert mask_path.is_file() and overlay_path.is_file()
        mask = np.array(Image.open(mask_path))
        assert mask.shape == size
        assert mask.max() < num_classes
        expected = segmenter(str(image_dir / f"img{i}.png"))
        np.testing.assert_array_equal(mask, expected)
        overlay = Image.open(overlay_path)
        # Overlay at the image size, plus a legend panel on the right.
        assert overlay.height >= size[0] and overlay.width > size[1]
    assert sorted(os.listdir(out_dir)) == sorted(
        f"img{i}_{kind}.png" for i in range(2) for kind in ("mask", "overlay")
    )


def test_predict_folder_with_keras_file(
    keras_file, image_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    captured = _predict(
        [
            "--model",
            str(keras_file),
            "--input",
            str(image_dir),
            "--output",
            str(out),
            "--batch-size",
            "1",
        ],
        capsys,
    )
    assert "Wrote 4 files" in captured.out
    _check_outputs(out, image_dir, load_model(keras_file), 5)


def test_predict_transformers_dir_slide_flip(
    hf_dir, image_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    _predict(
        [
            "--model",
            str(hf_dir),
            "--input",
            str(image_dir),
            "--output",
            str(out),
            "--slide",
            "--crop-size",
            "40",
            "40",
            "--stride",
            "30",
            "30",
            "--flip",
            "--scales",
            "1.0",
            "1.25",
        ],
        capsys,
    )
    _check_outputs(
        out,
        image_dir,
        load_model(hf_dir),
        7,
        mode="slide",
        crop_size=(40, 40),
        stride=(30, 30),
        flip=True,
        scales=(1.0, 1.25),
    )


def test_predict_single_file_with_weights(image_dir, tmp_path, capsys):
    import keras_segformer

    # A weights file needs its variant: use B0-shaped weights.
    model = keras_segformer.SegFormerB0(num_classes=3)
    weights = tmp_path / "b0.weights.h5"
    model.save_weights(weights)
    out = tmp_path / "out"
    _predict(
        [
            "--model",
            str(weights),
            "--variant",
            "b0",
            "--num-classes",
            "3",
            "--input",
            str(image_dir / "img1.png"),
            "--output",
            str(out),
        ],
        capsys,
    )
    assert sorted(os.listdir(out)) == ["img1_mask.png", "img1_overlay.png"]
    mask = np.array(Image.open(out / "img1_mask.png"))
    np.testing.assert_array_equal(
        mask, Segmenter(model)(str(image_dir / "img1.png"))
    )


def test_palette_auto_uses_dataset_colours():
    from keras_segformer.cli.predict import resolve_palette
    from keras_segformer.inference import get_class_names

    class Fake:
        def __init__(self, names):
            self.num_classes = len(names)
            self.id2label = dict(enumerate(names))

    ade = get_class_names("ade20k")
    assert resolve_palette("auto", Fake(ade)) == ("ade20k", ade)
    city = get_class_names("cityscapes")
    assert resolve_palette("auto", Fake(city))[0] == "cityscapes"
    palette, names = resolve_palette("auto", Fake(["a", "b", "c"]))
    assert palette.shape == (3, 3) and names == ["a", "b", "c"]
    assert resolve_palette("cityscapes", Fake(["a"] * 19))[1] == ["a"] * 19


def test_unreadable_image_is_named(keras_file, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "a.png")
    (folder / "b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    rc = cli.main(
        [
            "predict",
            "--model",
            str(keras_file),
            "--input",
            str(folder),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    # The readable image is written; the unreadable one is listed; status 1.
    assert rc == 1
    err = capsys.readouterr().err
    assert "b_corrupt.png" in err and "Could not read image" in err
    assert "1 of 2 images could not be read" in err
    assert sorted(os.listdir(tmp_path / "out")) == [
        "a_mask.png",
        "a_overlay.png",
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--input", "{missing}"], "Input not found"),
        (["--input", "{empty}"], "No images in"),
        (["--model", "{missing}"], "Model not found"),
        (["--slide"], "--slide needs --crop-size"),
        (["--crop-size", "32", "32"], "used with --slide"),
    ],
)
def test_predict_errors(keras_file, image_dir, tmp_path, capsys, argv, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    paths = {"missing": str(tmp_path / "missing"), "empty": str(empty)}
    args = {
        "--model": str(keras_file),
        "--input": str(image_dir),
        "--output": str(tmp_path / "out"),
    }
    extra = []
    i = 0
    while i < len(argv):
        if argv[i] in args:
            args[argv[i]] = argv[i + 1].format(**paths)
            i += 2
        else:
            extra.append(argv[i])
            i += 1
    flat = [x for kv in args.items() for x in kv] + extra
    rc = cli.main(["predict", *flat])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_command_line_keeps_jax_compiled_steps(keras_file, image_dir, tmp_path):
    """On JAX the command line caches its compiled steps in the user's
    cache folder, so that the same command again does not compile them."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != cli.JAX_CACHE_ENV}
    env.update(
        KERAS_BACKEND="jax",
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        # Every program, however quick to compile (the tiny model's are).
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    argv = [sys.executable, "-m", "keras_segformer", "predict"]
    argv += ["--model", str(keras_file), "--input", str(image_dir / "img0.png")]
    argv += ["--output", str(tmp_path / "out")]
    result = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "cache" / "keras_segformer" / "jax"
    assert any(n.startswith("jit_predict_step") for n in os.listdir(folder))


def test_jax_compilation_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(cli.JAX_CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    expected = str(tmp_path / "keras_segformer" / "jax")
    assert cli.jax_compilation_cache_dir() == expected
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = str(tmp_path / "home" / ".cache" / "keras_segformer" / "jax")
    assert cli.jax_compilation_cache_dir() == expected
    monkeypatch.setenv(cli.JAX_CACHE_ENV, "/somewhere")
    assert cli.jax_compilation_cache_dir() == "/somewhere"
    monkeypatch.setenv(cli.JAX_CACHE_ENV, "")  # the user's "off"
    assert cli.jax_compilation_cache_dir() is None
    cli._use_jax_compilation_cache()
    assert os.environ[cli.JAX_CACHE_ENV] == ""  # left alone


@pytest.mark.parametrize(
    "shape, scales, view",
    [((10, 12), [], ""), ((40, 36), ["--scales", "0.5"], " makes it 18x20")],
)
def test_too_small_image_names_the_file(
    keras_file, tmp_path, capsys, shape, scales, view
):
    """An image the model cannot take is one line naming the file, its
    size (width x height) and the smallest the model takes; it said
    `scale 1.0 (size=None) resizes the 10x10 image to 10x10`."""
    from keras_segformer.cli.common import MIN_IMAGE_SIZE as m

    path = tmp_path / "t.png"
    Image.fromarray(np.zeros((*shape, 3), np.uint8)).save(path)
    argv = ["--model", str(keras_file), "--input", str(path)]
    rc = cli.main(["predict", *argv, "--output", str(tmp_path / "o"), *scales])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    size = f"{shape[1]}x{shape[0]} pixels"
    assert f"{path} is {size}" in err and view in err
    assert f"takes images of at least {m}x{m} pixels" in err
    assert not (tmp_path / "o" / "t_mask.png").exists()
