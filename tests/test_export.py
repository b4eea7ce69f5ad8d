"""Export to SavedModel, TFLite and ONNX, on every Keras backend.

Each artifact is compared with the Keras model of the running backend.
Conversions are slow (TFLite, tf2onnx), so each module fixture writes all
its artifacts with one ``export_many`` call (one TensorFlow worker process
on JAX and PyTorch) and the tests share them.

On JAX and PyTorch every format is written by that TensorFlow worker from
a ``.keras`` copy of the model, with the code the TensorFlow backend runs
in process. What depends on the backend is checked on every backend: its
weights reach each float format (at every size), the calibration images
reach the worker (int8), and Keras' ``model.export`` reaches the worker.
What is TensorFlow graph work, the same from every backend (pre- and
post-processing inside the graph, float16, each ``model.export`` format,
the CLI's argument handling), is checked once, on TensorFlow.
"""

import contextlib
import io
import os
import warnings
import zipfile

import keras
import numpy as np
import pytest
from conftest import tiny_segformer
from PIL import Image

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")

from conftest import BACKEND  # noqa: E402

from keras_segformer import cli  # noqa: E402
from keras_segformer.export import (  # noqa: E402
    ExportedModel,
    calibration_images,
    export_many,
    export_model,
    load_model,
)
from keras_segformer.inference import (  # noqa: E402
    Segmenter,
    normalize_image,
)

SIZES = [(61, 83), (97, 131)]
NUM_CLASSES = 4
ATOL = 1e-4
FLOAT_FORMATS = {
    "tf_saved_model": "float_saved_model",
    "onnx": "float.onnx",
    "litert": "float.tflite",
}
# Share of pixels where the quantized TFLite model's argmax equals the
# Keras model's, on a briefly trained model (see `_train_tiny`); the
# measured shares per backend are in the keras_segformer.export docstring.
MIN_AGREEMENT = {"float16": 0.995, "int8": 0.9}
ON_TENSORFLOW = BACKEND == "tensorflow"
# The same TensorFlow graph work from every backend (module docstring).
tensorflow_only = pytest.mark.skipif(
    not ON_TENSORFLOW,
    reason="TensorFlow graph work, the same from every backend: checked on "
    "TensorFlow (the float formats check this backend's weights)",
)


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _images(rng, size, batch=2):
    return rng.normal(size=(batch, *size, 3)).astype("float32")


def _render_set(count, size, seed, num_classes):
    from keras_segformer.data import synthetic

    pairs = [
        synthetic.render(np.random.default_rng([seed, i]), size, num_classes)
        for i in range(count)
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@contextlib.contextmanager
def _torch_single_thread():
    # Tiny batches: PyTorch's intra-op threads only spin and, on a busy
    # machine, make training several times slower (measured 12 s -> 3 s).
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train_tiny(num_classes):
    """A tiny SegFormer trained briefly on synthetic shapes, so that its
    argmax means something (checked in the quantization test)."""
    keras.utils.set_random_seed(0)
    images, masks = _render_set(40, (64, 64), 0, num_classes)
    x = np.stack([normalize_image(i) for i in images])
    # Labels at the logits' 1/4 resolution: plain cross-entropy traces
    # much faster than the upsampling SegFormerLoss on TensorFlow.
    y = np.stack(masks)[:, 2::4, 2::4].astype("int32")
    model = tiny_segformer(num_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(5e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    with _torch_single_thread():
        model.fit(x, y, batch_size=8, epochs=8, verbose=0)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The trained tiny model and all its artifacts, written in one go."""
    out = tmp_path_factory.mktemp("export")
    model = _train_tiny(NUM_CLASSES)
    calibration, _ = _render_set(16, (64, 64), 1, NUM_CLASSES)
    specs = [
        {"path": out / name, "format": fmt}
        for fmt, name in FLOAT_FORMATS.items()
    ]
    if ON_TENSORFLOW:
        specs += _tensorflow_only_specs(out)
    specs.append(
        {
            "path": out / "int8.tflite",
            "format": "litert",
            "quantization": "int8",
            "representative_images": calibration,
        }
    )
    paths = export_many(model, specs)
    return model, dict(zip([os.path.basename(p) for p in paths], paths))


def _tensorflow_only_specs(out):
    return [
        {
            "path": out / "prepost.onnx",
            "format": "onnx",
            "include_preprocessing": True,
            "include_postprocessing": True,
        },
        {
            # The older spelling of "litert" still works (an alias).
            "path": out / "prepost.tflite",
            "format": "tflite",
            "include_preprocessing": True,
            "include_postprocessing": True,
            "input_size": SIZES[0],
        },
        {
            "path": out / "float16.tflite",
            "format": "litert",
            "quantization": "float16",
        },
    ]


@pytest.mark.parametrize("fmt", list(FLOAT_FORMATS))
def test_float_export_matches_keras_at_any_size(exported, fmt):
    model, paths = exported
    run = ExportedModel(paths[FLOAT_FORMATS[fmt]])
    assert run.output_name == "logits"
    rng = np.random.default_rng(0)
    for size in SIZES:
        x = _images(rng, size)
        expected = _numpy(model(x, training=False))
        got = run(x)
        logits_size = [-(-s // 4) for s in size]
        assert got.shape == expected.shape == (2, *logits_size, NUM_CLASSES)
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("fmt", list(FLOAT_FORMATS))
def test_export_equals_call_without_training_flag(exported, fmt):
    # reference.md pitfall: a layer defaulting to training=True would make
    # model(x) (and a traced export) run BatchNorm in training mode.
    model, paths = exported
    x = _images(np.random.default_rng(3), SIZES[1])
    got = ExportedModel(paths[FLOAT_FORMATS[fmt]])(x)
    np.testing.assert_allclose(got, _numpy(model(x)), atol=ATOL, rtol=0)
    # The comparison can tell: training mode is far off. (A training call
    # updates the BatchNorm statistics: restore them for the other tests.)
    weights = model.get_weights()
    training = _numpy(model(x, training=True))
    model.set_weights(weights)
    assert np.abs(got - training).max() > 100 * ATOL


def _pipeline_mask(model, image):
    """The Keras pipeline: numpy pre-processing, model, numpy resize."""
    return Segmenter(model)(image)


def _assert_same_mask(model, image, mask):
    expected = _pipeline_mask(model, image)
    assert mask.shape == expected.shape == image.shape[:2]
    differ = mask != expected
    if differ.any():
        # Only near-ties may flip (float rounding of the two pipelines).
        logits = Segmenter(model).predict_logits(image)
        top2 = np.sort(logits, axis=-1)[..., -2:]
        assert np.all((top2[..., 1] - top2[..., 0])[differ] < 1e-4)
    assert differ.mean() < 1e-3


@tensorflow_only
@pytest.mark.parametrize(
    "name, size",
    [("prepost.onnx", SIZES[0]), ("prepost.onnx", SIZES[1])]
    + [("prepost.tflite", SIZES[0])],
)
def test_raw_uint8_in_mask_out(exported, name, size):
    model, paths = exported
    run = ExportedModel(paths[name])
    assert run.output_name == "mask"
    assert run.input_dtype == np.uint8
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (2, *size, 3), dtype=np.uint8)
    masks = run(images)
    assert masks.shape == (2, *size)
    assert masks.dtype == np.int32
    for image, mask in zip(images, masks):
        _assert_same_mask(model, image, mask)


@pytest.mark.parametrize(
    "quantization", [pytest.param("float16", marks=tensorflow_only), "int8"]
)
def test_quantized_tflite_agrees_with_float_argmax(exported, quantization):
    model, paths = exported
    num_classes = NUM_CLASSES
    images, masks = _render_set(6, (96, 128), 2, num_classes)
    x = np.stack([normalize_image(i) for i in images])
    logits = _numpy(model(x, training=False))
    expected = logits.argmax(-1)
    # The model must be meaningful for the agreement to mean anything:
    # better than the majority class, with several classes predicted.
    labels = np.stack(masks)[:, 2::4, 2::4]
    accuracy = (expected == labels).mean()
    majority = np.bincount(labels.ravel()).max() / labels.size
    assert accuracy > majority + 0.1, (accuracy, majority)
    shares = np.bincount(expected.ravel(), minlength=num_classes)
    assert (shares / expected.size > 0.05).sum() >= 2
    got = ExportedModel(paths[f"{quantization}.tflite"])(x)
    assert got.shape == logits.shape
    agreement = (got.argmax(-1) == expected).mean()
    print(f"{quantization} argmax agreement: {agreement:.4f}")
    assert agreement >= MIN_AGREEMENT[quantization], agreement


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from hf_utils import HF_TINY, save_hf_model

    directory = tmp_path_factory.mktemp("hf")
    save_hf_model(directory, task="segmentation", num_labels=7, **HF_TINY)
    return directory


@tensorflow_only
def test_cli_export_of_transformers_directory(hf_dir, tmp_path, capsys):
    out = tmp_path / "nested" / "hf_saved_model"
    rc = cli.main(
        [
            "export",
            "--model",
            str(hf_dir),
            "--format",
            "saved_model",  # the alias of tf_saved_model
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert "Exported tf_saved_model" in capsys.readouterr().out
    model = load_model(hf_dir)
    run = ExportedModel(out)
    # One size: dynamic sizes are checked above; each new shape costs a
    # compile on JAX.
    x = _images(np.random.default_rng(7), SIZES[1])
    expected = _numpy(model(x, training=False))
    assert expected.shape[-1] == 7
    np.testing.assert_allclose(run(x), expected, atol=ATOL, rtol=0)


# ------------------------------------------------------------ errors (fast)


@pytest.fixture
def small_model():
    return tiny_segformer(3)


def test_unknown_format(small_model, tmp_path):
    with pytest.raises(ValueError, match="Unknown export format 'tflight'"):
        export_model(small_model, tmp_path / "m", "tflight")


def test_quantization_needs_tflite(small_model, tmp_path):
    with pytest.raises(ValueError, match="'float16' is available for the lit"):
        export_model(
            small_model, tmp_path / "m.onnx", "onnx", quantization="float16"
        )
    with pytest.raises(ValueError, match="Unknown quantization 'int4'"):
        export_model(
            small_model, tmp_path / "m.tflite", "tflite", quantization="int4"
        )


def test_int8_without_calibration_images(small_model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="needs calibration images"):
        export_model(
            small_model,
            tmp_path / "m.tflite",
            "tflite",
            quantization="int8",
            representative_images=empty,
        )
    with pytest.raises(ValueError, match="needs calibration images"):
        export_model(
            small_model,
            tmp_path / "m.tflite",
            "tflite",
            quantization="int8",
            representative_images=[],
        )
    with pytest.raises(ValueError, match="calibration data for"):
        export_model(
            small_model,
            tmp_path / "m.tflite",
            "tflite",
            representative_images=empty,
        )


def test_output_path_not_writable(small_model, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    with pytest.raises(OSError, match="is not writable"):
        export_model(small_model, blocker / "m.onnx", "onnx")
    with pytest.raises(OSError, match="is a directory"):
        export_model(small_model, tmp_path, "onnx")
    with pytest.raises(OSError, match="is a file"):
        export_model(small_model, blocker, "saved_model")


@pytest.mark.skipif(not ON_TENSORFLOW, reason="written in a worker process")
def test_saved_model_on_a_full_disk(small_model, tmp_path, monkeypatch):
    # TensorFlow's SavedModel writer meets a full disk as a
    # ResourceExhaustedError, not an OSError: `export` printed its
    # traceback and exited 1 instead of one line and status 4.
    import tensorflow as tf

    from keras_segformer import io_atomic

    def full(obj, path, signatures=None):
        os.makedirs(os.path.join(path, "variables"))
        raise tf.errors.ResourceExhaustedError(
            None, None, f"{path}/variables/part-0; No space left on device"
        )

    monkeypatch.setattr(tf.saved_model, "save", full)
    folder = tmp_path / "full"
    folder.mkdir()
    with pytest.raises(io_atomic.DiskFullError, match="no space left") as e:
        export_model(small_model, folder / "sm", "tf_saved_model")
    assert e.value.exit_status == 4 and "sm" in str(e.value)
    assert os.listdir(folder) == []  # the temporary folder removed


def test_bad_input_options(small_model, tmp_path):
    with pytest.raises(ValueError, match="too small"):
        export_model(small_model, tmp_path / "m", input_size=(16, 64))
    with pytest.raises(ValueError, match="needs include_preprocessing"):
        export_model(small_model, tmp_path / "m", input_dtype="uint8")


def test_postprocessing_needs_segmentation_logits(tmp_path):
    from conftest import TINY

    import keras_segformer

    classifier = keras_segformer.build_classifier(4, **TINY)
    with pytest.raises(ValueError, match="segmentation model"):
        export_model(classifier, tmp_path / "m", include_postprocessing=True)


def test_unreadable_model_file(tmp_path, capsys):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="is not a Keras model file"):
        load_model(bad)
    # A zip archive, but not one that model.save wrote.
    other = tmp_path / "other.keras"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("notes.txt", "no model here")
    with pytest.raises(ValueError, match="Could not read the Keras model"):
        load_model(other)
    with pytest.raises(FileNotFoundError, match="Model not found"):
        load_model(tmp_path / "missing.keras")
    with pytest.raises(ValueError, match="--variant"):
        load_model(_touch(tmp_path / "w.weights.h5"))
    rc = cli.main(
        [
            "export",
            "--model",
            str(bad),
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "m.onnx"),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "is not a Keras model file" in err
    assert "broken.keras" in err


def _touch(path):
    path.write_bytes(b"")
    return path


def test_calibration_images_sources(tmp_path):
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 50), (70, 30)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), np.uint8)).save(
            tmp_path / f"img{i}.png"
        )
    got = calibration_images(tmp_path, size=(32, 48))
    assert [g.shape for g in got] == [(32, 48, 3)] * 2
    assert all(g.dtype == np.uint8 for g in got)
    own = calibration_images(tmp_path)
    assert [g.shape for g in own] == [(40, 50, 3), (70, 30, 3)]
    batch = rng.integers(0, 256, (3, 20, 20, 3), np.uint8)
    assert len(calibration_images(batch)) == 3
    with pytest.warns(UserWarning, match="synthetic"):
        synthetic = calibration_images(None, size=(64, 80))
    assert len(synthetic) >= 8
    assert synthetic[0].shape == (64, 80, 3)
    assert len({s.tobytes() for s in synthetic}) == len(synthetic)
    with pytest.raises(FileNotFoundError, match="not found"):
        calibration_images(tmp_path / "nope")


# ------------------------------------------------ Keras' model.export


def _keras_spec(size, dtype="float32"):
    return [keras.InputSpec(shape=(None, *size, 3), dtype=dtype)]


# format -> (file name, extra arguments of model.export)
KERAS_EXPORTS = {
    "tf_saved_model": ("keras_saved_model", {}),
    "onnx": ("keras.onnx", {"verbose": False}),
    "litert": ("keras.tflite", {"input_signature": _keras_spec(SIZES[0])}),
}


@pytest.fixture(scope="module")
def keras_exported(tmp_path_factory):
    """A tiny SegFormer compiled with the training defaults (loss,
    GroupedAdamW with its state, MeanIoU), written once per format with
    Keras' ``model.export``; the printed text is kept per format. Plus a
    MiTClassifier as a SavedModel and the backbone as ONNX. On JAX and
    PyTorch (a TensorFlow worker per call) only the SavedModel."""
    from conftest import TINY

    import keras_segformer
    from keras_segformer.training import compile_for_training

    out = tmp_path_factory.mktemp("keras_export")
    keras.utils.set_random_seed(1)
    model = tiny_segformer(NUM_CLASSES)
    compile_for_training(model, total_steps=10)
    model.optimizer.build(model.trainable_variables)
    paths, printed = {}, {}
    formats = list(KERAS_EXPORTS) if ON_TENSORFLOW else ["tf_saved_model"]
    for fmt in formats:
        name, kwargs = KERAS_EXPORTS[fmt]
        paths[fmt] = str(out / name)
        with contextlib.redirect_stdout(io.StringIO()) as text:
            assert model.export(paths[fmt], format=fmt, **kwargs) is None
        printed[fmt] = text.getvalue()
    if not ON_TENSORFLOW:
        return model, None, paths, printed
    classifier = keras_segformer.build_classifier(3, **TINY)
    paths["classifier"] = str(out / "classifier_saved_model")
    classifier.export(paths["classifier"], verbose=False)
    # The backbone: four outputs, named after its output layers.
    paths["backbone"] = str(out / "backbone.onnx")
    with contextlib.redirect_stdout(io.StringIO()) as text:
        model.backbone.export(paths["backbone"], format="onnx")
    printed["backbone"] = text.getvalue()
    paths["backbone_saved_model"] = str(out / "backbone_saved_model")
    model.backbone.export(paths["backbone_saved_model"], verbose=False)
    return model, classifier, paths, printed


@pytest.mark.parametrize(
    "fmt",
    [
        fmt
        if fmt == "tf_saved_model"
        else pytest.param(fmt, marks=tensorflow_only)
        for fmt in KERAS_EXPORTS
    ],
)
def test_keras_export_matches_predict(keras_exported, fmt):
    model, _, paths, _ = keras_exported
    run = ExportedModel(paths[fmt])
    assert run.output_name == "logits"
    # LiteRT was exported with a fixed 61x83 input_signature.
    sizes = SIZES[:1] if fmt == "litert" else SIZES
    rng = np.random.default_rng(11)
    for size in sizes:
        x = _images(rng, size)
        expected = model.predict(x, verbose=0)
        got = run(x)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
        if fmt == "tf_saved_model":
            # Keras' way to call a reloaded artifact: `.serve(x)` returns
            # the tensor; the signature keeps the named output.
            import tensorflow as tf

            loaded = tf.saved_model.load(paths[fmt])
            served = loaded.serve(x).numpy()
            np.testing.assert_allclose(served, expected, atol=ATOL, rtol=0)
            signature = loaded.signatures["serving_default"]
            assert list(signature(images=x)) == ["logits"]


@tensorflow_only
def test_keras_export_classifier(keras_exported):
    _, classifier, paths, _ = keras_exported
    x = _images(np.random.default_rng(12), SIZES[1])
    got = ExportedModel(paths["classifier"])(x)
    expected = classifier.predict(x, verbose=0)
    assert got.shape == expected.shape == (2, 3)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


@tensorflow_only
def test_keras_export_backbone_features(keras_exported):
    model, _, paths, printed = keras_exported
    backbone = model.backbone
    run = ExportedModel(paths["backbone"])
    names = [f"stage{i}_norm" for i in range(1, 5)]
    assert run.output_names == names and run.output_name is None
    x = _images(np.random.default_rng(13), SIZES[0])
    expected = backbone.predict(x, verbose=0)
    got = run(x)
    assert list(got) == names
    for name, features in zip(names, expected):
        assert got[name].shape == features.shape
        np.testing.assert_allclose(got[name], features, atol=ATOL, rtol=0)
    assert "stage4_norm (None, None, None, 32) float32" in printed["backbone"]
    # As Keras: the SavedModel's serve returns the model's list of outputs;
    # its signature names them.
    import tensorflow as tf

    loaded = tf.saved_model.load(paths["backbone_saved_model"])
    served = loaded.serve(x)
    assert isinstance(served, list) and len(served) == 4
    for got_features, features in zip(served, expected):
        np.testing.assert_allclose(got_features, features, atol=ATOL, rtol=0)
    assert sorted(loaded.signatures["serving_default"](images=x)) == names


def test_keras_export_prints_like_keras(keras_exported):
    _, _, paths, printed = keras_exported
    # verbose=None prints like Keras: path and signature.
    text = printed["tf_saved_model"]
    assert f"Saved artifact at '{paths['tf_saved_model']}'" in text
    assert "images (None, None, None, 3) float32 -> logits" in text


@tensorflow_only
def test_keras_export_input_signature_and_verbose(keras_exported):
    _, _, paths, printed = keras_exported
    run = ExportedModel(paths["litert"])
    (detail,) = run._interpreter.get_input_details()
    assert list(detail["shape_signature"]) == [-1, *SIZES[0], 3]
    assert "images (None, 61, 83, 3) float32" in printed["litert"]
    assert "(None, 16, 21, 4)" in printed["litert"]
    assert printed["onnx"] == ""  # verbose=False


def test_keras_export_arguments_map_to_export_model(small_model):
    import tensorflow as tf

    from keras_segformer.export.keras_api import export_options

    spec = tf.lite.TargetSpec(supported_types=[tf.float16])
    options = export_options(
        small_model,
        "m.tflite",
        "litert",
        optimizations=[tf.lite.Optimize.DEFAULT],
        target_spec=spec,
        input_signature=tf.TensorSpec((None, 64, 96, 3), tf.uint8),
        include_preprocessing=True,
    )
    assert options == {
        "path": "m.tflite",
        "format": "litert",
        "quantization": "float16",
        "include_preprocessing": True,
        "input_size": (64, 96),
        "input_dtype": "uint8",
    }
    dynamic = keras.KerasTensor((None, None, None, 3), dtype="float32")
    options = export_options(small_model, "m", "tf_saved_model", [dynamic])
    assert options == {
        "path": "m",
        "format": "tf_saved_model",
        "input_size": None,
        "input_dtype": "float32",
    }
    options = export_options(small_model, "m.onnx", "onnx", opset_version=17)
    assert options == {"path": "m.onnx", "format": "onnx"}
    # export_model's older spellings are aliases here too.
    options = export_options(small_model, "m.tflite", "tflite")
    assert options == {"path": "m.tflite", "format": "litert"}
    options = export_options(small_model, "m", "saved_model")
    assert options == {"path": "m", "format": "tf_saved_model"}
    # optimizations=[DEFAULT] with an explicit int8 quantization.
    options = export_options(
        small_model,
        "m.tflite",
        "litert",
        optimizations=[tf.lite.Optimize.DEFAULT],
        quantization="int8",
    )
    assert options["quantization"] == "int8"


@pytest.mark.parametrize(
    "fmt, match",
    [
        ("openvino", "Unsupported export format 'openvino'"),
        ("torch", "Unsupported export format 'torch'"),
        ("tflight", r"aliases \('saved_model', 'tflite'\)"),
    ],
)
def test_keras_export_unsupported_format(small_model, tmp_path, fmt, match):
    with pytest.raises(ValueError, match=match) as info:
        small_model.export(tmp_path / "m", format=fmt)
    assert "export_model" in str(info.value)


def test_keras_export_bad_litert_options(small_model, tmp_path):
    import tensorflow as tf

    path = tmp_path / "m.tflite"
    default = [tf.lite.Optimize.DEFAULT]
    with pytest.raises(ValueError, match="representative_images"):
        small_model.export(
            path, format="litert", representative_dataset=lambda: iter([])
        )
    with pytest.raises(ValueError, match="dynamic-range"):
        small_model.export(path, format="litert", optimizations=default)
    select = tf.lite.TargetSpec(
        supported_ops=[tf.lite.OpsSet.SELECT_TF_OPS],
    )
    with pytest.raises(ValueError, match="supported_ops"):
        small_model.export(path, format="litert", target_spec=select)
    float16 = tf.lite.TargetSpec(supported_types=[tf.float16])
    with pytest.raises(ValueError, match="contradicts"):
        small_model.export(
            path,
            format="litert",
            optimizations=default,
            target_spec=float16,
            quantization="int8",
        )
    with pytest.raises(ValueError, match=r"\['allow_custom_ops'\]"):
        small_model.export(path, format="litert", allow_custom_ops=True)
    with pytest.raises(ValueError, match="end with '.tflite'"):
        small_model.export(tmp_path / "m.lite", format="litert")
    with pytest.raises(ValueError, match="opset_version"):
        small_model.export(tmp_path / "m.onnx", "onnx", opset_version=13)
    assert not os.listdir(tmp_path)


def test_keras_export_bad_input_signature(small_model, tmp_path):
    path = tmp_path / "m"
    with pytest.raises(ValueError, match="both fixed or both None"):
        small_model.export(path, input_signature=_keras_spec((64, None)))
    with pytest.raises(ValueError, match="dtype must be one of"):
        small_model.export(
            path, input_signature=_keras_spec((64, 64), "float16")
        )
    with pytest.raises(ValueError, match="must hold one spec"):
        small_model.export(path, input_signature=_keras_spec((64, 64)) * 2)
    with pytest.raises(TypeError, match="keras.InputSpec"):
        small_model.export(path, input_signature=[(None, 64, 64, 3)])
    with pytest.raises(ValueError, match="needs include_preprocessing"):
        small_model.export(path, input_signature=_keras_spec((64, 64), "uint8"))
    with pytest.raises(ValueError, match="contradicts"):
        small_model.export(
            path,
            input_signature=_keras_spec((64, 64), "uint8"),
            input_dtype="float32",
        )
    assert not os.listdir(tmp_path)


# ----------------------------------- ExportedModel: what an artifact takes


@tensorflow_only
def test_exported_model_says_what_it_takes(exported, keras_exported):
    """Images an artifact cannot take: one line naming its fixed size,
    the least size or the layout, not the runtime's "Node number ...
    failed to prepare"."""
    _, _, keras_paths, _ = keras_exported
    _, paths = exported
    fixed = ExportedModel(keras_paths["litert"])  # exported for 61x83
    assert fixed.input_shape == (None, *SIZES[0], 3)
    rng = np.random.default_rng(14)
    assert fixed(_images(rng, SIZES[0], batch=3)).shape[0] == 3
    with pytest.raises(ValueError, match=r"keras.tflite takes images") as e:
        fixed(_images(rng, SIZES[1]))
    assert "of 61x83 pixels (its fixed input size); received 97x131" in str(
        e.value
    )
    dynamic = ExportedModel(paths["float.tflite"])
    assert dynamic.input_shape == (None, None, None, 3)
    with pytest.raises(ValueError, match=r"at least 29x29 pixels; received"):
        dynamic(_images(rng, (16, 40)))
    with pytest.raises(ValueError, match=r"array of shape \(61, 83, 3\)"):
        dynamic(_images(rng, SIZES[0])[0])
    with pytest.raises(ValueError, match="no images"):
        dynamic(np.zeros((0, *SIZES[0], 3), "float32"))
    saved = ExportedModel(paths["float_saved_model"])
    assert saved.format == "tf_saved_model" and dynamic.format == "litert"
    with pytest.raises(ValueError, match="at least 29x29 pixels"):
        saved(_images(rng, (20, 64)))


def test_exported_model_refuses_integer_pixels_for_normalized_input(exported):
    """Battery case f_exported_model_bad_input: uint8 pixels fed to an
    artifact exported without preprocessing were cast and segmented as
    garbage; the Keras model raises a TypeError for them."""
    _, paths = exported
    rng = np.random.default_rng(15)
    pixels = rng.integers(0, 256, (1, *SIZES[0], 3), dtype=np.uint8)
    for name in ("float.onnx", "float_saved_model"):
        run = ExportedModel(paths[name])
        assert run.input_pixels == "normalized"
        with pytest.raises(TypeError) as e:
            run(pixels)
        message = str(e.value)
        assert message.startswith(f"{name} takes normalized float32 images")
        assert "received uint8 pixels" in message
        assert "--include-preprocessing" in message and "\n" not in message
        assert run(_images(rng, SIZES[0])).shape[0] == 2  # floats: taken
    # A TFLite file does not record it: taken, with a warning.
    run = ExportedModel(paths["float.tflite"])
    assert run.input_pixels is None
    with pytest.warns(UserWarning, match="does not record whether"):
        assert run(pixels).shape[0] == 1
    if ON_TENSORFLOW:  # raw pixels: integers taken without a word
        run = ExportedModel(paths["prepost.onnx"])
        assert run.input_pixels == "raw"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            run(pixels)
